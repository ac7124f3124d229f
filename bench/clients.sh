#!/usr/bin/env bash
# Exec round trip of `true` through each client (Python, TypeScript, Go), one
# private daemon, same sandbox kind, N calls each after a warm-up:
#   bash bench/clients.sh [N]
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/local/go/bin"
n=${1:-300}
root=$(mktemp -d /var/tmp/computesdk-bench-XXXXXX)
chmod 0711 "$root"
sock=$root/d.sock
.venv/bin/computesdkd --socket "$sock" --state-dir "$root/state" --on-exit destroy \
  --log-level warning >"$root/daemon.log" 2>&1 &
daemon=$!
cleanup() {
  kill "$daemon" 2>/dev/null; wait "$daemon" 2>/dev/null
  # The daemon keeps its disk store mounted under the state dir.
  awk -v r="$root/" 'index($2, r) == 1 {print $2}' /proc/self/mounts | sort -r | xargs -r -n1 umount -l
  rm -rf "$root"
}
trap cleanup EXIT
for _ in $(seq 300); do [ -S "$sock" ] && break; sleep 0.1; done

.venv/bin/python bench/client_rtt.py "$sock" "$n"
(cd clients/typescript && npx tsc -p . && node dist/bench/rtt.js "$sock" "$n")
# The Go suite starts its own daemon; its benchmark reports p50-ms and p95-ms.
(cd clients/go && go test -run '^$' -bench ExecRoundTrip -benchtime "${n}x" . | grep Benchmark)
