#!/usr/bin/env bash
# Sets everything up, then runs computesdkd on the local provider in the foreground.
# Extra arguments go to computesdkd (try --help). Stop it with Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
echo "==> computesdkd on ${COMPUTESDK_SOCKET:-/run/computesdk/computesdkd.sock}" >&2
echo "    in another shell: .venv/bin/computesdk create --template python" >&2
exec .venv/bin/computesdkd "$@"
