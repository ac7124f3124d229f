"""A template's packages come from the client: whatever installs them (apt, pip or
npm, by the base), a name never becomes shell, an option of the installer, a URL
or a path. Refused before anything runs."""

from __future__ import annotations

import pytest

from computesdk import Client, InvalidArgumentError
from computesdkd.providers.local.buildrun import PACKAGE_NAMES

HOSTILE = [
    "numpy; rm -rf /",
    "--index-url=http://evil.example/simple",
    "--extra-index-url=http://evil.example/simple",
    "-i",
    "-e.",
    "--registry=http://evil.example",
    "$(touch /tmp/pwned)",
    "`id`",
    "six\nid",
    "six && id",
    "six|id",
    "six>/etc/passwd x",
    "six @ https://evil.example/six.whl",
    "git+https://evil.example/x.git",
    "http://evil.example/x.tgz",
    "file:/etc",
    "../../etc",
    "./local",
    "'six'",
    "a" * 300,
    "",
]
# One base per manager: apt (the Debian base), pip (a python image), npm (a node one).
BASES = {"apt": "", "pip": "python:3.11-slim", "npm": "node:18"}


@pytest.mark.parametrize("manager", sorted(BASES))
async def test_hostile_package_names_are_refused(client: Client, manager: str) -> None:
    for pkg in HOSTILE:
        with pytest.raises(InvalidArgumentError) as e:
            await client.templates.build(
                f"hostile-{manager}", base_image=BASES[manager], packages=["six", pkg]
            )
        assert e.value.reason == "BAD_PACKAGE", pkg
        assert e.value.metadata["package_manager"] == manager
    names = {t.name for t in await client.templates.list()}
    assert f"hostile-{manager}" not in names


def test_ordinary_specs_of_each_manager_pass() -> None:
    ok = {
        "apt": ["tree", "libc6:amd64", "g++", "python3.11=3.11.2-6"],
        "pip": ["numpy", "scikit-learn", "idna>=3", "requests[socks]==2.31.0", "x<2,>=1"],
        "npm": ["left-pad", "is-number@7.0.0", "@types/node", "@scope/pkg@^1.2.0"],
    }
    for manager, specs in ok.items():
        for spec in specs:
            assert PACKAGE_NAMES[manager].fullmatch(spec), (manager, spec)


@pytest.mark.parametrize(
    ("manager", "pkg"),
    [("pip", "six.whl"), ("pip", "setup.py"), ("pip", "x.zip"), ("pip", "six-1.0.tar.gz"),
     ("npm", "evil.tgz"), ("npm", "pkg.tar.gz"), ("npm", "package.json")],
)  # fmt: skip
def test_names_a_manager_would_read_as_a_local_file_are_refused(manager: str, pkg: str) -> None:
    # pip and npm install `x.whl` or `x.tgz` from a file in the build's cwd: a name
    # is never a path, even one without a slash.
    assert not PACKAGE_NAMES[manager].fullmatch(pkg)
