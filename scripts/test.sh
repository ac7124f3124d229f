#!/usr/bin/env bash
# Sets everything up, runs every static check, the fast in-process tests, then every
# test against a real daemon. Every step runs even when an earlier one failed; the
# summary at the end names each failure, and the exit status is 1 if any failed.
# Arguments go to the main pytest run (e.g. -x, -k).
set -uo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/local/go/bin"
./scripts/setup.sh --dev || exit 1

failed=()
step() {
  local name=$1
  shift
  echo "==> $name" >&2
  local started=$SECONDS
  if "$@"; then
    echo "    ok: $name ($((SECONDS - started)) s)" >&2
  else
    echo "    FAILED: $name ($((SECONDS - started)) s)" >&2
    failed+=("$name")
  fi
}

breaking() {
  if git rev-parse --verify -q main >/dev/null; then
    (cd proto && ../.tools/node_modules/.bin/buf breaking --against '../.git#branch=main,subdir=proto')
  else
    echo "no local main branch to compare against; skipped" >&2
  fi
}

stubs_current() {
  ./scripts/gen-protos.sh || return 1
  local generated=(clients/python-api/computesdk_api clients/typescript/src/gen
                   clients/typescript/src/googleapis clients/go/api
                   daemon/computesdkd/providers/common/agentpb daemon/agent/agentpb)
  if [ -n "$(git status --porcelain -- "${generated[@]}")" ]; then
    git status --porcelain -- "${generated[@]}" >&2
    echo "generated stubs drifted from proto/: run scripts/gen-protos.sh and commit" >&2
    return 1
  fi
}

go_checks() {
  local dir
  for dir in daemon/agent clients/go; do
    (cd "$dir" && go vet ./... && test -z "$(gofmt -l .)") || return 1
  done
  (cd daemon/agent && go test -race -count=1 ./...)  # the agent is concurrent: races fail CI
}

# From a clean cache: regenerating the stubs rewrites files mypy has cached, and an
# incremental run then reports modules as missing attributes.
mypy_clean() { rm -rf .mypy_cache && .venv/bin/mypy; }

step "buf lint" bash -c 'cd proto && ../.tools/node_modules/.bin/buf lint'
step "buf breaking against main" breaking
step "generated stubs are up to date" stubs_current
step "ruff" bash -c '.venv/bin/ruff check . && .venv/bin/ruff format --check .'
step "mypy (strict)" mypy_clean
step "import layers (lint-imports)" .venv/bin/lint-imports --no-cache
step "go vet, gofmt; the agent's tests" go_checks
step "TypeScript client: type-check, build" bash -c 'cd clients/typescript && npm run --silent build'
step "fast tests (core and features on the fake provider)" .venv/bin/pytest -q tests/fast
step "pytest against a real daemon" .venv/bin/pytest --ignore=tests/fast --ignore=tests/k8s "$@"
# Each client suite starts its own computesdkd and runs tests/conformance/scenarios.json.
step "Go client tests" bash -c 'cd clients/go && go test -count=1 ./...'
step "TypeScript client tests" bash -c 'cd clients/typescript && npm test --silent'
step "ComputeSDK provider package tests (through computesdk's compute API)" bash -c \
  'cd clients/computesdk-provider && npm test --silent'
# The same conformance scenarios over the network listener: TLS and a token
# (tests/test_conformance.py runs them both ways for Python).
step "Go conformance over TLS" bash -c \
  'cd clients/go && COMPUTESDK_TEST_TLS=1 go test -count=1 -run Conformance .'
step "TypeScript conformance over TLS" bash -c \
  'cd clients/typescript && COMPUTESDK_TEST_TLS=1 node --test dist/test/conformance.test.js'
# The container image, built with no registry (scripts/docker-image.sh starts
# dockerd when none answers and makes its base with mmdebstrap once); both
# commands must run in it.
docker_image() {
  local image
  image=$(./scripts/docker-image.sh) || return 1
  docker run --rm "$image" computesdkd --version &&
    docker run --rm "$image" computesdk --help >/dev/null
}
step "container image: build; computesdkd --version, computesdk --help in it" docker_image

echo >&2
if [ ${#failed[@]} -eq 0 ]; then
  echo "==> every step passed" >&2
  exit 0
fi
echo "==> ${#failed[@]} step(s) failed:" >&2
printf '    %s\n' "${failed[@]}" >&2
exit 1
