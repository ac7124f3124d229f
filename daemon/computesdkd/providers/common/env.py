"""The environment a command starts with, the same on every back end."""

from __future__ import annotations

from computesdkd.domain.model import Command, Sandbox
from computesdkd.providers.common.templates import TEMPLATES

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def process_env(
    sandbox: Sandbox, command: Command, template_env: dict[str, str] | None = None
) -> dict[str, str]:
    """Defaults, then the template's, the sandbox's and the command's variables.
    template_env: a built template's; by default the predefined template's."""
    env = {"PATH": DEFAULT_PATH, "HOME": "/root", "LANG": "C.UTF-8", "HOSTNAME": "sandbox"}
    if template_env is None:
        tpl = TEMPLATES.get(sandbox.spec.template or "base")
        template_env = tpl.env if tpl else {}
    env.update(template_env)
    env.update(sandbox.spec.env)
    env.update(command.env)
    return env
