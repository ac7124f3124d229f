#!/usr/bin/env bash
# Builds the Kubernetes binaries a test cluster needs -- etcd, kube-apiserver,
# kube-controller-manager, kube-scheduler, kubelet, kubectl -- from the Go module
# proxy alone (no git clone of kubernetes, no internet beyond the proxy):
#   - a wrapper module requires k8s.io/kubernetes $K8S_VERSION and replaces every
#     k8s.io/<staging> module (kubernetes' go.mod points them at ./staging/src/...,
#     which a module download does not carry) by its published k8s.io/<name>
#     v0.<minor>.<patch>; the list is read from kubernetes' own go.mod;
#   - etcd is go.etcd.io/etcd/server/v3's etcdmain, at the version kubernetes
#     requires, behind a three-line main;
#   - the binaries land in a cache dir keyed by version; a complete cache skips
#     the build (a second CI run on the same machine), a fresh machine builds
#     (about 10 min wall, ~700 CPU-s, on 2 cores).
#   ./scripts/k8s/build.sh            prints the bin dir on stdout
# Env: K8S_VERSION (v1.34.4), COMPUTESDK_CACHE (/var/cache/computesdk),
#      K8S_BIN_DIR (overrides the whole bin dir), K8S_BUILD_NICE (19).
set -euo pipefail
export PATH="$PATH:/usr/local/go/bin"
version=${K8S_VERSION:-v1.34.4}
cache=${COMPUTESDK_CACHE:-/var/cache/computesdk}/k8s/$version
bin=${K8S_BIN_DIR:-$cache/bin}
nice_level=${K8S_BUILD_NICE:-19}
binaries=(etcd kube-apiserver kube-controller-manager kube-scheduler kubelet kubectl)
log() { printf '[k8s-build] %s\n' "$*" >&2; }

complete() {
  local b
  [ -f "$bin/.complete" ] || return 1
  for b in "${binaries[@]}"; do [ -x "$bin/$b" ] || return 1; done
}
if complete; then
  log "cached: $bin ($(cat "$bin/.complete"))"
  printf '%s\n' "$bin"
  exit 0
fi
command -v go >/dev/null 2>&1 || { echo "go is not installed (scripts/setup.sh installs it)" >&2; exit 1; }

case $version in
  v1.*.*) staging_version="v0.${version#v1.}" ;;
  *) echo "K8S_VERSION must look like v1.MINOR.PATCH, not $version" >&2; exit 1 ;;
esac
minor=${version#v1.}; minor=${minor%%.*}

src=$cache/src
mkdir -p "$src/cmd/etcd" "$bin"
cd "$src"
log "k8s.io/kubernetes@$version's go.mod (module proxy)"
gomod=$(go mod download -json "k8s.io/kubernetes@$version" | sed -n 's/^\t"GoMod": "\(.*\)",\{0,1\}$/\1/p')
[ -s "$gomod" ] || { echo "could not download k8s.io/kubernetes@$version's go.mod" >&2; exit 1; }

# What is derived from kubernetes' go.mod: the go and godebug lines, the etcd
# version, and the staging modules (every "k8s.io/X => ./staging/src/k8s.io/X").
go_line=$(grep -m1 '^go ' "$gomod")
godebug_lines=$(grep '^godebug ' "$gomod" || true)
etcd_version=$(awk '$1 == "go.etcd.io/etcd/server/v3" {print $2; exit}' "$gomod")
[ -n "$etcd_version" ] || { echo "no go.etcd.io/etcd/server/v3 in $gomod" >&2; exit 1; }
replaces=$(awk -v v="$staging_version" \
  '$2 == "=>" && $3 ~ /^\.\/staging\/src\// {printf "\t%s => %s %s\n", $1, $1, v}' "$gomod")
[ -n "$replaces" ] || { echo "no ./staging/src replace lines in $gomod" >&2; exit 1; }
log "$(printf '%s\n' "$replaces" | wc -l) staging modules -> $staging_version; etcd $etcd_version"

cat >go.mod <<EOF
module computesdk.dev/k8sbins

$go_line

$godebug_lines

require (
	go.etcd.io/etcd/server/v3 $etcd_version
	k8s.io/kubernetes $version
)

replace (
$replaces
)
EOF
cat >tools.go <<'EOF'
//go:build tools

// Keeps the kubernetes commands in the module graph for go mod tidy.
package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubectl"
	_ "k8s.io/kubernetes/cmd/kubelet"
)
EOF
cat >cmd/etcd/main.go <<'EOF'
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
EOF
log "go mod tidy"
go mod tidy

# What `kubectl version` and the node's kubeletVersion report (hack/lib/version.sh
# sets the same variables); without them every binary says v0.0.0-master.
ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  ldflags+=" -X $pkg.gitVersion=$version -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
  ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
done

tmp=$bin/.partial
rm -rf "$tmp" && mkdir -p "$tmp"
start=$(date +%s)
for b in "${binaries[@]}"; do
  if [ "$b" = etcd ]; then pkg=./cmd/etcd; else pkg=k8s.io/kubernetes/cmd/$b; fi
  t0=$(date +%s)
  log "building $b ($pkg) ..."
  nice -n "$nice_level" go build -ldflags "$ldflags" -o "$tmp/$b" "$pkg"
  log "built $b in $(($(date +%s) - t0)) s"
done
for b in "${binaries[@]}"; do mv -f "$tmp/$b" "$bin/$b"; done
rmdir "$tmp"
printf 'built %s from the Go module proxy in %s s on %s\n' "$version" "$(($(date +%s) - start))" \
  "$(date -u +%FT%TZ)" >"$bin/.complete"
log "done: $bin ($(cat "$bin/.complete"))"
printf '%s\n' "$bin"
