"""The client installs on its own: `pip install ./clients/python` brings the
stubs and gRPC, never the daemon or what only the daemon needs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DAEMON_ONLY = {"computesdkd", "httpx", "structlog", "websockets", "prometheus-client"}


def _resolved(*paths: str) -> set[str]:
    """What pip would install into an empty environment for these projects."""
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--dry-run",
            "--ignore-installed",
            "--quiet",
            "--disable-pip-version-check",
            "--report",
            "-",
            *paths,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    ).stdout
    return {i["metadata"]["name"].lower() for i in json.loads(out)["install"]}


def test_client_install_pulls_in_no_daemon() -> None:
    names = _resolved("./clients/python-api", "./clients/python")
    assert {"computesdk", "computesdk-api", "grpcio", "protobuf"} <= names
    assert not names & DAEMON_ONLY, names & DAEMON_ONLY


def test_daemon_install_does_not_need_the_client() -> None:
    names = _resolved("./clients/python-api", "./daemon")
    assert {"computesdkd", "computesdk-api", "structlog"} <= names
    assert "computesdk" not in names
