"""The benchmark harness: our figures, the transport's floor and the peers', in one run.

    .venv/bin/python bench/run.py            # the full run (minutes)
    .venv/bin/python bench/run.py --quick    # a tiny smoke, as CI runs it

Prints a table and writes JSON to bench/results/. Measures TTI (create a `node`
sandbox, then `node -v` to completion; sequential, burst and staggered, with the
computesdk/benchmarks composite score), the exec round trip of `true`, stdout
throughput with a checksum, concurrent execs, idle density, a bare grpc.aio
floor, and peers: `runc run`, `bwrap`, `docker run` and `docker exec`.
Targets live here, never in unit tests.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from computesdk import Client, Resources, Sandbox  # noqa: E402
from computesdkd.providers.docker.image import IMAGE as DOCKER_IMAGE  # noqa: E402
from computesdkd.providers.local.rootfs import base_path  # noqa: E402

Result = dict[str, Any]


# The warm pool of the TTI template, as scripts/run-daemon.sh configures it.
TTI_POOL = "node"
TTI_POOL_MIN = 100


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, round(p / 100 * (len(xs) - 1))))] if xs else float("nan")


def summary(ms: list[float], ok: int | None = None, n: int | None = None) -> Result:
    n = n if n is not None else len(ms)
    out: Result = {
        "n": n,
        "p50": statistics.median(ms) if ms else None,
        "p95": pct(ms, 95),
        "p99": pct(ms, 99),
        "success": (ok if ok is not None else len(ms)) / max(n, 1),
    }
    return out


def composite(ms: list[float], success: float) -> float:
    """computesdk/benchmarks: 100*(1 - ms/10000) per percentile, 60/25/15 weights on
    median/p95/p99 after trimming 5% from each tail, times the success rate."""
    xs = sorted(ms)
    k = int(len(xs) * 0.05)
    xs = xs[k : len(xs) - k] or xs
    score = sum(w * 100 * (1 - pct(xs, p) / 10_000) for p, w in ((50, 0.6), (95, 0.25), (99, 0.15)))
    return round(max(0.0, score) * success, 2)


# ------------------------------------------------------------------ ours


async def tti_once(client: Client, marker: str, use_pool: bool) -> tuple[float, Sandbox]:
    t = time.perf_counter()
    sb = await client.create(template="node", use_pool=use_pool)
    r = await sb.exec(["node", "-v"])
    ms = (time.perf_counter() - t) * 1000
    if r.exit_code != 0 or not r.stdout.startswith("v"):
        raise RuntimeError(f"node -v failed: {r.stderr}")
    # Freshness, as computesdk/benchmarks checks: no earlier iteration's files may show up.
    seen = await sb.exec(
        ["sh", "-c", f"ls /tmp/{marker}-* /var/tmp/{marker}-* 2>/dev/null"], check=False
    )
    if seen.stdout.strip():
        raise RuntimeError("a sandbox came with an earlier user's files")
    await sb.exec(["sh", "-c", f"touch /tmp/{marker}-$$ /var/tmp/{marker}-$$"])
    return ms, sb


async def tti(
    client: Client, n: int, mode: str, stagger_s: float = 0.2, use_pool: bool = True
) -> Result:
    marker = "bench-" + os.urandom(4).hex()
    if use_pool:
        await warm(client, TTI_POOL, min(n, TTI_POOL_MIN))
    times: list[float] = []
    failures = 0

    async def one(delay: float) -> None:
        nonlocal failures
        await asyncio.sleep(delay)
        try:
            ms, sb = await tti_once(client, marker, use_pool)
            times.append(ms)
            await sb.destroy()
        except Exception as exc:  # a failed iteration counts against the success rate
            failures += 1
            print(f"  tti {mode}: {exc}", file=sys.stderr)

    if mode == "sequential":
        for _ in range(n):
            await one(0)
    else:
        step = stagger_s if mode == "staggered" else 0.0
        await asyncio.gather(*(one(i * step) for i in range(n)))
    out = summary(times, len(times), n)
    out["score"] = composite(times, out["success"]) if times else 0.0
    return out


async def warm(client: Client, pool: str, idle: int, timeout_s: float = 300) -> None:
    """Waits until the pool has refilled, so each row starts from the same state."""
    deadline = time.monotonic() + timeout_s
    while True:
        pools = await client.pools.list()
        # Every pool done refilling too: background creates would skew the next row.
        if all(p.creating == 0 for p in pools) and any(
            p.name == pool and p.idle >= idle for p in pools
        ):
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"pool {pool} did not reach {idle} idle sandboxes")
        await asyncio.sleep(0.1)


async def cold_create(client: Client, n: int) -> Result:
    """create->ready with the pool switched off: runc, overlay, disk image, agent."""
    times = []
    for _ in range(n):
        t = time.perf_counter()
        sb = await client.create(template="base", use_pool=False)
        times.append((time.perf_counter() - t) * 1000)
        await sb.destroy()
    return summary(times)


async def pool_acquire(client: Client, acquirers: int, rounds: int) -> Result:
    """Acquire latency (and a soft release after each), alone and with many at once."""
    name = "bench-acquire"
    await client.pools.create(
        name, provider="local", template="base", min=acquirers, max=acquirers + 10
    )
    await warm(client, name, acquirers)

    async def worker(times: list[float]) -> None:
        for _ in range(rounds):
            t = time.perf_counter()
            sb = await client.pools.acquire(name)
            times.append((time.perf_counter() - t) * 1000)
            await sb.release()

    alone: list[float] = []
    await worker(alone)
    await warm(client, name, acquirers)
    together: list[float] = []
    t0 = time.perf_counter()
    await asyncio.gather(*(worker(together) for _ in range(acquirers)))
    wall = time.perf_counter() - t0
    stats = await client.pools.get(name)
    await client.pools.delete(name)
    out = summary(together)
    out["alone"] = summary(alone)
    out["acquirers"] = acquirers
    out["acquires_per_s"] = round(len(together) / wall)
    out["hits"], out["misses"] = stats.hits_total, stats.misses_total
    return out


async def batch_create(client: Client, n: int) -> Result:
    t = time.perf_counter()
    made = await client.batch_create([{"template": "base", "use_pool": False}] * n)
    wall = (time.perf_counter() - t) * 1000
    ok = [s for s in made if isinstance(s, Sandbox)]
    await asyncio.gather(*(s.destroy() for s in ok))
    return {"n": n, "ok": len(ok), "wall_ms": round(wall, 1), "per_sandbox_ms": round(wall / n, 1)}


async def state_ops(client: Client, sizes_mb: list[int], n: int) -> list[Result]:
    """Snapshot, restore and clone of a sandbox with SIZE MB written (and synced):
    copy-on-write, so the cost should not grow with the size."""
    out = []
    for mb in sizes_mb:
        sb = await client.create(
            template="base", use_pool=False, resources=Resources(disk_mb=max(2048, mb * 2))
        )
        w = await sb.exec(
            f"dd if=/dev/urandom of=/workspace/blob bs=1M count={mb} status=none && sync"
        )
        if w.exit_code != 0:
            raise RuntimeError(f"writing {mb} MB failed: {w.stderr}")
        snap_ms, restore_ms, clone_ms = [], [], []
        for _ in range(n):
            t = time.perf_counter()
            snap = await sb.snapshots.create("bench")
            snap_ms.append((time.perf_counter() - t) * 1000)
            t = time.perf_counter()
            await sb.snapshots.restore(snap)
            restore_ms.append((time.perf_counter() - t) * 1000)
            await sb.snapshots.delete(snap)
            t = time.perf_counter()
            twin = await sb.clone()
            clone_ms.append((time.perf_counter() - t) * 1000)
            await twin.destroy()
        size = (await sb.files.stat("/workspace/blob")).size
        await sb.destroy()
        out.append(
            {
                "mb": mb,
                "intact": size == mb * 1024 * 1024,
                "snapshot": summary(snap_ms),
                "restore": summary(restore_ms),
                "clone": summary(clone_ms),
            }
        )
    return out


async def exec_rtt(client: Client, n: int) -> Result:
    async with await client.create() as sb:
        for _ in range(10):
            await sb.exec(["true"])
        ms = []
        for _ in range(n):
            t = time.perf_counter()
            await sb.exec(["true"])
            ms.append((time.perf_counter() - t) * 1000)
    return summary(ms)


async def stdout_mb_s(client: Client, mib: int) -> Result:
    """MB/s as the client receives it. Each chunk is checked where it lands against
    the pattern the command writes (a 256-byte cycle, so a lost, repeated or
    misplaced byte shows): a compare per chunk, cheap next to a hash."""
    async with await client.create(template="python") as sb:
        script = (
            f"import sys\nb=bytes(range(256))*4096\n"
            f"for _ in range({mib}): sys.stdout.buffer.write(b)\n"
        )
        pattern = bytes(range(256)) * 4096 * 3
        total, intact = 0, True
        t = time.perf_counter()
        async for chunk in sb.exec_stream(["python3", "-c", script]):
            data = chunk.data
            intact = intact and chunk.offset == total
            for at in range(0, len(data), 1 << 20):
                piece = data[at : at + (1 << 20)]
                start = (total + at) % 256
                intact = intact and piece == pattern[start : start + len(piece)]
            total += len(data)
        secs = time.perf_counter() - t
    intact = intact and total == mib << 20
    return {"mb_per_s": round(total / secs / 1e6, 1), "bytes": total, "intact": intact}


async def concurrency(client: Client, sandboxes: int, execs: int) -> Result:
    boxes = await asyncio.gather(*(client.create() for _ in range(sandboxes)))
    ms: list[float] = []

    async def one(sb: Sandbox) -> None:
        t = time.perf_counter()
        r = await sb.exec(["sh", "-c", "echo $$"], check=False)
        if r.exit_code == 0:
            ms.append((time.perf_counter() - t) * 1000)

    t = time.perf_counter()
    await asyncio.gather(*(one(boxes[i % sandboxes]) for i in range(execs)))
    wall = (time.perf_counter() - t) * 1000
    await asyncio.gather(*(b.destroy() for b in boxes))
    return {**summary(ms, len(ms), execs), "wall_ms": round(wall, 1)}


def mem_available() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 0


def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


async def density(client: Client, count: int, daemon_pid: int) -> Result:
    before = mem_available()

    async def timed() -> tuple[float, Sandbox]:
        t = time.perf_counter()
        sb = await client.create()
        return (time.perf_counter() - t) * 1000, sb

    boxes: list[Sandbox] = []
    first: list[float] = []
    for i in range(count):
        ms, sb = await timed()
        boxes.append(sb)
        if i < 10:
            first.append(ms)
    await asyncio.sleep(1)
    used = before - mem_available()
    last = []
    for _ in range(min(10, count)):
        ms, sb = await timed()
        last.append(ms)
        await sb.destroy()
    out = {
        "count": count,
        "host_mib_per_sandbox": round(used / count / 2**20, 2),
        "daemon_rss_mib": round(rss(daemon_pid) / 2**20, 1),
        "create_ms_at_10": round(statistics.median(first), 1),
        "create_ms_at_count": round(statistics.median(last), 1),
    }
    for i in range(0, len(boxes), 50):
        await asyncio.gather(*(b.destroy() for b in boxes[i : i + 50]))
    return out


# ------------------------------------------------------------------ floor


async def floor(n: int, mib: int) -> Result:
    tmp = Path(tempfile.mkdtemp(prefix="floor-"))
    sock = tmp / "floor.sock"
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(Path(__file__).with_name("floor.py")),
        str(sock),
        stdout=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    await proc.stdout.readline()  # "ready"
    try:
        async with grpc.aio.insecure_channel(f"unix:{sock}") as ch:
            echo = ch.unary_unary("/bench.Floor/Echo")
            stream = ch.unary_stream("/bench.Floor/Stream")
            for _ in range(20):
                await echo(b"x")
            ms = []
            for _ in range(n):
                t = time.perf_counter()
                await echo(b"x")
                ms.append((time.perf_counter() - t) * 1000)
            total = 0
            t = time.perf_counter()
            # 1 MiB messages: the size the agent sends output in (its read chunk).
            async for block in stream(f"{mib << 20},{1 << 20}".encode()):
                total += len(block)
            secs = time.perf_counter() - t
    finally:
        proc.terminate()
        await proc.wait()
        shutil.rmtree(tmp, ignore_errors=True)
    return {"unary": summary(ms), "stream_mb_per_s": round(total / secs / 1e6, 1)}


# ------------------------------------------------------------------ peers


def timed_cmd(argv: list[str] | Callable[[], list[str]], n: int) -> Result:
    """Wall time of a whole command; argv may be made afresh for each run."""
    ms, ok = [], 0
    for _ in range(n):
        a = argv() if callable(argv) else argv
        t = time.perf_counter()
        r = subprocess.run(a, capture_output=True, timeout=120)
        ms.append((time.perf_counter() - t) * 1000)
        ok += r.returncode == 0
    return summary(ms, ok, n)


def missing(tool: str, install: str) -> Result:
    return {"missing": True, "install": install, "tool": tool}


def peers(n: int) -> dict[str, Result]:
    base = str(base_path())
    out: dict[str, Result] = {}
    if shutil.which("bwrap"):
        out["bwrap node -v"] = timed_cmd(
            [
                "bwrap",
                "--ro-bind",
                base,
                "/",
                "--proc",
                "/proc",
                "--dev",
                "/dev",
                "--unshare-all",
                "--die-with-parent",
                "node",
                "-v",
            ],
            n,
        )
    else:
        out["bwrap node -v"] = missing("bwrap", "apt-get install -y bubblewrap")
    if shutil.which("runc"):
        bundle = Path(tempfile.mkdtemp(prefix="runc-peer-"))
        subprocess.run(["runc", "spec", "--bundle", str(bundle)], check=True)
        spec = json.loads((bundle / "config.json").read_text())
        spec["root"] = {"path": base, "readonly": True}
        spec["process"].update(terminal=False, args=["node", "-v"])
        (bundle / "config.json").write_text(json.dumps(spec))
        counter = iter(range(10**9))
        out["runc run node -v"] = timed_cmd(
            lambda: [
                "runc",
                "--root",
                str(bundle / "state"),
                "run",
                "--bundle",
                str(bundle),
                f"peer-{next(counter)}",
            ],
            n,
        )
        shutil.rmtree(bundle, ignore_errors=True)
    else:
        out["runc run node -v"] = missing("runc", "apt-get install -y runc")
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "info"], capture_output=True).returncode == 0:
        out["docker run --rm node -v"] = timed_cmd(
            [docker, "run", "--rm", "--network", "none", DOCKER_IMAGE, "node", "-v"], n
        )
        name = "bench-peer-" + os.urandom(3).hex()
        subprocess.run(
            [
                docker,
                "run",
                "-d",
                "--name",
                name,
                "--network",
                "none",
                DOCKER_IMAGE,
                "sleep",
                "infinity",
            ],
            capture_output=True,
            check=True,
        )
        out["docker exec true"] = timed_cmd([docker, "exec", name, "true"], n)
        subprocess.run([docker, "rm", "-f", name], capture_output=True)
    else:
        out["docker run --rm node -v"] = missing(
            "dockerd", "apt-get install -y docker.io && scripts/start-dockerd.sh"
        )
    return out


# ------------------------------------------------------------------ main


async def run(a: argparse.Namespace) -> Result:
    from pki import CA

    from conftest import new_daemon, serving_port

    d = new_daemon()
    # The network listener too, over TLS: exec over it is measured beside the socket's.
    ca = CA(d.root)
    server = ca.issue("server", server=True)
    # As the README's daemon runs: a warm pool of the TTI template that create draws
    # from transparently. The *_cold rows switch the pool off per request.
    pool_min = min(max(a.burst, a.iterations), TTI_POOL_MIN)
    d.extra_args = ["--warm-pool", f"{TTI_POOL}=local/node:{pool_min}:{pool_min * 2}",
                    "--listen", "127.0.0.1:0", "--tls-cert", str(server.cert),
                    "--tls-key", str(server.key)]  # fmt: skip
    d.start()
    assert d.proc is not None
    res: Result = {
        "machine": {"cores": os.cpu_count(), "kernel": os.uname().release},
        "quick": a.quick,
    }
    try:
        client = await Client.connect(socket=d.socket)
        n = a.iterations
        step("transport floor")
        res["floor"] = await floor(max(n * 4, 50), a.stdout_mib)
        step("TTI sequential")
        res["tti_sequential"] = await tti(client, n, "sequential")
        step("TTI burst")
        res["tti_burst"] = await tti(client, a.burst, "burst")
        step("TTI staggered")
        res["tti_staggered"] = await tti(client, n, "staggered", 0.2 if not a.quick else 0.05)
        step("TTI sequential, pool off")
        res["tti_sequential_cold"] = await tti(client, n, "sequential", use_pool=False)
        step("TTI burst, pool off")
        res["tti_burst_cold"] = await tti(client, a.burst, "burst", use_pool=False)
        step("cold create->ready")
        res["create_cold"] = await cold_create(client, n)
        step("pool acquire")
        res["pool_acquire"] = await pool_acquire(client, a.acquirers, 5 if a.quick else 20)
        step("batch create")
        res["batch"] = await batch_create(client, a.batch)
        step("snapshot, restore, clone")
        res["state_ops"] = await state_ops(client, a.state_sizes, 3 if a.quick else 10)
        step("exec round trip")
        res["exec_true"] = await exec_rtt(client, max(n * 4, 50))
        step("exec round trip over TLS TCP, with a token")
        _, token = await client.admin.create_token("bench")
        tls = await Client.connect(
            address=f"127.0.0.1:{serving_port(d)}", ca=str(ca.pem), token=token
        )
        res["exec_true_tls"] = await exec_rtt(tls, max(n * 4, 50))
        await tls.close()
        step("stdout throughput")
        res["stdout"] = await stdout_mb_s(client, a.stdout_mib)
        step("concurrency")
        res["concurrency"] = await concurrency(client, a.conc_sandboxes, a.conc_execs)
        res["density"] = []
        for count in a.density:
            step(f"density {count}")
            res["density"].append(await density(client, count, d.proc.pid))
        await client.close()
    finally:
        d.cleanup()
    if not a.skip_peers:
        step("peers")
        res["peers"] = peers(max(3, n // 4) if a.quick else min(n, 30))
    return res


def step(name: str) -> None:
    print(f"- {name}", file=sys.stderr, flush=True)


def ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}x" if a and b else "-"


def table(res: Result) -> str:
    rows = [("figure", "p50 ms", "p95 ms", "extra")]
    for key in (
        "tti_sequential",
        "tti_burst",
        "tti_staggered",
        "tti_sequential_cold",
        "tti_burst_cold",
    ):
        r = res[key]
        rows.append(
            (
                key,
                f"{r['p50']:.1f}",
                f"{r['p95']:.1f}",
                f"p99 {r['p99']:.1f}, success {r['success']:.0%}, score {r['score']}",
            )
        )
    c = res["create_cold"]
    rows.append(("cold create->ready", f"{c['p50']:.1f}", f"{c['p95']:.1f}", "no pool"))
    pa = res["pool_acquire"]
    rows.append(
        (
            f"pool acquire, {pa['acquirers']} at once",
            f"{pa['p50']:.2f}",
            f"{pa['p95']:.2f}",
            f"alone p50 {pa['alone']['p50']:.2f} ms; {pa['acquires_per_s']}/s; "
            f"hits {pa['hits']} misses {pa['misses']}",
        )
    )
    b = res["batch"]
    rows.append((f"batch create {b['n']}", "", "", f"wall {b['wall_ms']} ms, {b['ok']} ok"))
    for so in res["state_ops"]:
        for op in ("snapshot", "restore", "clone"):
            rows.append(
                (
                    f"{op}, {so['mb']} MB written",
                    f"{so[op]['p50']:.1f}",
                    f"{so[op]['p95']:.1f}",
                    "copy-on-write" if so["intact"] else "DATA LOST",
                )
            )
    # Later features join here: export/import and event fan-out.
    e, f = res["exec_true"], res["floor"]
    rows.append(
        (
            "exec `true`",
            f"{e['p50']:.2f}",
            f"{e['p95']:.2f}",
            f"{ratio(e['p50'], f['unary']['p50'])} of a bare unary call",
        )
    )
    if "exec_true_tls" in res:
        t = res["exec_true_tls"]
        rows.append(
            (
                "exec `true`, TLS TCP + token",
                f"{t['p50']:.2f}",
                f"{t['p95']:.2f}",
                f"{ratio(t['p50'], e['p50'])} of the socket's",
            )
        )
    rows.append(
        ("bare grpc.aio unary", f"{f['unary']['p50']:.2f}", f"{f['unary']['p95']:.2f}", "floor")
    )
    s = res["stdout"]
    rows.append(
        (
            "stdout MB/s",
            f"{s['mb_per_s']}",
            "",
            f"{ratio(s['mb_per_s'], f['stream_mb_per_s'])}"
            f" of a bare stream ({f['stream_mb_per_s']} MB/s), intact={s['intact']}",
        )
    )
    c = res["concurrency"]
    rows.append(
        (
            f"concurrent execs ({c['n']})",
            f"{c['p50']:.1f}",
            f"{c['p95']:.1f}",
            f"wall {c['wall_ms']} ms",
        )
    )
    for dn in res["density"]:
        rows.append(
            (
                f"density {dn['count']}",
                "",
                "",
                f"{dn['host_mib_per_sandbox']} MiB/sandbox, daemon RSS "
                f"{dn['daemon_rss_mib']} MiB, create {dn['create_ms_at_10']} -> "
                f"{dn['create_ms_at_count']} ms",
            )
        )
    for name, p in res.get("peers", {}).items():
        if p.get("missing"):
            rows.append((name, "missing", "", f"install: {p['install']}"))
        else:
            ours = res["exec_true"]["p50"] if "exec" in name else res["tti_sequential"]["p50"]
            rows.append(
                (
                    name,
                    f"{p['p50']:.1f}",
                    f"{p['p95']:.1f}",
                    f"ours is {ratio(ours, p['p50'])} of it",
                )
            )
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny iterations (the CI smoke)")
    ap.add_argument("--iterations", type=int, default=100)
    ap.add_argument("--burst", type=int, default=100)
    ap.add_argument("--stdout-mib", type=int, default=1024)
    ap.add_argument("--conc-sandboxes", type=int, default=10)
    ap.add_argument("--conc-execs", type=int, default=100)
    ap.add_argument("--density", type=int, nargs="*", default=[100, 500, 1000])
    ap.add_argument("--acquirers", type=int, default=50)
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--state-sizes", type=int, nargs="*", default=[1, 100, 1024])
    ap.add_argument("--skip-peers", action="store_true")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    a = ap.parse_args()
    if a.quick:
        a.iterations, a.burst, a.stdout_mib = 8, 8, 16
        a.conc_sandboxes, a.conc_execs, a.density = 2, 10, [5]
        a.acquirers, a.batch, a.state_sizes = 4, 4, [1]
    res = asyncio.run(run(a))
    print(table(res))
    a.out.mkdir(parents=True, exist_ok=True)
    path = a.out / f"bench-{time.strftime('%Y%m%d-%H%M%S')}{'-quick' if a.quick else ''}.json"
    path.write_text(json.dumps(res, indent=2))
    print(f"\nJSON: {path}")


if __name__ == "__main__":
    main()
