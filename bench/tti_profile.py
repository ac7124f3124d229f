"""Where a TTI burst's time goes: CPU by party, and the daemon's hottest frames.

Starts a private daemon with a warm `node` pool (--pool MIN:MAX), waits for it to
fill, measures the host's idle CPU rate for a few seconds (the other load on a
shared machine), then runs one burst through bench/tti.mjs (--path) and reports,
for the burst's wall time: the host's busy CPU-seconds less that baseline; the
daemon's own CPU; its reaped children's (runc, mount, nsenter: the create path);
the Node client's event loop (process.cpuUsage); and the rest, which is the
sandboxes themselves (init, the agent, `node -v`) and runc's detached parts.
With --py-spy PATH it also samples the daemon and prints its top frames.

    .venv/bin/python bench/tti_profile.py [--burst 100] [--pool 4:64] [--path package]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))

from run import warm  # noqa: E402

from computesdk import Client  # noqa: E402

HZ = os.sysconf("SC_CLK_TCK")


def host_busy_s() -> float:
    """CPU-seconds the whole host has been busy (all cores), from /proc/stat."""
    f = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = f[3] + f[4]  # idle + iowait
    return (sum(f[:8]) - idle) / HZ


def sandboxes_cpu_s() -> float:
    """CPU-seconds of every local sandbox on the host (cgroup v1 cpuacct, or v2 cpu.stat)."""
    v1 = Path("/sys/fs/cgroup/cpuacct/computesdk/cpuacct.usage")
    if v1.exists():
        return int(v1.read_text()) / 1e9
    v2 = Path("/sys/fs/cgroup/computesdk/cpu.stat")
    if v2.exists():
        return int(v2.read_text().split()[1]) / 1e6
    return float("nan")


def proc_cpu_s(pid: int) -> tuple[float, float]:
    """(own, reaped children's) CPU-seconds of a process."""
    f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / HZ, (int(f[13]) + int(f[14])) / HZ


def top_frames(raw: Path, n: int) -> list[tuple[str, float]]:
    """py-spy's raw format ('frame;frame;... count'), sampled with --gil: the share of
    the daemon's Python time under each of its own functions (inclusive), then the
    leaf frames outside them."""
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        frames = stack.split(";")
        ours = {f.split(" (")[0] for f in frames if "computesdkd/" in f}
        for f in ours or {"(outside computesdkd) " + frames[-1].split(" (")[0]}:
            inclusive[f] += int(count)
        total += int(count)
    return [(frame, c / max(total, 1)) for frame, c in inclusive.most_common(n)]


async def burst(a: argparse.Namespace, sock: Path, pid: int, i: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    b0, s0, t0 = host_busy_s(), sandboxes_cpu_s(), time.monotonic()
    await asyncio.sleep(a.baseline_s)
    out["baseline_busy_cores"] = round((host_busy_s() - b0) / (time.monotonic() - t0), 2)
    # Other daemons' sandboxes (a shared machine's tests) run meanwhile: their rate is taken off.
    others = (sandboxes_cpu_s() - s0) / (time.monotonic() - t0)
    spy = None
    raw = Path(tempfile.mkdtemp()) / f"spy-{i}.txt"
    if a.py_spy:
        spy = await asyncio.create_subprocess_exec(
            a.py_spy, "record", "--gil", "--format", "raw", "-r", "50",
            "-o", str(raw), "-p", str(pid),
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        await asyncio.sleep(1)
    own0, kids0 = proc_cpu_s(pid)
    busy0, sb0, wall0 = host_busy_s(), sandboxes_cpu_s(), time.monotonic()
    argv = ["node", str(ROOT / "bench" / "tti.mjs"), "--socket", str(sock),
            "--modes", "burst", "--burst", str(a.burst), "--paths", a.path]  # fmt: skip
    proc = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.PIPE)
    stdout, _ = await proc.communicate()
    wall = time.monotonic() - wall0
    busy = host_busy_s() - busy0
    in_sandboxes = sandboxes_cpu_s() - sb0 - others * wall
    own1, kids1 = proc_cpu_s(pid)
    if spy:
        spy.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
        await spy.wait()
    rows = [json.loads(x) for x in stdout.decode().splitlines() if x.startswith("{")]
    summary = next(r for r in rows if r["kind"] == "summary")
    client_cpu = summary["clientCpuMs"] / 1000
    ours = busy - out["baseline_busy_cores"] * wall
    out.update(
        wall_s=round(wall, 2),
        median_ms=round(summary["median"]),
        p95_ms=round(summary["p95"]),
        ok=f"{summary['ok']}/{summary['n']}",
        host_busy_cpu_s=round(busy, 2),
        burst_cpu_s=round(ours, 2),
        daemon_cpu_s=round(own1 - own0, 2),
        daemon_children_cpu_s=round(kids1 - kids0, 2),
        node_client_cpu_s=round(client_cpu, 2),
        sandboxes_cpu_s=round(in_sandboxes, 2),
        rest_cpu_s=round(ours - (own1 - own0) - (kids1 - kids0) - client_cpu, 2),
        cores=os.cpu_count(),
    )
    if spy and raw.exists():
        out["daemon_top_frames"] = [
            f"{share:5.1%} {frame}" for frame, share in top_frames(raw, a.top)
        ]
    return out


async def run(a: argparse.Namespace) -> dict[str, Any]:
    from conftest import new_daemon

    lo, hi = (int(x) for x in a.pool.split(":"))
    d = new_daemon()
    d.extra_args = ["--warm-pool", f"node=local/node:{lo}:{hi}"]
    d.start()
    assert d.proc is not None
    pid = d.proc.pid
    out: dict[str, Any] = {"pool": a.pool, "burst": a.burst, "path": a.path}
    try:
        client = await Client.connect(socket=str(d.socket))
        out["bursts"] = []
        for i in range(a.bursts):
            # After the first, the pool has grown toward the burst (demand.py): wait for it.
            await warm(client, "node", lo)
            idle = next(p.idle for p in await client.pools.list() if p.name == "node")
            out["bursts"].append({"idle_before": idle, **await burst(a, d.socket, pid, i)})
        await client.close()
    finally:
        d.cleanup()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--burst", type=int, default=100)
    ap.add_argument("--pool", default="4:64")
    ap.add_argument("--path", default="package", help="package, client or raw (bench/tti.mjs)")
    ap.add_argument("--bursts", type=int, default=2, help="in a row: the pool grows after one")
    ap.add_argument("--baseline-s", type=float, default=5.0)
    ap.add_argument("--py-spy", default="", help="a py-spy binary: sample the daemon too")
    ap.add_argument("--top", type=int, default=15)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    a = ap.parse_args()
    res = asyncio.run(run(a))
    a.out.mkdir(parents=True, exist_ok=True)
    path = a.out / f"tti-profile-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(res, indent=2))
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
