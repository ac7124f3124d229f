"""The daytona provider: Daytona's control API and the toolbox API in each sandbox."""

from .provider import DaytonaProvider

__all__ = ["DaytonaProvider"]
