"""CLI commands for pools, batches, groups, networks, channels, reset and env."""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict
from typing import Any

from rich.table import Table

from ._cli_common import ERR, FAILED, error_json, kv, print_json, print_table, right, table
from .cli_exec import command_of, exit_code_for
from .client import Client
from .errors import ComputeSDKError


def _out(a: argparse.Namespace, obj: Any, text: str | Table) -> None:
    if a.json:
        print_json(obj)
    elif isinstance(text, Table):
        print_table(text)
    else:
        print(text)


async def cmd_pool(c: Client, a: argparse.Namespace) -> int:
    if a.action == "create":
        p = await c.pools.create(
            a.name, provider=a.provider, template=a.template, min=a.min, max=a.max
        )
        _out(a, asdict(p), p.name)
    elif a.action == "ls":
        pools = await c.pools.list()
        counts = map(right, ["IDLE", "LEASED", "CREATING", "MIN", "MAX"])
        rows = [
            (p.name, p.provider, p.template, p.idle, p.leased, p.creating, p.min, p.max)
            for p in pools
        ]
        _out(
            a, [asdict(p) for p in pools], table("NAME", "PROVIDER", "TEMPLATE", *counts, rows=rows)
        )
    elif a.action == "acquire":
        sb = await c.pools.acquire(a.name, wait_timeout_ms=a.wait_ms)
        _out(a, {"id": sb.id}, sb.id)
    elif a.action == "release":
        returned = await c.pools.release(a.name, hard=a.hard)
        _out(a, {"returned": returned}, "returned" if returned else "destroyed")
    elif a.action == "rm":
        await c.pools.delete(a.name)
    return 0


async def cmd_batch(c: Client, a: argparse.Namespace) -> int:
    items = [{"provider": a.provider, "template": t} for t in a.template for _ in range(a.count)]
    with ERR.status(f"creating {len(items)} sandboxes"):  # shown on a terminal only
        results = await c.batch_create(items)
    failed = 0
    for r in results:
        if isinstance(r, ComputeSDKError):
            failed += 1
            _out(a, error_json(r), f"error\t{r}")
        else:
            _out(a, {"id": r.id, "template": r.template}, r.id)
    return FAILED if failed else 0


async def cmd_group(c: Client, a: argparse.Namespace) -> int:
    if a.action == "create":
        _out(a, await c.groups.create(a.name, a.ids), a.name)
    elif a.action == "ls":
        groups = await c.groups.list()
        rows = [(n, " ".join(m)) for n, m in groups.items()]
        _out(a, groups, table("NAME", "MEMBERS", rows=rows))
    elif a.action == "add":
        _out(a, await c.groups.add(a.name, a.ids), a.name)
    elif a.action == "remove":
        _out(a, await c.groups.remove(a.name, a.ids), a.name)
    elif a.action == "exec":
        # ids holds the command here; one word is a shell command line, as in exec.
        # The exit code is the first failure's, as exec would give it.
        code = 0
        async for r in c.groups.broadcast(a.name, command_of(a.ids, None)):
            if r.result is not None:
                ex = r.result
                code = code or (128 + ex.signal if ex.signal else ex.exit_code)
                _out(
                    a,
                    {
                        "sandbox_id": r.sandbox_id,
                        "exit_code": r.result.exit_code,
                        "stdout": r.result.stdout,
                        "stderr": r.result.stderr,
                    },
                    f"{r.sandbox_id}\texit {r.result.exit_code}\t{r.result.stdout.strip()}",
                )
            else:
                code = code or (exit_code_for(r.error) if r.error is not None else FAILED)
                _out(
                    a,
                    {"sandbox_id": r.sandbox_id, **(error_json(r.error) if r.error else {})},
                    f"{r.sandbox_id}\terror\t{r.error}",
                )
        return code
    elif a.action == "destroy":
        _out(a, await c.groups.destroy_all(a.name), a.name)
    elif a.action == "rm":
        await c.groups.delete(a.name)
    return 0


async def cmd_network(c: Client, a: argparse.Namespace) -> int:
    if a.action == "create":
        members = {}
        for item in a.ids:  # SANDBOX or HOSTNAME=SANDBOX
            host, sep, sid = item.partition("=")
            members[host if sep else item] = sid if sep else item
        net = await c.networks.create(a.name, members)
        rows = [(h, s, ip) for h, (s, ip) in net.members.items()]
        _out(a, asdict(net), table("HOSTNAME", "SANDBOX", "ADDRESS", rows=rows))
    elif a.action == "ls":
        nets = await c.networks.list()
        rows = [(n.name, n.subnet, " ".join(n.members)) for n in nets]
        _out(a, [asdict(n) for n in nets], table("NAME", "SUBNET", "MEMBERS", rows=rows))
    elif a.action == "url":
        url = await c.networks.get_service_url(a.name, a.ids[0], int(a.ids[1]))
        _out(a, {"url": url}, url)
    elif a.action == "expose":  # name is the sandbox here
        url = await c.networks.get_url(a.name, int(a.ids[0]))
        _out(a, {"url": url}, url)
    elif a.action == "rm":
        await c.networks.delete(a.name)
    return 0


async def cmd_channel(c: Client, a: argparse.Namespace) -> int:
    if a.action == "create":
        _out(a, await c.channels.connect(a.name, a.args), a.name)
    elif a.action == "send":  # args: SENDER RECIPIENT|* PAYLOAD
        sender, recipient, payload = a.args
        seq = await c.channels.send(
            a.name, sender, None if recipient == "*" else recipient, payload
        )
        _out(a, {"sender_sequence": seq}, str(seq))
    elif a.action == "recv":  # args: MEMBER; prints and acknowledges as it goes
        member = a.args[0]
        async for m in c.channels.subscribe(a.name, member):
            _out(
                a,
                {"sequence": m.sequence, "sender": m.sender, "payload": m.text},
                f"{m.sequence}\t{m.sender}\t{m.text}",
            )
            sys.stdout.flush()
            await c.channels.ack(a.name, member, m.sequence)
            if a.count and m.sequence >= a.count:
                break
    elif a.action == "rm":
        await c.channels.delete(a.name)
    return 0


async def cmd_reset(c: Client, a: argparse.Namespace) -> int:
    sb = await c.get(a.id)
    await sb.reset(hard=a.hard)
    return 0


async def cmd_env(c: Client, a: argparse.Namespace) -> int:
    sb = await c.get(a.id)
    env = await sb.set_env(kv(a.set, "env"), unset=a.unset)
    _out(a, env, "\n".join(f"{k}={v}" for k, v in sorted(env.items())))
    return 0


async def cmd_snapshot(c: Client, a: argparse.Namespace) -> int:
    sb = await c.get(a.id)
    if a.action == "create":
        snap = await sb.snapshots.create(a.name, description=a.description)
        _out(a, asdict(snap), snap.id)
    elif a.action == "ls":
        snaps = await sb.snapshots.list()
        rows = [(x.id, x.name, x.size_bytes, f"{x.created:%Y-%m-%d %H:%M:%S}") for x in snaps]
        listing = table("ID", "NAME", right("BYTES"), "CREATED", rows=rows)
        _out(a, [asdict(x) for x in snaps], listing)
    elif a.action == "restore":
        await sb.snapshots.restore(a.name)
    elif a.action == "rm":
        await sb.snapshots.delete(a.name)
    return 0


async def cmd_state(c: Client, a: argparse.Namespace) -> int:
    if a.action == "save":
        st = await c.states.save(a.arg, a.name)
        _out(a, asdict(st), st.id)
    elif a.action == "ls":
        states = await c.states.list()
        rows = [(x.id, x.name, x.provider, x.template, x.size_bytes) for x in states]
        listing = table("ID", "NAME", "PROVIDER", "TEMPLATE", right("BYTES"), rows=rows)
        _out(a, [asdict(x) for x in states], listing)
    elif a.action == "rm":
        await c.states.delete(a.arg)
    return 0


async def cmd_volume(c: Client, a: argparse.Namespace) -> int:
    if a.action == "create":
        v = await c.volumes.create(a.name, size_mb=a.size_mb, persistent=not a.ephemeral)
        _out(a, asdict(v), v.name)
    elif a.action == "ls":
        vols = await c.volumes.list()
        rows = [
            (x.name, x.size_mb, x.used_bytes, "persistent" if x.persistent else "ephemeral",
             " ".join(x.mounted_by))
            for x in vols
        ]  # fmt: skip
        listing = table("NAME", right("SIZE MB"), right("USED BYTES"), "KIND", "MOUNTED BY",
                        rows=rows)  # fmt: skip
        _out(a, [asdict(x) for x in vols], listing)
    elif a.action == "rm":
        await c.volumes.delete(a.name)
    return 0


async def cmd_restart(c: Client, a: argparse.Namespace) -> int:
    sb = await c.get(a.id)
    env = kv(a.env, "env") if a.env else None
    await sb.restart(template=a.template, env=env)
    return 0


def add_parsers(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("pool", parents=[common], help="warm pools: create|ls|acquire|release|rm")
    p.add_argument(
        "action", choices=["create", "ls", "acquire", "release", "rm"], help="what to do"
    )
    p.add_argument("name", nargs="?", default="", help="pool (sandbox id for release)")
    p.add_argument("--provider", default="", help="create: its sandboxes' provider")
    p.add_argument("--template", default="", help="create: its sandboxes' template")
    p.add_argument("--min", type=int, default=1, help="create: sandboxes kept warm")
    p.add_argument("--max", type=int, default=10, help="create: sandboxes at most")
    p.add_argument(
        "--wait-ms", type=int, default=0, metavar="MS", help="acquire: wait this long for one"
    )
    p.add_argument("--hard", action="store_true", help="release: reset files too")
    p.set_defaults(fn=cmd_pool)

    p = sub.add_parser("batch", parents=[common], help="create many sandboxes in one call")
    p.add_argument("--provider", default="", help="the provider (default: the daemon's)")
    p.add_argument("--template", action="append", default=[], help="a template (repeatable)")
    p.add_argument("-n", "--count", type=int, default=1, help="sandboxes per template")
    p.set_defaults(fn=cmd_batch)

    p = sub.add_parser(
        "group", parents=[common], help="groups: create|ls|add|remove|exec|destroy|rm"
    )
    p.add_argument(
        "action",
        choices=["create", "ls", "add", "remove", "exec", "destroy", "rm"],
        help="what to do",
    )
    p.add_argument("name", nargs="?", default="", help="the group")
    p.add_argument("ids", nargs="*", help="sandbox ids, or after exec: -- COMMAND...")
    p.set_defaults(fn=cmd_group)

    p = sub.add_parser("network", parents=[common], help="networks: create|ls|url|expose|rm")
    p.add_argument("action", choices=["create", "ls", "url", "expose", "rm"], help="what to do")
    p.add_argument("name", nargs="?", default="", help="network (sandbox id for expose)")
    p.add_argument("ids", nargs="*", help="[HOSTNAME=]SANDBOX..., or MEMBER PORT, or PORT")
    p.set_defaults(fn=cmd_network)

    p = sub.add_parser("channel", parents=[common], help="message channels: create|send|recv|rm")
    p.add_argument("action", choices=["create", "send", "recv", "rm"], help="what to do")
    p.add_argument("name", help="the channel")
    p.add_argument("args", nargs="*", help="MEMBERS..., or SENDER RECIPIENT|* PAYLOAD, or MEMBER")
    p.add_argument("--count", type=int, default=0, help="recv: stop after this sequence")
    p.set_defaults(fn=cmd_channel)

    p = sub.add_parser("snapshot", parents=[common], help="snapshots: create|ls|restore|rm")
    p.add_argument("action", choices=["create", "ls", "restore", "rm"], help="what to do")
    p.add_argument("id", help="sandbox")
    p.add_argument("name", nargs="?", default="", help="name (create) or snapshot id")
    p.add_argument("--description", default="", help="create: a note kept with it")
    p.set_defaults(fn=cmd_snapshot)

    p = sub.add_parser("state", parents=[common], help="saved states: save|ls|rm")
    p.add_argument("action", choices=["save", "ls", "rm"], help="what to do")
    p.add_argument("arg", nargs="?", default="", help="sandbox (save) or state id (rm)")
    p.add_argument("--name", default="", help="save: a name for it")
    p.set_defaults(fn=cmd_state)

    p = sub.add_parser("volume", parents=[common], help="volumes: create|ls|rm")
    p.add_argument("action", choices=["create", "ls", "rm"], help="what to do")
    p.add_argument("name", nargs="?", default="", help="the volume")
    p.add_argument("--size-mb", type=int, default=0, help="create: its size (0: the default)")
    p.add_argument("--ephemeral", action="store_true", help="create: gone with its last sandbox")
    p.set_defaults(fn=cmd_volume)

    p = sub.add_parser("restart", parents=[common], help="restart a sandbox, keeping its id")
    p.add_argument("id", help="the sandbox")
    p.add_argument("--template", default="", help="start from this template's files")
    p.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="K=V",
        help="replaces the environment (repeatable)",
    )
    p.set_defaults(fn=cmd_restart)

    p = sub.add_parser("reset", parents=[common], help="kill every process (--hard: and files)")
    p.add_argument("id", help="the sandbox")
    p.add_argument("--hard", action="store_true", help="return the files to the template's too")
    p.set_defaults(fn=cmd_reset)

    p = sub.add_parser("env", parents=[common], help="set env for later commands")
    p.add_argument("id", help="the sandbox")
    p.add_argument("set", nargs="*", metavar="K=V", help="variables to set")
    p.add_argument(
        "--unset", action="append", default=[], metavar="K", help="a variable to drop (repeatable)"
    )
    p.set_defaults(fn=cmd_env)
