"""computesdk: the command line client of computesdkd.

Here are the parser, `stubs` and the entry point, main(); the commands are in
cli_sandbox, cli_fleet and cli_templates."""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
from pathlib import Path
from typing import Any

import grpc

import computesdk_api

from . import cli_admin, cli_fleet, cli_sandbox, cli_templates
from ._cli_common import print_json as _print_json
from .client import Client
from .errors import ComputeSDKError


def _common(suppress: bool) -> argparse.ArgumentParser:
    # Accepted before and after the subcommand; the subcommand's copy must not reset
    # a value given before it, hence SUPPRESS there.
    d: dict[str, Any] = {"default": argparse.SUPPRESS} if suppress else {}
    p = argparse.ArgumentParser(add_help=False)
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
    p.add_argument("--json", action="store_true", help="machine-readable output", **d)
    return p


def parser() -> argparse.ArgumentParser:
    common = _common(suppress=True)
    ap = argparse.ArgumentParser(
        prog="computesdk",
        parents=[_common(suppress=False)],
        description="Command line client of computesdkd.",
    )
    sub = ap.add_subparsers(dest="cmd", required=True)

    cli_sandbox.add_parsers(sub, common)
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
    p.add_argument("--lang", required=True)
    p.add_argument("--out", required=True, type=Path)
    p.set_defaults(fn=None)
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


async def _run(a: argparse.Namespace) -> int:
    client = await Client.connect(
        socket=a.socket,
        target=a.target,
        timeout=5.0,
        address=a.address,
        token=a.token,
        ca=a.ca,
        cert=a.cert,
        key=a.key,
        insecure=a.insecure,
    )
    try:
        code: int = await a.fn(client, a)
        return code
    finally:
        await client.close()


def main(argv: list[str] | None = None) -> None:
    a = parser().parse_args(argv)
    try:
        if a.cmd == "stubs":
            written = write_stubs(a.lang, a.out)
            if a.json:
                _print_json({"written": [str(p) for p in written]})
            else:
                print(f"wrote {len(written)} files under {a.out}")
            code = 0
        else:
            code = asyncio.run(_run(a))
    except ComputeSDKError as exc:
        if a.json:
            _print_json(
                {
                    "error": {
                        "code": exc.code.name,
                        "reason": exc.reason,
                        "message": exc.message,
                        "metadata": exc.metadata,
                    }
                }
            )
        else:
            print(f"computesdk: {exc}", file=sys.stderr)
        code = 1
    except KeyboardInterrupt:
        code = 130
    sys.exit(code)


if __name__ == "__main__":
    main()
