"""The spec's templates against the real daemon: its predefined names, GPU names,
inline definitions on Hub base images with no registry (pip and npm packages by
the base), and a repeat build of one definition as a cache hit."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from computesdk import (
    BuildProgress,
    BuildResult,
    Client,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    UnavailableError,
    _rpc,
)
from computesdk_api.template.v1 import template_pb2 as pb
from computesdkd.providers.common.templates import local_base, packages_by
from conftest import DaemonProcess, new_daemon

PYTHON_NAMES = ("python", "python:3.11", "python3.11.x")
NODE_NAMES = ("node", "nodejs", "nodejs18", "nodejs18.x")
GPU_NAMES = ("pytorch-gpu", "pytorch", "gpu-ml", "python-gpu")


@pytest_asyncio.fixture
async def no_hub() -> AsyncIterator[tuple[DaemonProcess, Client]]:
    """A daemon of its own that reaches no registry but loopback (as on a host with
    none): its HTTPS goes to a proxy port nothing listens on."""
    d = new_daemon()
    d.env.update(
        HTTPS_PROXY="http://127.0.0.1:9",
        https_proxy="http://127.0.0.1:9",
        NO_PROXY="localhost,127.0.0.1",
        no_proxy="localhost,127.0.0.1",
    )
    d.start()
    c = await Client.connect(socket=d.socket)
    try:
        yield d, c
    finally:
        for sb in await c.list():
            await sb.destroy()
        await c.close()
        d.cleanup()


async def test_the_spec_template_names_run_and_node_ones_have_npm(client: Client) -> None:
    listed = {t.name: t for t in await client.templates.list(provider="local")}
    for name in (*PYTHON_NAMES, *NODE_NAMES):
        assert listed[name].builtin and not listed[name].unavailable_reason
        sb = await client.create("local", template=name)
        try:
            if name in NODE_NAMES:
                r = await sb.exec("node --version && npm --version")
                assert r.stdout.startswith("v18."), r
                assert r.stdout.splitlines()[1].split(".")[0].isdigit()
            else:
                r = await sb.exec("python --version")
                assert r.stdout.startswith("Python 3.11"), r
        finally:
            await sb.destroy()


async def test_docker_has_the_same_names_on_the_same_base(client: Client) -> None:
    sb = await client.create("docker", template="nodejs18.x")
    try:
        r = await sb.exec("python --version && node --version && npm --version")
        _, python, node, npm = r.stdout.split()
        assert python.startswith("3.11.") and node.startswith("v18.") and npm[0].isdigit()
    finally:
        await sb.destroy()


@pytest.mark.parametrize("provider", ["local", "docker"])
async def test_gpu_names_fail_gpu_unavailable_and_placeholders_not_found(
    client: Client, provider: str
) -> None:
    for name in GPU_NAMES:
        with pytest.raises(FailedPreconditionError) as e:
            await client.create(provider, template=name)
        assert e.value.reason == "GPU_UNAVAILABLE", name
        assert e.value.metadata["template"] == name and "GPU" in e.value.message
    with pytest.raises(NotFoundError) as nf:
        await client.create(provider, template="different-template")
    assert nf.value.reason == "TEMPLATE_NOT_FOUND"


async def test_an_inline_python_template_without_a_registry(
    no_hub: tuple[DaemonProcess, Client],
) -> None:
    _, c = no_hub
    steps: list[str] = []

    def seen(e: object) -> None:
        if isinstance(e, BuildProgress):
            steps.append(e.description)

    async def build(env: dict[str, str]) -> BuildResult:
        # The spec's customTemplate, with small packages (its own: numpy, pandas,
        # scikit-learn, checked by hand: README, Templates).
        return await c.templates.build(
            "my-python-env",
            base_image="python:3.11-slim",
            packages=["six", "idna>=3"],
            env=env,
            on_event=seen,
        )

    first = await build({"PYTHONPATH": "/app", "NODE_ENV": "development"})
    assert not first.cache_hit
    assert any("no registry answers" in s and "local Debian" in s for s in steps)
    assert any("installing with pip: six, idna>=3" in s for s in steps)
    sb = await c.create("local", template="my-python-env")
    r = await sb.exec(
        "python -c 'import six, idna; print(six.__name__, idna.__name__)'; "
        'echo "$PYTHONPATH $NODE_ENV"'
    )
    assert r.stdout.splitlines() == ["six idna", "/app development"], r

    # The client builds again before each create: the same definition runs nothing.
    steps.clear()
    again = await build({"PYTHONPATH": "/app", "NODE_ENV": "development"})
    assert again.cache_hit and again.template.digest == first.template.digest
    assert steps[-1].startswith("cache hit")
    assert not any(s.startswith("installing") for s in steps)

    # Another definition under the name is built anew and replaces it.
    changed = await build({"PYTHONPATH": "/srv"})
    assert not changed.cache_hit and changed.template.digest != first.template.digest
    sb2 = await c.create("local", template="my-python-env")
    assert (await sb2.exec('echo "$PYTHONPATH"')).stdout == "/srv\n"
    events = c.events(types=["template.built"], follow=False)
    assert [e.attributes["cache_hit"] async for e in events] == ["false", "true", "false"]


async def test_a_repeat_build_does_not_wait_for_a_running_one(
    no_hub: tuple[DaemonProcess, Client],
) -> None:
    _, c = no_hub
    done = await c.templates.build("ready", base_image="template:python", env={"A": "1"})
    started = asyncio.Event()

    async def long_build() -> None:
        async for e in c.templates.build_stream("slow", setup=["sleep 600"]):
            if isinstance(e, BuildProgress) and e.description.startswith("setup"):
                started.set()

    slow = asyncio.create_task(long_build())
    try:
        await asyncio.wait_for(started.wait(), 120)
        # (Without the fast path this waits the slow build's 600 s out: bounded here.)
        again = await asyncio.wait_for(
            c.templates.build("ready", base_image="template:python", env={"A": "1"}), 300
        )
        assert again.cache_hit and again.template.digest == done.template.digest
        assert not slow.done()  # the other build still holds the builder
    finally:
        slow.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await slow


async def test_an_inline_node_template_installs_npm_packages(
    no_hub: tuple[DaemonProcess, Client],
) -> None:
    _, c = no_hub
    r = await c.templates.build("my-node-env", base_image="node:18", packages=["is-number"])
    assert r.template.env["NODE_PATH"] == "/usr/local/lib/node_modules"
    sb = await c.create("local", template="my-node-env")
    out = await sb.exec("node -e \"console.log(require('is-number')(5))\"")
    assert out.stdout == "true\n", out


async def test_hub_images_the_local_base_lacks_fail_clearly(
    no_hub: tuple[DaemonProcess, Client],
) -> None:
    _, c = no_hub
    for ref in ("python:3.12-slim", "node:20"):
        with pytest.raises(FailedPreconditionError) as e:
            await c.templates.build("too-new", base_image=ref)
        assert e.value.reason == "BASE_IMAGE_UNAVAILABLE"
        assert "python:3.11" in e.value.message and "oci:PATH" in e.value.message
    # Any other image still needs its registry, which may come back.
    with pytest.raises(UnavailableError) as u:
        await c.templates.build("other", base_image="ubuntu:22.04")
    assert u.value.reason == "REGISTRY_UNAVAILABLE"


async def _build_raw(c: Client, definition: pb.TemplateDefinition) -> pb.BuildResult:
    """BuildTemplate as any gRPC client calls it (package_manager included)."""
    last = pb.BuildTemplateResponse()
    req = pb.BuildTemplateRequest(definition=definition)
    async for resp in _rpc.stream(c.template_stub.BuildTemplate, req):
        last = resp
    return last.result


async def test_package_manager_chooses_explicitly(client: Client) -> None:
    # pip on the Debian base, where auto would mean apt.
    r = await _build_raw(
        client, pb.TemplateDefinition(name="pip-on-base", packages=["six"], package_manager="pip")
    )
    assert r.template.definition.package_manager == "pip"
    sb = await client.create("local", template="pip-on-base")
    try:
        assert (await sb.exec("python -c 'import six'")).exit_code == 0
    finally:
        await sb.destroy()
        await client.templates.delete("pip-on-base")
    with pytest.raises(InvalidArgumentError) as bad:
        await _build_raw(client, pb.TemplateDefinition(name="x", package_manager="yum"))
    assert bad.value.reason == "TEMPLATE_DEFINITION_INVALID"


def test_the_hub_names_the_local_base_stands_in_for() -> None:
    mapped = {
        "python:3.11-slim": "pip",
        "python:3.11.9-slim-bookworm": "pip",
        "docker.io/library/python:3": "pip",
        "docker://python": "pip",
        "node:18": "npm",
        "node:18.19-bookworm-slim": "npm",
        "debian:bookworm-slim": "apt",
        "debian:12": "apt",
    }
    for ref, kind in mapped.items():
        assert local_base(ref) == kind, ref
    for ref in ("python:3.12-slim", "node:20", "ubuntu:22.04", "localhost:5000/python:3.11",
                "python@sha256:" + "0" * 64, "debian:trixie"):  # fmt: skip
        assert local_base(ref) is None, ref
    assert packages_by("localhost:5000/team/python:3.12") == "pip"
    assert packages_by("template:nodejs18.x") == "npm"
    assert packages_by("localhost:5000/tests/busybox:v1") == "apt"
