"""One scenario list, run over every provider this machine can carry for real.

The cloud providers join this list against their wire-level fakes."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from computesdk import (
    Client,
    FailedPreconditionError,
    InvalidArgumentError,
    PathOutsideSandboxError,
    Resources,
    Sandbox,
    SandboxFileNotFoundError,
    SandboxNotFoundError,
    UnsupportedError,
)

PROVIDERS = ["local", "docker", "e2b", "vercel", "daytona", "modal"]
# E2B sizes sandboxes by template; Vercel by vCPUs (2048 MB each); the others take limits.
SIZING = {
    "local": Resources(memory_mb=256),
    "docker": Resources(memory_mb=256),
    "e2b": None,
    "vercel": Resources(cpu_cores=1),
    "daytona": Resources(memory_mb=1024),  # Daytona sizes memory in GiB
    "modal": Resources(memory_mb=512),
}
# Daytona's toolbox cannot close a command's input.
NO_STDIN = {"daytona"}
MEMORY_MB = {
    "local": 256,
    "docker": 256,
    "e2b": 1024,
    "vercel": 2048,
    "daytona": 1024,
    "modal": 512,
}


@pytest_asyncio.fixture(params=PROVIDERS)
async def box(request: pytest.FixtureRequest, client: Client) -> AsyncIterator[Sandbox]:
    sb = await client.create(
        request.param,
        template="python",
        metadata={"suite": "providers"},
        env={"GREETING": "hello"},
        timeout_ms=120_000,
        # E2B sizes sandboxes by template and refuses per-sandbox resources by name.
        resources=SIZING[request.param],
    )
    yield sb
    with contextlib.suppress(SandboxNotFoundError):
        await sb.destroy()


async def test_create_with_template_metadata_env_and_timeout(box: Sandbox) -> None:
    assert box.provider in PROVIDERS and box.template == "python"
    assert box.metadata == {"suite": "providers"}
    assert box.info.timeout_ms == 120_000
    r = await box.exec("echo $GREETING; python3 -c 'import sys; print(sys.version_info[0])'")
    assert r.stdout == "hello\n3\n"


async def test_exec_streaming_stdin_and_exit_codes(box: Sandbox) -> None:
    chunks = []
    async for chunk in box.exec_stream("echo out; echo oops >&2; sleep 0.2; echo done; exit 3"):
        chunks.append((chunk.stream, chunk.text))
    assert "".join(t for s, t in chunks if s == "stdout") == "out\ndone\n"
    assert "".join(t for s, t in chunks if s == "stderr") == "oops\n"
    assert (await box.exec("exit 7", check=False)).exit_code == 7
    timed = await box.exec("sleep 20", timeout_ms=500)
    assert timed.timed_out and timed.exit_code == -1
    if box.provider in NO_STDIN:
        with pytest.raises(UnsupportedError) as e:
            await box.exec(["cat"], stdin="piped")
        assert e.value.metadata == {"provider": box.provider, "feature": "stdin"}
        return
    stream = box.exec_stream("echo ready; read line; echo got:$line", interactive=True)
    out = []
    async for chunk in stream:
        out.append(chunk.text)
        if chunk.text == "ready\n":
            await stream.send_stdin("abc\n")
    assert "".join(out) == "ready\ngot:abc\n" and stream.exit_code == 0
    assert (await box.exec(["cat"], stdin="piped")).stdout == "piped"


async def test_files(box: Sandbox) -> None:
    data = bytes(range(256)) * 4096
    await box.files.write("/workspace/d/blob.bin", data)
    assert await box.files.read("d/blob.bin") == data
    assert await box.files.read("d/blob.bin", offset=3, length=4) == data[3:7]
    info = await box.files.stat("/workspace/d/blob.bin")
    assert (info.type, info.size) == ("file", len(data))
    await box.files.mkdir("/workspace/d/sub")
    assert [(f.name, f.type) for f in await box.files.list("/workspace/d")] == [
        ("blob.bin", "file"),
        ("sub", "directory"),
    ]
    await box.files.move("/workspace/d/blob.bin", "/workspace/d/sub/moved.bin")
    assert (await box.exec("wc -c < /workspace/d/sub/moved.bin")).stdout.strip() == str(len(data))
    with pytest.raises(FailedPreconditionError):
        await box.files.remove("/workspace/d")
    await box.files.remove("/workspace/d", recursive=True)
    with pytest.raises(SandboxFileNotFoundError):
        await box.files.stat("/workspace/d")
    with pytest.raises(PathOutsideSandboxError):
        await box.files.read("../../etc/shadow")


async def test_events(box: Sandbox, client: Client) -> None:
    await box.exec("true")
    sid = box.id
    await box.destroy()
    types = [e.type async for e in client.events(sandbox_ids=[sid], follow=False)]
    assert types == ["created", "ready", "process.started", "process.exited", "destroyed"]


async def test_status_and_metrics(box: Sandbox) -> None:
    st = await box.get_status()
    assert st.state == "running" and st.memory_used_bytes > 0
    assert st.resources.memory_mb == MEMORY_MB[box.provider]
    assert st.memory_limit_bytes == st.resources.memory_mb << 20
    if box.provider != "e2b":  # envd lists only the processes it started
        assert st.process_count >= 1
    await asyncio.sleep(0.01)
    assert (await box.get_status()).uptime_ms >= st.uptime_ms


async def test_destroy(box: Sandbox, client: Client) -> None:
    await box.destroy()
    with pytest.raises(SandboxNotFoundError):
        await client.get(box.id)
    with pytest.raises(SandboxNotFoundError):
        await box.exec("true")


async def test_missing_features_are_named(box: Sandbox, client: Client) -> None:
    """What a provider cannot carry fails by name: never a silent success."""
    if box.provider == "modal":  # Modal reads output by offset: background and resume work
        proc = await box.start_process("echo one; echo two >&2")
        result = await proc.wait()
        assert (result.stdout, result.stderr, result.exit_code) == ("one\n", "two\n", 0)
        tail = [(c.stream, c.data) async for c in box.process(proc.id).attach(stdout_offset=2)]
        assert sorted(tail) == [("stderr", b"two\n"), ("stdout", b"e\n")]
        with pytest.raises(UnsupportedError) as sig:
            await proc.signal(15)
        assert sig.value.metadata == {"provider": "modal", "feature": "signals"}
    elif box.provider == "vercel":  # detached commands, their logs replayed from an offset
        proc = await box.start_process("echo one; echo two >&2")
        result = await proc.wait()
        assert (result.stdout, result.stderr, result.exit_code) == ("one\n", "two\n", 0)
        tail = [(c.stream, c.data) async for c in box.process(proc.id).attach(stdout_offset=2)]
        assert sorted(tail) == [("stderr", b"two\n"), ("stdout", b"e\n")]
        with pytest.raises(UnsupportedError) as tag:
            await box.start_process("true", tag="web")
        assert tag.value.metadata == {"provider": "vercel", "feature": "process tags"}
    elif box.provider == "daytona":  # session commands: background and resume, a kill only
        proc = await box.start_process("echo one; echo two >&2")
        result = await proc.wait()
        assert (result.stdout, result.stderr, result.exit_code) == ("one\n", "two\n", 0)
        tail = [(c.stream, c.data) async for c in box.process(proc.id).attach(stdout_offset=2)]
        assert sorted(tail) == [("stderr", b"two\n"), ("stdout", b"e\n")]
        with pytest.raises(UnsupportedError) as sig:
            await proc.signal(15)
        assert sig.value.metadata == {"provider": "daytona", "feature": "signal 15"}
    elif box.provider != "local":
        with pytest.raises(UnsupportedError) as e:
            await box.start_process("sleep 1")
        assert e.value.metadata == {"provider": box.provider, "feature": "background processes"}
        assert e.value.reason == "FEATURE_UNSUPPORTED"
    refused = {
        "docker": ("disk limit", Resources(disk_mb=100)),
        "e2b": ("per-sandbox resources", Resources(memory_mb=512)),
        "vercel": ("memory, disk and pids limits", Resources(memory_mb=512)),
        "daytona": ("pids limit", Resources(pids_limit=64)),
        "modal": ("pids limit", Resources(pids_limit=64)),
    }
    if box.provider in refused:
        feature, resources = refused[box.provider]
        with pytest.raises(UnsupportedError) as d:
            await client.create(box.provider, resources=resources)
        assert d.value.metadata == {"provider": box.provider, "feature": feature}
    if box.provider in ("e2b", "vercel"):  # no GPUs at all
        with pytest.raises(UnsupportedError) as u:
            await client.create(box.provider, resources=Resources(gpu=True))
        assert u.value.metadata == {"provider": box.provider, "feature": "gpu"}
    elif box.provider in ("daytona", "modal"):  # they have GPUs; the vendor says none are free
        with pytest.raises((InvalidArgumentError, FailedPreconditionError)) as v:
            await client.create(box.provider, resources=Resources(gpu=True))
        assert v.value.reason == "PROVIDER_REJECTED" and "GPU" in v.value.message
        assert v.value.metadata["provider"] == box.provider
    else:  # GPUs exist for these runtimes, just not on this host
        with pytest.raises(FailedPreconditionError) as g:
            await client.create(box.provider, resources=Resources(gpu=True))
        assert g.value.reason == "GPU_UNAVAILABLE"
        assert g.value.metadata["provider"] == box.provider
