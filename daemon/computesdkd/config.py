"""Daemon configuration and the default places it uses."""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from computesdkd.edge.server import Listener
from computesdkd.providers.base import ProviderConfig


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
    # The TCP listener (TLS, tokens); None: the Unix socket only.
    listener: Listener | None = None
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
    # Where a tenant's exposed ports listen, and the host name their URLs give.
    expose_host: str = ""
    public_host: str = ""
    # Registries a tenant's custom template may start from.
    tenant_registries: tuple[str, ...] = ()


class ConfigError(ValueError):
    pass


def provider_configs(
    names: list[str], path: Path | None, environ: Mapping[str, str] | None = None
) -> tuple[dict[str, ProviderConfig], list[str]]:
    """One ProviderConfig per provider name, and warnings. A config file names
    where each provider's credentials live:

        [providers.e2b.env]
        E2B_API_KEY = "TEAM_A_E2B_KEY"   # read E2B's key from $TEAM_A_E2B_KEY

    so keys stay in the environment (never in the file)."""
    base = dict(os.environ if environ is None else environ)
    data: dict[str, Any] = {}
    if path is not None:
        try:
            data = tomllib.loads(path.read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read config {path}: {exc}") from exc
    sections = data.get("providers") or {}
    warnings: list[str] = []
    configs = {}
    for name in names:
        section = dict(sections.get(name) or {})
        env = dict(base)
        for vendor_var, source_var in (section.pop("env", None) or {}).items():
            if not isinstance(source_var, str):
                raise ConfigError(f"providers.{name}.env.{vendor_var} must name a variable")
            if source_var in base:
                env[vendor_var] = base[source_var]
            else:
                warnings.append(
                    f"providers.{name}.env.{vendor_var} names ${source_var}, which is not set"
                )
        configs[name] = ProviderConfig(name=name, env=env, options=section)
    for name in sections:
        if name not in names:
            warnings.append(f"providers.{name} names no registered provider")
    return configs, warnings
