from __future__ import annotations

from typing import Any

from grpc.aio import ServicerContext

from computesdk_api.provider.v1 import provider_pb2 as pb
from computesdk_api.provider.v1 import provider_pb2_grpc as pb_grpc
from computesdkd.manager import Manager
from computesdkd.servicers._edge import edge

Ctx = ServicerContext[Any, Any]


class ProviderServicer(pb_grpc.ProviderServiceServicer):
    def __init__(self, manager: Manager) -> None:
        self.manager = manager

    @edge
    async def ListProviders(
        self, request: pb.ListProvidersRequest, context: Ctx
    ) -> pb.ListProvidersResponse:
        out = []
        for name, p in sorted(self.manager.providers.items()):
            why = p.availability()
            out.append(
                pb.Provider(
                    name=name,
                    capabilities=sorted(p.capabilities),
                    available=not why,
                    unavailable_reason=why,
                    is_default=name == self.manager.default_provider,
                    templates=p.templates(),
                    circuit_state=self.manager.breakers[name].state.value,  # type: ignore[arg-type]
                )
            )
        return pb.ListProvidersResponse(providers=out)
