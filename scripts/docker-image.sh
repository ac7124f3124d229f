#!/usr/bin/env bash
# Builds computesdkd's container image (Dockerfile) without a registry, and without
# network inside the build:
#   - the base: $COMPUTESDK_DOCKER_BASE if set (any Debian bookworm image, e.g.
#     debian:bookworm where one can be pulled), else a local one, made once by
#     `mmdebstrap --variant=minbase ... | docker import` with the Dockerfile's
#     PACKAGES already in it (its tag names a hash of that recipe);
#   - the in-sandbox agent, built here with go, into .docker-build/;
#   - wheels of the daemon, the client, the stubs and every dependency, built
#     here with pip into .docker-build/wheels (pip inside the build failed on this
#     network's TLS proxy) and installed in the image with --no-index; rebuilt only
#     when those sources change.
# Starts dockerd (scripts/start-dockerd.sh) when none answers. Prints the tag.
#   ./scripts/docker-image.sh [TAG]      (default computesdk/computesdkd:local)
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/local/go/bin"
image=${1:-computesdk/computesdkd:local}
log() { printf '[docker-image] %s\n' "$*" >&2; }

if [ "$(id -u)" -ne 0 ]; then
  echo "docker-image.sh must run as root (dockerd, mmdebstrap)" >&2
  exit 1
fi
apt_install() {
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}
command -v docker >/dev/null 2>&1 || apt_install docker.io
command -v go >/dev/null 2>&1 || apt_install golang-go # as setup.sh does
./scripts/start-dockerd.sh

# One list of packages: the Dockerfile's.
packages=$(sed -n 's/^ARG PACKAGES="\(.*\)"$/\1/p' Dockerfile)
[ -n "$packages" ] || { echo "no ARG PACKAGES=\"...\" line in Dockerfile" >&2; exit 1; }

base=${COMPUTESDK_DOCKER_BASE:-}
if [ -z "$base" ]; then
  recipe=(--variant=minbase --aptopt='APT::Install-Recommends "false"' --include="${packages// /,}")
  base="computesdk/base:bookworm-$(printf '%s\n' "${recipe[@]}" | sha256sum | cut -c1-12)"
  if ! docker image inspect "$base" >/dev/null 2>&1; then
    command -v mmdebstrap >/dev/null 2>&1 || apt_install mmdebstrap
    # The host's own apt sources, as the sandboxes' root filesystem is made
    # (daemon/computesdkd/providers/common/rootfs_recipe.py).
    sources=""
    for cand in /etc/apt/sources.list.d/*.sources /etc/apt/sources.list; do
      [ -s "$cand" ] && { sources=$cand; break; }
    done
    [ -n "$sources" ] || { echo "no apt sources in /etc/apt" >&2; exit 1; }
    log "making $base with mmdebstrap (once)"
    # A tarball cut short still imports: what a failed run made is removed.
    if ! mmdebstrap --quiet "${recipe[@]}" bookworm - "$sources" \
      | docker import \
          --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
          --change 'ENV LANG=C.UTF-8' - "$base" >/dev/null; then
      docker rmi "$base" >/dev/null 2>&1 || true
      echo "making $base failed" >&2
      exit 1
    fi
  fi
fi

build=.docker-build
mkdir -p "$build"
printf '*\n' >"$build/.gitignore" # the directory ignores itself

log "the in-sandbox agent (go build)"
(cd daemon/agent && CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" \
  -o "../../$build/computesdk-agent" .)

# The three Python projects as they are in the work tree, without build output;
# copied out first, since an in-tree build leaves build/ behind in each.
rm -rf "$build/src" && mkdir -p "$build/src"
tar -C . --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner \
  --exclude=build --exclude='*.egg-info' --exclude=__pycache__ --exclude='.*_cache' \
  --exclude=daemon/computesdkd/_bin --exclude=daemon/agent \
  -cf "$build/src.tar" clients/python-api clients/python daemon
stamp=$(sha256sum <"$build/src.tar" | cut -c1-16)
if [ "$(cat "$build/wheels.stamp" 2>/dev/null)" != "$stamp" ] || [ ! -d "$build/wheels" ]; then
  log "wheels of the daemon, the client and their dependencies (pip wheel)"
  tar -C "$build/src" -xf "$build/src.tar"
  py=.venv/bin/python
  if [ ! -x "$py" ]; then
    [ -x "$build/venv/bin/python" ] || python3 -m venv "$build/venv"
    py=$build/venv/bin/python
  fi
  rm -rf "$build/wheels.new"
  "$py" -m pip wheel -q --disable-pip-version-check -w "$build/wheels.new" \
    "$build/src/clients/python-api" "$build/src/clients/python" "$build/src/daemon"
  rm -rf "$build/wheels"
  mv "$build/wheels.new" "$build/wheels"
  echo "$stamp" >"$build/wheels.stamp"
fi
rm -rf "$build/src" "$build/src.tar"

log "docker build $image (base $base)"
old=$(docker image inspect -f '{{.Id}}' "$image" 2>/dev/null || true)
docker build --build-arg BASE="$base" -t "$image" . >&2
# The image this tag named before, if it changed: not left behind, untagged, at
# every build (its layers the new one shares stay).
if [ -n "$old" ] && [ "$old" != "$(docker image inspect -f '{{.Id}}' "$image")" ]; then
  docker rmi "$old" >/dev/null 2>&1 || true
fi
echo "$image"
