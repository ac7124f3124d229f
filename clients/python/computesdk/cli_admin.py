"""CLI commands for tokens and quotas: `computesdk token`, `computesdk quota`."""

from __future__ import annotations

import argparse
import re
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any

from ._cli_common import print_json, print_table, table
from .admin import Quota, Token
from .client import Client

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def duration(text: str) -> int:
    """Seconds in "90s", "30m", "12h", "7d" (or a bare number of seconds)."""
    m = re.fullmatch(r"(\d+)([smhd]?)", text.strip())
    if not m:
        raise argparse.ArgumentTypeError(f"{text!r}: want a duration such as 90s, 30m, 12h, 7d")
    return int(m.group(1)) * _UNITS[m.group(2) or "s"]


def _state(t: Token) -> str:
    """Its own state (a token made by a revoked token is refused as well)."""
    if t.revoked:
        return "revoked"
    if t.expires and t.expires.replace(tzinfo=UTC) <= datetime.now(UTC):
        return "expired"
    return "active"


def _when(value: Any) -> str:
    return value.strftime("%Y-%m-%d %H:%M") if value else "-"


async def cmd_token(c: Client, a: argparse.Namespace) -> int:
    if a.action == "create":
        token, secret = await c.admin.create_token(
            a.tenant, a.scope, a.description, a.expires or 0, a.client_subject
        )
        if a.json:
            print_json({**asdict(token), "token": secret})
        else:
            # Alone on stdout: TOKEN=$(computesdk token create ...); a certificate's
            # token has no secret, so its id is printed.
            print(secret or token.id)
    elif a.action == "ls":
        tokens = await c.admin.list_tokens(a.tenant or "")
        if a.json:
            print_json([asdict(t) for t in tokens])
        else:
            rows = [
                (
                    t.id,
                    t.tenant,
                    t.scope,
                    _when(t.created),
                    _when(t.expires),
                    _state(t),
                    t.client_subject or "-",
                    t.description,
                )
                for t in tokens
            ]
            heads = ("ID", "TENANT", "SCOPE", "CREATED", "EXPIRES", "STATE", "CERT", "DESCRIPTION")
            print_table(table(*heads, rows=rows))
    elif a.action == "revoke":
        token = await c.admin.revoke_token(a.id)
        print_json(asdict(token)) if a.json else print(f"revoked {token.id}")
    return 0


async def cmd_quota(c: Client, a: argparse.Namespace) -> int:
    if a.action == "set":
        q = await c.admin.set_quota(
            a.tenant,
            Quota(a.sandboxes, a.cpu, a.memory_mb, a.disk_mb, a.volume_mb, a.creates_per_second),
        )
        print_json(asdict(q)) if a.json else print(f"quota of {a.tenant} set")
        return 0
    u = await c.admin.get_quota(a.tenant)
    if a.json:
        print_json(asdict(u))
        return 0
    q = u.quota

    def bound(v: float) -> str:
        return f"{v:g}" if v else "-"

    rows = [
        ("sandboxes", u.sandboxes, bound(q.max_sandboxes)),
        ("cpu cores", f"{u.cpu_cores:g}", bound(q.max_cpu_cores)),
        ("memory MB", u.memory_mb, bound(q.max_memory_mb)),
        ("disk MB", u.disk_mb, bound(q.max_disk_mb)),
        ("volume MB", u.volume_mb, bound(q.max_volume_mb)),
        ("creates/s", "", bound(q.creates_per_second)),
    ]
    print_table(table("RESOURCE", "USED", "BOUND", rows=rows))
    return 0


def add_parsers(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "token",
        parents=[common],
        help="bearer tokens for the network listener: create|ls|revoke",
        description="create prints the token alone (shown once; the daemon keeps a "
        "hash). Scopes: read (get, list, watch), write (also create, exec, write, "
        "destroy), admin (also the tenant's own tokens over the network).",
    )
    p.add_argument("action", choices=["create", "ls", "revoke"], help="what to do")
    p.add_argument("id", nargs="?", default="", help="the token id (revoke)")
    p.add_argument(
        "--tenant", default="", help="the token's tenant (ls: only its tokens; empty: all in reach)"
    )
    p.add_argument(
        "--scope", choices=["read", "write", "admin"], default="write", help="what it may do"
    )
    p.add_argument("--expires", type=duration, help="lifetime, e.g. 12h or 30d")
    p.add_argument("--description", default="", help="a note shown by token ls")
    p.add_argument(
        "--client-subject",
        default="",
        help="no secret: a client certificate with this CN or SAN is the credential (mTLS)",
    )
    p.set_defaults(fn=cmd_token)
    p = sub.add_parser(
        "quota",
        parents=[common],
        help="a tenant's quota: get|set (0 or unset: no bound)",
    )
    p.add_argument("action", choices=["get", "set"], help="what to do")
    p.add_argument("tenant", nargs="?", default="", help="the tenant")
    p.add_argument("--sandboxes", type=int, default=0, help="sandboxes at once")
    p.add_argument("--cpu", type=float, default=0.0, help="cores, summed over sandboxes")
    p.add_argument("--memory-mb", type=int, default=0, help="memory, summed over sandboxes")
    p.add_argument("--disk-mb", type=int, default=0, help="disk, summed over sandboxes")
    p.add_argument("--volume-mb", type=int, default=0, help="volume sizes, summed")
    p.add_argument("--creates-per-second", type=float, default=0.0, help="the rate of creates")
    p.set_defaults(fn=cmd_quota)
