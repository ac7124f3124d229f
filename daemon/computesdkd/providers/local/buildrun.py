"""A template build's steps: packages and setup commands run in a runc container
on the base's layers, in a user and network namespace of the build's own; what
they write becomes the new build layer."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import re
import shlex
import shutil
from collections.abc import Callable
from pathlib import Path

from computesdkd.domain.errors import FailedPrecondition
from computesdkd.domain.model import BuildStep, Resources, TemplateDefinition
from computesdkd.providers.capabilities import BuildReport
from computesdkd.providers.common.env import DEFAULT_PATH
from computesdkd.providers.common.templates import APT, NPM, PIP
from computesdkd.providers.local import buildnet, buildroot, idmap, layerout, safefs
from computesdkd.providers.local import rootfs as rootfs_mod
from computesdkd.providers.local.host import MS_NODEV, MS_NOSUID, mount, run, umount
from computesdkd.providers.local.limits import HOST_CPU_CORES
from computesdkd.providers.local.oci import build_spec

BUILD_RESOURCES = Resources(cpu_cores=HOST_CPU_CORES, memory_mb=4096, pids_limit=4096)
STEP_TIMEOUT_S = 1800.0
LOG_LINE_MAX = 4096
# CA bundles of Debian, Alpine and Fedora-like images.
HOST_TRUST = ("/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt")

# Installs with whichever package manager the base has, and leaves no index behind.
# Package names are checked (PACKAGE_NAMES) and quoted, and follow `--`: never
# shell, never an option.
_APT = """set -e
if command -v apt-get >/dev/null 2>&1; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends -- {pkgs}
  apt-get clean
  rm -rf /var/lib/apt/lists/*
elif command -v apk >/dev/null 2>&1; then
  apk add --no-cache -- {pkgs}
elif command -v dnf >/dev/null 2>&1; then
  dnf install -y -- {pkgs} && dnf clean all
else
  echo "the base image has no package manager (apt-get, apk or dnf)" >&2
  exit 127
fi
"""
# Into the system python, as on E2B's and Modal's images (`import numpy` works in
# any process). Debian marks its python externally managed (PEP 668) to guard
# apt's own packages; a template is an image of its own, as theirs are.
_PIP = """set -e
export PIP_BREAK_SYSTEM_PACKAGES=1 PIP_ROOT_USER_ACTION=ignore PIP_NO_CACHE_DIR=1
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1
py=$(command -v python3 || command -v python || true)
if [ -z "$py" ] || ! "$py" -m pip --version >/dev/null 2>&1; then
  echo "the base image has no python with pip (package_manager pip)" >&2
  exit 127
fi
"$py" -m pip install --progress-bar off -- {pkgs}
"""
# Global, so every process finds them: NODE_PATH names the global root.
_NPM = """set -e
if ! command -v npm >/dev/null 2>&1; then
  echo "the base image has no npm (package_manager npm)" >&2
  exit 127
fi
npm install -g --no-audit --no-fund --no-update-notifier -- {pkgs}
npm cache clean --force 2>/dev/null || true
"""
INSTALL = {APT: _APT, PIP: _PIP, NPM: _NPM}
NPM_GLOBAL = "/usr/local/lib/node_modules"
# What each manager takes: a name and version spec starting with a letter or digit
# (npm: or an @scope/), with no space, quote, slash (but npm's scope) or shell
# character: never a URL, a path or an option.
# pip and npm read a name that ends like an archive or a script as a local file.
_NOT_A_FILE = r"(?!.*\.(?:whl|zip|egg|tgz|tar|tar\.\w+|py|cfg|toml|json)$)"
PACKAGE_NAMES = {
    APT: re.compile(r"[a-zA-Z0-9][a-zA-Z0-9+.:=~_-]{0,127}"),
    PIP: re.compile(
        _NOT_A_FILE + r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}(\[[A-Za-z0-9._,-]{1,128}\])?"
        r"((===?|~=|!=|<=?|>=?)[A-Za-z0-9.*+!_-]{1,64}(,(===?|~=|!=|<=?|>=?)[A-Za-z0-9.*+!_-]{1,64}){0,7})?"
    ),
    NPM: re.compile(
        _NOT_A_FILE + r"(@[a-z0-9][a-z0-9._~-]{0,127}/)?[a-zA-Z0-9][a-zA-Z0-9._~-]{0,213}"
        r"(@[A-Za-z0-9.^~<>=*+_-]{1,64})?"
    ),
}


def install_script(manager: str, packages: tuple[str, ...]) -> str:
    return INSTALL[manager].format(pkgs=" ".join(shlex.quote(p) for p in packages))


class BuildRunner:
    def __init__(
        self,
        builds: Path,
        builds_on_store: Path,
        layers: Path,
        runc: Callable[..., list[str]],
        cgroup: str,
    ) -> None:
        self._builds = builds  # scratch dirs of builds in progress, where runc reaches
        self._on_store = builds_on_store  # the same, on the layers' mount (for renames)
        self._layers = layers  # where the new layer lands
        self._runc = runc
        self._cgroup = cgroup

    async def run(
        self,
        d: TemplateDefinition,
        lowers: list[Path],
        base_env: dict[str, str],
        report: BuildReport,
        total: int,
        manager: str = APT,
    ) -> str:
        """Runs the packages and setup steps on the base's lower dirs (top first);
        returns the new layer's name."""
        build_id = f"build-{os.urandom(6).hex()}"
        work = self._builds / build_id
        upper, scratch, root = work / "upper", work / "work", work / "rootfs"
        for p in (upper, scratch, root):
            p.mkdir(parents=True)
        os.chown(upper, rootfs_mod.UID_SHIFT, rootfs_mod.UID_SHIFT)
        os.chown(work, rootfs_mod.UID_SHIFT, rootfs_mod.UID_SHIFT)
        os.chmod(work, 0o700)  # runc's init passes; no other host user does
        try:
            mount(
                "overlay",
                str(root),
                "overlay",
                f"lowerdir={':'.join(map(str, lowers))},upperdir={upper},workdir={scratch}",
                MS_NOSUID | MS_NODEV,
            )
            # The build's own user namespace (0 -> the storage uid, owned by it, not
            # host root: per-user limits of a step do not starve the host's root);
            # it owns the build's netns, and each step joins both.
            userns = await idmap.container_userns(rootfs_mod.UID_SHIFT)
            userns_path = f"/proc/{os.getpid()}/fd/{userns}"
            try:
                buildroot.sandbox_defaults(root)
                # Its own NAT'd network namespace, never the host's (buildnet.py).
                net = await buildnet.setup(build_id, userns_path)
                (work / "resolv.conf").write_text(net.resolv_conf)
                await buildnet.mount_sysfs(net, work / "sys")
                env = {"PATH": DEFAULT_PATH, "HOME": "/root", "LANG": "C.UTF-8"}
                env.update(base_env)
                env.update(d.env)
                scripts = []
                if d.packages:
                    scripts.append(
                        (
                            f"installing with {manager}: {', '.join(d.packages)}",
                            install_script(manager, d.packages),
                        )
                    )
                scripts += [(f"setup: {cmd}", cmd) for cmd in d.setup]
                for i, (what, script) in enumerate(scripts, start=3):
                    report(BuildStep(i, total, what))
                    spec = build_spec(
                        build_id=build_id,
                        root_path=str(root),
                        script=script,
                        env=env,
                        resources=BUILD_RESOURCES,
                        cgroup_parent=self._cgroup,
                        netns=net.netns,
                        userns=userns_path,
                        sysfs=str(work / "sys"),
                        binds=_host_files(root, work),
                    )
                    await self._run_step(build_id, work, spec, i, total, report)
            finally:
                os.close(userns)
                umount(str(work / "sys"))
                umount(str(root))
                # Also when setup was cancelled midway (its thread runs on; the lock
                # makes this wait for it).
                await buildnet.teardown(build_id)
            report(BuildStep(total, total, "committing the layer"))
            return await asyncio.to_thread(self._commit, self._on_store / build_id / "upper")
        finally:
            await asyncio.to_thread(shutil.rmtree, work, True)

    async def _run_step(
        self,
        build_id: str,
        work: Path,
        spec: dict[str, object],
        step: int,
        total: int,
        report: BuildReport,
    ) -> None:
        (work / "config.json").write_text(json.dumps(spec))
        proc = await asyncio.create_subprocess_exec(
            *self._runc("run", "--no-new-keyring", "--bundle", str(work), build_id),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
        )
        tail: list[str] = []

        async def pump(stream: asyncio.StreamReader | None, is_err: bool) -> None:
            assert stream is not None
            while True:
                try:
                    raw = await stream.readline()
                except ValueError:  # a line past the reader's limit: take it in pieces
                    raw = await stream.read(LOG_LINE_MAX)
                if not raw:
                    return
                line = raw.decode(errors="replace").rstrip("\n")[:LOG_LINE_MAX]
                tail.append(line)
                del tail[:-20]
                report(BuildStep(step, total, line=line, stderr=is_err))

        try:
            await asyncio.wait_for(
                asyncio.gather(pump(proc.stdout, False), pump(proc.stderr, True), proc.wait()),
                STEP_TIMEOUT_S,
            )
        except BaseException:
            # Cancelled (the client went away, the daemon stops) or timed out.
            with contextlib.suppress(Exception):
                await run(*self._runc("kill", build_id, "KILL"))
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            raise
        finally:
            with contextlib.suppress(Exception):
                await run(*self._runc("delete", "--force", build_id))
        if proc.returncode != 0:
            raise FailedPrecondition(
                f"template build step {step} exited with {proc.returncode}: "
                + " | ".join(tail[-5:]),
                reason="TEMPLATE_BUILD_FAILED",
                step=str(step),
                exit_code=str(proc.returncode),
            )

    def _commit(self, upper: Path) -> str:
        """Names the build layer by the sha256 of its OCI tar and moves it in place."""
        sink = _HashSink()
        layerout.write_layer(upper, sink)  # type: ignore[arg-type]
        name = sink.hash.hexdigest()
        final = self._layers / name
        if final.is_dir():
            shutil.rmtree(upper)
        else:
            os.rename(upper, final)
        return name


class _HashSink:
    def __init__(self) -> None:
        self.hash = hashlib.sha256()

    def write(self, data: bytes) -> int:
        self.hash.update(data)
        return len(data)


def _host_files(root: Path, work: Path) -> list[tuple[str, str]]:
    """(host file, path in the step) bound read-only over the image's: the build
    network's resolver always (the target is written in the defaults), the host's
    CA bundle where the image has one to cover, so nothing new appears in the layer."""
    out = [(str(work / "resolv.conf"), "/etc/resolv.conf")]
    # The image's side is looked up inside the root (its symlinks resolve there,
    # as runc resolves the mount's target), and must itself be a regular file.
    with safefs.Tree.open(root, safefs.IN_ROOT) as tree:
        for path in HOST_TRUST:
            if Path(path).is_file() and buildroot.is_regular(tree, path):  # the host's own file
                out.append((path, path))
    return out
