"""The OCI runtime spec (config.json) of a local sandbox.

Every sandbox gets user, pid, mount, uts, ipc, cgroup and network namespaces
(the network namespace holds only loopback), cgroup limits, a seccomp filter,
no_new_privs, Docker's default capability set and masked /proc paths.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ...model import Resources
from .rootfs import ID_RANGE, UID_SHIFT
from .templates import DEFAULT_PATH

AGENT_DIR = "/.computesdk"

# Docker's default set: enough for apt-get and pip as root, nothing that reaches the host.
CAPABILITIES = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
]

# Syscalls that reach the kernel's global state or other namespaces; refused with EPERM.
DENIED_SYSCALLS = [
    "acct", "add_key", "bpf", "clock_adjtime", "clock_settime", "create_module",
    "delete_module", "finit_module", "fsconfig", "fsmount", "fsopen", "fspick",
    "get_kernel_syms", "init_module", "io_uring_enter", "io_uring_register",
    "io_uring_setup", "ioperm", "iopl", "kcmp", "kexec_file_load", "kexec_load", "keyctl",
    "lookup_dcookie", "mount", "mount_setattr", "move_mount", "name_to_handle_at",
    "nfsservctl", "open_by_handle_at", "open_tree", "perf_event_open", "pivot_root",
    "process_vm_readv", "process_vm_writev", "query_module", "quotactl", "quotactl_fd",
    "reboot", "request_key", "setns", "settimeofday", "stime", "swapoff", "swapon",
    "_sysctl", "sysfs", "umount", "umount2", "unshare", "uselib", "userfaultfd", "ustat",
    "vm86", "vm86old",
]  # fmt: skip

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
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
        "syscalls": [
            {"names": DENIED_SYSCALLS, "action": "SCMP_ACT_ERRNO", "errnoRet": 1},
        ],
    }


def runtime_spec(
    *,
    sandbox_id: str,
    root_path: str,
    run_dir: str,
    agent_binary: str,
    resources: Resources,
    cgroup_parent: str,
    volumes: Sequence[tuple[str, str, bool]] = (),
) -> dict[str, Any]:
    """volumes: (host directory, path in the sandbox, read-only) bind mounts."""
    mem = resources.memory_mb * 1024 * 1024
    period = 100_000
    ids = [{"containerID": 0, "hostID": UID_SHIFT, "size": ID_RANGE}]
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
                "-socket",
                f"{AGENT_DIR}/run/agent.sock",
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
                "type": "bind",
                "source": run_dir,
                "options": ["rbind", "rw", "nosuid", "nodev"],
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
    host_files: Sequence[str] = (),
) -> dict[str, Any]:
    """A template build step: the sandbox's confinement, but with the host's network
    (package managers must reach their mirrors, as in `docker build`) and no agent.
    host_files are bound read-only over the same paths (the resolver, and the CA
    bundle: the step trusts what the host's own package managers trust)."""
    spec = runtime_spec(
        sandbox_id=build_id,
        root_path=root_path,
        run_dir="",
        agent_binary="",
        resources=resources,
        cgroup_parent=cgroup_parent,
    )
    spec["process"]["args"] = ["/bin/sh", "-c", script]
    spec["process"]["env"] = [f"{k}={v}" for k, v in env.items()]
    spec["linux"]["namespaces"] = [
        ns for ns in spec["linux"]["namespaces"] if ns["type"] != "network"
    ]
    mounts = [m for m in spec["mounts"] if not m["destination"].startswith(AGENT_DIR)]
    for m in mounts:
        if m["type"] == "sysfs":
            # A user namespace may mount sysfs only in a network namespace it owns.
            m.update(type="bind", source="/sys", options=["rbind", "ro", "nosuid", "nodev"])
    mounts.extend(
        {
            "destination": path,
            "type": "bind",
            "source": path,
            "options": ["bind", "ro", "nosuid", "nodev"],
        }
        for path in host_files
    )
    spec["mounts"] = mounts
    return spec
