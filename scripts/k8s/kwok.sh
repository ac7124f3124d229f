#!/usr/bin/env bash
# Fake nodes on the real API server of the cluster cluster.sh started, with kwok
# (sigs.k8s.io/kwok, built here from the Go module proxy, cached by version). kwok
# manages only nodes annotated kwok.x-k8s.io/node=fake (the real kubelets keep
# theirs) and plays their pods' lifecycle with its default stages; the nodes carry
# a NoSchedule taint, so only pods that tolerate it land there.
#   ./scripts/k8s/kwok.sh up N       start kwok (once) and make N fake nodes
#   ./scripts/k8s/kwok.sh pods M     M pods on the fake nodes: time to all Running,
#                                    then delete them
#   ./scripts/k8s/kwok.sh down       delete the fake nodes and stop kwok
# `cluster.sh down` stops kwok too (its pid is in the cluster's run dir). More than
# ~250 fake nodes need a pod CIDR with room for one /24 each: start the cluster
# with e.g. K8S_POD_CIDR=10.64.0.0/12.
set -euo pipefail
export PATH="$PATH:/usr/local/go/bin"
S=${K8S_STATE:-/var/lib/computesdk-k8s}
version=${KWOK_VERSION:-v0.7.0}
cache=${COMPUTESDK_CACHE:-/var/cache/computesdk}/kwok/$version
log() { printf '[k8s-kwok %s] %s\n' "$(date -u +%T)" "$*" >&2; }
die() { log "error: $*"; exit 1; }
[ -s "$S/bin-dir" ] || die "no cluster (scripts/k8s/cluster.sh up)"
kubectl() { "$(cat "$S/bin-dir")/kubectl" --kubeconfig "$S/kubeconfig/admin.kubeconfig" "$@"; }
elapsed() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN {printf "%.1f", b - a}'; }

build() {
  [ -x "$cache/kwok" ] && return 0
  log "building sigs.k8s.io/kwok@$version (go install, nice 19)"
  mkdir -p "$cache/gobin"
  GOBIN=$cache/gobin CGO_ENABLED=0 nice -n 19 go install -ldflags "-s -w" "sigs.k8s.io/kwok/cmd/kwok@$version"
  mv "$cache/gobin/kwok" "$cache/kwok" && rmdir "$cache/gobin"
}
running() {
  local pid
  pid=$(cat "$S/run/kwok.pid" 2>/dev/null) && [ -d "/proc/$pid" ] &&
    grep -qF -- "$S" "/proc/$pid/cmdline" 2>/dev/null
}
fake_node() { # NAME
  cat <<EOF
apiVersion: v1
kind: Node
metadata:
  name: $1
  annotations: {kwok.x-k8s.io/node: fake, node.alpha.kubernetes.io/ttl: "0"}
  labels: {type: kwok, kubernetes.io/hostname: $1, kubernetes.io/os: linux}
spec:
  taints: [{key: kwok.x-k8s.io/node, value: fake, effect: NoSchedule}]
status:
  allocatable: {cpu: "32", memory: 256Gi, pods: "110"}
  capacity: {cpu: "32", memory: 256Gi, pods: "110"}
---
EOF
}

up() {
  local n=${1:?usage: kwok.sh up N} t i
  build
  if ! running; then
    mkdir -p "$S/logs" "$S/run"
    setsid "$cache/kwok" --kubeconfig "$S/kubeconfig/admin.kubeconfig" \
      --manage-all-nodes=false --manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake \
      --cidr=10.245.0.0/16 --node-ip=10.250.0.254 \
      >>"$S/logs/kwok.log" 2>&1 </dev/null &
    echo $! >"$S/run/kwok.pid"
    log "started kwok (pid $!)"
  fi
  t=$(date +%s.%N)
  for i in $(seq "$n"); do fake_node "kwok-node-$i"; done | kubectl apply -f - >/dev/null
  kubectl wait --for=condition=Ready --timeout=600s node -l type=kwok >/dev/null
  log "$n fake node(s) Ready in $(elapsed "$t") s"
}

pods() {
  local m=${1:?usage: kwok.sh pods M} t run=kp$(date +%s) i
  t=$(date +%s.%N)
  for i in $(seq "$m"); do
    cat <<EOF
apiVersion: v1
kind: Pod
metadata: {name: $run-$i, namespace: default, labels: {run: $run}}
spec:
  nodeSelector: {type: kwok}
  tolerations: [{key: kwok.x-k8s.io/node, operator: Exists, effect: NoSchedule}]
  containers: [{name: c, image: fake}]
---
EOF
  done | kubectl apply -f - >/dev/null
  kubectl wait --for=jsonpath='{.status.phase}'=Running --timeout=600s pod -l "run=$run" >/dev/null
  log "$m pod(s) Running on fake nodes in $(elapsed "$t") s"
  t=$(date +%s.%N)
  kubectl delete pods -l "run=$run" >/dev/null
  log "$m pod(s) deleted in $(elapsed "$t") s"
}

down() {
  kubectl delete nodes -l type=kwok --ignore-not-found >/dev/null || true
  if running; then kill "$(cat "$S/run/kwok.pid")"; fi
  rm -f "$S/run/kwok.pid"
  log "down"
}

case ${1:-} in
  build) build ;;
  up) up "${2:-}" ;;
  pods) pods "${2:-}" ;;
  down) down ;;
  *) sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
esac
