"""Spoofing on a shared network: the bridge port of a member passes only what the
member may send (IPv4 from its own address and MAC, ARP naming itself).

A member cannot forge frames itself (no CAP_NET_RAW or CAP_NET_ADMIN: see
test_confinement), so the filter is tested as if it could: the test, as host
root, enters member A's network namespace and writes frames straight onto A's
eth0, the way a sandbox escape or a leaked capability would. A sniffer in member
B's namespace reports which of them arrive.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
import uuid

from hoststate import init_pid

from computesdk import Client, ComputeSDKError
from conftest import DaemonProcess

SNIFF = r"""
import json, select, socket, sys, time
tok = sys.argv[1].encode()
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
s.bind(("eth0", 0))
print("ready", flush=True)
seen, deadline = [], time.monotonic() + 60
while time.monotonic() < deadline:
    if not select.select([s], [], [], 1)[0]:
        continue
    frame, addr = s.recvfrom(65535)
    if addr[2] == socket.PACKET_OUTGOING:
        continue
    i = frame.find(tok)
    if i >= 0:
        label = frame[i + len(tok):].split(b"!")[0].decode()
        seen.append(label)
        if label == "GENUINE-END":
            break
print(json.dumps(seen), flush=True)
"""

INJECT = r"""
import socket, struct, sys
tok, a_mac, a_ip, b_ip, other_ip = sys.argv[1:6]
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind(("eth0", 0))
BCAST = b"\xff" * 6
FORGED_MAC = "02:de:ad:be:ef:01"

def mac(m):
    return bytes.fromhex(m.replace(":", ""))

def csum(data):
    total = sum(struct.unpack("!%dH" % (len(data) // 2), data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF

def ipv4(src, dst, payload):
    udp = struct.pack("!HHHH", 40000, 40000, 8 + len(payload), 0) + payload
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, 17, 0,
                      socket.inet_aton(src), socket.inet_aton(dst))
    return hdr[:10] + struct.pack("!H", csum(hdr)) + hdr[12:] + udp

def eth(src, etype, payload):
    return BCAST + mac(src) + struct.pack("!H", etype) + payload

def arp(sha, spa, tpa, pad):
    return struct.pack("!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, 2, mac(sha), socket.inet_aton(spa),
                       b"\0" * 6, socket.inet_aton(tpa)) + pad

def m(label):
    return tok.encode() + label.encode() + b"!"

frames = [
    eth(a_mac, 0x0800, ipv4(other_ip, b_ip, m("SPOOF-IP"))),
    eth(a_mac, 0x0800, ipv4(b_ip, b_ip, m("SPOOF-IP-OF-B"))),
    eth(FORGED_MAC, 0x0800, ipv4(a_ip, b_ip, m("SPOOF-MAC"))),
    eth(a_mac, 0x0806, arp(a_mac, other_ip, b_ip, m("SPOOF-ARP"))),
    eth(a_mac, 0x0806, arp(FORGED_MAC, a_ip, b_ip, m("SPOOF-ARP-MAC"))),
    eth(FORGED_MAC, 0x0806, arp(FORGED_MAC, a_ip, b_ip, m("SPOOF-ARP-ETH"))),
    eth(a_mac, 0x86DD, b"\x60" + b"\0" * 39 + m("IPV6")),
    eth(a_mac, 0x8100, struct.pack("!HH", 5, 0x0800) + ipv4(a_ip, b_ip, m("VLAN"))),
    eth(a_mac, 0x88B5, m("OTHER-ETHERTYPE")),
    eth(a_mac, 0x0806, arp(a_mac, a_ip, b_ip, m("GENUINE-ARP"))),
    eth(a_mac, 0x0800, ipv4(a_ip, b_ip, m("GENUINE-IP"))),
    eth(a_mac, 0x0800, ipv4(a_ip, b_ip, m("GENUINE-END"))),
]
for f in frames:
    s.send(f)
print("sent", len(frames), flush=True)
"""


async def test_forged_frames_from_a_member_never_reach_another(
    client: Client, daemon: DaemonProcess
) -> None:
    a = await client.create("local", template="python")
    b = await client.create("local", template="python")
    name = f"spoof-{uuid.uuid4().hex[:8]}"
    try:
        net = await client.networks.create(name, {"a": a, "b": b})
        a_ip, b_ip = net.members["a"][1], net.members["b"][1]
        other_ip = a_ip.rsplit(".", 1)[0] + ".200"
        a_mac = (await a.exec("cat /sys/class/net/eth0/address")).stdout.strip()
        assert len(a_mac) == 17
        tok = uuid.uuid4().hex[:12]

        sniffer = subprocess.Popen(
            ["nsenter", f"--net=/proc/{init_pid(daemon, b.id)}/ns/net",
             sys.executable, "-c", SNIFF, tok],
            stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            assert sniffer.stdout is not None
            ready = await asyncio.to_thread(sniffer.stdout.readline)
            assert ready == "ready\n"
            inject = subprocess.run(
                ["nsenter", f"--net=/proc/{init_pid(daemon, a.id)}/ns/net",
                 sys.executable, "-c", INJECT, tok, a_mac, a_ip, b_ip, other_ip],
                capture_output=True, text=True, timeout=30,
            )  # fmt: skip
            assert inject.returncode == 0, inject.stderr
            out, _ = await asyncio.to_thread(sniffer.communicate, timeout=90)
        finally:
            with contextlib.suppress(ProcessLookupError):
                sniffer.kill()
        seen = json.loads(out.strip().splitlines()[-1])
        # The genuine frames prove the path works; every forged one was dropped.
        assert seen == ["GENUINE-ARP", "GENUINE-IP", "GENUINE-END"], seen

        # And the members still talk to each other normally.
        await b.start_process("python3 -m http.server 8000 --bind 0.0.0.0")
        fetch = (
            "import urllib.request,sys,time\n"
            "for _ in range(100):\n"
            "    try:\n"
            "        print(urllib.request.urlopen(sys.argv[1], timeout=2).status); break\n"
            "    except OSError: time.sleep(0.1)\n"
        )
        r = await a.exec(["python3", "-c", fetch, f"http://{b_ip}:8000/"])
        assert r.stdout == "200\n", r.stderr
    finally:
        with contextlib.suppress(ComputeSDKError):
            await client.networks.delete(name)
        for sb in (a, b):
            with contextlib.suppress(ComputeSDKError):
                await sb.destroy()
