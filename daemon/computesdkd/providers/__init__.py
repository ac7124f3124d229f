"""Provider interface and the registry of back ends by name."""

from computesdkd.providers.base import (
    Provider,
    ProviderContext,
    get_factory,
    register,
    registered_names,
)

__all__ = ["Provider", "ProviderContext", "get_factory", "register", "registered_names"]
