"""Built templates as the store keeps them: one JSON record each, under
templates/<name>.json, naming the definition, its cache key, its layer stack
(top first) and its env."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from computesdkd.domain.model import TemplateDefinition, TemplateInfo

RECORD_VERSION = 1
Record = dict[str, object]


@dataclass(frozen=True)
class Template:
    """What a sandbox needs from its template: its lower dirs (top first) and env."""

    info: TemplateInfo
    lowers: tuple[Path, ...]


def load(records: Path) -> dict[str, Record]:
    """Every readable record, by template name."""
    out: dict[str, Record] = {}
    for p in sorted(records.glob("*.json")):
        with contextlib.suppress(OSError, ValueError):
            rec = dict(json.loads(p.read_text()))
            out[str(rec["name"])] = rec
    return out


def path(records: Path, name: str) -> Path:
    return records / f"{name.replace(':', '_').replace('/', '_')}.json"


def write(path: Path, rec: Record) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(rec, indent=1))
    os.replace(tmp, path)


def package_manager(d: TemplateDefinition) -> str:
    """The definition's package_manager as asked ("auto" when unset)."""
    return d.package_manager or "auto"


def cache_key(base_digest: str, d: TemplateDefinition, manager: str) -> str:
    """What a build's result depends on: its base, packages (and what installs
    them), env and setup."""
    body = {
        "v": RECORD_VERSION,
        "base": base_digest,
        "packages": list(d.packages),
        "package_manager": manager,
        "env": dict(sorted(d.env.items())),
        "setup": list(d.setup),
    }
    return "sha256:" + hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def strs(value: object) -> list[str]:
    return [str(x) for x in value] if isinstance(value, list) else []


def info(rec: Record) -> TemplateInfo:
    d = rec.get("definition")
    d = d if isinstance(d, dict) else {}
    env = rec.get("env")
    return TemplateInfo(
        name=str(rec["name"]),
        provider="local",
        description=str(rec.get("description", "")),
        builtin=False,
        digest=str(rec.get("digest", "")),
        definition=TemplateDefinition(
            name=str(rec["name"]),
            base_image=str(d.get("base_image", "")),
            packages=tuple(strs(d.get("packages"))),
            env={str(k): str(v) for k, v in (d.get("env") or {}).items()},
            setup=tuple(strs(d.get("setup"))),
            description=str(rec.get("description", "")),
            package_manager=str(d.get("package_manager", "")),
        ),
        base_image_digest=str(rec.get("base_image_digest", "")),
        env={str(k): str(v) for k, v in env.items()} if isinstance(env, dict) else {},
        layer_count=len(strs(rec.get("layers"))),
        size_bytes=int(str(rec.get("size_bytes", 0))),
        created_at=float(str(rec.get("created_at", 0.0))),
    )
