"""The OCI runtime spec (config.json) of a local sandbox.

Every sandbox gets user, pid, mount, uts, ipc, cgroup and network namespaces
(the network namespace holds only loopback), cgroup limits, a seccomp filter,
no_new_privs, Docker's default capability set less CAP_NET_RAW, and masked
/proc paths. The seccomp filter is default-deny and at least as strict as
Docker's default profile.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from computesdkd.domain.model import Resources
from computesdkd.providers.common.env import DEFAULT_PATH
from computesdkd.providers.local.rootfs import ID_RANGE, UID_SHIFT

AGENT_DIR = "/.computesdk"

# Docker's default set without CAP_NET_RAW: enough for apt-get and pip as root,
# nothing that reaches the host. CAP_NET_RAW would let a shared-network member
# forge frames and addresses (the bridge drops them too, see network.py).
CAPABILITIES = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
]

# seccomp: default deny (EPERM), like Docker's default profile, so a syscall this
# list does not name (a new one included) is refused. Compared with Docker's
# profile (moby/profiles seccomp/default.json) this one is stricter: no x86/x32
# ABIs, no namespace flags on clone even for CAP_SYS_ADMIN (never granted here),
# socket() only for unix, netlink and non-raw inet sockets, socketpair only for
# unix, and no process_vm_readv/writev, name_to_handle_at, modify_ldt,
# clock_adjtime or io_uring. ptrace stays allowed (as in Docker on kernels >= 4.8):
# within the sandbox's pid namespace, and the agent makes itself non-dumpable.
# Names libseccomp does not know are skipped by runc, and syscalls newer than the
# newest known one answer ENOSYS, so libc falls back to the older call.
ALLOWED_SYSCALLS = [
    # files and descriptors
    "access", "chdir", "chmod", "chown", "close", "close_range", "copy_file_range",
    "creat", "dup", "dup2", "dup3", "faccessat", "faccessat2", "fadvise64", "fallocate",
    "fchdir", "fchmod", "fchmodat", "fchmodat2", "fchown", "fchownat", "fcntl",
    "fdatasync", "fgetxattr", "flistxattr", "flock", "fremovexattr", "fsetxattr", "fstat",
    "fstatfs", "fsync", "ftruncate", "futimesat", "getcwd", "getdents", "getdents64",
    "getxattr", "getxattrat", "lchown", "lgetxattr", "link", "linkat", "listxattr",
    "listxattrat", "llistxattr", "lremovexattr", "lseek", "lsetxattr", "lstat", "mkdir",
    "mkdirat", "mknod", "mknodat", "newfstatat", "open", "openat", "openat2", "pipe",
    "pipe2", "pread64", "preadv", "preadv2", "pwrite64", "pwritev", "pwritev2", "read",
    "readahead", "readlink", "readlinkat", "readv", "removexattr", "removexattrat",
    "rename", "renameat", "renameat2", "rmdir", "sendfile", "setxattr", "setxattrat",
    "splice", "stat", "statfs", "statx", "symlink", "symlinkat", "sync", "sync_file_range",
    "syncfs", "tee", "truncate", "umask", "unlink", "unlinkat", "utime", "utimensat",
    "utimes", "vmsplice", "write", "writev", "chroot", "statmount", "listmount",
    "cachestat",
    # events, polling, timers, aio
    "epoll_create", "epoll_create1", "epoll_ctl", "epoll_pwait", "epoll_pwait2",
    "epoll_wait", "eventfd", "eventfd2", "fanotify_mark", "inotify_add_watch",
    "inotify_init", "inotify_init1", "inotify_rm_watch", "io_cancel", "io_destroy",
    "io_getevents", "io_pgetevents", "io_setup", "io_submit", "ioctl", "poll", "ppoll",
    "pselect6", "select", "signalfd", "signalfd4", "timerfd_create", "timerfd_gettime",
    "timerfd_settime", "alarm", "getitimer", "setitimer", "timer_create", "timer_delete",
    "timer_getoverrun", "timer_gettime", "timer_settime", "clock_getres", "clock_gettime",
    "clock_nanosleep", "gettimeofday", "nanosleep", "time", "adjtimex",
    # memory
    "brk", "madvise", "membarrier", "memfd_create", "memfd_secret", "mincore", "mlock",
    "mlock2", "mlockall", "mmap", "mprotect", "mremap", "mseal", "msync", "munlock",
    "munlockall", "munmap", "pkey_alloc", "pkey_free", "pkey_mprotect",
    "remap_file_pages", "map_shadow_stack",
    # processes, threads, signals, scheduling, credentials
    "arch_prctl", "capget", "capset", "execve", "execveat", "exit", "exit_group", "fork",
    "vfork", "futex", "futex_requeue", "futex_wait", "futex_waitv", "futex_wake",
    "get_robust_list", "set_robust_list", "get_thread_area", "set_thread_area",
    "set_tid_address", "getcpu", "getegid", "geteuid", "getgid", "getgroups", "getpgid",
    "getpgrp", "getpid", "getppid", "getpriority", "getrandom", "getresgid", "getresuid",
    "getrlimit", "getrusage", "getsid", "gettid", "getuid", "ioprio_get", "ioprio_set",
    "kill", "tgkill", "tkill", "pause", "pidfd_open", "pidfd_send_signal", "prctl",
    "prlimit64", "process_mrelease", "ptrace", "restart_syscall", "rseq", "rt_sigaction",
    "rt_sigpending", "rt_sigprocmask", "rt_sigqueueinfo", "rt_sigreturn",
    "rt_sigsuspend", "rt_sigtimedwait", "rt_tgsigqueueinfo", "sched_get_priority_max",
    "sched_get_priority_min", "sched_getaffinity", "sched_getattr", "sched_getparam",
    "sched_getscheduler", "sched_rr_get_interval", "sched_setaffinity", "sched_setattr",
    "sched_setparam", "sched_setscheduler", "sched_yield", "seccomp", "setfsgid",
    "setfsuid", "setgid", "setgroups", "setpgid", "setpriority", "setregid", "setresgid",
    "setresuid", "setreuid", "setrlimit", "setsid", "setuid", "sigaltstack", "sysinfo",
    "times", "uname", "wait4", "waitid", "landlock_add_rule", "landlock_create_ruleset",
    "landlock_restrict_self", "uretprobe",
    # System V and POSIX IPC (the sandbox has its own ipc namespace)
    "mq_getsetattr", "mq_notify", "mq_open", "mq_timedreceive", "mq_timedsend",
    "mq_unlink", "msgctl", "msgget", "msgrcv", "msgsnd", "semctl", "semget", "semop",
    "semtimedop", "shmat", "shmctl", "shmdt", "shmget",
    # sockets (socket and socketpair themselves: SOCKET_RULES)
    "accept", "accept4", "bind", "connect", "getpeername", "getsockname", "getsockopt",
    "listen", "recvfrom", "recvmmsg", "recvmsg", "sendmmsg", "sendmsg", "sendto",
    "setsockopt", "shutdown",
]  # fmt: skip

# Namespace flags that clone(2) may carry: NEWNS, NEWCGROUP, NEWUTS, NEWIPC,
# NEWUSER, NEWPID, NEWNET (Docker's mask, 0x7E020000). CLONE_NEWTIME (0x80) cannot
# be passed to clone (its low byte is the exit signal), only to clone3 and unshare,
# which are refused outright.
CLONE_NAMESPACE_FLAGS = 0x7E020000
ENOSYS = 38
AF_UNIX, AF_INET, AF_INET6, AF_NETLINK = 1, 2, 10, 16
SOCK_STREAM, SOCK_DGRAM, SOCK_SEQPACKET = 1, 2, 5
SOCK_TYPE_MASK = 0xF  # the rest of the type argument is SOCK_NONBLOCK / SOCK_CLOEXEC
# Docker's allowed personality(2) values: PER_LINUX, PER_LINUX32, UNAME26 with each,
# and the query.
PERSONALITIES = [0x0, 0x8, 0x20000, 0x20008, 0xFFFFFFFF]


def _arg(index: int, value: int, op: str = "SCMP_CMP_EQ", value_two: int = 0) -> dict[str, Any]:
    return {"index": index, "value": value, "valueTwo": value_two, "op": op}


def _allow(name: str, *args: dict[str, Any]) -> dict[str, Any]:
    # runc ANDs the conditions of one entry (on distinct arguments); entries OR.
    return {"names": [name], "action": "SCMP_ACT_ALLOW", "args": list(args)}


def _socket_rules() -> list[dict[str, Any]]:
    """socket() for unix and netlink sockets of any type, and for inet sockets of the
    stream, datagram and seqpacket types: AF_PACKET (17), AF_VSOCK (40), AF_ALG and
    every other family, raw sockets and the old (AF_INET, SOCK_PACKET) get EPERM."""
    rules = [_allow("socket", _arg(0, AF_UNIX)), _allow("socket", _arg(0, AF_NETLINK))]
    for family in (AF_INET, AF_INET6):
        for kind in (SOCK_STREAM, SOCK_DGRAM, SOCK_SEQPACKET):
            rules.append(
                _allow(
                    "socket", _arg(0, family), _arg(1, SOCK_TYPE_MASK, "SCMP_CMP_MASKED_EQ", kind)
                )
            )
    rules.append(_allow("socketpair", _arg(0, AF_UNIX)))
    return rules


MASKED_PATHS = [
    "/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
    "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi",
    "/sys/firmware", "/sys/devices/virtual/powercap",
]  # fmt: skip
READONLY_PATHS = [
    "/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger",
]  # fmt: skip


def seccomp_profile() -> dict[str, Any]:
    return {
        "defaultAction": "SCMP_ACT_ERRNO",
        "defaultErrnoRet": 1,
        # x86_64 only: SCMP_ARCH_X86 and SCMP_ARCH_X32 are left out on purpose, so a
        # syscall through the i386 (int 0x80) or x32 ABI kills the process (the
        # filter's bad-arch action). Those ABIs have their own syscall numbers and
        # socketcall(2), a multiplexer that would carry socket() past the argument
        # checks below; no sandbox image here has 32-bit userland.
        "architectures": ["SCMP_ARCH_X86_64"],
        "syscalls": [
            {"names": ALLOWED_SYSCALLS, "action": "SCMP_ACT_ALLOW"},
            # clone without namespace flags (fork, threads, vfork); with any: EPERM.
            _allow("clone", _arg(0, CLONE_NAMESPACE_FLAGS, "SCMP_CMP_MASKED_EQ", 0)),
            # clone3 passes its flags in memory, where seccomp cannot look: ENOSYS
            # makes glibc (pthread_create, posix_spawn) fall back to clone.
            {"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": ENOSYS},
            *(_allow("personality", _arg(0, p)) for p in PERSONALITIES),
            *_socket_rules(),
        ],
    }


def runtime_spec(
    *,
    sandbox_id: str,
    root_path: str,
    ctl_dir: str,
    agent_binary: str,
    resources: Resources,
    cgroup_parent: str,
    uid_base: int = UID_SHIFT,
    volumes: Sequence[tuple[str, str, bool]] = (),
) -> dict[str, Any]:
    """volumes: (host directory, path in the sandbox, read-only) bind mounts.

    The agent's control socket is no path at all: init inherits it as fd 3
    (runc --preserve-fds 1). ctl_dir, a daemon-owned directory, is bound
    read-only at /.computesdk/ctl for sockets the sandbox may connect to but
    never replace (the channel socket). The agent keeps process output on a
    tmpfs inside the sandbox, charged to the sandbox's memory cgroup."""
    mem = resources.memory_mb * 1024 * 1024
    # The agent's output store: a tmpfs of a quarter of the memory limit it is
    # charged to, so kept output alone never takes a sandbox to its OOM killer
    # (when it fills, the agent drops finished processes' output first). A stream
    # keeps two segments: a running process's two streams take half of it at most.
    run_mb = max(16, resources.memory_mb // 4)
    segment = min(32 << 20, (run_mb << 20) // 8)
    period = 100_000
    # uid_base: the sandbox's own range (idmap.py); builds write the storage range.
    ids = [{"containerID": 0, "hostID": uid_base, "size": ID_RANGE}]
    volume_mounts = [
        {
            "destination": path,
            "type": "bind",
            "source": host,
            "options": ["rbind", "ro" if ro else "rw", "nosuid", "nodev"],
        }
        for host, path, ro in volumes
    ]
    spec: dict[str, Any] = {
        "ociVersion": "1.0.2",
        "process": {
            "terminal": False,
            "user": {"uid": 0, "gid": 0},
            "args": [
                f"{AGENT_DIR}/agent",
                "-listen-fd",
                "3",
                "-segment-bytes",
                str(segment),
                "-state",
                f"{AGENT_DIR}/run/proc",
            ],
            "env": [f"PATH={DEFAULT_PATH}", "HOME=/root", "LANG=C.UTF-8"],
            "cwd": "/",
            "capabilities": {k: CAPABILITIES for k in ("bounding", "effective", "permitted")},
            "noNewPrivileges": True,
            "oomScoreAdj": 500,
        },
        "root": {"path": root_path, "readonly": False},
        "hostname": "sandbox",
        "mounts": [
            {
                "destination": "/proc",
                "type": "proc",
                "source": "proc",
                "options": ["nosuid", "noexec", "nodev"],
            },
            {
                "destination": "/dev",
                "type": "tmpfs",
                "source": "tmpfs",
                "options": ["nosuid", "strictatime", "mode=755", "size=65536k"],
            },
            {
                "destination": "/dev/pts",
                "type": "devpts",
                "source": "devpts",
                "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"],
            },
            {
                "destination": "/dev/shm",
                "type": "tmpfs",
                "source": "shm",
                "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
            },
            {
                "destination": "/dev/mqueue",
                "type": "mqueue",
                "source": "mqueue",
                "options": ["nosuid", "noexec", "nodev"],
            },
            {
                "destination": "/sys",
                "type": "sysfs",
                "source": "sysfs",
                "options": ["nosuid", "noexec", "nodev", "ro"],
            },
            # The sandbox's own cgroup, read-only: runtimes size themselves from it.
            {
                "destination": "/sys/fs/cgroup",
                "type": "cgroup",
                "source": "cgroup",
                "options": ["nosuid", "noexec", "nodev", "relatime", "ro"],
            },
            {
                "destination": f"{AGENT_DIR}/run",
                "type": "tmpfs",
                "source": "tmpfs",
                "options": [
                    "nosuid",
                    "nodev",
                    "noexec",
                    "mode=700",
                    f"size={run_mb}m",
                ],
            },
            {
                "destination": f"{AGENT_DIR}/ctl",
                "type": "bind",
                "source": ctl_dir,
                "options": ["bind", "ro", "nosuid", "nodev", "noexec"],
            },
            {
                "destination": f"{AGENT_DIR}/agent",
                "type": "bind",
                "source": agent_binary,
                "options": ["bind", "ro", "nosuid", "nodev"],
            },
        ],
        "linux": {
            "uidMappings": ids,
            "gidMappings": ids,
            "namespaces": [
                {"type": t} for t in ("pid", "network", "ipc", "uts", "mount", "user", "cgroup")
            ],
            "cgroupsPath": f"{cgroup_parent}/{sandbox_id}",
            "resources": {
                "devices": [{"allow": False, "access": "rwm"}],
                "memory": {"limit": mem, "swap": mem},
                "cpu": {
                    "quota": int(resources.cpu_cores * period),
                    "period": period,
                    "shares": max(2, int(resources.cpu_cores * 1024)),
                },
                "pids": {"limit": resources.pids_limit},
            },
            "maskedPaths": MASKED_PATHS,
            "readonlyPaths": READONLY_PATHS,
            "seccomp": seccomp_profile(),
        },
    }
    spec["mounts"].extend(volume_mounts)
    return spec


def build_spec(
    *,
    build_id: str,
    root_path: str,
    script: str,
    env: dict[str, str],
    resources: Resources,
    cgroup_parent: str,
    netns: str,
    userns: str,
    sysfs: str,
    binds: Sequence[tuple[str, str]] = (),
) -> dict[str, Any]:
    """A template build step: the sandbox's confinement (seccomp, capabilities,
    user namespace) without the agent, in the build's own NAT'd network namespace
    (netns: its path under /run/netns; see buildnet.py), as in `docker build`.

    userns: the build's user namespace (idmap.container_userns, 0 -> the storage
    uid), which owns that netns: runc joins the user namespace first, then the
    netns. The step has no CAP_NET_ADMIN, so it changes nothing of its network;
    sysfs is a read-only sysfs of that netns that the host mounted, bound at
    /sys. binds: (host file, path in the step) bound read-only (the resolver, the
    host's CA bundle)."""
    spec = runtime_spec(
        sandbox_id=build_id,
        root_path=root_path,
        ctl_dir="",
        agent_binary="",
        resources=resources,
        cgroup_parent=cgroup_parent,
    )
    spec["process"]["args"] = ["/bin/sh", "-c", script]
    spec["process"]["env"] = [f"{k}={v}" for k, v in env.items()]
    for ns in spec["linux"]["namespaces"]:
        if ns["type"] == "network":
            ns["path"] = netns
        elif ns["type"] == "user":
            ns["path"] = userns
    mounts = [m for m in spec["mounts"] if not m["destination"].startswith(AGENT_DIR)]
    for m in mounts:
        if m["type"] == "sysfs":
            m.update(
                type="bind", source=sysfs, options=["rbind", "ro", "nosuid", "nodev", "noexec"]
            )
    mounts.extend(
        {
            "destination": dest,
            "type": "bind",
            "source": source,
            "options": ["bind", "ro", "nosuid", "nodev"],
        }
        for source, dest in binds
    )
    spec["mounts"] = mounts
    return spec
