"""Every ErrorInfo.reason the daemon can send is in proto/computesdk/api/errors/v1
(the one list the clients are built from); a new reason without an enum value fails
here."""

from __future__ import annotations

import ast
from pathlib import Path

from computesdk_api.errors.v1 import errors_pb2

DAEMON = Path(__file__).resolve().parent.parent / "daemon" / "computesdkd"
KNOWN = {n.removeprefix("REASON_") for n in errors_pb2.Reason.DESCRIPTOR.values_by_name} - {
    "UNSPECIFIED"
}


def _literal_reasons() -> dict[str, str]:
    """reason="X" passed anywhere, `reason = "X"` class defaults, and the
    (needle, ErrorClass, "X") rows of translation tables."""
    found: dict[str, str] = {}
    for path in DAEMON.rglob("*.py"):
        if "agentpb" in path.parts:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            where = f"{path.relative_to(DAEMON)}:{getattr(node, 'lineno', 0)}"
            if isinstance(node, ast.Call):
                for kw in node.keywords:
                    if kw.arg == "reason" and isinstance(kw.value, ast.Constant):
                        found.setdefault(kw.value.value, where)
            elif isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant):
                if any(isinstance(t, ast.Name) and t.id == "reason" for t in node.targets):
                    found.setdefault(node.value.value, where)
            elif isinstance(node, ast.Tuple) and len(node.elts) == 3:
                _, cls, reason = node.elts
                if (
                    isinstance(cls, ast.Name)
                    and isinstance(reason, ast.Constant)
                    and isinstance(reason.value, str)
                    and reason.value.isupper()
                ):
                    found.setdefault(reason.value, where)
    return found


def test_every_daemon_reason_is_in_the_enum() -> None:
    found = _literal_reasons()
    # Destroy reasons ("timeout", "lost", ...) are event attributes, not error reasons.
    missing = {r: w for r, w in found.items() if r.isupper() and r not in KNOWN}
    assert not missing, f"add these to errors.proto: {missing}"
    assert len(found) > 100  # the scan itself still sees the code


def test_agent_reasons_are_in_the_enum() -> None:
    from computesdkd.domain.errors import AGENT_REASONS

    assert set(AGENT_REASONS) <= KNOWN


def test_python_client_table_is_built_from_the_enum() -> None:
    from computesdk.errors import _BY_REASON

    assert set(_BY_REASON) <= KNOWN
