"""Daemon configuration and the default places it uses."""

from __future__ import annotations

import os
import tomllib
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
    config: Path | None = None
    # HOST:PORT for the Prometheus text endpoint; empty means off.
    metrics_listen: str = ""
    # Warm pools made at start when missing: NAME=PROVIDER/TEMPLATE:MIN:MAX.
    warm_pools: tuple[str, ...] = ()
    # Whether CreateSandbox takes a matching warm sandbox unless told not to.
    pool_create: bool = True


class ConfigError(ValueError):
    pass


def apply_provider_env(path: Path, environ: dict[str, str] | None = None) -> list[str]:
    """Reads a daemon config file that names where each provider's credentials live:

        [providers.e2b.env]
        E2B_API_KEY = "TEAM_A_E2B_KEY"   # read E2B's key from $TEAM_A_E2B_KEY

    Each vendor variable is set from the named one before providers start, so
    keys stay in the environment (never in the file). Returns warnings."""
    env = os.environ if environ is None else environ
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read config {path}: {exc}") from exc
    warnings = []
    for provider, section in (data.get("providers") or {}).items():
        for vendor_var, source_var in (section.get("env") or {}).items():
            if not isinstance(source_var, str):
                raise ConfigError(f"providers.{provider}.env.{vendor_var} must name a variable")
            if source_var in env:
                env[vendor_var] = env[source_var]
            else:
                warnings.append(
                    f"providers.{provider}.env.{vendor_var} names ${source_var}, which is not set"
                )
    return warnings
