// TTI as computesdk/benchmarks measures it (src/sandbox/benchmark.ts, concurrent.ts,
// scoring.ts), through computesdkd-provider and, in the same run, through the paths
// under it: computesdkd-client directly, and its raw gRPC stubs (no idiomatic layer).
//
//   node bench/tti.mjs --socket SOCK [--n 100] [--burst 100] [--paths package,client,raw]
//                      [--template node] [--out FILE.jsonl]
//
// One iteration: create, the benchmark's identity probe (no marker an earlier
// sandbox left; it writes one), `node -v`, all timed; destroy after, untimed.
// Sequential runs n one after another; burst starts `burst` at once. Each
// iteration's time and every summary is appended to --out as it is known.
import { appendFileSync } from "node:fs";
import { randomUUID } from "node:crypto";
import { parseArgs } from "node:util";

const here = new URL(".", import.meta.url);
const pkg = new URL("../clients/computesdk-provider/", here);
const { compute } = await import(new URL("node_modules/computesdk/dist/index.mjs", pkg).href);
const { computesdkd } = await import(new URL("dist/src/index.js", pkg).href);
const { Client } = await import(new URL("node_modules/computesdkd-client/dist/src/index.js", pkg).href);

const { values: a } = parseArgs({
  options: {
    socket: { type: "string" },
    n: { type: "string", default: "100" },
    burst: { type: "string", default: "100" },
    paths: { type: "string", default: "package,client,raw" },
    modes: { type: "string", default: "sequential,burst" },
    template: { type: "string", default: "node" },
    out: { type: "string", default: "" },
  },
});

const emit = (row) => {
  const line = JSON.stringify({ time: new Date().toISOString(), ...row });
  if (a.out) appendFileSync(a.out, line + "\n");
  process.stdout.write(line + "\n");
};

// --- computesdk/benchmarks' statistics and score, as they are written there.
function percentile(sorted, p) {
  if (sorted.length === 0) return 0;
  const idx = Math.max(0, Math.ceil((p / 100) * sorted.length) - 1);
  return sorted[Math.min(idx, sorted.length - 1)];
}
function computeStats(values, trimPercent = 0.05) {
  if (values.length === 0) return { median: 0, p95: 0, p99: 0 };
  const sorted = [...values].sort((x, y) => x - y);
  const trimCount = Math.floor(sorted.length * trimPercent);
  const trimmed = trimCount > 0 && sorted.length - 2 * trimCount > 0 ? sorted.slice(trimCount, sorted.length - trimCount) : sorted;
  const mid = Math.floor(trimmed.length / 2);
  const median = trimmed.length % 2 === 0 ? (trimmed[mid - 1] + trimmed[mid]) / 2 : trimmed[mid];
  return { median, p95: percentile(trimmed, 95), p99: percentile(trimmed, 99) };
}
const scoreMetric = (ms) => Math.max(0, 100 * (1 - ms / 10_000));
const composite = (s, success) => (0.6 * scoreMetric(s.median) + 0.25 * scoreMetric(s.p95) + 0.15 * scoreMetric(s.p99)) * success;

// The benchmark's identity probe, trimmed to what it checks: a marker from an earlier sandbox fails the run.
const probe = (token) =>
  [
    "marker_path=''",
    'for p in /tmp/.bench_ephemeral_check /var/tmp/.bench_ephemeral_check; do if [ -f "$p" ]; then marker_path=$p; break; fi; done',
    "ns_mnt=$(readlink /proc/self/ns/mnt 2>/dev/null || printf unknown)",
    "printf 'marker_path=%s\\n' \"$marker_path\"",
    "printf 'ns_mnt=%s\\n' \"$ns_mnt\"",
    `printf '%s' '${token}' > /tmp/.bench_ephemeral_check`,
    `printf '%s' '${token}' > /var/tmp/.bench_ephemeral_check`,
  ].join("; ");

function check(probeResult, nodeResult) {
  if (probeResult.exitCode !== 0) throw new Error(`identity probe exit ${probeResult.exitCode}: ${probeResult.stderr}`);
  if (/marker_path=\S/.test(probeResult.stdout)) throw new Error("sandbox reuse: an earlier iteration's marker is there");
  if (nodeResult.exitCode !== 0 || !nodeResult.stdout.startsWith("v")) throw new Error(`node -v failed: ${nodeResult.stderr}`);
}

// --- the three paths: each returns { tti, destroy }.
const nonce = randomUUID();
const paths = {
  // ComputeSDK's compute API over this package, as the benchmark drives a provider.
  package: async () => {
    const start = performance.now();
    const sb = await compute.sandbox.create({ templateId: a.template });
    const p = await sb.runCommand(probe(`${nonce}:${Math.random()}`));
    const r = await sb.runCommand("node -v");
    const tti = performance.now() - start;
    check(p, r);
    return { tti, destroy: () => sb.destroy() };
  },
  // computesdkd-client alone.
  client: async () => {
    const start = performance.now();
    const sb = await client.create("", { template: a.template });
    const p = await sb.exec(probe(`${nonce}:${Math.random()}`), { check: false });
    const r = await sb.exec("node -v", { check: false });
    const tti = performance.now() - start;
    check(p, r);
    return { tti, destroy: () => sb.destroy() };
  },
  // The generated stubs: CreateSandbox and RunCommand, nothing else.
  raw: async () => {
    const start = performance.now();
    const created = await client.raw.sandboxes.createSandbox({ template: a.template, requestId: randomUUID() });
    const sandboxId = created.sandbox.id;
    const run = async (command) => {
      const resp = await client.raw.processes.runCommand({ sandboxId, command: { command } });
      const dec = new TextDecoder();
      return { exitCode: resp.exited?.exitCode ?? -1, stdout: dec.decode(resp.stdout), stderr: dec.decode(resp.stderr) };
    };
    const p = await run(probe(`${nonce}:${Math.random()}`));
    const r = await run("node -v");
    const tti = performance.now() - start;
    check(p, r);
    return { tti, destroy: () => client.raw.sandboxes.destroySandbox({ sandboxId }) };
  },
};

async function iteration(path, mode, i) {
  try {
    const { tti, destroy } = await paths[path]();
    emit({ kind: "iteration", path, mode, i, ttiMs: tti });
    await destroy();
    return { ttiMs: tti };
  } catch (err) {
    emit({ kind: "iteration", path, mode, i, error: String(err?.message ?? err) });
    return { error: String(err) };
  }
}

function summarize(path, mode, results, extra = {}) {
  const ok = results.filter((r) => !r.error).map((r) => r.ttiMs);
  const stats = computeStats(ok);
  const success = results.length ? ok.length / results.length : 0;
  const row = { kind: "summary", path, mode, n: results.length, ok: ok.length, ...stats, score: Math.round(composite(stats, success) * 100) / 100, ...extra };
  emit(row);
  return row;
}

const provider = computesdkd({ socket: a.socket });
compute.setConfig({ provider });
const client = await Client.connect({ socket: a.socket });
const summaries = [];
for (const mode of a.modes.split(",")) {
  for (const path of a.paths.split(",")) {
    if (!paths[path]) throw new Error(`unknown path ${path}`);
    // One untimed iteration first: each path's connection and first call are warm.
    await iteration(path, "warmup", 0);
    const cpu0 = process.cpuUsage();
    const cpuMs = () => {
      const c = process.cpuUsage(cpu0);
      return { clientCpuMs: Math.round((c.user + c.system) / 1000) };
    };
    if (mode === "sequential") {
      const results = [];
      for (let i = 0; i < Number(a.n); i++) results.push(await iteration(path, mode, i));
      summaries.push(summarize(path, mode, results, cpuMs()));
    } else {
      const wall = performance.now();
      const results = await Promise.all(Array.from({ length: Number(a.burst) }, (_, i) => iteration(path, mode, i)));
      const ok = results.filter((r) => !r.error).map((r) => r.ttiMs);
      summaries.push(summarize(path, mode, results, { wallMs: performance.now() - wall, firstReadyMs: ok.length ? Math.min(...ok) : 0, ...cpuMs() }));
    }
  }
}
client.close();
await provider.close();
