"""CLI commands that watch sandboxes: info, events, ps, top, and providers."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from typing import Any

from rich.live import Live
from rich.table import Table

from ._cli_common import OUT, jsonable, print_table, right, table
from ._cli_common import print_json as _print_json
from .client import Client
from .errors import ComputeSDKError
from .sandbox import Sandbox
from .types import ResourceUsage


async def cmd_info(c: Client, a: argparse.Namespace) -> int:
    sb = await c.get(a.id)
    status = await sb.get_status()
    if a.json:
        _print_json({"sandbox": sb.info, "status": status})
        return 0
    print(f"id:        {sb.id}\nprovider:  {sb.provider}\ntemplate:  {sb.template}")
    print(f"state:     {status.state}\nuptime:    {status.uptime_ms / 1000:.1f}s")
    r = status.resources
    print(
        f"limits:    cpu={r.cpu_cores:g} memory={r.memory_mb}MB disk={r.disk_mb}MB "
        f"pids={r.pids_limit}"
    )
    print(
        f"usage:     memory={status.memory_used_bytes / 2**20:.1f}MB "
        f"processes={status.process_count} disk={status.disk_used_bytes / 2**20:.1f}MB"
    )
    for k, v in sorted(sb.metadata.items()):
        print(f"metadata:  {k}={v}")
    return 0


async def cmd_events(c: Client, a: argparse.Namespace) -> int:
    async for ev in c.events(
        sandbox_ids=a.sandbox or (), types=a.type or (), after=a.after, follow=a.follow
    ):
        if a.json:
            _print_json(ev)
            sys.stdout.flush()
        else:
            attrs = " ".join(f"{k}={v}" for k, v in sorted(ev.attributes.items()))
            print(
                f"{ev.sequence:>6} {ev.time:%H:%M:%S.%f} {ev.sandbox_id} {ev.type:<16} "
                f"{ev.message} {attrs}".rstrip(),
                flush=True,
            )
    return 0


def _usage_table(rows: list[tuple[Sandbox, ResourceUsage]]) -> Table:
    numbers = map(right, ["CPU%", "MEM MB", "DISK MB", "PROCS", "NET RX/TX"])
    return table(
        "ID",
        "PROVIDER",
        *numbers,
        rows=[
            (
                sb.id,
                sb.provider,
                f"{u.cpu_percent:.1f}",
                f"{u.memory_used_mb:.0f}/{u.memory_total_mb:.0f}",
                f"{u.disk_used_mb:.0f}/{u.disk_total_mb:.0f}",
                u.process_count,
                f"{u.network_rx_bytes}/{u.network_tx_bytes}" if u.has_network else "-",
            )
            for sb, u in rows
        ],
    )


async def cmd_top(c: Client, a: argparse.Namespace) -> int:
    """Live usage per sandbox: redrawn in place (like top) on a terminal, else one
    frame per interval; --once prints one frame."""
    redraw = OUT.is_terminal and not (a.once or a.json)
    live = Live(console=OUT, auto_refresh=False) if redraw else None
    with live if live is not None else contextlib.nullcontext():
        while True:
            rows = []
            for sb in await c.list(states=["running"]):
                try:
                    rows.append((sb, await sb.get_resource_usage()))
                except ComputeSDKError:
                    continue  # it went away between list and sample
            if a.json:
                _print_json(
                    [{"id": sb.id, "provider": sb.provider, **jsonable(u)} for sb, u in rows]
                )
            elif live is not None:
                live.update(_usage_table(rows), refresh=True)
            else:
                print_table(_usage_table(rows))
            sys.stdout.flush()
            if a.once:
                return 0
            await asyncio.sleep(a.interval)


async def cmd_providers(c: Client, a: argparse.Namespace) -> int:
    provs = await c.providers()
    if a.json:
        _print_json(provs)
        return 0
    for p in provs:
        state = "available" if p.available else f"unavailable: {p.unavailable_reason}"
        print(f"{p.name}{' (default)' if p.is_default else ''}: {state}")
        print(f"  capabilities: {', '.join(p.capabilities)}")
        print(f"  circuit: {jsonable(p)['circuit_state']}")
    return 0


async def cmd_ps(c: Client, a: argparse.Namespace) -> int:
    sb = await c.get(a.id)
    procs = await sb.processes()
    if a.json:
        _print_json(procs)
        return 0
    rows = []
    for p in procs:
        ex = "" if p.exit_code is None else p.exit_code
        rows.append(
            (p.process_id, p.pid, "running" if p.running else "exited", ex, p.tag or "-",
             " ".join(p.args))
        )  # fmt: skip
    print_table(table("ID", right("PID"), "STATE", right("EXIT"), "TAG", "COMMAND", rows=rows))
    return 0


def add_parsers(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("info", parents=[common], help="show a sandbox and its status")
    p.add_argument("id", help="the sandbox")
    p.set_defaults(fn=cmd_info)

    p = sub.add_parser("events", parents=[common], help="print lifecycle events")
    p.add_argument("-f", "--follow", action="store_true", help="keep streaming")
    p.add_argument(
        "--sandbox", action="append", metavar="ID", help="only this sandbox's (repeatable)"
    )
    p.add_argument(
        "--type", action="append", metavar="TYPE", help="only events of this type (repeatable)"
    )
    p.add_argument(
        "--after", type=int, default=0, metavar="SEQ", help="only after this sequence number"
    )
    p.set_defaults(fn=cmd_events)

    p = sub.add_parser("ps", parents=[common], help="list a sandbox's processes")
    p.add_argument("id", help="the sandbox")
    p.set_defaults(fn=cmd_ps)

    p = sub.add_parser("top", parents=[common], help="live resource usage per sandbox")
    p.add_argument("--interval", type=float, default=1.0, metavar="SECONDS", help="between frames")
    p.add_argument("--once", action="store_true", help="print one frame and exit")
    p.set_defaults(fn=cmd_top)

    p = sub.add_parser("providers", parents=[common], help="list providers")
    p.set_defaults(fn=cmd_providers)
