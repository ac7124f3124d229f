// The client's own tests: RPC drift, typed errors, the Quick Start, processes and monitoring.
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
import { Client, ComputeSDKError, PathOutsideSandboxError, SandboxNotFoundError, connect, fromError } from "../src/index.js";
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
  for (const svc of [SandboxService, ProcessService, FilesystemService, EventService, ProviderService, MonitoringService]) {
    for (const m of svc.methods) {
      total++;
      if (!source.includes(`.${m.localName}(`)) missing.push(`${svc.name}.${m.name}`);
    }
  }
  assert.ok(total >= 30, `only ${total} RPCs found`);
  assert.deepEqual(missing, []);
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
    const client = await connect({ socket: daemon.socket });
    await assert.rejects(client.get("sbx-0000000000000000"), SandboxNotFoundError);
    client.close();
  });
  await assert.rejects(Client.connect({ socket: "/nonexistent/d.sock" }), (e: unknown) => e instanceof ComputeSDKError && e.reason === "DAEMON_UNREACHABLE");
});

it("runs the spec's Quick Start as written", () =>
  tracked(async () => {
    const client = await connect({ socket: daemon.socket });
    const before = (await client.list()).length;
    const { stdout, stderr } = await promisify(execFile)(process.execPath, [path.join(here, "quickstart.js")], {
      env: { ...process.env, COMPUTESDK_SOCKET: daemon.socket },
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
    const client = await connect({ socket: daemon.socket });
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
