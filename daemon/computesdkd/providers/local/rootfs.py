"""The read-only base root filesystem of local sandboxes.

Built once with mmdebstrap from the Debian recipe docker shares
(common/rootfs_recipe.py), then shifted into the sandboxes' user-namespace range
so that root in a sandbox owns its system files (apt-get install and pip work as
on E2B) while being an unprivileged uid on the host.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

from computesdkd.providers.common.rootfs_recipe import (
    PACKAGES,
    RECIPE_VERSION,
    SUITE,
    mmdebstrap_argv,
)

# Root in a sandbox is this uid on the host; the range holds 65536 ids.
UID_SHIFT = 100_000
ID_RANGE = 65_536

DEFAULT_IMAGE_DIR = Path(os.environ.get("COMPUTESDK_IMAGE_DIR", "/var/lib/computesdk/images"))


def recipe() -> dict[str, object]:
    return {"suite": SUITE, "packages": PACKAGES, "shift": UID_SHIFT, "v": RECIPE_VERSION}


def base_path(image_dir: Path = DEFAULT_IMAGE_DIR) -> Path:
    return image_dir / f"debian-{SUITE}-v{RECIPE_VERSION}"


def is_built(image_dir: Path = DEFAULT_IMAGE_DIR) -> bool:
    marker = base_path(image_dir) / ".computesdk-recipe.json"
    try:
        return bool(json.loads(marker.read_text()) == recipe())
    except (OSError, ValueError):
        return False


def shift_ids(root: Path, shift: int = UID_SHIFT) -> int:
    """Re-owns every file by +shift, keeping setuid/setgid bits that chown clears."""
    count = 0
    paths = [str(root)]
    for dirpath, dirnames, filenames in os.walk(root):
        paths.extend(os.path.join(dirpath, n) for n in (*dirnames, *filenames))
    for path in paths:
        st = os.lstat(path)
        if st.st_uid >= shift:
            continue
        os.lchown(path, st.st_uid + shift, st.st_gid + shift)
        if not stat.S_ISLNK(st.st_mode) and st.st_mode & (stat.S_ISUID | stat.S_ISGID):
            os.chmod(path, stat.S_IMODE(st.st_mode))
        count += 1
    return count


def build(image_dir: Path = DEFAULT_IMAGE_DIR, force: bool = False) -> Path:
    """Builds the base once; later calls are a cache hit."""
    final = base_path(image_dir)
    if is_built(image_dir) and not force:
        return final
    if shutil.which("mmdebstrap") is None:
        raise RuntimeError("mmdebstrap is not installed (apt-get install -y mmdebstrap)")
    image_dir.mkdir(parents=True, exist_ok=True)
    tmp = image_dir / f".build-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    started = time.monotonic()
    _step(f"mmdebstrap {SUITE} with {', '.join(PACKAGES)}")
    subprocess.run(mmdebstrap_argv(str(tmp)), check=True)
    _step("preparing /workspace and sandbox defaults")
    (tmp / "workspace").mkdir(mode=0o755, exist_ok=True)
    (tmp / ".computesdk").mkdir(mode=0o755, exist_ok=True)
    (tmp / ".computesdk" / "agent").touch(mode=0o755)
    (tmp / "etc" / "hostname").write_text("sandbox\n")
    (tmp / "etc" / "hosts").write_text("127.0.0.1 localhost sandbox\n::1 localhost\n")
    (tmp / "etc" / "resolv.conf").unlink(missing_ok=True)
    (tmp / "etc" / "resolv.conf").write_text("")
    _step("shifting file ownership into the sandbox uid range")
    n = shift_ids(tmp)
    (tmp / ".computesdk-recipe.json").write_text(json.dumps(recipe()))
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    _step(f"done: {final} ({n} files re-owned) in {time.monotonic() - started:.1f}s")
    return final


def _step(text: str) -> None:
    print(f"[rootfs] {text}", file=sys.stderr, flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description="Build the local provider's base root filesystem.")
    ap.add_argument("--image-dir", type=Path, default=DEFAULT_IMAGE_DIR)
    ap.add_argument("--force", action="store_true")
    args = ap.parse_args()
    print(build(args.image_dir, args.force))


if __name__ == "__main__":
    main()
