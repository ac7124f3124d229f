"""Tenants see and touch only their own: every request field that names a sandbox
or a named thing is checked against its owner, and lists and streams are filtered.

The rules are data (edge/references.py), keyed by message type, so one walk
covers every RPC, nested messages and client streams included.

Another tenant's thing answers exactly what a missing one does (NOT_FOUND with
the same reason and message), so ids and names leak nothing. What the admin made
(no owner row) is the admin's, except templates: those are shared."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

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
from computesdkd.edge.references import (
    ANSWER_NAMES,
    CREATES,
    DAEMON_WIDE_EVENTS,
    IDENTITY,
    MADE_BY_ANSWER,
    MEMBER,
    NAMED,
    SANDBOX_ID_PREFIX,
    TEMPLATE,
    TEMPLATE_BASE,
    TEMPLATE_WRITES,
    get_path,
    is_map,
    makes,
    refs,
    short_name,
)
from computesdkd.providers.common.templates import local_base


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
        # Names calls in flight are making: (kind, key) -> (tenant, calls).
        self._pending: dict[tuple[str, str], tuple[str, int]] = {}

    # ------------------------------------------------------------ requests

    def check(self, caller: Caller, msg: Message) -> tuple[list[tuple[str, str]], bool]:
        """Raises what a missing thing answers for any reference the caller may not
        touch, and, for a tenant, for one that names nothing: the answer is then the
        same whether a thing is missing or another's, and no use can race the
        thing's making. Returns the names the call makes, reserved until settle
        (another's call may not take them meanwhile), and whether msg named any."""
        fresh: list[tuple[str, str]] = []
        named = False
        if not caller.admin and short_name(msg) == "template.v1.BuildTemplateRequest":
            self._check_base(msg.definition)  # type: ignore[attr-defined]
        # Sandboxes first: any not the caller's, missing or another's, answers the
        # same, before a named thing can; so which of two is reported tells nothing.
        found = sorted(refs(msg), key=lambda r: r[0] != SANDBOX)
        try:
            for kind, key, holder, field in found:
                named = True
                if kind == MEMBER:
                    # What looks like a sandbox id is one: else a missing id would be
                    # a free name and another's a refusal, and the difference would tell.
                    if caller.admin or (
                        not key.startswith(SANDBOX_ID_PREFIX) and not self._is_sandbox(key)
                    ):
                        continue
                    kind = SANDBOX
                self._check_one(caller, kind, key, holder, field, fresh)
        except ComputeError:
            self.release(fresh)
            raise
        return fresh, named

    def _check_one(
        self,
        caller: Caller,
        kind: str,
        key: str,
        holder: Message,
        field: str,
        fresh: list[tuple[str, str]],
    ) -> None:
        owner = self._owners.of(kind, key)
        held = self._pending.get((kind, key))
        if held is not None and held[0] != caller.tenant and not caller.admin:
            # Being made by another call: not there yet for anyone else, whatever
            # a stale row says, and not the admin's to share while it is made.
            raise self._not_found(kind, key, holder, field)
        if caller.admin:
            if kind in NAMED and makes(holder, field) and not self._exists[kind](key):
                self._reserve(caller, kind, key, holder, field)
                fresh.append((kind, key))  # what the admin makes has no owner row
            return
        if owner == caller.tenant and (kind, key) not in self._pending:
            return
        if kind == SANDBOX:
            raise sandbox_not_found(key)
        exists = self._exists[kind](key)
        if exists and owner is None and kind == TEMPLATE:
            if (short_name(holder), field) in TEMPLATE_WRITES:
                raise self._not_found(kind, key, holder, field)
            return  # the admin's templates are everyone's to use
        if exists and owner == caller.tenant:
            return
        if not exists and makes(holder, field):
            self._reserve(caller, kind, key, holder, field)
            fresh.append((kind, key))  # free (or a stale row of a thing since gone)
            return
        raise self._not_found(kind, key, holder, field)

    def _reserve(self, caller: Caller, kind: str, key: str, holder: Message, field: str) -> None:
        held = self._pending.get((kind, key))
        if held is not None and held[0] != caller.tenant:
            raise self._not_found(kind, key, holder, field)  # being made by another
        self._pending[(kind, key)] = (caller.tenant, (held[1] if held else 0) + 1)

    def release(self, fresh: list[tuple[str, str]]) -> None:
        for item in fresh:
            held = self._pending.pop(item, None)
            if held is not None and held[1] > 1:
                self._pending[item] = (held[0], held[1] - 1)

    def settle(
        self,
        caller: Caller,
        method: str,
        requests: list[Message],
        fresh: list[tuple[str, str]],
        answer: Message | None,
        ok: bool,
    ) -> None:
        """When a call ends: what it made is the caller's (the admin's: no row), even
        if the call then failed; and, if it succeeded, what it deleted is nobody's."""
        for kind, key in fresh:
            if self._exists[kind](key):
                self._owners.claim(kind, key, caller.tenant)
        self.release(fresh)
        if not ok:
            return
        made = MADE_BY_ANSWER.get(method)
        if made is not None and answer is not None:
            key = get_path(answer, made[0])
            if key:
                self._owners.claim(made[1], key, caller.tenant)
        for msg in requests:
            for kind, key, _, _ in refs(msg):
                owner = self._owners.of(kind, key) if kind in NAMED else None
                mine = owner is not None and (caller.admin or owner == caller.tenant)
                if mine and not self._exists[kind](key):
                    self._owners.release(kind, key)  # deleted (the admin may delete any)

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
        short = short_name(msg)
        if short == "events.v1.Event" and not msg.sandbox_id:  # type: ignore[attr-defined]
            # Of no sandbox: its tenant's (stamped when emitted), else the daemon's
            # own, which only the daemon-wide kinds (a provider's circuit) show.
            stamped = msg.attributes.get("tenant", "")  # type: ignore[attr-defined]
            wide = not stamped and msg.type in DAEMON_WIDE_EVENTS  # type: ignore[attr-defined]
            return msg if stamped == caller.tenant or wide else None
        ident = IDENTITY.get(short)
        if ident is not None:
            key = get_path(msg, ident[0])
            if key and not self.visible(caller, ident[1], key):
                return None
        names = ANSWER_NAMES.get(short_name(msg), {})
        for field, value in msg.ListFields():
            kind = names.get(field.name)
            if kind is not None and field.is_repeated:
                kept_names = [v for v in value if self.visible(caller, kind, v)]
                if len(kept_names) != len(value):
                    del value[:]
                    value.extend(kept_names)
                continue
            if field.type != field.TYPE_MESSAGE or is_map(field):
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

    def _check_base(self, definition: Any) -> None:
        """A tenant builds on a template, or on a registry the daemon allows: never on
        the daemon host's files (oci:, docker-archive:) or network. A Hub name the
        Debian base stands in for (python:3.11-slim) builds on that base, with no
        pull, when the tenant may not reach the Hub."""
        ref: str = definition.base_image
        if not ref or ref.startswith(TEMPLATE_BASE):
            return
        name = ref.removeprefix("docker://")
        first, _, rest = name.partition("/")
        host = first if rest and ("." in first or ":" in first or first == "localhost") else ""
        if not ref.startswith(("oci:", "docker-archive:")) and (host or "docker.io") in (
            self._registries
        ):
            return
        kind = local_base(ref)
        if kind is not None:
            # What the name meant for `packages` stays, as the base's name changes.
            if definition.package_manager in ("", "auto"):
                definition.package_manager = kind
            definition.base_image = TEMPLATE_BASE + "base"
            return
        raise PermissionDenied(
            f"base_image {ref[:200]!r}: a tenant builds on templates (template:NAME) and "
            "on the registries the daemon allows (computesdkd --tenant-registry)",
            reason="BASE_IMAGE_FORBIDDEN",
        )

    def _is_sandbox(self, key: str) -> bool:
        return self._owners.of(SANDBOX, key) is not None or self._exists[SANDBOX](key)

    def _not_found(self, kind: str, key: str, holder: Message, field: str) -> ComputeError:
        if short_name(holder) in CREATES and field == "name":
            if kind == TEMPLATE:
                return AlreadyExists(f"template {key!r} exists", reason="ALREADY_EXISTS")
            return already_exists(kind, key)
        if short_name(holder) == "sandbox.v1.VolumeMount":
            return NotFound(  # as features/volumes.py says it
                f"volume {key!r} not found: mountExisting (must_exist) mounts only a volume "
                "that exists; create it first, or drop mountExisting to make it on first use",
                reason="VOLUME_NOT_FOUND",
                volume=key,
            )
        if kind == TEMPLATE:
            return template_not_found(
                key, getattr(holder, "provider", "") or self._default_provider
            )
        return not_found(kind, key)
