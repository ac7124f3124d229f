"""What the Daytona adapter does with big inputs: a log frame is split at the
stream markers in one pass over it (the work grows with the frame, not with its
square), and an upload goes out as it comes in, never held whole. No test here
measures time: the work is counted."""

from __future__ import annotations

import json
import random
from collections.abc import AsyncIterator

import httpx
import pytest

from computesdkd.domain.model import Sandbox
from computesdkd.providers.daytona import run as run_mod
from computesdkd.providers.daytona.api import DaytonaAPI
from computesdkd.providers.daytona.files import ToolboxFS
from conftest import record
from fakes import daytona as fake_mod

OUT, ERR = b"\x01\x01\x01", b"\x02\x02\x02"
MiB = 1 << 20


class Scanned(bytearray):
    """A buffer that counts the bytes its find() calls look at: the work of demux,
    which finds its markers with find() and copies each byte out once."""

    scanned = 0
    calls = 0

    def find(self, sub, start=None, end=None):  # type: ignore[no-untyped-def,override]
        at = super().find(sub, start, end)
        lo = 0 if start is None else start
        self.calls += 1
        self.scanned += (len(self) if at == -1 else at + len(sub)) - lo
        return at


def _demux_all(frames: list[bytes]) -> dict[str, bytes]:
    """Every frame through demux, then the rest, as follow() does: the output by
    stream."""
    buf, current = bytearray(), None
    got = {"stdout": b"", "stderr": b""}
    for frame in frames:
        buf.extend(frame)
        chunks, current = run_mod.demux(buf, current)
        for name, data in chunks:
            assert data, "an empty chunk"
            got[name] += data
    got[current or "stdout"] += bytes(buf)
    return got


def test_a_mib_frame_without_markers_is_one_stdout_chunk() -> None:
    no_marks = bytes.maketrans(b"\x01\x02", b"AB")
    frame = random.Random(1).randbytes(MiB).translate(no_marks)
    buf = bytearray(frame)
    chunks, current = run_mod.demux(buf, None)
    assert chunks == [("stdout", frame)] and current is None and buf == b""


def test_a_mib_frame_of_marker_bytes_only_is_nothing_but_markers() -> None:
    buf = bytearray(b"\x01" * MiB)  # 349525 stdout markers and one byte that may start one
    chunks, current = run_mod.demux(buf, None)
    assert (chunks, current, bytes(buf)) == ([], "stdout", b"\x01")
    buf.extend(b"\x01\x01hi")  # that byte was a marker's first
    assert run_mod.demux(buf, current) == ([("stdout", b"hi")], "stdout")


def test_a_mib_frame_of_one_stream_is_read_whole() -> None:
    piece = ERR + b"err line\n"
    buf = bytearray(piece * (MiB // len(piece)))
    chunks, current = run_mod.demux(buf, None)
    # one chunk, not one per marker: what lies between markers of one stream is one
    assert chunks == [("stderr", b"err line\n" * (MiB // len(piece)))]
    assert (current, buf) == ("stderr", b"")


def test_frames_split_anywhere_give_what_the_toolbox_logged() -> None:
    """Against the fake's own reading of a whole log (which follows the toolbox's)."""
    rng = random.Random(7)
    for _ in range(500):
        log = bytearray(rng.choice([OUT, ERR]))
        for _ in range(rng.randint(0, 30)):
            log += rng.choice([OUT, ERR, b"\x01", b"\x02", b"x", b"yz\n", b"\x01\x02"])
        cuts = sorted(rng.sample(range(len(log) + 1), min(4, len(log) + 1)))
        frames = [bytes(log[a:b]) for a, b in zip([0, *cuts], [*cuts, len(log)], strict=True)]
        got = _demux_all(frames)
        assert (got["stdout"], got["stderr"]) == fake_mod.demux(bytes(log)), (bytes(log), frames)


def _work(data: bytes) -> tuple[int, int]:
    buf = Scanned(data)
    run_mod.demux(buf, None)
    return buf.scanned, buf.calls


@pytest.mark.parametrize(
    "unit",
    [
        pytest.param(b"\x01", id="stdout-marker-bytes-only"),
        pytest.param(OUT + b"x", id="stdout-markers-no-stderr"),
        pytest.param(ERR + b"e", id="stderr-markers-no-stdout"),
        pytest.param(b"plain", id="no-markers"),
        pytest.param(OUT + b"o" + ERR + b"e", id="both"),
    ],
)
def test_demux_work_grows_with_the_frame_not_its_square(unit: bytes) -> None:
    """The bytes find() looks at, for a frame and for one four times as long: at
    most a few passes over each (a search from the start at every marker, as
    before, looks at n * n / 6 bytes for a frame of marker bytes)."""
    n = 6000  # small enough that a quadratic demux fails here quickly
    small, large = unit * (n // len(unit)), unit * (4 * n // len(unit))
    (work_small, _), (work_large, calls_large) = _work(small), _work(large)
    assert work_small <= 2 * len(small) + 16
    assert work_large <= 2 * len(large) + 16
    assert work_large <= 4 * work_small + 16
    assert calls_large <= 2 + len(large) // 3  # at most one search per marker, and one each


# ------------------------------------------------------------------ uploads


def _sandbox() -> Sandbox:
    sb = record("daytona", "sb-upload")
    sb.provider_sandbox_id = "abc123"
    sb.provider_data = {"toolbox": "http://toolbox.invalid"}
    return sb


class _Toolbox(httpx.AsyncBaseTransport):
    """The toolbox's /files calls, reading an upload's body as it arrives: it notes
    how much of the caller's data had been taken when the file's first byte came."""

    def __init__(self, source: _Source) -> None:
        self.source = source
        self.taken_at_first_byte: int | None = None
        self.form: dict[str, bytes] = {}

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path.removeprefix("/abc123")
        if path == "/files/info":
            info = {"name": "big.bin", "isDir": False, "size": self.source.sent, "mode": "644"}
            return httpx.Response(200, json=info)
        assert path == "/files/bulk-upload", path
        body = bytearray()
        assert isinstance(request.stream, httpx.AsyncByteStream)
        async for chunk in request.stream:
            body += chunk
            if self.taken_at_first_byte is None and b"\r\n\r\nD" in body:
                self.taken_at_first_byte = self.source.sent
        self.form = fake_mod._parts(request.headers["content-type"], bytes(body))
        done = [{"path": self.form["files[0].path"].decode(), "bytes": self.source.sent}]
        return httpx.Response(200, content=json.dumps({"files": done}).encode())


class _Source:
    """The caller's data, chunk by chunk; counts what the adapter has taken."""

    def __init__(self, chunks: int, size: int) -> None:
        self.chunks, self.size, self.sent = chunks, size, 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for _ in range(self.chunks):
            self.sent += self.size
            yield b"D" * self.size


async def test_an_upload_is_streamed_never_held_whole() -> None:
    source = _Source(chunks=64, size=256 << 10)  # 16 MiB in 256 KiB pieces
    toolbox = _Toolbox(source)
    api = DaytonaAPI({"DAYTONA_API_KEY": "k"}, transport=toolbox)
    try:
        fs = ToolboxFS(api, _sandbox())
        info, written = await fs.write(
            "/workspace/big.bin", aiter(source), mode=0, parents=True, append=False
        )
    finally:
        await api.close()
    assert written == 64 * (256 << 10) == info.size
    # the file's first byte went out when one piece of it had been taken, not all
    assert toolbox.taken_at_first_byte == 256 << 10
    assert toolbox.form["files[0].path"] == b"/workspace/big.bin"
    assert toolbox.form["files[0].file"] == b"D" * written


async def test_an_upload_names_the_file_safely_in_its_form() -> None:
    source = _Source(chunks=1, size=3)
    toolbox = _Toolbox(source)
    api = DaytonaAPI({"DAYTONA_API_KEY": "k"}, transport=toolbox)
    path = '/workspace/a"b\\c\r\nd.txt'
    try:
        await ToolboxFS(api, _sandbox()).write(path, aiter(source), 0, True, False)
    finally:
        await api.close()
    assert toolbox.form["files[0].path"] == path.encode()  # the path itself is the field's value
    assert toolbox.form["files[0].file"] == b"DDD"
