#!/usr/bin/env bash
# Makes the kubernetes provider's sandbox image as a docker-archive, without docker
# and without a registry, for `cluster.sh import` (pods use imagePullPolicy: Never):
#   computesdk.local/sandbox:bookworm-v<RECIPE_VERSION>
# Layer 1: the project's Debian base (common/rootfs_recipe.py). The local
#   provider's built copy (/var/lib/computesdk/images/debian-bookworm-vN, owned
#   +100000) is re-owned back to 0-based ids as it is tarred; without it the base
#   is written by mmdebstrap (the host's apt sources). Cached per recipe version.
# Layer 2: the static agent (daemon/computesdkd/_bin/computesdk-agent), which the
#   pod runs as PID 1, plus /workspace.
#   ./scripts/k8s/sandbox-image.sh OUT.tar        (prints the image's name)
set -euo pipefail
cd "$(dirname "$0")/../.."
out=${1:?usage: sandbox-image.sh OUT.tar}
py=${PYTHON:-.venv/bin/python}
agent=${COMPUTESDK_AGENT_BINARY:-daemon/computesdkd/_bin/computesdk-agent}
[ -x "$agent" ] || { echo "no agent at $agent (scripts/setup.sh builds it)" >&2; exit 1; }
read -r suite version < <(PYTHONPATH=daemon "$py" -c \
  'from computesdkd.providers.common import rootfs_recipe as r; print(r.SUITE, r.RECIPE_VERSION)')
image="computesdk.local/sandbox:$suite-v$version"
cache=${COMPUTESDK_CACHE:-/var/cache/computesdk}/k8s/sandbox-base
base_tar="$cache/$suite-v$version.tar"
log() { printf '[sandbox-image] %s\n' "$*" >&2; }

mkdir -p "$cache"
if [ ! -s "$base_tar" ]; then
  local_base=${COMPUTESDK_IMAGE_DIR:-/var/lib/computesdk/images}/debian-$suite-v$version
  if [ -f "$local_base/.computesdk-recipe.json" ]; then
    log "base layer from $local_base (ids shifted back by 100000)"
    "$py" - "$local_base" "$base_tar.tmp" <<'EOF'
import sys, tarfile
src, dst = sys.argv[1], sys.argv[2]
SHIFT = 100_000
def unshift(ti: tarfile.TarInfo) -> tarfile.TarInfo | None:
    if ti.name in (".", "./.computesdk-recipe.json"):
        return None if ti.name != "." else ti
    ti.uid, ti.gid = max(ti.uid - SHIFT, 0), max(ti.gid - SHIFT, 0)
    ti.uname = ti.gname = ""
    ti.mtime = 0
    return ti
with tarfile.open(dst, "w", format=tarfile.GNU_FORMAT) as t:
    t.add(src, arcname=".", filter=unshift)
EOF
  else
    log "base layer by mmdebstrap (no local base at $local_base)"
    PYTHONPATH=daemon "$py" -c \
      'import subprocess, sys; from computesdkd.providers.common.rootfs_recipe import mmdebstrap_argv; sys.exit(subprocess.call(mmdebstrap_argv(sys.argv[1])))' \
      "$base_tar.tmp"
  fi
  mv -f "$base_tar.tmp" "$base_tar"
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/root/usr/local/bin" "$work/root/workspace" "$work/root/.computesdk/run" "$work/img"
install -m 0755 "$agent" "$work/root/usr/local/bin/computesdk-agent"
tar -C "$work/root" --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner \
  -cf "$work/img/agent.tar" .
ln -s "$base_tar" "$work/img/base.tar"
d1=sha256:$(sha256sum <"$base_tar" | cut -d' ' -f1)
d2=sha256:$(sha256sum <"$work/img/agent.tar" | cut -d' ' -f1)
cat >"$work/img/config.json" <<EOF
{"architecture":"amd64","os":"linux","config":{"Entrypoint":["/usr/local/bin/computesdk-agent"],"Env":["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin","LANG=C.UTF-8"],"WorkingDir":"/workspace"},"rootfs":{"type":"layers","diff_ids":["$d1","$d2"]}}
EOF
printf '[{"Config":"config.json","RepoTags":["%s"],"Layers":["base.tar","agent.tar"]}]\n' "$image" \
  >"$work/img/manifest.json"
tar -C "$work/img" --dereference --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner \
  -cf "$out.tmp" .
mv -f "$out.tmp" "$out"
log "wrote $out"
echo "$image"
