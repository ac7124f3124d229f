"""Which Modal sandbox is each record's now, so that a restore (a new Modal
sandbox under the same daemon id, then the old one terminated) never leaves
two running for one record.

The current Modal sandbox of each record is known from create, adopt and
restore. A restore's is also kept in the state dir (modal-restored.json) until
the record goes: the daemon stores the record only after the restore returns,
which a cancelled caller or a crash can skip, and adopt takes it back from
here. An old Modal sandbox whose terminate failed is remembered and tried
again at the record's destroy and at reconcile; reconcile also ends every
sandbox tagged with this daemon that is not a live record's current one, which
covers a daemon that died before it could.

Orphans found by listing are terminated as the SDK terminates a sandbox it
only listed: without a sandbox token, which only a create hands out (the one
of a remembered old sandbox is sent).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Awaitable
from pathlib import Path
from typing import TypeVar

from computesdkd.domain.errors import ComputeError, NotFound
from computesdkd.domain.model import Sandbox
from computesdkd.providers.common.lifecycle import save_json
from computesdkd.providers.modal import sandboxes
from computesdkd.providers.modal.api import ModalAPI, is_v2
from computesdkd.support import logs

log = logs.get(__name__)
T = TypeVar("T")
MAX_FILE = 4 << 20
MAX_ID = 128
MAX_VALUE = 16384  # a provider_data value (tokens, the tunnels' JSON)


async def to_the_end(aw: Awaitable[T]) -> T:
    """Runs aw to its end even when the caller is cancelled meanwhile (then the
    cancel is raised after), so a half-done swap is never left behind."""
    task = asyncio.ensure_future(aw)
    cancelled = False
    while not task.done():
        try:
            await asyncio.wait([task])  # a cancelled wait leaves the task running
        except asyncio.CancelledError:
            cancelled = True
    if cancelled:
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.warning("a restore cut short by its caller failed", error=repr(exc))
        raise asyncio.CancelledError
    return task.result()


class Fleet:
    def __init__(self, api: ModalAPI) -> None:
        self._api = api
        self.current: dict[str, str] = {}  # record id -> its Modal sandbox id
        # Modal sandbox id -> (record id, V2, sandbox token): old ones still to end.
        self._old: dict[str, tuple[str, bool, str]] = {}
        self._restored: dict[str, dict[str, object]] = {}  # record id -> {"id", "data"}
        self._path: Path | None = None

    def load(self, state_dir: Path) -> None:
        self._path = state_dir / "modal-restored.json"
        with contextlib.suppress(FileNotFoundError):
            if self._path.stat().st_size > MAX_FILE:
                raise ValueError(f"{self._path} is over {MAX_FILE} bytes")
            raw = json.loads(self._path.read_text())
            if not isinstance(raw, dict):
                raise ValueError(f"{self._path} is not a JSON object")
            self._restored = {str(k): v for k, v in raw.items() if _entry(v)}

    def _save(self) -> None:
        if self._path is None:
            return
        save_json(self._path, self._restored)

    # ------------------------------------------------------------ what is whose

    def made(self, sandbox: Sandbox) -> None:
        self.current[sandbox.id] = sandbox.provider_sandbox_id

    def adopted(self, sandbox: Sandbox) -> bool:
        """The record as the last restore left it; True when the stored one was
        older (the caller saves it then)."""
        kept = self._restored.get(sandbox.id)
        newer = kept is not None and kept["id"] != sandbox.provider_sandbox_id
        if kept is not None and newer:
            token = sandbox.provider_data.get("sandbox_token", "")
            self._old[sandbox.provider_sandbox_id] = (sandbox.id, is_v2(sandbox), token)
            sandbox.provider_sandbox_id = str(kept["id"])
            data = kept["data"]
            assert isinstance(data, dict)
            sandbox.provider_data = {str(k): str(v) for k, v in data.items()}
        self.made(sandbox)
        return newer

    def restored(self, sandbox: Sandbox) -> None:
        self.made(sandbox)
        self._restored[sandbox.id] = {
            "id": sandbox.provider_sandbox_id,
            "data": dict(sandbox.provider_data),
        }
        self._save()

    def gone(self, sandbox: Sandbox) -> None:
        if self.current.get(sandbox.id) == sandbox.provider_sandbox_id:
            del self.current[sandbox.id]
            if self._restored.pop(sandbox.id, None) is not None:
                self._save()

    # ------------------------------------------------------------ ending old ones

    async def end(self, record_id: str, modal_id: str, v2: bool, token: str = "") -> bool:
        """Terminates a Modal sandbox; one Modal would not terminate is remembered."""
        try:
            await sandboxes.terminate(self._api, modal_id, v2, token)
        except NotFound:
            pass
        except ComputeError as exc:
            self._old[modal_id] = (record_id, v2, token)
            log.warning("could not terminate a Modal sandbox; tried again later",
                        sandbox_id=record_id, modal_id=modal_id, error=exc.message)  # fmt: skip
            return False
        self._old.pop(modal_id, None)
        return True

    async def end_old(self, record_id: str | None = None) -> None:
        for modal_id, (sid, v2, token) in list(self._old.items()):
            if record_id is None or sid == record_id:
                await self.end(sid, modal_id, v2, token)

    async def reconcile(self, app_id: str, daemon: str, live_ids: set[str]) -> None:
        """Ends each running sandbox tagged with this daemon that is not a live
        record's current one; one that fails is logged and the sweep goes on."""
        seen = set()
        async for modal_id, sid in sandboxes.owned(self._api, app_id, daemon):
            seen.add(modal_id)
            if sid in live_ids and self.current.get(sid, modal_id) == modal_id:
                continue
            token = self._old.get(modal_id, ("", True, ""))[2]
            if await self.end(sid, modal_id, not sandboxes.is_v1_id(modal_id), token):
                log.warning("terminated an orphan Modal sandbox", sandbox_id=sid, modal_id=modal_id)
        for modal_id, (sid, v2, token) in list(self._old.items()):
            if modal_id not in seen:  # not listed as running: tried once more
                await self.end(sid, modal_id, v2, token)
        for sid in [s for s in self._restored if s not in live_ids]:
            del self._restored[sid]
            self._save()


def _entry(v: object) -> bool:
    if not isinstance(v, dict) or set(v) != {"id", "data"}:
        return False
    modal_id, data = v["id"], v["data"]
    return (
        isinstance(modal_id, str)
        and 0 < len(modal_id) <= MAX_ID
        and isinstance(data, dict)
        and all(isinstance(x, str) and len(x) <= MAX_VALUE for kv in data.items() for x in kv)
    )
