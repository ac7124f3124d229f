// The spec's TypeScript blocks, every one in order, as programs run by node against
// this file's daemon, with only provider names changed to 'local' (specprograms.ts).
// Each must exit 0, and print what it shows; GPU programs must fail with GPU_UNAVAILABLE.
import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import * as os from "node:os";
import * as path from "node:path";

import { Client, type Event } from "../src/index.js";
import { Daemon, repoRoot } from "./daemon.js";
import { specPrograms, type Program } from "./specprograms.js";

const SPEC = path.join(repoRoot, "docs/spec/sandbox-management.md");
const SHARED = path.join(repoRoot, "../shared/spec/sandbox-management.md");

const daemon = new Daemon();
let failed = false;
let client: Client;
// Programs import 'computesdkd-client' (and the Quick Start 'computesdk'): both are this package.
const dir = mkdtempSync(path.join(os.tmpdir(), "computesdk-spec-"));
const passed: string[] = [];

before(async () => {
  await daemon.start();
  client = await Client.connect(daemon.connectOptions());
  mkdirSync(path.join(dir, "node_modules"));
  for (const name of ["computesdkd-client", "computesdk"]) symlinkSync(path.join(repoRoot, "clients/typescript"), path.join(dir, "node_modules", name));
});

after(async () => {
  console.log(`spec programs: ${passed.length} of ${programs.length} passed`);
  client?.close();
  await daemon.shutdown(failed);
  rmSync(dir, { recursive: true, force: true });
});

interface Run {
  code: number | null;
  stdout: string;
  stderr: string;
  result: Record<string, unknown> | undefined;
}

/** Runs a program; with interrupt, sends SIGINT once it prints READY. */
function run(p: Program, options: { interrupt?: boolean } = {}): Promise<Run> {
  const file = path.join(dir, `${p.name.replace(/[^A-Za-z0-9]+/g, "-")}.mjs`);
  writeFileSync(file, p.source);
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [file], { cwd: dir, env: { ...process.env, ...daemon.connectEnv() }, stdio: ["ignore", "pipe", "pipe"] });
    let stdout = "";
    let stderr = "";
    let interrupted = false;
    const timer = setTimeout(() => child.kill("SIGKILL"), 240_000);
    child.stdout.on("data", (d: Buffer) => {
      stdout += d.toString();
      if (options.interrupt && !interrupted && stdout.includes("READY\n")) {
        interrupted = true;
        child.kill("SIGINT");
      }
    });
    child.stderr.on("data", (d: Buffer) => (stderr += d.toString()));
    child.on("error", reject);
    child.on("close", (code) => {
      clearTimeout(timer);
      const line = stdout.split("\n").find((l) => l.startsWith("RESULT "));
      resolve({ code, stdout, stderr, result: line ? (JSON.parse(line.slice(7)) as Record<string, unknown>) : undefined });
    });
  });
}

/** What each program must show, past exiting 0. */
const checks: Record<string, (r: Run, events: Event[]) => void> = {
  "Basic Creation #1": (r) => assert.equal(r.result?.state, "running"),
  "Basic Creation #2": (r) => assert.deepEqual(r.result, { state: "running", template: "nodejs18" }),
  "Template-Based Creation #1": (r) => assert.deepEqual(r.result, { custom: "1\n", env: "/app\n" }),
  // A soft reset keeps files and ends processes.
  "Batch Creation #1": (r) => assert.deepEqual(r.result, { reused: true, kept: true, processes: 0 }),
  "Lifecycle Events": (r) => {
    for (const line of ["Sandbox created successfully", "Sandbox is ready for execution", "Sandbox has been destroyed"]) assert.ok(r.stdout.includes(line), `no "${line}" in ${r.stdout}`);
  },
  "Status Monitoring": (r) => assert.match(r.stdout, /^Status: running$/m),
  "Health Checks": (r) => {
    const report = r.result?.report as Record<string, string>;
    assert.equal(r.result?.isHealthy, true);
    assert.deepEqual(Object.keys(report), ["python", "node", "disk", "network"]);
    assert.equal(report.python, "healthy");
    assert.equal(report.disk, "healthy");
    // No way out of the sandbox (and no ping): a failed command counts as unhealthy.
    assert.equal(report.network, "unhealthy");
  },
  "Resource Monitoring": (r) => {
    const usage = r.result?.usage as { memory: { usedMB: number; totalMB: number }; disk: { totalMB: number }; cpu: { percent: number } };
    assert.ok(usage.memory.usedMB > 0 && usage.memory.totalMB > 0, JSON.stringify(usage));
    assert.equal(typeof usage.cpu.percent, "number");
    assert.match(r.stdout, /^Memory: [\d.]+ \/ [\d.]+$/m);
    assert.equal((r.result?.limits as { memoryMB: number }).memoryMB, 2048);
    // Grown live, or (where the kernel cannot resize a mounted ext4) asked for and applied at the next restart.
    const requested = r.result?.requested as { diskMB?: number } | undefined;
    assert.ok((r.result?.diskTotalMB as number) >= 5000 || requested?.diskMB === 5120, JSON.stringify(r.result));
  },
  "Persistent Storage": (r) => assert.equal(r.result?.seen, "kept\n"),
  "State Snapshots": (r) => {
    assert.deepEqual(r.result?.listed, [{ id: r.result?.snapshotId, name: "before-deployment" }]);
    assert.equal(r.result?.left, 0);
  },
  "State Persistence": (r) => assert.deepEqual(r.result, { restored: "saved\n", imported: "saved\n" }),
  "Reset and Restart": (r) => assert.deepEqual(r.result, { debug: "true\n", template: "python:3.11" }),
  "Cloning #1": (r) => assert.equal(r.result?.clone, true),
  "Cloning #3": (r) => assert.deepEqual(r.result, { clone: true, template: "nodejs18.x" }),
  "Migration #2": (r) => assert.equal(r.result?.template, "python3.11.x"),
  "Sandbox Groups #1": (r) => {
    const res = r.result as Record<string, { exitCode?: number; stdout?: string; error?: string }>;
    assert.deepEqual(Object.keys(res), ["web", "api"]);
    assert.equal(res.api?.exitCode, 0, JSON.stringify(res));
    assert.match(res.api?.stdout ?? "", /^\d+\.\d+\.\d+\n$/);
  },
  "Inter-Sandbox Communication": (r) => {
    assert.equal(r.result?.apiUrl, "http://api:80");
    assert.deepEqual(r.result?.message, { sender: "web", payload: { action: "process-data" } });
    assert.equal(r.result?.resolves, true);
  },
  "Error Recovery": (r) => {
    assert.equal(r.result?.ok, "ok\n");
    assert.deepEqual(r.result?.failures, [...Array(5).fill("CommandExitError: command failed with exit code 1"), "Error: Circuit breaker is open"]);
    assert.equal(r.result?.memoryAfter, 2 * (r.result?.memoryBefore as number));
  },
  "Graceful Shutdown": (r, events) => {
    assert.match(r.stdout, /Shutting down gracefully/);
    const id = r.result?.sandbox as string;
    const types = events.filter((e) => e.sandboxId === id).map((e) => e.type);
    assert.ok(types.includes("snapshot.created"), JSON.stringify(types));
    assert.equal(types.at(-1), "destroyed");
  },
  "Connection Pooling": (r) => assert.deepEqual(r.result, { reused: true }),
  "Caching and Reuse": (r) => assert.deepEqual(r.result, { cloned: true, copied: "cached\n" }),
};

/** Programs that must fail, and how: the spec's placeholder template names. */
const expectedFailures: Record<string, RegExp> = {
  "Cloning #2": /reason: 'TEMPLATE_NOT_FOUND'/,
};

const programs = specPrograms(SPEC);

it("keeps the spec's repository copy identical to ../shared", { skip: !existsSync(SHARED) && "no ../shared here" }, () => {
  assert.ok(readFileSync(SPEC).equals(readFileSync(SHARED)), "docs/spec/sandbox-management.md differs from ../shared/spec/sandbox-management.md: copy it again");
});

it("finds every block of the spec, split into variants", () => {
  const blocks = (readFileSync(SPEC, "utf8").match(/^```typescript$/gm) ?? []).length;
  assert.ok(blocks >= 20, `only ${blocks} blocks`);
  assert.equal(new Set(programs.map((p) => p.section)).size, blocks);
  assert.ok(programs.every((p) => !/'(e2b|vercel|modal|daytona)'/.test(p.code)));
  assert.deepEqual(
    programs.filter((p) => p.gpu).map((p) => p.name),
    ["Basic Creation #3", "Template-Based Creation #2", "Batch Creation #2", "Migration #1", "Sandbox Groups #2"],
  );
});

describe("the spec's programs", () => {
  for (const p of programs) {
    it(p.name, async () => {
      const since = (await lastSequence()) ?? 0;
      const r = await run(p, { interrupt: p.section === "Graceful Shutdown" });
      const events: Event[] = [];
      for await (const ev of client.events({ after: since, follow: false })) events.push(ev);
      try {
        const why = `${p.name} exited ${r.code}\n--- stdout\n${r.stdout.slice(-3000)}\n--- stderr\n${r.stderr.slice(-3000)}\n--- program\n${p.source}`;
        if (p.gpu) {
          assert.notEqual(r.code, 0, why);
          assert.match(r.stderr, /reason: 'GPU_UNAVAILABLE'/, why);
        } else if (expectedFailures[p.name]) {
          assert.notEqual(r.code, 0, why);
          assert.match(r.stderr, expectedFailures[p.name]!, why);
        } else {
          assert.equal(r.code, 0, why);
          assert.ok(!/unhandled|Unhandled/.test(r.stderr), why);
          checks[p.name]?.(r, events);
        }
        passed.push(p.name);
      } catch (err) {
        failed = true;
        throw err;
      } finally {
        // What a program left (a failed one, or the spec's own that it never destroys) goes.
        for (const sb of await client.list()) await sb.destroy().catch(() => undefined);
      }
    });
  }
});

async function lastSequence(): Promise<number | undefined> {
  let last: number | undefined;
  for await (const ev of client.events({ follow: false })) last = ev.sequence;
  return last;
}
