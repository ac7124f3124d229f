#!/usr/bin/env bash
# NetworkPolicy enforcement for the cluster cluster.sh starts. The bridge CNI
# plugin enforces nothing (it never reads the API), so `cluster.sh up --netpol`
# runs kube-router's network policy controller (iptables + ipset; routing and
# service proxy off) on every node, as a host process in the node's netns.
# kube-router is built here from the Go module proxy, cached by version.
# (sigs.k8s.io/kube-network-policies, SIG Network's reference implementation,
# builds too but cannot work on this kernel: it needs the nftables `queue`
# expression, CONFIG_NFT_QUEUE, which this kernel lacks. See NOTES.md.)
#   ./scripts/k8s/netpol.sh build    build kube-router once; prints the binary
#   ./scripts/k8s/netpol.sh check    two tenants' pods over the nodes: open without
#                                    a policy; with "deny by default, members allowed
#                                    to each other" isolated, members still reach
#                                    each other (same node and across nodes)
set -euo pipefail
export PATH="$PATH:/usr/local/go/bin"
S=${K8S_STATE:-/var/lib/computesdk-k8s}
version=${KUBE_ROUTER_VERSION:-v2.1.0}
cache=${COMPUTESDK_CACHE:-/var/cache/computesdk}/kube-router/$version
log() { printf '[k8s-netpol %s] %s\n' "$(date -u +%T)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

build() {
  if [ ! -x "$cache/kube-router" ]; then
    log "building github.com/cloudnativelabs/kube-router/v2@$version (go install, nice 19)"
    mkdir -p "$cache/gobin"
    GOBIN=$cache/gobin CGO_ENABLED=0 nice -n 19 go install -ldflags "-s -w" \
      "github.com/cloudnativelabs/kube-router/v2/cmd/kube-router@$version"
    mv "$cache/gobin/kube-router" "$cache/kube-router" && rmdir "$cache/gobin"
  fi
  command -v ipset >/dev/null ||
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq ipset >/dev/null
  echo "$cache/kube-router"
}

kubectl() { "$(cat "$S/bin-dir")/kubectl" --kubeconfig "$S/kubeconfig/admin.kubeconfig" "$@"; }
check_pod() { # NAMESPACE NAME NODE
  cat <<EOF
apiVersion: v1
kind: Pod
metadata: {name: $2, namespace: $1, labels: {app: netpol-check}}
spec:
  nodeSelector: {kubernetes.io/hostname: $3}
  terminationGracePeriodSeconds: 0
  containers:
  - name: web
    image: computesdk.local/k8s-busybox:1
    imagePullPolicy: Never
    command: [sh, -c, "mkdir -p /tmp/w && echo $2 >/tmp/w/index.html && exec httpd -f -p 8080 -h /tmp/w"]
---
EOF
}
reach() { # FROM-NS FROM-POD TO-NS TO-POD: 0 if an HTTP GET gets through
  local ip
  ip=$(kubectl -n "$3" get pod "$4" -o jsonpath='{.status.podIP}')
  # (busybox 1.35's `wget -T` segfaults: timeout(1) bounds it instead)
  kubectl -n "$1" exec "$2" -- timeout 5 wget -qO- "http://$ip:8080/" 2>/dev/null | grep -qx "$4"
}
expect() { # yes|no FROM-NS FROM-POD TO-NS TO-POD
  local want=$1 got; shift
  if reach "$@"; then got=yes; else got=no; fi
  [ "$got" = "$want" ] || die "$1/$2 -> $3/$4: expected $want, got $got"
  log "$1/$2 -> $3/$4: $got (as expected)"
}
elapsed() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN {printf "%.1f", b - a}'; }
check() {
  local last t ns
  last=$(kubectl get nodes -o jsonpath='{.items[-1:].metadata.name}')
  for ns in tenant-a tenant-b; do
    kubectl delete namespace "$ns" --ignore-not-found >/dev/null
    kubectl create namespace "$ns" >/dev/null
  done
  { check_pod tenant-a a1 node-1; check_pod tenant-a a2 "$last"; check_pod tenant-a a3 node-1
    check_pod tenant-b b1 "$last"; } | kubectl apply -f - >/dev/null
  kubectl wait --for=condition=Ready --timeout=120s -n tenant-a pod --all >/dev/null
  kubectl wait --for=condition=Ready --timeout=120s -n tenant-b pod --all >/dev/null
  expect yes tenant-b b1 tenant-a a1 # no policy yet: everything is open
  # What the provider's shared networks map to: deny by default, members allowed.
  kubectl apply -f - >/dev/null <<EOF
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: members-only, namespace: tenant-a}
spec:
  podSelector: {}
  policyTypes: [Ingress, Egress]
  ingress: [{from: [{podSelector: {}}]}]
  egress: [{to: [{podSelector: {}}]}]
EOF
  t=$(date +%s.%N)
  while reach tenant-b b1 tenant-a a1; do
    awk -v a="$t" -v b="$(date +%s.%N)" 'BEGIN {exit !(b - a > 60)}' && die "the policy is not enforced after 60 s"
    sleep 0.5
  done
  log "policy enforced within $(elapsed "$t") s of its creation"
  expect no tenant-b b1 tenant-a a1  # another tenant, from another node
  expect no tenant-b b1 tenant-a a2  # another tenant, same node
  expect yes tenant-a a1 tenant-a a2 # members, across nodes
  expect yes tenant-a a2 tenant-a a1
  expect yes tenant-a a1 tenant-a a3 # members, same node
  expect no tenant-a a1 tenant-b b1  # egress to a non-member
  kubectl delete namespace tenant-a tenant-b --wait=false >/dev/null
  log "NetworkPolicy isolation holds"
}

case ${1:-} in
  build) build ;;
  check) check ;;
  *) sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
esac
