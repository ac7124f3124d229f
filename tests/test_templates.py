"""Templates against the real daemon: predefined ones, custom builds (cache,
logs, failures, cancellation), OCI image bases in every form, and deletion."""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import imagekit
import pytest

from computesdk import (
    BuildLog,
    BuildProgress,
    BuildResult,
    Client,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    TemplateBuildError,
)
from conftest import DaemonProcess
from fakes.asgi import ServerThread

# Only the tests that make an image (imagekit) need a static busybox; the rest build
# on the Debian base.
_NO_BUSYBOX = imagekit.busybox_available()
needs_busybox = pytest.mark.skipif(bool(_NO_BUSYBOX), reason=_NO_BUSYBOX)


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("images")
    image = imagekit.make_image()
    imagekit.write_oci_layout(image, root / "layout", tag="v1")
    imagekit.write_docker_archive(image, root / "image.tar", "test/busybox:v1")
    (root / "digest").write_text(image.digest)
    return root


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[imagekit.Registry]:
    reg = imagekit.Registry(tmp_path_factory.mktemp("registry"))
    reg.start()
    reg.push(imagekit.make_image(), "tests/busybox", "v1")
    try:
        yield reg
    finally:
        reg.stop()


def store(d: DaemonProcess) -> Path:
    return d.state / "local" / "store"


def build_containers(d: DaemonProcess) -> list[str]:
    out = subprocess.run(
        ["runc", "--root", str(d.state / "local" / "runc"), "list", "-q"],
        capture_output=True,
        text=True,
    ).stdout.split()
    return [c for c in out if c.startswith("build-")]


async def test_predefined_templates_are_listed_and_say_why_they_cannot_run(
    private: tuple[DaemonProcess, Client],
) -> None:
    _, c = private
    infos = {t.name: t for t in await c.templates.list()}
    for name in ("base", "python", "python:3.11", "node", "nodejs18", "nextjs", "full-stack-dev"):
        assert name in infos and infos[name].builtin
    assert "GPU" in infos["pytorch-gpu"].unavailable_reason
    with pytest.raises(FailedPreconditionError) as err:
        await c.create("local", template="pytorch-gpu")
    assert err.value.reason == "GPU_UNAVAILABLE" and "GPU" in err.value.message
    with pytest.raises(InvalidArgumentError) as bad:
        await c.templates.build("python", setup=["true"])
    assert bad.value.reason == "TEMPLATE_NAME_RESERVED"
    # nextjs and full-stack-dev are real definitions, built on request by name alone.
    # (The base has npm now: nextjs's recipe needs no packages of its own.)
    assert "build-essential" in infos["full-stack-dev"].packages
    # Built on their first create (the TypeScript suite's spec programs create
    # both): until then they say so.
    for name in ("nextjs", "full-stack-dev"):
        assert "the first create builds it" in infos[name].unavailable_reason
        assert f"template build {name}" in infos[name].unavailable_reason
        with pytest.raises(InvalidArgumentError) as changed:
            await c.templates.build(name, setup=["true"])
        assert changed.value.reason == "TEMPLATE_NAME_RESERVED"
        with pytest.raises(FailedPreconditionError) as kept:
            await c.templates.delete(name)
        assert kept.value.reason == "TEMPLATE_NAME_RESERVED"


async def test_a_custom_template_is_built_once_then_a_cache_hit(
    private: tuple[DaemonProcess, Client],
) -> None:
    d, c = private
    events: list[object] = []
    setup = ["mkdir -p /opt/app && echo built > /opt/app/marker", "echo to-out; echo to-err >&2"]
    first = await c.templates.build(
        "my-app", base_image="template:python", setup=setup, env={"APP_MODE": "test"},
        description="an app", on_event=events.append,
    )  # fmt: skip
    assert not first.cache_hit
    assert "to-out" in first.log and "to-err" in first.log
    assert any(isinstance(e, BuildLog) and e.stderr and e.line == "to-err" for e in events)
    steps = [e for e in events if isinstance(e, BuildProgress)]
    assert steps[0].step == 1 and steps[-1].step == steps[-1].total_steps
    assert isinstance(events[-1], BuildResult)
    t = first.template
    assert t.digest.startswith("sha256:") and t.setup == tuple(setup)
    assert t.env == {"PYTHONUNBUFFERED": "1", "APP_MODE": "test"}
    assert (await c.templates.get("my-app")).description == "an app"
    layers_before = sorted(p.name for p in (store(d) / "layers").iterdir())

    again = await c.templates.build(
        "my-app", base_image="template:python", setup=setup, env={"APP_MODE": "test"}
    )
    assert again.cache_hit and again.template.digest == t.digest and again.log == ()
    assert sorted(p.name for p in (store(d) / "layers").iterdir()) == layers_before

    sb = await c.create("local", template="my-app")
    r = await sb.exec(
        "cat /opt/app/marker; echo $APP_MODE $PYTHONUNBUFFERED; python3 -c 'print(1)'"
    )
    assert r.stdout.split() == ["built", "test", "1", "1"]
    # Hard reset goes back to the template's files, not the Debian base's.
    await sb.exec("rm /opt/app/marker")
    await sb.reset(hard=True)
    assert (await sb.exec("cat /opt/app/marker")).stdout == "built\n"

    rebuilt = await c.templates.build(
        "my-app", base_image="template:python", setup=setup, env={"APP_MODE": "test"},
        no_cache=True,
    )  # fmt: skip
    assert not rebuilt.cache_hit and rebuilt.template.digest == t.digest


async def test_packages_are_installed_with_the_base_package_manager(
    private: tuple[DaemonProcess, Client],
) -> None:
    _, c = private
    r = await c.templates.build("with-tree", packages=["tree"])
    assert any("tree" in line for line in r.log)
    sb = await c.create("local", template="with-tree")
    out = await sb.exec("tree --version && ls /var/lib/apt/lists | wc -l")
    assert out.exit_code == 0 and out.stdout.startswith("tree v")
    assert out.stdout.split()[-1] == "0"  # the index is not kept in the layer
    # Sandboxes still have no network, even though the build had one: the host's
    # resolver, which the build reached, is out of reach.
    resolver = next(
        line.split()[1]
        for line in Path("/etc/resolv.conf").read_text().splitlines()
        if line.startswith("nameserver")
    )
    net = await sb.exec(
        f"python3 -c \"import socket; socket.create_connection(('{resolver}', 53), 2)\"",
        check=False,
    )
    assert net.exit_code != 0
    with pytest.raises(InvalidArgumentError) as bad:
        await c.templates.build("bad-pkg", packages=["tree; rm -rf /"])
    assert bad.value.reason == "BAD_PACKAGE"


async def _check_image_sandbox(c: Client, template: str) -> None:
    sb = await c.create("local", template=template)
    r = await sb.exec(
        "cat /opt/old/fresh.txt; echo $IMAGE_VAR; "
        "test -e /opt/old/stale.txt && echo opaque-broken; "
        "test -e /etc/removed.txt && echo whiteout-broken; "
        "ls -ln /home/owned-by-user; cat /built-here"
    )
    assert r.exit_code == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == "layer two v1" and lines[1] == "from-image"
    assert "broken" not in r.stdout
    assert lines[2].split()[2:4] == ["1000", "1000"]
    assert lines[3] == "in setup"
    await sb.destroy()


@needs_busybox
async def test_base_images_from_a_layout_an_archive_and_a_registry(
    private: tuple[DaemonProcess, Client], image_dir: Path, registry: imagekit.Registry
) -> None:
    d, c = private
    setup = ["echo 'in setup' > /built-here"]
    digest = (image_dir / "digest").read_text()
    oci = await c.templates.build(
        "from-oci", base_image=f"oci:{image_dir / 'layout'}:v1", setup=setup
    )
    assert not oci.cache_hit and oci.template.base_image_digest == digest
    await _check_image_sandbox(c, "from-oci")

    pulled: list[BuildProgress] = []
    reg = await c.templates.build(
        "from-registry", base_image=f"{registry.host}/tests/busybox:v1", setup=setup,
        on_event=lambda e: pulled.append(e) if isinstance(e, BuildProgress) else None,
    )  # fmt: skip
    # The same image by digest: its layers and the build are shared, not redone.
    assert reg.cache_hit and reg.template.digest == oci.template.digest
    assert reg.template.base_image_digest == digest
    assert any("layer 2/2" in p.description for p in pulled)
    await _check_image_sandbox(c, "from-registry")

    archive = await c.templates.build(
        "from-archive", base_image=f"docker-archive:{image_dir / 'image.tar'}", setup=setup
    )
    assert not archive.cache_hit  # an archive's identity is its config, not a manifest
    await _check_image_sandbox(c, "from-archive")
    by_digest = await c.templates.build(
        "by-digest", base_image=f"docker://{registry.host}/tests/busybox@{digest}"
    )
    assert by_digest.template.base_image_digest == digest

    # Deleting one user of the shared layers keeps them for the others.
    await c.templates.delete("from-oci")
    await _check_image_sandbox(c, "from-registry")
    for name in ("from-registry", "from-archive", "by-digest"):
        await c.templates.delete(name)
    built = [
        (e.attributes["template"], e.attributes["cache_hit"])
        async for e in c.events(types=["template.built"], follow=False)
    ]
    assert built == [
        ("from-oci", "false"),
        ("from-registry", "true"),
        ("from-archive", "false"),
        ("by-digest", "false"),  # no setup: another definition, on the same layers
    ]
    deleted = [
        e.attributes["template"] async for e in c.events(types=["template.deleted"], follow=False)
    ]
    assert sorted(deleted) == ["by-digest", "from-archive", "from-oci", "from-registry"]
    assert list((store(d) / "layers").iterdir()) == []
    assert list((store(d) / "blobs" / "sha256").iterdir()) == []


@needs_busybox
async def test_registry_tokens_and_multi_platform_indexes(
    private: tuple[DaemonProcess, Client], registry: imagekit.Registry
) -> None:
    _, c = private
    # An index with an arm64 and an amd64 image: the host's platform is chosen.
    registry.push_index(
        {"linux/arm64": imagekit.make_image("arm"), "linux/amd64": imagekit.make_image("amd")},
        "tests/busybox",
        "multi",
    )
    multi = await c.templates.build("multi", base_image=f"{registry.host}/tests/busybox:multi")
    assert multi.template.env["MARKER"] == "amd"
    assert multi.template.base_image_digest == imagekit.make_image("amd").digest

    # Behind a bearer-token challenge: the token is fetched from the named realm.
    log: list[str] = []
    gates = ServerThread(
        [imagekit.token_gate(registry.host, log), imagekit.token_gate(registry.host, [], True)]
    ).start()
    try:
        authed = await c.templates.build(
            "authed", base_image=f"127.0.0.1:{gates.ports[0]}/tests/busybox:v1"
        )
        assert authed.template.env["MARKER"] == "v1"
        assert log[0] == "401 /v2/tests/busybox/manifests/v1"
        assert log[1].startswith("token ") and "scope=repository%3Atests%2Fbusybox%3Apull" in log[1]
        assert log[2] == "ok /v2/tests/busybox/manifests/v1"
        with pytest.raises(FailedPreconditionError) as denied:
            await c.templates.build(
                "denied", base_image=f"127.0.0.1:{gates.ports[1]}/tests/busybox:v1"
            )
        assert denied.value.reason == "IMAGE_ACCESS_DENIED"
    finally:
        gates.stop()


@needs_busybox
async def test_bad_images_are_refused_and_leave_nothing(
    private: tuple[DaemonProcess, Client], image_dir: Path, registry: imagekit.Registry,
    tmp_path: Path,
) -> None:  # fmt: skip
    d, c = private
    layout = tmp_path / "layout"
    image = imagekit.make_image("corrupt")
    imagekit.write_oci_layout(image, layout)
    imagekit.corrupt_blob(layout, imagekit._digest(image.layers[1][0]))
    with pytest.raises(FailedPreconditionError) as bad:
        await c.templates.build("corrupt", base_image=f"oci:{layout}")
    assert bad.value.reason == "IMAGE_DIGEST_MISMATCH"
    with pytest.raises(NotFoundError) as missing:
        await c.templates.build("missing", base_image=f"{registry.host}/tests/busybox:nope")
    assert missing.value.reason == "IMAGE_NOT_FOUND"
    with pytest.raises(InvalidArgumentError) as ref:
        await c.templates.build("badref", base_image="docker://UPPER/Case")
    assert ref.value.reason == "IMAGE_REFERENCE_INVALID"
    with pytest.raises(NotFoundError):
        await c.templates.get("corrupt")
    assert list((store(d) / "builds").iterdir()) == []
    # The daemon keeps serving.
    assert (await (await c.create("local")).exec("true")).exit_code == 0


async def test_a_failing_step_fails_the_build_with_its_output(
    private: tuple[DaemonProcess, Client],
) -> None:
    d, c = private
    with pytest.raises(TemplateBuildError) as err:
        await c.templates.build("broken", setup=["echo first", "echo about to fail; exit 3"])
    assert err.value.reason == "TEMPLATE_BUILD_FAILED"
    assert "exited with 3" in err.value.message and "about to fail" in err.value.message
    with pytest.raises(NotFoundError):
        await c.templates.get("broken")
    with pytest.raises(NotFoundError) as tnf:
        await c.create("local", template="broken")
    assert tnf.value.reason == "TEMPLATE_NOT_FOUND"
    assert list((store(d) / "builds").iterdir()) == []
    assert build_containers(d) == []


async def test_delete_refuses_a_template_in_use(private: tuple[DaemonProcess, Client]) -> None:
    d, c = private
    await c.templates.build("used", setup=["echo used > /used"])
    sb = await c.create("local", template="used")
    with pytest.raises(FailedPreconditionError) as err:
        await c.templates.delete("used")
    assert err.value.reason == "TEMPLATE_IN_USE" and sb.id in err.value.message
    with pytest.raises(FailedPreconditionError) as builtin:
        await c.templates.delete("python")
    assert builtin.value.reason == "TEMPLATE_NAME_RESERVED"
    await sb.destroy()
    await c.templates.delete("used")
    assert list((store(d) / "layers").iterdir()) == []
    with pytest.raises(NotFoundError):
        await c.templates.delete("used")


async def test_leaving_a_build_cancels_it_and_a_crash_leaves_nothing(
    private: tuple[DaemonProcess, Client],
) -> None:
    d, c = private
    stream = c.templates.build_stream("slow", setup=["echo started; sleep 60"])
    async for event in stream:
        if isinstance(event, BuildLog) and event.line == "started":
            break
    await stream.aclose()  # type: ignore[attr-defined]
    for _ in range(100):
        if not build_containers(d) and not list((store(d) / "builds").iterdir()):
            break
        await asyncio.sleep(0.1)
    assert build_containers(d) == [] and list((store(d) / "builds").iterdir()) == []
    with pytest.raises(NotFoundError):
        await c.templates.get("slow")

    # Killed mid-build: the next daemon frees the container, the mount and the dir.
    stream = c.templates.build_stream("crash", setup=["echo started; sleep 60"])
    async for event in stream:
        if isinstance(event, BuildLog) and event.line == "started":
            break
    d.kill9()
    with contextlib.suppress(Exception):
        await stream.aclose()  # type: ignore[attr-defined]
    assert build_containers(d)
    d.start()
    assert build_containers(d) == []
    assert list((store(d) / "builds").iterdir()) == []
    mounts = Path("/proc/mounts").read_text()
    assert str(store(d) / "builds") not in mounts
    c2 = await Client.connect(socket=d.socket)
    try:
        with pytest.raises(NotFoundError):
            await c2.templates.get("crash")
        r = await c2.templates.build("after-crash", setup=["true"])
        assert r.template.name == "after-crash"
    finally:
        await c2.close()


async def test_templates_survive_a_daemon_restart(private: tuple[DaemonProcess, Client]) -> None:
    d, c = private
    await c.templates.build("durable", setup=["echo kept > /kept"], env={"K": "v"})
    d.stop()
    d.start()
    c2 = await Client.connect(socket=d.socket)
    try:
        t = await c2.templates.get("durable")
        assert t.env == {"K": "v"} and not t.builtin
        sb = await c2.create("local", template="durable")
        assert (await sb.exec("cat /kept; echo $K")).stdout == "kept\nv\n"
        record = json.loads((store(d) / "templates" / "durable.json").read_text())
        assert record["digest"] == t.digest
    finally:
        await c2.close()
