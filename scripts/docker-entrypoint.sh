#!/bin/sh
# The container image's entrypoint (Dockerfile). With no arguments, or only
# options (`docker run IMAGE --listen ...`), it runs computesdkd. Starting the
# daemon first builds the sandboxes' base root filesystem into the volume (once;
# cached after); anything else (`computesdkd --help`, `computesdk ...`, `sh`)
# runs as given.
set -e
if [ $# -eq 0 ] || [ "${1#-}" != "$1" ]; then
  set -- computesdkd "$@"
fi
if [ "$1" = computesdkd ]; then
  case " $* " in
    *" --help "* | *" -h "* | *" --version "*) ;;
    *) python -m computesdkd.providers.local.rootfs >/dev/null ;;
  esac
fi
exec "$@"
