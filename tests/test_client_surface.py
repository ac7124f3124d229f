"""The idiomatic client wraps every RPC of every service (drift test)."""

from __future__ import annotations

import importlib
import pkgutil
import re
from pathlib import Path

import computesdk
import computesdk_api


def _service_modules() -> list[object]:
    """Every generated *_pb2 module, so that a new service cannot be missed."""
    names = [
        m.name
        for m in pkgutil.walk_packages(computesdk_api.__path__, "computesdk_api.")
        if m.name.endswith("_pb2")
    ]
    return [importlib.import_module(n) for n in sorted(names)]


def test_every_rpc_is_wrapped_and_takes_the_one_call_path() -> None:
    source = "".join(p.read_text() for p in Path(computesdk.__file__).parent.glob("*.py"))
    wrapped = set(re.findall(r"_rpc\.(?:call|stream)\(\s*[\w.]+\.([A-Z][A-Za-z]+),", source))
    called_directly = set(re.findall(r"\.([A-Z][A-Za-z]+)\(", source))
    missing, bypassing, total = [], [], 0
    for mod in _service_modules():
        for svc in mod.DESCRIPTOR.services_by_name.values():  # type: ignore[attr-defined]
            total += len(svc.methods)
            missing += [f"{svc.name}.{m.name}" for m in svc.methods if m.name not in wrapped]
            bypassing += [f"{svc.name}.{m.name}" for m in svc.methods if m.name in called_directly]
    assert total >= 55
    assert missing == []
    # A stub called directly would raise grpc's errors, untyped, and skip the path.
    assert bypassing == []


def test_public_surface() -> None:
    assert {"compute", "connect", "Client", "Sandbox", "ExecResult", "ComputeSDKError"} <= set(
        computesdk.__all__
    )
    for name in computesdk.__all__:
        assert hasattr(computesdk, name), name
