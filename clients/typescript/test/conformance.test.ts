// Runs tests/conformance/scenarios.json, the list every client runs, against a real daemon:
// over its Unix socket, or with COMPUTESDK_TEST_TLS=1 over TLS on TCP with a tenant's
// admin token (see daemon.ts), where every scenario must pass the same.
import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import * as path from "node:path";

import { Client, CommandExitError, ComputeSDKError, type CreateOptions, type Event, type Sandbox } from "../src/index.js";
import { Daemon, repoRoot } from "./daemon.js";

interface Step {
  op: string;
  provider?: string;
  template?: string;
  metadata?: Record<string, string>;
  env?: Record<string, string>;
  sandbox_id?: string;
  command?: string;
  argv?: string[];
  cwd?: string;
  stdin?: string;
  stdin_repeat?: { text: string; count: number };
  send?: string[];
  path?: string;
  content?: string;
  content_base64?: string;
  type?: string;
  check?: boolean;
  name?: string;
  description?: string;
  id?: string;
  volumes?: { name: string; path: string; size?: string; persistent?: boolean; mountExisting?: boolean }[];
  template_definition?: { name: string; baseImage?: string; packages?: string[]; env?: Record<string, string> };
  resources?: { cpu_cores?: number; memory_mb?: number; disk_mb?: number };
  restore_from?: string;
  import_state?: string;
  expect?: Record<string, unknown> | boolean;
  error?: { code?: string; reason?: string; kind?: string; exit_code?: number; signal?: number; stdout?: string; stderr?: string };
}

type Comparison = { gt?: number; gte?: number; lt?: number; lte?: number; eq?: number };

/** "memory.total_mb" -> ["memory", "totalMB"]: the scenarios' snake_case paths in this client's idiom. */
function camelPath(path: string): string[] {
  return path.split(".").map((p) => p.replace(/_([a-z])/g, (_, c: string) => c.toUpperCase()).replace(/Mb$/, "MB"));
}

/** Checks each dotted path of got against a value or a comparison. */
function checkPaths(op: string, got: unknown, want: Record<string, unknown>): void {
  for (const [p, w] of Object.entries(want)) {
    const v = camelPath(p).reduce<unknown>((o, k) => (o as Record<string, unknown> | undefined)?.[k], got);
    if (w !== null && typeof w === "object") {
      const c = w as Comparison;
      assert.equal(typeof v, "number", `${op}: ${p} is ${JSON.stringify(v)}`);
      const n = v as number;
      if (c.gt !== undefined) assert.ok(n > c.gt, `${op}: ${p}=${n} not > ${c.gt}`);
      if (c.gte !== undefined) assert.ok(n >= c.gte, `${op}: ${p}=${n} not >= ${c.gte}`);
      if (c.lt !== undefined) assert.ok(n < c.lt, `${op}: ${p}=${n} not < ${c.lt}`);
      if (c.lte !== undefined) assert.ok(n <= c.lte, `${op}: ${p}=${n} not <= ${c.lte}`);
      if (c.eq !== undefined) assert.equal(n, c.eq, `${op}: ${p}`);
    } else assert.equal(v, w, `${op}: ${p}`);
  }
}

const file = JSON.parse(readFileSync(path.join(repoRoot, "tests/conformance/scenarios.json"), "utf8")) as {
  scenarios: { name: string; steps: Step[] }[];
};

const daemon = new Daemon();
let failed = false;

before(() => daemon.start());
after(() => daemon.shutdown(failed));

class Runner {
  sandbox: Sandbox | undefined;
  events: Event[] = [];
  states: string[] = [];
  /** What earlier steps saved: $snapshot, $state, $export. */
  saved = new Map<string, unknown>();
  private readonly abort = new AbortController();

  constructor(readonly client: Client) {
    for (const s of ["connected", "disconnected", "reconnecting"] as const) client.on(s, () => this.states.push(s));
  }

  close(): void {
    this.abort.abort();
    this.client.close();
  }

  private get sb(): Sandbox {
    assert.ok(this.sandbox, "no sandbox yet");
    return this.sandbox;
  }

  private command(st: Step): string | string[] {
    return st.argv ?? st.command ?? "";
  }

  private stdin(st: Step): string | undefined {
    if (st.stdin_repeat) return st.stdin_repeat.text.repeat(st.stdin_repeat.count);
    return st.stdin;
  }

  private value<T>(v: T | string | undefined): T | string | undefined {
    if (typeof v === "string" && v.startsWith("$")) {
      assert.ok(this.saved.has(v), `${v} was not saved by an earlier step`);
      return this.saved.get(v) as T;
    }
    return v;
  }

  private createOptions(st: Step): CreateOptions {
    const o: CreateOptions = { template: st.template ?? "", metadata: st.metadata ?? {}, env: st.env ?? {} };
    if (st.volumes) o.volumes = st.volumes;
    if (st.template_definition) o.template = st.template_definition;
    if (st.resources) o.resources = { cpuCores: st.resources.cpu_cores, memoryMB: st.resources.memory_mb, diskMB: st.resources.disk_mb };
    if (st.restore_from) o.restoreFrom = this.value<string>(st.restore_from) as string;
    if (st.import_state) o.importState = this.value<Uint8Array>(st.import_state) as Uint8Array;
    return o;
  }

  private checkExec(st: Step, r: { stdout: string; stderr: string; exitCode: number; signal: number }): void {
    const e = (st.expect ?? {}) as Record<string, unknown>;
    if ("stdout" in e) assert.equal(r.stdout, e.stdout, `${st.op}: stdout`);
    if ("stderr" in e) assert.equal(r.stderr, e.stderr, `${st.op}: stderr`);
    if ("exit_code" in e) assert.equal(r.exitCode, e.exit_code, `${st.op}: exit_code`);
    if ("signal" in e) assert.equal(r.signal, e.signal, `${st.op}: signal`);
  }

  async run(st: Step): Promise<void> {
    const e = (typeof st.expect === "object" ? st.expect : {}) as Record<string, unknown>;
    switch (st.op) {
      case "create":
        this.sandbox = await this.client.create(st.provider ?? "", this.createOptions(st));
        return;
      case "snapshot_create":
        this.saved.set("$snapshot", await this.sb.createSnapshot({ name: st.name ?? "", description: st.description ?? "" }));
        return;
      case "snapshot_list": {
        const snaps = await this.sb.listSnapshots();
        if ("count" in e) assert.equal(snaps.length, e.count, "snapshot count");
        if ("names" in e) assert.deepEqual(snaps.map((s) => s.name).sort(), [...(e.names as string[])].sort());
        return;
      }
      case "snapshot_restore":
        return this.sb.restoreSnapshot(this.value<string>(st.id) as string);
      case "snapshot_delete":
        return this.sb.deleteSnapshot(this.value<string>(st.id) as string);
      case "save_state":
        this.saved.set("$state", await this.sb.saveState());
        return;
      case "export_state": {
        const data = await this.sb.exportState();
        assert.ok(data.length > 0, "an empty export");
        this.saved.set("$export", data);
        return;
      }
      case "health_check":
        assert.equal(await this.sb.healthCheck(), st.expect);
        return;
      case "resource_usage":
        return checkPaths(st.op, await this.sb.getResourceUsage(), e);
      case "config":
        return checkPaths(st.op, this.sb.config, e);
      case "volume_delete":
        return this.client.volumes.delete(st.name!);
      case "template_delete":
        return this.client.templates.delete(st.name!);
      case "destroy":
        return this.sb.destroy();
      case "status": {
        const s = await this.sb.getStatus();
        assert.equal(s.state, e.state);
        return;
      }
      case "get": {
        const sb = await this.client.get(st.sandbox_id ?? this.sb.id);
        assert.equal(sb.state, e.state);
        if (e.template) assert.equal(sb.template, e.template);
        for (const [k, v] of Object.entries((e.metadata as Record<string, string>) ?? {})) assert.equal(sb.metadata[k], v);
        return;
      }
      case "exec":
        this.checkExec(st, await this.sb.exec(this.command(st), { env: st.env ?? {}, cwd: st.cwd ?? "", stdin: this.stdin(st), check: st.check ?? true }));
        return;
      case "exec_stream": {
        const stream = this.sb.execStream(this.command(st), { env: st.env ?? {}, cwd: st.cwd ?? "", stdin: this.stdin(st) });
        let stdout = "";
        let stderr = "";
        let chunks = 0;
        let offset = 0;
        for await (const c of stream) {
          if (c.stream === "stdout") {
            assert.equal(c.offset, offset, "stdout chunk offset");
            offset += c.data.length;
            stdout += c.text;
            chunks++;
          } else stderr += c.text;
        }
        assert.ok(stream.exited, "no exit status");
        this.checkExec(st, { stdout, stderr, exitCode: stream.exited.exitCode, signal: stream.exited.signal });
        assert.ok(chunks >= ((e.min_stdout_chunks as number) ?? 0), `stdout came in ${chunks} chunks (not streamed)`);
        return;
      }
      case "exec_interactive": {
        const stream = this.sb.execStream(this.command(st), { interactive: true });
        for (const line of st.send ?? []) stream.sendStdin(line);
        stream.closeStdin();
        this.checkExec(st, await stream.wait());
        return;
      }
      case "write_file": {
        const data = st.content_base64 !== undefined ? Buffer.from(st.content_base64, "base64") : (st.content ?? "");
        const info = await this.sb.files.write(st.path!, data);
        if ("size" in e) assert.equal(info.size, e.size);
        return;
      }
      case "read_file": {
        const got = Buffer.from(await this.sb.files.read(st.path!));
        const want = e.content_base64 !== undefined ? Buffer.from(e.content_base64 as string, "base64") : Buffer.from((e.content as string) ?? "");
        assert.deepEqual(got, want);
        return;
      }
      case "list_dir": {
        const names = (await this.sb.files.list(st.path!)).map((f) => f.name).sort();
        assert.deepEqual(names, e.names);
        return;
      }
      case "stat": {
        const info = await this.sb.files.stat(st.path!);
        if ("is_dir" in e) assert.equal(info.isDirectory, e.is_dir);
        return;
      }
      case "remove":
        return this.sb.files.remove(st.path!);
      case "subscribe": {
        const it = this.sb.events({ signal: this.abort.signal });
        void (async () => {
          try {
            for await (const ev of it) this.events.push(ev);
          } catch {
            // Reported by wait_event timing out.
          }
        })();
        return;
      }
      case "wait_event": {
        const deadline = Date.now() + 30_000;
        while (!this.events.some((ev) => ev.type === st.type)) {
          assert.ok(Date.now() < deadline, `no ${st.type} event within 30s`);
          await new Promise((r) => setTimeout(r, 20));
        }
        return;
      }
      case "restart_daemon":
        return daemon.restart();
      case "expect_events": {
        this.events.forEach((ev, i) => {
          if (i > 0) assert.ok(ev.sequence > this.events[i - 1]!.sequence, "events out of order or repeated");
        });
        assertSubsequence(e.types_in_order as string[], this.events.map((ev) => ev.type));
        assertSubsequence(e.connection_states as string[], this.states);
        return;
      }
      default:
        assert.fail(`unknown op ${st.op}`);
    }
  }
}

function assertSubsequence(want: string[] = [], got: string[]): void {
  let i = 0;
  for (const g of got) if (i < want.length && g === want[i]) i++;
  assert.equal(i, want.length, `${JSON.stringify(got)} does not contain ${JSON.stringify(want)} in order`);
}

describe("conformance", () => {
  assert.ok(file.scenarios.length > 0);
  for (const sc of file.scenarios) {
    it(sc.name, async () => {
      const client = await Client.connect(daemon.connectOptions());
      if (daemon.listen === "tls") assert.equal(client.target, `https://${daemon.address}`);
      const runner = new Runner(client);
      try {
        for (const [i, st] of sc.steps.entries()) {
          const want = st.error;
          if (want?.kind === "CommandExitError") {
            await assert.rejects(runner.run(st), (err: unknown) => {
              assert.ok(err instanceof CommandExitError, `step ${i} (${st.op}): want a CommandExitError, got ${err}`);
              if (want.exit_code !== undefined) assert.equal(err.exitCode, want.exit_code, `step ${i}: exitCode`);
              if (want.signal !== undefined) assert.equal(err.signal, want.signal, `step ${i}: signal`);
              if (want.stdout !== undefined) assert.equal(err.stdout, want.stdout, `step ${i}: stdout`);
              if (want.stderr !== undefined) assert.equal(err.stderr, want.stderr, `step ${i}: stderr`);
              assert.equal(err.result.exitCode, err.exitCode);
              return true;
            });
          } else if (want) {
            await assert.rejects(runner.run(st), (err: unknown) => {
              assert.ok(err instanceof ComputeSDKError, `step ${i} (${st.op}): want a ComputeSDKError, got ${err}`);
              assert.equal(err.reason, want.reason, `step ${i} (${st.op}): reason`);
              assert.equal(err.code, want.code, `step ${i} (${st.op}): code`);
              return true;
            });
          } else {
            await runner.run(st);
          }
        }
      } catch (err) {
        failed = true;
        throw err;
      } finally {
        runner.close();
      }
    });
  }
});
