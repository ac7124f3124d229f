"""State archives against the real daemon: hardlinks and sparse files survive an
export and an import (links intact, holes kept: a 1 GiB sparse file is a small
archive), and hostile archives (names that climb out, absolute names, links out
of the layer, a symlink then a file through it, a hardlink to a symlink into the
host, oversize or malformed manifests) are refused or contained: nothing is
written outside the new sandbox and the daemon answers ARCHIVE_CORRUPT, never
INTERNAL."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

import pytest

from computesdk import Client, InvalidArgumentError
from conftest import DaemonProcess

GIB = 1024 * 1024 * 1024


def snapshot(d: Path) -> list[tuple[str, int, int, int, int]]:
    out = []
    for p in [d, *d.rglob("*")]:
        st = p.lstat()
        out.append((str(p.relative_to(d)), st.st_mode, st.st_uid, st.st_size, st.st_nlink))
    return sorted(out)


def layer_of(archive: bytes) -> tarfile.TarFile:
    with tarfile.open(fileobj=io.BytesIO(archive)) as outer:
        f = outer.extractfile("layers/0.tar")
        assert f is not None
        return tarfile.open(fileobj=io.BytesIO(f.read()))


async def test_hardlinks_round_trip(private: tuple[DaemonProcess, Client]) -> None:
    _, c = private
    sb = await c.create("local", template="python")
    setup = (
        "mkdir -p /workspace/h/sub && echo linked > /workspace/h/a && "
        "ln /workspace/h/a /workspace/h/sub/b && ln /workspace/h/a /workspace/h/c"
    )
    assert (await sb.exec(setup)).exit_code == 0
    archive = b"".join([p async for p in c.states.export(sandbox=sb)])
    with layer_of(archive) as layer:
        links = {m.name: m.linkname for m in layer if m.islnk()}
    assert sorted(links) == ["workspace/h/c", "workspace/h/sub/b"]
    assert set(links.values()) == {"workspace/h/a"}

    new = await c.states.import_(archive)
    r = await new.exec("stat -c '%i %h' /workspace/h/a /workspace/h/sub/b /workspace/h/c")
    assert r.exit_code == 0, r.stderr
    inodes = {line.split()[0] for line in r.stdout.splitlines()}
    assert len(inodes) == 1 and r.stdout.split()[1] == "3"
    # Still one file: a write through one name shows through the others.
    r = await new.exec("echo more >> /workspace/h/c && cat /workspace/h/sub/b")
    assert r.stdout == "linked\nmore\n"


async def test_a_sparse_gigabyte_stays_sparse(private: tuple[DaemonProcess, Client]) -> None:
    _, c = private
    sb = await c.create("local", template="python")
    setup = (
        "truncate -s 1G /workspace/sparse && "
        "printf middle | dd of=/workspace/sparse bs=1 seek=536870912 conv=notrunc status=none && "
        "printf head | dd of=/workspace/sparse conv=notrunc status=none && "
        "truncate -s 1G /workspace/holes-only && echo small > /workspace/plain"
    )
    assert (await sb.exec(setup)).exit_code == 0, "setup"
    archive = b"".join([p async for p in c.states.export(sandbox=sb)])
    assert len(archive) < 4 * 1024 * 1024, f"the export is {len(archive)} bytes"
    with layer_of(archive) as layer:
        members = {m.name: m for m in layer}
    assert members["workspace/sparse"].size == GIB and members["workspace/sparse"].sparse
    # GNU tar reads what was written (GNU sparse 1.0), and so does tarfile.
    assert members["workspace/plain"].sparse is None

    new = await c.states.import_(archive)
    r = await new.exec(
        "stat -c '%s %b' /workspace/sparse /workspace/holes-only; "
        "dd if=/workspace/sparse bs=1 skip=536870912 count=6 status=none; echo; "
        "dd if=/workspace/sparse bs=1 count=4 status=none; echo; cat /workspace/plain"
    )
    assert r.exit_code == 0, r.stderr
    lines = r.stdout.splitlines()
    for line in lines[:2]:
        size, blocks = (int(x) for x in line.split())
        assert size == GIB and blocks < 1024, line  # a few KiB allocated, not 1 GiB
    assert lines[2:] == ["middle", "head", "small"]


async def test_a_fifo_in_the_tree_does_not_block_the_export(
    private: tuple[DaemonProcess, Client],
) -> None:
    _, c = private
    sb = await c.create("local", template="python")
    make = (
        'mkfifo /workspace/fifo && python3 -c "import socket; '
        "socket.socket(socket.AF_UNIX).bind('/workspace/sock')\" && echo x > /workspace/x"
    )
    assert (await sb.exec(make)).exit_code == 0
    archive = b"".join([p async for p in c.states.export(sandbox=sb)])
    with layer_of(archive) as layer:
        members = {m.name: m for m in layer}
    assert members["workspace/fifo"].isfifo() and "workspace/sock" not in members
    new = await c.states.import_(archive)
    r = await new.exec("test -p /workspace/fifo && cat /workspace/x")
    assert r.stdout == "x\n"


# ------------------------------------------------------------------ hostile archives


def _entry(name: str, kind: bytes = tarfile.REGTYPE, data: bytes = b"", link: str = "",
           mode: int = 0o644) -> tuple[tarfile.TarInfo, bytes]:  # fmt: skip
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.linkname = kind, mode, link
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    return info, data


def _tar(entries: list[tuple[tarfile.TarInfo, bytes]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in entries:
            tar.addfile(info, io.BytesIO(data) if info.type == tarfile.REGTYPE else None)
    return buf.getvalue()


def state_archive(layer: bytes, manifest: object = None, fmt: bytes | None = None) -> bytes:
    """A state archive around layer, with a manifest that matches it (or the one given)."""
    if manifest is None:
        manifest = {
            "format": "computesdk-state",
            "version": 1,
            "provider": "local",
            "template": "python",
            "env": {},
            "resources": {},
            "metadata": {},
            "layers": [
                {"path": "layers/0.tar", "size": len(layer), "sha256": _sha(layer)},
            ],
        }
    head = fmt if fmt is not None else b'{"format": "computesdk-state", "version": 1}'
    body = manifest if isinstance(manifest, bytes) else json.dumps(manifest).encode()
    return _tar(
        [
            _entry("computesdk-state.json", data=head),
            _entry("layers/0.tar", data=layer),
            _entry("manifest.json", data=body),
        ]
    )


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def hostile_layers(trap: Path) -> dict[str, bytes]:
    d, s, h = tarfile.DIRTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE
    up = "../" * 12
    return {
        "dotdot": _tar([_entry(f"workspace/{up}{trap.relative_to('/')}/dotdot", data=b"x")]),
        "absolute": _tar([_entry(f"{trap}/absolute", data=b"x")]),
        "symlink-then-file": _tar(
            [
                _entry("workspace", d, mode=0o755),
                _entry("workspace/out", s, link=str(trap)),
                _entry("workspace/out/through", data=b"x"),
            ]
        ),
        "symlink-then-dir": _tar(
            [_entry("esc", s, link=str(trap)), _entry("esc/made", d, mode=0o777)]
        ),
        "hardlink-outside": _tar([_entry("h", h, link=f"{up}{trap.relative_to('/')}/secret")]),
        "hardlink-absolute": _tar([_entry("h", h, link=f"{trap}/secret")]),
        "hardlink-through-symlink": _tar(
            [_entry("esc", s, link=str(trap)), _entry("h", h, link="esc/secret")]
        ),
        "whiteout-through-symlink": _tar(
            [_entry("esc", s, link=str(trap)), _entry("esc/.wh.secret")]
        ),
        "opaque-through-symlink": _tar(
            [_entry("esc", s, link=str(trap)), _entry("esc/.wh..wh..opq")]
        ),
        "device": _tar([_entry("dev-null", tarfile.CHRTYPE)]),
        # A sparse map that claims 10^11 segments, and a sparse file of 4 EiB.
        "sparse-map-bomb": _sparse_layer(b"99999999999\n", b"", 1 << 20),
        "sparse-size-bomb": _sparse_layer(b"1\n0\n1\n", b"x", 1 << 62),
        "name-too-long": _tar([_entry("workspace/" + "n" * 300, data=b"x")]),
    }


def _sparse_layer(sparse_map: bytes, data: bytes, realsize: int) -> bytes:
    """One GNU sparse 1.0 entry, its map and data as given."""
    body = sparse_map.ljust(512, b"\0") + data
    info = tarfile.TarInfo("workspace/GNUSparseFile.0/s")
    info.size = len(body)
    info.pax_headers = {
        "GNU.sparse.major": "1",
        "GNU.sparse.minor": "0",
        "GNU.sparse.name": "workspace/s",
        "GNU.sparse.realsize": str(realsize),
    }
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        tar.addfile(info, io.BytesIO(body))
    return buf.getvalue()


async def test_hostile_layers_are_refused_and_write_nothing_outside(
    private: tuple[DaemonProcess, Client], trap: Path
) -> None:
    d, c = private
    before = snapshot(trap)
    sandboxes = {s.id for s in await c.list()}
    for name, layer in hostile_layers(trap).items():
        with pytest.raises(InvalidArgumentError) as err:
            await c.states.import_(state_archive(layer))
        assert err.value.reason == "ARCHIVE_CORRUPT", (name, err.value.message)
        assert snapshot(trap) == before, f"{name} reached the host"
    assert {s.id for s in await c.list()} == sandboxes
    assert list((d.state / "tmp").iterdir()) == []


async def test_links_in_an_archive_are_contained(
    private: tuple[DaemonProcess, Client], trap: Path
) -> None:
    """What an archive may hold, and what it then means: a symlink to a host path
    resolves inside the sandbox, a hardlink to that symlink links the symlink (not
    the host file it names), a file replaces the symlink an earlier entry made."""
    _, c = private
    before = snapshot(trap)
    d, s, h = tarfile.DIRTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE
    layer = _tar(
        [
            _entry("workspace", d, mode=0o755),
            _entry("workspace/out", s, link=f"{trap}/secret", mode=0o777),
            _entry("workspace/hard", h, link="workspace/out"),
            _entry("workspace/swap", s, link=f"{trap}/secret", mode=0o777),
            _entry("workspace/swap", data=b"replaced\n", mode=0o666),
        ]
    )
    sb = await c.states.import_(state_archive(layer))
    r = await sb.exec(
        "readlink /workspace/out /workspace/hard; stat -c '%i %h' /workspace/out /workspace/hard; "
        "cat /workspace/swap; cat /workspace/out 2>/dev/null || echo dangling"
    )
    assert r.exit_code == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[:2] == [f"{trap}/secret"] * 2
    assert lines[2] == lines[3] and lines[2].split()[1] == "2"
    assert lines[4:] == ["replaced", "dangling"]
    assert snapshot(trap) == before
    assert (trap / "secret").read_text() == "host secret\n"


async def test_malformed_archives_are_corrupt_not_internal(
    private: tuple[DaemonProcess, Client],
) -> None:
    _, c = private
    layer = _tar([_entry("workspace/x", data=b"x")])
    good = json.loads(json.dumps({"provider": "local", "template": "python", "env": {},
                                  "resources": {}, "format": "computesdk-state", "version": 1,
                                  "layers": [{"path": "layers/0.tar", "size": len(layer),
                                              "sha256": _sha(layer)}]}))  # fmt: skip
    bad_manifests: list[object] = [
        [1, 2, 3],
        {**good, "layers": "layers/0.tar"},
        {**good, "layers": [1]},
        {**good, "env": {"A": 1}},
        {**good, "env": ["A=1"]},
        {**good, "metadata": {"k": ["v"]}},
        {**good, "template": {"name": "python"}},
        b"[" * 100_000 + b"]" * 100_000,  # nested past the parser's recursion limit
        b" " * (2 * 1024 * 1024) + b"{}",  # past the manifest's cap
    ]
    archives = [state_archive(layer, m) for m in bad_manifests]
    archives.append(state_archive(layer, fmt=b"[" * 4096))
    archives.append(state_archive(layer, fmt=b" " * 8192 + b"{}"))
    # An outer entry that claims far more than the archive holds: a sparse layer.
    sparse = tarfile.TarInfo("GNUSparseFile.0/0.tar")
    sparse.size = 512
    sparse.pax_headers = {"GNU.sparse.major": "1", "GNU.sparse.minor": "0",
                          "GNU.sparse.name": "layers/0.tar",
                          "GNU.sparse.realsize": str(1 << 50)}  # fmt: skip
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        head = b'{"format": "computesdk-state", "version": 1}'
        tar.addfile(_entry("computesdk-state.json", data=head)[0], io.BytesIO(head))
        tar.addfile(sparse, io.BytesIO(b"1\n0\n0\n".ljust(512, b"\0")))
    archives.append(buf.getvalue())
    for i, archive in enumerate(archives):
        with pytest.raises(InvalidArgumentError) as err:
            await c.states.import_(archive)
        assert err.value.reason == "ARCHIVE_CORRUPT", (i, err.value.message)
    assert (await (await c.create("local")).exec("true")).exit_code == 0
