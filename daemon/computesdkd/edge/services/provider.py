from __future__ import annotations

from typing import Any

from grpc.aio import ServicerContext

from computesdk_api.provider.v1 import provider_pb2 as pb
from computesdk_api.provider.v1 import provider_pb2_grpc as pb_grpc
from computesdkd.core.guard import Providers
from computesdkd.edge.status import edge

Ctx = ServicerContext[Any, Any]


class ProviderServicer(pb_grpc.ProviderServiceServicer):
    def __init__(self, providers: Providers) -> None:
        self._providers = providers

    @edge
    async def ListProviders(
        self, request: pb.ListProvidersRequest, context: Ctx
    ) -> pb.ListProvidersResponse:
        out = []
        for name, p in sorted(self._providers.by_name.items()):
            why = p.availability()
            out.append(
                pb.Provider(
                    name=name,
                    capabilities=sorted(p.capabilities),
                    available=not why,
                    unavailable_reason=why,
                    is_default=name == self._providers.default,
                    templates=p.templates(),
                    circuit_state=self._providers.breakers[name].state.value,  # type: ignore[arg-type]
                )
            )
        return pb.ListProvidersResponse(providers=out)
