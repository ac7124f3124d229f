// How ComputeSDK's shapes map onto computesdkd-client's, in one place.
import type { CommandResult, CreateSandboxOptions, FileEntry, SandboxInfo } from "@computesdk/provider";
import type { CreateOptions, ExecResult, FileInfo, Resources, Sandbox } from "computesdkd-client";

/** ComputeSDK's streaming helper reports a command killed by its timeout as 124 (coreutils' timeout does too). */
export const TIMEOUT_EXIT_CODE = 124;
/** The exit `cd DIR && cmd` gives in bash when DIR is missing: what E2B's and others' runCommand return. */
export const MISSING_CWD_EXIT_CODE = 1;

/** Lists the metadata keys whose values were not strings, stored as JSON so they come back typed. */
export const TYPES_KEY = "computesdkd-provider/json";

/** Our result, with the fields ComputeSDK's CommandResult names first. */
export interface DaemonCommandResult extends CommandResult {
  /** Set when the command ran past its timeout (exitCode is then 124). */
  timedOut: boolean;
  /** The signal that killed it, 0 if none (exitCode is then 128 + signal, as a shell says). */
  signal: number;
  oomKilled: boolean;
  /** The daemon's process id: sandbox.getInstance().process(processId) re-attaches to it. */
  processId: string;
}

export function commandResult(r: ExecResult): DaemonCommandResult {
  let exitCode = r.exitCode;
  if (r.timedOut) exitCode = TIMEOUT_EXIT_CODE;
  else if (r.signal > 0 && exitCode < 0) exitCode = 128 + r.signal;
  return {
    stdout: r.stdout,
    stderr: r.stderr,
    exitCode,
    durationMs: r.durationMs,
    timedOut: r.timedOut,
    signal: r.signal,
    oomKilled: r.oomKilled,
    processId: r.processId,
  };
}

/** What a command in a missing working directory gives: an exit, not a throw. */
export function missingCwd(cwd: string, startedAt: number): DaemonCommandResult {
  return {
    stdout: "",
    stderr: `cd: ${cwd}: No such file or directory\n`,
    exitCode: MISSING_CWD_EXIT_CODE,
    durationMs: Date.now() - startedAt,
    timedOut: false,
    signal: 0,
    oomKilled: false,
    processId: "",
  };
}

/** Strings stay as they are (so every client reads them); anything else is JSON, its key listed under TYPES_KEY. */
export function encodeMetadata(metadata: Record<string, unknown> | undefined): Record<string, string> {
  const out: Record<string, string> = {};
  const typed: string[] = [];
  for (const [k, v] of Object.entries(metadata ?? {})) {
    if (v === undefined) continue;
    if (typeof v === "string") out[k] = v;
    else {
      out[k] = JSON.stringify(v);
      typed.push(k);
    }
  }
  if (typed.length) out[TYPES_KEY] = JSON.stringify(typed.sort());
  return out;
}

export function decodeMetadata(metadata: Record<string, string>): Record<string, unknown> {
  const out: Record<string, unknown> = { ...metadata };
  delete out[TYPES_KEY];
  let typed: unknown = [];
  try {
    typed = JSON.parse(metadata[TYPES_KEY] ?? "[]");
  } catch {
    // Not ours (someone wrote the key by hand): leave every value a string.
  }
  for (const k of Array.isArray(typed) ? typed : []) {
    if (typeof k !== "string" || !(k in metadata)) continue;
    try {
      out[k] = JSON.parse(metadata[k]!);
    } catch {
      // Changed since by a client that does not know the convention: keep the string.
    }
  }
  return out;
}

const num = (...xs: unknown[]) => xs.find((x): x is number => typeof x === "number" && x > 0);

/** The resource knobs ComputeSDK collects from every vendor, onto ours (memory and disk in MB, taken as given). */
export function resources(o: CreateSandboxOptions): Resources | undefined {
  const cpuCores = num(o.cpu, o.cpus, o.vcpus, o.resources?.vcpus, o.cpuLimit);
  const memoryMB = num(o.memoryMb, o.memory, o.memoryMiB, o.memMiB);
  const diskMB = num(o.diskMiB, o.diskMb, o.disk);
  if (cpuCores === undefined && memoryMB === undefined && diskMB === undefined) return undefined;
  return { cpuCores: cpuCores ?? 0, memoryMB: memoryMB ?? 0, diskMB: diskMB ?? 0 };
}

/**
 * ComputeSDK's create options as ours. templateId (else runtime) is the
 * template; snapshotId a saved state to start from; envs the sandbox's env;
 * timeout its lifetime in ms; name and metadata go in metadata.
 */
export function createOptions(o: CreateSandboxOptions, template: string | undefined, usePool: boolean | undefined): CreateOptions {
  const metadata = encodeMetadata({ ...(o.metadata ?? {}), ...(o.name ? { name: o.name } : {}) });
  const out: CreateOptions = { metadata };
  if (template) out.template = template;
  if (o.snapshotId) out.restoreFrom = o.snapshotId;
  if (o.envs) out.env = o.envs;
  if (typeof o.timeout === "number" && o.timeout > 0) out.timeoutMs = o.timeout;
  const r = resources(o);
  if (r) out.resources = r;
  if (usePool !== undefined) out.usePool = usePool;
  return out;
}

const STATUS: Record<string, SandboxInfo["status"]> = {
  creating: "running",
  running: "running",
  stopping: "stopped",
  stopped: "stopped",
  error: "error",
};

export interface DaemonSandboxInfo extends SandboxInfo {
  /** The template it runs, and the daemon's provider behind it (local, docker, e2b, ...). */
  template: string;
  backend: string;
  /** URLs of the ports create was asked to expose (options.ports), by port. */
  urls: Record<number, string>;
}

export function sandboxInfo(sb: Sandbox, urls: Record<number, string>): DaemonSandboxInfo {
  const created = sb.info.createTime;
  return {
    id: sb.id,
    provider: "computesdkd",
    status: STATUS[sb.state] ?? "error",
    createdAt: created ? new Date(Number(created.seconds) * 1000 + Math.floor(created.nanos / 1e6)) : new Date(0),
    timeout: Number(sb.info.timeoutMs),
    metadata: decodeMetadata(sb.metadata),
    template: sb.template,
    backend: sb.provider,
    urls,
  };
}

export function fileEntry(f: FileInfo): FileEntry {
  const entry: FileEntry = { name: f.name, type: f.isDirectory ? "directory" : "file", size: f.size };
  if (f.modifiedAt) entry.modified = f.modifiedAt;
  return entry;
}
