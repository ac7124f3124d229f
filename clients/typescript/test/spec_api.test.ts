// The spec's names and shapes on the client (issue 17), against a real daemon:
// failed commands throw, UTF-8 across chunks, events that outlive kill -9, one
// shared connection, listActiveSandboxes, health, usage and alert shapes, error
// events, config and reconnect, service names on shared networks and queues.
import { after, before, it } from "node:test";
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { mkdtempSync, openSync, readFileSync, rmSync, statSync, symlinkSync, mkdirSync, writeFileSync, writeSync, closeSync } from "node:fs";
import { randomBytes } from "node:crypto";
import * as os from "node:os";
import * as path from "node:path";
import { promisify } from "node:util";
import ts from "typescript";

import {
  Client,
  CommandExitError,
  ComputeSDKError,
  MessageQueue,
  Sandbox,
  SandboxEventError,
  compute,
  connect,
  createSharedNetwork,
  listActiveSandboxes,
  type Event,
  type ResourceAlert,
} from "../src/index.js";
import { Daemon, repoRoot } from "./daemon.js";

const daemon = new Daemon();
before(() => daemon.start());
after(() => daemon.shutdown(daemon.failed));
const tracked = (fn: () => Promise<void>) => daemon.tracked(fn);

/** Runs a module as a program of its own that imports 'computesdkd-client' and reaches the daemon; its output. */
async function program(source: string): Promise<{ stdout: string; stderr: string }> {
  const dir = mkdtempSync(path.join(os.tmpdir(), "computesdk-program-"));
  try {
    mkdirSync(path.join(dir, "node_modules"));
    symlinkSync(path.join(repoRoot, "clients/typescript"), path.join(dir, "node_modules", "computesdkd-client"));
    writeFileSync(path.join(dir, "main.mjs"), source);
    return await promisify(execFile)(process.execPath, [path.join(dir, "main.mjs")], { env: { ...process.env, ...daemon.connectEnv() }, timeout: 120_000 });
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

async function until(what: string, ok: () => boolean | Promise<boolean>, seconds = 60): Promise<void> {
  const deadline = Date.now() + seconds * 1000;
  while (!(await ok())) {
    assert.ok(Date.now() < deadline, `${what}: not within ${seconds}s`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

it("exec rejects a failed command with CommandExitError unless check is false; streams do not", () =>
  tracked(async () => {
    const client = await connect(daemon.connectOptions());
    const sb = await client.create("local");
    await assert.rejects(sb.exec("echo out; echo err >&2; exit 3"), (e: unknown) => {
      assert.ok(e instanceof CommandExitError && e instanceof ComputeSDKError);
      assert.deepEqual([e.exitCode, e.signal, e.stdout, e.stderr, e.oomKilled], [3, 0, "out\n", "err\n", false]);
      assert.equal(e.result.exitCode, 3);
      assert.match(e.message, /exit code 3: err/);
      return true;
    });
    await assert.rejects(sb.exec("kill -9 $$"), (e: unknown) => e instanceof CommandExitError && e.signal === 9);
    // Through the streaming path too (onStdout makes exec stream).
    await assert.rejects(sb.exec("exit 5", { onStdout: () => undefined }), (e: unknown) => e instanceof CommandExitError && e.exitCode === 5);
    assert.equal((await sb.exec("exit 3", { check: false })).exitCode, 3);
    assert.equal((await sb.execStream("exit 4").wait()).exitCode, 4);
    const proc = await sb.startProcess("exit 6");
    assert.equal((await proc.wait()).exitCode, 6);
    // A timeout keeps its own result.
    const slow = await sb.exec("sleep 30", { timeoutMs: 200 });
    assert.equal(slow.timedOut, true);
    await sb.destroy();
    client.close();
  }));

it("decodes a UTF-8 character split across output chunks", () =>
  tracked(async () => {
    const client = await connect(daemon.connectOptions());
    const sb = await client.create("local");
    let out = "";
    let err = "";
    const r = await sb.exec(`printf '\\342\\202'; printf '\\342' >&2; sleep 0.3; printf '\\254\\n'; printf '\\202\\254' >&2`, {
      onStdout: (t) => (out += t),
      onStderr: (t) => (err += t),
    });
    assert.equal(out, "€\n");
    assert.equal(err, "€");
    assert.equal(r.stdout, "€\n");
    let streamed = "";
    let chunks = 0;
    for await (const c of sb.execStream(`printf '\\360\\237'; sleep 0.3; printf '\\230\\200'`)) {
      streamed += c.text;
      chunks++;
    }
    assert.ok(chunks >= 2, `came in ${chunks} chunk(s)`);
    assert.equal(streamed, "😀");
    await sb.destroy();
    client.close();
  }));

it("compute() shares one connection; listActiveSandboxes() and list({ states }) work", () =>
  tracked(async () => {
    const env = daemon.connectEnv();
    const saved = { ...process.env };
    Object.assign(process.env, env);
    try {
      const a = await compute("local");
      const b = await compute("local", { template: "python" });
      assert.equal(a.client, b.client);
      const active = await listActiveSandboxes();
      assert.deepEqual(active.map((s) => s.id).filter((id) => [a.id, b.id].includes(id)).sort(), [a.id, b.id].sort());
      assert.equal(active[0]!.client, a.client);
      const running = await a.client.list({ states: ["running"] });
      assert.ok(running.some((s) => s.id === a.id));
      await assert.rejects(a.client.list({ states: ["bogus"] }), /unknown state bogus/);
      await a.destroy();
      // Destroying one does not close what the other uses.
      assert.equal((await b.exec("echo still")).stdout, "still\n");
      await b.destroy({ graceful: true, timeoutMs: 5000 });
      // Someone closing the shared connection does not break the next compute().
      b.client.close();
      const c = await compute("local");
      await c.destroy();
    } finally {
      process.env = saved;
    }
  }));

it("healthCheck() is a boolean; usage, config and resourceAlert have the spec's shape", () =>
  tracked(async () => {
    const client = await connect(daemon.connectOptions());
    const sb = await client.create("local", { template: "python", resources: { memoryMB: 256 } });
    assert.equal(await sb.healthCheck(), true);
    assert.equal((await sb.healthReport()).healthy, true);
    const u = await sb.getResourceUsage();
    assert.ok(u.memory.usedMB > 0 && u.memory.totalMB > 0 && u.memory.percent > 0 && u.memory.percent <= 100, JSON.stringify(u));
    assert.ok(u.disk.totalMB > 0 && u.disk.percent >= 0);
    assert.equal(typeof u.cpu.percent, "number");
    assert.equal(typeof u.network.rxBytes, "number");
    assert.equal(sb.config.resources.memoryMB, 256);
    const plain = await client.create("local");
    // No resources given: filled from the sandbox's own.
    assert.ok(plain.config.resources.memoryMB! > 0 && plain.config.resources.memoryMB === plain.resources.memoryMB);
    await plain.destroy();

    // The monitor's handler is typed: metrics.cpu.percent needs no cast.
    const monitor = sb.monitor({ interval: 100 });
    const seen: number[] = [];
    monitor.on("metrics", (metrics) => seen.push(metrics.memory.usedMB + metrics.cpu.percent));
    await until("metrics", () => seen.length > 0);
    await monitor.stop();

    const alerts: ResourceAlert[] = [];
    sb.on("resourceAlert", (alert) => alerts.push(alert));
    await sb.setAlertThresholds([{ type: "memory", percent: 1 }], { interval: 100 });
    await sb.startProcess(`python3 -c "import time; x = bytearray(64 * 1024 * 1024); time.sleep(60)"`);
    await until("a memory alert", () => alerts.length > 0);
    const alert = alerts[0]!;
    assert.equal(alert.type, "memory");
    assert.equal(alert.threshold, 1);
    assert.ok(alert.current > 1, JSON.stringify(alert));
    await sb.destroy();
    client.close();
  }));

it("sandbox.on('error') gets out-of-memory as a SandboxEventError; listeners that fail never end the process", () =>
  tracked(async () => {
    const client = await connect(daemon.connectOptions());
    const sb = await client.create("local", { template: "python", resources: { memoryMB: 128 } });
    const errors: SandboxEventError[] = [];
    const ooms: Event[] = [];
    sb.on("error", (e) => errors.push(e));
    sb.on("out-of-memory", (ev) => ooms.push(ev));
    // A listener that throws, and one whose promise rejects: reported, nothing more.
    sb.on("process.started", () => {
      throw new Error("listener bug");
    });
    sb.on("process.exited", async () => {
      throw new Error("async listener bug");
    });
    const r = await sb.exec(`python3 -c "x = bytearray(1024 * 1024 * 1024)"`, { check: false });
    assert.equal(r.oomKilled, true, JSON.stringify({ exit: r.exitCode, signal: r.signal }));
    await until("an out-of-memory error event", () => errors.length > 0 && ooms.length > 0);
    assert.ok(errors[0] instanceof SandboxEventError && errors[0] instanceof Error);
    assert.equal(errors[0].type, "out-of-memory");
    assert.equal(errors[0].sandboxId, sb.id);
    assert.equal(errors[0].event?.type, "out-of-memory");
    assert.equal(ooms[0]!.type, "out-of-memory");
    await sb.destroy();
    client.close();

    // The same in a program of its own: node must not die of an unhandled rejection.
    const { stdout, stderr } = await program(`import { compute, MessageQueue } from 'computesdkd-client'
const sb = await compute('local')
sb.on('ready', async () => { throw new Error('boom') })
const q = new MessageQueue()
await q.connect([sb, 'client'])
q.send('client', 'nobody', { x: 1 }).catch(() => console.log('refused'))
await new Promise((r) => setTimeout(r, 500))
await sb.destroy()
console.log('done')
`);
    assert.equal(stdout, "refused\ndone\n");
    assert.match(stderr, /a listener failed: boom/);
  }));

it("client.events() and sandbox.on survive kill -9 of the daemon; reconnect() resumes", () =>
  tracked(async () => {
    const client = await connect(daemon.connectOptions());
    const sb = await client.create("local");
    const types: string[] = [];
    const lost: string[] = [];
    sb.on("process.exited", (ev) => types.push(`${ev.type}:${ev.attributes.exit_code ?? ""}`));
    sb.on("error", (e) => lost.push(e.type));
    const streamed: Event[] = [];
    const abort = new AbortController();
    const following = (async () => {
      for await (const ev of client.events({ sandboxIds: [sb.id], signal: abort.signal })) streamed.push(ev);
    })();
    await sb.exec("exit 0");
    await until("the first exit", () => types.length === 1 && streamed.some((e) => e.type === "process.exited"));

    await daemon.kill9();
    await until("connection-lost", () => lost.includes("connection-lost"), 30);
    await daemon.start();
    await sb.reconnect();
    assert.equal(sb.state, "running");
    await sb.exec("exit 7", { check: false });
    await until("events after the restart", () => types.length === 2 && streamed.filter((e) => e.type === "process.exited").length === 2, 60);
    assert.deepEqual(lost, ["connection-lost"]);
    // Resumed by event number: nothing repeated.
    const seqs = streamed.map((e) => e.sequence);
    assert.deepEqual(seqs, [...new Set(seqs)].sort((a, b) => a - b));

    // reconnect() also opens a closed connection again.
    client.close();
    await sb.reconnect();
    assert.equal((await sb.exec("echo back")).stdout, "back\n");
    abort.abort();
    await following;
    await sb.destroy();
    client.close();
  }));

it("snapshots and state on the sandbox object, the spec's volumes and an inline template's errors", () =>
  tracked(async () => {
    const client = await connect(daemon.connectOptions());
    const sb = await client.create("local", { volumes: [{ name: "ts-spec-vol", path: "/vol", size: "64MB", persistent: true }] });
    await sb.files.write("/workspace/v", "one");
    const id = await sb.createSnapshot({ name: "before", description: "v=one" });
    assert.equal(typeof id, "string");
    await sb.files.write("/workspace/v", "two");
    assert.deepEqual((await sb.listSnapshots()).map((s) => [s.id, s.name]), [[id, "before"]]);
    await sb.restoreSnapshot(id);
    assert.equal(await sb.files.readText("/workspace/v"), "one");
    await sb.deleteSnapshot(id);
    assert.deepEqual(await sb.listSnapshots(), []);
    await sb.exec("echo on-volume > /vol/f");
    const data = await sb.exportState();
    assert.ok(data instanceof Uint8Array && data.length > 0);
    const state = await sb.saveState();
    await sb.destroy();
    assert.equal((await client.volumes.get("ts-spec-vol")).persistent, true);
    const again = await client.create("local", { volumes: [{ name: "ts-spec-vol", path: "/mnt", mountExisting: true }], restoreFrom: state });
    assert.equal((await again.exec("cat /mnt/f /workspace/v")).stdout, "on-volume\none");
    const imported = await client.create("local", { importState: data, env: { FROM: "import" } });
    assert.equal((await imported.exec("cat /workspace/v; echo; echo $FROM")).stdout, "one\nimport\n");
    await Promise.all([again.destroy(), imported.destroy()]);
    await client.volumes.delete("ts-spec-vol");
    await assert.rejects(client.create("local", { volumes: [{ name: "ts-absent", path: "/x", mountExisting: true }] }), (e: unknown) => e instanceof ComputeSDKError && e.reason === "VOLUME_NOT_FOUND");
    await assert.rejects(client.create("local", { template: { name: "ts-inline-bad", setup: ["echo doomed-line; exit 4"] } }), (e: unknown) => e instanceof ComputeSDKError && e.reason === "TEMPLATE_BUILD_FAILED" && /doomed-line/.test(e.message));
    client.close();
  }));

it("shared networks name members from SERVICE_NAME live; queues address them by it", () =>
  tracked(async () => {
    const client = await connect(daemon.connectOptions());
    const web = await client.create("local", { template: "python" });
    const api = await client.create("local", { template: "python", metadata: { service: "backend" } });
    const network = await createSharedNetwork([web, api]);
    // Synchronous, no call: valid before any member has the name.
    assert.equal(network.getServiceUrl("api"), "http://api:80");
    assert.equal(network.getServiceUrl("api", 8000), "http://api:8000");
    assert.throws(() => network.getServiceUrl("bad.name"), (e: unknown) => e instanceof ComputeSDKError && e.reason === "INVALID_HOSTNAME");
    // metadata.service names it until SERVICE_NAME does.
    assert.equal(await network.resolveServiceUrl("backend", 80), "http://backend:80");
    await assert.rejects(network.resolveServiceUrl("api"), (e: unknown) => e instanceof ComputeSDKError && e.reason === "MEMBER_NOT_FOUND" && /SERVICE_NAME/.test(e.message));
    await web.setEnv("API_URL", network.getServiceUrl("api", 8000));
    await api.setEnv("SERVICE_NAME", "api");
    await until("the new name", async () => (await network.refresh()).members.some((m) => m.hostname === "api"), 30);
    assert.equal(await network.resolveServiceUrl("api", 8000), "http://api:8000");
    await api.startProcess("cd /workspace && echo pong > ping && python3 -m http.server 8000");
    let body = "";
    await until("api answers by name", async () => {
      body = (await web.exec(`python3 -c "import urllib.request,os;print(urllib.request.urlopen(os.environ['API_URL']+'/ping',timeout=2).read().decode(),end='')"`, { check: false })).stdout;
      return body === "pong\n";
    });

    const messageQueue = new MessageQueue();
    await messageQueue.connect([web, api]);
    await messageQueue.send("web", "api", { action: "process-data" });
    await assert.rejects(messageQueue.send("web", "nobody", {}), (e: unknown) => e instanceof ComputeSDKError && e.reason === "MEMBER_NOT_FOUND" && /SERVICE_NAME/.test(e.message));
    for await (const m of messageQueue.subscribe("api")) {
      assert.equal(m.sender, "web");
      assert.equal(m.recipient, api.id);
      assert.deepEqual(JSON.parse(m.text), { action: "process-data" });
      await messageQueue.ack("api", m.sequence);
      break;
    }
    await network.delete();
    for (const s of [web, api]) await s.destroy();
    assert.ok(web instanceof Sandbox);
    client.close();
  }));

it("a client closed and reconnected keeps its raw clients", () =>
  tracked(async () => {
    const client = await Client.connect(daemon.connectOptions());
    client.close();
    assert.equal(client.isClosed, true);
    await client.reconnect();
    assert.ok((await client.providers()).length > 0);
    client.close();
  }));

it("runs the README's block of the spec's calls", () =>
  tracked(async () => {
    const readme = readFileSync(path.join(repoRoot, "README.md"), "utf8");
    const at = readme.indexOf("The spec's calls, as the TypeScript client gives them");
    assert.ok(at > 0, "the README lost the block");
    const block = /```ts\n([\s\S]*?)```/.exec(readme.slice(at))![1]!;
    const js = ts.transpileModule(block, { compilerOptions: { module: ts.ModuleKind.ESNext, target: ts.ScriptTarget.ES2022 } }).outputText;
    const { stdout, stderr } = await program(js);
    assert.equal(stderr, "");
    assert.match(stdout, /^3 {3}0 false \d+\n/);
    const client = await connect(daemon.connectOptions());
    assert.deepEqual(await client.list(), []);
    await client.volumes.delete("readme-data").catch(() => undefined);
    client.close();
  }));

it("a corrupt snapshot reaches on('error') as type 'corruption'", () =>
  tracked(async () => {
    const client = await connect(daemon.connectOptions());
    const sb = await client.create("local");
    const errors: SandboxEventError[] = [];
    sb.on("error", (e) => errors.push(e));
    await sb.exec("echo one > /root/f");
    const id = await sb.createSnapshot({ name: "s" });
    // Bytes changed as a failing disk would: a block in the middle of the stored image.
    const image = path.join(daemon.root, "state", "local", "store", "snapshots", `${id}.img`);
    const fd = openSync(image, "r+");
    writeSync(fd, randomBytes(4096), 0, 4096, Math.floor(statSync(image).size / 2));
    closeSync(fd);
    await assert.rejects(sb.restoreSnapshot(id), (e: unknown) => e instanceof ComputeSDKError && e.reason === "STATE_CORRUPT");
    await until("a corruption error event", () => errors.some((e) => e.type === "corruption"));
    const err = errors.find((e) => e.type === "corruption")!;
    assert.equal(err.sandboxId, sb.id);
    assert.equal(err.event?.attributes.what, "snapshot");
    assert.equal(err.event?.attributes.id, id);
    await sb.destroy();
    client.close();
  }));
