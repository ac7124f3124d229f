"""computesdk: the command line client of computesdkd.

Here are the parser, the offline commands (stubs, completion, version) and the
entry point, main(); the other commands are in cli_sandbox, cli_watch, cli_exec,
cli_cp, cli_fleet, cli_templates and cli_admin. Exit codes: _cli_common."""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import shutil
import sys
from pathlib import Path
from typing import Any

import grpc

import computesdk_api

from . import (
    __version__,
    cli_admin,
    cli_cp,
    cli_exec,
    cli_fleet,
    cli_sandbox,
    cli_templates,
    cli_watch,
)
from ._cli_common import BROKEN_PIPE, FAILED, INTERRUPTED, CLIError, Parser, error_json
from ._cli_common import print_json as _print_json
from .client import Client
from .errors import ComputeSDKError


def _common(suppress: bool) -> Parser:
    # Accepted before and after the subcommand; the subcommand's copy must not reset
    # a value given before it, hence SUPPRESS there.
    d: dict[str, Any] = {"default": argparse.SUPPRESS} if suppress else {}
    p = Parser(add_help=False)
    p.add_argument("--socket", help="daemon socket (env COMPUTESDK_SOCKET)", **d)
    p.add_argument("--target", help="any gRPC target, plaintext, e.g. unix:/path", **d)
    p.add_argument("--address", help="a network listener, HOST:PORT (env COMPUTESDK_ADDRESS)", **d)
    p.add_argument("--token", help="bearer token (env COMPUTESDK_TOKEN)", **d)
    p.add_argument("--ca", help="CA certificate to trust, PEM (env COMPUTESDK_CA)", **d)
    p.add_argument(
        "--cert", help="client certificate for mutual TLS (env COMPUTESDK_CLIENT_CERT)", **d
    )
    p.add_argument("--key", help="its key (env COMPUTESDK_CLIENT_KEY)", **d)
    p.add_argument(
        "--insecure",
        action="store_true",
        default=argparse.SUPPRESS if suppress else None,
        help="plaintext TCP to a --insecure-listen daemon (env COMPUTESDK_INSECURE=1)",
    )
    p.add_argument(
        "--json", action="store_true", help="machine-readable output (the shape: README)", **d
    )
    return p


def parser() -> argparse.ArgumentParser:
    common = _common(suppress=True)
    ap = Parser(
        prog="computesdk",
        parents=[_common(suppress=False)],
        description="Command line client of computesdkd. Exit codes: 0 done; 125 the "
        "CLI or the daemon failed (usage errors too); for exec, 126 the command cannot "
        "run, 127 it was not found, else its own code (128+N: killed by signal N); "
        "130 Ctrl-C; 141 stdout's reader went away.",
    )
    ap.add_argument(
        "--version",
        action="version",
        version=f"computesdk {__version__}",
        help="print the client's version and exit (`computesdk version` asks the daemon too)",
    )
    sub = ap.add_subparsers(dest="cmd", required=True, metavar="COMMAND")

    cli_sandbox.add_parsers(sub, common)
    cli_watch.add_parsers(sub, common)
    cli_exec.add_parsers(sub, common)
    cli_cp.add_parsers(sub, common)
    cli_fleet.add_parsers(sub, common)
    cli_templates.add_parsers(sub, common)
    cli_admin.add_parsers(sub, common)
    p = sub.add_parser(
        "stubs",
        parents=[common],
        help="write the API's protos, or generated stubs, for your own build",
        description="--lang proto writes the .proto files; python writes generated "
        "modules; any other language (go, typescript, java, rust, ...) writes the "
        "protos with a buf.gen.yaml for that language's protoc plugin.",
    )
    p.add_argument("--lang", required=True, help="proto, python, go, typescript, java, ...")
    p.add_argument("--out", required=True, type=Path, help="the directory to write into")
    p.set_defaults(offline=_stubs)
    p = sub.add_parser(
        "completion",
        parents=[common],
        help="print a shell completion script: completion bash|zsh|tcsh",
        description="e.g. `computesdk completion bash > /etc/bash_completion.d/computesdk`, "
        "or `source <(computesdk completion bash)` in ~/.bashrc.",
    )
    p.add_argument("shell", choices=["bash", "zsh", "tcsh"], help="the shell")
    p.set_defaults(offline=lambda a: _completion(ap, a))
    p = sub.add_parser(
        "version",
        parents=[common],
        help="the client's version, and whether the daemon answers",
    )
    p.set_defaults(fn=None, offline=_version)
    return ap


# The protoc plugin (protoc-gen-NAME) per language, for the buf.gen.yaml that stubs writes.
_PLUGINS = {
    "go": ["go", "go-grpc"],
    "typescript": ["es"],
    "ts": ["es"],
    "java": ["java", "grpc-java"],
    "kotlin": ["kotlin", "grpc-java"],
    "rust": ["prost", "tonic"],
    "csharp": ["csharp", "grpc-csharp"],
    "cpp": ["cpp", "grpc-cpp"],
    "ruby": ["ruby", "grpc-ruby"],
}


def write_stubs(lang: str, out: Path) -> list[Path]:
    """Copies the shipped protos (or Python stubs) to out; returns what it wrote."""
    root = Path(computesdk_api.__file__).parent
    lang = lang.lower()
    if lang == "python":
        sources = [p for p in root.rglob("*") if p.suffix in (".py", ".pyi")]
        base = root.parent
    else:
        sources = list((root / "proto").rglob("*.proto"))
        base = root / "proto"
        if lang != "proto" and lang not in _PLUGINS:
            known = ", ".join(["proto", "python", *sorted(_PLUGINS)])
            raise ComputeSDKError(
                f"no stubs for language {lang!r} (known: {known})",
                code=grpc.StatusCode.INVALID_ARGUMENT,
                reason="UNKNOWN_LANGUAGE",
            )
    written = []
    for src in sorted(sources):
        dst = out / src.relative_to(base)
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)
        written.append(dst)
    if lang in _PLUGINS:
        plugins = "".join(
            f"  - local: protoc-gen-{name}\n    out: gen/{lang}\n" for name in _PLUGINS[lang]
        )
        gen = out / "buf.gen.yaml"
        gen.write_text(
            "# Written by `computesdk stubs`: run `buf generate` here with these plugins on PATH.\n"
            f"version: v2\ninputs:\n  - directory: .\nplugins:\n{plugins}"
        )
        written.append(gen)
    return written


def _stubs(a: argparse.Namespace) -> int:
    written = write_stubs(a.lang, a.out)
    if a.json:
        _print_json({"written": [str(p) for p in written]})
    else:
        print(f"wrote {len(written)} files under {a.out}")
    return 0


def _completion(ap: argparse.ArgumentParser, a: argparse.Namespace) -> int:
    import shtab  # only here: every other command starts without it

    sys.stdout.write(shtab.complete(ap, shell=a.shell))
    return 0


def _version(a: argparse.Namespace) -> int:
    """Like `docker version`: the client, then the daemon if it answers."""
    client = {
        "version": __version__,
        "python": platform.python_version(),
        "grpcio": grpc.__version__,
    }
    server: dict[str, Any] = {"reachable": False, "version": None}
    failure: ComputeSDKError | None = None
    try:
        server["target"] = asyncio.run(_reach(a))
        server["reachable"] = True
    except ComputeSDKError as exc:
        failure = exc
    if a.json:
        _print_json(
            {"client": client, "server": server, **(error_json(failure) if failure else {})}
        )
    else:
        print(f"Client:\n Version:  {client['version']}\n Python:   {client['python']}")
        print(f" grpcio:   {client['grpcio']}")
        if failure is None:
            # The API has no call that tells the daemon's version (yet).
            print(f"Server:\n Target:   {server['target']}\n Version:  unknown (no version call)")
    if failure is not None:
        if not a.json:
            print(f"computesdk: {failure}", file=sys.stderr)
        return FAILED
    return 0


async def _connect(a: argparse.Namespace, timeout: float = 5.0) -> Client:
    return await Client.connect(
        socket=a.socket,
        target=a.target,
        timeout=timeout,
        address=a.address,
        token=a.token,
        ca=a.ca,
        cert=a.cert,
        key=a.key,
        insecure=a.insecure,
    )


async def _reach(a: argparse.Namespace) -> str:
    client = await _connect(a, timeout=3.0)
    await client.close()
    return client.target


async def _run(a: argparse.Namespace) -> int:
    client = await _connect(a)
    try:
        code: int = await a.fn(client, a)
        return code
    finally:
        await client.close()


def _stdout_gone() -> int:
    """The reader of stdout went away (`computesdk top --json | head`): end quietly,
    as a unix tool killed by SIGPIPE would; nothing more is written there."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return BROKEN_PIPE


def run(argv: list[str] | None = None) -> int:
    """The command's exit code (see parser()'s description)."""
    a = parser().parse_args(argv)
    try:
        if fixup := getattr(a, "fixup", None):
            fixup(a)
        offline = getattr(a, "offline", None)
        code = offline(a) if offline is not None else asyncio.run(_run(a))
        sys.stdout.flush()
        return code
    except ComputeSDKError as exc:
        if a.json:
            _print_json(error_json(exc))
        else:
            print(f"computesdk: {exc}", file=sys.stderr)
    except CLIError as exc:
        print(f"computesdk: {exc}", file=sys.stderr)
    except KeyboardInterrupt:
        return INTERRUPTED
    except BrokenPipeError:
        return _stdout_gone()
    except OSError as exc:  # a host file cp could not read or write, say
        print(f"computesdk: {exc}", file=sys.stderr)
    return FAILED


def main(argv: list[str] | None = None) -> None:
    sys.exit(run(argv))


if __name__ == "__main__":
    main()
