"""The kubernetes provider: one Pod per sandbox, its agent reached over the pod network."""

from computesdkd.providers.kubernetes.provider import KubernetesProvider

__all__ = ["KubernetesProvider"]
