"""The README's Python blocks, run as written, in order, as one session against a
real daemon (only $COMPUTESDK_SOCKET points them at it): a snippet that drifts
from the client fails here. Blocks for a remote daemon are left out."""

from __future__ import annotations

import ast
import contextlib
import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from computesdk import Client
from conftest import DaemonProcess

README = Path(__file__).resolve().parents[1] / "README.md"
REMOTE = "daemon:7443"  # the network-service blocks name a daemon elsewhere


def python_blocks() -> list[tuple[int, str]]:
    text = README.read_text()
    out = []
    for m in re.finditer(r"^```python\n(.*?)^```", text, re.S | re.M):
        if REMOTE not in m.group(1):
            out.append((text.count("\n", 0, m.start()) + 2, m.group(1)))
    return out


def test_the_readme_has_the_blocks_this_test_runs() -> None:
    blocks = python_blocks()
    assert len(blocks) >= 4, [line for line, _ in blocks]


@pytest.fixture
async def session(
    private: tuple[DaemonProcess, Client], monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[dict[str, object]]:
    d, _ = private
    monkeypatch.setenv("COMPUTESDK_SOCKET", str(d.socket))
    namespace: dict[str, object] = {"_clients": []}
    yield namespace
    for client in namespace["_clients"]:  # type: ignore[attr-defined]
        with contextlib.suppress(Exception):
            await client.close()


async def test_the_readme_python_blocks_run_as_written(session: dict[str, object]) -> None:
    for line, source in python_blocks():
        # Each block runs as written: one that uses `client` makes it first.
        if re.search(r"\bclient\.", source):
            assert "client = await Client.connect(" in source, f"README.md:{line}"
        code = compile(source, f"README.md:{line}", "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
        result = eval(code, session)  # the README's own code, on purpose
        if result is not None:
            await result
        client = session.get("client")
        if isinstance(client, Client) and client not in session["_clients"]:  # type: ignore[operator]
            session["_clients"].append(client)  # type: ignore[attr-defined]
