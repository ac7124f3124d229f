"""An overlay upper layer to and from a portable tar layer.

The tar follows the OCI image layer conventions, so the layer means the same
thing anywhere: a deleted file is a `.wh.NAME` entry, an opaque directory holds
`.wh..wh..opq`, and owners are the sandbox's own ids (root is 0), not the
shifted host ids the upper layer stores. Hardlinks are tar hardlinks, and a
file with holes is a GNU sparse 1.0 entry (PAX), so a 1 GiB sparse file costs
its data, not 1 GiB.

Both directions go through safefs, fd by fd, and follow no symlink on the host:
layerout.py writes a layer, layerin.py extracts one. This module holds what
they share, and the tar reader with its memory capped.
"""

from __future__ import annotations

import tarfile
from typing import Any

WHITEOUT = ".wh."
OPAQUE = ".wh..wh..opq"
OPAQUE_XATTR = "trusted.overlay.opaque"
CHUNK = 1 << 20
# A pax extended header or a GNU long name is read whole into memory: capped.
MAX_META_BYTES = 1 << 20
# A sparse map is read into memory too; the writer never writes a longer one.
MAX_SPARSE_SEGMENTS = 1 << 16
_nti: Any = getattr(tarfile, "nti")  # noqa: B009 - not in the stubs
_META_TYPES = (
    tarfile.GNUTYPE_LONGNAME,
    tarfile.GNUTYPE_LONGLINK,
    tarfile.XHDTYPE,
    tarfile.XGLTYPE,
    tarfile.SOLARIS_XHDTYPE,
)


class BoundedTarInfo(tarfile.TarInfo):
    """tarfile's reader, with what it takes into memory from the archive capped:
    pax headers, GNU long names and sparse maps."""

    def _proc_member(self, tf: tarfile.TarFile) -> tarfile.TarInfo:
        if self.type in _META_TYPES and not 0 <= self.size <= MAX_META_BYTES:
            raise tarfile.ReadError(f"a {self.size}-byte extended header")
        return super()._proc_member(tf)  # type: ignore[misc,no-any-return]

    def _proc_sparse(self, tf: tarfile.TarFile) -> tarfile.TarInfo:
        structs, isextended, origsize = self._sparse_structs  # type: ignore[attr-defined]
        del self._sparse_structs  # type: ignore[attr-defined]
        fileobj: Any = tf.fileobj
        while isextended:
            if len(structs) > MAX_SPARSE_SEGMENTS:
                raise tarfile.ReadError("a sparse map of too many segments")
            buf = fileobj.read(tarfile.BLOCKSIZE)
            if len(buf) < tarfile.BLOCKSIZE:
                raise tarfile.ReadError("a truncated sparse map")
            for pos in range(0, 21 * 24, 24):
                try:
                    offset = _nti(buf[pos : pos + 12])
                    numbytes = _nti(buf[pos + 12 : pos + 24])
                except ValueError:
                    break
                if offset and numbytes:
                    structs.append((offset, numbytes))
            isextended = bool(buf[504])
        self.sparse = structs
        self.offset_data = fileobj.tell()
        tf.offset = self.offset_data + self._block(self.size)  # type: ignore[attr-defined]
        self.size = origsize
        return self

    def _proc_gnusparse_10(
        self, next: tarfile.TarInfo, pax_headers: dict[str, str], tf: tarfile.TarFile
    ) -> None:
        fileobj: Any = tf.fileobj
        buf = b""
        numbers: list[int] = []
        want = -1
        while want < 0 or len(numbers) < want:
            if b"\n" not in buf:
                if len(buf) > 40:
                    raise tarfile.ReadError("a bad sparse map")
                more = fileobj.read(tarfile.BLOCKSIZE)
                if not more:
                    raise tarfile.ReadError("a truncated sparse map")
                buf += more
                continue
            line, buf = buf.split(b"\n", 1)
            if not line.isdigit() or len(line) > 20:
                raise tarfile.ReadError("a bad sparse map")
            if want < 0:
                want = 2 * int(line)
                if want > 2 * MAX_SPARSE_SEGMENTS:
                    raise tarfile.ReadError("a sparse map of too many segments")
            else:
                numbers.append(int(line))
        next.offset_data = fileobj.tell()
        next.sparse = list(zip(numbers[::2], numbers[1::2], strict=True))  # type: ignore[assignment]
