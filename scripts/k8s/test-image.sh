#!/usr/bin/env bash
# Makes the test cluster's two local images as one docker-archive tarball, without
# docker and without a registry, for `ctr -n k8s.io images import`:
#   computesdk.local/k8s-pause:1     the pod sandbox ("pause") image: a static
#                                    pause binary (below, built with gcc) as entrypoint;
#   computesdk.local/k8s-busybox:1   a static busybox with its applets (test pods,
#                                    imagePullPolicy: Never).
# Both share one uncompressed layer: /bin/busybox (busybox-static, which
# scripts/setup.sh installs for tests), its applet links, and /pause.
#   ./scripts/k8s/test-image.sh OUT.tar
set -euo pipefail
out=${1:?usage: test-image.sh OUT.tar}
busybox=${BUSYBOX:-/bin/busybox}
[ -x "$busybox" ] || { echo "no static busybox at $busybox (apt-get install busybox-static)" >&2; exit 1; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/root/bin" "$work/root/tmp" "$work/root/etc" "$work/img"

# The pause process: sleeps until SIGINT/SIGTERM, reaps zombies when it is pid 1
# of a shared pid namespace (what kubernetes' build/pause/linux/pause.c does).
cat >"$work/pause.c" <<'EOF'
#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>
static void die(int sig) { (void)sig; _exit(0); }
static void reap(int sig) { (void)sig; while (waitpid(-1, NULL, WNOHANG) > 0) {} }
int main(void) {
  struct sigaction a = {0}, r = {0};
  a.sa_handler = die;
  sigaction(SIGINT, &a, NULL);
  sigaction(SIGTERM, &a, NULL);
  r.sa_handler = reap;
  r.sa_flags = SA_NOCLDSTOP;
  sigaction(SIGCHLD, &r, NULL);
  for (;;) pause();
}
EOF
gcc -O2 -static -o "$work/root/pause" "$work/pause.c"
cp "$busybox" "$work/root/bin/busybox"
for applet in $("$busybox" --list); do
  [ "$applet" = busybox ] || ln -s busybox "$work/root/bin/$applet"
done
printf 'root:x:0:0:root:/:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/sh\n' >"$work/root/etc/passwd"
printf 'root:x:0:\nnobody:x:65534:\n' >"$work/root/etc/group"
chmod 1777 "$work/root/tmp"

tar -C "$work/root" --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner \
  -cf "$work/img/layer.tar" .
diff_id=sha256:$(sha256sum <"$work/img/layer.tar" | cut -d' ' -f1)
config() { # NAME CONFIG-JSON
  printf '{"architecture":"amd64","os":"linux","config":%s,"rootfs":{"type":"layers","diff_ids":["%s"]}}' \
    "$2" "$diff_id" >"$work/img/$1.json"
}
config pause '{"Entrypoint":["/pause"]}'
config busybox '{"Cmd":["sh"],"Env":["PATH=/bin"],"WorkingDir":"/"}'
cat >"$work/img/manifest.json" <<'EOF'
[{"Config":"pause.json","RepoTags":["computesdk.local/k8s-pause:1"],"Layers":["layer.tar"]},
 {"Config":"busybox.json","RepoTags":["computesdk.local/k8s-busybox:1"],"Layers":["layer.tar"]}]
EOF
tar -C "$work/img" --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -cf "$out.tmp" .
mv -f "$out.tmp" "$out"
