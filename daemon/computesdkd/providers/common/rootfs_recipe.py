"""The Debian base every sandbox image here starts from: local's root filesystem
(local/rootfs.py) and docker's image (docker/image.py) are built from it."""

from __future__ import annotations

from pathlib import Path

SUITE = "bookworm"
# python-is-python3: `python` is what users type (the spec's Quick Start runs
# `python --version`), as on E2B's and Modal's images. npm: the node templates
# have it (the spec broadcasts `npm --version`); Debian's, from the same signed
# mirror, adds ~175 MB and ~35 s to the one-off base build, nothing to a create.
PACKAGES = [
    "python3",
    "python-is-python3",
    "python3-pip",
    "python3-venv",
    "nodejs",
    "npm",
    "ca-certificates",
    "procps",
]
# Bumped whenever the recipe changes, so a stale cache is rebuilt (setup.sh builds
# the base and docker's image of this version when they are missing).
RECIPE_VERSION = 3


def _apt_sources() -> str:
    for cand in [
        *sorted(Path("/etc/apt/sources.list.d").glob("*.sources")),
        Path("/etc/apt/sources.list"),
    ]:
        if cand.is_file() and cand.stat().st_size > 0:
            return str(cand)
    raise RuntimeError("no apt sources found in /etc/apt; cannot build the base root filesystem")


def mmdebstrap_argv(target: str, *hooks: str) -> list[str]:
    """The one recipe for a Debian base, from the host's own apt sources; target
    "-" writes a tarball to stdout."""
    hook_args = [f"--customize-hook={h}" for h in hooks]
    return [
        "mmdebstrap",
        "--variant=minbase",
        "--include=" + ",".join(PACKAGES),
        *hook_args,
        SUITE,
        target,
        _apt_sources(),
    ]
