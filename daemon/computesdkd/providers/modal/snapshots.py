"""Snapshots on Modal: a filesystem snapshot is an image (the router's
TaskSnapshotFilesystem, as the SDK's Sandbox.snapshot_filesystem() takes it,
for V1 and V2 alike), and a sandbox starts from one as from any image.

The daemon's restore keeps the sandbox id, stops every process and puts the
files back; Modal cannot put an image under a running sandbox, so a restore is
a new Modal sandbox from the snapshot's image under the same daemon id, made
before the old one is terminated (a failed restore leaves the sandbox as it
was). A restore runs to its end even when its caller goes away, and an old
sandbox Modal would not terminate is ended later (fleet.py). As on local,
processes do not survive; unlike local, the Modal sandbox id and its tunnels'
URLs change, and the sandbox's Modal timeout starts again.

Which image holds which snapshot is kept in the provider's state dir
(modal-snapshots.json), since saved states outlive their sandboxes and the
daemon's restart. Images are made without expiry (the SDK's ttl=None): the
daemon deletes them (ImageDelete) with their snapshot or state.
"""

from __future__ import annotations

import contextlib
import json
import re
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

from google.protobuf import empty_pb2

from computesdkd.domain.errors import NotFound, Unsupported
from computesdkd.domain.model import Sandbox
from computesdkd.providers import capabilities as caps
from computesdkd.providers.common.lifecycle import save_json
from computesdkd.providers.modal.api import HAVE_MODAL, NAME, ModalAPI, bad_answer
from computesdkd.providers.modal.router import Router

if HAVE_MODAL:
    from modal_proto import api_pb2
    from modal_proto import task_command_router_pb2 as router_pb2

# The provider's: a new Modal sandbox from an image, under the same daemon id.
Recreate = Callable[[Sandbox, str], Awaitable[None]]

SNAPSHOT_S = 55  # the SDK's snapshot_filesystem(timeout=55)
NO_EXPIRY = -1  # the SDK's ttl=None on the wire
IMAGE_ID = re.compile(r"^im-[0-9A-Za-z]{1,64}$")
MAX_FILE = 4 << 20
NO_EXPORT = "a snapshot is a Modal image, which Modal does not hand out as files"
NO_IMPORT = "Modal makes images from its own sources; an exported layer cannot become one"


class SnapshotMap:
    """snapshot id -> Modal image id, in a JSON file replaced whole on each change."""

    def __init__(self) -> None:
        self.path: Path | None = None
        self._images: dict[str, str] = {}

    def load(self, state_dir: Path) -> None:
        self.path = state_dir / "modal-snapshots.json"
        with contextlib.suppress(FileNotFoundError):
            if self.path.stat().st_size > MAX_FILE:
                raise ValueError(f"{self.path} is over {MAX_FILE} bytes")
            raw = json.loads(self.path.read_text())
            if not isinstance(raw, dict):
                raise ValueError(f"{self.path} is not a JSON object")
            self._images = {str(k): str(v) for k, v in raw.items() if IMAGE_ID.match(str(v))}

    def _save(self) -> None:
        if self.path is None:
            return
        save_json(self.path, self._images)

    def image(self, snapshot_id: str) -> str:
        if snapshot_id not in self._images:
            raise NotFound(
                f"modal: no image holds snapshot {snapshot_id!r}",
                reason="SNAPSHOT_NOT_FOUND",
                provider=NAME,
            )
        return self._images[snapshot_id]

    def put(self, snapshot_id: str, image_id: str) -> None:
        self._images[snapshot_id] = image_id
        self._save()

    def pop(self, snapshot_id: str) -> str:
        image = self._images.pop(snapshot_id, "")
        self._save()
        return image

    def ids(self) -> list[str]:
        return sorted(self._images)


class ModalSnapshots(caps.Snapshots):
    def __init__(self, recreate: Recreate, api: ModalAPI, router: Router) -> None:
        self._recreate = recreate
        self._api = api
        self._router = router
        self.map = SnapshotMap()

    async def snapshot_create(self, sandbox: Sandbox, snapshot_id: str) -> int:
        """Modal does not say how much the sandbox wrote: 0."""
        resp = await self._router.call(
            sandbox,
            "TaskSnapshotFilesystem",
            router_pb2.TaskSnapshotFilesystemRequest(
                task_id=sandbox.provider_data["task_id"],
                snapshot_id=str(uuid.uuid4()),  # the SDK's: one per request
                ttl_seconds=NO_EXPIRY,
            ),
            router_pb2.TaskSnapshotFilesystemResponse,
            "snapshot filesystem",
            timeout=SNAPSHOT_S,
        )
        if not IMAGE_ID.match(resp.image_id):
            raise bad_answer("snapshot filesystem: no image id")
        self.map.put(snapshot_id, resp.image_id)
        return 0

    async def snapshot_restore(self, sandbox: Sandbox, snapshot_id: str) -> None:
        await self._recreate(sandbox, self.map.image(snapshot_id))

    async def snapshot_delete(self, snapshot_id: str) -> None:
        image = self.map.image(snapshot_id)
        with contextlib.suppress(NotFound):  # gone already: nothing to free
            await self._api.call(
                "ImageDelete",
                api_pb2.ImageDeleteRequest(image_id=image),
                empty_pb2.Empty,
                "delete image",
            )
        self.map.pop(snapshot_id)

    def snapshot_ids(self) -> list[str]:
        return self.map.ids()

    async def snapshot_export(self, snapshot_id: str, layer: Path) -> None:
        raise Unsupported(NAME, "state export", NO_EXPORT)
