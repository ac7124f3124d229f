"""The vercel provider: Vercel Sandbox's REST API (v2, sessions, NDJSON commands)."""

from computesdkd.providers.vercel.provider import VercelProvider

__all__ = ["VercelProvider"]
