"""CLI commands that make and end sandboxes: create, ls, rm, clone, migrate. Those
that watch them are in cli_watch, exec and logs in cli_exec, cp in cli_cp."""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from ._cli_common import FAILED, UsageError, error_json, print_table, right, table
from ._cli_common import kv as _kv
from ._cli_common import print_json as _print_json
from .client import Client
from .errors import ComputeSDKError, NotFoundError
from .sandbox import Sandbox
from .types import Resources

STATES = ["creating", "running", "stopping", "stopped", "error"]
FILTERS = "metadata.KEY=VALUE (or label=KEY=VALUE), state=, provider=, template=, id=PREFIX"


VOLUME_USAGE = "NAME:PATH[:OPTION,...] (options: ro, rw, existing, persistent, size=10GB)"


def _volume_arg(text: str) -> dict[str, Any]:
    name, _, rest = text.partition(":")
    path, _, opts = rest.partition(":")
    v: dict[str, Any] = {"name": name, "path": path}
    for opt in filter(None, opts.split(",")):
        key, eq, value = opt.partition("=")
        if opt in ("ro", "rw"):
            v["read_only"] = opt == "ro"
        elif opt in ("existing", "persistent"):
            v["mount_existing" if opt == "existing" else "persistent"] = True
        elif key == "size" and eq and value:
            v["size"] = value  # parsed by the daemon
        else:
            name = ""
    if not name or not path:
        raise UsageError(f"--volume takes {VOLUME_USAGE}, got {text!r}")
    return v


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
        _print_json(sb.info)
    else:
        print(sb.id)
    return 0


# ------------------------------------------------------------ selection (ls, rm --all)


@dataclass
class Selection:
    """docker's --filter: one key given twice matches either value; keys all match."""

    metadata: dict[str, set[str]] = field(default_factory=dict)
    keys: dict[str, set[str]] = field(default_factory=dict)  # state, provider, template, id

    def add(self, item: str) -> None:
        key, sep, value = item.partition("=")
        if key == "label":
            key, sep, value = value.partition("=")
            key = f"metadata.{key}"
        if not sep or key in ("", "metadata."):
            raise UsageError(f"--filter takes KEY=VALUE ({FILTERS}), got {item!r}")
        if key.startswith("metadata."):
            self.metadata.setdefault(key.removeprefix("metadata."), set()).add(value)
        elif key in ("state", "provider", "template", "id"):
            if key == "state" and value not in STATES:
                raise UsageError(f"state={value}: want one of {', '.join(STATES)}")
            self.keys.setdefault(key, set()).add(value)
        else:
            raise UsageError(f"unknown filter {key!r}: want {FILTERS}")

    def matches(self, sb: Sandbox) -> bool:
        meta = sb.metadata
        if any(meta.get(k) not in values for k, values in self.metadata.items()):
            return False
        have = {"state": sb.state, "provider": sb.provider, "template": sb.template}
        for key, values in self.keys.items():
            if key == "id":
                if not any(sb.id.startswith(v) for v in values):
                    return False
            elif have[key] not in values:
                return False
        return True

    async def select(self, c: Client) -> list[Sandbox]:
        # What the daemon can filter, it does; the rest is matched here.
        providers = self.keys.get("provider", set())
        items = await c.list(
            metadata={k: next(iter(v)) for k, v in self.metadata.items() if len(v) == 1},
            states=sorted(self.keys.get("state", ())),
            provider=next(iter(providers)) if len(providers) == 1 else "",
        )
        return [s for s in items if self.matches(s)]


def selection(a: argparse.Namespace) -> Selection:
    sel = Selection()
    for item in getattr(a, "filter", None) or ():
        sel.add(item)
    for item in getattr(a, "metadata", None) or ():
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"--metadata takes KEY=VALUE, got {item!r}")
        sel.add(f"metadata.{key}={value}")
    for state in getattr(a, "state", None) or ():
        sel.add(f"state={state}")
    return sel


def _ago(t: datetime | None, now: datetime) -> str:
    if t is None:
        return "-"
    secs = (now - t.replace(tzinfo=UTC)).total_seconds()
    n, unit = abs(secs), "s"
    for size, name in ((86400, "d"), (3600, "h"), (60, "m")):
        if n >= size:
            n, unit = n / size, name
            break
    return f"{n:.0f}{unit} ago" if secs >= 0 else f"in {n:.0f}{unit}"


async def cmd_ls(c: Client, a: argparse.Namespace) -> int:
    items = await selection(a).select(c)
    output = "json" if a.json else a.output
    if a.quiet:
        sys.stdout.write("".join(f"{s.id}\n" for s in items))
    elif output == "json":
        _print_json([s.info for s in items])
    elif output == "wide":
        now, rows = datetime.now(UTC), list[tuple[object, ...]]()
        for s in items:
            i, r = s.info, s.info.resources
            created = i.create_time.ToDatetime() if i.HasField("create_time") else None
            expires = i.expire_time.ToDatetime() if i.HasField("expire_time") else None
            meta = ",".join(f"{k}={v}" for k, v in sorted(s.metadata.items()))
            rows.append((s.id, s.provider, s.template, s.state, _ago(created, now),
                         "never" if i.keep_alive else _ago(expires, now), f"{r.cpu_cores:g}",
                         r.memory_mb, r.disk_mb, meta))  # fmt: skip
        heads = ("ID", "PROVIDER", "TEMPLATE", "STATE", "CREATED", "EXPIRES")
        limits = map(right, ["CPU", "MEM MB", "DISK MB"])
        print_table(table(*heads, *limits, "METADATA", rows=rows))
    else:
        rows = []
        for s in items:
            meta = ",".join(f"{k}={v}" for k, v in sorted(s.metadata.items()))
            rows.append((s.id, s.provider, s.template, s.state, meta))
        print_table(table("ID", "PROVIDER", "TEMPLATE", "STATE", "METADATA", rows=rows))
    return 0


async def cmd_rm(c: Client, a: argparse.Namespace) -> int:
    if a.all == bool(a.ids):
        raise UsageError("rm takes sandbox ids, or --all [--filter KEY=VALUE]... (not both)")
    if a.filter and not a.all:
        raise UsageError("--filter picks sandboxes for --all")
    targets: list[Sandbox | str] = list(await selection(a).select(c)) if a.all else list(a.ids)
    results, code = [], 0
    for target in targets:
        sid = target if isinstance(target, str) else target.id
        try:
            sb = await c.get(target) if isinstance(target, str) else target
            await sb.destroy(graceful=a.graceful, timeout_ms=a.timeout_ms)
        except NotFoundError as exc:
            if a.force or a.all:  # already gone: what rm wanted
                continue
            code = FAILED
            results.append({"id": sid, "destroyed": False, **error_json(exc)})
            if not a.json:
                print(f"computesdk: {exc}", file=sys.stderr)
            continue
        except ComputeSDKError as exc:
            code = FAILED
            results.append({"id": sid, "destroyed": False, **error_json(exc)})
            if not a.json:
                print(f"computesdk: {sid}: {exc}", file=sys.stderr)
            continue
        results.append({"id": sid, "destroyed": True})
        if not a.json:
            print(sid, flush=True)
    if a.json:
        _print_json(results)
    return code


async def cmd_clone(c: Client, a: argparse.Namespace) -> int:
    src = await c.get(a.id)
    dst = await src.clone(provider=a.provider, template=a.template, env=_kv(a.env, "env"))
    _print_json(dst.info) if a.json else print(dst.id)
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
    _print_json(dst.info) if a.json else print(dst.id)
    return 0


def _selecting(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--filter", action="append", default=[], metavar="KEY=VALUE", help=f"{FILTERS} (repeatable)"
    )
    p.add_argument(
        "--metadata",
        action="append",
        default=[],
        metavar="K=V",
        help="same as --filter metadata.K=V",
    )
    p.add_argument("--state", action="append", choices=STATES, help="same as --filter state=STATE")


def add_parsers(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("create", parents=[common], help="create a sandbox, print its id")
    p.add_argument("--provider", default="", help="the provider (default: the daemon's)")
    p.add_argument("--template", default="", help="the template (default: base)")
    p.add_argument(
        "--fallback",
        action="append",
        metavar="PROVIDER",
        help="provider to try next when the first is down (repeatable)",
    )
    p.add_argument(
        "--metadata", action="append", default=[], metavar="K=V", help="a label (repeatable)"
    )
    p.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="K=V",
        help="an environment variable (repeatable)",
    )
    p.add_argument(
        "--timeout-ms", type=int, default=0, metavar="MS", help="lifetime (default 300000)"
    )
    p.add_argument("--keep-alive", action="store_true", help="never destroy it for its age")
    p.add_argument("--cpu", type=float, default=0.0, help="cores (default: the provider's)")
    p.add_argument(
        "--memory-mb", type=int, default=0, help="memory limit (default: the provider's)"
    )
    p.add_argument("--disk-mb", type=int, default=0, help="disk size (default: the provider's)")
    p.add_argument("--restore-from", default="", metavar="STATE", help="start from a saved state")
    p.add_argument(
        "--volume",
        action="append",
        default=[],
        metavar="NAME:PATH[:OPTS]",
        help=f"mount a volume, made on first use unless 'existing' (repeatable): {VOLUME_USAGE}",
    )
    p.set_defaults(fn=cmd_create)

    p = sub.add_parser("ls", parents=[common], help="list sandboxes")
    p.add_argument("-q", "--quiet", action="store_true", help="ids only, one a line")
    p.add_argument(
        "-o", "--output", "--format", choices=["table", "wide", "json"], default="table",
        metavar="FORMAT",
        help="table, wide (times and limits too) or json (as --json)",
    )  # fmt: skip
    _selecting(p)
    p.set_defaults(fn=cmd_ls)

    p = sub.add_parser(
        "rm",
        parents=[common],
        help="destroy sandboxes: rm ID... | rm --all [--filter KEY=VALUE]...",
        description="Destroys the sandboxes named, or with --all every one the filters "
        "pick. Prints each id destroyed; one that failed makes the exit code 125.",
    )
    p.add_argument("ids", nargs="*", metavar="ID", help="the sandboxes")
    p.add_argument(
        "-f", "--force", action="store_true", help="an id that does not exist is no error"
    )
    p.add_argument("-a", "--all", action="store_true", help="every sandbox the filters pick")
    _selecting(p)
    p.add_argument("--graceful", action="store_true", help="let processes end on SIGTERM first")
    p.add_argument(
        "--timeout-ms", type=int, default=0, metavar="MS", help="how long --graceful waits"
    )
    p.set_defaults(fn=cmd_rm)

    p = sub.add_parser("clone", parents=[common], help="copy a sandbox, print the new id")
    p.add_argument("id", help="the sandbox to copy")
    p.add_argument("--provider", default="", help="the copy's provider (default: the same)")
    p.add_argument("--template", default="", help="the copy's template (default: the same)")
    p.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="K=V",
        help="an environment variable (repeatable)",
    )
    p.set_defaults(fn=cmd_clone)

    p = sub.add_parser(
        "migrate", parents=[common], help="move a sandbox to another provider, print the new id"
    )
    p.add_argument("id", help="the sandbox")
    p.add_argument("provider", help="where it goes")
    p.add_argument("--template", default="", help="its template there")
    p.add_argument("--no-files", action="store_true", help="leave /workspace behind")
    p.add_argument("--no-env", action="store_true", help="leave the environment behind")
    p.add_argument(
        "--template-map",
        action="append",
        default=[],
        metavar="FROM=TO",
        help="a template's name there (repeatable)",
    )
    p.add_argument(
        "--env-map",
        action="append",
        default=[],
        metavar="FROM=TO",
        help="rename a variable (repeatable)",
    )
    p.set_defaults(fn=cmd_migrate)
