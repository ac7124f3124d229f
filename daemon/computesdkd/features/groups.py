"""Named groups of sandboxes, kept by the daemon across restarts.

A broadcast runs one command on every member at once and yields each member's
outcome as it finishes; a member that fails (gone, stopped, exec refused) is
reported like the others and never stops them.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass

from computesdkd.core.lifecycle import Lifecycle
from computesdkd.core.processes import Processes
from computesdkd.core.registry import Registry
from computesdkd.domain.errors import (
    Aborted,
    ComputeError,
    InvalidArgument,
    already_exists,
    not_found,
)
from computesdkd.domain.model import Command, ExitStatus, Output
from computesdkd.store import Store
from computesdkd.support import logs

log = logs.get(__name__)

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
MAX_MEMBERS = 1000
# Output kept per member of a broadcast; more is cut, and the result says so.
MAX_BROADCAST_OUTPUT = 1024 * 1024
BROADCAST_CONCURRENCY = 64


@dataclass
class MemberOutcome:
    sandbox_id: str
    stdout: bytes = b""
    stderr: bytes = b""
    exit: ExitStatus | None = None
    error: ComputeError | None = None


class Groups:
    def __init__(
        self,
        registry: Registry,
        processes: Processes,
        lifecycle: Lifecycle,
        store: Store,
    ) -> None:
        self._registry = registry
        self._processes = processes
        self._lifecycle = lifecycle
        self._store = store
        self._groups: dict[str, list[str]] = {}
        registry.on_destroyed.append(self._member_gone)

    def start(self) -> None:
        live = self._registry.ids()
        for name, value in self._store.records("groups").all():
            self._groups[name] = [s for s in value["members"] if s in live]
            self._save(name)

    def _save(self, name: str) -> None:
        self._store.records("groups").put(name, {"members": self._groups[name]})

    def _member_gone(self, sandbox_id: str) -> None:
        for name, members in self._groups.items():
            if sandbox_id in members:
                members.remove(sandbox_id)
                self._save(name)

    def _check_members(self, sandbox_ids: list[str]) -> None:
        for sid in sandbox_ids:
            self._registry.get(sid)  # SANDBOX_NOT_FOUND for an unknown id

    def create(self, name: str, sandbox_ids: list[str]) -> list[str]:
        if not NAME.match(name):
            raise InvalidArgument(
                "group names are 1-63 of A-Z, a-z, 0-9, '.', '_', '-'", reason="INVALID_NAME"
            )
        if name in self._groups:
            raise already_exists("group", name)
        self._check_members(sandbox_ids)
        self._groups[name] = self._limited(sandbox_ids)
        self._save(name)
        return self._groups[name]

    def get(self, name: str) -> list[str]:
        members = self._groups.get(name)
        if members is None:
            raise not_found("group", name)
        return members

    def all(self) -> dict[str, list[str]]:
        return {n: self._groups[n] for n in sorted(self._groups)}

    @staticmethod
    def _limited(sandbox_ids: list[str]) -> list[str]:
        """The members without repeats, refused when there are too many."""
        members = list(dict.fromkeys(sandbox_ids))
        if len(members) > MAX_MEMBERS:
            raise InvalidArgument(
                f"a group holds at most {MAX_MEMBERS} sandboxes", reason="GROUP_TOO_LARGE"
            )
        return members

    def add(self, name: str, sandbox_ids: list[str]) -> list[str]:
        members = self.get(name)
        self._check_members(sandbox_ids)
        self._groups[name] = self._limited([*members, *sandbox_ids])
        self._save(name)
        return self._groups[name]

    def remove(self, name: str, sandbox_ids: list[str]) -> list[str]:
        members = self.get(name)
        self._groups[name] = [s for s in members if s not in set(sandbox_ids)]
        self._save(name)
        return self._groups[name]

    async def delete(self, name: str, destroy_members: bool) -> list[str]:
        members = list(self.get(name))
        destroyed: list[str] = []
        if destroy_members:
            results = await asyncio.gather(
                *(self._lifecycle.destroy(sid, reason="group-destroy") for sid in members),
                return_exceptions=True,
            )
            destroyed = [s for s, r in zip(members, results, strict=True) if r is None]
            failed = [r for r in results if isinstance(r, BaseException)]
            if failed and not isinstance(failed[0], ComputeError):
                raise failed[0]
        self._groups.pop(name, None)
        self._store.records("groups").delete(name)
        return destroyed

    async def broadcast(self, name: str, command: Command) -> AsyncIterator[MemberOutcome]:
        members = list(self.get(name))
        gate = asyncio.Semaphore(BROADCAST_CONCURRENCY)

        async def run(sid: str) -> MemberOutcome:
            async with gate:
                out = MemberOutcome(sid)
                try:
                    proc, events = await self._processes.exec(sid, command)
                    try:
                        stdout, stderr = bytearray(), bytearray()
                        async for ev in events:
                            if isinstance(ev, Output):
                                buf = stdout if ev.stream == "stdout" else stderr
                                buf += ev.data[: max(0, MAX_BROADCAST_OUTPUT - len(buf))]
                            elif isinstance(ev, ExitStatus):
                                out.exit = ev
                        out.stdout, out.stderr = bytes(stdout), bytes(stderr)
                    finally:
                        await proc.aclose()
                except ComputeError as exc:
                    out.error = exc
                if out.exit is None and out.error is None:
                    out.error = Aborted(
                        "the command ended without an exit status", reason="SANDBOX_TERMINATED"
                    )
                return out

        for finished in asyncio.as_completed([run(s) for s in members]):
            yield await finished
