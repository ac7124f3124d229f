"""CLI commands for templates: build (with a progress display), ls, info, rm."""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from rich.progress import (
    BarColumn,
    Progress,
    ProgressColumn,
    SpinnerColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
)
from rich.text import Text

from ._cli_common import ERR, UsageError, kv, print_json, print_table, table
from .client import Client
from .templates import BuildEvent, BuildLog, BuildProgress, TemplateInfo


def _size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB"):
        if size < 1024:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"


class StepElapsed(ProgressColumn):
    """How long the current step has run, redrawn on every refresh (ten a second),
    so that the clock moves while a long step sends nothing."""

    def render(self, task: Task) -> Text:
        since = float(task.fields.get("step_started", time.monotonic()))
        return Text(f"{time.monotonic() - since:.1f}s", style="progress.elapsed")


class BuildDisplay:
    """Shows a build as it runs, on stderr: on a terminal, a bar over the steps
    (what the step does, bytes for downloads, the step's clock and the whole
    build's) with the log scrolling above it; otherwise one line per step, with
    the time into the build, and the log as it comes."""

    def __init__(self, quiet: bool = False) -> None:
        self.quiet = quiet
        self.last_step = (0, "")
        self.started = time.monotonic()
        self.bar = Progress(
            SpinnerColumn(),
            TextColumn("{task.description}", markup=False),
            StepElapsed(),
            BarColumn(),
            TimeElapsedColumn(),
            console=ERR,
            transient=True,
            disable=not ERR.is_terminal,
        )
        self.task = self.bar.add_task("starting", total=None, step_started=self.started)

    def __enter__(self) -> BuildDisplay:
        self.bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.bar.stop()

    def __call__(self, event: BuildEvent) -> None:
        if isinstance(event, BuildProgress):
            head = f"[{event.step}/{event.total_steps}] {event.description}"
            if event.bytes_total:
                pct = 100 * event.bytes_done / event.bytes_total
                head += f"  {_size(event.bytes_done)}/{_size(event.bytes_total)} ({pct:.0f}%)"
            elif event.bytes_done:
                head += f"  {_size(event.bytes_done)}"
            new_step = (event.step, event.description) != self.last_step
            fields: dict[str, Any] = {"step_started": time.monotonic()} if new_step else {}
            self.bar.update(
                self.task,
                description=head,
                completed=event.step - 1,
                total=event.total_steps,
                **fields,
            )
            if self.bar.disable and new_step:
                at = time.monotonic() - self.started
                print(f"{head}  (at {at:.1f}s)", file=sys.stderr, flush=True)
            self.last_step = (event.step, event.description)
        elif isinstance(event, BuildLog) and not self.quiet:
            if self.bar.disable:
                print(f"  {event.line}", file=sys.stderr)
            else:
                self.bar.console.print(f"  {event.line}")  # above the bar


def _info_text(t: TemplateInfo) -> str:
    lines = [
        f"name:        {t.name}{' (predefined)' if t.builtin else ''}",
        f"provider:    {t.provider}",
    ]
    if t.description:
        lines.append(f"description: {t.description}")
    if not t.builtin:
        lines += [
            f"digest:      {t.digest}",
            f"base image:  {t.base_image or '(provider base)'}",
            *([f"base digest: {t.base_image_digest}"] if t.base_image_digest else []),
            f"packages:    {' '.join(t.packages) or '-'}",
            *(f"setup:       {s}" for s in t.setup),
            f"layers:      {t.layer_count} ({_size(t.size_bytes)} of its own)",
        ]
    lines += [f"env:         {k}={v}" for k, v in sorted(t.env.items())]
    if t.unavailable_reason:
        lines.append(f"unavailable: {t.unavailable_reason}")
    return "\n".join(lines)


async def cmd_template(c: Client, a: argparse.Namespace) -> int:
    if a.action == "ls":
        infos = await c.templates.list(provider=a.provider)
        if a.json:
            print_json([asdict(t) for t in infos])
            return 0
        rows = []
        for t in infos:
            note = f"  unavailable: {t.unavailable_reason}" if t.unavailable_reason else ""
            rows.append(
                (t.name, "predefined" if t.builtin else t.digest[:19], t.description + note)
            )
        print_table(table("NAME", "DIGEST", "DESCRIPTION", rows=rows))
        return 0
    if not a.name and not a.file:
        raise UsageError(f"template {a.action} needs a NAME")
    if a.action == "info":
        t = await c.templates.get(a.name, provider=a.provider)
        print_json(asdict(t)) if a.json else print(_info_text(t))
        return 0
    if a.action == "rm":
        await c.templates.delete(a.name, provider=a.provider)
        return 0
    definition: dict[str, Any] = {}
    if a.file:
        definition = json.loads(Path(a.file).read_text())
    with BuildDisplay(quiet=a.quiet) as display:
        result = await c.templates.build(
            a.name or str(definition.get("name", "")),
            base_image=a.base_image or str(definition.get("base_image", "")),
            packages=[*definition.get("packages", []), *a.package],
            env={**definition.get("env", {}), **kv(a.env, "env")},
            setup=[*definition.get("setup", []), *a.setup],
            description=a.description or str(definition.get("description", "")),
            no_cache=a.no_cache,
            provider=a.provider,
            package_manager=a.package_manager or str(definition.get("package_manager", "")),
            on_event=display,
        )
    t = result.template
    if a.json:
        print_json({**asdict(t), "cache_hit": result.cache_hit, "duration_ms": result.duration_ms})
    else:
        how = "cache hit" if result.cache_hit else f"built in {result.duration_ms / 1000:.1f}s"
        print(f"{t.name} {t.digest} ({how})")
    return 0


def add_parsers(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "template",
        parents=[common],
        help="templates: build|ls|info|rm",
        description="build makes a custom template from a base image, packages, env "
        "and setup commands (flags, or --file with the same keys as JSON); the same "
        "definition built again is a cache hit. Base images: oci:DIR[:TAG], "
        "docker-archive:FILE, HOST[:PORT]/REPO[:TAG|@DIGEST], template:NAME.",
    )
    p.add_argument("action", choices=["build", "ls", "info", "rm"], help="what to do")
    p.add_argument("name", nargs="?", default="", help="the template")
    p.add_argument("--provider", default="", help="whose template (default: the daemon's default)")
    p.add_argument("--file", "-f", default="", help="a JSON definition")
    p.add_argument("--base-image", default="", help="the image to start from (see above)")
    p.add_argument(
        "--package", "-p", action="append", default=[], help="a package to install (repeatable)"
    )
    p.add_argument(
        "--package-manager",
        choices=["auto", "apt", "pip", "npm"],
        default="",
        help="what --package means (default auto: pip on a Python base, npm on Node, else apt)",
    )
    p.add_argument("--env", "-e", action="append", default=[], help="KEY=VALUE, repeatable")
    p.add_argument("--setup", "-s", action="append", default=[], help="a command, repeatable")
    p.add_argument("--description", default="", help="shown by template ls")
    p.add_argument("--no-cache", action="store_true", help="build even if built before")
    p.add_argument("--quiet", "-q", action="store_true", help="progress only, no build log")
    p.set_defaults(fn=cmd_template)
