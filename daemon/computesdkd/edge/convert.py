"""Conversions between proto messages and domain types."""

from __future__ import annotations

from google.protobuf.timestamp_pb2 import Timestamp

from computesdk_api.events.v1 import events_pb2
from computesdk_api.filesystem.v1 import filesystem_pb2 as fs_pb
from computesdk_api.process.v1 import process_pb2 as proc_pb
from computesdk_api.sandbox.v1 import sandbox_pb2 as sb_pb
from computesdkd.domain.errors import InvalidArgument
from computesdkd.domain.model import (
    Command,
    Event,
    ExitStatus,
    FileInfo,
    ProcessInfo,
    Resources,
    Sandbox,
    SandboxSpec,
    Usage,
    VolumeMount,
)


def ts(seconds: float) -> Timestamp:
    t = Timestamp()
    t.FromNanoseconds(int(seconds * 1e9))
    return t


def resources_from(r: sb_pb.Resources) -> Resources:
    if r.cpu_cores < 0:
        raise InvalidArgument("cpu_cores must not be negative", reason="INVALID_RESOURCES")
    return Resources(
        cpu_cores=r.cpu_cores,
        memory_mb=r.memory_mb,
        disk_mb=r.disk_mb,
        pids_limit=r.pids_limit,
        gpu_enabled=r.gpu.enabled,
        gpu_type=r.gpu.type,
        gpu_count=r.gpu.count,
    )


def resources_to(r: Resources) -> sb_pb.Resources:
    return sb_pb.Resources(
        cpu_cores=r.cpu_cores,
        memory_mb=r.memory_mb,
        disk_mb=r.disk_mb,
        pids_limit=r.pids_limit,
        gpu=sb_pb.GpuSpec(enabled=r.gpu_enabled, type=r.gpu_type, count=r.gpu_count),
    )


def spec_from(req: sb_pb.CreateSandboxRequest, tenant: str) -> SandboxSpec:
    """The spec a request asks for, for this tenant ("": the admin)."""
    return SandboxSpec(
        tenant=tenant,
        provider=req.provider,
        template=req.template,
        metadata=dict(req.metadata),
        timeout_ms=req.timeout_ms,
        keep_alive=req.keep_alive,
        resources=resources_from(req.resources),
        env=dict(req.env),
        request_id=req.request_id,
        fallback_providers=tuple(req.fallback_providers),
        pool_policy=int(req.pool_policy),
        restore_from=req.restore_from,
        volumes=tuple(
            VolumeMount(
                v.name, v.mount_path, v.read_only, v.size_mb, v.size, v.persistent, v.must_exist
            )
            for v in req.volumes
        ),
        ports=tuple(req.ports),
    )


def sandbox_to(sb: Sandbox) -> sb_pb.Sandbox:
    return sb_pb.Sandbox(
        id=sb.id,
        provider=sb.spec.provider,
        template=sb.spec.template,
        state=int(sb.state),  # type: ignore[arg-type]
        metadata=sb.spec.metadata,
        create_time=ts(sb.created_at),
        expire_time=ts(sb.expires_at),
        timeout_ms=sb.spec.timeout_ms,
        keep_alive=sb.spec.keep_alive,
        resources=resources_to(sb.resources),
        provider_sandbox_id=sb.provider_sandbox_id,
        error_message=sb.error_message,
        requested_resources=resources_to(sb.requested) if sb.requested != Resources() else None,
    )


def usage_to(u: Usage) -> sb_pb.ResourceUsage:
    return sb_pb.ResourceUsage(
        memory_used_bytes=u.memory_used_bytes,
        memory_limit_bytes=u.memory_limit_bytes,
        process_count=u.process_count,
        cpu_time_ns=u.cpu_time_ns,
        disk_used_bytes=u.disk_used_bytes,
        disk_limit_bytes=u.disk_limit_bytes,
    )


def command_from(c: proc_pb.Command) -> Command:
    if c.args:
        args = list(c.args)
    elif c.command.strip():
        args = ["/bin/sh", "-c", c.command]
    else:
        raise InvalidArgument("command is empty", reason="EMPTY_COMMAND")
    if any("\x00" in a for a in args):
        raise InvalidArgument("command contains a NUL byte", reason="INVALID_COMMAND")
    return Command(args=args, cwd=c.cwd, env=dict(c.env), timeout_ms=c.timeout_ms, stdin=c.stdin)


def exited_to(e: ExitStatus) -> proc_pb.Exited:
    return proc_pb.Exited(
        exit_code=e.exit_code,
        signal=e.signal,
        duration_ms=e.duration_ms,
        timed_out=e.timed_out,
        oom_killed=e.oom_killed,
    )


def process_to(p: ProcessInfo) -> proc_pb.Process:
    out = proc_pb.Process(
        process_id=p.process_id,
        pid=p.pid,
        args=p.args,
        tag=p.tag,
        running=p.running,
        start_time=ts(p.start_unix_ms / 1000),
        stdout_bytes=p.stdout_bytes,
        stderr_bytes=p.stderr_bytes,
    )
    if p.exit is not None:
        out.exited.CopyFrom(exited_to(p.exit))
    return out


def file_to(f: FileInfo) -> fs_pb.FileInfo:
    return fs_pb.FileInfo(
        name=f.name,
        path=f.path,
        type=int(f.kind),  # type: ignore[arg-type]
        size=f.size,
        mode=f.mode,
        modify_time=ts(f.mtime),
        link_target=f.link_target,
    )


def event_to(e: Event) -> events_pb2.Event:
    return events_pb2.Event(
        sequence=e.sequence,
        time=ts(e.time),
        sandbox_id=e.sandbox_id,
        type=e.type,
        message=e.message,
        attributes=e.attributes,
    )
