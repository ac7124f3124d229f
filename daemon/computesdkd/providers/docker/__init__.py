"""The docker provider: containers on a Docker Engine, over its API socket."""

from computesdkd.providers.docker.provider import DockerProvider

__all__ = ["DockerProvider"]
