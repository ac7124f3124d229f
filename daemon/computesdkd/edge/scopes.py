"""What each method needs of a token: read, write or admin scope."""

from __future__ import annotations

from computesdkd.features.access import Scope

ADMIN_SERVICE = "computesdk.api.admin.v1.AdminService"
# Methods that change nothing: a read-scope token may call these.
READ_VERBS = ("Get", "List", "Subscribe", "Read", "Stat", "Check", "Monitor", "Attach", "Export")
# Named like reads, but they act: CheckHealth runs the registered commands in the
# sandbox, ExportState snapshots it.
ACTING_READS = {"CheckHealth", "ExportState"}


def reads(name: str) -> bool:
    """Whether a method (by its bare name) only reads."""
    return name.startswith(READ_VERBS) and name not in ACTING_READS


def needed_scope(method: str) -> Scope:
    """For a full method path, /package.Service/Method."""
    service, _, name = method.lstrip("/").rpartition("/")
    if service == ADMIN_SERVICE:
        return Scope.ADMIN
    return Scope.READ if reads(name) else Scope.WRITE
