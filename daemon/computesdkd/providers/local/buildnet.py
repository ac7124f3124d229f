"""The network of a template build: a NAT'd namespace of its own, as `docker build` has.

A build never runs in the host's network namespace. Each build gets one:

  host                                   build netns (/run/netns/csb<hex>)
  csb<hex> 10.214.N.1/30  <-- veth -->   eth0 10.214.N.2/30, default via .1, lo up

and the host's firewall keeps it off the host and everything but the uplinks
(buildfw.py). IPv6 is off on both ends of the pair (no link-local path to the
host; the build's loopback keeps ::1).

IPv4 forwarding is switched on for the build's interface and the uplinks only,
when the host has it off. The build's resolver is the host's /etc/resolv.conf,
unless that names a loopback or host-local server (unreachable from the build):
then the upstream servers in /run/systemd/resolve/resolv.conf, if present;
otherwise the build gets the host's file as it is and a warning is logged (its
DNS will fail).

Builds of every daemon on the host share 10.214.0.0/16 and the rules, so setup
and teardown run under one host-wide lock file. The netns and interface names
carry the build id, so a daemon that restarts after a crash removes its own
leftovers (clean_leftovers) and nobody else's.

The netns is owned by the build's user namespace (itself owned by the storage
uid, not host root), so that runc may join both; the build's root holds no
capability over it all the same (the build drops CAP_NET_ADMIN), and the host
mounts a sysfs of it, from inside the netns, for the build to bind.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import ipaddress
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from computesdkd.domain.errors import Internal
from computesdkd.providers.local import buildfw
from computesdkd.providers.local.buildfw import PREFIX_NAME, SUBNETS
from computesdkd.providers.local.host import run_sync
from computesdkd.support import logs

log = logs.get(__name__)

PREFIX = 30
LOCK = Path("/run/computesdk-buildnet.lock")
NETNS_DIR = Path("/run/netns")
HOST_RESOLV = Path("/etc/resolv.conf")
UPSTREAM_RESOLV = Path("/run/systemd/resolve/resolv.conf")


@dataclass(frozen=True)
class BuildNet:
    name: str  # the netns's name and the host end of the veth
    netns: str  # its bind mount, for runc's namespaces[].path
    subnet: str
    resolv_conf: str  # the text of the build's /etc/resolv.conf


def name_for(build_id: str) -> str:
    """build-<12 hex> -> csb<12 hex>: 15 characters, the most an interface name holds."""
    return PREFIX_NAME + build_id.rsplit("-", 1)[-1][:12]


async def setup(build_id: str, userns: str) -> BuildNet:
    """userns: the path of the build's user namespace, which will own the netns."""
    return await asyncio.to_thread(_setup, name_for(build_id), userns)


async def teardown(build_id: str) -> None:
    await asyncio.to_thread(_teardown, name_for(build_id))


async def mount_sysfs(net: BuildNet, target: Path) -> None:
    """A sysfs for the build's netns (its /sys/class/net: lo and eth0), mounted on
    the host at target, read-only, for the build spec to bind at /sys."""
    target.mkdir(exist_ok=True)
    await asyncio.to_thread(
        _run, "nsenter", f"--net={net.netns}", "mount", "-t", "sysfs",
        "-o", "ro,nosuid,nodev,noexec", "sysfs", str(target),
    )  # fmt: skip


# ------------------------------------------------------------------ internals


def _run(*argv: str, check: bool = True) -> str:
    return run_sync(*argv, check=check).stdout


@contextlib.contextmanager
def _locked() -> Iterator[None]:
    fd = os.open(LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _add_netns(name: str, userns: str) -> None:
    """/run/netns/NAME, a network namespace owned by the build's user namespace: a
    short-lived child in that user namespace makes it, and `ip netns attach` pins
    it. runc joins the user namespace first and then this one, which it may only
    do when the first owns the second (and the per-user limits of what runs in it
    count against the build's uid, not host root's)."""
    proc = subprocess.Popen(
        ["nsenter", f"--user={userns}", "--", "unshare", "--net", "--",
         "sh", "-c", "echo ready; read _"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    assert proc.stdin is not None and proc.stdout is not None
    try:
        if proc.stdout.readline() != b"ready\n":
            raise Internal("could not make the build's network namespace")
        _run("ip", "netns", "attach", name, str(proc.pid))
    finally:
        proc.stdin.close()
        proc.kill()
        proc.wait()


def _setup(name: str, userns: str) -> BuildNet:
    with _locked():
        resolv, servers = _resolv_conf()
        uplinks = _uplinks(servers)
        buildfw.ensure(uplinks)
        subnet = _free_subnet()
        gateway, inner = (str(a) for a in list(subnet.hosts())[:2])
        netns = str(NETNS_DIR / name)
        _add_netns(name, userns)
        try:
            _run("ip", "link", "add", name, "type", "veth", "peer", "name", "eth0", "netns", name)
            _sysctl(f"net/ipv6/conf/{name}/disable_ipv6", "1")
            _run("ip", "addr", "add", f"{gateway}/{PREFIX}", "dev", name)
            _run("ip", "link", "set", name, "up")
            if _read_sysctl("net/ipv4/ip_forward") != "1":
                for dev in (name, *uplinks):
                    _sysctl(f"net/ipv4/conf/{dev}/forwarding", "1")
            # Inside: IPv4 only on eth0 (lo keeps ::1), lo up, the route out via the host.
            _run(
                "nsenter", f"--net={netns}", "sh", "-c",
                "for f in default eth0; do "
                "echo 1 > /proc/sys/net/ipv6/conf/$f/disable_ipv6; done",
            )  # fmt: skip
            _run("ip", "-n", name, "link", "set", "lo", "up")
            _run("ip", "-n", name, "addr", "add", f"{inner}/{PREFIX}", "dev", "eth0")
            _run("ip", "-n", name, "link", "set", "eth0", "up")
            _run("ip", "-n", name, "route", "add", "default", "via", gateway)
        except BaseException:
            _remove(name)
            raise
    log.info("build network up", netns=name, subnet=str(subnet), uplinks=",".join(uplinks))
    return BuildNet(name, netns, str(subnet), resolv)


def _teardown(name: str) -> None:
    with _locked():
        _remove(name)
        if not _live_build_links():
            buildfw.drop()


def _remove(name: str) -> None:
    _run("ip", "link", "del", name, check=False)
    if (NETNS_DIR / name).exists():
        _run("ip", "netns", "del", name, check=False)


def _live_build_links() -> list[str]:
    out = _run("ip", "-o", "link", "show")
    names = [
        line.split(":", 2)[1].strip().split("@")[0] for line in out.splitlines() if ":" in line
    ]
    return [n for n in names if n.startswith(PREFIX_NAME) and len(n) == 15]


def leftover_names() -> list[str]:
    """Build netns on this host (of every daemon): csb + 12 hex digits."""
    if not NETNS_DIR.is_dir():
        return []
    return sorted(
        p.name for p in NETNS_DIR.iterdir() if p.name.startswith(PREFIX_NAME) and len(p.name) == 15
    )


async def remove_leftovers(build_ids: list[str]) -> None:
    """After a crash: the netns of these (dead) builds go, and the rules with the last."""

    def work() -> None:
        with _locked():
            for bid in build_ids:
                name = name_for(bid)
                if (NETNS_DIR / name).exists() or name in _live_build_links():
                    log.info("removing a build network left by a crash", netns=name)
                    _remove(name)
            if not _live_build_links() and not leftover_names():
                buildfw.drop()

    await asyncio.to_thread(work)


def _sysctl(key: str, value: str) -> None:
    Path("/proc/sys", key).write_text(value)


def _read_sysctl(key: str) -> str:
    return Path("/proc/sys", key).read_text().strip()


def _host_addresses() -> set[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    out = _run("ip", "-o", "addr", "show")
    addrs: set[ipaddress.IPv4Address | ipaddress.IPv6Address] = set()
    for line in out.splitlines():
        f = line.split()
        if len(f) > 3 and f[2] in ("inet", "inet6"):
            with contextlib.suppress(ValueError):
                addrs.add(ipaddress.ip_interface(f[3]).ip)
    return addrs


def _nameservers(text: str) -> list[str]:
    out = []
    for line in text.splitlines():
        f = line.split()
        if len(f) >= 2 and f[0] == "nameserver":
            out.append(f[1])
    return out


def _usable(server: str, local: set[ipaddress.IPv4Address | ipaddress.IPv6Address]) -> bool:
    try:
        ip = ipaddress.ip_address(server.split("%", 1)[0])
    except ValueError:
        return False
    return ip.version == 4 and not ip.is_loopback and ip not in local


def _resolv_conf() -> tuple[str, list[str]]:
    """The build's resolv.conf and its (IPv4, non-local) servers."""
    local = _host_addresses()
    try:
        text = HOST_RESOLV.read_text()
    except OSError:
        text = ""
    servers = _nameservers(text)
    if not any(_usable(s, local) for s in servers) and UPSTREAM_RESOLV.is_file():
        text = UPSTREAM_RESOLV.read_text()
        servers = _nameservers(text)
    if not any(_usable(s, local) for s in servers):
        log.warning(
            "the build network has no reachable resolver: the host's are loopback or "
            "host-local, and there is no /run/systemd/resolve/resolv.conf",
            nameservers=",".join(servers),
        )
        return text, []
    # Only servers the build can reach (a build has IPv4 only, and no path to the host).
    kept = [
        line
        for line in text.splitlines()
        if not (line.split()[:1] == ["nameserver"] and not _usable(line.split()[1], local))
    ]
    return "\n".join(kept) + "\n", [s for s in servers if _usable(s, local)]


def _uplinks(servers: list[str]) -> list[str]:
    devs: list[str] = []

    def add(route_line: str) -> None:
        f = route_line.split()
        if "dev" in f:
            dev = f[f.index("dev") + 1]
            if dev not in devs and not dev.startswith(PREFIX_NAME) and dev != "lo":
                devs.append(dev)

    for line in _run("ip", "-4", "route", "show", "default").splitlines():
        add(line)
    for s in servers:
        for line in _run("ip", "-4", "route", "get", s, check=False).splitlines():
            add(line)
    return devs


def _free_subnet() -> ipaddress.IPv4Network:
    used: list[ipaddress.IPv4Network] = []
    for line in _run("ip", "-4", "-o", "addr", "show").splitlines():
        f = line.split()
        if len(f) > 3 and f[2] == "inet":
            used.append(ipaddress.IPv4Interface(f[3]).network)
    for line in _run("ip", "-4", "route", "show", "table", "all").splitlines():
        dest = line.split()[0] if line.split() else ""
        if dest in ("default", "broadcast", "local", "unreachable", "multicast"):
            dest = line.split()[1] if len(line.split()) > 1 else ""
        with contextlib.suppress(ValueError):
            net = ipaddress.ip_network(dest, strict=False)
            if isinstance(net, ipaddress.IPv4Network) and net.prefixlen > 0:
                used.append(net)
    for sub in SUBNETS.subnets(new_prefix=PREFIX):
        if isinstance(sub, ipaddress.IPv4Network) and not any(sub.overlaps(u) for u in used):
            return sub
    raise Internal("every build subnet in 10.214.0.0/16 is in use")
