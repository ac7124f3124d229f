# Sourced by cluster.sh: nodes (containerd + kubelet), up, down, status.
# shellcheck shell=bash

cgroup_dirs() { # NODE: this node's cgroupRoot in every v1 hierarchy (and the v2 one)
  local h
  for h in /sys/fs/cgroup/*/; do
    [ -f "$h/cgroup.procs" ] && echo "${h%/}/$CG/node-$1"
  done
}
make_cgroups() { # NODE: kubelet wants its cgroupRoot to exist
  local d
  for d in $(cgroup_dirs "$1"); do
    mkdir -p "$d"
    case $d in # a new cpuset cgroup is empty: give it the parent's cpus and mems
      */cpuset/*)
        cat /sys/fs/cgroup/cpuset/cpuset.cpus >"$(dirname "$d")/cpuset.cpus"
        cat /sys/fs/cgroup/cpuset/cpuset.mems >"$(dirname "$d")/cpuset.mems"
        cat /sys/fs/cgroup/cpuset/cpuset.cpus >"$d/cpuset.cpus"
        cat /sys/fs/cgroup/cpuset/cpuset.mems >"$d/cpuset.mems"
        ;;
    esac
  done
}

node_net() { # NODE (>1): netns, veth to the bridge, DNAT for the kubernetes service
  local k=$1 ns ip host_if
  ns=$(netns "$k") ip=$(node_ip "$k") host_if=csk8s-v$k
  [ -e "/run/netns/$ns" ] || ip netns add "$ns"
  local in=(nsenter "--net=/run/netns/$ns")
  if ! ip link show "$host_if" >/dev/null 2>&1; then
    ip link add "$host_if" type veth peer name eth0 netns "$ns"
    ip link set "$host_if" master "$BR" up
    "${in[@]}" ip addr add "$ip/24" dev eth0
  fi
  "${in[@]}" ip link set lo up
  "${in[@]}" ip link set eth0 up
  "${in[@]}" ip route replace default via "$API_IP"
  "${in[@]}" sysctl -qw net.ipv4.ip_forward=1
  dnat_api "${in[@]}"
}

containerd_config() { # NODE DIR
  local k=$1 d=$2
  cat >"$d/cni/template" <<EOF
{"cniVersion": "0.4.0", "name": "computesdk-k8s",
 "plugins": [{"type": "bridge", "bridge": "csk8s-cbr$k", "isGateway": true, "ipMasq": false,
   "hairpinMode": true, "ipam": {"type": "host-local", "dataDir": "$d/cni/ipam",
   "ranges": [[{"subnet": "{{.PodCIDR}}"}]], "routes": [{"dst": "0.0.0.0/0"}]}}]}
EOF
  cat >"$d/containerd/config.toml" <<EOF
version = 2
root = "$d/containerd/root"
state = "$d/containerd/state"
oom_score = 0
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper"]
[grpc]
  address = "$d/containerd/containerd.sock"
[debug]
  address = ""
[metrics]
  address = ""
[plugins."io.containerd.internal.v1.opt"]
  path = "$d/containerd/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PAUSE_IMAGE"
  # root lacks CAP_SYS_RESOURCE here: without this every pod fails with
  # "can't get final child's PID from pipe"
  restrict_oom_score_adj = true
  disable_apparmor = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        BinaryName = "$(command -v runc)"
        Root = "$d/containerd/runc"
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "$CNI_BIN"
    conf_dir = "$d/cni/net.d"
    conf_template = "$d/cni/template"
EOF
}

kubelet_config() { # NODE DIR
  local k=$1 d=$2
  cat >"$d/kubelet/config.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: "$(node_ip "$k")"
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: "$P/ca.crt"}
authorization: {mode: Webhook}
tlsCertFile: "$P/node-$k-serving.crt"
tlsPrivateKeyFile: "$P/node-$k-serving.key"
containerRuntimeEndpoint: "unix://$d/containerd/containerd.sock"
cgroupDriver: cgroupfs
cgroupRoot: "/$CG/node-$k"
cgroupsPerQOS: true
failCgroupV1: false
failSwapOn: false
# no KUBE-FIREWALL / canary chains in the host's iptables (node-1 shares its netns)
makeIPTablesUtilChains: false
oomScoreAdj: 0
podLogsDir: "$d/pod-logs"
resolvConf: /etc/resolv.conf
clusterDomain: cluster.local
imageGCHighThresholdPercent: 100
evictionHard: {memory.available: "100Mi", nodefs.available: "1%", imagefs.available: "1%"}
serializeImagePulls: false
EOF
}

node_up() { # NODE
  local k=$1 d=$S/node-$1 ns=- ip
  ip=$(node_ip "$k")
  if [ "$k" -gt 1 ]; then node_net "$k"; ns=$(netns "$k"); fi
  mkdir -p "$d/containerd" "$d/kubelet" "$d/cni/net.d" "$d/pod-logs"
  make_cgroups "$k"
  cert "node-$k" "/O=system:nodes/CN=system:node:node-$k" clientAuth
  cert "node-$k-serving" "/O=system:nodes/CN=system:node:node-$k" serverAuth "DNS:node-$k,IP:$ip"
  kubeconfig "node-$k" "node-$k"
  containerd_config "$k" "$d"
  kubelet_config "$k" "$d"
  start "containerd-$k" "$ns" /usr/bin/containerd --config "$d/containerd/config.toml"
  wait_for 60 "containerd-$k" ctr -a "$d/containerd/containerd.sock" version
  local tar
  for tar in "$S/images.tar" "$S"/images.d/*.tar; do
    [ -e "$tar" ] && ctr -a "$d/containerd/containerd.sock" -n k8s.io images import "$tar" >/dev/null
  done
  start "kubelet-$k" "$ns" "$BIN/kubelet" --config "$d/kubelet/config.yaml" \
    --kubeconfig "$KC/node-$k.kubeconfig" --root-dir "$d/kubelet" \
    --hostname-override "node-$k" --node-ip "$ip" --v=1
}

netpol_rbac() { # kube-router's identity: a client cert bound to its ClusterRole
  cert kube-router "/CN=system:kube-router" clientAuth
  kubeconfig kube-router kube-router
  kubectl apply -f - >/dev/null <<YAML
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: "computesdk-k8s:kube-router"}
rules:
- {apiGroups: [""], resources: [namespaces, pods, services, nodes, endpoints], verbs: [get, list, watch]}
- {apiGroups: [networking.k8s.io], resources: [networkpolicies], verbs: [get, list, watch]}
- {apiGroups: [discovery.k8s.io], resources: [endpointslices], verbs: [get, list, watch]}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: "computesdk-k8s:kube-router"}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: "computesdk-k8s:kube-router"}
subjects: [{apiGroup: rbac.authorization.k8s.io, kind: User, name: "system:kube-router"}]
YAML
}
netpol_up() { # NODE: kube-router's network policy controller only, in the node's netns
  local k=$1 ns=- in=()
  if [ "$k" -gt 1 ]; then ns=$(netns "$k") in=(nsenter "--net=/run/netns/$(netns "$k")"); fi
  start "kube-router-$k" "$ns" "$(cat "$S/netpol")" --kubeconfig "$KC/kube-router.kubeconfig" \
    --hostname-override "node-$k" --run-firewall=true --run-router=false \
    --run-service-proxy=false --enable-cni=false --service-cluster-ip-range "$SVC_CIDR" \
    --health-port 20244 --metrics-port 0 -v 1
  wait_for 60 "kube-router-$k" "${in[@]}" wget -T 2 -t 1 -qO- http://127.0.0.1:20244/healthz
}

node_ready() { # NODE
  [ "$(kubectl get node "node-$1" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}')" = True ]
}
node_routes() { # each node's podCIDR (allocated by the controller manager) via that node
  local k cidr
  for k in $(seq 2 "$nodes"); do
    cidr=$(kubectl get node "node-$k" -o jsonpath='{.spec.podCIDR}')
    [ -n "$cidr" ] || die "node-$k has no podCIDR"
    ip route replace "$cidr" via "$(node_ip "$k")" dev "$BR"
  done
}
test_pod() { # NODE
  cat <<EOF
apiVersion: v1
kind: Pod
metadata: {name: test-node-$1, namespace: default, labels: {app: computesdk-k8s-test}}
spec:
  nodeSelector: {kubernetes.io/hostname: node-$1}
  terminationGracePeriodSeconds: 1
  containers:
  - name: web
    image: $TEST_IMAGE
    imagePullPolicy: Never
    command: [sh, -c, "mkdir -p /tmp/www && hostname >/tmp/www/index.html && exec httpd -f -p 8080 -h /tmp/www"]
    readinessProbe: {tcpSocket: {port: 8080}, periodSeconds: 1}
---
EOF
}
pod_ip() { kubectl get pod "test-node-$1" -o jsonpath='{.status.podIP}'; }

up() {
  local t0 t k
  t0=$(now)
  mkdir -p "$S/logs" "$S/run"
  BIN=$("$here/build.sh")
  echo "$BIN" >"$S/bin-dir"
  if [ ! -x "$CNI_BIN/bridge" ]; then
    log "installing containernetworking-plugins"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq containernetworking-plugins >/dev/null
  fi
  command -v runc >/dev/null || die "runc is not installed (apt-get install runc)"
  [ -x /usr/bin/containerd ] || die "containerd is not installed (apt-get install containerd)"
  [ -s "$S/images.tar" ] || "$here/test-image.sh" "$S/images.tar"
  pki
  host_net
  control_plane
  log "control plane ready in $(since "$t0") s"
  [ "$netpol" -eq 0 ] || "$here/netpol.sh" build >"$S/netpol"
  [ ! -s "$S/netpol" ] || netpol_rbac
  local prev
  prev=$(cat "$S/nodes" 2>/dev/null || echo 0)
  [ "$nodes" -ge "$prev" ] || nodes=$prev # up never shrinks a running cluster
  echo "$nodes" >"$S/nodes"
  for k in $(seq "$nodes"); do
    t=$(now)
    node_up "$k"
    wait_for 120 "node-$k Ready" node_ready "$k"
    log "node-$k Ready in $(since "$t") s"
    [ ! -s "$S/netpol" ] || netpol_up "$k"
  done
  node_routes
  wait_for 60 "the default service account" kubectl get serviceaccount default
  t=$(now)
  for k in $(seq "$nodes"); do test_pod "$k"; done | kubectl apply -f - >/dev/null
  wait_for 120 "the test pods" kubectl wait --for=condition=Ready --timeout=1s pod -l app=computesdk-k8s-test
  log "test pods Ready in $(since "$t") s"
  # The checks: host to every pod, pod to pod across nodes (through kubectl exec,
  # so the API server -> kubelet -> containerd streaming path too), and a pod to
  # the API server by the kubernetes service's ClusterIP (the DNAT).
  for k in $(seq "$nodes"); do
    [ "$(wget -T 5 -t 1 -qO- "http://$(pod_ip "$k"):8080/")" = "test-node-$k" ] || die "host cannot reach test-node-$k"
    local peer=$(((k % nodes) + 1))
    kubectl exec "test-node-$k" -- timeout 5 wget -qO- "http://$(pod_ip "$peer"):8080/" | grep -qx "test-node-$peer" ||
      die "test-node-$k cannot reach test-node-$peer"
    kubectl exec "test-node-$k" -- timeout 10 nc -w 3 "$SVC_API_IP" 443 </dev/null ||
      die "test-node-$k cannot reach the API server at $SVC_API_IP:443"
  done
  log "cluster up with $nodes node(s) in $(since "$t0") s"
  echo "$KC/admin.kubeconfig"
}

node_netns_inodes() { # NODE: the net namespaces of the node's pods (before they die)
  local d p
  for d in $(cgroup_dirs "$1"); do
    [ -d "$d" ] || continue
    find "$d" -name cgroup.procs -exec cat {} + 2>/dev/null
  done | sort -u | while read -r p; do
    readlink "/proc/$p/ns/net" 2>/dev/null | tr -dc 0-9
    echo
  done | sort -u | grep . || true
}
kill_cgroup_tree() { # NODE: SIGKILL every process in the node's cgroups, then rmdir them
  local d i pids
  for i in $(seq 50); do
    pids=$(for d in $(cgroup_dirs "$1"); do
      [ -d "$d" ] && find "$d" -name cgroup.procs -exec cat {} + 2>/dev/null
    done | sort -u)
    [ -n "$pids" ] || break
    # shellcheck disable=SC2086
    kill -KILL $pids 2>/dev/null || true
    sleep 0.1
  done
  for d in $(cgroup_dirs "$1"); do
    [ -d "$d" ] && find "$d" -depth -type d -exec rmdir {} + 2>/dev/null || true
    rmdir "$(dirname "$d")" 2>/dev/null || true
  done
}
kill_shims() { # SOCKET: the containerd shims this node's containerd started
  local f pid
  for f in $(grep -lsF -- "$1" /proc/[0-9]*/cmdline); do
    pid=${f#/proc/} pid=${pid%/cmdline}
    { tr '\0' '\n' <"$f" | grep -qxF -- "$1" && grep -qa containerd-shim "$f"; } 2>/dev/null &&
      kill -KILL "$pid" 2>/dev/null || true
  done
}

node_down() { # NODE: its kubelet, pods, shims and containerd die; its links go
  local k=$1 inodes m ino
  stop "kube-router-$k" "kubelet-$k"
  [ "$k" -ne 1 ] || kube_chains_purge
  inodes=$(node_netns_inodes "$k")
  kill_cgroup_tree "$k"
  kill_shims "$S/node-$k/containerd/containerd.sock"
  stop "containerd-$k"
  for m in /run/netns/cni-*; do # the pods' netns bind mounts that containerd made
    ino=$(stat -L -c %i "$m" 2>/dev/null) || continue
    if [ -n "$inodes" ] && grep -qxF -- "$ino" <<<"$inodes"; then
      umount "$m" 2>/dev/null || true
      rm -f "$m"
    fi
  done
  awk -v s="$S/node-$k/" 'index($2, s) == 1 {print $2}' /proc/self/mounts | sort -r |
    while read -r m; do umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true; done
  if [ "$k" -gt 1 ]; then
    ip netns del "$(netns "$k")" 2>/dev/null || true
    ip link del "csk8s-v$k" 2>/dev/null || true
  fi
  ip link del "csk8s-cbr$k" 2>/dev/null || true
}

import_image() { # TAR: on every node now, and on nodes `up` adds or restarts later
  local tar=$1 sock
  [ -f "$tar" ] || die "no image tarball $tar"
  mkdir -p "$S/images.d"
  cp -f "$tar" "$S/images.d/$(basename "$tar" .tar).tar"
  for sock in "$S"/node-*/containerd/containerd.sock; do
    [ -S "$sock" ] || continue
    ctr -a "$sock" -n k8s.io images import "$tar" >/dev/null
    log "imported $(basename "$tar") on $(basename "$(dirname "$(dirname "$sock")")")"
  done
}

kill_node() { # NODE: a node dies (for tests of lost nodes); `up` brings it back
  [ -d "$S/node-$nodes" ] || die "no node-$nodes"
  BIN=$(cat "$S/bin-dir")
  node_down "$nodes"
  log "node-$nodes killed"
}

down() {
  local k n inodes m
  mkdir -p "$S/run"
  n=$(cat "$S/nodes" 2>/dev/null || echo 0)
  for d in "$S"/node-*; do [ -d "$d" ] && k=${d##*-} && [ "$k" -gt "$n" ] && n=$k; done
  stop kwok $(for k in $(seq "$n"); do echo "kube-router-$k" "kubelet-$k"; done)
  for k in $(seq "$n"); do node_down "$k"; done
  stop kube-scheduler kube-controller-manager kube-apiserver
  stop etcd
  # What kubelet (secret and token tmpfs) and containerd (overlay rootfs, shm) mounted.
  awk -v s="$S/" 'index($2, s) == 1 {print $2}' /proc/self/mounts | sort -r | while read -r m; do
    umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true
  done
  ip link del "$BR" 2>/dev/null || true
  ipt_purge
  kube_chains_purge
  if [ "$(awk -v s="$S/" 'index($2, s) == 1' /proc/self/mounts | wc -l)" -ne 0 ]; then
    die "mounts left under $S: $(awk -v s="$S/" 'index($2, s) == 1 {print $2}' /proc/self/mounts | head -3)"
  fi
  rm -rf "$S"/node-* "$S/etcd" "$S/run" "$S/nodes" "$S/bin-dir" "$S/netpol"
  [ "$purge" -eq 0 ] || rm -rf "$S"
  log "down"
}

status() {
  local f name pid
  for f in "$S"/run/*.pid; do
    [ -e "$f" ] || { echo "not running"; return 0; }
    name=$(basename "$f" .pid)
    if pid=$(pid_of "$name"); then echo "$name: running (pid $pid)"; else echo "$name: dead"; fi
  done
  BIN=$(cat "$S/bin-dir" 2>/dev/null) || return 0
  pid_of kube-apiserver >/dev/null || return 0
  kubectl get nodes -o wide || true
  kubectl get pods -A -o wide || true
}
