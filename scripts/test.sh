#!/usr/bin/env bash
# Sets everything up, runs every static check, then every test against a real daemon.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh --dev

echo "==> buf lint" >&2
(cd proto && ../.tools/node_modules/.bin/buf lint)

echo "==> generated stubs are up to date" >&2
./scripts/gen-protos.sh >/dev/null
if [ -n "$(git status --porcelain -- clients/python/computesdk/api)" ]; then
  git status --porcelain -- clients/python/computesdk/api >&2
  echo "generated stubs drifted from proto/: run scripts/gen-protos.sh and commit" >&2
  exit 1
fi

echo "==> ruff" >&2
.venv/bin/ruff check .
.venv/bin/ruff format --check .

echo "==> mypy (strict)" >&2
.venv/bin/mypy

echo "==> go vet, gofmt (agent)" >&2
(cd daemon/agent && go vet ./... && test -z "$(gofmt -l .)")

echo "==> pytest" >&2
.venv/bin/pytest "$@"
