"""Attacks on the sandbox's own confinement: namespaces, sockets, ABIs, capabilities.

Each probe runs as root inside a real sandbox. Where the kernel alone would
refuse (no capability), the probe pairs the attempt with CLONE_NEWUSER, which
an unconfined root could always use to get a full capability set; so each
assertion fails if the seccomp filter or the capability set regresses.
"""

from __future__ import annotations

import json

from computesdk import Sandbox

CAP_NET_RAW = 13
CAP_SYS_ADMIN = 21
CAP_NET_ADMIN = 12

_PRELUDE = r"""
import ctypes, errno, json, os, socket, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
SIGCHLD = 17

def err(r):
    return "ok" if r >= 0 else errno.errorcode.get(ctypes.get_errno(), str(ctypes.get_errno()))

def raw_clone(flags):
    # A fork-like clone (no new stack): a child that got through exits at once.
    r = libc.syscall(56, ctypes.c_ulong(flags | SIGCHLD), 0, 0, 0, 0)
    if r == 0:
        os._exit(0)
    if r > 0:
        os.waitpid(r, 0)
    return err(r)
"""

NS = {
    "NEWNS": 0x00020000,
    "NEWCGROUP": 0x02000000,
    "NEWUTS": 0x04000000,
    "NEWIPC": 0x08000000,
    "NEWUSER": 0x10000000,
    "NEWPID": 0x20000000,
    "NEWNET": 0x40000000,
}


async def _probe(sb: Sandbox, body: str) -> dict[str, object]:
    r = await sb.exec(["python3", "-c", _PRELUDE + body])
    assert r.exit_code == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert isinstance(out, dict)
    return out


async def test_clone_with_namespace_flags_is_refused(sandbox: Sandbox) -> None:
    body = (
        f"NS = {NS!r}\n"
        "out = {'plain': raw_clone(0)}\n"
        "for name, flag in NS.items():\n"
        "    out['NEWUSER|' + name] = raw_clone(NS['NEWUSER'] | flag)\n"
        "out['NEWUSER|NEWNET|NEWNS'] = raw_clone(NS['NEWUSER'] | NS['NEWNET'] | NS['NEWNS'])\n"
        "print(json.dumps(out))\n"
    )
    out = await _probe(sandbox, body)
    assert out.pop("plain") == "ok"  # fork through clone still works
    assert out and set(out.values()) == {"EPERM"}, out


async def test_clone3_answers_enosys_and_unshare_setns_are_refused(sandbox: Sandbox) -> None:
    body = r"""
class CloneArgs(ctypes.Structure):
    _fields_ = [(n, ctypes.c_uint64) for n in (
        "flags", "pidfd", "child_tid", "parent_tid", "exit_signal", "stack",
        "stack_size", "tls", "set_tid", "set_tid_size", "cgroup")]
out = {}
for name, flags in (("plain", 0), ("newuser", 0x10000000)):
    args = CloneArgs(flags=flags, exit_signal=SIGCHLD)
    r = libc.syscall(435, ctypes.byref(args), ctypes.c_size_t(ctypes.sizeof(args)))
    if r == 0:
        os._exit(0)
    if r > 0:
        os.waitpid(r, 0)
    out["clone3 " + name] = err(r)
out["unshare"] = err(libc.unshare(0x10000000))
out["unshare net"] = err(libc.unshare(0x40000000))
fd = os.open("/proc/self/ns/net", os.O_RDONLY)
out["setns"] = err(libc.setns(fd, 0))
print(json.dumps(out))
"""
    out = await _probe(sandbox, body)
    assert out == {
        "clone3 plain": "ENOSYS",
        "clone3 newuser": "ENOSYS",
        "unshare": "EPERM",
        "unshare net": "EPERM",
        "setns": "EPERM",
    }
    r = await sandbox.exec("unshare -U true", check=False)
    assert r.exit_code != 0
    r = await sandbox.exec("unshare -Ur -n true", check=False)
    assert r.exit_code != 0


async def test_packet_raw_vsock_and_exotic_sockets_are_refused(sandbox: Sandbox) -> None:
    body = r"""
def sock(family, kind, proto=0):
    try:
        socket.socket(family, kind, proto).close()
        return "ok"
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e.errno))
out = {
    "packet raw": sock(17, socket.SOCK_RAW, 0x0300),
    "packet dgram": sock(17, socket.SOCK_DGRAM, 0x0300),
    "inet raw": sock(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP),
    "inet raw nonblock": sock(socket.AF_INET, socket.SOCK_RAW | socket.SOCK_NONBLOCK, 255),
    "inet6 raw": sock(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6),
    "inet SOCK_PACKET": sock(socket.AF_INET, 10, 0x0300),
    "vsock stream": sock(40, socket.SOCK_STREAM),
    "vsock dgram": sock(40, socket.SOCK_DGRAM),
    "alg": sock(38, socket.SOCK_SEQPACKET),
    "tipc": sock(30, socket.SOCK_RDM),
    # what must keep working
    "tcp": sock(socket.AF_INET, socket.SOCK_STREAM),
    "udp6 cloexec": sock(socket.AF_INET6, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC),
    "unix": sock(socket.AF_UNIX, socket.SOCK_STREAM),
    "netlink route": sock(16, socket.SOCK_RAW, 0),
}
try:
    socket.socketpair(socket.AF_UNIX).__class__
    out["socketpair unix"] = "ok"
except OSError as e:
    out["socketpair unix"] = errno.errorcode[e.errno]
# Through a fresh user namespace, where root would hold CAP_NET_RAW.
pid = libc.syscall(56, ctypes.c_ulong(0x10000000 | SIGCHLD), 0, 0, 0, 0)
if pid == 0:
    try:
        socket.socket(17, socket.SOCK_RAW, 0x0300)
        os._exit(0)
    except OSError:
        os._exit(3)
out["packet in new userns"] = err(pid) if pid < 0 else os.waitpid(pid, 0)[1] >> 8
print(json.dumps(out))
"""
    out = await _probe(sandbox, body)
    refused = {k: v for k, v in out.items() if k not in (
        "tcp", "udp6 cloexec", "unix", "netlink route", "socketpair unix",
        "packet in new userns")}  # fmt: skip
    assert set(refused.values()) == {"EPERM"}, out
    for k in ("tcp", "udp6 cloexec", "unix", "netlink route", "socketpair unix"):
        assert out[k] == "ok", (k, out)
    assert out["packet in new userns"] == "EPERM", out


async def test_the_32bit_abi_cannot_carry_syscalls_past_the_filter(sandbox: Sandbox) -> None:
    # int 0x80 from a 64-bit process takes the i386 syscall table, where socket is
    # 359 (and socketcall 102 multiplexes every socket call). The filter knows only
    # x86_64: the process is killed with SIGSYS instead of getting a vsock socket.
    body = r"""
import mmap, subprocess
child = '''
import ctypes, mmap, os
code = bytes.fromhex(
    "53"            # push rbx
    "b867010000"    # mov eax, 359 (i386 socket)
    "bb28000000"    # mov ebx, 40 (AF_VSOCK)
    "b901000000"    # mov ecx, 1 (SOCK_STREAM)
    "ba00000000"    # mov edx, 0
    "cd80"          # int 0x80
    "5b"            # pop rbx
    "c3")           # ret
buf = mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
buf.write(code)
addr = ctypes.addressof(ctypes.c_char.from_buffer(buf))
fn = ctypes.CFUNCTYPE(ctypes.c_int)(addr)
print("returned", fn(), flush=True)
'''
p = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True)
print(json.dumps({"rc": p.returncode, "out": p.stdout.strip()}))
"""
    out = await _probe(sandbox, body)
    assert out == {"rc": -31, "out": ""}, out  # -SIGSYS


async def test_capabilities_lack_net_raw_and_admin(sandbox: Sandbox) -> None:
    status = (await sandbox.exec("cat /proc/self/status")).stdout
    fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
    for key in ("CapEff", "CapPrm", "CapBnd"):
        caps = int(fields[key], 16)
        for cap in (CAP_NET_RAW, CAP_NET_ADMIN, CAP_SYS_ADMIN):
            assert caps & (1 << cap) == 0, (key, cap)
    # What root in a sandbox keeps (chown, setuid, ...) is still there.
    assert int(fields["CapEff"], 16) & 0b11000001 == 0b11000001  # CHOWN, SETGID, SETUID


async def test_personality_is_limited_to_dockers_values(sandbox: Sandbox) -> None:
    body = r"""
libc.personality.restype = ctypes.c_int
out = {}
for name, value in (("query", 0xFFFFFFFF), ("linux", 0), ("linux32", 8),
                    ("addr_no_randomize", 0x0040000), ("read_implies_exec", 0x0400000)):
    r = libc.personality(ctypes.c_ulong(value))
    out[name] = err(r)
print(json.dumps(out))
"""
    out = await _probe(sandbox, body)
    assert out == {
        "query": "ok",
        "linux": "ok",
        "linux32": "ok",
        "addr_no_randomize": "EPERM",
        "read_implies_exec": "EPERM",
    }
    r = await sandbox.exec("setarch x86_64 -R true", check=False)
    assert r.exit_code != 0


async def test_ordinary_programs_still_work(sandbox: Sandbox) -> None:
    body = r"""
import subprocess, threading, multiprocessing
out = {}
seen = []
t = threading.Thread(target=lambda: seen.append(threading.get_native_id()))
t.start(); t.join()
out["thread"] = bool(seen) and seen[0] != threading.get_native_id()
out["subprocess"] = subprocess.run(["sh", "-c", "echo hi | tr a-z A-Z"],
                                   capture_output=True, text=True).stdout
pid = os.fork()
if pid == 0:
    os._exit(7)
out["fork"] = os.waitpid(pid, 0)[1] >> 8
with multiprocessing.Pool(2) as pool:
    out["pool"] = pool.map(abs, [-1, -2])
print(json.dumps(out))
"""
    out = await _probe(sandbox, body)
    assert out == {"thread": True, "subprocess": "HI\n", "fork": 7, "pool": [1, 2]}
    # What apt does for its _apt sandbox: drop to another uid and gid.
    r = await sandbox.exec(
        "setpriv --reuid=65534 --regid=65534 --clear-groups sh -c 'id -u; id -g'"
    )
    assert r.exit_code == 0 and r.stdout.split() == ["65534", "65534"], r.stderr
    # ptrace stays usable within the sandbox (debuggers, strace): a child traces itself.
    r = await sandbox.exec(
        [
            "python3",
            "-c",
            "import ctypes,os,signal\n"
            "libc=ctypes.CDLL(None,use_errno=True)\n"
            "pid=os.fork()\n"
            "if pid==0:\n"
            "    libc.ptrace(0,0,0,0); os.kill(os.getpid(),signal.SIGSTOP); os._exit(0)\n"
            "_,st=os.waitpid(pid,os.WUNTRACED)\n"
            "print(os.WIFSTOPPED(st)); libc.ptrace(7,pid,0,0); os.waitpid(pid,0)\n",
        ]
    )
    assert r.stdout == "True\n", r.stderr


async def test_the_agent_cannot_be_ptraced(sandbox: Sandbox) -> None:
    r = await sandbox.exec(
        [
            "python3",
            "-c",
            "import ctypes,errno\n"
            "libc=ctypes.CDLL(None,use_errno=True)\n"
            "r=libc.ptrace(16,1,0,0)\n"  # PTRACE_ATTACH to the agent (PID 1)
            "print(errno.errorcode.get(ctypes.get_errno()) if r<0 else 'attached')\n",
        ]
    )
    assert r.stdout == "EPERM\n", r.stdout + r.stderr
