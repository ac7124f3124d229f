#!/usr/bin/env bash
# Measures pod start on the cluster cluster.sh started: creates COUNT busybox pods
# (imagePullPolicy: Never) spread over the nodes, waits until all are Ready, prints
# per-pod creation->Ready seconds (from the API server's own timestamps) and the
# wall time of the batch, then deletes them.
#   ./scripts/k8s/pod-start.sh [COUNT]     (default 1, then run again with 10)
set -euo pipefail
count=${1:-1}
S=${K8S_STATE:-/var/lib/computesdk-k8s}
bin=$(cat "$S/bin-dir")
k() { "$bin/kubectl" --kubeconfig "$S/kubeconfig/admin.kubeconfig" "$@"; }
run=ps$(date +%s)
t0=$(date +%s.%N)
for i in $(seq "$count"); do
  cat <<EOF
apiVersion: v1
kind: Pod
metadata: {name: $run-$i, namespace: default, labels: {run: $run}}
spec:
  terminationGracePeriodSeconds: 0
  topologySpreadConstraints:
  - {maxSkew: 1, topologyKey: kubernetes.io/hostname, whenUnsatisfiable: ScheduleAnyway,
     labelSelector: {matchLabels: {run: $run}}}
  containers:
  - {name: c, image: "computesdk.local/k8s-busybox:1", imagePullPolicy: Never, command: [sleep, "3600"]}
---
EOF
done | k apply -f - >/dev/null
k wait --for=condition=Ready --timeout=300s pod -l "run=$run" >/dev/null
t1=$(date +%s.%N)
k get pods -l "run=$run" -o json | jq -r '.items[] | [.metadata.name, .spec.nodeName,
    ((.status.conditions[] | select(.type == "Ready") | .lastTransitionTime | fromdate)
     - (.metadata.creationTimestamp | fromdate))] | @tsv' | sort -k3 -n
awk -v a="$t0" -v b="$t1" -v n="$count" 'BEGIN {printf "%d pod(s) Ready in %.1f s wall\n", n, b - a}'
k delete pods -l "run=$run" --wait=false >/dev/null
