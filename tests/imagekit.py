"""Makes small OCI images for the template tests, in each form a base image comes
in: an OCI image layout, a `docker save` tarball, and a registry (Debian's
docker-registry, pushed to over the distribution API).

The image: a static busybox and its applets in a first layer; a second, gzip
layer that deletes a file of the first (a whiteout), replaces a directory's
contents (an opaque dir) and adds one. Its config sets env.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import socket
import subprocess
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

BUSYBOX = Path("/bin/busybox")
APPLETS = ["sh", "cat", "echo", "ls", "env", "test", "mkdir", "rm", "sleep", "true", "id"]
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"
LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"


def busybox_available() -> str:
    """Empty when the test image can be made here, else why not."""
    if not BUSYBOX.is_file():
        return "no /bin/busybox (apt-get install -y busybox-static)"
    out = subprocess.run(["ldd", str(BUSYBOX)], capture_output=True, text=True)
    if "not a dynamic executable" not in (out.stdout + out.stderr):
        return "/bin/busybox is not static (apt-get install -y busybox-static)"
    return ""


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _tar(entries: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in entries:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def _entry(name: str, kind: bytes = tarfile.REGTYPE, data: bytes = b"", mode: int = 0o644,
           link: str = "", uid: int = 0) -> tuple[tarfile.TarInfo, bytes | None]:  # fmt: skip
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    info.uid = info.gid = uid
    info.mtime = 1_700_000_000
    if kind == tarfile.REGTYPE:
        info.size = len(data)
        return info, data
    info.linkname = link
    return info, None


@dataclass
class Image:
    layers: list[tuple[bytes, str]]  # (blob, media type)
    config: bytes
    manifest: bytes

    @property
    def digest(self) -> str:
        return _digest(self.manifest)


def make_image(marker: str = "v1") -> Image:
    d, r = tarfile.DIRTYPE, tarfile.REGTYPE
    first = [
        _entry("bin", d, mode=0o755),
        _entry("bin/busybox", r, BUSYBOX.read_bytes(), 0o755),
        *[_entry(f"bin/{a}", tarfile.SYMTYPE, link="busybox", mode=0o777) for a in APPLETS],
        _entry("etc", d, mode=0o755),
        _entry(
            "etc/passwd", r, b"root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000::/home:/bin/sh\n"
        ),
        _entry("etc/removed.txt", r, b"the second layer deletes me\n"),
        _entry("opt", d, mode=0o755),
        _entry("opt/old", d, mode=0o755),
        _entry("opt/old/stale.txt", r, b"hidden by an opaque dir\n"),
        _entry("home", d, mode=0o755, uid=1000),
        _entry("home/owned-by-user", r, b"uid 1000\n", uid=1000),
    ]
    second = [
        _entry("etc/.wh.removed.txt", r),
        _entry("opt/old", d, mode=0o755),
        _entry("opt/old/.wh..wh..opq", r),
        _entry("opt/old/fresh.txt", r, f"layer two {marker}\n".encode()),
    ]
    plain = _tar(first)
    second_tar = _tar(second)
    zipped = gzip.compress(second_tar, mtime=0)
    env = ["PATH=/bin", "IMAGE_VAR=from-image", f"MARKER={marker}"]
    return _image([(plain, LAYER_TAR), (zipped, LAYER_GZIP)], [plain, second_tar], env)


def _busybox() -> list[tuple[tarfile.TarInfo, bytes | None]]:
    return [
        _entry("bin", tarfile.DIRTYPE, mode=0o755),
        _entry("bin/busybox", tarfile.REGTYPE, BUSYBOX.read_bytes(), 0o755),
        *[_entry(f"bin/{a}", tarfile.SYMTYPE, link="busybox", mode=0o777) for a in APPLETS],
    ]


# What a hostile image points at the host: each variant replaces one of the paths
# the daemon prepares in every template (/etc and its files, /.computesdk and the
# agent's mount target, /workspace, /tmp) by a symlink into trap, a host dir.
HOSTILE_VARIANTS = ("etc", "computesdk", "agent", "files")


def make_hostile_image(variant: str, trap: Path) -> Image:
    d, r, s = tarfile.DIRTYPE, tarfile.REGTYPE, tarfile.SYMTYPE
    passwd = _entry("etc/passwd", r, b"root:x:0:0:root:/root:/bin/sh\n")
    entries = {
        "etc": [_entry("etc", s, link=str(trap), mode=0o777)],
        "computesdk": [_entry("etc", d, mode=0o755), passwd,
                       _entry(".computesdk", s, link=str(trap), mode=0o777)],
        "agent": [_entry("etc", d, mode=0o755), passwd, _entry(".computesdk", d, mode=0o755),
                  _entry(".computesdk/agent", s, link=f"{trap}/pwned", mode=0o777)],
        "files": [_entry("etc", d, mode=0o755), passwd,
                  _entry("etc/hosts", s, link=f"{trap}/hosts", mode=0o777),
                  _entry("etc/hostname", s, link=f"{trap}/secret", mode=0o777),
                  _entry("etc/resolv.conf", d, mode=0o755),
                  _entry("workspace", s, link=str(trap), mode=0o777),
                  _entry("tmp", s, link=str(trap), mode=0o777)],
    }[variant]  # fmt: skip
    layer = _tar(_busybox() + entries)
    return _image([(layer, LAYER_TAR)], [layer], ["PATH=/bin", f"HOSTILE={variant}"])


def make_hardlink_image() -> Image:
    """Busybox with its applets as hardlinks (as Debian's images hold /usr/bin/perl
    and friends), a hardlinked pair of data files, and one to a symlink."""
    d, r = tarfile.DIRTYPE, tarfile.REGTYPE
    layer = _tar(
        [
            _entry("bin", d, mode=0o755),
            _entry("bin/busybox", r, BUSYBOX.read_bytes(), 0o755),
            *[_entry(f"bin/{a}", tarfile.LNKTYPE, link="bin/busybox") for a in APPLETS],
            _entry("etc", d, mode=0o755),
            _entry("etc/passwd", r, b"root:x:0:0:root:/root:/bin/sh\n"),
            _entry("opt", d, mode=0o755),
            _entry("opt/data", r, b"shared bytes\n", 0o640),
            _entry("opt/again", tarfile.LNKTYPE, link="opt/data"),
            _entry("opt/sym", tarfile.SYMTYPE, link="data", mode=0o777),
            _entry("opt/sym-hard", tarfile.LNKTYPE, link="opt/sym"),
        ]
    )
    return _image([(layer, LAYER_TAR)], [layer], ["PATH=/bin"])


def _image(layers: list[tuple[bytes, str]], diffs: list[bytes], env: list[str]) -> Image:
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": {"Env": env},
            "rootfs": {"type": "layers", "diff_ids": [_digest(x) for x in diffs]},
        }
    ).encode()
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": _digest(config), "size": len(config)},
            "layers": [{"mediaType": m, "digest": _digest(b), "size": len(b)} for b, m in layers],
        }
    ).encode()
    return Image(layers, config, manifest)


def write_oci_layout(image: Image, root: Path, tag: str = "latest") -> None:
    blobs = root / "blobs" / "sha256"
    blobs.mkdir(parents=True, exist_ok=True)
    for data in [image.config, image.manifest, *(b for b, _ in image.layers)]:
        (blobs / _digest(data)[7:]).write_bytes(data)
    (root / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
    index = {
        "schemaVersion": 2,
        "manifests": [
            {
                "mediaType": OCI_MANIFEST,
                "digest": image.digest,
                "size": len(image.manifest),
                "annotations": {"org.opencontainers.image.ref.name": tag},
            }
        ],
    }
    (root / "index.json").write_text(json.dumps(index))


def write_docker_archive(image: Image, path: Path, repo_tag: str = "test/busybox:latest") -> None:
    """As `docker save` writes it: manifest.json, the config by image id, layer tars."""
    files: list[tuple[str, bytes]] = []
    layer_names = []
    for blob, media in image.layers:
        raw = gzip.decompress(blob) if media == LAYER_GZIP else blob
        name = f"{_digest(raw)[7:]}/layer.tar"
        layer_names.append(name)
        files.append((name, raw))
    config_name = f"{_digest(image.config)[7:]}.json"
    files.append((config_name, image.config))
    manifest = [{"Config": config_name, "RepoTags": [repo_tag], "Layers": layer_names}]
    files.append(("manifest.json", json.dumps(manifest).encode()))
    with tarfile.open(path, "w") as tar:
        for name, data in files:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


class Registry:
    """Debian's docker-registry on a free loopback port, storing under root."""

    def __init__(self, root: Path) -> None:
        self.root = root
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.host = f"127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        config = self.root / "config.yml"
        config.write_text(
            "version: 0.1\n"
            "log:\n  level: warn\n"
            f"storage:\n  filesystem:\n    rootdirectory: {self.root / 'data'}\n"
            f"http:\n  addr: {self.host}\n"
        )
        exe = shutil.which("docker-registry") or "/usr/bin/docker-registry"
        with (self.root / "registry.log").open("wb") as log:
            self.proc = subprocess.Popen([exe, "serve", str(config)], stdout=log, stderr=log)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://{self.host}/v2/", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(
            f"docker-registry did not start: {(self.root / 'registry.log').read_text()}"
        )

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)

    def push_index(self, images: dict[str, Image], repo: str, tag: str) -> None:
        """A multi-platform image: each manifest by digest, then an OCI index naming
        them by platform ("linux/arm64": image, ...)."""
        entries = []
        for platform, image in images.items():
            self.push(image, repo, image.digest)
            os_, arch = platform.split("/")
            entries.append(
                {
                    "mediaType": OCI_MANIFEST,
                    "digest": image.digest,
                    "size": len(image.manifest),
                    "platform": {"os": os_, "architecture": arch},
                }
            )
        index = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries})
        put = httpx.put(
            f"http://{self.host}/v2/{repo}/manifests/{tag}",
            content=index.encode(),
            headers={"Content-Type": OCI_INDEX},
        )
        assert put.status_code == 201, put.text

    def push(self, image: Image, repo: str, tag: str) -> None:
        """A monolithic upload per blob (POST, then PUT ?digest=), then the manifest."""
        base = f"http://{self.host}/v2/{repo}"
        with httpx.Client(timeout=30) as http:
            for data in [image.config, *(b for b, _ in image.layers)]:
                start = http.post(f"{base}/blobs/uploads/")
                assert start.status_code == 202, start.text
                location = start.headers["location"]
                if location.startswith("/"):
                    location = f"http://{self.host}{location}"
                sep = "&" if "?" in location else "?"
                done = http.put(
                    f"{location}{sep}digest={_digest(data)}",
                    content=data,
                    headers={"Content-Type": "application/octet-stream"},
                )
                assert done.status_code == 201, done.text
            put = http.put(
                f"{base}/manifests/{tag}",
                content=image.manifest,
                headers={"Content-Type": OCI_MANIFEST},
            )
            assert put.status_code == 201, put.text


def corrupt_blob(layout: Path, digest: str) -> None:
    path = layout / "blobs" / "sha256" / digest[7:]
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    os.utime(path)


TOKEN = "t0k3n-for-tests"


def token_gate(upstream: str, log: list[str], deny: bool = False) -> Any:
    """An ASGI app in front of a registry that wants a bearer token, as Docker Hub
    and most registries do: /v2/ answers 401 with a WWW-Authenticate challenge
    until the client fetches a token from the realm it names and sends it. With
    deny, the token it hands out is never accepted."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        host, port = scope["server"]
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        path, query = scope["path"], scope["query_string"].decode()
        if path == "/token":
            log.append(f"token {query}")
            await _send(send, 200, json.dumps({"token": "wrong" if deny else TOKEN}).encode())
            return
        if headers.get("authorization") != f"Bearer {TOKEN}":
            log.append(f"401 {path}")
            challenge = (
                f'Bearer realm="http://{host}:{port}/token",service="tests",'
                f'scope="repository:tests/busybox:pull"'
            )
            await _send(send, 401, b"{}", {"www-authenticate": challenge})
            return
        log.append(f"ok {path}")
        async with httpx.AsyncClient() as http:
            up = await http.get(
                f"http://{upstream}{path}", headers={"accept": headers.get("accept", "*/*")}
            )
        keep = {"content-type", "docker-content-digest"}
        await _send(
            send, up.status_code, up.content, {k: v for k, v in up.headers.items() if k in keep}
        )

    return app


async def _send(send: Any, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
    hdrs = [(b"content-length", str(len(body)).encode())]
    hdrs += [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": hdrs})
    await send({"type": "http.response.body", "body": body})
