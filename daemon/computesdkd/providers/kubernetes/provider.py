"""The kubernetes provider (first cut of issue 20, item 1): one plain Pod per
sandbox, plus a Secret with its agent's credentials, in one configured namespace.

Decisions:
- A plain Pod, not agent-sandbox's Sandbox CR: the CRDs are not installed on the
  test cluster this is built against; where they exist, the CR is a later option.
- The API server is spoken to with kubernetes_asyncio (the official client's
  asyncio port, which fits the daemon's asyncio/grpc.aio). No hand-written REST.
- The pod's entrypoint (PID 1) is computesdk-agent, from an image that carries it
  (scripts/k8s/sandbox-image.sh: the project's Debian base plus the static agent,
  a docker-archive imported into each node; imagePullPolicy Never by default).
- The daemon reaches the agent at podIP:7070 over agentnet (TLS pinned to the
  sandbox's own certificate, then a token proof both ways; both in the Secret).
  Exec, background processes with re-attach by offset, stdin, signals go through
  the agent with the same client as local (common/agent.py); files and usage through commands run by
  the agent (common/execfs.py), as on docker.
- Events: one watch of this daemon's pods (label computesdk.dev/owner) keeps each
  pod's state; probe() reads it, so the core's sweeper turns a pod that fails,
  is evicted or deleted into `error` (kind lost), and an OOM kill (the container
  OOMKilled, or the kernel's count in the sandbox's memory cgroup) into
  `out-of-memory`; `created`/`ready`/`destroyed` come from the core as for
  every provider.
- resources -> limits; requests are `request_fraction` (default 0.25) of them.
Not carried yet (FEATURE_UNSUPPORTED naming `kubernetes`): snapshots, volumes,
shared networks, live limits, reset/restart, port forwarding, template builds.

Settings ([providers.kubernetes] options, else the environment): kubeconfig
($KUBECONFIG, ~/.kube/config, else in-cluster), namespace
($COMPUTESDK_K8S_NAMESPACE, default "default"), image ($COMPUTESDK_K8S_IMAGE),
image_pull_policy, request_fraction, start_timeout_s.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import math
from dataclasses import replace

from computesdkd.domain.errors import (
    ComputeError,
    DeadlineExceeded,
    FailedPrecondition,
    Unavailable,
    Unsupported,
)
from computesdkd.domain.model import Command, ExitStatus, Output, Probe, Resources, Sandbox
from computesdkd.providers import base
from computesdkd.providers import capabilities as caps
from computesdkd.providers.base import ProcessRun, Provider, ProviderContext
from computesdkd.providers.common import agentnet
from computesdkd.providers.common.agentprocs import AgentProcesses, Processes
from computesdkd.providers.common.execfs import FilesByExec, UsageByExec
from computesdkd.providers.common.lifecycle import cannot_run, destroyed_on_failure, owner_id
from computesdkd.providers.common.templates import TEMPLATES, resolve
from computesdkd.providers.kubernetes import pods
from computesdkd.providers.kubernetes.agent import NetAgent
from computesdkd.providers.kubernetes.api import (
    NAME,
    Cluster,
    PodState,
    kubeconfig_path,
    no_config_reason,
    pod_state,
)
from computesdkd.support import logs

log = logs.get(__name__)
DEFAULT_IMAGE = "computesdk.local/sandbox:bookworm-v3"
START_TIMEOUT_S = 120.0
# Pods that cannot start: the watch says so long before the timeout.
_STUCK = {
    "ErrImageNeverPull": "IMAGE_NOT_FOUND",
    "ErrImagePull": "IMAGE_NOT_FOUND",
    "ImagePullBackOff": "IMAGE_NOT_FOUND",
    "InvalidImageName": "IMAGE_REFERENCE_INVALID",
    "CreateContainerConfigError": "PROVIDER_ERROR",
    "CreateContainerError": "PROVIDER_ERROR",
}
# The kernel's OOM kill count in the sandbox's memory cgroup (v2, else v1).
# A count, a few digits: what the sandbox's shell prints past that is dropped.
OOM_REPLY_MAX = 32
_OOM_SCRIPT = (
    "for f in /sys/fs/cgroup/memory.events /sys/fs/cgroup/memory/memory.oom_control; do "
    "[ -r $f ] && exec awk '/^oom_kill /{print $2; exit}' $f; done; echo 0"
)


@base.register(NAME)
class KubernetesProvider(FilesByExec, UsageByExec, Provider):
    name = NAME
    probe_interval_s = 2.0
    why_not = {
        "snapshots": "CSI VolumeSnapshot is not wired up yet",
        "volumes": "PVCs are not wired up yet",
        "shared networks": "NetworkPolicy is not wired up yet",
    }
    traits = frozenset({caps.EXEC_STDIN, caps.SIGNALS, caps.RESOURCE_LIMITS, caps.OOM_EVENTS})

    def __init__(self, cfg: base.ProviderConfig) -> None:
        opt, env = cfg.options, cfg.env
        self._kubeconfig = kubeconfig_path(env, opt)
        self._unavailable = no_config_reason(self._kubeconfig, env) or "not started"
        namespace = str(opt.get("namespace") or env.get("COMPUTESDK_K8S_NAMESPACE") or "default")
        self._image = str(opt.get("image") or env.get("COMPUTESDK_K8S_IMAGE") or DEFAULT_IMAGE)
        self._pull = str(opt.get("image_pull_policy") or "Never")
        self._fraction = float(opt.get("request_fraction") or 0.25)
        self._start_timeout = float(opt.get("start_timeout_s") or START_TIMEOUT_S)
        self._cluster = Cluster(namespace)
        self._owner = ""
        self._keys: dict[str, tuple[bytes, bytes]] = {}  # sandbox id -> (token, cert pin)
        # Template env is the image's own: nothing to add at each start.
        self._processes = Processes(lambda sb: NetAgent(self._endpoint(sb)), lambda _name: None)
        self.parts = [AgentProcesses(self._processes)]

    async def start(self, ctx: ProviderContext) -> None:
        if self._unavailable != "not started":
            log.info("kubernetes provider unavailable", why=self._unavailable)
            return
        self._owner = owner_id(ctx.state_dir / "kubernetes-owner")
        try:
            await self._cluster.connect(self._kubeconfig)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._unavailable = f"the cluster does not answer ({str(exc)[:200]})"
            log.warning("kubernetes provider unavailable", why=self._unavailable)
            return
        self._cluster.start_watch(f"{pods.LABEL_OWNER}={self._owner}", self._changed)
        self._unavailable = ""

    async def close(self) -> None:
        await self._cluster.close()

    def availability(self) -> str:
        return self._unavailable

    def templates(self) -> list[str]:
        return sorted(n for n, t in TEMPLATES.items() if t.recipe is None)

    def expected_resources(self, asked: Resources) -> Resources:
        return replace(
            asked,
            cpu_cores=asked.cpu_cores or pods.DEFAULTS.cpu_cores,
            memory_mb=asked.memory_mb or pods.DEFAULTS.memory_mb,
        )

    def _changed(self, sandbox_id: str, state: PodState) -> None:
        log.debug(
            "sandbox pod changed", sandbox_id=sandbox_id, phase=state.phase, deleted=state.deleted
        )

    # -------------------------------------------------------------- lifecycle

    def _resources(self, sandbox: Sandbox) -> Resources:
        r = sandbox.spec.resources
        if r.gpu_enabled:
            raise FailedPrecondition(
                "provider 'kubernetes' has no GPU mapping yet",
                reason="GPU_UNAVAILABLE",
                provider=NAME,
                feature="gpu",
            )
        if r.pids_limit:
            raise Unsupported(NAME, "pids limit", "a pod's pid limit is the kubelet's podPidsLimit")
        return self.expected_resources(r)

    def _image_for(self, template: str) -> str:
        tpl = resolve(template, NAME)
        if tpl.recipe is not None:
            raise Unsupported(
                NAME, f"template {tpl.name!r}", "templates with a build recipe need their own image"
            )
        return self._image

    async def create(self, sandbox: Sandbox) -> None:
        if self._unavailable:
            raise cannot_run(NAME, self._unavailable)
        image = self._image_for(sandbox.spec.template)
        res = sandbox.resources = self._resources(sandbox)
        name = pods.name_of(sandbox.id)
        creds = agentnet.new_credentials(name)
        self._keys[sandbox.id] = (creds.token, creds.cert_sha256)
        sandbox.provider_sandbox_id = name
        sandbox.provider_data = {
            "pod": name,
            "namespace": self._cluster.namespace,
            "cert_sha256": creds.cert_sha256.hex(),
        }
        core, ns = self._cluster.core, self._cluster.namespace
        async with destroyed_on_failure(self, sandbox):
            pod = pods.pod(sandbox, self._owner, image, res, self._fraction, self._pull)
            made = await self._cluster.call("create pod", core.create_namespaced_pod, ns, pod)
            secret = pods.secret(sandbox, self._owner, creds, made.metadata.uid)
            await self._cluster.call("create secret", core.create_namespaced_secret, ns, secret)
            state = await self._running(sandbox)
            sandbox.provider_data.update(pod_ip=state.ip, node=state.node)
            await self._agent_ready(sandbox)

    async def _running(self, sandbox: Sandbox) -> PodState:
        def settled(s: PodState) -> bool:
            done = s.deleted or s.phase in ("Failed", "Succeeded")
            return bool(s.phase == "Running" and s.ip) or done or s.waiting_reason in _STUCK

        try:
            state = await self._cluster.wait_for(sandbox.id, settled, self._start_timeout)
        except TimeoutError:
            raise DeadlineExceeded(
                f"kubernetes: the sandbox's pod was not running after {self._start_timeout:.0f} s",
                reason="PROVIDER_TIMEOUT",
                provider=NAME,
            ) from None
        if state.phase == "Running" and state.ip:
            return state
        why = state.message or state.waiting_reason or state.phase or "deleted"
        raise Unavailable(
            f"kubernetes: the sandbox's pod cannot start: {why}",
            reason=_STUCK.get(state.waiting_reason, "PROVIDER_ERROR"),
            provider=NAME,
        )

    async def _agent_ready(self, sandbox: Sandbox) -> None:
        """The agent listens a moment after its container starts."""
        await agentnet.wait_ready(self._endpoint(sandbox), self._start_timeout)

    def _endpoint(self, sandbox: Sandbox) -> agentnet.Endpoint:
        keys = self._keys.get(sandbox.id)
        state = self._cluster.pods.get(sandbox.id)
        ip = sandbox.provider_data.get("pod_ip") or (state.ip if state else "")
        if keys is None or not ip:
            raise FailedPrecondition(
                f"sandbox {sandbox.id}'s agent is not reachable yet", reason="NOT_STARTED"
            )
        return agentnet.Endpoint(ip, pods.AGENT_PORT, keys[0], keys[1])

    async def destroy(self, sandbox: Sandbox, graceful_timeout_s: float = 0.0) -> None:
        core = self._cluster.core
        name = sandbox.provider_data.get("pod") or pods.name_of(sandbox.id)
        grace = math.ceil(graceful_timeout_s)
        await self._cluster.delete("delete pod", core.delete_namespaced_pod, name, grace)
        await self._cluster.delete("delete secret", core.delete_namespaced_secret, name, 0)
        self._keys.pop(sandbox.id, None)
        self._cluster.pods.pop(sandbox.id, None)

    async def adopt(self, sandbox: Sandbox) -> bool:
        """After a daemon restart: the pod runs, and its Secret gives the token back."""
        if self._unavailable:
            return False
        core, ns = self._cluster.core, self._cluster.namespace
        name = sandbox.provider_data.get("pod") or pods.name_of(sandbox.id)
        try:
            pod = await self._cluster.call("read pod", core.read_namespaced_pod, name, ns)
            secret = await self._cluster.call("read secret", core.read_namespaced_secret, name, ns)
        except ComputeError:
            return False
        if (pod.status.phase if pod.status else "") != "Running":
            return False
        token = base64.b64decode((secret.data or {}).get("token", ""))
        pin = bytes.fromhex(sandbox.provider_data.get("cert_sha256", ""))
        self._keys[sandbox.id] = (token, pin)
        sandbox.provider_data["pod_ip"] = pod.status.pod_ip or ""
        return bool(token and pin)

    async def reconcile(self, live_ids: set[str]) -> None:
        """Pods and Secrets of this daemon's that no live sandbox owns go."""
        if self._unavailable:
            return
        core, ns = self._cluster.core, self._cluster.namespace
        selector = f"{pods.LABEL_OWNER}={self._owner}"
        for what, lister, deleter in (
            ("pod", core.list_namespaced_pod, core.delete_namespaced_pod),
            ("secret", core.list_namespaced_secret, core.delete_namespaced_secret),
        ):
            with contextlib.suppress(ComputeError):
                listed = await self._cluster.call(
                    f"list {what}s", lister, ns, label_selector=selector
                )
                for item in listed.items:
                    sid = (item.metadata.labels or {}).get(pods.LABEL_SANDBOX, "")
                    if sid not in live_ids:
                        log.info("removing an orphaned sandbox " + what, name=item.metadata.name)
                        await self._cluster.delete(f"delete {what}", deleter, item.metadata.name, 0)

    async def probe(self, sandbox: Sandbox) -> Probe:
        state = self._cluster.pods.get(sandbox.id)
        if state is None:  # not seen by the watch (yet): ask
            name = sandbox.provider_data.get("pod") or pods.name_of(sandbox.id)
            core, ns = self._cluster.core, self._cluster.namespace
            try:
                pod = await core.read_namespaced_pod(name, ns)
                state = pod_state(pod)
            except Exception:
                return Probe(alive=False)
        alive = state.phase == "Running" and not state.deleted
        kills = state.oom_kills
        if alive:
            kills += await self._cgroup_oom_kills(sandbox)
        return Probe(alive=alive, oom_kills=kills)

    async def _cgroup_oom_kills(self, sandbox: Sandbox) -> int:
        out = bytearray()
        with contextlib.suppress(ComputeError, OSError):
            run = self.run(sandbox, Command(args=["/bin/sh", "-c", _OOM_SCRIPT]))
            try:
                async for ev in run.events():
                    if isinstance(ev, Output) and ev.stream == "stdout":
                        out.extend(ev.data[: OOM_REPLY_MAX - len(out)])  # the sandbox's reply
                    elif isinstance(ev, ExitStatus):
                        break
            finally:
                await run.aclose()
        try:
            return int(out.decode().split()[0])
        except (ValueError, IndexError):
            return 0

    # -------------------------------------------------------------- processes

    def run(
        self, sandbox: Sandbox, command: Command, *, tag: str = "", kill_on_close: bool = True
    ) -> ProcessRun:
        return self._processes.run(sandbox, command, tag, kill_on_close)
