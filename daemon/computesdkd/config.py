"""Daemon configuration and the default places it uses."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


def default_socket() -> Path:
    env = os.environ.get("COMPUTESDK_SOCKET")
    if env:
        return Path(env)
    if os.geteuid() == 0:
        return Path("/run/computesdk/computesdkd.sock")
    runtime = os.environ.get("XDG_RUNTIME_DIR") or f"/tmp/computesdk-{os.geteuid()}"
    return Path(runtime) / "computesdk" / "computesdkd.sock"


def default_state_dir() -> Path:
    if os.geteuid() == 0:
        return Path("/var/lib/computesdk/state")
    return Path.home() / ".local" / "state" / "computesdk"


@dataclass(frozen=True)
class Config:
    socket: Path
    state_dir: Path
    listen: str = ""
    default_provider: str = "local"
    # On SIGTERM/SIGINT: keep sandboxes running for the next daemon, or destroy them.
    destroy_on_exit: bool = False
    grace_s: float = 10.0
    log_format: str = "console"
    log_level: str = "info"
