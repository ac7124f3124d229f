#!/usr/bin/env bash
# Sets everything up, runs every static check, then every test against a real daemon.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/local/go/bin"
./scripts/setup.sh --dev

echo "==> buf lint" >&2
(cd proto && ../.tools/node_modules/.bin/buf lint)

echo "==> buf breaking against main" >&2
if git rev-parse --verify -q main >/dev/null; then
  (cd proto && ../.tools/node_modules/.bin/buf breaking --against '../.git#branch=main,subdir=proto')
else
  echo "no local main branch to compare against; skipped" >&2
fi

echo "==> generated stubs are up to date (Python, TypeScript, Go; the agent's wire)" >&2
./scripts/gen-protos.sh
generated=(clients/python-api/computesdk_api clients/typescript/src/gen clients/go/api
           daemon/computesdkd/providers/local/agentpb daemon/agent/agentpb)
if [ -n "$(git status --porcelain -- "${generated[@]}")" ]; then
  git status --porcelain -- "${generated[@]}" >&2
  echo "generated stubs drifted from proto/: run scripts/gen-protos.sh and commit" >&2
  exit 1
fi

echo "==> ruff" >&2
.venv/bin/ruff check .
.venv/bin/ruff format --check .

echo "==> mypy (strict)" >&2
# From a clean cache: regenerating the stubs rewrites files mypy has cached, and an
# incremental run then reports modules as missing attributes.
rm -rf .mypy_cache
.venv/bin/mypy

echo "==> go vet, gofmt (agent, Go client); the agent's own tests" >&2
for dir in daemon/agent clients/go; do
  (cd "$dir" && go vet ./... && test -z "$(gofmt -l .)")
done
(cd daemon/agent && go test -count=1 ./...)

echo "==> TypeScript client: type-check, build" >&2
(cd clients/typescript && npm run --silent build)

echo "==> pytest (daemon, providers, Python client and its conformance run)" >&2
.venv/bin/pytest "$@"

# Each client suite starts its own computesdkd and runs tests/conformance/scenarios.json.
echo "==> Go client tests" >&2
(cd clients/go && go test -count=1 ./...)

echo "==> TypeScript client tests" >&2
(cd clients/typescript && npm test --silent)
