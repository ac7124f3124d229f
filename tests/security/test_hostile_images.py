"""Hostile template bases: images whose /etc, /.computesdk, the agent's mount
target, /workspace or /tmp are symlinks to a host directory (or dangle into it),
and images whose layers hold hardlinks. The daemon prepares every template's
root fd by fd: nothing appears, changes mode or changes owner on the host, the
sandbox gets real files of its own, and hardlinks come through as hardlinks."""

from __future__ import annotations

import shutil
import subprocess
import tarfile
from pathlib import Path

import imagekit
import pytest

from computesdk import Client
from conftest import DaemonProcess

pytestmark = pytest.mark.skipif(bool(imagekit.busybox_available()), reason="no static busybox")


def snapshot(d: Path) -> list[tuple[str, int, int, int, int]]:
    out = [("", *_meta(d))]
    out += [(str(p.relative_to(d)), *_meta(p)) for p in d.rglob("*")]
    return sorted(out)


def _meta(p: Path) -> tuple[int, int, int, int]:
    st = p.lstat()
    return st.st_mode, st.st_uid, st.st_size, st.st_nlink


@pytest.mark.parametrize("variant", imagekit.HOSTILE_VARIANTS)
async def test_a_hostile_image_touches_nothing_on_the_host(
    private: tuple[DaemonProcess, Client], trap: Path, tmp_path: Path, variant: str
) -> None:
    _, c = private
    before = snapshot(trap)
    image = imagekit.make_hostile_image(variant, trap)
    imagekit.write_oci_layout(image, tmp_path / "layout")
    built = await c.templates.build(f"hostile-{variant}", base_image=f"oci:{tmp_path / 'layout'}")
    assert built.template.env["HOSTILE"] == variant
    assert snapshot(trap) == before, "the build wrote through the image's links"
    assert not (trap / "pwned").exists() and not (trap / "hosts").exists()

    sb = await c.create("local", template=f"hostile-{variant}")
    try:
        # The agent runs (it was bind-mounted on a real file), and the sandbox's
        # own paths are real: a dir, a file, not links to the host.
        r = await sb.exec(
            "for p in /etc /.computesdk /workspace /tmp; do test -d $p -a ! -L $p || echo bad $p; "
            "done; for p in /etc/hosts /etc/hostname /etc/resolv.conf; do "
            "test -f $p -a ! -L $p || echo bad $p; done; cat /etc/hosts; cat /etc/hostname; "
            "echo ok > /workspace/w && echo ok > /tmp/t && cat /workspace/w /tmp/t"
        )
        assert r.exit_code == 0, r.stderr
        assert "bad" not in r.stdout, r.stdout
        assert "127.0.0.1 localhost" in r.stdout and r.stdout.endswith("ok\nok\n")
        assert "host secret" not in r.stdout
    finally:
        await sb.destroy()
    assert snapshot(trap) == before, "the sandbox reached the host through the image"
    await c.templates.delete(f"hostile-{variant}")


async def test_a_docker_archive_with_hardlinks_is_a_base(
    private: tuple[DaemonProcess, Client], tmp_path: Path
) -> None:
    _, c = private
    imagekit.write_docker_archive(imagekit.make_hardlink_image(), tmp_path / "img.tar", "t/h:1")
    await c.templates.build(
        "hardlinks", base_image=f"docker-archive:{tmp_path / 'img.tar'}", setup=["true"]
    )
    sb = await c.create("local", template="hardlinks")
    stat = "/bin/busybox stat -c '%i %h %F'"
    r = await sb.exec(
        f"{stat} /bin/busybox /bin/sh /bin/cat; {stat} /opt/data /opt/again; "
        f"{stat} /opt/sym /opt/sym-hard; cat /opt/again; /bin/busybox readlink /opt/sym-hard"
    )
    assert r.exit_code == 0, r.stderr
    lines = r.stdout.splitlines()
    bb, sh, cat = (x.split() for x in lines[:3])
    assert bb[0] == sh[0] == cat[0] and int(bb[1]) == 1 + len(imagekit.APPLETS)
    data, again = lines[3].split(), lines[4].split()
    assert data[0] == again[0] and data[1] == "2" and data[2] == "regular"
    sym, sym_hard = lines[5].split(), lines[6].split()
    assert sym[0] == sym_hard[0] and sym[2] == "symbolic"
    assert lines[7:] == ["shared bytes", "data"]
    await sb.destroy()


def _docker_image() -> str:
    from computesdkd.providers.docker.image import IMAGE

    if shutil.which("docker") is None:
        return ""
    found = subprocess.run(["docker", "image", "inspect", IMAGE], capture_output=True)
    return IMAGE if found.returncode == 0 else ""


@pytest.mark.timeout(600)
async def test_the_projects_docker_image_is_a_base(
    private: tuple[DaemonProcess, Client], tmp_path: Path
) -> None:
    """`docker save` of the docker provider's image (Debian: hardlinks in /usr/bin)."""
    image = _docker_image()
    if not image:
        pytest.skip("no docker, or no image (python -m computesdkd.providers.docker.image)")
    _, c = private
    archive = tmp_path / "sandbox.tar"
    subprocess.run(["docker", "save", "-o", str(archive), image], check=True)
    links = _hardlinks_in(archive)
    assert links, "the image was expected to hold hardlinks"
    await c.templates.build("from-docker", base_image=f"docker-archive:{archive}:{image}")
    sb = await c.create("local", template="from-docker")
    name, target = links[0]
    r = await sb.exec(f"stat -c %i /{name} /{target}; python3 -c 'print(6*7)'")
    assert r.exit_code == 0, r.stderr
    a, b, answer = r.stdout.split()
    assert a == b and answer == "42"
    await sb.destroy()


def _hardlinks_in(archive: Path) -> list[tuple[str, str]]:
    out = []
    with tarfile.open(archive) as outer:
        for member in outer:
            if not member.name.endswith(".tar") and "blobs/" not in member.name:
                continue
            f = outer.extractfile(member)
            if f is None:
                continue
            try:
                with tarfile.open(fileobj=f, mode="r|*") as layer:
                    out += [(m.name, m.linkname) for m in layer if m.islnk()]
            except tarfile.TarError:
                continue
    return out
