"""Regenerating the stubs (scripts/gen-protos.sh, which scripts/test.sh runs) while
a CLI runs from the same checkout: the CLI must never find a module missing. It
once did (`ImportError: cannot import name 'events_pb2'`), when generation emptied
the stub dirs before writing them again."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# What the CLI imports on start, and one module of every generated package.
IMPORTS = (
    "import computesdk.cli, computesdk_api.events.v1.events_pb2, "
    "computesdk_api.sandbox.v1.sandbox_pb2_grpc, computesdk_api.errors.v1.errors_pb2"
)


@pytest.mark.skipif(
    not (ROOT / ".tools/node_modules/.bin/buf").exists(), reason="needs scripts/setup.sh --dev"
)
def test_a_cli_starting_during_regeneration_finds_every_module() -> None:
    gen = subprocess.Popen(
        [str(ROOT / "scripts/gen-protos.sh")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    starts = failures = 0
    last = ""
    while gen.poll() is None or starts == 0:
        r = subprocess.run([sys.executable, "-c", IMPORTS], capture_output=True, text=True)
        starts += 1
        if r.returncode != 0:
            failures += 1
            last = r.stderr
    _, err = gen.communicate()
    assert gen.returncode == 0, err
    assert failures == 0, last
