"""The modal provider: Modal's gRPC API, and the task command router for exec."""

from computesdkd.providers.modal.provider import ModalProvider

__all__ = ["ModalProvider"]
