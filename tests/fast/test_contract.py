"""The provider contract: capabilities follow from what a back end implements, and a
missing feature is refused naming the provider and the feature."""

from __future__ import annotations

import pytest

from computesdkd.domain.errors import Unsupported
from computesdkd.domain.model import Command, Probe, Sandbox
from computesdkd.providers import base, builtin, get_factory
from computesdkd.providers import capabilities as caps
from computesdkd.providers.base import ProviderConfig

assert builtin  # registers the back ends

# What each back end reports. A change here is a change to ListProviders: it must
# come from a back end gaining or losing an interface, never from a list kept by hand.
EXPECTED = {
    "local": {
        "events", "events.out-of-memory", "exec", "exec.resume", "exec.stdin", "filesystem",
        "lifecycle.reset", "lifecycle.reset.hard", "lifecycle.restart", "network.isolation",
        "network.port-forward", "network.shared", "process.background", "process.signal",
        "resources.disk", "resources.limits", "resources.live-limits", "resources.usage",
        "snapshots", "templates.build", "volumes",
    },
    "docker": {
        "events", "exec", "exec.stdin", "filesystem", "network.isolation", "process.signal",
        "resources.limits", "resources.live-limits", "resources.usage",
    },
    "e2b": {
        "events", "exec", "exec.stdin", "filesystem", "network.preview-url", "process.signal",
        "resources.usage",
    },
    "vercel": {
        "events", "exec", "exec.resume", "exec.stdin", "filesystem", "network.preview-url",
        "process.background", "process.signal", "resources.limits", "resources.usage",
    },
    "daytona": {
        "events", "exec", "exec.resume", "filesystem", "network.preview-url",
        "process.background", "resources.disk", "resources.limits", "resources.usage",
    },
    "modal": {
        "events", "exec", "exec.resume", "exec.stdin", "filesystem", "network.isolation",
        "network.preview-url", "process.background", "resources.limits", "resources.usage",
        "snapshots",
    },
    "kubernetes": {
        "events", "events.out-of-memory", "exec", "exec.resume", "exec.stdin", "filesystem",
        "process.background", "process.signal", "resources.limits", "resources.usage",
    },
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_capabilities_are_derived_from_the_implementation(name: str) -> None:
    factory = get_factory(name)
    assert factory is not None
    assert factory(ProviderConfig(name)).capabilities == frozenset(EXPECTED[name])


class _Bare(base.Provider):
    name = "bare"
    why_not = {"snapshots": "it keeps nothing"}

    async def create(self, sandbox: Sandbox) -> None: ...

    async def destroy(self, sandbox: Sandbox, graceful_timeout_s: float = 0.0) -> None: ...

    async def adopt(self, sandbox: Sandbox) -> bool:
        return False

    async def probe(self, sandbox: Sandbox) -> Probe:
        return Probe(alive=True)

    def run(
        self, sandbox: Sandbox, command: Command, *, tag: str = "", kill_on_close: bool = True
    ) -> base.ProcessRun:
        raise NotImplementedError


def test_a_bare_provider_can_only_run_commands() -> None:
    assert _Bare().capabilities == caps.ALWAYS
    with pytest.raises(Unsupported) as e:
        caps.require(_Bare(), caps.Snapshots, "snapshots")
    assert e.value.reason == "FEATURE_UNSUPPORTED"
    assert e.value.metadata == {"provider": "bare", "feature": "snapshots"}
    assert "it keeps nothing" in e.value.message


def test_a_trait_cannot_claim_what_only_an_interface_gives() -> None:
    class Boasting(_Bare):
        traits = frozenset({caps.SNAPSHOTS})

    with pytest.raises(TypeError, match="not traits"):
        _ = Boasting().capabilities
