#!/usr/bin/env bash
# A real Kubernetes cluster on this machine, for tests: no systemd, no kubeadm, no
# registry, no internet. Everything lives under one state dir; every process is
# started in the background with its pid recorded and its own log.
#   ./scripts/k8s/cluster.sh up [--nodes N] [--netpol]
#                                             start (or grow) the cluster, wait until
#                                             every node is Ready and a test pod runs
#                                             on each; prints the admin kubeconfig;
#                                             --netpol (sticky): NetworkPolicy enforced
#                                             by kube-router on every node (netpol.sh)
#   ./scripts/k8s/cluster.sh down [--purge]   kill everything, unmount what kubelet and
#                                             containerd mounted, remove the nodes'
#                                             links, netns, cgroups and iptables rules
#                                             (idempotent); --purge also drops PKI and logs
#   ./scripts/k8s/cluster.sh kill-node K      node-K's kubelet, pods and containerd die
#                                             (for lost-node tests); `up` restarts it
#   ./scripts/k8s/cluster.sh import IMAGE.tar  a docker-archive/OCI tarball into every
#                                             node's containerd (kept: nodes added or
#                                             restarted later get it too)
#   ./scripts/k8s/cluster.sh status
# Layout (K8S_STATE, default /var/lib/computesdk-k8s):
#   pki/ kubeconfig/ logs/<component>.log run/<component>.pid etcd/ images.tar
#   node-K/{containerd,kubelet,cni,pod-logs}
# Network (all on host bridge csk8s0, K8S_NODE_NET.0/24, default 10.250.0.0/24):
#   node-1 runs in the host's netns with node IP 10.250.0.1 (the bridge address: the
#   kubelet refuses a loopback node IP; the API server binds it too); node-K (K>1)
#   runs in netns csk8s-node-K (veth to the bridge, 10.250.0.(10+K)), started with
#   `nsenter --net` (`ip netns exec` would remount /sys and hide the cgroups).
#   Pods: bridge CNI per node on the node's podCIDR (the controller manager
#   allocates /24s of K8S_POD_CIDR, containerd renders its CNI conf_template);
#   the host routes each node's podCIDR to that node, no masquerade.
#   Services: there is no kube-proxy. Only the `kubernetes` service's ClusterIP
#   (10.96.0.1:443) works, by an iptables DNAT to the API server in the host and in
#   each node netns; anything else talks to pods by pod IP.
# Binaries: scripts/k8s/build.sh (cached by version). Runtime: Debian's containerd
# (one instance per node, CRI plugin), runc, containernetworking-plugins.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
S=${K8S_STATE:-/var/lib/computesdk-k8s}
NET=${K8S_NODE_NET:-10.250.0}
API_IP=$NET.1
API_PORT=${K8S_API_PORT:-16443}
ETCD_PORT=${K8S_ETCD_PORT:-12379}
POD_CIDR=${K8S_POD_CIDR:-10.244.0.0/16}
SVC_CIDR=${K8S_SVC_CIDR:-10.96.0.0/16}
SVC_API_IP=${K8S_SVC_API_IP:-10.96.0.1}
CG=${K8S_CGROUP:-computesdk-k8s}
BR=csk8s0
CNI_BIN=/usr/lib/cni
PAUSE_IMAGE=computesdk.local/k8s-pause:1
TEST_IMAGE=computesdk.local/k8s-busybox:1
TAG=computesdk-k8s # iptables comment on every rule this script adds
P=$S/pki
KC=$S/kubeconfig

log() { printf '[k8s %s] %s\n' "$(date -u +%T)" "$*" >&2; }
die() { log "error: $*"; exit 1; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN {printf "%.1f", b - a}'; }
node_ip() { if [ "$1" -eq 1 ]; then echo "$API_IP"; else echo "$NET.$((10 + $1))"; fi; }
netns() { echo "csk8s-node-$1"; }
kubectl() { "$BIN/kubectl" --kubeconfig "$KC/admin.kubeconfig" "$@"; }
wait_for() { # SECONDS WHAT CMD...
  local limit=$1 what=$2 t0; shift 2
  t0=$(date +%s)
  until "$@" >/dev/null 2>&1; do
    [ $(($(date +%s) - t0)) -lt "$limit" ] || die "timed out after ${limit}s waiting for $what"
    sleep 0.2
  done
}

# --- processes ------------------------------------------------------------------
pid_of() { # NAME: the recorded pid if it still runs the binary we started
  local f=$S/run/$1.pid pid
  [ -f "$f" ] || return 1
  pid=$(cat "$f")
  [ -d "/proc/$pid" ] && grep -qF -- "$S" "/proc/$pid/cmdline" 2>/dev/null && echo "$pid"
}
start() { # NAME NETNS|- CMD...: in the background, own session, log and pid
  local name=$1 ns=$2; shift 2
  if pid_of "$name" >/dev/null; then return 0; fi
  local pre=()
  [ "$ns" = - ] || pre=(nsenter "--net=/run/netns/$ns" --)
  setsid "${pre[@]}" "$@" >>"$S/logs/$name.log" 2>&1 </dev/null &
  echo $! >"$S/run/$name.pid"
  log "started $name (pid $!)"
}
stop() { # NAME...: TERM all, then KILL what is left after 10 s
  local name pid pids=() i
  for name in "$@"; do
    if pid=$(pid_of "$name"); then
      kill -TERM "$pid" 2>/dev/null || true
      pids+=("$pid")
      log "stopping $name (pid $pid)"
    fi
    rm -f "$S/run/$name.pid"
  done
  for pid in "${pids[@]}"; do
    for i in $(seq 50); do [ -d "/proc/$pid" ] || break; sleep 0.2; done
    kill -KILL "$pid" 2>/dev/null || true
  done
}

# --- PKI (openssl) ----------------------------------------------------------------
newkey() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }
cert() { # NAME SUBJECT EKU [SAN]: a key and a certificate signed by the CA
  local name=$1 subj=$2 eku=$3 san=${4:-} ext
  [ -s "$P/$name.crt" ] && return 0
  newkey "$P/$name.key"
  ext="basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=$eku"
  [ -z "$san" ] || ext+="
subjectAltName=$san"
  openssl req -new -key "$P/$name.key" -subj "$subj" -out "$P/$name.csr" 2>/dev/null
  openssl x509 -req -in "$P/$name.csr" -CA "$P/ca.crt" -CAkey "$P/ca.key" -days 3650 \
    -set_serial "0x$(openssl rand -hex 16)" -extfile <(printf '%s\n' "$ext") \
    -out "$P/$name.crt" 2>/dev/null
  rm -f "$P/$name.csr"
}
kubeconfig() { # NAME USER-CERT
  cat >"$KC/$1.kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: computesdk-k8s
  cluster: {certificate-authority: $P/ca.crt, server: "https://$API_IP:$API_PORT"}
users:
- name: $2
  user: {client-certificate: $P/$2.crt, client-key: $P/$2.key}
contexts:
- name: computesdk-k8s
  context: {cluster: computesdk-k8s, user: $2}
current-context: computesdk-k8s
EOF
}
pki() {
  mkdir -p "$P" "$KC" && chmod 700 "$P"
  if [ ! -s "$P/ca.crt" ]; then
    newkey "$P/ca.key"
    openssl req -x509 -new -key "$P/ca.key" -subj "/CN=computesdk-k8s-ca" -days 3650 \
      -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
      -out "$P/ca.crt" 2>/dev/null
  fi
  local svc=kubernetes.default.svc
  cert apiserver "/CN=kube-apiserver" serverAuth \
    "DNS:kubernetes,DNS:kubernetes.default,DNS:$svc,DNS:$svc.cluster.local,DNS:localhost,IP:127.0.0.1,IP:$API_IP,IP:$SVC_API_IP"
  cert apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client" clientAuth
  cert admin "/O=system:masters/CN=admin" clientAuth
  cert controller-manager "/CN=system:kube-controller-manager" clientAuth
  cert scheduler "/CN=system:kube-scheduler" clientAuth
  if [ ! -s "$P/sa.pub" ]; then
    newkey "$P/sa.key"
    openssl pkey -in "$P/sa.key" -pubout -out "$P/sa.pub" 2>/dev/null
  fi
  kubeconfig admin admin
  kubeconfig controller-manager controller-manager
  kubeconfig scheduler scheduler
}

# --- iptables: rules tagged with $TAG, added once, removed on down -----------------
ipt() { # [nsenter-prefix...] -- TABLE CHAIN RULE...: insert unless present
  local pre=() table chain
  while [ "$1" != -- ]; do pre+=("$1"); shift; done
  shift; table=$1 chain=$2; shift 2
  "${pre[@]}" iptables -w -t "$table" -C "$chain" "$@" -m comment --comment "$TAG" 2>/dev/null ||
    "${pre[@]}" iptables -w -t "$table" -I "$chain" 1 "$@" -m comment --comment "$TAG"
}
ipt_purge() { # delete every rule tagged $TAG in the host's filter and nat tables
  local table rule
  for table in filter nat; do
    iptables -w -t "$table" -S | { grep -F -- "--comment $TAG" || true; } | sed 's/^-A /-D /' |
      while read -r rule; do eval "iptables -w -t $table $rule" || true; done
  done
}
kube_chains_purge() { # node-1 shares the host's netns: what its kubelet and kube-router
  # made there (KUBE-* chains and the jumps to them, kube-router's KUBE-* ipsets).
  # kube-router's own --cleanup-config panics on this kernel (no IPVS) and would
  # delete every IPVS service on the host. Nothing else here makes KUBE-* chains.
  local cmd table rule chain set
  for cmd in iptables ip6tables; do
    for table in filter nat mangle raw; do
      "$cmd" -w -t "$table" -S 2>/dev/null | { grep -E '^-A [A-Z]+ .*-j KUBE-' || true; } |
        sed 's/^-A /-D /' | while read -r rule; do eval "$cmd -w -t $table $rule" || true; done
      for chain in $("$cmd" -w -t "$table" -S 2>/dev/null | awk '/^-N KUBE-/ {print $2}'); do
        "$cmd" -w -t "$table" -F "$chain" 2>/dev/null || true
      done
      for chain in $("$cmd" -w -t "$table" -S 2>/dev/null | awk '/^-N KUBE-/ {print $2}'); do
        "$cmd" -w -t "$table" -X "$chain" 2>/dev/null || true
      done
    done
  done
  if command -v ipset >/dev/null; then
    for set in $(ipset list -n | grep '^KUBE-' || true); do ipset destroy "$set" 2>/dev/null || true; done
  fi
}
dnat_api() { # [nsenter-prefix...]: the `kubernetes` ClusterIP to the API server
  ipt "$@" -- nat PREROUTING -d "$SVC_API_IP/32" -p tcp --dport 443 -j DNAT --to-destination "$API_IP:$API_PORT"
  ipt "$@" -- nat OUTPUT -d "$SVC_API_IP/32" -p tcp --dport 443 -j DNAT --to-destination "$API_IP:$API_PORT"
}
host_net() {
  if ! ip link show "$BR" >/dev/null 2>&1; then
    ip link add "$BR" type bridge
    ip addr add "$API_IP/24" dev "$BR"
  fi
  ip link set "$BR" up
  sysctl -qw net.ipv4.ip_forward=1
  # docker sets FORWARD's policy to DROP and br_netfilter sends bridged frames
  # through it: let pod and node traffic pass.
  ipt -- filter FORWARD -s "$POD_CIDR" -j ACCEPT
  ipt -- filter FORWARD -d "$POD_CIDR" -j ACCEPT
  ipt -- filter FORWARD -i "$BR" -o "$BR" -j ACCEPT
  dnat_api
}

# --- control plane -----------------------------------------------------------------
control_plane() {
  mkdir -p "$S/etcd" && chmod 700 "$S/etcd"
  start etcd - "$BIN/etcd" --name computesdk-k8s --data-dir "$S/etcd" \
    --listen-client-urls "http://127.0.0.1:$ETCD_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
    --listen-peer-urls "http://127.0.0.1:$((ETCD_PORT + 1))" \
    --initial-advertise-peer-urls "http://127.0.0.1:$((ETCD_PORT + 1))" \
    --initial-cluster "computesdk-k8s=http://127.0.0.1:$((ETCD_PORT + 1))" \
    --listen-metrics-urls "" --log-level warn
  start kube-apiserver - "$BIN/kube-apiserver" \
    --etcd-servers "http://127.0.0.1:$ETCD_PORT" \
    --bind-address "$API_IP" --secure-port "$API_PORT" --advertise-address "$API_IP" \
    --tls-cert-file "$P/apiserver.crt" --tls-private-key-file "$P/apiserver.key" \
    --client-ca-file "$P/ca.crt" \
    --kubelet-client-certificate "$P/apiserver-kubelet-client.crt" \
    --kubelet-client-key "$P/apiserver-kubelet-client.key" \
    --kubelet-certificate-authority "$P/ca.crt" \
    --kubelet-preferred-address-types InternalIP \
    --authorization-mode Node,RBAC --enable-admission-plugins NodeRestriction \
    --service-cluster-ip-range "$SVC_CIDR" \
    --service-account-issuer https://kubernetes.default.svc.cluster.local \
    --service-account-key-file "$P/sa.pub" --service-account-signing-key-file "$P/sa.key" \
    --allow-privileged=true --profiling=false --v=1
  wait_for 120 "the API server" kubectl get --raw /readyz
  start kube-controller-manager - "$BIN/kube-controller-manager" \
    --kubeconfig "$KC/controller-manager.kubeconfig" \
    --authentication-kubeconfig "$KC/controller-manager.kubeconfig" \
    --authorization-kubeconfig "$KC/controller-manager.kubeconfig" \
    --bind-address 127.0.0.1 --leader-elect=false \
    --cluster-signing-cert-file "$P/ca.crt" --cluster-signing-key-file "$P/ca.key" \
    --root-ca-file "$P/ca.crt" --service-account-private-key-file "$P/sa.key" \
    --use-service-account-credentials=true \
    --allocate-node-cidrs=true --cluster-cidr "$POD_CIDR" --node-cidr-mask-size 24 \
    --service-cluster-ip-range "$SVC_CIDR" \
    --node-monitor-grace-period "${K8S_NODE_MONITOR_GRACE:-50s}" --profiling=false --v=1
  start kube-scheduler - "$BIN/kube-scheduler" \
    --kubeconfig "$KC/scheduler.kubeconfig" \
    --authentication-kubeconfig "$KC/scheduler.kubeconfig" \
    --authorization-kubeconfig "$KC/scheduler.kubeconfig" \
    --bind-address 127.0.0.1 --leader-elect=false --profiling=false --v=1
}

source "$here/node.sh"

usage() { sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
cmd=${1:-}
[ $# -gt 0 ] && shift
if [ "$cmd" = kill-node ]; then set -- --nodes "${1:-}"; fi
image_tar=
if [ "$cmd" = import ]; then image_tar=${1:?usage: cluster.sh import IMAGE.tar}; shift; fi
nodes=1 purge=0 netpol=0
while [ $# -gt 0 ]; do
  case $1 in
    --nodes) nodes=${2:?}; shift 2 ;;
    --nodes=*) nodes=${1#*=}; shift ;;
    --purge) purge=1; shift ;;
    --netpol) netpol=1; shift ;;
    *) usage ;;
  esac
done
[[ $nodes =~ ^[1-9][0-9]?$ ]] || die "--nodes takes 1..99"
[ "$(id -u)" -eq 0 ] || die "cluster.sh must run as root"
case $cmd in
  up) up ;;
  down) down ;;
  status) status ;;
  kill-node) kill_node ;;
  import) import_image "$image_tar" ;;
  *) usage ;;
esac
