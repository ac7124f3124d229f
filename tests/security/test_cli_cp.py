"""`computesdk cp ID:SRC DST` against a hostile sandbox: what it lists is untrusted
on the host. A planted symlink is copied as a link and never written through, a
second copy refuses to go through the link the first one made, and a listing
that names `..`, `/x`, `a/b` or the same name twice (a link, then a directory of
that name) is refused before anything leaves the destination."""

from __future__ import annotations

import asyncio
import hashlib
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path

import pytest

from computesdk.cli_cp_pull import Counter, Refused, pull_tree, tar_tree
from computesdk.types import FileInfo
from conftest import DaemonProcess

CLI = str(Path(sys.executable).parent / "computesdk")


def run(daemon: DaemonProcess, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COMPUTESDK_SOCKET": str(daemon.socket)}
    return subprocess.run([CLI, *args], capture_output=True, text=True, env=env, timeout=60)


def tree(d: Path) -> dict[str, tuple[int, bytes]]:
    """Every entry under d with its mode and content (or link target)."""
    out = {}
    for p in sorted(d.rglob("*")):
        st = p.lstat()
        body = os.readlink(p).encode() if p.is_symlink() else p.read_bytes() if p.is_file() else b""
        out[str(p.relative_to(d))] = (st.st_mode, body)
    return out


def digest(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def test_a_planted_symlink_is_copied_as_a_link_never_written_through(
    daemon: DaemonProcess, trap: Path, tmp_path: Path
) -> None:
    sid = run(daemon, "create").stdout.strip()
    try:
        # In the sandbox: x -> the trap's path (a directory there holding passwd),
        # and etc -> /etc, whose passwd the sandbox has too. A copy that followed
        # x in the sandbox and then wrote x/passwd on the host would go through
        # the host link it made into the host's own trap.
        plant = (
            f"mkdir -p /workspace/d {trap} && echo pwned > {trap}/passwd && "
            f"ln -s {trap} /workspace/d/x && ln -s /etc /workspace/d/etc && "
            "echo fine > /workspace/d/plain"
        )
        assert run(daemon, "exec", sid, plant).returncode == 0
        before_trap, before_passwd = tree(trap), digest("/etc/passwd")
        out = tmp_path / "out"
        copied = run(daemon, "cp", f"{sid}:/workspace/d", str(out))
        assert copied.returncode == 0, copied.stderr
        assert os.readlink(out / "x") == str(trap) and os.readlink(out / "etc") == "/etc"
        assert (out / "plain").read_text() == "fine\n"
        assert tree(trap) == before_trap and digest("/etc/passwd") == before_passwd

        # Now x is a directory in the sandbox, with passwd in it: copying again into
        # the same destination must not write through the link the first copy made.
        swap = "rm /workspace/d/x && mkdir /workspace/d/x && echo pwned > /workspace/d/x/passwd"
        assert run(daemon, "exec", sid, swap).returncode == 0
        again = run(daemon, "cp", f"{sid}:/workspace/d/.", str(out))
        assert again.returncode == 125 and "refusing" in again.stderr
        assert tree(trap) == before_trap and digest("/etc/passwd") == before_passwd
        # Nor a copy aimed at the link itself: a destination that is a symlink is
        # followed only when written DST/ (the user says it names a directory).
        swap = "rm /workspace/d/etc && echo pwned > /workspace/d/etc"
        assert run(daemon, "exec", sid, swap).returncode == 0
        onto = run(daemon, "cp", f"{sid}:/workspace/d/etc", str(out / "etc"))
        assert onto.returncode == 125 and "symlink" in onto.stderr
        assert not Path("/etc/etc").exists() and digest("/etc/passwd") == before_passwd
        assert tree(trap) == before_trap
    finally:
        run(daemon, "rm", "-f", sid)


class Hostile:
    """A sandbox's file API that lists whatever it likes (a remote provider's
    in-sandbox agent answers the listing)."""

    def __init__(self, listing: dict[str, list[FileInfo]], content: bytes = b"pwned\n") -> None:
        self.listing = listing
        self.content = content

    async def list(self, path: str) -> list[FileInfo]:
        return self.listing.get(path, [])

    async def read_stream(self, path: str) -> AsyncIterator[bytes]:
        yield self.content


def entry(name: str, kind: str, target: str = "") -> FileInfo:
    return FileInfo(name, f"/d/{name}", kind, 6, 0o644, datetime(2024, 1, 1), target)


@pytest.mark.parametrize("name", ["..", ".", "", "../escape", "/abs", "a/b", "nul\0byte"])
def test_a_listing_that_names_a_way_out_is_refused(name: str, trap: Path, tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    dest.mkdir()
    files = Hostile({"/d": [entry(name, "file"), entry(name, "directory")]})
    fd = os.open(dest, os.O_RDONLY | os.O_DIRECTORY)
    try:
        with pytest.raises(Refused):
            asyncio.run(pull_tree(files, "/d", fd, Counter()))
    finally:
        os.close(fd)
    assert list(dest.iterdir()) == [] and sorted(p.name for p in tmp_path.iterdir()) == ["dest"]
    assert tree(trap) == {"secret": (tree(trap)["secret"][0], b"host secret\n")}


@pytest.mark.parametrize("then", ["directory", "file"])
def test_a_link_then_an_entry_of_its_name_is_refused(then: str, trap: Path, tmp_path: Path) -> None:
    before = tree(trap)
    dest = tmp_path / "dest"
    dest.mkdir()
    listing = {
        "/d": [entry("x", "symlink", str(trap)), entry("x", then)],
        "/d/x": [entry("secret", "file"), entry("passwd", "file")],
    }
    fd = os.open(dest, os.O_RDONLY | os.O_DIRECTORY)
    try:
        with pytest.raises(Refused):
            asyncio.run(pull_tree(Hostile(listing), "/d", fd, Counter()))
    finally:
        os.close(fd)
    assert tree(trap) == before
    assert os.readlink(dest / "x") == str(trap)  # the link itself is harmless


def test_a_tar_stream_never_carries_a_way_out(tmp_path: Path) -> None:
    top = entry("d", "directory")
    with (tmp_path / "out.tar").open("wb") as out, pytest.raises(Refused):
        asyncio.run(tar_tree(Hostile({"/d": [entry("../../etc/passwd", "file")]}), "/d", top,
                             "d", out))  # fmt: skip
