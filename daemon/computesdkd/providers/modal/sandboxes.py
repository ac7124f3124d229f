"""Modal sandboxes, as the SDK makes and ends them.

A sandbox is a V2 one (SandboxCreateV2, the SDK's default); one with a GPU is a
V1 one (SandboxCreate), because V2 sandboxes have none, which is the SDK's rule
too. provider_data["api"] says which, so every later call picks its family.

Vendor limits are checked here, before any call: a timeout of at most 24
hours, no ephemeral disk request (Modal refuses it for sandboxes), names and
tags that Modal accepts.

Ports declared at create (spec.ports) are opened as encrypted ports, each with
a TLS tunnel of Modal's. Modal refuses open ports on a blocked network (the
SDK: "Cannot specify open ports when block_network is enabled"), so such a
sandbox gets an empty outbound allowlist instead, which the SDK names as the
way to keep the network closed to the outside: no egress, tunnels in.
"""

from __future__ import annotations

import asyncio
import re
import secrets
import time
from collections.abc import AsyncIterator

from computesdkd.domain.errors import InvalidArgument, Unavailable, Unsupported
from computesdkd.domain.model import Sandbox
from computesdkd.providers.modal.api import (
    HAVE_MODAL,
    NAME,
    V1_ID,
    ModalAPI,
    bad_answer,
    checked_token,
    is_v2,
)

if HAVE_MODAL:
    from modal_proto import api_pb2

    Status = api_pb2.GenericResult

MAX_TIMEOUT_S = 24 * 3600  # Modal: a sandbox lives at most 24 hours
SCHEDULING_S = 21 * 60  # how long the SDK waits for capacity
POLL_S = 0.5  # the SDK's task id poll interval
NAME_RULE = re.compile(r"^[A-Za-z0-9._-]{1,63}$")  # Modal: shorter than 64, these characters
MAX_LIST_PAGES = 100
TAG_DAEMON = "computesdk-daemon"
TAG_SANDBOX = "computesdk-sandbox"


def check_limits(sandbox: Sandbox) -> int:
    """The sandbox's timeout in seconds, once the spec fits Modal's rules."""
    r = sandbox.spec.resources
    if r.pids_limit:
        raise Unsupported(NAME, "pids limit")
    if r.disk_mb:
        raise Unsupported(NAME, "disk limit", "Modal refuses ephemeral disk requests for sandboxes")
    timeout_s = MAX_TIMEOUT_S if sandbox.spec.keep_alive else -(-sandbox.spec.timeout_ms // 1000)
    if timeout_s > MAX_TIMEOUT_S:
        raise InvalidArgument(
            f"modal: timeout {timeout_s}s is over Modal's limit: a sandbox lives at most 24 hours",
            reason="PROVIDER_LIMIT",
            provider=NAME,
        )
    if not NAME_RULE.match(sandbox_name(sandbox)):
        raise InvalidArgument(
            "modal: a sandbox name has only letters, digits, '.', '-' and '_' and is "
            f"shorter than 64 characters: {sandbox_name(sandbox)!r}",
            provider=NAME,
        )
    return max(1, timeout_s)


def sandbox_name(sandbox: Sandbox) -> str:
    return f"computesdk-{sandbox.id}"


def restored_name(sandbox: Sandbox) -> str:
    """A restore's new Modal sandbox, made while the old one (whose name it
    cannot take: names are unique in an app) still runs."""
    return f"{sandbox_name(sandbox)[:52]}.r{secrets.token_hex(4)}"


def network(sandbox: Sandbox) -> api_pb2.NetworkAccess:
    """No egress, as on local and docker; said with network_access (the SDK's
    field; block_network is deprecated), not left to Modal's open default."""
    kind = api_pb2.NetworkAccess.NetworkAccessType
    if sandbox.spec.ports:  # open ports: an empty allowlist, not BLOCKED (Modal's rule)
        return api_pb2.NetworkAccess(network_access_type=kind.ALLOWLIST)
    return api_pb2.NetworkAccess(network_access_type=kind.BLOCKED)


def definition(sandbox: Sandbox, image_id: str, timeout_s: int, name: str = "") -> api_pb2.Sandbox:
    r = sandbox.spec.resources
    memory = r.memory_mb or 1024
    milli_cpu = int((r.cpu_cores or 1.0) * 1000)
    # Request and limit alike: a hard limit, as the SDK sends memory=(req, limit).
    res = api_pb2.Resources(
        memory_mb=memory, memory_mb_max=memory, milli_cpu=milli_cpu, milli_cpu_max=milli_cpu
    )
    if r.gpu_enabled:
        res.gpu_config.gpu_type = r.gpu_type or "any"
        res.gpu_config.count = r.gpu_count or 1
    return api_pb2.Sandbox(
        entrypoint_args=["sleep", "infinity"],
        image_id=image_id,
        resources=res,
        timeout_secs=timeout_s,
        workdir="/",
        network_access=network(sandbox),
        # Encrypted ports, as the SDK's encrypted_ports: a TLS tunnel each.
        open_ports=api_pb2.PortSpecs(
            ports=[api_pb2.PortSpec(port=p, unencrypted=False) for p in sandbox.spec.ports]
        ),
        name=name or sandbox_name(sandbox),
    )


def tags(sandbox: Sandbox, daemon: str) -> list[api_pb2.SandboxTag]:
    """What a later start lists its own sandboxes by (reconcile)."""
    return [
        api_pb2.SandboxTag(tag_name=TAG_DAEMON, tag_value=daemon),
        api_pb2.SandboxTag(tag_name=TAG_SANDBOX, tag_value=sandbox.id),
    ]


async def create(
    api: ModalAPI, sandbox: Sandbox, app_id: str, d: api_pb2.Sandbox, daemon: str
) -> list[api_pb2.TunnelData]:
    """Makes the sandbox; returns the tunnels Modal gave with it (V2 only)."""
    if d.resources.gpu_config.count:
        resp = await api.call(
            "SandboxCreate",
            api_pb2.SandboxCreateRequest(app_id=app_id, definition=d, tags=tags(sandbox, daemon)),
            api_pb2.SandboxCreateResponse,
            "create sandbox",
        )
        sandbox.provider_data = {"api": "v1"}
    else:
        resp = await api.call(
            "SandboxCreateV2",
            api_pb2.SandboxCreateV2Request(app_id=app_id, definition=d, tags=tags(sandbox, daemon)),
            api_pb2.SandboxCreateV2Response,
            "create sandbox",
            v2=True,
        )
        sandbox.provider_data = {"api": "v2"}
        if resp.sandbox_token:
            sandbox.provider_data["sandbox_token"] = checked_token(resp.sandbox_token, "create")
        if resp.task_id:
            sandbox.provider_data["task_id"] = resp.task_id
    if not resp.sandbox_id or len(resp.sandbox_id) > 128:
        raise bad_answer("create sandbox: no sandbox id")
    sandbox.provider_sandbox_id = resp.sandbox_id
    return list(getattr(resp, "tunnels", ()))


def v2(sandbox: Sandbox) -> bool:
    return is_v2(sandbox)


def token(sandbox: Sandbox) -> str:
    return sandbox.provider_data.get("sandbox_token", "")


def _method(sandbox: Sandbox, name: str) -> str:
    return name + "V2" if v2(sandbox) else name


async def task_id(api: ModalAPI, sandbox: Sandbox) -> str:
    """Polls SandboxGetTaskId until Modal schedules the sandbox, for as long as the
    SDK waits (21 minutes), through transient errors as the SDK does."""
    deadline = time.monotonic() + SCHEDULING_S
    req = api_pb2.SandboxGetTaskIdRequest(sandbox_id=sandbox.provider_sandbox_id)
    while not sandbox.provider_data.get("task_id"):
        try:
            resp = await api.call(
                _method(sandbox, "SandboxGetTaskId"),
                req,
                api_pb2.SandboxGetTaskIdResponse,
                "task id",
                v2=v2(sandbox),
                sandbox_token=token(sandbox),
            )
        except Unavailable:
            if time.monotonic() >= deadline:
                raise
        else:
            if resp.task_id:
                if len(resp.task_id) > 128:
                    raise bad_answer("task id: over 128 bytes")
                sandbox.provider_data["task_id"] = resp.task_id
                break
            if resp.HasField("task_result"):
                raise Unavailable(
                    f"modal: the sandbox ended at start: {resp.task_result.exception[:500]}",
                    reason="PROVIDER_ERROR",
                    provider=NAME,
                )
        if time.monotonic() >= deadline:
            raise Unavailable(
                "modal: the sandbox was not scheduled within 21 minutes",
                reason="PROVIDER_UNAVAILABLE",
                provider=NAME,
            )
        await asyncio.sleep(POLL_S)
    return sandbox.provider_data["task_id"]


def is_v1_id(modal_id: str) -> bool:
    """The SDK's rule: "sb-" and 22 letters or digits is V1, anything else V2."""
    return bool(V1_ID.match(modal_id))


async def terminate(api: ModalAPI, modal_id: str, is_v2: bool, sandbox_token: str = "") -> None:
    await api.call(
        "SandboxTerminateV2" if is_v2 else "SandboxTerminate",
        api_pb2.SandboxTerminateRequest(sandbox_id=modal_id),
        api_pb2.SandboxTerminateResponse,
        "terminate",
        v2=is_v2,
        sandbox_token=sandbox_token,
    )


async def wait(api: ModalAPI, sandbox: Sandbox) -> api_pb2.GenericResult:
    """The sandbox's result now (timeout 0): GENERIC_STATUS_UNSPECIFIED while it runs."""
    resp = await api.call(
        _method(sandbox, "SandboxWait"),
        api_pb2.SandboxWaitRequest(sandbox_id=sandbox.provider_sandbox_id, timeout=0),
        api_pb2.SandboxWaitResponse,
        "wait",
        timeout=10,
        v2=v2(sandbox),
        sandbox_token=token(sandbox),
    )
    result: api_pb2.GenericResult = resp.result
    return result


async def owned(api: ModalAPI, app_id: str, daemon: str) -> AsyncIterator[tuple[str, str]]:
    """(Modal sandbox id, computesdk id) of each running sandbox this daemon made,
    V1 and V2 alike (SandboxListV2), a page at a time as the SDK reads them."""
    before = 0.0
    for _ in range(MAX_LIST_PAGES):
        resp = await api.call(
            "SandboxListV2",
            api_pb2.SandboxListRequest(
                app_id=app_id,
                before_timestamp=before,
                include_finished=False,
                tags=[api_pb2.SandboxTag(tag_name=TAG_DAEMON, tag_value=daemon)],
            ),
            api_pb2.SandboxListResponse,
            "list sandboxes",
            v2=True,
        )
        if not resp.sandboxes:
            return
        for info in resp.sandboxes:
            mine = {t.tag_name: t.tag_value for t in info.tags}
            if mine.get(TAG_DAEMON) == daemon and mine.get(TAG_SANDBOX):
                yield info.id, mine[TAG_SANDBOX]
        if resp.sandboxes[-1].created_at >= before > 0:
            return  # a page that does not move back in time: stop, do not loop
        before = resp.sandboxes[-1].created_at
