"""The benchmark harness runs end to end with tiny iterations, so it cannot rot.
Its figures are not judged here: targets live in bench/, never in unit tests."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_harness_smoke(tmp_path: Path) -> None:
    r = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "run.py"), "--quick", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(next(tmp_path.glob("bench-*.json")).read_text())
    for key in ("tti_sequential", "tti_burst", "tti_staggered"):
        assert res[key]["success"] == 1.0 and res[key]["p50"] > 0
    assert res["stdout"]["intact"] and res["exec_true"]["p50"] > 0
    assert res["floor"]["unary"]["p50"] > 0 and res["floor"]["stream_mb_per_s"] > 0
    assert set(res["peers"]) >= {"bwrap node -v", "runc run node -v"}
    assert "exec `true`" in r.stdout  # the table was printed
