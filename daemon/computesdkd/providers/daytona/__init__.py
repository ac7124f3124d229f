"""The daytona provider: Daytona's control API and the toolbox API in each sandbox."""

from computesdkd.providers.daytona.provider import DaytonaProvider

__all__ = ["DaytonaProvider"]
