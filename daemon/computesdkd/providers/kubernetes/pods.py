"""The objects one sandbox is on Kubernetes, as plain manifests (dicts the API
client sends as they are): a Secret with the agent's channel credentials, and a
Pod whose only container runs computesdk-agent as PID 1.

The pod has no service-account token (code in the sandbox gets no API access),
no service links, restartPolicy Never (an agent that dies is a sandbox lost, as
on local) and short tolerations of an unreachable or not-ready node, so a lost
node's sandboxes are evicted, and reported, in seconds rather than 5 minutes.
"""

from __future__ import annotations

import base64
import math
from typing import Any

from computesdkd.domain.model import Resources, Sandbox
from computesdkd.providers.common.agentnet import Credentials

LABEL_SANDBOX = "computesdk.dev/sandbox"
LABEL_OWNER = "computesdk.dev/owner"
LABEL_APP = "app.kubernetes.io/managed-by"
APP = "computesdkd"
CONTAINER = "sandbox"
AGENT = "/usr/local/bin/computesdk-agent"
AGENT_PORT = 7070
SECRET_DIR = "/run/computesdk/agent"
# A node gone this long evicts its sandbox pods (the default is 300 s).
LOST_NODE_TOLERATION_S = 30
DEFAULTS = Resources(cpu_cores=1.0, memory_mb=1024, pids_limit=0)


def name_of(sandbox_id: str) -> str:
    """The Pod's and the Secret's name: DNS-1123, from the daemon's own id."""
    return "csk-" + "".join(c if c.isalnum() else "-" for c in sandbox_id.lower())[:58]


def labels(sandbox: Sandbox, owner: str) -> dict[str, str]:
    return {LABEL_SANDBOX: sandbox.id, LABEL_OWNER: owner, LABEL_APP: APP}


def secret(sandbox: Sandbox, owner: str, creds: Credentials, pod_uid: str = "") -> dict[str, Any]:
    """Owned by the pod (made just after it; the kubelet waits for it), so the
    cluster's garbage collector removes it with the pod whoever deletes that."""

    def b64(b: bytes) -> str:
        return base64.b64encode(b).decode()

    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": name_of(sandbox.id),
            "labels": labels(sandbox, owner),
            "ownerReferences": [
                {"apiVersion": "v1", "kind": "Pod", "name": name_of(sandbox.id), "uid": pod_uid}
            ]
            if pod_uid
            else [],
        },
        "type": "Opaque",
        "data": {
            "token": b64(creds.token),
            "tls.crt": b64(creds.cert_pem),
            "tls.key": b64(creds.key_pem),
        },
    }


def quantities(res: Resources, request_fraction: float) -> dict[str, dict[str, str]]:
    """resources -> limits (what the sandbox may use) and requests (what the
    scheduler reserves: a fraction of the limits, so sandboxes are burstable and a
    small node holds many idle ones)."""
    cpu_m = max(1, math.ceil(res.cpu_cores * 1000))
    limits = {"cpu": f"{cpu_m}m", "memory": f"{res.memory_mb}Mi"}
    req_cpu = max(1, math.ceil(cpu_m * request_fraction))
    req_mem = max(1, math.ceil(res.memory_mb * request_fraction))
    requests = {"cpu": f"{req_cpu}m", "memory": f"{req_mem}Mi"}
    if res.disk_mb:
        limits["ephemeral-storage"] = f"{res.disk_mb}Mi"
        requests["ephemeral-storage"] = f"{max(1, math.ceil(res.disk_mb * request_fraction))}Mi"
    return {"limits": limits, "requests": requests}


def pod(
    sandbox: Sandbox,
    owner: str,
    image: str,
    res: Resources,
    request_fraction: float,
    pull_policy: str = "Never",
) -> dict[str, Any]:
    name = name_of(sandbox.id)
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": labels(sandbox, owner)},
        "spec": {
            "restartPolicy": "Never",
            "automountServiceAccountToken": False,
            "enableServiceLinks": False,
            "hostname": "sandbox",
            "terminationGracePeriodSeconds": 2,
            "tolerations": [
                {
                    "key": key,
                    "operator": "Exists",
                    "effect": "NoExecute",
                    "tolerationSeconds": LOST_NODE_TOLERATION_S,
                }
                for key in ("node.kubernetes.io/unreachable", "node.kubernetes.io/not-ready")
            ],
            "containers": [
                {
                    "name": CONTAINER,
                    "image": image,
                    "imagePullPolicy": pull_policy,
                    "command": [
                        AGENT,
                        "-listen-tcp",
                        f":{AGENT_PORT}",
                        "-token-file",
                        f"{SECRET_DIR}/token",
                        "-tls-cert",
                        f"{SECRET_DIR}/tls.crt",
                        "-tls-key",
                        f"{SECRET_DIR}/tls.key",
                    ],
                    "workingDir": "/workspace",
                    "env": [{"name": k, "value": v} for k, v in sorted(sandbox.spec.env.items())],
                    "ports": [{"name": "agent", "containerPort": AGENT_PORT}],
                    "resources": quantities(res, request_fraction),
                    "securityContext": {
                        "allowPrivilegeEscalation": False,
                        "privileged": False,
                        "seccompProfile": {"type": "RuntimeDefault"},
                        "capabilities": {"drop": ["NET_RAW"]},  # local's set has none
                    },
                    "volumeMounts": [{"name": "agent", "mountPath": SECRET_DIR, "readOnly": True}],
                }
            ],
            "volumes": [{"name": "agent", "secret": {"secretName": name, "defaultMode": 0o400}}],
        },
    }
