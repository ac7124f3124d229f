#!/usr/bin/env bash
# Starts Debian's dockerd in the background unless one already answers.
set -euo pipefail
sock=/var/run/docker.sock
ping() { curl -sf --unix-socket "$sock" http://docker/_ping >/dev/null 2>&1; }
ping && exit 0
mkdir -p /var/log/computesdk
nohup dockerd >/var/log/computesdk/dockerd.log 2>&1 &
for _ in $(seq 1 120); do
  ping && exit 0
  sleep 0.5
done
echo "dockerd did not come up; see /var/log/computesdk/dockerd.log" >&2
tail -20 /var/log/computesdk/dockerd.log >&2
exit 1
