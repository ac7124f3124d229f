"""Files and usage figures through commands run inside the sandbox.

For providers that can exec but have no file or metrics API of their own (the
docker Engine API's archive calls need the size before the bytes, and its
stats lack disk), the daemon still offers the same file calls and usage
figures: it runs coreutils/findutils inside the sandbox. Paths arrive
normalised, and resolution happens inside the sandbox, so nothing can escape.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING

from computesdkd.domain.errors import (
    AlreadyExists,
    ComputeError,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
)
from computesdkd.domain.model import Command, ExitStatus, FileInfo, FileKind, Output, Sandbox, Usage
from computesdkd.providers.capabilities import Metering
from computesdkd.providers.common.file_api import FileAPIFiles

if TYPE_CHECKING:
    from computesdkd.providers.base import ProcessRun

    RunFn = Callable[[Command], ProcessRun]

_KINDS = {"f": FileKind.FILE, "d": FileKind.DIRECTORY, "l": FileKind.SYMLINK}
# find -printf: type, size, mode (octal), mtime, link target, name.
_FIND_FORMAT = r"%y\t%s\t%m\t%T@\t%l\t%f\n"

# One sample of cgroup (v2 or v1), pids and disk figures, from inside the sandbox.
_USAGE_SCRIPT = r"""
cg=/sys/fs/cgroup
if [ -f $cg/memory.current ]; then
  mem=$(cat $cg/memory.current); lim=$(cat $cg/memory.max)
  cpu=$(awk '/^usage_usec/ {print $2 * 1000}' $cg/cpu.stat)
else
  mem=$(cat $cg/memory/memory.usage_in_bytes 2>/dev/null || echo 0)
  lim=$(cat $cg/memory/memory.limit_in_bytes 2>/dev/null || echo 0)
  cpu=$(cat $cg/cpuacct/cpuacct.usage 2>/dev/null || echo 0)
fi
procs=$(ls -d /proc/[0-9]* | wc -l)
disk=$(df -B1 --output=used,size / | tail -n 1)
echo "$mem $lim $cpu $procs $disk"
"""


def _error(stderr: bytes, path: str) -> ComputeError:
    text = stderr.decode(errors="replace")
    table: list[tuple[str, type[ComputeError], str]] = [
        ("No such file or directory", NotFound, "FILE_NOT_FOUND"),
        ("Not a directory", FailedPrecondition, "NOT_A_DIRECTORY"),
        ("Is a directory", FailedPrecondition, "IS_A_DIRECTORY"),
        ("Directory not empty", FailedPrecondition, "DIRECTORY_NOT_EMPTY"),
        ("File exists", AlreadyExists, "FILE_EXISTS"),
        ("No space left", ResourceExhausted, "DISK_FULL"),
        ("Permission denied", FailedPrecondition, "PERMISSION_DENIED"),
        ("Too many levels of symbolic links", InvalidArgument, "PATH_OUTSIDE_SANDBOX"),
    ]
    for needle, cls, reason in table:
        if needle in text:
            return cls(f"{path}: {needle.lower()}", reason=reason, path=path)
    return Internal(f"{path}: {text.strip() or 'file operation failed'}")


def _parse_find(line: str, parent: str | None) -> FileInfo:
    kind, size, mode, mtime, link, name = line.split("\t", 5)
    path = name if parent is None else (parent.rstrip("/") + "/" + name)
    base = path.rsplit("/", 1)[-1] or "/"
    return FileInfo(
        base, path, _KINDS.get(kind, FileKind.OTHER), int(size), int(mode, 8), float(mtime), link
    )


class ExecFS:
    def __init__(self, run: RunFn) -> None:
        self._run = run

    async def _stream(
        self,
        args: list[str],
        stdin: AsyncIterator[bytes] | None = None,
    ) -> AsyncIterator[Output | ExitStatus]:
        run = self._run(Command(args=args, stdin=stdin is not None))
        try:
            events = aiter(run.events())
            await anext(events)  # Started
            if stdin is not None:
                async for chunk in stdin:
                    await run.send_stdin(chunk)
                await run.close_stdin()
            async for ev in events:
                if isinstance(ev, Output | ExitStatus):
                    yield ev
        finally:
            await run.aclose()

    async def _call(self, path: str, script: str, *args: str) -> bytes:
        out, err = bytearray(), bytearray()
        async for ev in self._stream(["/bin/sh", "-c", script, "sh", *args]):
            if isinstance(ev, Output):
                (out if ev.stream == "stdout" else err).extend(ev.data)
            elif ev.exit_code != 0:
                raise _error(bytes(err), path)
        return bytes(out)

    async def read(self, path: str, offset: int, length: int) -> AsyncIterator[bytes]:
        script = '[ -d "$1" ] && { echo "$1: Is a directory" >&2; exit 1; }; '
        script += 'tail -c +"$2" -- "$1" | head -c "$3"' if length else 'tail -c +"$2" -- "$1"'
        err = bytearray()
        async for ev in self._stream(
            ["/bin/sh", "-c", script, "sh", path, str(offset + 1), str(length)]
        ):
            if isinstance(ev, Output):
                if ev.stream == "stdout":
                    yield ev.data
                else:
                    err.extend(ev.data)
            elif ev.exit_code != 0:
                raise _error(bytes(err), path)

    async def write(
        self, path: str, chunks: AsyncIterator[bytes], mode: int, parents: bool, append: bool
    ) -> tuple[FileInfo, int]:
        written = 0

        async def counted() -> AsyncIterator[bytes]:
            nonlocal written
            async for c in chunks:
                written += len(c)
                yield c

        script = (
            '[ "$3" = 1 ] && mkdir -p -- "$(dirname -- "$1")"; '
            'if [ "$4" = 1 ]; then cat >> "$1"; else cat > "$1"; fi && chmod "$2" -- "$1"'
        )
        err = bytearray()
        args = [
            "/bin/sh",
            "-c",
            script,
            "sh",
            path,
            oct(mode or 0o644)[2:],
            "1" if parents else "0",
            "1" if append else "0",
        ]
        async for ev in self._stream(args, counted()):
            if isinstance(ev, Output) and ev.stream == "stderr":
                err.extend(ev.data)
            elif isinstance(ev, ExitStatus) and ev.exit_code != 0:
                raise _error(bytes(err), path)
        return await self.stat(path), written

    async def stat(self, path: str) -> FileInfo:
        out = await self._call(path, f'find "$1" -maxdepth 0 -printf "{_FIND_FORMAT}"', path)
        info = _parse_find(out.decode().rstrip("\n"), None)
        return FileInfo(
            info.name if path != "/" else "/",
            path,
            info.kind,
            info.size,
            info.mode,
            info.mtime,
            info.link_target,
        )

    async def list_dir(self, path: str) -> list[FileInfo]:
        script = f'cd -- "$1" && find . -mindepth 1 -maxdepth 1 -printf "{_FIND_FORMAT}"'
        out = await self._call(path, script, path)
        entries = [_parse_find(line, path) for line in out.decode().splitlines() if line]
        return sorted(entries, key=lambda f: f.name)

    async def mkdir(self, path: str, parents: bool) -> FileInfo:
        await self._call(path, 'mkdir $2 -- "$1"', path, "-p" if parents else "")
        return await self.stat(path)

    async def remove(self, path: str, recursive: bool) -> None:
        if path == "/":
            raise InvalidArgument(
                "the sandbox root itself cannot be removed", reason="INVALID_PATH"
            )
        script = (
            'if [ "$2" = 1 ]; then [ -e "$1" ] || [ -L "$1" ] || { '
            'echo "No such file or directory" >&2; exit 1; }; rm -r -- "$1"; '
            'elif [ -d "$1" ] && [ ! -L "$1" ]; then rmdir -- "$1"; else rm -- "$1"; fi'
        )
        await self._call(path, script, path, "1" if recursive else "0")

    async def move(self, source: str, destination: str) -> FileInfo:
        await self._call(source, 'mv -T -- "$1" "$2"', source, destination)
        return await self.stat(destination)

    async def usage(self) -> Usage:
        out = (await self._call("/", _USAGE_SCRIPT)).decode().split()
        mem, lim, cpu, procs, disk_used, disk_size = (_int(v) for v in out[:6])
        return Usage(
            memory_used_bytes=mem,
            memory_limit_bytes=lim,
            process_count=procs,
            cpu_time_ns=cpu,
            disk_used_bytes=disk_used,
            disk_limit_bytes=disk_size,
        )


def _int(v: str) -> int:
    try:
        return int(float(v))
    except ValueError:
        return 0  # "max": no limit


class _RunsCommands:
    """For the mixins below: the Provider they are mixed into runs the commands."""

    if TYPE_CHECKING:

        def run(
            self, sandbox: Sandbox, command: Command, *, tag: str = "", kill_on_close: bool = True
        ) -> ProcessRun: ...


class FilesByExec(_RunsCommands, FileAPIFiles):
    """The file calls, through commands in the sandbox, for back ends with no file
    API of their own."""

    def _fs(self, sandbox: Sandbox) -> ExecFS:
        return ExecFS(lambda cmd: self.run(sandbox, cmd))


class UsageByExec(_RunsCommands, Metering):
    """Usage figures sampled by a command in the sandbox (cgroup files, df)."""

    async def usage(self, sandbox: Sandbox) -> Usage:
        return await ExecFS(lambda cmd: self.run(sandbox, cmd)).usage()
