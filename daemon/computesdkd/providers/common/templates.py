"""The predefined templates: what local and docker sandboxes start from out of the
box, on the Debian base (rootfs_recipe.py)."""

from __future__ import annotations

from dataclasses import dataclass, field

from computesdkd.domain.errors import FailedPrecondition, template_not_found
from computesdkd.domain.model import TemplateDefinition


@dataclass(frozen=True)
class Template:
    name: str
    description: str
    env: dict[str, str] = field(default_factory=dict)
    # Set when the host cannot carry the template; create then fails with this.
    unavailable: str = ""
    # For names that need more than the base: what a template build makes of them.
    recipe: TemplateDefinition | None = None


_TEMPLATES = [
    Template("base", "Debian 12 minimal, with python3 and nodejs available"),
    Template("python", "Python 3.11 with pip and venv", {"PYTHONUNBUFFERED": "1"}),
    Template("python:3.11", "Python 3.11 with pip and venv", {"PYTHONUNBUFFERED": "1"}),
    Template("node", "Node.js 18 (Debian)", {"NODE_ENV": "development"}),
    Template("nodejs18", "Node.js 18 (Debian)", {"NODE_ENV": "development"}),
    Template(
        "nextjs",
        "Next.js 14 with React 18 on Node.js 18",
        {"NODE_ENV": "development", "NODE_PATH": "/opt/nextjs/node_modules"},
        unavailable="needs npm packages beyond the base",
        recipe=TemplateDefinition(
            name="nextjs",
            base_image="template:node",
            packages=("npm",),
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
            packages=("build-essential", "git", "curl", "npm", "python3-dev"),
            env={"NODE_ENV": "development", "PYTHONUNBUFFERED": "1"},
        ),
    ),
    Template(
        "pytorch-gpu",
        "PyTorch with CUDA",
        unavailable="this host has no GPU",
    ),
]
TEMPLATES = {t.name: t for t in _TEMPLATES}


def resolve(name: str, provider: str = "local") -> Template:
    tpl = TEMPLATES.get(name or "base")
    if tpl is None:
        raise template_not_found(name, provider)
    if tpl.unavailable:
        raise FailedPrecondition(
            f"template {name!r} cannot run on provider {provider!r}: {tpl.unavailable}",
            reason="TEMPLATE_UNAVAILABLE",
            template=name,
            provider=provider,
        )
    return tpl
