"""Importing this registers every built-in back end by name (the composition root
does; tests that bring their own providers need not)."""

from computesdkd.providers import daytona, docker, e2b, kubernetes, local, modal, vercel

__all__ = ["daytona", "docker", "e2b", "kubernetes", "local", "modal", "vercel"]
