"""Fixtures that run the real daemon, with runc, on a private socket and state dir."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from computesdk import Client, Sandbox
from computesdk.sync import SyncClient
from computesdkd.domain import model
from fakes import daytona as daytona_fake
from fakes import e2b as e2b_fake
from fakes import modal as modal_fake
from fakes import vercel as vercel_fake
from fakes.asgi import ServerThread
from fakes.daytona import FakeDaytona
from fakes.e2b import FakeE2B
from fakes.modal import FakeModal, GrpcServerThread
from fakes.vercel import FakeVercel

BIN = Path(sys.executable).parent


def record(
    provider: str, sandbox_id: str, state: model.State = model.State.RUNNING, **spec: Any
) -> model.Sandbox:
    """A daemon's sandbox record, as a provider is handed one (for tests that drive a
    provider object directly, without a daemon)."""
    base: dict[str, Any] = {
        "provider": provider, "template": "base", "metadata": {}, "timeout_ms": 60_000,
        "keep_alive": False, "resources": model.Resources(), "env": {},
    }  # fmt: skip
    return model.Sandbox(sandbox_id, model.SandboxSpec(**{**base, **spec}), state, time.time(), 0.0)


class DaemonProcess:
    """A computesdkd subprocess that tests can stop, kill -9 and restart."""

    def __init__(self, root: Path, on_exit: str = "destroy") -> None:
        self.root = root
        self.socket = root / "d.sock"
        self.state = root / "state"
        self.log = root / "daemon.log"
        self.on_exit = on_exit
        self.env: dict[str, str] = {}
        self.fakes: dict[str, Any] = {}
        self.extra_args: list[str] = []
        self.metrics_port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_start = 0

    def start(self) -> None:
        argv = [str(BIN / "computesdkd"), "--socket", str(self.socket),
                "--state-dir", str(self.state), "--log-format", "json",
                "--grace", "2", "--on-exit", self.on_exit, *self.extra_args]  # fmt: skip
        with self.log.open("ab") as log:
            self.log_start = log.tell()  # where this run's lines begin
            self.proc = subprocess.Popen(
                argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env={**os.environ, **self.env},
            )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"computesdkd exited:\n{self.log.read_text()[-3000:]}")
            with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX) as s:
                s.connect(str(self.socket))
                return
            time.sleep(0.02)
        raise RuntimeError("computesdkd did not start")

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=60)

    def log_lines(self) -> list[dict[str, object]]:
        out = []
        for line in self.log.read_text().splitlines():
            with contextlib.suppress(ValueError):
                out.append(json.loads(line))
        return out

    def cleanup(self) -> None:
        """Destroys whatever a failed test left running."""
        self.stop()
        runc_root = self.state / "local" / "runc"
        if runc_root.exists():
            ids = subprocess.run(
                ["runc", "--root", str(runc_root), "list", "-q"], capture_output=True, text=True
            ).stdout.split()
            for cid in ids:
                subprocess.run(
                    ["runc", "--root", str(runc_root), "delete", "-f", cid], capture_output=True
                )
        key = hashlib.sha256(str((self.state / "local").resolve()).encode()).hexdigest()[:12]
        runtime = Path("/run/computesdk-sandboxes") / key
        mounts = [
            line.split()[1]
            for line in Path("/proc/mounts").read_text().splitlines()
            if line.split()[1].startswith((str(self.root), str(runtime)))
        ]
        for m in sorted(mounts, reverse=True):
            subprocess.run(["umount", "-l", m], capture_output=True)
        subprocess.run(["rm", "-rf", str(self.root), str(runtime)], capture_output=True)


def serving_port(d: DaemonProcess, timeout: float = 30.0) -> int:
    """The port d's network listener bound (its log says once it serves)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with d.log.open("rb") as f:
            f.seek(d.log_start)
            lines = f.read().decode(errors="replace").splitlines()
        for text in lines:
            with contextlib.suppress(ValueError):
                line = json.loads(text)
                if line.get("event") == "computesdkd serving" and line.get("port"):
                    return int(str(line["port"]))
        time.sleep(0.05)
    raise RuntimeError(f"no network listener:\n{d.log.read_text()[-3000:]}")


def destroy_all_and_clean_up(d: DaemonProcess) -> None:
    """Destroys what a test left behind, then stops the daemon and removes its state."""
    with contextlib.suppress(Exception), SyncClient(socket=d.socket) as c:
        for sb in c.list():
            with contextlib.suppress(Exception):
                sb.destroy()
    d.cleanup()


def new_daemon(on_exit: str = "destroy") -> DaemonProcess:
    # Under /var/tmp: the bundle path must be reachable by the sandbox's unprivileged
    # init, and pytest's tmp dirs are private to root.
    root = Path(tempfile.mkdtemp(prefix="computesdk-test-", dir="/var/tmp"))
    os.chmod(root, 0o711)
    return DaemonProcess(root, on_exit)


def start_e2b_fake(d: DaemonProcess, api_key: str | None = e2b_fake.API_KEY
                   ) -> tuple[FakeE2B, ServerThread]:  # fmt: skip
    """Serves an E2B fake for d and points d's e2b provider at it (with the key, if any)."""
    fake = FakeE2B(str(d.socket))
    servers = ServerThread([fake.api, fake.envd], cleanup=fake.close).start()
    d.env.update(
        E2B_API_URL=f"http://127.0.0.1:{servers.ports[0]}",
        E2B_SANDBOX_URL=f"http://127.0.0.1:{servers.ports[1]}",
    )
    if api_key:
        d.env["E2B_API_KEY"] = api_key
    return fake, servers


@pytest.fixture(scope="session")
def daemon() -> Iterator[DaemonProcess]:
    """The shared daemon; its cloud providers point at the wire-level fakes."""
    d = new_daemon()
    fake, servers = start_e2b_fake(d)
    vercel = FakeVercel(str(d.socket))
    vercel_server = ServerThread([vercel.app], cleanup=vercel.close).start()
    d.env.update(
        VERCEL_TOKEN=vercel_fake.TOKEN,
        VERCEL_TEAM_ID=vercel_fake.TEAM,
        VERCEL_PROJECT_ID=vercel_fake.PROJECT,
        VERCEL_API_URL=f"http://127.0.0.1:{vercel_server.ports[0]}/api",
    )
    daytona = FakeDaytona(str(d.socket))
    daytona_server = ServerThread([daytona.app], cleanup=daytona.close).start()
    daytona.port = daytona_server.ports[0]
    d.env.update(
        DAYTONA_API_KEY=daytona_fake.API_KEY, DAYTONA_API_URL=f"http://127.0.0.1:{daytona.port}/api"
    )
    modal = FakeModal(str(d.socket))
    modal_server = GrpcServerThread(modal).start()
    d.env.update(
        MODAL_TOKEN_ID=modal_fake.TOKEN_ID,
        MODAL_TOKEN_SECRET=modal_fake.TOKEN_SECRET,
        MODAL_SERVER_URL=f"http://127.0.0.1:{modal_server.ports[0]}",
    )
    d.fakes = {"e2b": fake, "vercel": vercel, "daytona": daytona, "modal": modal}
    with socket.socket() as probe:  # a free loopback port for the Prometheus endpoint
        probe.bind(("127.0.0.1", 0))
        d.metrics_port = probe.getsockname()[1]
    d.extra_args = ["--metrics-listen", f"127.0.0.1:{d.metrics_port}"]
    d.start()
    yield d
    # Sandboxes a failed test left behind go first, while the daemon still serves
    # the fakes (whose own sandboxes live in this same daemon).
    destroy_all_and_clean_up(d)
    for server in (servers, vercel_server, daytona_server, modal_server):
        server.stop()


@pytest_asyncio.fixture(scope="session")
async def client(daemon: DaemonProcess) -> AsyncIterator[Client]:
    c = await Client.connect(socket=daemon.socket)
    yield c
    await c.close()


@pytest_asyncio.fixture
async def private() -> AsyncIterator[tuple[DaemonProcess, Client]]:
    """A daemon of the test's own: pools, restarts and store checks must not touch other tests."""
    d = new_daemon(on_exit="keep")
    d.start()
    c = await Client.connect(socket=d.socket)
    try:
        yield d, c
    finally:
        with contextlib.suppress(Exception):
            for sb in await c.list():
                await sb.destroy()
        await c.close()
        d.cleanup()


@pytest_asyncio.fixture
async def sandbox(client: Client) -> AsyncIterator[Sandbox]:
    sb = await client.create("local", template="python", metadata={"test": "yes"})
    yield sb
    with contextlib.suppress(Exception):
        await sb.destroy()


@pytest.fixture
def trap() -> Iterator[Path]:
    """A host directory that hostile links and entries point at, holding a root-only
    secret: the daemon must never touch it."""
    d = Path("/var/tmp") / f"computesdk-trap-{uuid.uuid4().hex}"
    d.mkdir(mode=0o700)
    (d / "secret").write_text("host secret\n")
    os.chmod(d / "secret", 0o600)
    yield d
    shutil.rmtree(d, ignore_errors=True)
