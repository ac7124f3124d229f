"""CLI commands for sandboxes (create, ls, exec, rm, clone, migrate, info, events,
ps, top) and for the providers."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
from dataclasses import asdict
from typing import Any

from google.protobuf.json_format import MessageToDict
from rich.live import Live
from rich.table import Table

from ._cli_common import OUT, print_table, right, table
from ._cli_common import kv as _kv
from ._cli_common import print_json as _print_json
from .client import Client
from .errors import ComputeSDKError
from .sandbox import Sandbox
from .types import Resources, ResourceUsage

CIRCUIT_NAMES = {1: "closed", 2: "open", 3: "half-open"}


def _sandbox_dict(sb: Sandbox) -> dict[str, Any]:
    return MessageToDict(sb.info, preserving_proto_field_name=True)


def _volume_arg(text: str) -> dict[str, Any]:
    name, _, rest = text.partition(":")
    path, _, mode = rest.partition(":")
    if not name or not path or mode not in ("", "ro", "rw"):
        raise SystemExit(f"computesdk: --volume takes NAME:PATH[:ro], got {text!r}")
    return {"name": name, "mount_path": path, "read_only": mode == "ro"}


async def cmd_create(c: Client, a: argparse.Namespace) -> int:
    sb = await c.create(
        a.provider,
        template=a.template,
        metadata=_kv(a.metadata, "metadata"),
        timeout_ms=a.timeout_ms,
        keep_alive=a.keep_alive,
        env=_kv(a.env, "env"),
        resources=Resources(cpu_cores=a.cpu, memory_mb=a.memory_mb, disk_mb=a.disk_mb),
        fallback_providers=a.fallback or (),
        restore_from=a.restore_from,
        volumes=[_volume_arg(v) for v in a.volume],
    )
    if a.json:
        _print_json(_sandbox_dict(sb))
    else:
        print(sb.id)
    return 0


async def cmd_ls(c: Client, a: argparse.Namespace) -> int:
    items = await c.list(metadata=_kv(a.metadata, "metadata"), states=a.state or ())
    if a.json:
        _print_json([_sandbox_dict(s) for s in items])
        return 0
    rows = []
    for s in items:
        meta = ",".join(f"{k}={v}" for k, v in sorted(s.metadata.items()))
        rows.append((s.id, s.provider, s.template, s.state, meta))
    print_table(table("ID", "PROVIDER", "TEMPLATE", "STATE", "METADATA", rows=rows))
    return 0


async def _pump_stdin(stream: Any) -> None:
    loop = asyncio.get_running_loop()
    fd = sys.stdin.fileno()
    while True:
        data = await loop.run_in_executor(None, os.read, fd, 65536)
        if not data:
            await stream.close_stdin()
            return
        await stream.send_stdin(data)


async def cmd_exec(c: Client, a: argparse.Namespace) -> int:
    argv = a.command[1:] if a.command[:1] == ["--"] else a.command
    if not argv:
        raise SystemExit("computesdk: exec needs a command after --")
    sb = await c.get(a.id)
    command: str | list[str] = argv[0] if a.shell and len(argv) == 1 else argv
    stream = sb.exec_stream(
        command,
        cwd=a.cwd,
        env=_kv(a.env, "env"),
        timeout_ms=a.timeout_ms,
        interactive=a.interactive,
    )
    feeder = asyncio.create_task(_pump_stdin(stream)) if a.interactive else None
    out, err = bytearray(), bytearray()
    try:
        async for chunk in stream:
            if a.json:
                (out if chunk.stream == "stdout" else err).extend(chunk.data)
                continue
            target = sys.stdout.buffer if chunk.stream == "stdout" else sys.stderr.buffer
            target.write(chunk.data)
            target.flush()
    finally:
        if feeder is not None:
            feeder.cancel()
    ex = stream.exited
    assert ex is not None
    if a.json:
        _print_json(
            {
                "process_id": stream.process_id,
                "exit_code": ex.exit_code,
                "signal": ex.signal,
                "duration_ms": ex.duration_ms,
                "timed_out": ex.timed_out,
                "oom_killed": ex.oom_killed,
                "stdout": out.decode(errors="replace"),
                "stderr": err.decode(errors="replace"),
            }
        )
    return 128 + ex.signal if ex.signal else ex.exit_code


async def cmd_rm(c: Client, a: argparse.Namespace) -> int:
    for sid in a.ids:
        sb = await c.get(sid)
        await sb.destroy(graceful=a.graceful, timeout_ms=a.timeout_ms)
        if a.json:
            _print_json({"id": sid, "destroyed": True})
        else:
            print(sid)
    return 0


async def cmd_clone(c: Client, a: argparse.Namespace) -> int:
    src = await c.get(a.id)
    dst = await src.clone(provider=a.provider, template=a.template, env=_kv(a.env, "env"))
    print(json.dumps(_sandbox_dict(dst)) if a.json else dst.id)
    return 0


async def cmd_migrate(c: Client, a: argparse.Namespace) -> int:
    src = await c.get(a.id)
    dst = await src.migrate(
        a.provider,
        template=a.template,
        preserve_files=not a.no_files,
        preserve_env=not a.no_env,
        template_mapping=_kv(a.template_map, "template-map"),
        env_mapping=_kv(a.env_map, "env-map"),
    )
    print(json.dumps(_sandbox_dict(dst)) if a.json else dst.id)
    return 0


async def cmd_info(c: Client, a: argparse.Namespace) -> int:
    sb = await c.get(a.id)
    status = await sb.get_status()
    if a.json:
        _print_json({"sandbox": _sandbox_dict(sb), "status": asdict(status)})
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
            _print_json(asdict(ev))
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
                _print_json([{"id": sb.id, "provider": sb.provider, **asdict(u)} for sb, u in rows])
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
        _print_json([MessageToDict(p, preserving_proto_field_name=True) for p in provs])
        return 0
    for p in provs:
        state = "available" if p.available else f"unavailable: {p.unavailable_reason}"
        print(f"{p.name}{' (default)' if p.is_default else ''}: {state}")
        print(f"  capabilities: {', '.join(p.capabilities)}")
        print(f"  circuit: {CIRCUIT_NAMES.get(p.circuit_state, 'unknown')}")
    return 0


async def cmd_ps(c: Client, a: argparse.Namespace) -> int:
    sb = await c.get(a.id)
    procs = await sb.processes()
    if a.json:
        _print_json([asdict(p) for p in procs])
        return 0
    rows = []
    for p in procs:
        ex = "" if p.exit_code is None else p.exit_code
        rows.append(
            (p.process_id, p.pid, "running" if p.running else "exited", ex, " ".join(p.args))
        )
    print_table(table("ID", right("PID"), "STATE", right("EXIT"), "COMMAND", rows=rows))
    return 0


def add_parsers(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("create", parents=[common], help="create a sandbox, print its id")
    p.add_argument("--provider", default="")
    p.add_argument("--template", default="")
    p.add_argument(
        "--fallback",
        action="append",
        metavar="PROVIDER",
        help="provider to try next when the first is down (repeatable)",
    )
    p.add_argument("--metadata", action="append", default=[], metavar="K=V")
    p.add_argument("--env", action="append", default=[], metavar="K=V")
    p.add_argument("--timeout-ms", type=int, default=0)
    p.add_argument("--keep-alive", action="store_true")
    p.add_argument("--cpu", type=float, default=0.0)
    p.add_argument("--memory-mb", type=int, default=0)
    p.add_argument("--disk-mb", type=int, default=0)
    p.add_argument("--restore-from", default="", metavar="STATE", help="start from a saved state")
    p.add_argument(
        "--volume",
        action="append",
        default=[],
        metavar="NAME:PATH[:ro]",
        help="mount a volume (repeatable)",
    )
    p.set_defaults(fn=cmd_create)

    p = sub.add_parser("ls", parents=[common], help="list sandboxes")
    p.add_argument("--metadata", action="append", default=[], metavar="K=V")
    p.add_argument(
        "--state", action="append", choices=["creating", "running", "stopping", "stopped", "error"]
    )
    p.set_defaults(fn=cmd_ls)

    p = sub.add_parser("exec", parents=[common], help="run a command: exec ID -- CMD...")
    p.add_argument("id")
    p.add_argument("-i", "--interactive", action="store_true", help="forward stdin")
    p.add_argument("--cwd", default="")
    p.add_argument("--env", action="append", default=[], metavar="K=V")
    p.add_argument("--timeout-ms", type=int, default=0)
    p.add_argument("--shell", action="store_true", help="run a single argument via /bin/sh -c")
    p.add_argument("command", nargs=argparse.REMAINDER)
    p.set_defaults(fn=cmd_exec)

    p = sub.add_parser("rm", parents=[common], help="destroy sandboxes")
    p.add_argument("ids", nargs="+")
    p.add_argument("--graceful", action="store_true")
    p.add_argument("--timeout-ms", type=int, default=0)
    p.set_defaults(fn=cmd_rm)

    p = sub.add_parser("clone", parents=[common], help="copy a sandbox, print the new id")
    p.add_argument("id")
    p.add_argument("--provider", default="")
    p.add_argument("--template", default="")
    p.add_argument("--env", action="append", default=[], metavar="K=V")
    p.set_defaults(fn=cmd_clone)

    p = sub.add_parser(
        "migrate", parents=[common], help="move a sandbox to another provider, print the new id"
    )
    p.add_argument("id")
    p.add_argument("provider")
    p.add_argument("--template", default="")
    p.add_argument("--no-files", action="store_true")
    p.add_argument("--no-env", action="store_true")
    p.add_argument("--template-map", action="append", default=[], metavar="FROM=TO")
    p.add_argument("--env-map", action="append", default=[], metavar="FROM=TO")
    p.set_defaults(fn=cmd_migrate)

    p = sub.add_parser("info", parents=[common], help="show a sandbox and its status")
    p.add_argument("id")
    p.set_defaults(fn=cmd_info)

    p = sub.add_parser("events", parents=[common], help="print lifecycle events")
    p.add_argument("-f", "--follow", action="store_true", help="keep streaming")
    p.add_argument("--sandbox", action="append", metavar="ID")
    p.add_argument("--type", action="append", metavar="TYPE")
    p.add_argument("--after", type=int, default=0, metavar="SEQ")
    p.set_defaults(fn=cmd_events)

    p = sub.add_parser("ps", parents=[common], help="list a sandbox's processes")
    p.add_argument("id")
    p.set_defaults(fn=cmd_ps)

    p = sub.add_parser("top", parents=[common], help="live resource usage per sandbox")
    p.add_argument("--interval", type=float, default=1.0, metavar="SECONDS")
    p.add_argument("--once", action="store_true", help="print one frame and exit")
    p.set_defaults(fn=cmd_top)

    p = sub.add_parser("providers", parents=[common], help="list providers")
    p.set_defaults(fn=cmd_providers)
