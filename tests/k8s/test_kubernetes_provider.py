"""The kubernetes provider against a real cluster on this machine (conftest.py):
real pods, the agent as their PID 1, reached over the pod network."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from computesdk import Client, Resources, SandboxNotFoundError
from conftest import new_daemon
from k8s.conftest import NAMESPACE, kubectl

pytestmark = pytest.mark.timeout(300)


def _pod(sandbox_id: str) -> dict[str, object]:
    out = kubectl("-n", NAMESPACE, "get", "pod", "-l", f"computesdk.dev/sandbox={sandbox_id}",
                  "-o", "json").stdout  # fmt: skip
    items = json.loads(out)["items"]
    assert len(items) == 1
    return dict(items[0])


async def test_create_exec_and_destroy(client: Client) -> None:
    sb = await client.create("kubernetes", resources=Resources(cpu_cores=0.5, memory_mb=256),
                             env={"GREETING": "hi"})  # fmt: skip
    pod = _pod(sb.id)
    spec = pod["spec"]
    assert isinstance(spec, dict)
    limits = spec["containers"][0]["resources"]["limits"]
    assert limits == {"cpu": "500m", "memory": "256Mi"}
    assert pod["metadata"]["labels"]["computesdk.dev/owner"]  # type: ignore[index]
    r = await sb.exec(["sh", "-c", "echo $GREETING; echo err >&2; exit 3"], check=False)
    assert (r.stdout, r.stderr, r.exit_code) == ("hi\n", "err\n", 3)
    assert (await sb.exec(["cat", "/proc/1/cmdline"])).stdout.startswith(
        "/usr/local/bin/computesdk-agent"
    )
    # No API credentials in the sandbox; its Secret goes with its pod.
    gone = await sb.exec(["test", "-e", "/var/run/secrets/kubernetes.io"], check=False)
    assert gone.exit_code == 1
    selector = f"computesdk.dev/sandbox={sb.id}"
    owners = json.loads(
        kubectl("-n", NAMESPACE, "get", "secret", "-l", selector, "-o", "json").stdout
    )
    assert owners["items"][0]["metadata"]["ownerReferences"][0]["kind"] == "Pod"
    await sb.destroy()
    with pytest.raises(SandboxNotFoundError):
        await sb.refresh()
    for _ in range(100):
        left = kubectl("-n", NAMESPACE, "get", "pod,secret", "-l",
                       f"computesdk.dev/sandbox={sb.id}", "-o", "name").stdout  # fmt: skip
        if not left.strip():
            break
        await asyncio.sleep(0.2)
    assert not left.strip()


async def test_background_process_reattached_by_offset(client: Client) -> None:
    sb = await client.create("kubernetes")
    try:
        p = await sb.start_process(["sh", "-c", "echo one; sleep 1; echo two"])
        r = await p.wait()
        assert r.stdout == "one\ntwo\n"
        tail = b""
        async for chunk in p.attach(stdout_offset=4):
            tail += chunk.data
        assert tail == b"two\n"
        listed = {i.process_id: i for i in await sb.processes()}
        assert p.id in listed
        # stdin and signals go through the agent too
        cat = await sb.start_process(["cat"], stdin=True)
        await cat.write_stdin("fed\n", close=True)
        assert (await cat.wait()).stdout == "fed\n"
        sleeper = await sb.start_process(["sleep", "60"])
        await sleeper.signal(15)
        assert (await sleeper.wait()).signal == 15
    finally:
        await sb.destroy()


async def test_file_round_trip(client: Client) -> None:
    sb = await client.create("kubernetes")
    try:
        data = bytes(range(256)) * 1000
        await sb.files.write("/workspace/dir/blob.bin", data)
        assert await sb.files.read("/workspace/dir/blob.bin") == data
        names = [f.name for f in await sb.files.list("/workspace/dir")]
        assert names == ["blob.bin"]
        assert (await sb.exec(["sha256sum", "/workspace/dir/blob.bin"])).exit_code == 0
    finally:
        await sb.destroy()


async def test_oom_kill_gives_an_out_of_memory_event(client: Client) -> None:
    sb = await client.create("kubernetes", resources=Resources(memory_mb=64))
    try:
        seen: list[str] = []
        sb.on("out-of-memory", lambda ev: seen.append(ev.type))
        r = await sb.exec(
            ["python3", "-c", "x=[]\nwhile True: x.append(bytearray(8<<20))"], check=False
        )
        assert r.signal == 9 and r.oom_killed
        deadline = time.monotonic() + 30
        while not seen and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        assert seen == ["out-of-memory"]
        assert (await sb.exec("echo still-here")).stdout == "still-here\n"
    finally:
        await sb.destroy()


async def test_a_deleted_pod_is_reported_lost(client: Client) -> None:
    sb = await client.create("kubernetes")
    errors: list[str] = []
    sb.on("error", lambda ev: errors.append(ev.attributes.get("kind", "")))
    kubectl("-n", NAMESPACE, "delete", "pod", "-l", f"computesdk.dev/sandbox={sb.id}",
            "--grace-period=0", "--wait=false")  # fmt: skip
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and (await client.get(sb.id)).state != "error":
        await asyncio.sleep(0.2)
    assert (await client.get(sb.id)).state == "error"
    while not errors and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    assert errors == ["lost"]
    await sb.destroy()


# Run in another pod: TLS to the agent (its certificate is no secret), the
# agent's hello, then a proof made with a wrong token, then a Request frame. The
# agent must close the connection without a served reply.
_IMPOSTOR = r"""
import os, socket, ssl, struct, sys
ip = sys.argv[1]
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
s = ctx.wrap_socket(socket.create_connection((ip, 7070), timeout=10))
def frame():
    hdr = b""
    while len(hdr) < 5:
        got = s.recv(5 - len(hdr))
        if not got:
            return None
        hdr += got
    kind, n = struct.unpack(">BI", hdr)
    body = b""
    while len(body) < n:
        body += s.recv(n - len(body))
    return chr(kind), body
print("hello", frame()[0])
body = os.urandom(64)
s.sendall(struct.pack(">BI", ord("A"), len(body)) + body)
s.sendall(struct.pack(">BI", ord("Q"), 2) + b"\x0a\x00")
try:
    print("after", frame())
except (ConnectionError, ssl.SSLError, OSError) as exc:
    print("after", "closed", type(exc).__name__)
"""


async def test_agent_port_refuses_a_peer_without_the_token(client: Client) -> None:
    """Another pod on the cluster reaches the sandbox's agent port; without the
    token its proof fails and the agent closes the connection unserved."""
    sb = await client.create("kubernetes")
    try:
        ip = _pod(sb.id)["status"]["podIP"]  # type: ignore[index]
        probe = f"csk-probe-{sb.id[-8:].lower()}"
        kubectl("-n", NAMESPACE, "run", probe, "--restart=Never",
                "--image=computesdk.local/sandbox:bookworm-v3", "--image-pull-policy=Never",
                "--command", "--", "python3", "-c", _IMPOSTOR, str(ip))  # fmt: skip
        try:
            kubectl("-n", NAMESPACE, "wait", f"pod/{probe}",
                    "--for=jsonpath={.status.phase}=Succeeded", "--timeout=90s")  # fmt: skip
            log = kubectl("-n", NAMESPACE, "logs", probe).stdout
        finally:
            kubectl("-n", NAMESPACE, "delete", "pod", probe, "--grace-period=0", check=False)
        lines = log.splitlines()
        assert lines[0] == "hello H"  # the TLS channel and the agent's hello came
        assert lines[1].startswith("after") and ("None" in lines[1] or "closed" in lines[1])
        # The sandbox is unharmed and the daemon still gets in.
        assert (await sb.exec("echo ok")).stdout == "ok\n"
    finally:
        await sb.destroy()


async def test_a_restarted_daemon_adopts_its_pods(cluster: object) -> None:
    """The token comes back from the sandbox's Secret: the new daemon reaches the
    same agent, and the background process's output is still there."""
    d = new_daemon(on_exit="keep")
    d.env.update(KUBECONFIG=str(cluster), COMPUTESDK_K8S_NAMESPACE=NAMESPACE)
    d.start()
    try:
        c = await Client.connect(socket=d.socket)
        sb = await c.create("kubernetes", keep_alive=True)
        p = await sb.start_process(["sh", "-c", "echo before; sleep 600"])
        await c.close()
        d.stop()
        d.start()
        c = await Client.connect(socket=d.socket)
        again = await c.get(sb.id)
        assert again.state == "running"
        assert (await again.exec("echo after")).stdout == "after\n"
        got = b""
        async for chunk in again.process(p.id).attach():
            got += chunk.data
            if got.endswith(b"before\n"):
                break
        assert got == b"before\n"
        await again.destroy()
        await c.close()
    finally:
        d.stop()
        d.cleanup()
