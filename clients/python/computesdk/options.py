"""Create options in the spec's shapes: volumes (VolumeSpec), inline templates
(TemplateDefinition), resources given as a dict, and SandboxConfig, the record of
a create that sandbox.config returns. Dicts may use the spec's camelCase keys
(mountExisting, baseImage, memoryMB) as well as snake_case ones."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from computesdk_api.sandbox.v1 import sandbox_pb2

from .types import Resources


def _pick(d: Mapping[str, Any], *keys: str, default: Any = None) -> Any:
    for k in keys:
        if k in d:
            return d[k]
    return default


def _unknown(kind: str, d: Mapping[str, Any], known: set[str]) -> None:
    extra = sorted(set(d) - known)
    if extra:
        raise TypeError(f"unknown {kind} option(s) {extra}; known: {sorted(known)}")


@dataclass(frozen=True)
class VolumeSpec:
    """A volume to mount at create. size: "10GB" (10^9 bytes), "10GiB", "512MB"
    (the daemon parses it); an int is MB. persistent: a volume this create makes
    outlives the sandbox (default: removed with it). mount_existing: the volume
    must exist already (NotFoundError VOLUME_NOT_FOUND otherwise); without it a
    missing volume is made on first use."""

    name: str
    path: str
    size: str | int = ""
    persistent: bool = False
    mount_existing: bool = False
    read_only: bool = False

    _KEYS = {"name", "path", "mount_path", "mountPath", "size", "size_mb", "sizeMB",
             "persistent", "mount_existing", "mountExisting", "read_only", "readOnly"}  # fmt: skip

    @classmethod
    def of(cls, v: VolumeSpec | Mapping[str, Any]) -> VolumeSpec:
        if isinstance(v, VolumeSpec):
            return v
        _unknown("volume", v, cls._KEYS)
        return cls(
            name=v["name"],
            path=_pick(v, "path", "mount_path", "mountPath", default=""),
            size=_pick(v, "size", default="") or _pick(v, "size_mb", "sizeMB", default=""),
            persistent=bool(v.get("persistent", False)),
            mount_existing=bool(_pick(v, "mount_existing", "mountExisting", default=False)),
            read_only=bool(_pick(v, "read_only", "readOnly", default=False)),
        )

    def to_proto(self) -> sandbox_pb2.VolumeMount:
        m = sandbox_pb2.VolumeMount(
            name=self.name,
            mount_path=self.path,
            read_only=self.read_only,
            persistent=self.persistent,
            must_exist=self.mount_existing,
        )
        if isinstance(self.size, int):
            m.size_mb = self.size
        else:
            m.size = self.size  # passed through: the daemon owns the one parser
        return m


@dataclass(frozen=True)
class TemplateDefinition:
    """An inline template: create(template=TemplateDefinition(...)) builds it
    (client.templates.build; a repeat of the same definition is a cache hit),
    then creates from it by name. packages are pip packages on a Python base,
    npm on a Node one, apt otherwise."""

    name: str
    base_image: str = ""
    packages: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    setup: tuple[str, ...] = ()
    description: str = ""
    package_manager: str = ""  # "" by the base, or "apt", "pip", "npm"

    _KEYS = {"name", "base_image", "baseImage", "packages", "env", "setup", "description",
             "package_manager", "packageManager"}  # fmt: skip

    @classmethod
    def of(cls, t: TemplateDefinition | Mapping[str, Any]) -> TemplateDefinition:
        if isinstance(t, TemplateDefinition):
            return t
        _unknown("template", t, cls._KEYS)
        return cls(
            name=t["name"],
            base_image=_pick(t, "base_image", "baseImage", default=""),
            packages=tuple(t.get("packages", ())),
            env=dict(t.get("env") or {}),
            setup=tuple(t.get("setup", ())),
            description=t.get("description", ""),
            package_manager=_pick(t, "package_manager", "packageManager", default=""),
        )


def as_resources(r: Resources | Mapping[str, Any] | None) -> Resources:
    """Resources, or a dict of them: {"cpu_cores" or "cpuCores", "memory_mb" or
    "memoryMB", "disk_mb" or "diskMB", "pids_limit", "gpu": bool or {"enabled", "type"}}."""
    if r is None:
        return Resources()
    if isinstance(r, Resources):
        return r
    keys = {"cpu_cores", "cpuCores", "memory_mb", "memoryMB", "disk_mb", "diskMB",
            "pids_limit", "pidsLimit", "gpu", "gpu_type"}  # fmt: skip
    _unknown("resources", r, keys)
    gpu = r.get("gpu", False)
    enabled, gpu_type = (
        (bool(gpu.get("enabled", True)), str(gpu.get("type", "")))
        if isinstance(gpu, Mapping)
        else (bool(gpu), str(r.get("gpu_type", "")))
    )
    return Resources(
        cpu_cores=float(_pick(r, "cpu_cores", "cpuCores", default=0)),
        memory_mb=int(_pick(r, "memory_mb", "memoryMB", default=0)),
        disk_mb=int(_pick(r, "disk_mb", "diskMB", default=0)),
        pids_limit=int(_pick(r, "pids_limit", "pidsLimit", default=0)),
        gpu=enabled,
        gpu_type=gpu_type,
    )


@dataclass(frozen=True)
class SandboxConfig:
    """A create's options as given, normalised. sandbox.config returns it with
    resources filled from the sandbox's effective resources, so
    sandbox.config.resources.memory_mb is a number even when none was asked."""

    provider: str = ""
    template: str | TemplateDefinition = ""
    metadata: Mapping[str, str] = field(default_factory=dict)
    env: Mapping[str, str] = field(default_factory=dict)
    resources: Resources = field(default_factory=Resources)
    timeout_ms: int = 0
    keep_alive: bool = False
    volumes: tuple[VolumeSpec, ...] = ()
    restore_from: str = ""
    import_state: bytes | None = field(default=None, repr=False)
    ports: tuple[int, ...] = ()
    fallback_providers: tuple[str, ...] = ()
    use_pool: bool | None = None
    request_id: str = ""

    @classmethod
    def given(
        cls,
        provider: str = "",
        *,
        template: str | TemplateDefinition | Mapping[str, Any] = "",
        metadata: Mapping[str, str] | None = None,
        env: Mapping[str, str] | None = None,
        resources: Resources | Mapping[str, Any] | None = None,
        volumes: Sequence[VolumeSpec | Mapping[str, Any]] = (),
        ports: Sequence[int] = (),
        fallback_providers: Sequence[str] = (),
        request_id: str | None = None,
        **rest: Any,
    ) -> SandboxConfig:
        return cls(
            provider=provider,
            template=template if isinstance(template, str) else TemplateDefinition.of(template),
            metadata=dict(metadata or {}),
            env=dict(env or {}),
            resources=as_resources(resources),
            volumes=tuple(VolumeSpec.of(v) for v in volumes),
            ports=tuple(ports),
            fallback_providers=tuple(fallback_providers),
            request_id=request_id or "",
            **rest,
        )

    @property
    def template_name(self) -> str:
        return self.template if isinstance(self.template, str) else self.template.name

    def with_effective(self, effective: Resources) -> SandboxConfig:
        """These options with each resource the sandbox really has (non-zero) filled in."""
        filled = {
            f.name: getattr(effective, f.name) or getattr(self.resources, f.name)
            for f in dataclasses.fields(Resources)
        }
        return dataclasses.replace(self, resources=Resources(**filled))

    def create_request(self) -> sandbox_pb2.CreateSandboxRequest:
        policy = {
            None: 0, True: sandbox_pb2.POOL_POLICY_ALLOW, False: sandbox_pb2.POOL_POLICY_NEVER
        }  # fmt: skip
        return sandbox_pb2.CreateSandboxRequest(
            provider=self.provider,
            template=self.template_name,
            metadata=dict(self.metadata),
            timeout_ms=self.timeout_ms,
            keep_alive=self.keep_alive,
            resources=self.resources.to_proto(),
            env=dict(self.env),
            # Retries of this call are idempotent: the daemon dedupes on request_id.
            request_id=self.request_id or uuid.uuid4().hex,
            fallback_providers=list(self.fallback_providers),
            pool_policy=policy[self.use_pool],  # type: ignore[arg-type]
            restore_from=self.restore_from,
            volumes=[v.to_proto() for v in self.volumes],
            ports=list(self.ports),
        )

    @property
    def only_import(self) -> bool:
        """Whether import_state is all this create asks beyond provider and metadata."""
        plain = SandboxConfig(self.provider, metadata=self.metadata, import_state=self.import_state)
        return dataclasses.replace(self, request_id="", use_pool=None) == plain
