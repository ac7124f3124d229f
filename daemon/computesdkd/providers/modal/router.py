"""A sandbox's task command router, as Modal's SDK reaches it: an address and a
short-lived JWT from the control plane (SandboxGetCommandRouterAccess for a V2
sandbox, TaskGetCommandRouterAccess for a V1 one), kept in memory only.

The JWT is fetched again before its exp is within REFRESH_S, and once more
when the router answers UNAUTHENTICATED (the SDK does both), so a command that
outlives its token goes on.

A gRPC channel per router address, shared by the sandboxes on it: closed when
the last sandbox that named it is forgotten (destroy, restore) and at close; a
channel no sandbox names any more is closed when the next one opens, and at
most MAX_CHANNELS are open, the least recently used closed beyond that.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc

from computesdkd.domain.model import Sandbox
from computesdkd.providers.modal.api import (
    HAVE_MODAL,
    ROUTER,
    ModalAPI,
    checked_token,
    codec,
    grpc_error,
    is_v2,
    jwt_exp,
    open_channel,
)

if HAVE_MODAL:
    from modal_proto import api_pb2

REFRESH_S = 30.0
MAX_CHANNELS = 64


@dataclass
class Access:
    url: str
    jwt: str
    exp: float


class Router:
    def __init__(self, api: ModalAPI) -> None:
        self._api = api
        self._access: dict[str, Access] = {}  # by sandbox id
        self._channels: OrderedDict[str, grpc.aio.Channel] = OrderedDict()  # by address

    async def forget(self, sandbox: Sandbox) -> None:
        """The sandbox's access goes, and its router's channel if no other sandbox uses it."""
        gone = self._access.pop(sandbox.id, None)
        if gone is not None and gone.url not in self._named():
            await self._close(gone.url)

    async def close(self) -> None:
        self._access.clear()
        for url in list(self._channels):
            await self._close(url)

    def open_channels(self) -> int:
        return len(self._channels)

    def _named(self) -> set[str]:
        return {a.url for a in self._access.values()}

    async def _close(self, url: str) -> None:
        ch = self._channels.pop(url, None)
        if ch is not None:
            await ch.close(None)

    async def _channel(self, url: str) -> grpc.aio.Channel:
        ch = self._channels.get(url)
        if ch is not None:
            self._channels.move_to_end(url)
            return ch
        named = self._named()
        for old in [u for u in self._channels if u not in named]:
            await self._close(old)
        while len(self._channels) >= MAX_CHANNELS:
            await self._close(next(iter(self._channels)))
        ch = self._channels[url] = open_channel(url)
        return ch

    async def _fetch(self, sandbox: Sandbox) -> Access:
        data = sandbox.provider_data
        if not is_v2(sandbox):
            resp = await self._api.call(
                "TaskGetCommandRouterAccess",
                api_pb2.TaskGetCommandRouterAccessRequest(task_id=data["task_id"]),
                api_pb2.TaskGetCommandRouterAccessResponse,
                "router access",
            )
        else:
            resp = await self._api.call(
                "SandboxGetCommandRouterAccess",
                api_pb2.SandboxGetCommandRouterAccessRequest(
                    sandbox_id=sandbox.provider_sandbox_id
                ),
                api_pb2.SandboxGetCommandRouterAccessResponse,
                "router access",
                v2=True,
                sandbox_token=data.get("sandbox_token", ""),
            )
        jwt = checked_token(resp.jwt, "router access")
        access = Access(self._api.router_url(resp.url), jwt, jwt_exp(jwt))
        self._access[sandbox.id] = access
        return access

    async def access(self, sandbox: Sandbox, *, fresh: bool = False) -> Access:
        have = self._access.get(sandbox.id)
        if fresh or have is None or (have.exp and have.exp - time.time() < REFRESH_S):
            return await self._fetch(sandbox)
        return have

    def _md(self, access: Access) -> list[tuple[str, str]]:
        return [("authorization", f"Bearer {access.jwt}")]

    async def call(
        self,
        sandbox: Sandbox,
        method: str,
        request: Any,
        response_type: Any,
        what: str,
        timeout: float | None = None,
    ) -> Any:
        access = await self.access(sandbox)
        for last in (False, True):
            stub = (await self._channel(access.url)).unary_unary(
                ROUTER + method, **codec(request, response_type)
            )
            try:
                return await stub(request, metadata=self._md(access), timeout=timeout)
            except grpc.aio.AioRpcError as err:
                if err.code() != grpc.StatusCode.UNAUTHENTICATED or last:
                    raise grpc_error(what, err, "PROCESS_NOT_FOUND") from None
                access = await self.access(sandbox, fresh=True)
        raise AssertionError("unreachable")

    async def stream(
        self, sandbox: Sandbox, method: str, request: Any, response_type: Any
    ) -> AsyncIterator[Any]:
        """One server stream; a caller that reads by offset reopens it after an
        UNAUTHENTICATED with fresh access (see commands.read)."""
        access = await self.access(sandbox)
        read = (await self._channel(access.url)).unary_stream(
            ROUTER + method, **codec(request, response_type)
        )
        async for msg in read(request, metadata=self._md(access)):
            yield msg
