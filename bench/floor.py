"""The transport's own floor: a bare grpc.aio server with no daemon behind it.

Run as a subprocess by the harness, on a Unix socket, so that our figures can
be read as ratios to what gRPC itself costs on this machine in the same run."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from typing import Any

import grpc

SERVICE = "bench.Floor"


def _identity(b: bytes) -> bytes:
    return b


async def serve(path: str) -> None:
    async def echo(request: bytes, context: Any) -> bytes:
        return request

    async def stream(request: bytes, context: Any) -> AsyncIterator[bytes]:
        size, chunk = (int(x) for x in request.decode().split(","))
        block = b"x" * chunk
        for _ in range(size // chunk):
            yield block

    server = grpc.aio.server(options=[("grpc.max_send_message_length", 64 << 20)])
    server.add_generic_rpc_handlers(
        [
            grpc.method_handlers_generic_handler(
                SERVICE,
                {
                    "Echo": grpc.unary_unary_rpc_method_handler(echo, _identity, _identity),
                    "Stream": grpc.unary_stream_rpc_method_handler(stream, _identity, _identity),
                },
            )
        ]
    )
    server.add_insecure_port(f"unix:{path}")
    await server.start()
    print("ready", flush=True)
    await server.wait_for_termination()


if __name__ == "__main__":
    asyncio.run(serve(sys.argv[1]))
