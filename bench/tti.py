"""TTI through the ComputeSDK provider package, beside the paths under it.

computesdk/benchmarks' method (create, its identity probe, `node -v`, timed;
destroy untimed; 5 % trimmed off each tail; composite 60/25/15 on median, p95,
p99 against a 10 s ceiling, times the success rate), 100 sequential and a burst
of 100, on a private daemon with a warm `node` pool as scripts/run-daemon.sh
sizes it (--pool MIN:MAX). Paths, in the same run: `package` (computesdk's
compute API over clients/computesdk-provider), `client` (computesdkd-client),
`raw` (its generated stubs), `grpc.aio` (Python's bare stubs, no client), and
`docker run --rm node -v` where docker answers. Rows are appended to
bench/results/tti-*.jsonl as they come (bench/tti.mjs writes the Node paths').

    .venv/bin/python bench/tti.py [--n 100] [--burst 100] [--pool 4:64]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import grpc

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))

from run import DOCKER_IMAGE, timed_cmd, warm  # noqa: E402

from computesdk import Client  # noqa: E402
from computesdk_api.process.v1 import process_pb2, process_pb2_grpc  # noqa: E402
from computesdk_api.sandbox.v1 import sandbox_pb2, sandbox_pb2_grpc  # noqa: E402

PROBE = (
    "marker_path=''; for p in /tmp/.bench_ephemeral_check /var/tmp/.bench_ephemeral_check; "
    'do if [ -f "$p" ]; then marker_path=$p; break; fi; done; '
    "printf 'marker_path=%s\\n' \"$marker_path\"; "
    "printf x > /tmp/.bench_ephemeral_check; printf x > /var/tmp/.bench_ephemeral_check"
)


def stats(values: list[float]) -> dict[str, float]:
    """computesdk/benchmarks' computeStats: trim 5 % each end; ceil-rank percentiles."""
    if not values:
        return {"median": 0.0, "p95": 0.0, "p99": 0.0}
    xs = sorted(values)
    k = int(len(xs) * 0.05)
    if k > 0 and len(xs) - 2 * k > 0:
        xs = xs[k : len(xs) - k]
    mid = len(xs) // 2
    median = (xs[mid - 1] + xs[mid]) / 2 if len(xs) % 2 == 0 else xs[mid]

    def rank(p: float) -> float:
        return xs[min(max(0, -(-p * len(xs) // 100) - 1), len(xs) - 1)]

    return {"median": median, "p95": rank(95), "p99": rank(99)}


def score(s: dict[str, float], success: float) -> float:
    m = lambda v: max(0.0, 100 * (1 - v / 10_000))  # noqa: E731
    return round((0.6 * m(s["median"]) + 0.25 * m(s["p95"]) + 0.15 * m(s["p99"])) * success, 2)


class Out:
    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)

    def row(self, **row: Any) -> dict[str, Any]:
        row = {"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **row}
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        return row


async def grpc_aio(sock: str, mode: str, n: int, out: Out) -> dict[str, Any]:
    """The floor under every client: CreateSandbox, RunCommand twice, over bare grpc.aio."""
    async with grpc.aio.insecure_channel(f"unix:{sock}") as ch:
        sandboxes = sandbox_pb2_grpc.SandboxServiceStub(ch)
        processes = process_pb2_grpc.ProcessServiceStub(ch)

        async def once(i: int) -> float | None:
            try:
                t = time.perf_counter()
                sb = (await sandboxes.CreateSandbox(
                    sandbox_pb2.CreateSandboxRequest(template="node", request_id=str(uuid.uuid4()))
                )).sandbox  # fmt: skip
                cmds = []
                for command in (PROBE, "node -v"):
                    cmds.append(await processes.RunCommand(process_pb2.RunCommandRequest(
                        sandbox_id=sb.id, command=process_pb2.Command(command=command)
                    )))  # fmt: skip
                ms = (time.perf_counter() - t) * 1000
                if b"marker_path=/" in cmds[0].stdout or not cmds[1].stdout.startswith(b"v"):
                    raise RuntimeError("reused sandbox, or node -v failed")
                out.row(kind="iteration", path="grpc.aio", mode=mode, i=i, ttiMs=ms)
                await sandboxes.DestroySandbox(sandbox_pb2.DestroySandboxRequest(sandbox_id=sb.id))
                return ms
            except (grpc.aio.AioRpcError, RuntimeError) as exc:
                out.row(kind="iteration", path="grpc.aio", mode=mode, i=i, error=str(exc))
                return None

        await once(-1)  # warm-up, untimed
        if mode == "sequential":
            results = [await once(i) for i in range(n)]
        else:
            results = list(await asyncio.gather(*(once(i) for i in range(n))))
    ok = [r for r in results if r is not None]
    s = stats(ok)
    return out.row(kind="summary", path="grpc.aio", mode=mode, n=n, ok=len(ok), **s,
                   score=score(s, len(ok) / max(n, 1)))  # fmt: skip


def node_paths(sock: str, mode: str, n: int, paths: list[str], out: Out) -> list[dict[str, Any]]:
    argv = ["node", str(ROOT / "bench" / "tti.mjs"), "--socket", sock, "--modes", mode,
            "--n", str(n), "--burst", str(n), "--paths", ",".join(paths),
            "--out", str(out.path)]  # fmt: skip
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        raise RuntimeError(f"bench/tti.mjs failed:\n{proc.stderr[-2000:]}")
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    return [r for r in rows if r["kind"] == "summary"]


def docker_row(n: int, out: Out) -> dict[str, Any] | None:
    docker = shutil.which("docker")
    if not docker or subprocess.run([docker, "info"], capture_output=True).returncode != 0:
        return None
    r = timed_cmd([docker, "run", "--rm", "--network", "none", DOCKER_IMAGE, "node", "-v"], n)
    ok = round(r["success"] * n)
    return out.row(kind="summary", path="docker run --rm", mode="sequential", n=n, ok=ok,
                   median=r["p50"], p95=r["p95"], p99=r["p99"])  # fmt: skip


async def run(a: argparse.Namespace, out: Out) -> list[dict[str, Any]]:
    from conftest import new_daemon

    lo, hi = (int(x) for x in a.pool.split(":"))
    d = new_daemon()
    d.extra_args = ["--warm-pool", f"node=local/node:{lo}:{hi}"]
    d.start()
    rows: list[dict[str, Any]] = []
    load = os.getloadavg()
    out.row(kind="machine", cores=os.cpu_count(), load=load, pool=a.pool)
    try:
        client = await Client.connect(socket=str(d.socket))
        for mode in ("sequential", "burst"):
            for path in a.paths.split(","):
                await warm(client, "node", lo)
                print(f"- {mode} {path}", file=sys.stderr, flush=True)
                n = a.n if mode == "sequential" else a.burst
                if path == "grpc.aio":
                    rows.append(await grpc_aio(str(d.socket), mode, n, out))
                else:
                    rows += node_paths(str(d.socket), mode, n, [path], out)
        await client.close()
    finally:
        d.cleanup()
    if a.docker:
        row = docker_row(a.docker, out)
        if row:
            rows.append(row)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--burst", type=int, default=100)
    ap.add_argument(
        "--pool", default="4:64", help="the node pool's MIN:MAX (scripts/run-daemon.sh: 4:64)"
    )
    ap.add_argument("--paths", default="package,client,raw,grpc.aio")
    ap.add_argument(
        "--docker", type=int, default=10, help="docker run --rm node -v this many times (0: skip)"
    )
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    a = ap.parse_args()
    out = Out(a.out / f"tti-{time.strftime('%Y%m%d-%H%M%S')}.jsonl")
    rows = asyncio.run(run(a, out))
    print(f"{'path':<18} {'mode':<11} {'median':>8} {'p95':>8} {'p99':>8} {'score':>6} ok")
    for r in rows:
        med = r.get("median", r.get("p50"))
        print(f"{r['path']:<18} {r['mode']:<11} {med:8.1f} {r['p95']:8.1f} {r['p99']:8.1f} "
              f"{r.get('score', float('nan')):6.2f} {r.get('ok', '')}/{r['n']}")  # fmt: skip
    print(f"\nJSONL: {out.path}")


if __name__ == "__main__":
    main()
