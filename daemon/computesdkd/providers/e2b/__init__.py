"""The e2b provider: E2B's REST API for sandboxes, envd's Connect API inside them."""

from computesdkd.providers.e2b.provider import E2BProvider

__all__ = ["E2BProvider"]
