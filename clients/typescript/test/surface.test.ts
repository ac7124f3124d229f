// The client's own tests: RPC drift, typed errors, the Quick Start, processes and monitoring.
// With COMPUTESDK_TEST_TLS=1 they reach the daemon over TLS with a token, as conformance does.
import { after, before, it } from "node:test";
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { readdirSync, readFileSync } from "node:fs";
import * as path from "node:path";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import { Code, ConnectError } from "@connectrpc/connect";

import { SandboxService } from "../src/gen/computesdk/api/sandbox/v1/sandbox_pb.js";
import { ProcessService } from "../src/gen/computesdk/api/process/v1/process_pb.js";
import { FilesystemService } from "../src/gen/computesdk/api/filesystem/v1/filesystem_pb.js";
import { EventService } from "../src/gen/computesdk/api/events/v1/events_pb.js";
import { ProviderService } from "../src/gen/computesdk/api/provider/v1/provider_pb.js";
import { MonitoringService } from "../src/gen/computesdk/api/monitoring/v1/monitoring_pb.js";
import { PoolService } from "../src/gen/computesdk/api/pool/v1/pool_pb.js";
import { GroupService } from "../src/gen/computesdk/api/group/v1/group_pb.js";
import { NetworkService } from "../src/gen/computesdk/api/network/v1/network_pb.js";
import { MessagingService } from "../src/gen/computesdk/api/messaging/v1/messaging_pb.js";
import { SnapshotService } from "../src/gen/computesdk/api/snapshot/v1/snapshot_pb.js";
import { VolumeService } from "../src/gen/computesdk/api/volume/v1/volume_pb.js";
import { TemplateService } from "../src/gen/computesdk/api/template/v1/template_pb.js";
import { AdminService } from "../src/gen/computesdk/api/admin/v1/admin_pb.js";
import { Reason } from "../src/gen/computesdk/api/errors/v1/errors_pb.js";
import { Client, ComputeSDKError, MessageQueue, PathOutsideSandboxError, Sandbox, SandboxNotFoundError, TemplateBuildError, TemplateNotFoundError, connect, createSharedNetwork, fromError, typedError } from "../src/index.js";
import { Daemon } from "./daemon.js";

const here = path.dirname(fileURLToPath(import.meta.url));
const daemon = new Daemon();
let failed = false;
before(() => daemon.start());
after(() => daemon.shutdown(failed));

async function tracked(fn: () => Promise<void>): Promise<void> {
  try {
    await fn();
  } catch (err) {
    failed = true;
    throw err;
  }
}

it("wraps every RPC in the protos", () => {
  const srcDir = path.resolve(here, "../../src");
  const source = readdirSync(srcDir)
    .filter((f) => f.endsWith(".ts"))
    .map((f) => readFileSync(path.join(srcDir, f), "utf8"))
    .join("\n");
  const missing: string[] = [];
  let total = 0;
  const services = [SandboxService, ProcessService, FilesystemService, EventService, ProviderService, MonitoringService, PoolService, GroupService, NetworkService, MessagingService, SnapshotService, VolumeService, TemplateService, AdminService];
  // Every generated package has its service in the list above; errors has only the Reason enum.
  const packages = readdirSync(path.resolve(here, "../../src/gen/computesdk/api")).sort();
  assert.deepEqual(packages, [...services.map((s) => s.typeName.split(".")[2]), "errors"].sort());
  for (const svc of services) {
    for (const m of svc.methods) {
      total++;
      if (!source.includes(`.${m.localName}(`)) missing.push(`${svc.name}.${m.name}`);
    }
  }
  assert.ok(total >= 55, `only ${total} RPCs found`);
  assert.deepEqual(missing, []);
});

// Drift: the reasons with a typed error of their own are the ones every client
// has (Python's _BY_REASON, Go's sentinels); the table's keys are Reason names by type.
it("types the same reasons as the other clients", () => {
  const names = Object.keys(Reason).filter((k) => Number.isNaN(Number(k)));
  const typed = names.filter((r) => typedError("UNKNOWN", r, "").constructor !== ComputeSDKError);
  assert.deepEqual(typed.sort(), [
    "FEATURE_UNSUPPORTED",
    "FILE_NOT_FOUND",
    "PATH_OUTSIDE_SANDBOX",
    "PAYLOAD_TOO_LARGE",
    "PROCESS_NOT_FOUND",
    "PROVIDER_NOT_FOUND",
    "SANDBOX_NOT_FOUND",
    "SANDBOX_NOT_RUNNING",
    "SANDBOX_TERMINATED",
    "TEMPLATE_BUILD_FAILED",
    "TEMPLATE_NOT_FOUND",
  ]);
});

it("maps ErrorInfo.reason to a typed error", async () => {
  // A status the way the daemon sends it: google.rpc.ErrorInfo in the details.
  const info = new Uint8Array([0x0a, 0x14, ...Buffer.from("PATH_OUTSIDE_SANDBOX"), 0x12, 0x0e, ...Buffer.from("computesdk.dev")]);
  const raw = new ConnectError("path leaves the sandbox", Code.InvalidArgument);
  raw.details.push({ type: "google.rpc.ErrorInfo", value: info, debug: undefined });
  const err = fromError(raw);
  assert.ok(err instanceof PathOutsideSandboxError);
  assert.equal(err.code, "INVALID_ARGUMENT");
  assert.equal(err.reason, "PATH_OUTSIDE_SANDBOX");

  await tracked(async () => {
    const client = await connect(daemon.connectOptions());
    await assert.rejects(client.get("sbx-0000000000000000"), SandboxNotFoundError);
    client.close();
  });
  await assert.rejects(Client.connect({ socket: "/nonexistent/d.sock" }), (e: unknown) => e instanceof ComputeSDKError && e.reason === "DAEMON_UNREACHABLE");
});

it("runs the spec's Quick Start as written", () =>
  tracked(async () => {
    const client = await connect(daemon.connectOptions());
    const before = (await client.list()).length;
    const { stdout, stderr } = await promisify(execFile)(process.execPath, [path.join(here, "quickstart.js")], {
      env: { ...process.env, ...daemon.connectEnv() },
      timeout: 60_000,
    });
    assert.equal(stdout + stderr, "");
    // It made, used and removed a sandbox: the event log says so.
    const seen = new Map<string, string[]>();
    for await (const ev of client.events({ follow: false })) seen.set(ev.sandboxId, [...(seen.get(ev.sandboxId) ?? []), ev.type]);
    const runs = [...seen.values()].filter((t) => t.includes("process.exited") && t.at(-1) === "destroyed");
    assert.ok(runs.length >= 1, JSON.stringify([...seen.entries()]));
    assert.equal((await client.list()).length, before);
    client.close();
  }));

it("keeps background processes, re-attaches by offset, monitors and fires sandbox.on", () =>
  tracked(async () => {
    const client = await connect(daemon.connectOptions());
    const sb = await client.create("local", { metadata: { t: "surface" } });
    const seen: string[] = [];
    sb.on("ready", () => seen.push("ready"));
    sb.on("destroyed", () => seen.push("destroyed"));

    const python = await sb.exec("python --version");
    assert.match(python.stdout, /^Python 3\./);
    const proc = await sb.startProcess(["sh", "-c", "read x; echo got-$x"], { interactive: true, tag: "reader" });
    await proc.writeStdin("ping\n", { close: true });
    const res = await proc.wait();
    assert.equal(res.stdout, "got-ping\n");
    let tail = "";
    for await (const c of sb.process(proc.id).attach({ stdoutOffset: 4 })) tail += c.text;
    assert.equal(tail, "ping\n");
    assert.equal((await sb.processes()).find((p) => p.processId === proc.id)?.tag, "reader");

    const usage = await sb.getResourceUsage();
    assert.ok(usage.memory.usedBytes > 0 && usage.memory.limitBytes > 0);
    const monitor = sb.monitor({ interval: 100 });
    const samples: number[] = [];
    monitor.on("metrics", (u: { processCount: number }) => samples.push(u.processCount));
    while (samples.length < 2) await new Promise((r) => setTimeout(r, 20));
    await monitor.stop();

    const status = await sb.getStatus();
    assert.equal(status.state, "running");
    await sb.destroy();
    assert.deepEqual(seen, ["ready", "destroyed"]);
    client.close();
  }));

it("pools, batches, groups, shared networks and message queues, the spec's way", () =>
  tracked(async () => {
    const client = await connect(daemon.connectOptions());
    await client.pools.create("ts-pool", { provider: "local", template: "base", min: 1, max: 2 });
    for (let i = 0; (await client.pools.get("ts-pool")).idle < 1; i++) {
      assert.ok(i < 300, "pool never warmed");
      await new Promise((r) => setTimeout(r, 50));
    }
    const leased = await client.pools.acquire("ts-pool", { metadata: { who: "ts" } });
    assert.equal(leased.metadata.who, "ts");
    await leased.exec("touch /tmp/dirty");
    assert.equal(await leased.release({ hard: true }), true);
    assert.equal((await leased.exec("test -e /tmp/dirty", { check: false })).exitCode, 1);
    await client.pools.delete("ts-pool");

    const made = await client.batchCreate([{ provider: "local", template: "python" }, { provider: "local", template: "nope" }]);
    const [web, bad] = made;
    assert.ok(web instanceof Sandbox);
    assert.ok(bad instanceof TemplateNotFoundError && bad.code === "NOT_FOUND");
    const api = await client.create("local", { template: "python" });

    await client.groups.create("ts-group", [web, api]);
    await api.files.write("/workspace/fail", "1");
    const results = [];
    for await (const r of client.groups.broadcast("ts-group", "test ! -e /workspace/fail")) results.push(r);
    assert.equal(results.length, 2);
    assert.deepEqual(results.filter((r) => !r.ok).map((r) => r.sandboxId), [api.id]);
    await client.groups.delete("ts-group");

    const network = await createSharedNetwork({ web, api });
    await api.startProcess("cd /workspace && echo pong > ping && python3 -m http.server 8000");
    await web.setEnv("API_URL", await network.getServiceUrl("api", 8000));
    let body = "";
    // Polled until the server listens: a refused connect is a failed command here.
    for (let i = 0; i < 100 && body !== "pong\n"; i++) {
      body = (await web.exec(`python3 -c "import urllib.request,os;print(urllib.request.urlopen(os.environ['API_URL']+'/ping',timeout=2).read().decode(),end='')"`, { check: false })).stdout;
      if (body !== "pong\n") await new Promise((r) => setTimeout(r, 100));
    }
    assert.equal(body, "pong\n");
    await network.delete();

    const messageQueue = new MessageQueue();
    await messageQueue.connect(["web", "api"], { client });
    await messageQueue.send("web", "api", { action: "process-data" });
    for await (const m of messageQueue.subscribe("api")) {
      assert.deepEqual(JSON.parse(m.text), { action: "process-data" });
      await messageQueue.ack("api", m.sequence);
      break;
    }
    for (const sb of [web, api]) await sb.destroy();
    client.close();
  }));

it("snapshots, saved states, restart and volumes", () =>
  tracked(async () => {
    const client = await connect(daemon.connectOptions());
    await client.volumes.create("ts-data", { sizeMB: 8 });
    const sb = await client.create("local", { template: "python", volumes: [{ name: "ts-data", mountPath: "/data" }] });
    await sb.files.write("/workspace/v", "one");
    const snap = await sb.snapshots.create("first", { description: "v=one" });
    await sb.files.write("/workspace/v", "two");
    await sb.snapshots.restore(snap);
    assert.equal(await sb.files.readText("/workspace/v"), "one");
    assert.deepEqual((await sb.snapshots.list()).map((s) => s.name), ["first"]);
    await sb.snapshots.delete(snap);
    await sb.exec("echo kept > /data/k");
    await sb.restart({ env: { R: "1" } });
    assert.equal((await sb.exec("echo $R; cat /data/k")).stdout, "1\nkept\n");
    const stateId = await sb.saveState("ts");
    const pieces: Uint8Array[] = [];
    for await (const piece of client.states.export({ stateId })) pieces.push(piece);
    const imported = await client.states.import(Buffer.concat(pieces), { metadata: { from: "archive" } });
    assert.equal(await imported.files.readText("/workspace/v"), "one");
    assert.equal(imported.metadata.from, "archive");
    await imported.destroy();
    await assert.rejects(client.states.import(new TextEncoder().encode("garbage".repeat(200))), (e: unknown) => e instanceof ComputeSDKError && e.reason === "ARCHIVE_CORRUPT");
    await sb.destroy();
    const again = await client.create("", { restoreFrom: stateId });
    assert.equal(await again.files.readText("/workspace/v"), "one");
    await again.destroy();
    await client.states.delete(stateId);
    assert.deepEqual((await client.volumes.get("ts-data")).mountedBy, []);
    await client.volumes.delete("ts-data");
    client.close();
  }));

it("builds a custom template once, then hits the cache, and deletes it", () =>
  tracked(async () => {
    const client = await connect(daemon.connectOptions());
    const events: string[] = [];
    const def = { setup: ["echo from-ts > /from-ts", "echo logged"], env: { TS_TPL: "yes" } };
    const first = await client.templates.build("ts-tpl", def, { onEvent: (ev) => events.push(ev.type) });
    assert.equal(first.cacheHit, false);
    assert.ok(first.log.includes("logged"));
    assert.ok(events.includes("progress") && events.at(-1) === "result");
    const again = await client.templates.build("ts-tpl", def);
    assert.equal(again.cacheHit, true);
    assert.equal(again.template.digest, first.template.digest);
    const sb = await client.create("local", { template: "ts-tpl" });
    assert.equal((await sb.exec("sh -c 'cat /from-ts; echo $TS_TPL'")).stdout, "from-ts\nyes\n");
    await assert.rejects(client.templates.delete("ts-tpl"), (e: unknown) => e instanceof ComputeSDKError && e.reason === "TEMPLATE_IN_USE");
    await sb.destroy();
    await client.templates.delete("ts-tpl");
    await assert.rejects(client.templates.get("ts-tpl"), (e: unknown) => e instanceof TemplateNotFoundError);
    await assert.rejects(client.templates.build("ts-bad", { setup: ["exit 4"] }), (e: unknown) => e instanceof TemplateBuildError);
    assert.ok((await client.templates.list()).some((t) => t.name === "python" && t.builtin));
    client.close();
  }));

it("exec past the inline limit loses nothing", () =>
  tracked(async () => {
    const client = await connect(daemon.connectOptions());
    const sb = await client.create("local");
    const r = await sb.exec("head -c 3000000 /dev/zero | tr '\\0' a; printf done >&2");
    assert.equal(r.stdout.length, 3000000);
    assert.ok(/^a+$/.test(r.stdout));
    assert.equal(r.stderr, "done");
    await sb.destroy();
    client.close();
  }));
