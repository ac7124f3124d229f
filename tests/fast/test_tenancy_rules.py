"""Every string a request can carry is either a reference the tenancy guard checks
or listed as naming nothing a tenant owns: a new field fails here until it is
classified (edge/references.py), so no reference slips past the guard."""

from __future__ import annotations

from google.protobuf import descriptor_pool
from google.protobuf.descriptor import Descriptor

from computesdkd.edge import references
from computesdkd.edge.scopes import READ_VERBS, needed_scope
from computesdkd.edge.server import SERVICE_NAMES
from computesdkd.features.access import Scope

_ADMIN = "computesdk.api.admin.v1.AdminService"


def _strings(msg: Descriptor, seen: set[str]) -> set[str]:
    if msg.full_name in seen:
        return set()
    seen.add(msg.full_name)
    out = set()
    short = msg.full_name.removeprefix("computesdk.api.")
    for f in msg.fields:
        is_map = f.message_type is not None and f.message_type.GetOptions().map_entry
        if f.type == f.TYPE_STRING or is_map:
            out.add(f"{short}.{f.name}")
        elif f.type == f.TYPE_MESSAGE and not f.message_type.full_name.startswith("google."):
            out |= _strings(f.message_type, seen)
    return out


def _request_strings() -> set[str]:
    pool = descriptor_pool.Default()
    seen: set[str] = set()
    out: set[str] = set()
    for name in SERVICE_NAMES:
        if name == _ADMIN:
            continue  # confined by its servicer, not by references
        for m in pool.FindServiceByName(name).methods:
            out |= _strings(m.input_type, seen)
    return out


def _classified(field: str) -> bool:
    msg, name = field.rsplit(".", 1)
    return (
        name in references.SANDBOX_FIELDS
        or name in references.REFS.get(msg, {})
        or name in references.NOT_REFS.get(msg, set())
    )


def test_every_request_string_is_classified() -> None:
    fields = _request_strings()
    assert len(fields) > 100  # the walk reached the nested messages
    missing = sorted(f for f in fields if not _classified(f))
    assert not missing, f"classify these in edge/references.py: {missing}"


def test_no_rule_names_a_field_that_does_not_exist() -> None:
    fields = _request_strings()
    listed = {
        f"{m}.{n}"
        for rules in (references.REFS, references.NOT_REFS)
        for m, ns in rules.items()
        for n in ns
    }
    assert not sorted(listed - fields)


# Every method a read-scope token may call, by name: a new method is write (or
# admin) until it is added here on purpose.
READS = {
    "EventService/SubscribeEvents",
    "FilesystemService/ListDirectory",
    "FilesystemService/ReadFile",
    "FilesystemService/StatPath",
    "GroupService/GetGroup",
    "GroupService/ListGroups",
    "MessagingService/Subscribe",
    "MonitoringService/GetResourceUsage",
    "MonitoringService/Monitor",
    "NetworkService/GetNetwork",
    "NetworkService/GetServiceUrl",
    "NetworkService/ListNetworks",
    "PoolService/GetPool",
    "PoolService/ListPools",
    "ProcessService/AttachProcess",
    "ProcessService/ListProcesses",
    "ProviderService/ListProviders",
    "SandboxService/GetSandbox",
    "SandboxService/GetSandboxStatus",
    "SandboxService/ListSandboxes",
    "SnapshotService/ListSnapshots",
    "SnapshotService/ListStates",
    "TemplateService/GetTemplate",
    "TemplateService/ListTemplates",
    "VolumeService/GetVolume",
    "VolumeService/ListVolumes",
}


def test_scopes_of_methods() -> None:
    pool = descriptor_pool.Default()
    reads = set()
    for name in SERVICE_NAMES:
        for m in pool.FindServiceByName(name).methods:
            scope = needed_scope(f"/{name}/{m.name}")
            if name == _ADMIN:
                assert scope == Scope.ADMIN
            elif scope == Scope.READ:
                assert m.name.startswith(READ_VERBS)
                reads.add(f"{name.rsplit('.', 1)[-1]}/{m.name}")
    assert reads == READS
    assert not {"MonitoringService/CheckHealth", "SnapshotService/ExportState"} & reads
