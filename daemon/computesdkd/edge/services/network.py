from __future__ import annotations

from typing import Any

from grpc.aio import ServicerContext

from computesdk_api.network.v1 import network_pb2 as pb
from computesdk_api.network.v1 import network_pb2_grpc as pb_grpc
from computesdkd.edge import caller as callers
from computesdkd.edge.status import edge
from computesdkd.features.networks import Network, Networks

Ctx = ServicerContext[Any, Any]


def _network(net: Network) -> pb.Network:
    return pb.Network(
        name=net.name,
        subnet=net.subnet,
        members=[
            pb.NetworkMember(sandbox_id=m.sandbox_id, hostname=m.hostname, address=m.address)
            for m in net.members
        ],
    )


class NetworkServicer(pb_grpc.NetworkServiceServicer):
    def __init__(self, networks: Networks) -> None:
        self._networks = networks

    @edge
    async def CreateNetwork(
        self, request: pb.CreateNetworkRequest, context: Ctx
    ) -> pb.CreateNetworkResponse:
        net = await self._networks.create(
            request.name, [(m.sandbox_id, m.hostname) for m in request.members]
        )
        return pb.CreateNetworkResponse(network=_network(net))

    @edge
    async def GetNetwork(
        self, request: pb.GetNetworkRequest, context: Ctx
    ) -> pb.GetNetworkResponse:
        return pb.GetNetworkResponse(network=_network(self._networks.get(request.name)))

    @edge
    async def ListNetworks(
        self, request: pb.ListNetworksRequest, context: Ctx
    ) -> pb.ListNetworksResponse:
        return pb.ListNetworksResponse(networks=[_network(n) for n in self._networks.all()])

    @edge
    async def DeleteNetwork(
        self, request: pb.DeleteNetworkRequest, context: Ctx
    ) -> pb.DeleteNetworkResponse:
        await self._networks.delete(request.name)
        return pb.DeleteNetworkResponse()

    @edge
    async def GetServiceUrl(
        self, request: pb.GetServiceUrlRequest, context: Ctx
    ) -> pb.GetServiceUrlResponse:
        url = self._networks.service_url(request.network, request.member, request.port)
        return pb.GetServiceUrlResponse(url=url)

    @edge
    async def ExposePort(
        self, request: pb.ExposePortRequest, context: Ctx
    ) -> pb.ExposePortResponse:
        return pb.ExposePortResponse(
            # A tenant's port gets a secret; the admin's stays on loopback.
            url=await self._networks.expose(
                request.sandbox_id, request.port, gated=not callers.current().admin
            )
        )
