"""Builds the docker provider's base image locally: no registry is needed.

The Debian recipe the local provider's root filesystem is built from
(common/rootfs_recipe.py), written by mmdebstrap as a tarball and imported
through the Engine API.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import AsyncIterator

from computesdkd.providers.common.rootfs_recipe import RECIPE_VERSION, SUITE, mmdebstrap_argv
from computesdkd.providers.docker.engine import Engine, socket_path

IMAGE = f"computesdk/sandbox:{SUITE}-v{RECIPE_VERSION}"


async def exists(engine: Engine, image: str = IMAGE) -> bool:
    resp = await engine.request("GET", f"/images/{image}/json", "image inspect", ok=(404,))
    return resp.status_code == 200


async def build(engine: Engine, image: str = IMAGE, force: bool = False) -> str:
    if not force and await exists(engine, image):
        return image
    print(f"[docker-image] building {image} with mmdebstrap", file=sys.stderr, flush=True)
    proc = await asyncio.create_subprocess_exec(
        *mmdebstrap_argv("-", 'mkdir -p "$1/workspace"'), stdout=asyncio.subprocess.PIPE
    )
    assert proc.stdout is not None
    out = proc.stdout

    async def tarball() -> AsyncIterator[bytes]:
        while chunk := await out.read(1 << 20):
            yield chunk

    repo, tag = image.rsplit(":", 1)
    params = {
        "fromSrc": "-",
        "repo": repo,
        "tag": tag,
        "changes": ["WORKDIR /workspace", "ENV LANG=C.UTF-8"],
    }
    await engine.request(
        "POST",
        "/images/create",
        "image import",
        params=params,
        content=tarball(),
        headers={"Content-Type": "application/x-tar"},
        timeout=600,
    )
    if await proc.wait() != 0:
        raise RuntimeError("mmdebstrap failed")
    print(f"[docker-image] done: {image}", file=sys.stderr, flush=True)
    return image


def main() -> None:
    ap = argparse.ArgumentParser(description="Build the docker provider's base image.")
    ap.add_argument("--force", action="store_true")
    a = ap.parse_args()

    async def run() -> None:
        # A command of its own, so its own environment (the provider has its config).
        engine = Engine(socket_path(os.environ.get("DOCKER_HOST", "")))
        try:
            await engine.negotiate_version()
            print(await build(engine, force=a.force))
        finally:
            await engine.close()

    asyncio.run(run())


if __name__ == "__main__":
    main()
