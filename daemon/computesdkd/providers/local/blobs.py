"""A content-addressed store of image blobs (blobs/sha256/<hex>): each blob is
checked against its digest on the way in, so a tampered or truncated download
never reaches a sandbox, and a layer two images share is fetched once."""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import IO, Any

from computesdkd.domain.errors import FailedPrecondition, InvalidArgument

MAX_MANIFEST_BYTES = 4 * 1024 * 1024
DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")


class BlobStore:
    """Blobs by digest. put() verifies before it publishes."""

    def __init__(self, root: Path) -> None:
        self.root = root / "sha256"
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, digest: str) -> Path:
        if not DIGEST.match(digest):
            raise InvalidArgument(f"bad digest {digest!r}", reason="IMAGE_INVALID")
        return self.root / digest.split(":", 1)[1]

    def has(self, digest: str) -> bool:
        return self.path(digest).is_file()

    def writer(self, digest: str = "") -> _BlobWriter:
        """Without a digest, the blob is named by what its bytes hash to (a
        docker-archive names layers by path, not digest)."""
        if digest:
            self.path(digest)  # refuses a malformed digest before any byte is written
        return _BlobWriter(self, digest)

    def put_file(self, source: IO[bytes], digest: str = "", limit: int = 0) -> str:
        """Copies source in; returns its digest. With a limit (the descriptor's
        size), a source that runs on past it is refused, not read to its end."""
        if digest and self.has(digest):
            return digest
        with self.writer(digest) as w:
            while chunk := source.read(1 << 20):
                w.write(chunk)
                if limit and w.size > limit:
                    raise FailedPrecondition(
                        f"blob {digest or '(unnamed)'} is larger than its {limit} bytes",
                        reason="IMAGE_DIGEST_MISMATCH",
                    )
        return w.got

    def read_json(self, digest: str) -> Any:
        """A manifest, index or config from the store: capped, and refused as
        IMAGE_INVALID when it is not JSON."""
        with self.path(digest).open("rb") as f:
            body = f.read(MAX_MANIFEST_BYTES + 1)
        if len(body) > MAX_MANIFEST_BYTES:
            raise FailedPrecondition(
                f"{digest} is larger than {MAX_MANIFEST_BYTES} bytes", reason="IMAGE_INVALID"
            )
        try:
            return json.loads(body)
        except (ValueError, RecursionError) as exc:
            raise FailedPrecondition(f"{digest} is not JSON", reason="IMAGE_INVALID") from exc


class _BlobWriter:
    def __init__(self, store: BlobStore, digest: str) -> None:
        self.store, self.digest = store, digest
        self.tmp = store.root / f".incoming.{os.getpid()}.{id(self)}"
        self.got = ""
        self.hash = hashlib.sha256()
        self.size = 0
        self.f = self.tmp.open("wb")

    def write(self, chunk: bytes) -> None:
        self.hash.update(chunk)
        self.size += len(chunk)
        self.f.write(chunk)

    def __enter__(self) -> _BlobWriter:
        return self

    def __exit__(self, exc_type: object, *_: object) -> None:
        self.f.close()
        try:
            if exc_type is not None:
                return
            self.got = "sha256:" + self.hash.hexdigest()
            if self.digest and self.got != self.digest:
                raise FailedPrecondition(
                    f"blob {self.digest} arrived with digest {self.got} ({self.size} bytes): "
                    "corrupt or truncated",
                    reason="IMAGE_DIGEST_MISMATCH",
                )
            os.rename(self.tmp, self.store.path(self.got))
        finally:
            self.tmp.unlink(missing_ok=True)
