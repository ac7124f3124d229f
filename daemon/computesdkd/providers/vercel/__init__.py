"""The vercel provider: Vercel Sandbox's REST API (v2, sessions, NDJSON commands)."""

from .provider import VercelProvider

__all__ = ["VercelProvider"]
