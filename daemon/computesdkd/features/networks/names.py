"""Which name each member of a shared network has, kept live.

A member's name comes from what the user controls (domain/service_names: env
SERVICE_NAME, metadata "service", metadata "name"), then the name given when the
network was made from a record, then its sandbox id. When two members want one
name, the first claim wins: a member that holds the name it wants most keeps it,
and the other gets its next choice. No member can take another member's sandbox
id, so the id fallback is always free and every member always has a name.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from computesdkd.domain import service_names

# Refused names are echoed in events at most this long.
ECHO = 70


@dataclass
class Member:
    sandbox_id: str
    hostname: str
    address: str
    # The name given at CreateNetwork ({name: sandbox}); "" when none was.
    given: str = ""


@dataclass(frozen=True)
class Refusal:
    name: str
    source: str
    why: str


def choices(
    member: Member, env: Mapping[str, str], metadata: Mapping[str, str], ids: set[str]
) -> tuple[list[str], list[Refusal]]:
    """The member's acceptable names, best first (its id last), and what was refused."""
    others = ids - {member.sandbox_id}
    names: list[str] = []
    refused: list[Refusal] = []
    for source, name in [*service_names.wanted(env, metadata), ("given", member.given)]:
        why = service_names.why_not(name) if name else "empty"
        if not why and name in others:
            why = "another member's sandbox id"
        if why == "empty":
            continue
        if why:
            refused.append(Refusal(name[:ECHO], source, why))
        elif name not in names:
            names.append(name)
    return [*names, member.sandbox_id], refused


def assign(members: Sequence[Member], wanted: Mapping[str, list[str]]) -> dict[str, str]:
    """sandbox id -> name, first claim wins (see the module's doc)."""
    taken: set[str] = set()
    out: dict[str, str] = {}
    for m in members:
        best = wanted[m.sandbox_id][0]
        if m.hostname == best and best not in taken:
            taken.add(best)
            out[m.sandbox_id] = best
    for m in members:
        if m.sandbox_id in out:
            continue
        name = next(n for n in wanted[m.sandbox_id] if n not in taken)
        taken.add(name)
        out[m.sandbox_id] = name
    return out
