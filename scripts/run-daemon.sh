#!/usr/bin/env bash
# Sets everything up, then runs computesdkd on the local provider in the foreground.
# Extra arguments go to computesdkd (try --help). Stop it with Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
echo "==> computesdkd on ${COMPUTESDK_SOCKET:-/run/computesdk/computesdkd.sock}" >&2
echo "    in another shell: .venv/bin/computesdk create --template python" >&2
# Warm pools: create of these templates hands out a never-used sandbox at once
# (computesdkd --no-pool-create turns that off; sizes are MIN:MAX per template).
exec .venv/bin/computesdkd \
  --warm-pool base=local/base:4:100 --warm-pool python=local/python:4:100 \
  --warm-pool node=local/node:4:100 "$@"
