"""A sandbox's service name: what shared networks resolve and message channels
address it by. It comes from what the user controls and can change live: env
SERVICE_NAME (at create or by SetSandboxEnv), else metadata "service", else
metadata "name". A name must be a DNS label and not one the hosts file already
means (localhost...): anything else is skipped, never written to a hosts file.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
# Names every hosts file already has: a member taking one would capture its peers' loopback.
RESERVED = frozenset(
    {"localhost", "localhost6", "ip6-localhost", "ip6-loopback", "ip6-allnodes",
     "ip6-allrouters", "ip6-localnet", "ip6-mcastprefix", "broadcasthost"}
)  # fmt: skip
ENV = "SERVICE_NAME"
METADATA = ("service", "name")


def why_not(name: str) -> str:
    """Why name cannot be a service name; "" when it can."""
    if not LABEL.fullmatch(name):
        return "not a DNS label (1-63 of a-z, 0-9 and '-', no '-' at either end)"
    if name in RESERVED:
        return "reserved"
    return ""


def wanted(env: Mapping[str, str], metadata: Mapping[str, str]) -> list[tuple[str, str]]:
    """(source, name) the user asked for, in order of precedence, as given (not yet checked)."""
    raw = [(ENV, env.get(ENV, "")), *((f"metadata.{k}", metadata.get(k, "")) for k in METADATA)]
    # DNS is case-insensitive: "API" is "api".
    return [(source, value.lower()) for source, value in raw if value]


def candidates(env: Mapping[str, str], metadata: Mapping[str, str]) -> list[str]:
    """The valid names of wanted(), best first."""
    return [name for _, name in wanted(env, metadata) if not why_not(name)]
