"""Shared networks and port forwarding for local sandboxes.

Each shared network is a bridge inside a network namespace of its own, so the
segment touches neither the host's stack nor any other network: members reach
each other and nothing else (no route out, no address on the host side). A
member joins through a veth pair whose far end is a port of that bridge.

Every frame a member sends enters the bridge through its port (the veth end in
the network's namespace), where a bridge-family nftables filter lets through
only IPv4 from the member's own address and MAC, and ARP whose sender MAC and IP
are its own; anything else (spoofed addresses, other MACs, IPv6, VLAN tags,
other ethertypes) is dropped. The member's MAC is chosen here when its veth is
made, and the member cannot change it (no CAP_NET_ADMIN, no CAP_NET_RAW).

Forwarded ports are dialled from inside the sandbox's network namespace: a
worker thread enters it with setns(2), connects to the sandbox's loopback and
returns the socket, which stays in that namespace.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import secrets
import socket
import threading

from computesdkd.domain.errors import FailedPrecondition, Internal, Unavailable

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)
# setns is per thread; one lock keeps the pool's threads from racing on it.
_setns_lock = threading.Lock()


async def _ip(*args: str) -> None:
    proc = await asyncio.create_subprocess_exec(
        "ip", *args, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
    )
    _, err = await proc.communicate()
    if proc.returncode != 0:
        raise Internal(f"ip {' '.join(args)}: {err.decode(errors='replace').strip()}")


def netns_name(network_id: str) -> str:
    return f"csn-{network_id}"


# Frames from a port pass only when (port, source MAC, source IPv4) or, for ARP,
# (port, source MAC, sender MAC, sender IPv4) is a member's own; policy drop.
_PORT_FILTER = """
table bridge csdk {
    set ip4 { type ifname . ether_addr . ipv4_addr; }
    set arp4 { type ifname . ether_addr . ether_addr . ipv4_addr; }
    chain ports {
        type filter hook prerouting priority -200; policy drop;
        ether type ip iifname . ether saddr . ip saddr @ip4 accept
        ether type arp arp htype 1 arp ptype ip arp hlen 6 arp plen 4 \
            iifname . ether saddr . arp saddr ether . arp saddr ip @arp4 accept
    }
}
"""


async def _nft(netns: str, script: str) -> str:
    proc = await asyncio.create_subprocess_exec(
        "nsenter", f"--net={netns}", "nft", "-f", "-",
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await proc.communicate(script.encode())
    if proc.returncode != 0:
        raise Internal(f"nft in {netns}: {err.decode(errors='replace').strip()}")
    return out.decode(errors="replace")


def _netns_path(network_id: str) -> str:
    return f"/run/netns/{netns_name(network_id)}"


def new_mac() -> str:
    """A random unicast, locally administered MAC."""
    raw = bytearray(secrets.token_bytes(6))
    raw[0] = (raw[0] & 0xFC) | 0x02
    return ":".join(f"{b:02x}" for b in raw)


async def create_bridge(network_id: str) -> None:
    ns = netns_name(network_id)
    await _ip("netns", "add", ns)
    try:
        await _ip("-n", ns, "link", "add", "br0", "type", "bridge")
        await _nft(_netns_path(network_id), _PORT_FILTER)
        await _ip("-n", ns, "link", "set", "br0", "up")
    except Internal:
        with contextlib.suppress(Internal):
            await _ip("netns", "del", ns)
        raise


async def delete_bridge(network_id: str) -> None:
    """Removes the namespace; every veth end in it, and so every pair, goes with it."""
    with contextlib.suppress(Internal):
        await _ip("netns", "del", netns_name(network_id))


async def attach(network_id: str, init_pid: int, ifname: str, address: str, prefix: int) -> None:
    ns = netns_name(network_id)
    tag = secrets.token_hex(4)
    inside, port = f"cv{tag}", f"cp{tag}"
    mac = new_mac()
    await _ip(
        "link", "add", inside, "address", mac, "type", "veth", "peer", "name", port, "netns", ns
    )
    try:
        # The port's filter entries exist before the port joins the bridge.
        await _nft(
            _netns_path(network_id),
            f'add element bridge csdk ip4 {{ "{port}" . {mac} . {address} }}\n'
            f'add element bridge csdk arp4 {{ "{port}" . {mac} . {mac} . {address} }}\n',
        )
        await _ip("-n", ns, "link", "set", port, "master", "br0", "up")
        await _ip("link", "set", inside, "netns", str(init_pid))
        target = f"/proc/{init_pid}/ns/net"
        for args in (
            ("link", "set", inside, "name", ifname),
            ("addr", "add", f"{address}/{prefix}", "dev", ifname),
            ("link", "set", ifname, "up"),
        ):
            await _nsenter(target, "ip", *args)
    except Internal:
        with contextlib.suppress(Internal):
            await _ip("-n", ns, "link", "del", port)
        raise


async def detach(init_pid: int, ifname: str) -> None:
    with contextlib.suppress(Internal):
        await _nsenter(f"/proc/{init_pid}/ns/net", "ip", "link", "del", ifname)


async def _nsenter(netns: str, *argv: str) -> None:
    proc = await asyncio.create_subprocess_exec(
        "nsenter", f"--net={netns}", *argv,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, err = await proc.communicate()
    if proc.returncode != 0:
        raise Internal(f"{' '.join(argv)} in {netns}: {err.decode(errors='replace').strip()}")


def _connect_in(netns: str, port: int) -> socket.socket:
    with _setns_lock:
        home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        target = os.open(netns, os.O_RDONLY)
        try:
            if _libc.setns(target, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns into the sandbox failed")
            try:
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            finally:
                # Back home before anything else runs on this pool thread.
                if _libc.setns(home, CLONE_NEWNET) != 0:
                    os.abort()  # a worker thread stuck in a sandbox's namespace is unsafe
        finally:
            os.close(target)
            os.close(home)
    # The socket belongs to the sandbox's namespace from birth; connect anywhere.
    sock.settimeout(5.0)
    try:
        sock.connect(("127.0.0.1", port))
    except OSError as exc:
        sock.close()
        raise FailedPrecondition(
            f"nothing accepts connections on port {port} in the sandbox: {exc.strerror}",
            reason="PORT_NOT_LISTENING",
            port=str(port),
        ) from exc
    sock.setblocking(False)
    return sock


async def open_port(init_pid: int, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    if init_pid <= 0 or not os.path.exists(f"/proc/{init_pid}"):
        raise Unavailable("the sandbox is not running", reason="SANDBOX_NOT_RUNNING")
    sock = await asyncio.to_thread(_connect_in, f"/proc/{init_pid}/ns/net", port)
    return await asyncio.open_connection(sock=sock)
