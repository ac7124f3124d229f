"""What a CPU limit gives a busy sandbox: a two-thread burner's CPU, as a
percentage of one core, at several `cpu_cores`, beside `docker run --cpus`.

    .venv/bin/python bench/cpu_limits.py [--socket PATH] [--cores 0.5 1 2] [-n 8]

Without --socket it starts a private daemon. Each row is the median and p95 of
n one-second samples of the sandbox's own counter (`monitor`) and, for docker,
of the container's cgroup counter over the same burner. These are speeds, so
they live here and not in tests/ (tests check the cgroup holds the quota set):
on a machine that runs other work the figures fall, and that is not a defect.
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
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from quick import daemon_socket, pct

from computesdk import Client, Resources
from computesdkd.providers.docker.image import IMAGE as DOCKER_IMAGE

# Two busy threads in separate processes, so that a cap above one core shows.
BURN = (
    "import multiprocessing as m, time\n"
    "def burn():\n    end = time.time() + {secs}\n    while time.time() < end: pass\n"
    "ps = [m.Process(target=burn) for _ in range(2)]\n"
    "[p.start() for p in ps]\n[p.join() for p in ps]\n"
)


def summary(xs: list[float]) -> dict[str, Any]:
    return {"p50": statistics.median(xs), "p95": pct(xs, 95), "n": len(xs)}


async def ours(client: Client, cores: float, n: int) -> dict[str, Any]:
    async with await client.create(template="python", resources=Resources(cpu_cores=cores)) as sb:
        burner = await sb.start_process(["python3", "-c", BURN.format(secs=n + 5)])
        await asyncio.sleep(0.5)
        samples: list[float] = []
        async for u in sb.monitor(interval_ms=1000):
            samples.append(u.cpu_percent)
            if len(samples) == n + 1:
                break
        await burner.kill()
    return summary(samples[1:])  # the first sample has no rate yet


def _docker_usage_ns(cid: str) -> int:
    # cgroup v2 (cpu.stat usage_usec) or v1 (cpuacct.usage, ns), whichever the host has.
    v2 = Path(f"/sys/fs/cgroup/system.slice/docker-{cid}.scope/cpu.stat")
    if v2.exists():
        for line in v2.read_text().splitlines():
            if line.startswith("usage_usec "):
                return int(line.split()[1]) * 1000
    return int(Path(f"/sys/fs/cgroup/cpuacct/docker/{cid}/cpuacct.usage").read_text())


def docker_peer(cores: float, n: int) -> dict[str, Any]:
    docker = shutil.which("docker")
    if not docker or subprocess.run([docker, "info"], capture_output=True).returncode:
        return {"missing": True, "install": "apt-get install -y docker.io"}
    cid = subprocess.run(
        [
            docker,
            "run",
            "-d",
            "--rm",
            "--network",
            "none",
            f"--cpus={cores}",
            DOCKER_IMAGE,
            "python3",
            "-c",
            BURN.format(secs=n + 5),
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    try:
        time.sleep(0.5)
        samples = []
        before, t0 = _docker_usage_ns(cid), time.monotonic()
        for _ in range(n):
            time.sleep(1)
            now, t1 = _docker_usage_ns(cid), time.monotonic()
            samples.append((now - before) / ((t1 - t0) * 1e9) * 100)
            before, t0 = now, t1
        return summary(samples)
    finally:
        subprocess.run([docker, "rm", "-f", cid], capture_output=True)


async def run(socket: str, cores: list[float], n: int, out: Path) -> dict[str, Any]:
    client = await Client.connect(socket=socket)
    res: dict[str, Any] = {"machine": {"cores": os.cpu_count(), "load": os.getloadavg()[0]}}
    for c in cores:
        print(f"- cpu_cores={c}", file=sys.stderr, flush=True)
        res[f"computesdk cpu_cores={c}"] = await ours(client, c, n)
        res[f"docker --cpus={c}"] = docker_peer(c, n)
        out.write_text(json.dumps(res, indent=2))  # as it goes: a cut run keeps its rows
    await client.close()
    return res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--socket")
    ap.add_argument("--cores", type=float, nargs="+", default=[0.5, 1.0, 2.0])
    ap.add_argument("-n", type=int, default=8)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    out = Path(__file__).parent / "results" / f"cpu_limits-{int(time.time())}.json"
    out.parent.mkdir(exist_ok=True)
    with daemon_socket(a.socket) as socket:
        res = asyncio.run(run(socket, a.cores, a.n, out))
    if a.json:
        print(json.dumps(res, indent=2))
        return
    print(f"two-thread burner, % of one core (load {res['machine']['load']:.1f}):")
    for name, r in res.items():
        if name == "machine":
            continue
        if r.get("missing"):
            print(f"  {name:28} missing ({r['install']})")
        else:
            print(f"  {name:28} p50 {r['p50']:6.1f}   p95 {r['p95']:6.1f}   (n={r['n']})")


if __name__ == "__main__":
    main()
