"""Tenants see and touch only their own: every request field that names a sandbox
or a named thing is checked against its owner, and lists and streams are filtered.

The rules are data, keyed by message type, so one walk covers every RPC, nested
messages and client streams included; tests/fast/test_tenancy_rules.py fails on
any string field of a request that is neither a reference nor listed as none.

Another tenant's thing answers exactly what a missing one does (NOT_FOUND with
the same reason and message), so ids and names leak nothing. What the admin made
(no owner row) is the admin's, except templates: those are shared."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from computesdkd.core.owners import SANDBOX, Owners
from computesdkd.domain.errors import (
    AlreadyExists,
    ComputeError,
    NotFound,
    PermissionDenied,
    already_exists,
    not_found,
    sandbox_not_found,
    template_not_found,
)
from computesdkd.edge.caller import Caller

POOL, GROUP, NETWORK, CHANNEL = "pool", "group", "network", "channel"
VOLUME, TEMPLATE, STATE = "volume", "template", "state"
# A channel member: a sandbox id when it looks like one, else a free name.
MEMBER = "member"
SANDBOX_ID_PREFIX = "sbx-"
NAMED = (POOL, GROUP, NETWORK, CHANNEL, VOLUME, TEMPLATE, STATE)

# Fields that reference a sandbox wherever they appear.
SANDBOX_FIELDS = {"sandbox_id": SANDBOX, "sandbox_ids": SANDBOX}

# Request message (less "computesdk.api.") -> field -> the kind it names.
REFS: dict[str, dict[str, str]] = {
    "sandbox.v1.CreateSandboxRequest": {"template": TEMPLATE, "restore_from": STATE},
    "sandbox.v1.VolumeMount": {"name": VOLUME},
    "sandbox.v1.CloneSandboxRequest": {"template": TEMPLATE},
    "sandbox.v1.MigrateSandboxRequest": {"template": TEMPLATE, "template_mapping": TEMPLATE},
    "sandbox.v1.RestartSandboxRequest": {"template": TEMPLATE},
    "pool.v1.PoolSpec": {"name": POOL, "template": TEMPLATE},
    "pool.v1.GetPoolRequest": {"name": POOL},
    "pool.v1.DeletePoolRequest": {"name": POOL},
    "pool.v1.AcquireSandboxRequest": {"pool": POOL},
    **{
        f"group.v1.{m}Request": {"name": GROUP}
        for m in (
            "CreateGroup",
            "GetGroup",
            "AddGroupMembers",
            "RemoveGroupMembers",
            "Broadcast",
            "DeleteGroup",
        )
    },
    "network.v1.CreateNetworkRequest": {"name": NETWORK},
    "network.v1.GetNetworkRequest": {"name": NETWORK},
    "network.v1.DeleteNetworkRequest": {"name": NETWORK},
    "network.v1.GetServiceUrlRequest": {"network": NETWORK},
    "messaging.v1.CreateChannelRequest": {"name": CHANNEL, "members": MEMBER},
    "messaging.v1.DeleteChannelRequest": {"name": CHANNEL},
    "messaging.v1.SendMessageRequest": {"channel": CHANNEL},
    "messaging.v1.SubscribeRequest": {"channel": CHANNEL},
    "messaging.v1.AckMessagesRequest": {"channel": CHANNEL},
    "snapshot.v1.DeleteStateRequest": {"state_id": STATE},
    "snapshot.v1.ExportStateRequest": {"state_id": STATE},
    "volume.v1.CreateVolumeRequest": {"name": VOLUME},
    "volume.v1.GetVolumeRequest": {"name": VOLUME},
    "volume.v1.DeleteVolumeRequest": {"name": VOLUME},
    # base_image names a template only as template:NAME (_base_ref says the rest).
    "template.v1.TemplateDefinition": {"name": TEMPLATE, "base_image": TEMPLATE},
    "template.v1.GetTemplateRequest": {"name": TEMPLATE},
    "template.v1.DeleteTemplateRequest": {"name": TEMPLATE},
}

# String fields of requests that name nothing a tenant owns (paths, commands,
# providers, labels, names scoped inside a checked sandbox, channel or network).
NOT_REFS = {
    "sandbox.v1.CreateSandboxRequest": {"provider", "metadata", "env", "request_id"}
    | {"fallback_providers"},
    "sandbox.v1.GpuSpec": {"type"},
    "sandbox.v1.VolumeMount": {"mount_path"},
    "sandbox.v1.ListSandboxesRequest": {"page_token", "metadata", "provider"},
    "sandbox.v1.CloneSandboxRequest": {"provider", "env"},
    "sandbox.v1.MigrateSandboxRequest": {"provider", "env_mapping"},
    "sandbox.v1.SetSandboxEnvRequest": {"env", "unset"},
    "sandbox.v1.RestartSandboxRequest": {"env"},
    "process.v1.Command": {"command", "args", "cwd", "env"},
    "process.v1.StartProcessRequest": {"tag"},
    # A process is looked up within the sandbox the same request names.
    **{
        f"process.v1.{m}Request": {"process_id"}
        for m in ("AttachProcess", "WriteStdin", "SignalProcess")
    },
    **{
        f"filesystem.v1.{m}": {"path"}
        for m in (
            "ReadFileRequest",
            "WriteFileHeader",
            "ListDirectoryRequest",
            "StatPathRequest",
            "MakeDirectoryRequest",
            "RemovePathRequest",
        )
    },
    "filesystem.v1.MovePathRequest": {"source", "destination"},
    "events.v1.SubscribeEventsRequest": {"types"},
    "monitoring.v1.MonitorRequest": {"metrics"},
    "monitoring.v1.AlertThreshold": {"type"},
    "monitoring.v1.ScalingRule": {"action"},
    "monitoring.v1.RegisterHealthCheckRequest": {"name", "command"},
    "monitoring.v1.UnregisterHealthCheckRequest": {"name"},
    "pool.v1.PoolSpec": {"provider", "env"},
    "pool.v1.AcquireSandboxRequest": {"metadata"},
    "network.v1.NetworkMember": {"hostname", "address"},
    "network.v1.GetServiceUrlRequest": {"member"},
    "messaging.v1.SendMessageRequest": {"sender", "recipient"},
    "messaging.v1.SubscribeRequest": {"member"},
    "messaging.v1.AckMessagesRequest": {"member"},
    # A snapshot is looked up within the sandbox the same request names.
    "snapshot.v1.CreateSnapshotRequest": {"name", "description"},
    "snapshot.v1.RestoreSnapshotRequest": {"snapshot_id"},
    "snapshot.v1.DeleteSnapshotRequest": {"snapshot_id"},
    "snapshot.v1.SaveStateRequest": {"name"},
    "snapshot.v1.ImportStateHeader": {"provider", "metadata"},
    "template.v1.BuildTemplateRequest": {"provider"},
    "template.v1.TemplateDefinition": {"packages", "env", "setup", "description"},
    "template.v1.GetTemplateRequest": {"provider"},
    "template.v1.ListTemplatesRequest": {"provider"},
    "template.v1.DeleteTemplateRequest": {"provider"},
}

# Response messages that are one thing, by the path to its key: a list drops the
# ones the caller may not see, and a stream drops the whole message.
IDENTITY: dict[str, tuple[tuple[str, ...], str]] = {
    "sandbox.v1.Sandbox": (("id",), SANDBOX),
    "pool.v1.Pool": (("spec", "name"), POOL),
    "group.v1.Group": (("name",), GROUP),
    "network.v1.Network": (("name",), NETWORK),
    "volume.v1.Volume": (("name",), VOLUME),
    "template.v1.Template": (("name",), TEMPLATE),
    "snapshot.v1.State": (("id",), STATE),
    "events.v1.Event": (("sandbox_id",), SANDBOX),
}

# Lists of names inside answers: the caller's own and the shared ones stay.
ANSWER_NAMES: dict[str, dict[str, str]] = {"provider.v1.Provider": {"templates": TEMPLATE}}

# Events of no sandbox and no tenant that every tenant sees.
DAEMON_WIDE_EVENTS = {"provider.circuit"}

# Things a call makes whose key only its answer carries.
MADE_BY_ANSWER = {"/computesdk.api.snapshot.v1.SnapshotService/SaveState": (("state", "id"), STATE)}

TEMPLATE_BASE = "template:"

# Where a template is made or removed rather than used: the admin's (shared)
# templates are not the tenant's to rebuild or delete.
TEMPLATE_WRITES = {
    ("template.v1.TemplateDefinition", "name"),
    ("template.v1.DeleteTemplateRequest", "name"),
}

# Messages that make the thing they name: a taken name answers ALREADY_EXISTS.
CREATES = {
    "volume.v1.CreateVolumeRequest",
    "group.v1.CreateGroupRequest",
    "network.v1.CreateNetworkRequest",
    "messaging.v1.CreateChannelRequest",
    "pool.v1.PoolSpec",
    "template.v1.TemplateDefinition",
}

_PREFIX = "computesdk.api."


def _short(msg: Message) -> str:
    return msg.DESCRIPTOR.full_name.removeprefix(_PREFIX)


def refs(msg: Message) -> Iterator[tuple[str, str, Message, str]]:
    """(kind, key, the message holding it, the field) for every reference in msg,
    nested ones too."""
    rules = REFS.get(_short(msg), {})
    for field, value in msg.ListFields():
        kind = rules.get(field.name) or SANDBOX_FIELDS.get(field.name)
        if field.type == field.TYPE_MESSAGE:
            if _is_map(field):
                if kind:  # a map whose values name things
                    for v in value.values():
                        yield kind, v, msg, field.name
                continue
            for item in value if field.is_repeated else (value,):
                yield from refs(item)
        elif kind and field.type == field.TYPE_STRING:
            for v in value if field.is_repeated else (value,):
                if field.name == "base_image":
                    v = v[len(TEMPLATE_BASE) :] if v.startswith(TEMPLATE_BASE) else ""
                if v:
                    yield kind, v, msg, field.name


def made(answer: Message) -> str:
    """The key of the thing an answer carries (for the audit line)."""
    for field, value in answer.ListFields():
        if field.type == field.TYPE_MESSAGE and not field.is_repeated:
            ident = IDENTITY.get(_short(value))
            if ident is not None:
                return _get(value, ident[0])
    return ""


def names_things(msg: Descriptor, seen: frozenset[str] = frozenset()) -> bool:
    """Whether a request of this type can name a pool, volume or other named
    thing (not only sandboxes): the admin's calls that cannot need no guard."""
    if msg.full_name in seen:
        return False
    rules = REFS.get(msg.full_name.removeprefix(_PREFIX), {})
    for field in msg.fields:
        if rules.get(field.name) in NAMED:
            return True
        sub = field.message_type
        if sub is None or sub.GetOptions().map_entry:
            continue
        if names_things(sub, seen | {msg.full_name}):
            return True
    return False


def _is_map(field: FieldDescriptor) -> bool:
    return field.message_type is not None and field.message_type.GetOptions().map_entry


def _get(msg: Message, path: tuple[str, ...]) -> str:
    value: Any = msg
    for name in path:
        value = getattr(value, name)
    return str(value)


class Tenancy:
    def __init__(
        self,
        owners: Owners,
        exists: Mapping[str, Callable[[str], bool]],
        default_provider: str,
        registries: frozenset[str] = frozenset(),
    ) -> None:
        self._owners = owners
        # The registries a tenant's template may come from (--tenant-registry).
        self._registries = registries
        # Whether a named thing exists now, whoever owns it.
        self._exists = exists
        self._default_provider = default_provider

    # ------------------------------------------------------------ requests

    def check(self, caller: Caller, msg: Message) -> tuple[list[tuple[str, str]], bool]:
        """Raises what a missing thing answers for any reference the caller may not
        touch. Returns the named things it may make (free names), to claim once
        the call succeeds, and whether msg named anything at all."""
        fresh: list[tuple[str, str]] = []
        named = False
        if not caller.admin and _short(msg) == "template.v1.BuildTemplateRequest":
            self._check_base(msg.definition.base_image)  # type: ignore[attr-defined]
        # Sandboxes first: any not the caller's, missing or another's, answers the
        # same, before a named thing can; so which of two is reported tells nothing.
        found = sorted(refs(msg), key=lambda r: r[0] != SANDBOX)
        for kind, key, holder, field in found:
            named = True
            if caller.admin:
                stale = kind in NAMED and self._owners.of(kind, key) is not None
                if stale and not self._exists[kind](key):
                    fresh.append((kind, key))  # a tenant's row of a thing gone: the
                continue  # admin's, if the admin makes it now (settle)
            if kind == MEMBER:
                # What looks like a sandbox id is one: else a missing id would be a
                # free name and another's a refusal, and the difference would tell.
                if not key.startswith(SANDBOX_ID_PREFIX) and not self._is_sandbox(key):
                    continue
                kind = SANDBOX
            owner = self._owners.of(kind, key)
            if owner == caller.tenant:
                continue
            if kind == SANDBOX:
                raise sandbox_not_found(key)
            exists = self._exists[kind](key)
            writes = (_short(holder), field) in TEMPLATE_WRITES
            if owner is None and kind == TEMPLATE and not writes:
                if not exists:
                    fresh.append((kind, key))
                continue  # the admin's templates are everyone's
            if exists:
                raise self._not_found(kind, key, holder, field)
            fresh.append((kind, key))  # free (or a stale row of a thing since gone)
        return fresh, named

    def settle(
        self,
        caller: Caller,
        method: str,
        requests: list[Message],
        fresh: list[tuple[str, str]],
        answer: Message | None,
    ) -> None:
        """After a call succeeded: the caller owns what it made (the admin: no row),
        and what it deleted is nobody's."""
        for kind, key in fresh:
            if self._exists[kind](key):
                self._owners.claim(kind, key, caller.tenant)
        made = MADE_BY_ANSWER.get(method)
        if made is not None and answer is not None:
            key = _get(answer, made[0])
            if key:
                self._owners.claim(made[1], key, caller.tenant)
        for msg in requests:
            for kind, key, _, _ in refs(msg):
                mine = kind in NAMED and self._owners.of(kind, key) == caller.tenant
                if mine and not self._exists[kind](key):
                    self._owners.release(kind, key)

    # ------------------------------------------------------------ answers

    def visible(self, caller: Caller, kind: str, key: str) -> bool:
        if caller.admin:
            return True
        owner = self._owners.of(kind, key)
        return owner == caller.tenant or (owner is None and kind == TEMPLATE)

    def filter(self, caller: Caller, msg: Message) -> Message | None:
        """msg with what the caller may not see left out of its lists; None when
        msg itself is such a thing (a stream then skips it)."""
        if caller.admin:
            return msg
        short = _short(msg)
        if short == "events.v1.Event" and not msg.sandbox_id:  # type: ignore[attr-defined]
            # Of no sandbox: its tenant's (stamped when emitted), else the daemon's
            # own, which only the daemon-wide kinds (a provider's circuit) show.
            stamped = msg.attributes.get("tenant", "")  # type: ignore[attr-defined]
            wide = not stamped and msg.type in DAEMON_WIDE_EVENTS  # type: ignore[attr-defined]
            return msg if stamped == caller.tenant or wide else None
        ident = IDENTITY.get(short)
        if ident is not None:
            key = _get(msg, ident[0])
            if key and not self.visible(caller, ident[1], key):
                return None
        names = ANSWER_NAMES.get(_short(msg), {})
        for field, value in msg.ListFields():
            kind = names.get(field.name)
            if kind is not None and field.is_repeated:
                kept_names = [v for v in value if self.visible(caller, kind, v)]
                if len(kept_names) != len(value):
                    del value[:]
                    value.extend(kept_names)
                continue
            if field.type != field.TYPE_MESSAGE or _is_map(field):
                continue
            if field.is_repeated:
                kept = [m for m in value if self.filter(caller, m) is not None]
                if len(kept) != len(value):
                    del value[:]
                    value.extend(kept)
            elif self.filter(caller, value) is None:
                return None
        return msg

    # ------------------------------------------------------------ helpers

    def _check_base(self, ref: str) -> None:
        """A tenant builds on a template, or on a registry the daemon allows: never on
        the daemon host's files (oci:, docker-archive:) or network."""
        if not ref or ref.startswith(TEMPLATE_BASE):
            return
        name = ref.removeprefix("docker://")
        first, _, rest = name.partition("/")
        host = first if rest and ("." in first or ":" in first or first == "localhost") else ""
        if ref.startswith(("oci:", "docker-archive:")) or (host or "docker.io") not in (
            self._registries
        ):
            raise PermissionDenied(
                f"base_image {ref[:200]!r}: a tenant builds on templates (template:NAME) and "
                "on the registries the daemon allows (computesdkd --tenant-registry)",
                reason="BASE_IMAGE_FORBIDDEN",
            )

    def _is_sandbox(self, key: str) -> bool:
        return self._owners.of(SANDBOX, key) is not None or self._exists[SANDBOX](key)

    def _not_found(self, kind: str, key: str, holder: Message, field: str) -> ComputeError:
        if _short(holder) in CREATES and field == "name":
            if kind == TEMPLATE:
                return AlreadyExists(f"template {key!r} exists", reason="ALREADY_EXISTS")
            return already_exists(kind, key)
        if _short(holder) == "sandbox.v1.VolumeMount":
            return NotFound(  # as features/volumes.py says it
                f"volume {key!r} not found (give size_mb to make an ephemeral one)",
                reason="VOLUME_NOT_FOUND",
                volume=key,
            )
        if kind == TEMPLATE:
            return template_not_found(
                key, getattr(holder, "provider", "") or self._default_provider
            )
        return not_found(kind, key)
