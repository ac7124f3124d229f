"""Create and exec times, kubernetes vs local, on one daemon (median and p95).
    KUBECONFIG=/var/lib/computesdk-k8s/kubeconfig/admin.kubeconfig \
      .venv/bin/python tests/k8s/bench.py [N]
Needs the cluster up and the sandbox image imported (tests/k8s/conftest.py does
both); starts its own daemon."""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from computesdk import Client
from conftest import destroy_all_and_clean_up, new_daemon


def summary(xs: list[float]) -> str:
    xs = sorted(xs)
    p95 = xs[min(len(xs) - 1, round(0.95 * (len(xs) - 1)))]
    return f"median {statistics.median(xs) * 1000:7.1f} ms  p95 {p95 * 1000:7.1f} ms  (n={len(xs)})"


async def bench(c: Client, provider: str, n: int) -> None:
    creates, execs = [], []
    for _ in range(n):
        t = time.perf_counter()
        sb = await c.create(provider)
        creates.append(time.perf_counter() - t)
        for _ in range(5):
            t = time.perf_counter()
            assert (await sb.exec(["echo", "hi"])).stdout == "hi\n"
            execs.append(time.perf_counter() - t)
        await sb.destroy()
    print(f"{provider:10s} create {summary(creates)}")
    print(f"{provider:10s} exec   {summary(execs)}")


async def main(n: int) -> None:
    d = new_daemon()
    d.start()
    try:
        c = await Client.connect(socket=d.socket)
        for provider in ("local", "kubernetes"):
            await bench(c, provider, n)
        await c.close()
    finally:
        destroy_all_and_clean_up(d)


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 20))
