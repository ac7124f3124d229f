#!/usr/bin/env bash
# Sets up everything computesdk needs on a fresh Debian 12 machine, idempotently:
# system packages, the Python environment, the in-sandbox agent, the sandbox base
# root filesystem, the TypeScript client's dist/ (so it installs from the clone as
# README says), and (with --dev) dockerd, the docker provider's image and the
# proto linter.
set -euo pipefail
cd "$(dirname "$0")/.."
dev=0
[ "${1:-}" = "--dev" ] && dev=1

step() { printf '\n==> %s\n' "$*" >&2; }

if [ "$(id -u)" -ne 0 ]; then
  echo "setup.sh must run as root: sandboxes need runc, overlayfs, loop devices and cgroups" >&2
  exit 1
fi

# Go from the machine image lives here; Debian's golang-go is the fallback.
export PATH="$PATH:/usr/local/go/bin"
need=()
for tool in runc:runc mmdebstrap:mmdebstrap mkfs.ext4:e2fsprogs setpriv:util-linux \
            ip:iproute2 curl:curl bwrap:bubblewrap go:golang-go mkfs.xfs:xfsprogs \
            nsenter:util-linux nft:nftables iptables:iptables; do
  command -v "${tool%%:*}" >/dev/null 2>&1 || need+=("${tool##*:}")
done
if [ ${#need[@]} -gt 0 ]; then
  step "installing system packages: ${need[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi

step "python environment in .venv"
[ -x .venv/bin/python ] || python3 -m venv .venv
# Three distributions (see pyproject.toml): the stubs, the client, the daemon;
# with --dev also the daemon's test tools.
extra=""
[ "$dev" = 1 ] && extra="[dev]"
.venv/bin/pip install -q --disable-pip-version-check \
  -e ./clients/python-api -e ./clients/python -e "./daemon$extra"

step "building the in-sandbox agent (static Go binary; daemon/agent/go.sum pins its protobuf)"
(cd daemon/agent && go mod download && CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" \
  -o ../computesdkd/_bin/computesdk-agent .)

step "base root filesystem for local sandboxes (cached after the first build)"
.venv/bin/python -m computesdkd.providers.local.rootfs

# The client installs from the clone (`npm pack`, or a path), which wants dist/ built;
# both steps are skipped when nothing they depend on changed.
step "TypeScript client: dependencies (package-lock.json) and dist/"
if command -v npm >/dev/null 2>&1; then
  (
    cd clients/typescript
    [ node_modules/.package-lock.json -nt package-lock.json ] ||
      npm ci --silent --no-audit --no-fund
    if [ ! -f dist/src/index.js ] ||
       [ -n "$(find src package.json tsconfig.json -newer dist/src/index.js -print -quit)" ]; then
      npm run --silent build
    fi
  )
elif [ "$dev" = 1 ]; then
  echo "setup.sh --dev needs npm (Node 20+)" >&2
  exit 1
else
  echo "no npm here: skipped (the TypeScript client needs Node 20+)" >&2
fi

if [ "$dev" = 1 ]; then
  step "dockerd and the docker provider's image (built locally, no registry)"
  command -v dockerd >/dev/null 2>&1 || {
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io >/dev/null
  }
  ./scripts/start-dockerd.sh
  step "test-only packages: a registry (distribution API) and a static busybox for test images"
  missing=()
  for pkg in docker-registry busybox-static; do
    dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
  .venv/bin/python -m computesdkd.providers.docker.image

  step "buf and the pinned stub generators (buf.gen.yaml)"
  if [ ! -x .tools/node_modules/.bin/buf ]; then
    npm install --silent --no-audit --no-fund --prefix .tools @bufbuild/buf@1.75.0 >/dev/null 2>&1 || true
  fi
  .tools/node_modules/.bin/buf --version >/dev/null
  GOBIN="$PWD/.tools/bin" go install google.golang.org/protobuf/cmd/protoc-gen-go@v1.36.12
  GOBIN="$PWD/.tools/bin" go install google.golang.org/grpc/cmd/protoc-gen-go-grpc@v1.6.2

  # Links clients/typescript (file:../typescript), so it follows the client built above.
  step "ComputeSDK provider package: dependencies (clients/computesdk-provider/package-lock.json)"
  (
    cd clients/computesdk-provider
    [ node_modules/.package-lock.json -nt package-lock.json ] ||
      npm ci --silent --no-audit --no-fund
  )

  step "Go client dependencies (clients/go/go.sum)"
  (cd clients/go && go mod download)

  step "the vendors' npm SDKs that drive the fakes (tests/contract/*/package-lock.json)"
  for lock in tests/contract/*/package-lock.json; do
    d=$(dirname "$lock")
    [ "$d/node_modules/.package-lock.json" -nt "$lock" ] ||
      npm ci --silent --no-audit --no-fund --prefix "$d"
  done
fi
step "setup done"
