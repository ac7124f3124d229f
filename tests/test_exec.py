from __future__ import annotations

import asyncio
import hashlib

import grpc
import pytest

from computesdk import CommandExitError, NotFoundError, ProcessNotFoundError, Sandbox


async def test_output_arrives_while_the_command_runs(sandbox: Sandbox) -> None:
    stream = sandbox.exec_stream("echo first; read _; echo second", interactive=True)
    chunks = []
    async for chunk in stream:
        chunks.append(chunk.text)
        if chunk.text == "first\n":
            # The command is blocked on stdin: it cannot have finished yet.
            running = [p for p in await sandbox.processes() if p.running]
            assert [p.process_id for p in running] == [stream.process_id]
            await stream.send_stdin("go\n")
    assert chunks == ["first\n", "second\n"]
    assert stream.exit_code == 0


async def test_stdout_and_stderr_stay_separate(sandbox: Sandbox) -> None:
    seen: list[tuple[str, str]] = []
    r = await sandbox.exec(
        "echo out1; echo err1 >&2; echo out2; echo err2 >&2; exit 3",
        on_stdout=lambda t: seen.append(("o", t)),
        on_stderr=lambda t: seen.append(("e", t)),
        check=False,
    )
    assert r.stdout == "out1\nout2\n"
    assert r.stderr == "err1\nerr2\n"
    assert r.exit_code == 3
    assert "".join(t for k, t in seen if k == "o") == r.stdout


async def test_100_mb_of_output_arrives_intact(sandbox: Sandbox) -> None:
    script = (
        "import hashlib,sys\n"
        "h=hashlib.sha256()\n"
        "b=bytes(range(256))*4096\n"
        "for i in range(100):\n"
        "  blk=bytes([i])+b[1:]\n"
        "  h.update(blk); sys.stdout.buffer.write(blk)\n"
        "sys.stderr.write(h.hexdigest())\n"
    )
    await sandbox.files.write("gen.py", script)
    digest = hashlib.sha256()
    total = 0
    stream = sandbox.exec_stream(["python3", "gen.py"])
    err = b""
    async for chunk in stream:
        if chunk.stream == "stdout":
            assert chunk.offset == total
            digest.update(chunk.data)
            total += len(chunk.data)
        else:
            err += chunk.data
    assert stream.exit_code == 0
    assert total == 100 * 1024 * 1024
    assert digest.hexdigest() == err.decode()


async def test_stdin_env_cwd_and_argv(sandbox: Sandbox) -> None:
    r = await sandbox.exec(
        [
            "python3",
            "-c",
            "import sys,os;print(sys.stdin.read().upper(),"
            "os.getcwd(),os.environ['GREETING'],sep='|')",
        ],
        stdin="hello",
        cwd="/tmp",
        env={"GREETING": "hi there"},
    )
    assert r.stdout == "HELLO|/tmp|hi there\n"
    r = await sandbox.exec(["printf", "%s", "a b; $(echo no)"])
    assert r.stdout == "a b; $(echo no)"


async def test_exec_timeout_kills_the_command(sandbox: Sandbox) -> None:
    r = await sandbox.exec("sleep 30", timeout_ms=300)
    assert r.timed_out and r.signal == 9 and r.exit_code == -1


async def test_missing_executable_and_cwd(sandbox: Sandbox) -> None:
    with pytest.raises(NotFoundError) as e:
        await sandbox.exec(["no-such-binary"])
    assert e.value.reason == "EXECUTABLE_NOT_FOUND"
    with pytest.raises(NotFoundError) as c:
        await sandbox.exec("true", cwd="/does/not/exist")
    assert c.value.reason == "CWD_NOT_FOUND"
    # Through the shell: exit 127, as in a terminal.
    r = await sandbox.exec("no-such-binary", check=False)
    assert r.exit_code == 127


async def test_background_process_reattach_from_any_offset(sandbox: Sandbox) -> None:
    proc = await sandbox.start_process(
        "for i in 1 2 3 4 5; do echo line$i; done; echo e >&2", tag="counter"
    )
    full = await proc.wait()
    assert full.stdout == "".join(f"line{i}\n" for i in range(1, 6))
    assert full.stderr == "e\n"
    # A second client, re-attaching by id, reads everything again from offset 0 ...
    again = await sandbox.process(proc.id).wait()
    assert again.stdout == full.stdout
    # ... or resumes from where a broken stream stopped.
    tail = [c async for c in sandbox.process(proc.id).attach(stdout_offset=12, stderr_offset=2)]
    assert b"".join(c.data for c in tail if c.stream == "stdout") == full.stdout_bytes[12:]
    assert next(c.offset for c in tail if c.stream == "stdout") == 12
    assert not [c for c in tail if c.stream == "stderr"]


async def test_background_process_survives_the_calling_client(sandbox: Sandbox) -> None:
    proc = await sandbox.start_process(["sh", "-c", "read x; echo got:$x"], stdin=True)
    await proc.write_stdin("abc\n", close=True)
    assert (await proc.wait()).stdout == "got:abc\n"


async def test_signals_and_process_list(sandbox: Sandbox) -> None:
    proc = await sandbox.start_process(["sleep", "60"], tag="sleeper")
    listed = {p.process_id: p for p in await sandbox.processes()}
    assert listed[proc.id].running and listed[proc.id].tag == "sleeper"
    await proc.signal(15)
    result = await proc.wait()
    assert result.signal == 15
    listed = {p.process_id: p for p in await sandbox.processes()}
    assert not listed[proc.id].running
    with pytest.raises(ProcessNotFoundError):
        await sandbox.process("proc-999999").signal(9)


async def test_orphaned_grandchildren_do_not_hold_exec_open(sandbox: Sandbox) -> None:
    r = await asyncio.wait_for(sandbox.exec("sleep 30 & echo started"), 10)
    assert r.stdout == "started\n" and r.exit_code == 0


async def test_stdin_racing_the_exit_never_loses_the_result(sandbox: Sandbox) -> None:
    # The command exits after one line while the client still sends a second and
    # closes stdin: the late input must not cost the output or the exit status.
    for _ in range(150):
        stream = sandbox.exec_stream(["sh", "-c", "read a; echo got:$a"], interactive=True)
        await stream.send_stdin("one\n")
        await stream.send_stdin("two\n")
        await stream.close_stdin()
        out = b"".join([chunk.data async for chunk in stream])
        assert out == b"got:one\n"
        assert stream.exited is not None and stream.exited.exit_code == 0


async def test_exec_beyond_the_inline_limit_loses_nothing(sandbox: Sandbox) -> None:
    """exec() answers in one unary call when the output fits (1 MiB a stream);
    past that the command keeps running and the rest is read by attach."""
    script = (
        "import hashlib,sys,time\n"
        "h=hashlib.sha256()\n"
        "for i in range(48):\n"
        "  blk=bytes([i])*65536\n"
        "  h.update(blk); sys.stdout.buffer.write(blk); sys.stdout.flush()\n"
        "  if i == 20: time.sleep(0.2)\n"
        "sys.stderr.write('e'*(1<<20)+h.hexdigest())\n"
    )
    await sandbox.files.write("big.py", script)
    r = await sandbox.exec(["python3", "big.py"])
    assert r.exit_code == 0
    assert len(r.stdout_bytes) == 48 * 65536
    assert r.stderr_bytes[: 1 << 20] == b"e" * (1 << 20)
    assert hashlib.sha256(r.stdout_bytes).hexdigest() == r.stderr_bytes[1 << 20 :].decode()
    small = await sandbox.exec("printf a; printf b >&2; exit 7", check=False)
    assert (small.stdout, small.stderr, small.exit_code) == ("a", "b", 7)


async def test_run_command_refuses_stdin_and_a_cancelled_call_kills_the_command(
    sandbox: Sandbox,
) -> None:
    from computesdk_api.process.v1 import process_pb2 as pb

    stub = sandbox.client.processes
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.RunCommand(
            pb.RunCommandRequest(
                sandbox_id=sandbox.id, command=pb.Command(args=["cat"], stdin=True)
            )
        )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.aio.AioRpcError) as late:
        await stub.RunCommand(
            pb.RunCommandRequest(sandbox_id=sandbox.id, command=pb.Command(args=["sleep", "30"])),
            timeout=0.5,
        )
    assert late.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    for _ in range(50):
        if not any(p.running and p.args == ["sleep", "30"] for p in await sandbox.processes()):
            break
        await asyncio.sleep(0.1)
    assert not any(p.running and p.args == ["sleep", "30"] for p in await sandbox.processes())


async def test_a_failed_command_raises_unless_check_false(sandbox: Sandbox) -> None:
    with pytest.raises(CommandExitError) as e:
        await sandbox.exec("echo o; echo e >&2; exit 3")
    err = e.value
    assert (err.exit_code, err.stdout, err.stderr, err.signal) == (3, "o\n", "e\n", 0)
    assert err.result.exit_code == 3 and "exit code 3" in str(err)
    with pytest.raises(CommandExitError) as killed:
        await sandbox.exec("kill -9 $$")
    assert killed.value.signal == 9
    # The streamed path (stdin) raises the same way.
    with pytest.raises(CommandExitError) as piped:
        await sandbox.exec(["sh", "-c", "cat; exit 2"], stdin="x")
    assert (piped.value.exit_code, piped.value.stdout) == (2, "x")
    assert (await sandbox.exec("exit 3", check=False)).exit_code == 3
    # Streams and processes report exits as results.
    proc = await sandbox.start_process("exit 4")
    assert (await proc.wait()).exit_code == 4
