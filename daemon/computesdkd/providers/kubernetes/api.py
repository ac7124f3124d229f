"""The provider's calls to the API server, through kubernetes_asyncio (the
official client's asyncio port): config from a kubeconfig or the in-cluster
service account, create/read/delete of Pods and Secrets, and one watch of this
daemon's sandbox pods (by its owner label) that keeps each pod's latest state.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from computesdkd.domain.errors import ComputeError, Internal, Unavailable
from computesdkd.providers.kubernetes.pods import LABEL_SANDBOX
from computesdkd.support import logs

if TYPE_CHECKING:
    from kubernetes_asyncio import client
    from kubernetes_asyncio.client.exceptions import ApiException

log = logs.get(__name__)
NAME = "kubernetes"
IN_CLUSTER_TOKEN = Path("/var/run/secrets/kubernetes.io/serviceaccount/token")
WATCH_TIMEOUT_S = 300  # the server ends a watch after this; it is started again
CALL_TIMEOUT_S = 30


def _is_file(path: Path) -> bool:
    """Whether path is a file this daemon can see (another user's home: no)."""
    try:
        return path.is_file()
    except OSError:
        return False


def kubeconfig_path(env: Mapping[str, str], options: Mapping[str, Any]) -> str:
    """Where the cluster is described: the provider's `kubeconfig` option, else
    $KUBECONFIG (its first entry), else ~/.kube/config when present; "" for
    in-cluster config or none."""
    path = str(options.get("kubeconfig") or env.get("KUBECONFIG", "").split(os.pathsep)[0])
    if path:
        return path
    home = Path(env.get("HOME") or "~").expanduser() / ".kube" / "config"
    return str(home) if _is_file(home) else ""


def no_config_reason(path: str, env: Mapping[str, str]) -> str:
    """Empty when a config is there to load, else why the provider cannot run."""
    if path:
        return "" if _is_file(Path(path)) else f"kubeconfig {path} cannot be read"
    if env.get("KUBERNETES_SERVICE_HOST") and _is_file(IN_CLUSTER_TOKEN):
        return ""
    return (
        "no cluster configured: no kubeconfig (option kubeconfig, $KUBECONFIG or "
        "~/.kube/config) and not running in a pod"
    )


def _api_exception() -> type[ApiException]:
    # kubernetes_asyncio is imported on first use: loading its models costs every
    # daemon start about half a second, and most daemons have no cluster.
    from kubernetes_asyncio.client import exceptions

    return exceptions.ApiException


def api_error(exc: BaseException, what: str) -> ComputeError:
    ApiException = _api_exception()
    if isinstance(exc, ApiException):
        text = f"{NAME}: {what}: {exc.status} {exc.reason}"
        if exc.status in (401, 403):
            return Unavailable(text, reason="PROVIDER_AUTH_FAILED", provider=NAME)
        if exc.status is not None and exc.status >= 500:
            return Unavailable(text, reason="PROVIDER_UNAVAILABLE", provider=NAME)
        return Internal(text, reason="PROVIDER_ERROR", provider=NAME)
    return Unavailable(f"{NAME}: {what}: {exc}", reason="PROVIDER_UNAVAILABLE", provider=NAME)


@dataclass
class PodState:
    """What the watch last saw of one sandbox's pod."""

    phase: str = "Pending"
    ip: str = ""
    node: str = ""
    ready: bool = False
    deleted: bool = False
    oom_kills: int = 0  # the agent's container ended OOMKilled
    waiting_reason: str = ""  # e.g. ErrImageNeverPull
    message: str = ""


def pod_state(pod: Any, deleted: bool = False) -> PodState:
    st = pod.status
    s = PodState(
        phase=(st.phase if st else "") or "Pending",
        ip=(st.pod_ip if st else "") or "",
        node=(pod.spec.node_name if pod.spec else "") or "",
        deleted=deleted,
    )
    for cs in (st.container_statuses if st else None) or []:
        s.ready = s.ready or bool(cs.ready)
        for state in (cs.state, cs.last_state):
            term = state.terminated if state else None
            if term is not None and term.reason == "OOMKilled":
                s.oom_kills = max(s.oom_kills, 1 + int(cs.restart_count or 0))
            if term is not None:
                s.message = s.message or f"{term.reason or 'terminated'} ({term.exit_code})"
        waiting = cs.state.waiting if cs.state else None
        if waiting is not None:
            s.waiting_reason = waiting.reason or ""
            s.message = waiting.message or waiting.reason or ""
    return s


class Cluster:
    def __init__(self, namespace: str) -> None:
        self.namespace = namespace
        self._api: client.ApiClient | None = None
        self._watch: asyncio.Task[None] | None = None
        self.pods: dict[str, PodState] = {}  # sandbox id -> latest state
        self._changed = asyncio.Condition()

    async def connect(self, kubeconfig: str) -> None:
        from kubernetes_asyncio import client, config

        cfg = client.Configuration()
        if kubeconfig:
            await config.load_kube_config(config_file=kubeconfig, client_configuration=cfg)
        else:
            config.load_incluster_config(client_configuration=cfg)  # type: ignore[no-untyped-call]
        self._api = client.ApiClient(configuration=cfg)
        # One cheap call proves the address, the credentials and the namespace.
        await asyncio.wait_for(
            self.core.list_namespaced_pod(self.namespace, limit=1), CALL_TIMEOUT_S
        )

    @property
    def core(self) -> client.CoreV1Api:
        from kubernetes_asyncio import client

        if self._api is None:
            raise Unavailable(
                f"{NAME}: not connected", reason="PROVIDER_UNAVAILABLE", provider=NAME
            )
        return client.CoreV1Api(self._api)

    async def close(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._watch
        if self._api is not None:
            await self._api.close()

    async def call(self, what: str, fn: Callable[..., Any], *args: Any, **kw: Any) -> Any:
        ApiException = _api_exception()
        try:
            return await asyncio.wait_for(fn(*args, **kw), CALL_TIMEOUT_S)
        except (ApiException, OSError, TimeoutError) as exc:
            raise api_error(exc, what) from exc
        except Exception as exc:  # aiohttp's client errors
            if type(exc).__module__.startswith("aiohttp"):
                raise api_error(exc, what) from exc
            raise

    async def delete(self, what: str, fn: Callable[..., Any], name: str, grace_s: int = 0) -> None:
        """Deletes, and a thing already gone is no error (destroy is idempotent)."""
        ApiException = _api_exception()
        try:
            await asyncio.wait_for(
                fn(name, self.namespace, grace_period_seconds=grace_s), CALL_TIMEOUT_S
            )
        except ApiException as exc:
            if exc.status != 404:
                raise api_error(exc, what) from exc
        except (OSError, TimeoutError) as exc:
            raise api_error(exc, what) from exc

    # ------------------------------------------------------------ the watch

    def start_watch(self, owner_selector: str, on_change: Callable[[str, PodState], None]) -> None:
        self._watch = asyncio.create_task(self._watch_loop(owner_selector, on_change))

    async def _watch_loop(self, selector: str, on_change: Callable[[str, PodState], None]) -> None:
        from kubernetes_asyncio import watch

        ApiException = _api_exception()
        version = ""
        while True:
            try:
                if not version:  # a fresh list: the state of every pod, then changes
                    listed = await self.core.list_namespaced_pod(
                        self.namespace, label_selector=selector
                    )
                    seen = set()
                    for p in listed.items:
                        sid = (p.metadata.labels or {}).get(LABEL_SANDBOX, "")
                        seen.add(sid)
                        await self._note(sid, pod_state(p), on_change)
                    for sid in set(self.pods) - seen:
                        await self._note(sid, PodState(phase="", deleted=True), on_change)
                    version = listed.metadata.resource_version
                w = watch.Watch()
                async with w.stream(
                    self.core.list_namespaced_pod,
                    self.namespace,
                    label_selector=selector,
                    resource_version=version,
                    timeout_seconds=WATCH_TIMEOUT_S,
                ) as stream:
                    async for ev in stream:
                        p = ev["object"]
                        if ev["type"] == "ERROR" or not hasattr(p, "metadata"):
                            version = ""  # 410 Gone: list again
                            break
                        version = p.metadata.resource_version
                        sid = (p.metadata.labels or {}).get(LABEL_SANDBOX, "")
                        await self._note(sid, pod_state(p, ev["type"] == "DELETED"), on_change)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if isinstance(exc, ApiException) and exc.status == 410:
                    version = ""
                log.warning("kubernetes pod watch failed; watching again", error=str(exc))
                await asyncio.sleep(1.0)

    async def _note(
        self, sandbox_id: str, state: PodState, on_change: Callable[[str, PodState], None]
    ) -> None:
        if not sandbox_id:
            return
        before = self.pods.get(sandbox_id)
        self.pods[sandbox_id] = state
        if before != state:
            on_change(sandbox_id, state)
        async with self._changed:
            self._changed.notify_all()

    async def wait_for(
        self, sandbox_id: str, done: Callable[[PodState], bool], timeout_s: float
    ) -> PodState:
        """The pod's state once done(state), as the watch sees it."""
        async with asyncio.timeout(timeout_s), self._changed:
            while True:
                state = self.pods.get(sandbox_id)
                if state is not None and done(state):
                    return state
                await self._changed.wait()
