"""Clone and migrate: a new sandbox with another's files, on the same provider (a
copy-on-write snapshot when it has them) or any other (a tar stream over exec)."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import AsyncIterator
from dataclasses import replace

from computesdkd.core.bus import EventBus
from computesdkd.core.guard import Providers
from computesdkd.core.lifecycle import Lifecycle
from computesdkd.core.placement import Placement
from computesdkd.core.registry import Registry
from computesdkd.domain import events
from computesdkd.domain.errors import ComputeError, Internal
from computesdkd.domain.model import (
    Command,
    ExitStatus,
    Output,
    ProcessEvent,
    Resources,
    Sandbox,
    SandboxSpec,
)
from computesdkd.domain.paths import WORKDIR
from computesdkd.providers import capabilities as caps
from computesdkd.providers.base import Provider
from computesdkd.providers.capabilities import require
from computesdkd.support.testhooks import crash

# Stdin chunks of a workspace copy stay well under every provider's message limits.
COPY_CHUNK = 256 * 1024
COPY_EXIT_WAIT_S = 5.0


class Cloning:
    def __init__(
        self,
        registry: Registry,
        providers: Providers,
        placement: Placement,
        lifecycle: Lifecycle,
        bus: EventBus,
    ) -> None:
        self._registry = registry
        self._providers = providers
        self._placement = placement
        self._lifecycle = lifecycle
        self._bus = bus

    async def clone(
        self,
        sandbox_id: str,
        *,
        provider: str = "",
        template: str = "",
        env: dict[str, str] | None = None,
        resources: Resources | None = None,
    ) -> Sandbox:
        src, _ = self._registry.running(sandbox_id)
        target = provider or src.spec.provider
        if resources is None:  # another provider may not take this one's sizing
            resources = src.spec.resources if target == src.spec.provider else Resources()
        spec = replace(
            src.spec,
            provider=target,
            template=template or src.spec.template,
            env={**src.spec.env, **(env or {})},
            resources=resources,
            request_id="",
            fallback_providers=(),
        )
        src_provider = self._providers.by_name[src.spec.provider]
        if (
            target == src.spec.provider
            and spec.template == src.spec.template
            and src_provider.part(caps.Snapshots) is not None
        ):
            dst = await self._clone_by_snapshot(src, spec, src_provider)
        else:
            dst = await self._copy_into_new(src, spec, files=True)
        self._bus.emit(dst.id, events.CLONED, source=src.id, source_provider=src.spec.provider)
        return dst

    async def _clone_by_snapshot(
        self, src: Sandbox, spec: SandboxSpec, provider: Provider
    ) -> Sandbox:
        """Constant in the workspace's size: the new sandbox starts on a
        copy-on-write twin of the source's whole disk, not only /workspace."""
        snap = "clone-" + secrets.token_hex(8)
        async with self._registry.lock(src.id):
            await self._providers.guarded(
                provider, require(provider, caps.Snapshots, "snapshots").snapshot_create(src, snap)
            )
        crash("clone.snapshot")
        try:
            return await self._placement.create_on(provider, self._placement.validate(spec), snap)
        finally:
            with contextlib.suppress(ComputeError):
                await require(provider, caps.Snapshots, "snapshots").snapshot_delete(snap)

    async def migrate(
        self,
        sandbox_id: str,
        provider: str,
        *,
        template: str = "",
        preserve_files: bool = True,
        preserve_env: bool = True,
        template_mapping: dict[str, str] | None = None,
        env_mapping: dict[str, str] | None = None,
    ) -> Sandbox:
        src, _ = self._registry.running(sandbox_id)
        tpl = template or (template_mapping or {}).get(src.spec.template, src.spec.template)
        mapping = env_mapping or {}
        env = {mapping.get(k, k): v for k, v in src.spec.env.items()} if preserve_env else {}
        spec = replace(
            src.spec,
            provider=provider,
            template=tpl,
            env=env,
            resources=Resources(),
            request_id="",
            fallback_providers=(),
        )
        dst = await self._copy_into_new(src, spec, files=preserve_files)
        # Only now that the target is complete does the source go.
        self._bus.emit(src.id, events.MIGRATED, target=dst.id, target_provider=provider)
        await self._lifecycle.destroy(src.id, reason="migrated")
        return dst

    async def _copy_into_new(self, src: Sandbox, spec: SandboxSpec, files: bool) -> Sandbox:
        dst = await self._placement.create_with_fallback(self._placement.validate(spec))
        if not files:
            return dst
        try:
            await self._copy_workspace(src, dst)
        except BaseException:
            with contextlib.suppress(ComputeError):
                await self._lifecycle.destroy(dst.id, reason="copy-failed")
            raise
        return dst

    async def _copy_workspace(self, src: Sandbox, dst: Sandbox) -> None:
        """Streams /workspace from one sandbox into another as a tar stream.

        It needs only exec with stdin on both sides, so it works between any
        two providers, whatever their file APIs."""
        reader = self._providers.by_name[src.spec.provider].run(
            src, Command(args=["tar", "-C", WORKDIR, "-cf", "-", "."], cwd="/")
        )
        writer = self._providers.by_name[dst.spec.provider].run(
            dst, Command(args=["tar", "-C", WORKDIR, "-xf", "-"], cwd="/", stdin=True)
        )
        errors = bytearray()

        async def writer_exit(events: AsyncIterator[ProcessEvent]) -> None:
            async for ev in events:
                if isinstance(ev, Output):
                    errors.extend(ev.data)
                elif isinstance(ev, ExitStatus) and ev.exit_code != 0:
                    raise Internal(
                        f"writing /workspace failed: {errors.decode(errors='replace')}",
                        reason="COPY_FAILED",
                    )

        try:
            out = aiter(writer.events())
            await anext(out)  # started
            async for ev in reader.events():
                if isinstance(ev, Output) and ev.stream == "stdout":
                    try:
                        for i in range(0, len(ev.data), COPY_CHUNK):
                            await writer.send_stdin(ev.data[i : i + COPY_CHUNK])
                    except ComputeError as send_error:
                        # tar -x stops at the end-of-archive blocks and may exit before
                        # the record padding arrives: a writer that already ended well
                        # is a finished copy; anything else is the failure it says.
                        try:
                            await asyncio.wait_for(writer_exit(out), COPY_EXIT_WAIT_S)
                        except TimeoutError:
                            raise send_error from None
                        return
                elif isinstance(ev, Output):
                    errors.extend(ev.data)
                elif isinstance(ev, ExitStatus) and ev.exit_code != 0:
                    raise Internal(
                        f"reading /workspace failed: {errors.decode(errors='replace')}",
                        reason="COPY_FAILED",
                    )
            with contextlib.suppress(ComputeError):
                # Fails when tar -x already ended; its exit status says how.
                await writer.close_stdin()
            await writer_exit(out)
        finally:
            await reader.aclose()
            await writer.aclose()
