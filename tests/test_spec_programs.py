"""The spec's blocks (../shared/spec/sandbox-management.md, copied to
docs/spec/), translated by hand to Python with only the provider names changed
to 'local', each run as a program: the venv's python in a subprocess, against a
daemon of this module's own (found through $COMPUTESDK_SOCKET, as a user's
program finds it). Blocks that need a GPU fail with GPU_UNAVAILABLE."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from computesdk import Client, CommandExitError, FailedPreconditionError, SandboxEventError
from computesdk.sync import SyncClient, list_active_sandboxes
from conftest import DaemonProcess, destroy_all_and_clean_up, new_daemon

# Each program starts with this: asyncio and the client's public names.
PRELUDE = """\
import asyncio, json, signal, sys
from computesdk import *
"""


@pytest.fixture(scope="module")
def spec_daemon() -> Iterator[DaemonProcess]:
    d = new_daemon()  # its own: the shutdown program destroys every active sandbox
    d.start()
    yield d
    destroy_all_and_clean_up(d)


def _write(d: DaemonProcess, body: str) -> Path:
    script = d.root / f"program-{abs(hash(body))}.py"
    script.write_text(PRELUDE + textwrap.dedent(body))
    return script


def _env(d: DaemonProcess) -> dict[str, str]:
    return {**os.environ, "COMPUTESDK_SOCKET": str(d.socket), "PYTHONUNBUFFERED": "1"}


def run(d: DaemonProcess, body: str, timeout: float = 300) -> list[str]:
    """Runs the program; it must exit 0. Returns its stdout lines."""
    p = subprocess.run(
        [sys.executable, str(_write(d, body))],
        env=_env(d),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert p.returncode == 0, f"exit {p.returncode}\n{p.stdout}\n{p.stderr[-4000:]}"
    return p.stdout.splitlines()


def results(lines: list[str]) -> dict[str, object]:
    """The program's `RESULT {json}` lines, merged."""
    out: dict[str, object] = {}
    for line in lines:
        if line.startswith("RESULT "):
            out.update(json.loads(line.removeprefix("RESULT ")))
    return out


def test_quick_start(spec_daemon: DaemonProcess) -> None:
    lines = run(spec_daemon, """
        async def main():
            # Create a new sandbox
            sandbox = await compute('local', template='python', metadata={'project': 'my-app'})
            # Use the sandbox
            r = await sandbox.exec('python --version')
            print('RESULT', json.dumps({'version': r.stdout + r.stderr,
                                        'metadata': sandbox.metadata}))
            # Clean up when done
            await sandbox.destroy()
        asyncio.run(main())
    """)  # fmt: skip
    got = results(lines)
    assert str(got["version"]).startswith("Python 3")
    assert got["metadata"] == {"project": "my-app"}


def test_basic_creation_and_the_gpu_variant(spec_daemon: DaemonProcess) -> None:
    got = results(run(spec_daemon, """
        async def main():
            sandbox = await compute('local')
            await sandbox.destroy()
            sandbox = await compute('local', template='nodejs18', timeout_ms=60000,
                                    keep_alive=True)
            node = (await sandbox.exec('node --version')).stdout
            keep = sandbox.info.keep_alive
            await sandbox.destroy()
            try:
                await compute('local', template='python:3.11', resources={
                    'cpu_cores': 4, 'memory_mb': 8192,
                    'gpu': {'enabled': True, 'type': 'nvidia-a100'}})
                gpu = 'created'
            except ComputeSDKError as e:
                gpu = e.reason
            print('RESULT', json.dumps({'node': node, 'keep_alive': keep, 'gpu': gpu}))
        asyncio.run(main())
    """))  # fmt: skip
    assert str(got["node"]).startswith("v") and got["keep_alive"] is True
    assert got["gpu"] == "GPU_UNAVAILABLE"


def test_template_based_creation(spec_daemon: DaemonProcess) -> None:
    got = results(run(spec_daemon, """
        async def main():
            try:
                await compute('local', template='pytorch-gpu')
                ml = 'created'
            except ComputeSDKError as e:
                ml = e.reason
            # Custom template creation. (The spec's numpy, pandas and scikit-learn
            # build the same way; one small pip package keeps this test quick.)
            custom_template = {
                'name': 'my-python-env',
                'baseImage': 'python:3.11-slim',
                'packages': ['six'],
                'env': {'PYTHONPATH': '/app', 'NODE_ENV': 'development'},
            }
            sandbox = await compute('local', template=custom_template)
            out = (await sandbox.exec('python -c "import six; print(six.__name__)"; '
                                      'echo $PYTHONPATH $NODE_ENV')).stdout
            again = await compute('local', template=custom_template)  # a cache hit
            await sandbox.destroy()
            await again.destroy()
            try:
                await compute('local', template={**custom_template, 'packages': ['x; rm -rf /']})
                bad = 'built'
            except ComputeSDKError as e:
                bad = e.reason
            print('RESULT', json.dumps({'ml': ml, 'out': out, 'bad': bad,
                                        'template': again.template}))
        asyncio.run(main())
    """, timeout=900))  # fmt: skip
    assert got == {
        "ml": "GPU_UNAVAILABLE",
        "out": "six\n/app development\n",
        "bad": "BAD_PACKAGE",
        "template": "my-python-env",
    }


def test_lifecycle_events(spec_daemon: DaemonProcess) -> None:
    got = results(run(spec_daemon, """
        async def main():
            sandbox = await compute('local')
            seen = []
            sandbox.on('created', lambda e: seen.append('created'))
            sandbox.on('ready', lambda e: seen.append('ready'))
            sandbox.on('error', lambda error: print('Sandbox error:', error))
            sandbox.on('destroyed', lambda e: seen.append('destroyed'))
            sandbox.on('connected', lambda: print('Connected to sandbox'))
            sandbox.on('disconnected', lambda: print('Disconnected from sandbox'))
            sandbox.on('reconnecting', lambda: print('Attempting to reconnect...'))
            while 'ready' not in seen:
                await asyncio.sleep(0.05)
            await sandbox.destroy()  # lets 'destroyed' reach the callbacks first
            print('RESULT', json.dumps({'seen': seen}))
        asyncio.run(main())
    """))  # fmt: skip
    assert got["seen"] == ["created", "ready", "destroyed"]


def test_status_monitoring(spec_daemon: DaemonProcess) -> None:
    got = results(run(spec_daemon, """
        async def main():
            sandbox = await compute('local', template='python')
            status = await sandbox.get_status()
            print('Status:', status.state, 'Uptime:', status.uptime_ms)
            samples = []
            # Continuous monitoring: an async iterator; leaving the loop stops it.
            async for metrics in sandbox.monitor(interval_ms=200,
                                                 metrics=['cpu', 'memory', 'disk', 'network']):
                samples.append([metrics.cpu.percent, metrics.memory.used_mb,
                                metrics.disk.used_mb, metrics.memory.total_mb])
                if len(samples) == 3:
                    break
            print('RESULT', json.dumps({'state': status.state,
                                        'memory_mb': status.resources.memory_mb,
                                        'samples': samples}))
            await sandbox.destroy()
        asyncio.run(main())
    """))  # fmt: skip
    assert got["state"] == "running" and isinstance(got["memory_mb"], int)
    samples = got["samples"]
    assert isinstance(samples, list) and len(samples) == 3
    assert all(s[1] > 0 and s[3] > 0 and s[0] >= 0 for s in samples)


def test_health_checks(spec_daemon: DaemonProcess) -> None:
    got = results(run(spec_daemon, """
        async def main():
            sandbox = await compute('local', template='python')
            # Built-in health check
            is_healthy = await sandbox.health_check()
            # Custom health checks
            health_checks = {
                'python': lambda: sandbox.exec('python --version'),
                'node': lambda: sandbox.exec('node --version'),
                'disk': lambda: sandbox.exec('df -h'),
                'network': lambda: sandbox.exec('ping -c 1 google.com'),
            }
            async def run_health_checks(sandbox):
                results = {}
                for name, check in health_checks.items():
                    try:
                        await check()
                        results[name] = 'healthy'
                    except Exception:
                        results[name] = 'unhealthy'
                return results
            print('RESULT', json.dumps({'is_healthy': is_healthy,
                                        'checks': await run_health_checks(sandbox)}))
            await sandbox.destroy()
        asyncio.run(main())
    """))  # fmt: skip
    assert got["is_healthy"] is True
    checks = got["checks"]
    assert isinstance(checks, dict)
    assert checks["python"] == checks["node"] == checks["disk"] == "healthy"
    assert checks["network"] == "unhealthy"  # sandboxes have no network, nor ping


def test_resource_monitoring_limits_and_alerts(spec_daemon: DaemonProcess) -> None:
    got = results(run(spec_daemon, """
        async def main():
            sandbox = await compute('local', template='python', resources={'memory_mb': 256})
            usage = await sandbox.get_resource_usage()
            print('CPU:', usage.cpu.percent)
            print('Memory:', usage.memory.used_mb, '/', usage.memory.total_mb)
            print('Disk:', usage.disk.used_mb, '/', usage.disk.total_mb)
            limits = await sandbox.set_resource_limits(cpu_percent=80, memory_mb=2048,
                                                       disk_mb=5120)
            alerts = []
            def on_alert(alert):
                print(f'Resource alert: {alert.type} usage is {alert.current}%')
                alerts.append([alert.type, alert.current, alert.threshold])
            sandbox.on('resourceAlert', on_alert)
            await sandbox.set_alert_thresholds([AlertThreshold('memory', 5, 1)], interval_ms=200)
            await sandbox.exec(['python3', '-c', 'import time; x = bytearray(200 << 20); '
                                'x[::4096] = b"1" * len(x[::4096]); time.sleep(2)'])
            for _ in range(100):
                if alerts:
                    break
                await asyncio.sleep(0.1)
            # Without online ext4 resize on this host the disk grows at the next restart.
            requested = (await sandbox.refresh()).requested_resources.disk_mb
            await sandbox.restart()
            df = (await sandbox.exec('df -m --output=size / | tail -1')).stdout
            print('RESULT', json.dumps({
                'usage': [usage.memory.total_mb, usage.disk.total_mb],
                'limits': [limits.memory_mb, requested], 'alerts': alerts,
                'disk_mb': int(df)}))
            await sandbox.destroy()
        asyncio.run(main())
    """))  # fmt: skip
    assert got["usage"] == [256, got["usage"][1]] and got["usage"][1] > 0  # type: ignore[index]
    assert got["limits"] == [2048, 5120]
    assert got["disk_mb"] > 4500  # type: ignore[operator]
    alerts = got["alerts"]
    assert isinstance(alerts, list) and alerts[0][0] == "memory"
    assert alerts[0][1] >= alerts[0][2] == 5


def test_persistent_storage(spec_daemon: DaemonProcess) -> None:
    got = results(run(spec_daemon, """
        async def main():
            sandbox = await compute('local', volumes=[
                {'name': 'workspace', 'path': '/workspace', 'size': '10GB', 'persistent': True},
                {'name': 'cache', 'path': '/cache', 'size': '5GB', 'persistent': False},
            ])
            await sandbox.exec('echo kept > /workspace/f && echo tmp > /cache/f')
            await sandbox.destroy()
            sandbox2 = await compute('local', volumes=[
                {'name': 'workspace', 'path': '/workspace', 'mount_existing': True},
            ])
            kept = (await sandbox2.exec('cat /workspace/f')).stdout
            await sandbox2.destroy()
            try:
                await compute('local', volumes=[
                    VolumeSpec('cache', '/cache', mount_existing=True)])
                cache = 'mounted'
            except NotFoundError as e:
                cache = e.reason
            print('RESULT', json.dumps({'kept': kept, 'cache': cache}))
        asyncio.run(main())
    """))  # fmt: skip
    assert got == {"kept": "kept\n", "cache": "VOLUME_NOT_FOUND"}


def test_snapshots_and_state(spec_daemon: DaemonProcess) -> None:
    got = results(run(spec_daemon, """
        async def main():
            sandbox = await compute('local', env={'MODE': 'saved'})
            await sandbox.files.write('/workspace/app.txt', 'v1')
            # Create a snapshot of current state
            snapshot_id = await sandbox.create_snapshot(
                name='before-deployment', description='State before deploying new version')
            await sandbox.files.write('/workspace/app.txt', 'v2')
            snapshots = await sandbox.list_snapshots()
            await sandbox.restore_snapshot(snapshot_id)
            restored = await sandbox.files.read_text('/workspace/app.txt')
            await sandbox.delete_snapshot(snapshot_id)
            after_delete = await sandbox.list_snapshots()
            # Save sandbox state, then a new sandbox from it
            state = await sandbox.save_state()
            new_sandbox = await compute('local', restore_from=state)
            from_state = (await new_sandbox.exec('cat /workspace/app.txt; echo $MODE')).stdout
            # Export/import state
            state_data = await sandbox.export_state()
            imported_sandbox = await compute('local', import_state=state_data)
            imported = (await imported_sandbox.exec('cat /workspace/app.txt; echo $MODE')).stdout
            for sb in (sandbox, new_sandbox, imported_sandbox):
                await sb.destroy()
            print('RESULT', json.dumps({
                'id': snapshot_id, 'names': [s.name for s in snapshots],
                'descriptions': [s.description for s in snapshots], 'restored': restored,
                'after_delete': len(after_delete), 'from_state': from_state,
                'imported': imported, 'export_type': type(state_data).__name__}))
        asyncio.run(main())
    """))  # fmt: skip
    assert isinstance(got["id"], str) and got["id"]
    assert got["names"] == ["before-deployment"]
    assert got["descriptions"] == ["State before deploying new version"]
    assert got["restored"] == "v1" and got["after_delete"] == 0
    assert got["from_state"] == got["imported"] == "v1saved\n"
    assert got["export_type"] == "bytes"


def test_reset_and_restart(spec_daemon: DaemonProcess) -> None:
    got = results(run(spec_daemon, """
        async def main():
            sandbox = await compute('local', template='python')
            await sandbox.exec('echo data > /workspace/f && echo sys > /etc/extra')
            await sandbox.start_process(['sleep', '1000'])
            # Soft reset (clear processes, keep files)
            await sandbox.reset()
            running = [p for p in await sandbox.processes() if p.running]
            soft = [len(running), await sandbox.files.exists('/workspace/f')]
            # Hard reset (restore to initial state)
            await sandbox.reset(hard=True)
            hard = (await sandbox.exec('cat /etc/extra', check=False)).exit_code
            # Restart sandbox
            await sandbox.restart()
            # Restart with new configuration
            await sandbox.restart(template='python:3.11', env={'DEBUG': 'true'})
            debug = (await sandbox.exec('echo $DEBUG; python3 -c "print(1)"')).stdout
            print('RESULT', json.dumps({'soft': soft, 'hard': hard, 'debug': debug,
                                        'state': (await sandbox.refresh()).state}))
            await sandbox.destroy()
        asyncio.run(main())
    """))  # fmt: skip
    assert got["soft"] == [0, True] and got["hard"] != 0
    assert got["debug"] == "true\n1\n" and got["state"] == "running"


def test_cloning(spec_daemon: DaemonProcess) -> None:
    got = results(run(spec_daemon, """
        async def main():
            sandbox = await compute('local', template='node')
            await sandbox.files.write('/workspace/app.js', 'console.log(6*7)')
            # Clone existing sandbox
            cloned_sandbox = await sandbox.clone()
            plain = (await cloned_sandbox.exec('node /workspace/app.js')).stdout
            # Clone with modifications: a placeholder template name fails clearly
            try:
                await sandbox.clone(template='different-template',
                                    env={'NODE_ENV': 'production'})
                different = 'cloned'
            except TemplateNotFoundError as e:
                different = e.reason
            modified = await sandbox.clone(env={'NODE_ENV': 'production'})
            env = (await modified.exec('echo $NODE_ENV')).stdout
            # Clone to a different provider (here the same one) and template
            other = await sandbox.clone(provider='local', template='nodejs18.x')
            other_out = (await other.exec('node /workspace/app.js')).stdout
            for sb in (sandbox, cloned_sandbox, modified, other):
                await sb.destroy()
            print('RESULT', json.dumps({'plain': plain, 'different': different, 'env': env,
                                        'other': other_out}))
        asyncio.run(main())
    """))  # fmt: skip
    assert got == {
        "plain": "42\n",
        "different": "TEMPLATE_NOT_FOUND",
        "env": "production\n",
        "other": "42\n",
    }


def test_sandbox_groups_broadcast(spec_daemon: DaemonProcess) -> None:
    got = results(run(spec_daemon, """
        class SandboxGroup:
            def __init__(self):
                self.sandboxes = {}

            async def add(self, name, provider, config=None):
                sandbox = await compute(provider, **(config or {}))
                self.sandboxes[name] = sandbox
                return sandbox

            async def broadcast(self, command):
                results = {}
                for name, sandbox in self.sandboxes.items():
                    try:
                        result = await sandbox.exec(command)
                        results[name] = result
                    except Exception as error:
                        results[name] = {'error': str(error)}
                return results

            async def destroy_all(self):
                await asyncio.gather(*(sb.destroy() for sb in self.sandboxes.values()))

        async def main():
            group = SandboxGroup()
            await group.add('web', 'local', {'template': 'node'})
            await group.add('api', 'local', {'template': 'nodejs'})
            try:
                await group.add('ml', 'local', {'template': 'pytorch'})
                ml = 'created'
            except ComputeSDKError as e:
                ml = e.reason
            # A member without npm on its PATH: its broadcast fails.
            await group.add('bare', 'local', {'template': 'python', 'env': {'PATH': '/nowhere'}})
            results = await group.broadcast('npm --version')
            await group.destroy_all()
            print('RESULT', json.dumps({'ml': ml, 'results': {
                k: v if isinstance(v, dict) else v.stdout for k, v in results.items()}}))
        asyncio.run(main())
    """))  # fmt: skip
    assert got["ml"] == "GPU_UNAVAILABLE"
    res = got["results"]
    assert isinstance(res, dict) and set(res) == {"web", "api", "bare"}
    assert res["web"] == res["api"] and str(res["web"])[0].isdigit()
    assert "exit code 127" in res["bare"]["error"]


def test_networks_and_messaging(spec_daemon: DaemonProcess) -> None:
    got = results(run(spec_daemon, """
        async def main():
            web_sandbox = await compute('local', template='python')
            api_sandbox = await compute('local', template='python')
            # Create shared network
            network = await create_shared_network([web_sandbox, api_sandbox])
            # Configure service discovery
            await web_sandbox.set_env('API_URL', network.get_service_url('api'))
            await api_sandbox.set_env('SERVICE_NAME', 'api')
            # Set up message passing
            message_queue = MessageQueue()
            await message_queue.connect([web_sandbox, api_sandbox])
            # Send message from web to api
            await message_queue.send('web', 'api', {'action': 'process-data'})
            got = await message_queue.receive('api', timeout=30)
            # The service name resolves inside the other member.
            await api_sandbox.start_process(['python3', '-m', 'http.server', '80'])
            fetch = ('import os, time, urllib.request\\n'
                     'for _ in range(100):\\n'
                     '    try:\\n'
                     '        url = os.environ["API_URL"]\\n'
                     '        print(urllib.request.urlopen(url, timeout=5).status)\\n'
                     '        break\\n'
                     '    except OSError:\\n'
                     '        time.sleep(0.1)\\n')
            served = (await web_sandbox.exec(['python3', '-c', fetch])).stdout
            print('RESULT', json.dumps({
                'url': network.get_service_url('api'), 'payload': got.json(),
                'from': got.sender, 'served': served,
                'resolved': await network.resolve_service_url('api', 80)}))
            await network.delete()
            await message_queue.delete()
            await web_sandbox.destroy()
            await api_sandbox.destroy()
        asyncio.run(main())
    """))  # fmt: skip
    assert got["url"] == got["resolved"] == "http://api:80"
    assert got["payload"] == {"action": "process-data"}
    assert got["from"] == "web"
    assert got["served"] == "200\n"


def test_error_recovery_out_of_memory_and_circuit_breaker(spec_daemon: DaemonProcess) -> None:
    got = results(run(spec_daemon, """
        async def main():
            sandbox = await compute('local', template='python', resources={'memory_mb': 128})
            handled = []
            async def on_error(error):
                print('Sandbox error:', error)
                handled.append(error.type)
                if error.type == 'connection-lost':
                    await sandbox.reconnect()
                elif error.type == 'out-of-memory':
                    # Restart with more memory
                    await sandbox.restart(resources=Resources(
                        memory_mb=sandbox.config.resources.memory_mb * 2))
                elif error.type == 'corruption':
                    snapshots = await sandbox.list_snapshots()
                    if len(snapshots) > 0:
                        await sandbox.restore_snapshot(snapshots[0].id)
            sandbox.on('error', on_error)
            hog = await sandbox.exec(
                ['python3', '-c', 'x = []\\nwhile True: x.append(bytearray(8 << 20))'],
                check=False)
            for _ in range(1200):  # the handler's restart may take a while on a busy host
                if handled and sandbox.config.resources.memory_mb == 256:
                    break
                await asyncio.sleep(0.05)

            class SandboxCircuitBreaker:
                def __init__(self):
                    self.failures, self.last_failure, self.state = 0, 0.0, 'closed'

                async def execute(self, operation):
                    import time
                    if self.state == 'open':
                        if time.time() - self.last_failure < 60:
                            raise RuntimeError('Circuit breaker is open')
                        self.state = 'half-open'
                    try:
                        result = await operation()
                        self.failures, self.state = 0, 'closed'
                        return result
                    except Exception:
                        self.failures += 1
                        self.last_failure = time.time()
                        if self.failures >= 5:
                            self.state = 'open'
                        raise

            breaker = SandboxCircuitBreaker()
            outcomes = []
            for _ in range(6):
                try:
                    await breaker.execute(lambda: sandbox.exec('exit 1'))
                except Exception as e:
                    outcomes.append(type(e).__name__)
            print('RESULT', json.dumps({
                'oom': [hog.oom_killed, hog.signal], 'handled': handled,
                'memory_mb': sandbox.config.resources.memory_mb,
                'breaker': [breaker.state, outcomes]}))
            await sandbox.destroy()
        asyncio.run(main())
    """))  # fmt: skip
    assert got["oom"] == [True, 9]
    assert got["handled"][0] == "out-of-memory" and got["memory_mb"] == 256  # type: ignore[index]
    assert got["breaker"] == ["open", ["CommandExitError"] * 5 + ["RuntimeError"]]


def test_graceful_shutdown_on_sigint(spec_daemon: DaemonProcess) -> None:
    script = _write(
        spec_daemon,
        """
        async def shutdown():
            print('Shutting down gracefully...')
            active_sandboxes = await list_active_sandboxes()
            async def one(sandbox):
                try:
                    # Save important state
                    await sandbox.create_snapshot(name='shutdown-backup')
                    # Clean shutdown
                    await sandbox.destroy(graceful=True, timeout_ms=30000)
                    print('RESULT', json.dumps({sandbox.id: 'destroyed'}))
                except Exception as error:
                    print('Error during sandbox cleanup:', error)
            await asyncio.gather(*(one(sb) for sb in active_sandboxes))
            sys.exit(0)

        async def main():
            made = [await compute('local'), await compute('local')]
            print('RESULT', json.dumps({'made': [sb.id for sb in made]}))
            stop = asyncio.Event()
            asyncio.get_running_loop().add_signal_handler(signal.SIGINT, stop.set)
            print('ready', flush=True)
            await stop.wait()
            await shutdown()
        asyncio.run(main())
    """,
    )
    lines = []
    with subprocess.Popen(
        [sys.executable, str(script)], env=_env(spec_daemon), stdout=subprocess.PIPE, text=True
    ) as p:
        assert p.stdout is not None
        for line in p.stdout:
            lines.append(line.rstrip("\n"))
            if line == "ready\n":
                p.send_signal(signal.SIGINT)
        assert p.wait(timeout=120) == 0, lines
    got = results(lines)
    made = got.pop("made")
    assert isinstance(made, list) and set(made) <= set(got)
    assert set(got.values()) == {"destroyed"}
    with SyncClient(socket=spec_daemon.socket) as c:
        assert c.list(states=["running"]) == []


# ---------------------------------------------------------------- in-process checks
# What the programs above cannot show from outside: a lost connection, and the
# blocking client's share of the same names.


async def test_connection_lost_reaches_error_listeners_and_reconnect_resumes(
    private: tuple[DaemonProcess, Client],
) -> None:
    d, c = private
    sb = await c.create()
    errors: list[SandboxEventError] = []
    types: list[str] = []
    sb.on("error", errors.append)
    sb.on("process.exited", lambda ev: types.append(ev.type))
    await sb.exec("true")
    await _until(lambda: types == ["process.exited"])
    d.kill9()
    await _until(lambda: bool(errors))
    d.start()
    await sb.reconnect()
    assert [e.type for e in errors] == ["connection-lost"] and errors[0].event is None
    assert sb.state == "running"
    await sb.exec("true")
    await _until(lambda: len(types) == 2)  # the listener resumed after the last event
    await c.close()
    await sb.reconnect()  # opens the closed connection again
    assert (await sb.exec("echo back")).stdout == "back\n"
    await _until(lambda: len(types) == 3)
    assert [e.type for e in errors] == ["connection-lost"]
    got = await c.get(sb.id)  # not made by this client: config from the sandbox
    assert got.config.resources.memory_mb > 0 and got.config.template == "base"
    await sb.destroy()


def test_the_blocking_client_has_the_same_names(daemon: DaemonProcess) -> None:
    with SyncClient(socket=daemon.socket) as c:
        sb = c.create("local", resources={"memory_mb": 256}, metadata={"t": "sync"})
        try:
            seen: list[str] = []
            sb.on("ready", lambda ev: seen.append(ev.type))
            with pytest.raises(CommandExitError) as failed:
                sb.exec("echo no >&2; exit 5")
            assert (failed.value.exit_code, failed.value.stderr) == (5, "no\n")
            assert sb.exec("exit 5", check=False).exit_code == 5
            assert sb.health_check() is True and sb.health_report().healthy
            assert sb.config.resources.memory_mb == 256  # a plain record, not a proxy
            assert sb.get_resource_usage().memory.total_mb == 256
            snap = sb.create_snapshot(name="s")
            assert [s.id for s in sb.list_snapshots()] == [snap]
            assert isinstance(sb.export_state(), bytes)
            assert sb.id in {s.id for s in list_active_sandboxes(socket=daemon.socket)}
            for _ in range(100):
                if seen:
                    break
                time.sleep(0.05)
            assert seen == ["ready"]
        finally:
            sb.destroy()


async def test_a_corrupt_snapshot_reaches_error_listeners_as_corruption(
    spec_daemon: DaemonProcess,
) -> None:
    async with await Client.connect(socket=spec_daemon.socket) as c:
        sb = await c.create()
        errors: list[SandboxEventError] = []
        sb.on("error", errors.append)
        snap = await sb.create_snapshot(name="s")
        image = spec_daemon.state / "local" / "store" / "snapshots" / f"{snap}.img"
        with image.open("r+b") as f:  # a block the snapshot never wrote, as a bad disk would
            f.seek(image.stat().st_size // 2)
            f.write(os.urandom(4096))
        with pytest.raises(FailedPreconditionError) as err:
            await sb.restore_snapshot(snap)
        assert err.value.reason == "STATE_CORRUPT"
        await _until(lambda: bool(errors))
        assert errors[0].type == "corruption" and errors[0].attributes["id"] == snap
        await sb.destroy()


async def test_import_state_with_more_options_and_dict_shapes(client: Client) -> None:
    src = await client.create(env={"A": "1"})
    await src.files.write("/workspace/f", "from the archive")
    archive = await src.export_state()
    await src.destroy()
    states = {s.id for s in await client.states.list()}
    sb = await client.create(
        import_state=archive,
        env={"B": "2"},
        resources={"memoryMB": 256},
        volumes=[{"name": "spec-imp", "mountPath": "/data", "sizeMB": 16}],
    )
    try:
        r = await sb.exec("cat /workspace/f; echo $A$B; test -d /data && echo vol")
        assert r.stdout == "from the archive12\nvol\n"  # the file has no newline
        assert sb.config.resources.memory_mb == 256 and sb.config.env == {"B": "2"}
        assert sb.config.volumes[0].path == "/data" and sb.config.volumes[0].size == 16
        # The state the import went through is not left behind.
        assert {s.id for s in await client.states.list()} == states
    finally:
        await sb.destroy()
    with pytest.raises(TypeError, match="unknown volume option"):
        await client.create(volumes=[{"name": "v", "path": "/v", "mount_exisitng": True}])


async def _until(cond: Callable[[], bool], timeout: float = 30.0) -> None:
    for _ in range(int(timeout / 0.05)):
        if cond():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("condition not met in time")
