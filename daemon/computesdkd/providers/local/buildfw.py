"""The host's firewall rules for template builds (iptables), kept while any build
network exists (buildnet.py) and removed with the last one, for every csb*
interface at once:

- INPUT: everything from a build is dropped, so no service on the host is
  reachable: not on 127.0.0.1 (a packet from outside the host to a loopback
  address is never delivered anyway), nor on any of the host's own addresses
  (they all end in INPUT), the gateway's included.
- FORWARD (chain CSDK-BUILD, jumped to first): a build may go out through the
  host's uplinks (the interfaces of its default routes and of the routes to the
  build's resolvers) and get the replies; nothing else, so no other build, no
  local bridge (docker0, ...), no shared network and no link-local address (a
  cloud's metadata service).
- nat POSTROUTING: MASQUERADE of the builds' subnets out of those uplinks.
- ip6tables drops csb* input and forwarding besides (IPv6 is off on both ends
  of each pair).

Callers hold buildnet's host-wide lock.
"""

from __future__ import annotations

import contextlib
import ipaddress

from computesdkd.domain.errors import Internal
from computesdkd.providers.local.host import run_sync

SUBNETS = ipaddress.ip_network("10.214.0.0/16")  # shared networks use 10.213.0.0/16
PREFIX_NAME = "csb"  # netns and host-side veth: csb + the build id's 12 hex digits
CHAIN = "CSDK-BUILD"
_WILDCARD = PREFIX_NAME + "+"


def _ipt(*args: str, v6: bool = False, check: bool = True) -> bool:
    return run_sync("ip6tables" if v6 else "iptables", "-w", *args, check=check).returncode == 0


def _ensure(table: str, chain: str, rule: tuple[str, ...], v6: bool = False) -> None:
    if not _ipt("-t", table, "-C", chain, *rule, v6=v6, check=False):
        _ipt("-t", table, "-I", chain, "1", *rule, v6=v6)


def _rules_v4() -> list[tuple[str, str, tuple[str, ...]]]:
    return [
        ("filter", "INPUT", ("-i", _WILDCARD, "-j", "DROP")),
        ("filter", "FORWARD", ("-j", CHAIN)),
        ("nat", "POSTROUTING", ("-s", str(SUBNETS), "!", "-o", _WILDCARD, "-j", "MASQUERADE")),
    ]


def _rules_v6() -> list[tuple[str, str, tuple[str, ...]]]:
    return [
        ("filter", "INPUT", ("-i", _WILDCARD, "-j", "DROP")),
        ("filter", "FORWARD", ("-i", _WILDCARD, "-j", "DROP")),
        ("filter", "FORWARD", ("-o", _WILDCARD, "-j", "DROP")),
    ]


def ensure(uplinks: list[str]) -> None:
    """Idempotent. CSDK-BUILD is rewritten in one iptables-restore transaction (a
    declared chain is flushed, even with --noflush), so a build of another daemon
    never sees it half filled, and a changed uplink is picked up."""
    body: list[tuple[str, ...]] = [("-i", _WILDCARD, "-o", _WILDCARD, "-j", "DROP")]
    # Link-local: a cloud's instance metadata service (169.254.169.254) hands out
    # the host's credentials to whoever asks from the host's address.
    body += [("-i", _WILDCARD, "-d", "169.254.0.0/16", "-j", "DROP")]
    body += [("-i", _WILDCARD, "-o", dev, "-j", "ACCEPT") for dev in uplinks]
    body += [
        ("-i", _WILDCARD, "-j", "DROP"),
        ("-o", _WILDCARD, "-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED", "-j", "ACCEPT"),
        ("-o", _WILDCARD, "-j", "DROP"),
    ]
    script = "\n".join(
        ["*filter", f":{CHAIN} - [0:0]", *(" ".join(["-A", CHAIN, *r]) for r in body), "COMMIT", ""]
    )
    run_sync("iptables-restore", "-w", "--noflush", input=script)
    for table, chain, rule in _rules_v4():
        _ensure(table, chain, rule)
    for table, chain, rule in _rules_v6():
        # Belt and braces (IPv6 is off on the pair); a host without ip6tables is fine.
        with contextlib.suppress(Internal):
            _ensure(table, chain, rule, v6=True)


def drop() -> None:
    rules = [(r, False) for r in _rules_v4()] + [(r, True) for r in _rules_v6()]
    with contextlib.suppress(Internal):  # a host without ip6tables
        for (table, chain, rule), v6 in rules:
            for _ in range(16):  # every copy, should a crash have doubled one
                if not _ipt("-t", table, "-D", chain, *rule, v6=v6, check=False):
                    break
    _ipt("-t", "filter", "-F", CHAIN, check=False)
    _ipt("-t", "filter", "-X", CHAIN, check=False)
