"""The pod's agent, reached over the pod network (providers/common/agentnet.py:
TLS pinned to the sandbox's certificate, then the token proof) and spoken to with
the same agent client as on `local` (providers/common/agent.py): only how a
connection is opened differs.
"""

from __future__ import annotations

from computesdkd.providers.common import agentnet
from computesdkd.providers.common.agent import Agent, AgentConnection


class NetAgent(Agent):
    """Agent with connections over agentnet instead of a Unix socket."""

    def __init__(self, endpoint: agentnet.Endpoint) -> None:  # no socket to name
        self.endpoint = endpoint

    async def _open(self) -> AgentConnection:
        reader, writer = await agentnet.open_stream(self.endpoint)
        return AgentConnection(reader, writer)
