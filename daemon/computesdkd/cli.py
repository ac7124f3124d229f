"""computesdkd: the daemon's command line."""

from __future__ import annotations

import argparse
import asyncio
import resource
import sys
from pathlib import Path

from computesdkd import __version__
from computesdkd.app import Daemon, DaemonError
from computesdkd.config import (
    Config,
    ConfigError,
    default_socket,
    default_state_dir,
    provider_configs,
)
from computesdkd.edge.server import Listener
from computesdkd.providers import builtin as _builtin  # noqa: F401 - registers the back ends
from computesdkd.providers import registered_names
from computesdkd.support import logs


def parse(argv: list[str] | None = None) -> Config:
    ap = argparse.ArgumentParser(prog="computesdkd", description="Sandbox-management daemon.")
    ap.add_argument("--version", action="version", version=f"computesdkd {__version__}")
    ap.add_argument(
        "--socket",
        type=Path,
        default=default_socket(),
        help="Unix socket to serve on, mode 0600 (env COMPUTESDK_SOCKET)",
    )
    net = ap.add_argument_group(
        "network listener",
        "TCP for remote clients: TLS, and a bearer token on every call "
        "(computesdk token create makes one)",
    )
    net.add_argument("--listen", default="", metavar="HOST:PORT", help="also serve TCP here")
    net.add_argument("--tls-cert", type=Path, help="server certificate chain (PEM)")
    net.add_argument("--tls-key", type=Path, help="its private key (PEM)")
    net.add_argument(
        "--tls-client-ca", type=Path, help="require client certificates signed by this CA (mTLS)"
    )
    net.add_argument(
        "--expose-host",
        default="",
        metavar="ADDR",
        help="where ports a tenant exposes listen (default 127.0.0.1); each needs its secret",
    )
    net.add_argument(
        "--public-host", default="", metavar="NAME", help="the host name exposed ports' URLs give"
    )
    net.add_argument(
        "--tenant-registry",
        action="append",
        default=[],
        metavar="HOST",
        help="a registry tenants' templates may start from (repeatable; docker.io for Docker Hub)",
    )
    net.add_argument(
        "--insecure-listen",
        action="store_true",
        help="allow plaintext TCP off loopback (tokens are still required)",
    )
    ap.add_argument(
        "--state-dir",
        type=Path,
        default=default_state_dir(),
        help="where the daemon keeps its database and sandboxes",
    )
    ap.add_argument("--default-provider", default="local")
    ap.add_argument(
        "--on-exit",
        choices=["keep", "destroy"],
        default="keep",
        help="on SIGTERM/SIGINT keep sandboxes for the next daemon or destroy them",
    )
    ap.add_argument(
        "--grace",
        type=float,
        default=10.0,
        help="seconds to let streams in progress finish on shutdown",
    )
    ap.add_argument(
        "--config",
        type=Path,
        default=None,
        help="TOML file naming the variables that hold each provider's credentials",
    )
    ap.add_argument(
        "--metrics-listen",
        default="",
        metavar="HOST:PORT",
        help="serve Prometheus metrics over HTTP here, e.g. 127.0.0.1:9464",
    )
    ap.add_argument(
        "--warm-pool",
        action="append",
        default=[],
        metavar="NAME=PROVIDER/TEMPLATE:MIN:MAX",
        help="keep MIN sandboxes warm (up to MAX) from the start, e.g. node=local/node:8:64",
    )
    ap.add_argument(
        "--no-pool-create",
        action="store_true",
        help="CreateSandbox never takes warm pooled sandboxes unless a request asks",
    )
    ap.add_argument("--log-format", choices=["console", "json"], default="console")
    ap.add_argument("--log-level", default="info")
    a = ap.parse_args(argv)
    if (a.tls_cert or a.tls_key or a.tls_client_ca or a.insecure_listen) and not a.listen:
        ap.error("--tls-cert, --tls-key, --tls-client-ca and --insecure-listen need --listen")
    return Config(
        socket=a.socket,
        state_dir=a.state_dir,
        listener=Listener(a.listen, a.tls_cert, a.tls_key, a.tls_client_ca, a.insecure_listen)
        if a.listen
        else None,
        default_provider=a.default_provider,
        destroy_on_exit=a.on_exit == "destroy",
        grace_s=a.grace,
        log_format=a.log_format,
        log_level=a.log_level,
        config=a.config,
        metrics_listen=a.metrics_listen,
        warm_pools=tuple(a.warm_pool),
        pool_create=not a.no_pool_create,
        expose_host=a.expose_host,
        public_host=a.public_host,
        tenant_registries=tuple(a.tenant_registry),
    )


def main(argv: list[str] | None = None) -> None:
    cfg = parse(argv)
    logs.configure(cfg.log_format, cfg.log_level)
    try:
        providers, warnings = provider_configs(registered_names(), cfg.config)
    except ConfigError as exc:
        print(f"computesdkd: {exc}", file=sys.stderr)
        sys.exit(2)
    for warning in warnings:
        logs.get(__name__).warning(warning)
    # Each live sandbox costs the daemon a few fds (a uid range's namespace, a
    # lease, streams): the soft limit of 1024 a service manager gives is too few.
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    try:
        asyncio.run(Daemon(cfg, providers).run())
    except DaemonError as exc:
        print(f"computesdkd: {exc}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
