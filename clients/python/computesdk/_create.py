"""Client.create's steps around the one CreateSandbox call: an inline template is
built first, and import_state imports the archive (then, when more is asked,
creates from it as from a saved state)."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from . import _rpc
from .options import SandboxConfig, TemplateDefinition
from .sandbox import Sandbox

if TYPE_CHECKING:
    from .client import Client


async def create(client: Client, cfg: SandboxConfig) -> Sandbox:
    if isinstance(cfg.template, TemplateDefinition):
        await build(client, cfg.template, cfg.provider)
    if cfg.import_state is not None:
        sb = await _imported(client, cfg)
    else:
        resp = await _rpc.call(client.sandboxes.CreateSandbox, cfg.create_request())
        sb = Sandbox(client, resp.sandbox)
    sb.given_config = cfg
    return sb


async def build(client: Client, t: TemplateDefinition, provider: str) -> None:
    """Builds (or finds cached) the template; TemplateBuildError holds the log's tail."""
    await client.templates.build(
        t.name,
        base_image=t.base_image,
        packages=t.packages,
        env=t.env,
        setup=t.setup,
        description=t.description,
        provider=provider,
        package_manager=t.package_manager,
    )


async def _imported(client: Client, cfg: SandboxConfig) -> Sandbox:
    assert cfg.import_state is not None
    sb = await client.states.import_(cfg.import_state, provider=cfg.provider, metadata=cfg.metadata)
    if cfg.only_import:
        return sb
    # Anything else asked (env, resources, volumes, ...) is a create's: start a
    # sandbox from the imported one's saved state, with those options.
    state = await sb.save_state()
    await sb.destroy()
    try:
        req = dataclasses.replace(cfg, import_state=None, restore_from=state).create_request()
        resp = await _rpc.call(client.sandboxes.CreateSandbox, req)
        return Sandbox(client, resp.sandbox)
    finally:
        await client.states.delete(state)
