"""The predefined templates: what local and docker sandboxes start from out of the
box, on the Debian base (rootfs_recipe.py); and the image names a template build
may take as its base when no registry answers (local_base)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from computesdkd.domain.errors import ComputeError, FailedPrecondition, template_not_found
from computesdkd.domain.model import TemplateDefinition

# What `packages` of a build means, by the base (TemplateDefinition.package_manager).
APT, PIP, NPM = "apt", "pip", "npm"
PACKAGE_MANAGERS = ("auto", APT, PIP, NPM)
_PYTHON_ENV = {"PYTHONUNBUFFERED": "1"}
_NODE_ENV = {"NODE_ENV": "development"}


@dataclass(frozen=True)
class Template:
    name: str
    description: str
    env: dict[str, str] = field(default_factory=dict)
    # Set when the host cannot carry the template; create then fails with this.
    unavailable: str = ""
    # For names that need more than the base: what a template build makes of them.
    recipe: TemplateDefinition | None = None
    # What `packages` means in a build on template:NAME (auto): pip, npm or apt.
    packages_by: str = APT
    # Needs a GPU: create fails GPU_UNAVAILABLE, as a GPU resource request does.
    gpu: bool = False


def _python(name: str) -> Template:
    return Template(name, "Python 3.11 with pip and venv (Debian)", _PYTHON_ENV, packages_by=PIP)


def _node(name: str) -> Template:
    return Template(name, "Node.js 18 with npm (Debian)", _NODE_ENV, packages_by=NPM)


def _gpu(name: str, what: str) -> Template:
    return Template(name, what, unavailable="this host has no GPU", gpu=True)


_TEMPLATES = [
    Template("base", "Debian 12 minimal, with python3, nodejs and npm available"),
    # The spec's names for the same two runtimes, all on the one base.
    *(_python(n) for n in ("python", "python:3.11", "python3.11.x")),
    *(_node(n) for n in ("node", "nodejs", "nodejs18", "nodejs18.x")),
    Template(
        "nextjs",
        "Next.js 14 with React 18 on Node.js 18",
        {"NODE_ENV": "development", "NODE_PATH": "/opt/nextjs/node_modules"},
        unavailable="needs npm packages beyond the base",
        recipe=TemplateDefinition(
            name="nextjs",
            base_image="template:node",
            setup=(
                "mkdir -p /opt/nextjs && cd /opt/nextjs && npm init -y >/dev/null && "
                "npm install --no-audit --no-fund next@14 react@18 react-dom@18",
                "ln -s /opt/nextjs/node_modules/.bin/next /usr/local/bin/next",
            ),
            env={"NODE_PATH": "/opt/nextjs/node_modules"},
        ),
    ),
    Template(
        "full-stack-dev",
        "Node.js 18 with npm, Python 3.11, a C toolchain and git",
        {"NODE_ENV": "development", "PYTHONUNBUFFERED": "1"},
        unavailable="needs packages beyond the base",
        recipe=TemplateDefinition(
            name="full-stack-dev",
            packages=("build-essential", "git", "curl", "python3-dev"),
            env={"NODE_ENV": "development", "PYTHONUNBUFFERED": "1"},
        ),
    ),
    _gpu("pytorch-gpu", "PyTorch with CUDA"),
    _gpu("pytorch", "PyTorch with CUDA"),
    _gpu("gpu-ml", "Machine learning with CUDA"),
    _gpu("python-gpu", "Python with CUDA"),
]
TEMPLATES = {t.name: t for t in _TEMPLATES}


def cannot_run(tpl: Template, name: str, provider: str, why: str = "") -> ComputeError:
    """The one error for a predefined template the host cannot carry."""
    if tpl.gpu:
        return FailedPrecondition(
            f"template {name!r} needs a GPU, and provider {provider!r} has none on this host",
            reason="GPU_UNAVAILABLE",
            template=name,
            provider=provider,
            feature="gpu",
        )
    return FailedPrecondition(
        f"template {name!r} cannot run on provider {provider!r}: {why or tpl.unavailable}",
        reason="TEMPLATE_UNAVAILABLE",
        template=name,
        provider=provider,
    )


def resolve(name: str, provider: str = "local") -> Template:
    tpl = TEMPLATES.get(name or "base")
    if tpl is None:
        raise template_not_found(name, provider)
    if tpl.unavailable:
        raise cannot_run(tpl, name, provider)
    return tpl


# ------------------------------------------------------------------ base images

# Docker Hub names a build may take as its base on a host where no registry
# answers: the Debian bookworm base carries python3 3.11 and nodejs 18, so these
# mean it (README, Templates). Any other tag of these images fails clearly.
_LOCAL_BASES = {
    "python": (PIP, re.compile(r"(latest|3|3\.11(\.\d+)?)(-[a-z0-9.-]+)?")),
    "node": (NPM, re.compile(r"(latest|18(\.\d+){0,2})(-[a-z0-9.-]+)?")),
    "debian": (APT, re.compile(r"(latest|bookworm|12(\.\d+)?)(-[a-z0-9.-]+)?")),
}
LOCAL_BASES_DOC = (
    "python, python:3, python:3.11[.N][-variant] (python3 3.11, pip); "
    "node, node:18[.N][-variant] (nodejs 18, npm); "
    "debian, debian:bookworm[-variant], debian:12 (apt)"
)


def hub_name(ref: str) -> tuple[str, str] | None:
    """(image, tag) of a Docker Hub official image named without a registry host
    (python:3.11-slim, docker.io/library/node:18); None for any other reference."""
    name = ref.removeprefix("docker://")
    for prefix in ("docker.io/library/", "docker.io/", "library/"):
        name = name.removeprefix(prefix)
    if "@" in name or "/" in name:
        return None
    image, _, tag = name.partition(":")
    return image, tag or "latest"


def local_base(ref: str) -> str | None:
    """What `packages` means (PIP, NPM or APT) when ref is one of the Hub images the
    Debian base stands in for; None when it is not one of them."""
    named = hub_name(ref)
    if named is None or named[0] not in _LOCAL_BASES:
        return None
    kind, tags = _LOCAL_BASES[named[0]]
    return kind if tags.fullmatch(named[1]) else None


def packages_by(ref: str) -> str:
    """What `packages` means on a base, by its name (package_manager auto): pip on
    a python image or template, npm on a node one, else the system's (apt)."""
    if ref.startswith("template:"):
        tpl = TEMPLATES.get(ref.removeprefix("template:"))
        return tpl.packages_by if tpl else APT
    repo = ref.removeprefix("docker://").rsplit("@", 1)[0]
    last = repo.rsplit("/", 1)[-1].split(":", 1)[0]
    if last in ("python", "pypy") or last.startswith("python3"):
        return PIP
    if last in ("node", "nodejs"):
        return NPM
    return APT


def no_local_base(ref: str, registry_error: ComputeError) -> ComputeError:
    """A Hub image the registry cannot give and the Debian base does not stand in for."""
    named = hub_name(ref)
    if named is None or named[0] not in _LOCAL_BASES:
        return registry_error
    return FailedPrecondition(
        f"base_image {ref[:200]!r}: no registry answers ({registry_error.message[:200]}), "
        f"and this host's local bases are {LOCAL_BASES_DOC}; use one of those, "
        "a template (template:NAME), a local image (oci:PATH, docker-archive:PATH) "
        "or a registry this host reaches (HOST[:PORT]/REPO:TAG)",
        reason="BASE_IMAGE_UNAVAILABLE",
        base_image=ref[:200],
    )
