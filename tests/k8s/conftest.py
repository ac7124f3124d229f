"""A real Kubernetes cluster on this machine (scripts/k8s/cluster.sh) and a daemon
whose kubernetes provider points at it. Not part of the default run
(scripts/test.sh passes --ignore=tests/k8s): run it with
    COMPUTESDK_K8S_TESTS=1 .venv/bin/pytest tests/k8s
With COMPUTESDK_K8S_TESTS=1 everything is built and started, never skipped;
without it, the tests skip only when the cluster's binaries are not cached.
The cluster is left as found: brought up here, taken down here."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio

from computesdk import Client
from conftest import DaemonProcess, destroy_all_and_clean_up, new_daemon

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "scripts" / "k8s"
STATE = Path(os.environ.get("K8S_STATE", "/var/lib/computesdk-k8s"))
KUBECONFIG = STATE / "kubeconfig" / "admin.kubeconfig"
VERSION = os.environ.get("K8S_VERSION", "v1.34.4")
CACHE = Path(os.environ.get("COMPUTESDK_CACHE", "/var/cache/computesdk")) / "k8s" / VERSION / "bin"
NAMESPACE = "computesdk-test"


def _sh(*argv: str, timeout: float = 1800) -> str:
    out = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    return out.stdout


def kubectl(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(CACHE / "kubectl"), f"--kubeconfig={KUBECONFIG}", *args],
        capture_output=True, text=True, timeout=120, check=check,
    )  # fmt: skip


def _running() -> bool:
    status = subprocess.run([str(K8S / "cluster.sh"), "status"], capture_output=True, text=True)
    return status.returncode == 0 and "not running" not in status.stdout


@pytest.fixture(scope="session")
def cluster() -> Iterator[Path]:
    required = os.environ.get("COMPUTESDK_K8S_TESTS") == "1"
    if not required and not (CACHE / "kube-apiserver").exists():
        pytest.skip(
            f"no Kubernetes binaries cached in {CACHE} (scripts/k8s/build.sh builds them); "
            "COMPUTESDK_K8S_TESTS=1 builds and runs"
        )
    if required:
        _sh(str(K8S / "build.sh"))
    was_up = _running()
    _sh(str(K8S / "cluster.sh"), "up")
    image_tar = STATE / "sandbox-image.tar"
    _sh(str(K8S / "sandbox-image.sh"), str(image_tar))
    _sh(str(K8S / "cluster.sh"), "import", str(image_tar))
    kubectl("create", "namespace", NAMESPACE, check=False)
    try:
        yield KUBECONFIG
    finally:
        kubectl("delete", "namespace", NAMESPACE, "--wait=false", check=False)
        if not was_up:
            _sh(str(K8S / "cluster.sh"), "down")


@pytest.fixture(scope="session")
def k8s_daemon(cluster: Path) -> Iterator[DaemonProcess]:
    d = new_daemon()
    d.env.update(KUBECONFIG=str(cluster), COMPUTESDK_K8S_NAMESPACE=NAMESPACE)
    d.start()
    yield d
    destroy_all_and_clean_up(d)


@pytest_asyncio.fixture
async def client(k8s_daemon: DaemonProcess) -> AsyncIterator[Client]:
    c = await Client.connect(socket=k8s_daemon.socket)
    try:
        yield c
    finally:
        with contextlib.suppress(Exception):
            for sb in await c.list():
                await sb.destroy()
        await c.close()
