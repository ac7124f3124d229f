"""Exec round trip of `true` through the Python client: p50/p95 in ms as JSON.

.venv/bin/python bench/client_rtt.py SOCKET [N]      (bench/clients.sh runs it)
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

from computesdk import Client


async def main(socket: str, n: int) -> None:
    async with await Client.connect(socket=socket) as client:
        sb = await client.create("local")
        for _ in range(20):  # warm up
            await sb.exec(["true"])
        times = []
        for _ in range(n):
            t0 = time.perf_counter()
            await sb.exec(["true"])
            times.append((time.perf_counter() - t0) * 1000)
        await sb.destroy()
    times.sort()
    at = lambda p: times[min(len(times) - 1, round(p / 100 * (len(times) - 1)))]  # noqa: E731
    out = {"client": "python", "n": n, "p50_ms": round(at(50), 3), "p95_ms": round(at(95), 3)}
    print(json.dumps(out))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 300))
