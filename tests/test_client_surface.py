"""The idiomatic client wraps every RPC of every service (drift test)."""

from __future__ import annotations

import re
from pathlib import Path

import computesdk
from computesdk.api.events.v1 import events_pb2
from computesdk.api.filesystem.v1 import filesystem_pb2
from computesdk.api.process.v1 import process_pb2
from computesdk.api.provider.v1 import provider_pb2
from computesdk.api.sandbox.v1 import sandbox_pb2


def test_every_rpc_is_wrapped() -> None:
    source = "".join(p.read_text() for p in Path(computesdk.__file__).parent.glob("*.py"))
    called = set(re.findall(r"\.([A-Z][A-Za-z]+)\(", source))
    missing = []
    for mod in (sandbox_pb2, process_pb2, filesystem_pb2, events_pb2, provider_pb2):
        for svc in mod.DESCRIPTOR.services_by_name.values():
            missing += [f"{svc.name}.{m.name}" for m in svc.methods if m.name not in called]
    assert missing == []


def test_public_surface() -> None:
    assert {"compute", "connect", "Client", "Sandbox", "ExecResult", "ComputeSDKError"} <= set(
        computesdk.__all__
    )
    for name in computesdk.__all__:
        assert hasattr(computesdk, name), name
