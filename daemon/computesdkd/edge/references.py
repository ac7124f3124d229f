"""The references a request can hold, as data: which field of which message names
a sandbox or a named thing (REFS), which strings name nothing (NOT_REFS), how an
answer says which thing it is (IDENTITY), and the walk over a message that finds
them (refs). edge/tenancy.py checks them; tests/fast/test_tenancy_rules.py fails
on any request string left unclassified."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from computesdkd.core.owners import SANDBOX

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
    "sandbox.v1.VolumeMount": {"mount_path", "size"},
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
    "template.v1.TemplateDefinition": {
        "packages",
        "env",
        "setup",
        "description",
        "package_manager",
    },
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


def short_name(msg: Message) -> str:
    return msg.DESCRIPTOR.full_name.removeprefix(_PREFIX)


def refs(msg: Message) -> Iterator[tuple[str, str, Message, str]]:
    """(kind, key, the message holding it, the field) for every reference in msg,
    nested ones too."""
    rules = REFS.get(short_name(msg), {})
    for field, value in msg.ListFields():
        kind = rules.get(field.name) or SANDBOX_FIELDS.get(field.name)
        if field.type == field.TYPE_MESSAGE:
            if is_map(field):
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
            ident = IDENTITY.get(short_name(value))
            if ident is not None:
                return get_path(value, ident[0])
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


def makes(holder: Message, field: str) -> bool:
    """Whether a reference makes the thing it names when that is free: a create's
    name, or a volume mount unless it must find an existing volume (mountExisting)."""
    short = short_name(holder)
    if short == "sandbox.v1.VolumeMount":
        return field == "name" and not holder.must_exist  # type: ignore[attr-defined]
    return field == "name" and short in CREATES


def is_map(field: FieldDescriptor) -> bool:
    return field.message_type is not None and field.message_type.GetOptions().map_entry


def get_path(msg: Message, path: tuple[str, ...]) -> str:
    value: Any = msg
    for name in path:
        value = getattr(value, name)
    return str(value)
