"""The clients install on their own: `pip install ./clients/python` brings the
stubs and gRPC, never the daemon or what only the daemon needs; and each client
installs from the clone as README.md says, and works against a daemon."""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from computesdk.sync import SyncClient
from conftest import DaemonProcess

ROOT = Path(__file__).resolve().parent.parent
DAEMON_ONLY = {"computesdkd", "httpx", "structlog", "websockets", "prometheus-client"}


def _resolved(*paths: str) -> set[str]:
    """What pip would install into an empty environment for these projects."""
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--dry-run",
            "--ignore-installed",
            "--quiet",
            "--disable-pip-version-check",
            "--report",
            "-",
            *paths,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    ).stdout
    return {i["metadata"]["name"].lower() for i in json.loads(out)["install"]}


def test_client_install_pulls_in_no_daemon() -> None:
    names = _resolved("./clients/python-api", "./clients/python")
    assert {"computesdk", "computesdk-api", "grpcio", "protobuf"} <= names
    assert not names & DAEMON_ONLY, names & DAEMON_ONLY


def test_daemon_install_does_not_need_the_client() -> None:
    names = _resolved("./clients/python-api", "./daemon")
    assert {"computesdkd", "computesdk-api", "structlog"} <= names
    assert "computesdk" not in names


# Each client installs from the clone the way README.md says: the tests below run
# README's install commands as written (its /path/to/computesdk made this checkout)
# into empty projects, then call a test daemon through what they installed.
README = ROOT / "README.md"
CLONE = "/path/to/computesdk"
GO = shutil.which("go") or "/usr/local/go/bin/go"


def _readme_block(after: str, lang: str) -> str:
    """The first ```lang block in README.md after the line starting with `after`."""
    text = README.read_text()
    start = text.index("\n" + after)
    m = re.compile(rf"^```{lang}\n(.*?)^```$", re.M | re.S).search(text, start)
    assert m, f"no ```{lang} block after {after!r} in README.md"
    return m.group(1)


def _npm_project(tmp_path: Path) -> Path:
    project = tmp_path / "project"
    project.mkdir()
    (project / "package.json").write_text(
        json.dumps({"name": "scratch", "private": True, "type": "module"})
    )
    return project


def _npm_env() -> dict[str, str]:
    # Our packages come from the tarballs npm pack makes; only their dependencies
    # may come from the registry, and npm's cache has them.
    return {**os.environ, "npm_config_prefer_offline": "true", "npm_config_audit": "false",
            "npm_config_fund": "false", "npm_config_update_notifier": "false"}  # fmt: skip


def _run_readme(block: str, clone: Path, cwd: Path, env: dict[str, str]) -> None:
    """Runs a README shell block with the clone's placeholder made `clone`."""
    assert CLONE in block, block
    script = "set -euxo pipefail\n" + block.replace(CLONE, str(clone))
    out = subprocess.run(
        ["bash", "-c", script], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.timeout(600)
def test_python_client_installs_as_readme_says(tmp_path: Path, daemon: DaemonProcess) -> None:
    # A copy of the two projects: an in-tree build would leave build/ in the checkout.
    clone = tmp_path / "clone"
    for rel in ("clients/python-api", "clients/python"):
        junk = shutil.ignore_patterns("build", "*.egg-info", "__pycache__")
        shutil.copytree(ROOT / rel, clone / rel, ignore=junk)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    env = {**os.environ, "PATH": f"{venv / 'bin'}:{os.environ['PATH']}", "VIRTUAL_ENV": str(venv)}
    env.pop("PYTHONPATH", None)
    _run_readme(_readme_block("Python (`clients/python`", "sh"), clone, tmp_path, env)
    cli = [str(venv / "bin" / "computesdk"), "--socket", str(daemon.socket)]
    run = functools.partial(
        subprocess.run, cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    sid = run([*cli, "create", "--template", "python"], check=True).stdout.strip()
    try:
        out = run([*cli, "exec", sid, "--", "python3", "-c", "print(6*7)"])
        assert (out.returncode, out.stdout) == (0, "42\n"), out.stderr
    finally:
        run([*cli, "rm", sid])
    where = run(
        [str(venv / "bin" / "python"), "-c", "import computesdk; print(computesdk.__file__)"]
    )
    assert where.stdout.startswith(str(venv)), where.stdout + where.stderr


@pytest.mark.timeout(600)
def test_typescript_client_installs_and_runs_the_readme_quick_start(
    tmp_path: Path, daemon: DaemonProcess
) -> None:
    project, env = _npm_project(tmp_path), _npm_env()
    _run_readme(_readme_block("TypeScript (`clients/typescript`", "sh"), ROOT, project, env)
    installed = project / "node_modules" / "computesdkd-client"
    assert not installed.is_symlink() and (installed / "dist" / "src" / "index.js").is_file()
    assert json.loads((installed / "package.json").read_text())["name"] == "computesdkd-client"

    snippet = _readme_block("TypeScript (`clients/typescript`", "ts")
    assert "from 'computesdkd-client'" in snippet
    # Type-checked against the installed package's declarations...
    (project / "quickstart.ts").write_text(snippet)
    types = ROOT / "clients" / "typescript" / "node_modules" / "@types"
    (project / "tsconfig.json").write_text(
        json.dumps(
            {
                "compilerOptions": {
                    "target": "ES2022",
                    "module": "NodeNext",
                    "moduleResolution": "NodeNext",
                    "strict": True,
                    "outDir": "out",
                    "types": ["node"],
                    "typeRoots": [str(types)],
                },
                "files": ["quickstart.ts"],
            }
        )
    )
    tsc = ROOT / "clients" / "typescript" / "node_modules" / ".bin" / "tsc"
    checked = subprocess.run(
        [str(tsc), "-p", "."], cwd=project, capture_output=True, text=True, timeout=120
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    # ... and run, as compiled, against the daemon.
    ran = subprocess.run(
        ["node", "out/quickstart.js"],
        cwd=project,
        env={**env, "COMPUTESDK_SOCKET": str(daemon.socket)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert re.search(r"^ready \d+$", ran.stdout, re.M), ran.stdout
    assert "a\nb\n" in ran.stdout, ran.stdout
    with SyncClient(socket=daemon.socket) as c:
        assert not [sb for sb in c.list() if sb.metadata.get("project") == "my-app"]


@pytest.mark.timeout(600)
def test_computesdk_provider_installs_and_switches_in_one_line(
    tmp_path: Path, daemon: DaemonProcess
) -> None:
    # ComputeSDK's own `compute`, from the registry, over our provider package and
    # client, both from their tarballs, as README.md installs them.
    project, env = _npm_project(tmp_path), _npm_env()
    _run_readme(
        _readme_block("ComputeSDK (`clients/computesdk-provider`", "sh"), ROOT, project, env
    )
    snippet = _readme_block("ComputeSDK (`clients/computesdk-provider`", "ts")
    default = "'/run/computesdk/computesdkd.sock'"
    assert "compute.setConfig({ provider: computesdkd({ socket: " in snippet and default in snippet
    (project / "switch.mjs").write_text(snippet.replace(default, repr(str(daemon.socket))))
    ran = subprocess.run(
        ["node", "switch.mjs"], cwd=project, env=env, capture_output=True, text=True, timeout=180
    )
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert re.fullmatch(r"v\d+\.\d+\.\d+ 0\n", ran.stdout), ran.stdout + ran.stderr


@pytest.mark.timeout(600)
def test_go_client_builds_with_replace_and_runs(tmp_path: Path, daemon: DaemonProcess) -> None:
    module = tmp_path / "module"
    module.mkdir()
    env = {**os.environ, "PATH": f"{os.environ['PATH']}:{Path(GO).parent}", "GOFLAGS": ""}
    go = functools.partial(
        subprocess.run, cwd=module, env=env, capture_output=True, text=True, timeout=300
    )
    made = go([GO, "mod", "init", "example.com/scratch"])
    assert made.returncode == 0, made.stderr
    # The README's Go program, as written.
    (module / "main.go").write_text(_readme_block("Go (`clients/go`", "go"))
    _run_readme(_readme_block("Go (`clients/go`", "sh"), ROOT, module, env)
    mod = (module / "go.mod").read_text()
    assert f"=> {ROOT / 'clients' / 'go'}" in mod, mod
    built = go([GO, "build", "-o", "app", "."])
    assert built.returncode == 0, built.stdout + built.stderr
    ran = subprocess.run(
        [str(module / "app")],
        env={**env, "COMPUTESDK_SOCKET": str(daemon.socket)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert re.fullmatch(r"0 Python 3\.\d+\.\d+\na\nb\nready \d+\ntrue\n", ran.stdout), ran.stdout
