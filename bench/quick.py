"""Three headline figures of the local provider, through the Python client.

    .venv/bin/python bench/quick.py [--socket PATH] [-n 50]

Without --socket it starts a private daemon. Prints median and p95 of
create->ready and of an exec round trip of `true`, and stdout throughput (MB/s
received by the client, bytes checked). The full harness, with peers, is bench/run.py.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import statistics
import sys
import time
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from computesdk import Client


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(p / 100 * (len(xs) - 1)))]


@contextlib.contextmanager
def daemon_socket(socket: str | None) -> Iterator[str]:
    """The socket given, or a private daemon's for the run (cleaned up after)."""
    if socket is not None:
        yield socket
        return
    from conftest import new_daemon

    daemon = new_daemon()
    daemon.start()
    try:
        yield str(daemon.socket)
    finally:
        daemon.cleanup()


async def run(socket: str, n: int, mb: int) -> dict[str, object]:
    client = await Client.connect(socket=socket)
    create: list[float] = []
    for _ in range(n):
        t = time.perf_counter()
        sb = await client.create(template="base")
        create.append((time.perf_counter() - t) * 1000)
        await sb.destroy()
    sb = await client.create(template="python")
    for _ in range(5):
        await sb.exec(["true"])
    rtt: list[float] = []
    for _ in range(n * 4):
        t = time.perf_counter()
        await sb.exec(["true"])
        rtt.append((time.perf_counter() - t) * 1000)
    script = f"import sys\nb=b'x'*(1<<20)\nfor _ in range({mb}): sys.stdout.buffer.write(b)\n"
    digest = hashlib.sha256()
    total = 0
    t = time.perf_counter()
    async for chunk in sb.exec_stream(["python3", "-c", script]):
        digest.update(chunk.data)
        total += len(chunk.data)
    secs = time.perf_counter() - t
    assert total == mb << 20, total
    assert digest.hexdigest() == hashlib.sha256(b"x" * (mb << 20)).hexdigest()
    await sb.destroy()
    await client.close()
    return {
        "create_ready_ms": {"p50": statistics.median(create), "p95": pct(create, 95), "n": n},
        "exec_true_ms": {"p50": statistics.median(rtt), "p95": pct(rtt, 95), "n": len(rtt)},
        "stdout_mb_per_s": {"value": total / secs / 1e6, "bytes": total},
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--socket")
    ap.add_argument("-n", type=int, default=50)
    ap.add_argument("--mb", type=int, default=1024)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    with daemon_socket(a.socket) as socket:
        res = asyncio.run(run(socket, a.n, a.mb))
    if a.json:
        print(json.dumps(res, indent=2))
        return
    c, e, s = res["create_ready_ms"], res["exec_true_ms"], res["stdout_mb_per_s"]
    print(f"create->ready   p50 {c['p50']:7.1f} ms   p95 {c['p95']:7.1f} ms   (n={c['n']})")  # type: ignore[index]
    print(f"exec `true` RTT p50 {e['p50']:7.2f} ms   p95 {e['p95']:7.2f} ms   (n={e['n']})")  # type: ignore[index]
    print(f"stdout          {s['value']:7.0f} MB/s ({s['bytes'] >> 20} MiB, sha256 checked)")  # type: ignore[index]


if __name__ == "__main__":
    main()
