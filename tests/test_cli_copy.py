"""`computesdk cp` as docker cp: files and directories both ways, into a directory
or to a new name, SRC/. for the contents, symlinks kept, and `-` for a tar stream."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import DaemonProcess

CLI = str(Path(sys.executable).parent / "computesdk")


def run(
    daemon: DaemonProcess, *args: str, data: bytes | None = None
) -> subprocess.CompletedProcess[bytes]:
    env = {**os.environ, "COMPUTESDK_SOCKET": str(daemon.socket)}
    return subprocess.run([CLI, *args], capture_output=True, env=env, timeout=120, input=data)


def sh(daemon: DaemonProcess, sid: str, line: str) -> str:
    out = run(daemon, "exec", sid, line)
    assert out.returncode == 0, out.stderr
    return out.stdout.decode()


@pytest.fixture
def sid(daemon: DaemonProcess) -> Iterator[str]:
    made = run(daemon, "create").stdout.decode().strip()
    yield made
    run(daemon, "rm", "-f", made)


@pytest.fixture
def src(tmp_path: Path) -> Path:
    d = tmp_path / "src"
    (d / "sub").mkdir(parents=True)
    (d / "a.txt").write_text("hello\n")
    (d / "run.sh").write_text("#!/bin/sh\necho ran\n")
    (d / "run.sh").chmod(0o755)
    (d / "sub" / "b.bin").write_bytes(bytes(range(256)) * 5000)
    (d / "link").symlink_to("a.txt")
    return d


def test_a_directory_goes_there_and_back(
    daemon: DaemonProcess, sid: str, src: Path, tmp_path: Path
) -> None:
    assert run(daemon, "cp", str(src), f"{sid}:/workspace/dst").returncode == 0
    assert sh(daemon, sid, "cat /workspace/dst/a.txt; /workspace/dst/run.sh") == "hello\nran\n"
    assert sh(daemon, sid, "readlink /workspace/dst/link") == "a.txt\n"
    # Into a directory that exists: under its own name, as docker cp does.
    assert run(daemon, "cp", str(src), f"{sid}:/workspace/dst").returncode == 0
    assert sh(daemon, sid, "ls /workspace/dst/src") == "a.txt\nlink\nrun.sh\nsub\n"
    back = tmp_path / "back"
    assert run(daemon, "cp", f"{sid}:dst", str(back)).returncode == 0  # relative: /workspace
    assert (back / "sub" / "b.bin").read_bytes() == (src / "sub" / "b.bin").read_bytes()
    assert os.readlink(back / "link") == "a.txt" and os.access(back / "run.sh", os.X_OK)
    # SRC/. : the contents, into a directory that exists.
    flat = tmp_path / "flat"
    flat.mkdir()
    assert run(daemon, "cp", f"{sid}:/workspace/dst/sub/.", str(flat)).returncode == 0
    assert [p.name for p in flat.iterdir()] == ["b.bin"]


def test_files_to_a_directory_or_a_new_name(
    daemon: DaemonProcess, sid: str, src: Path, tmp_path: Path
) -> None:
    assert run(daemon, "cp", str(src / "a.txt"), f"{sid}:/tmp/").returncode == 0
    assert run(daemon, "cp", str(src / "a.txt"), f"{sid}:/tmp/renamed").returncode == 0
    assert sh(daemon, sid, "cat /tmp/a.txt /tmp/renamed") == "hello\nhello\n"
    assert run(daemon, "cp", f"{sid}:/tmp/renamed", str(tmp_path)).returncode == 0
    assert (tmp_path / "renamed").read_text() == "hello\n"
    assert run(daemon, "cp", f"{sid}:/tmp/renamed", str(tmp_path / "x.txt")).returncode == 0
    assert (tmp_path / "x.txt").read_text() == "hello\n"
    done = run(daemon, "cp", "--json", str(src / "a.txt"), f"{sid}:/tmp/j")
    assert json.loads(done.stdout) == {
        "source": str(src / "a.txt"), "destination": f"{sid}:/tmp/j", "files": 1, "bytes": 6,
    }  # fmt: skip
    # Failures are the CLI's or the daemon's: 125.
    missing = run(daemon, "cp", f"{sid}:/no/such/file", str(tmp_path))
    assert missing.returncode == 125 and b"FILE_NOT_FOUND" in missing.stderr
    assert run(daemon, "cp", str(tmp_path / "nope"), f"{sid}:/tmp/").returncode == 125
    assert run(daemon, "cp", str(src), str(tmp_path / "y")).returncode == 125  # no sandbox
    assert run(daemon, "cp", str(src), f"{sid}:/tmp/a.txt").returncode == 125  # dir onto file


def test_a_tar_stream_on_stdout_and_stdin(
    daemon: DaemonProcess, sid: str, src: Path, tmp_path: Path
) -> None:
    assert run(daemon, "cp", str(src), f"{sid}:/workspace/t").returncode == 0
    out = run(daemon, "cp", f"{sid}:/workspace/t", "-")
    assert out.returncode == 0, out.stderr
    with tarfile.open(fileobj=io.BytesIO(out.stdout)) as tar:
        names = sorted(tar.getnames())
        assert names == ["t", "t/a.txt", "t/link", "t/run.sh", "t/sub", "t/sub/b.bin"]
        assert tar.getmember("t/link").linkname == "a.txt"
        a = tar.extractfile("t/a.txt")
        assert a is not None and a.read() == b"hello\n"
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        tar.add(src / "a.txt", arcname="in/a.txt")
        tar.add(src / "link", arcname="in/link")
    sh(daemon, sid, "mkdir -p /workspace/from-tar")
    put = run(daemon, "cp", "-", f"{sid}:/workspace/from-tar", data=buf.getvalue())
    assert put.returncode == 0, put.stderr
    assert sh(daemon, sid, "cat /workspace/from-tar/in/link") == "hello\n"
    bad = io.BytesIO()
    with tarfile.open(fileobj=bad, mode="w") as tar:
        info = tarfile.TarInfo("../../etc/evil")
        tar.addfile(info, io.BytesIO(b""))
    refused = run(daemon, "cp", "-", f"{sid}:/workspace/from-tar", data=bad.getvalue())
    assert refused.returncode == 125 and b"refusing" in refused.stderr
