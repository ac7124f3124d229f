"""The local provider: runc containers on an overlayfs root, on this machine."""

from computesdkd.providers.local.provider import LocalProvider

__all__ = ["LocalProvider"]
