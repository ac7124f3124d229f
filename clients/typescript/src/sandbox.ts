// One sandbox: lifecycle, commands, processes, files, monitoring and events.
import { create, type MessageInitShape } from "@bufbuild/protobuf";
import { timestampDate, type Timestamp } from "@bufbuild/protobuf/wkt";

import { State, type Resources as ResourcesMessage, type Sandbox as SandboxMessage } from "./gen/computesdk/api/sandbox/v1/sandbox_pb.js";
import { CommandSchema, ExecRequestSchema, ExecStartSchema, type Command as CommandMessage, type ExecRequest, type Exited, type Process as ProcessMessage } from "./gen/computesdk/api/process/v1/process_pb.js";
import { FileType, WriteFileFinishSchema, WriteFileHeaderSchema, WriteFileRequestSchema, type FileInfo as FileInfoMessage, type WriteFileRequest } from "./gen/computesdk/api/filesystem/v1/filesystem_pb.js";
import type { CheckHealthResponse, Usage as UsageMessage } from "./gen/computesdk/api/monitoring/v1/monitoring_pb.js";
import { CommandExitError, ComputeSDKError, SandboxEventError, type SandboxErrorType } from "./errors.js";
import { Snapshots, type SnapshotInfo } from "./state.js";
import { callSafely, linked, report } from "./background.js";
import type { Client, ConnectionState, CreateOptions, Event } from "./client.js";

/** The largest stdin or file piece sent in one message. */
const CHUNK = 1024 * 1024;

/** The capability RunCommand needs: output past what fits inline is read on with attach. */
const EXEC_RESUME = "exec.resume";

export interface Resources {
  cpuCores?: number;
  memoryMB?: number;
  diskMB?: number;
  pidsLimit?: number;
  gpu?: { enabled: boolean; type?: string; count?: number };
}

export function resourcesToProto(r: Resources | undefined) {
  return {
    cpuCores: r?.cpuCores ?? 0,
    memoryMb: BigInt(r?.memoryMB ?? 0),
    diskMb: BigInt(r?.diskMB ?? 0),
    pidsLimit: r?.pidsLimit ?? 0,
    gpu: r?.gpu ? { enabled: r.gpu.enabled, type: r.gpu.type ?? "", count: r.gpu.count ?? 0 } : undefined,
  };
}

function resourcesFromProto(r: ResourcesMessage | undefined): Resources {
  const out: Resources = {
    cpuCores: r?.cpuCores ?? 0,
    memoryMB: Number(r?.memoryMb ?? 0n),
    diskMB: Number(r?.diskMb ?? 0n),
    pidsLimit: r?.pidsLimit ?? 0,
  };
  if (r?.gpu?.enabled) out.gpu = { enabled: true, type: r.gpu.type, count: r.gpu.count };
  return out;
}

/** 'creating', 'running', 'stopping', 'stopped', 'error'. */
export function stateName(s: State): string {
  return State[s].replace(/^STATE_/, "").toLowerCase();
}

export function toDate(t: Timestamp | undefined): Date | undefined {
  return t ? timestampDate(t) : undefined;
}

const bytesOf = (d: string | Uint8Array) => (typeof d === "string" ? new TextEncoder().encode(d) : d);
const decoder = new TextDecoder();

function concat(parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

/** A command: a string runs through /bin/sh -c, an array is the exact argv. */
export type CommandLine = string | string[];

export interface ExecOptions {
  cwd?: string;
  env?: Record<string, string>;
  timeoutMs?: number;
  /** Fed to the command, then stdin is closed. */
  stdin?: string | Uint8Array;
  /** Keep stdin open for sendStdin() / writeStdin(). */
  interactive?: boolean;
  /** Called with each piece of output, decoded as UTF-8 across chunk boundaries. */
  onStdout?: (text: string) => void;
  onStderr?: (text: string) => void;
  signal?: AbortSignal;
  /**
   * exec() only: false returns the result of a command that exits non-zero or is
   * killed by a signal; by default (true) it rejects with CommandExitError.
   * A timeout is not a failure here: the result says timedOut.
   */
  check?: boolean;
}

export interface OutputChunk {
  stream: "stdout" | "stderr";
  data: Uint8Array;
  offset: number;
  /** data as text; a UTF-8 character split across chunks is whole in the chunk it ends in. */
  readonly text: string;
}

export interface ExecResult {
  stdout: string;
  stderr: string;
  stdoutBytes: Uint8Array;
  stderrBytes: Uint8Array;
  exitCode: number;
  signal: number;
  durationMs: number;
  timedOut: boolean;
  oomKilled: boolean;
  processId: string;
}

export function commandToProto(command: CommandLine, o: ExecOptions): CommandMessage {
  return create(CommandSchema, {
    command: typeof command === "string" ? command : "",
    args: typeof command === "string" ? [] : command,
    cwd: o.cwd ?? "",
    env: o.env ?? {},
    timeoutMs: BigInt(o.timeoutMs ?? 0),
    stdin: o.interactive === true || o.stdin !== undefined,
  });
}

/** One streaming UTF-8 decoder per stream, so a character split across chunks decodes whole. */
class StreamDecoders {
  private readonly out = new TextDecoder();
  private readonly err = new TextDecoder();

  chunk(stream: "stdout" | "stderr", data: Uint8Array, offset: bigint): OutputChunk {
    const text = (stream === "stdout" ? this.out : this.err).decode(data, { stream: true });
    return { stream, data, offset: Number(offset), text };
  }
}

/** Throws CommandExitError for a failed one-shot exec unless options.check is false. */
export function checked(result: ExecResult, options: { check?: boolean }): ExecResult {
  if (options.check !== false && !result.timedOut && (result.exitCode !== 0 || result.signal !== 0)) throw new CommandExitError(result);
  return result;
}

export function resultFromParts(out: Uint8Array[], err: Uint8Array[], ex: Exited, processId: string): ExecResult {
  const stdoutBytes = concat(out);
  const stderrBytes = concat(err);
  return {
    stdout: decoder.decode(stdoutBytes),
    stderr: decoder.decode(stderrBytes),
    stdoutBytes,
    stderrBytes,
    exitCode: ex.exitCode,
    signal: ex.signal,
    durationMs: Number(ex.durationMs),
    timedOut: ex.timedOut,
    oomKilled: ex.oomKilled,
    processId,
  };
}

/** A queue the request side of a bidi call reads from. */
class RequestQueue<T> implements AsyncIterable<T> {
  private items: (T | null)[] = [];
  private wake: (() => void) | undefined;

  push(item: T | null): void {
    this.items.push(item);
    this.wake?.();
  }

  async *[Symbol.asyncIterator](): AsyncIterator<T> {
    for (;;) {
      while (this.items.length === 0) await new Promise<void>((r) => (this.wake = r));
      const item = this.items.shift()!;
      if (item === null) return;
      yield item;
    }
  }
}

/** A running command. Iterate it for output; then exitCode and wait() say how it ended. */
export class ExecStream implements AsyncIterable<OutputChunk> {
  processId = "";
  pid = 0;
  exited: Exited | undefined;
  private readonly requests = new RequestQueue<ExecRequest>();
  private readonly abort = new AbortController();
  private consumed = false;

  constructor(
    private readonly sandbox: Sandbox,
    command: CommandLine,
    private readonly options: ExecOptions,
  ) {
    this.push({ case: "start", value: create(ExecStartSchema, { sandboxId: sandbox.id, command: commandToProto(command, options) }) });
    if (options.stdin !== undefined) {
      this.sendStdin(options.stdin);
      if (!options.interactive) this.closeStdin();
    }
    options.signal?.addEventListener("abort", () => this.abort.abort(), { once: true });
  }

  private push(request: MessageInitShape<typeof ExecRequestSchema>["request"]): void {
    this.requests.push(create(ExecRequestSchema, { request }));
  }

  sendStdin(data: string | Uint8Array): void {
    const raw = bytesOf(data);
    for (let i = 0; i < raw.length; i += CHUNK) this.push({ case: "stdin", value: raw.subarray(i, i + CHUNK) });
  }

  closeStdin(): void {
    this.push({ case: "closeStdin", value: true });
  }

  /** Delivers a signal number to the command. */
  signal(signal: number): void {
    this.push({ case: "signal", value: signal });
  }

  get exitCode(): number | undefined {
    return this.exited?.exitCode;
  }

  async *[Symbol.asyncIterator](): AsyncIterator<OutputChunk> {
    if (this.consumed) throw new Error("an ExecStream can be iterated once");
    this.consumed = true;
    try {
      const responses = this.sandbox.client.raw.processes.exec(this.requests, { signal: this.abort.signal });
      const decoders = new StreamDecoders();
      for await (const resp of responses) {
        const ev = resp.event;
        if (ev.case === "started") {
          this.processId = ev.value.processId;
          this.pid = ev.value.pid;
        } else if (ev.case === "stdout" || ev.case === "stderr") {
          yield decoders.chunk(ev.case, ev.value.data, ev.value.offset);
        } else if (ev.case === "exited") {
          this.exited = ev.value;
        }
      }
    } finally {
      this.requests.push(null);
      this.abort.abort();
    }
  }

  /** Reads the rest of the output and returns the result. */
  async wait(): Promise<ExecResult> {
    const out: Uint8Array[] = [];
    const err: Uint8Array[] = [];
    for await (const c of this) {
      if (c.stream === "stdout") {
        out.push(c.data);
        this.options.onStdout?.(c.text);
      } else {
        err.push(c.data);
        this.options.onStderr?.(c.text);
      }
    }
    if (!this.exited) throw new ComputeSDKError("exec ended without an exit status", "ABORTED", "SANDBOX_TERMINATED");
    return resultFromParts(out, err, this.exited, this.processId);
  }
}

/** A background process; it outlives the call that started it and the connection. */
export class Process {
  constructor(
    readonly sandbox: Sandbox,
    readonly id: string,
  ) {}

  /** Output from these offsets (0, 0 replays it all) until the process ends. */
  async *attach(options: { stdoutOffset?: number; stderrOffset?: number; signal?: AbortSignal } = {}): AsyncGenerator<OutputChunk, Exited | undefined> {
    let exited: Exited | undefined;
    // Aborted when the caller leaves early: Connect's streams ignore return().
    const call = linked(options.signal);
    const stream = this.sandbox.client.raw.processes.attachProcess(
      {
        sandboxId: this.sandbox.id,
        processId: this.id,
        stdoutOffset: BigInt(options.stdoutOffset ?? 0),
        stderrOffset: BigInt(options.stderrOffset ?? 0),
      },
      { signal: call.signal },
    );
    const decoders = new StreamDecoders();
    try {
      for await (const resp of stream) {
        const ev = resp.event;
        if (ev.case === "stdout" || ev.case === "stderr") yield decoders.chunk(ev.case, ev.value.data, ev.value.offset);
        else if (ev.case === "exited") exited = ev.value;
      }
    } finally {
      call.abort();
    }
    return exited;
  }

  /** Waits for the end and returns the whole output. */
  wait(): Promise<ExecResult> {
    return this.collect([], []);
  }

  /** Appends the output from where out and err end until the process exits. */
  async collect(out: Uint8Array[], err: Uint8Array[], signal?: AbortSignal): Promise<ExecResult> {
    const length = (parts: Uint8Array[]) => parts.reduce((n, p) => n + p.length, 0);
    const it = this.attach({ stdoutOffset: length(out), stderrOffset: length(err), signal });
    for (;;) {
      const next = await it.next();
      if (next.done) {
        if (!next.value) throw new ComputeSDKError("process ended without an exit status", "ABORTED", "SANDBOX_TERMINATED");
        return resultFromParts(out, err, next.value, this.id);
      }
      (next.value.stream === "stdout" ? out : err).push(next.value.data);
    }
  }

  async writeStdin(data: string | Uint8Array, options: { close?: boolean } = {}): Promise<void> {
    const raw = bytesOf(data);
    let i = 0;
    do {
      const piece = raw.subarray(i, i + CHUNK);
      i += CHUNK;
      await this.sandbox.client.raw.processes.writeStdin({
        sandboxId: this.sandbox.id,
        processId: this.id,
        data: piece,
        close: (options.close ?? false) && i >= raw.length,
      });
    } while (i < raw.length);
  }

  async signal(signal: number): Promise<void> {
    await this.sandbox.client.raw.processes.signalProcess({ sandboxId: this.sandbox.id, processId: this.id, signal });
  }

  kill(): Promise<void> {
    return this.signal(9);
  }
}

export interface FileInfo {
  name: string;
  path: string;
  type: "file" | "directory" | "symlink" | "other";
  isDirectory: boolean;
  size: number;
  mode: number;
  modifiedAt: Date | undefined;
  linkTarget: string;
}

function fileInfo(f: FileInfoMessage | undefined): FileInfo {
  const type = ({ [FileType.FILE]: "file", [FileType.DIRECTORY]: "directory", [FileType.SYMLINK]: "symlink" } as Record<number, FileInfo["type"]>)[f?.type ?? 0] ?? "other";
  return {
    name: f?.name ?? "",
    path: f?.path ?? "",
    type,
    isDirectory: type === "directory",
    size: Number(f?.size ?? 0n),
    mode: f?.mode ?? 0,
    modifiedAt: toDate(f?.modifyTime),
    linkTarget: f?.linkTarget ?? "",
  };
}

/** The sandbox's filesystem. Paths are resolved inside the sandbox's root. */
export class Files {
  constructor(private readonly sandbox: Sandbox) {}

  private get rpc() {
    return this.sandbox.client.raw.files;
  }

  async read(path: string, options: { offset?: number; length?: number } = {}): Promise<Uint8Array> {
    const parts: Uint8Array[] = [];
    const stream = this.rpc.readFile({ sandboxId: this.sandbox.id, path, offset: BigInt(options.offset ?? 0), length: BigInt(options.length ?? 0) });
    for await (const resp of stream) parts.push(resp.data);
    return concat(parts);
  }

  async readText(path: string): Promise<string> {
    return decoder.decode(await this.read(path));
  }

  /** Writes a file, creating parent directories unless makeParents is false. */
  async write(path: string, data: string | Uint8Array, options: { mode?: number; makeParents?: boolean; append?: boolean } = {}): Promise<FileInfo> {
    const raw = bytesOf(data);
    const sandboxId = this.sandbox.id;
    async function* requests(): AsyncGenerator<WriteFileRequest> {
      const header = create(WriteFileHeaderSchema, { sandboxId, path, mode: options.mode ?? 0, makeParents: options.makeParents ?? true, append: options.append ?? false, expectFinish: true });
      yield create(WriteFileRequestSchema, { request: { case: "header", value: header } });
      for (let i = 0; i < raw.length; i += CHUNK) yield create(WriteFileRequestSchema, { request: { case: "data", value: raw.subarray(i, i + CHUNK) } });
      // Only now is the file put in place: a write cut short changes nothing.
      yield create(WriteFileRequestSchema, { request: { case: "finish", value: create(WriteFileFinishSchema) } });
    }
    const resp = await this.rpc.writeFile(requests());
    return fileInfo(resp.info);
  }

  async list(path = "/workspace"): Promise<FileInfo[]> {
    const resp = await this.rpc.listDirectory({ sandboxId: this.sandbox.id, path });
    return resp.entries.map(fileInfo);
  }

  async stat(path: string): Promise<FileInfo> {
    const resp = await this.rpc.statPath({ sandboxId: this.sandbox.id, path });
    return fileInfo(resp.info);
  }

  async exists(path: string): Promise<boolean> {
    try {
      await this.stat(path);
      return true;
    } catch (err) {
      if (err instanceof ComputeSDKError && err.code === "NOT_FOUND") return false;
      throw err;
    }
  }

  async mkdir(path: string, options: { parents?: boolean } = {}): Promise<FileInfo> {
    const resp = await this.rpc.makeDirectory({ sandboxId: this.sandbox.id, path, makeParents: options.parents ?? true });
    return fileInfo(resp.info);
  }

  async remove(path: string, options: { recursive?: boolean } = {}): Promise<void> {
    await this.rpc.removePath({ sandboxId: this.sandbox.id, path, recursive: options.recursive ?? false });
  }

  async move(source: string, destination: string): Promise<FileInfo> {
    const resp = await this.rpc.movePath({ sandboxId: this.sandbox.id, source, destination });
    return fileInfo(resp.info);
  }
}

export interface SandboxStatus {
  state: string;
  uptimeMs: number;
  resources: Resources;
  usage: { memoryUsedBytes: number; memoryLimitBytes: number; processCount: number; cpuTimeNs: number; diskUsedBytes: number; diskLimitBytes: number } | undefined;
}

/** The one shape of resource figures (getResourceUsage() and monitor 'metrics'), the same in every client. MB are MiB. */
export interface Usage {
  sampledAt: Date | undefined;
  cpu: { percent: number };
  memory: { usedMB: number; totalMB: number; percent: number; usedBytes: number; limitBytes: number };
  disk: { usedMB: number; totalMB: number; percent: number; usedBytes: number; limitBytes: number };
  network: { rxBytes: number; txBytes: number; available: boolean };
  processCount: number;
}

const MB = 1024 * 1024;

function usage(u: UsageMessage | undefined): Usage {
  const n = (v: bigint | undefined) => Number(v ?? 0n);
  const figures = (used: number, limit: number) => ({ usedMB: used / MB, totalMB: limit / MB, percent: limit > 0 ? (100 * used) / limit : 0, usedBytes: used, limitBytes: limit });
  return {
    sampledAt: toDate(u?.sampleTime),
    cpu: { percent: u?.cpuPercent ?? 0 },
    memory: figures(n(u?.memoryUsedBytes), n(u?.memoryLimitBytes)),
    disk: figures(n(u?.diskUsedBytes), n(u?.diskLimitBytes)),
    network: { rxBytes: n(u?.networkRxBytes), txBytes: n(u?.networkTxBytes), available: u?.hasNetwork ?? false },
    processCount: u?.processCount ?? 0,
  };
}

/** A running Monitor stream: on('metrics', ...) or iterate; stop() ends it. */
export class Monitor implements AsyncIterable<Usage> {
  private readonly abort = new AbortController();
  private readonly listeners: ((u: Usage) => void)[] = [];
  private readonly errorListeners: ((e: unknown) => void)[] = [];
  private pump: Promise<void> | undefined;

  constructor(
    private readonly sandbox: Sandbox,
    private readonly options: { interval?: number; metrics?: string[] },
  ) {}

  async *[Symbol.asyncIterator](): AsyncIterator<Usage> {
    const call = linked(this.abort.signal);
    try {
      const stream = this.sandbox.client.raw.monitoring.monitor(
        { sandboxId: this.sandbox.id, intervalMs: this.options.interval ?? 1000, metrics: this.options.metrics ?? [] },
        { signal: call.signal },
      );
      for await (const resp of stream) yield usage(resp.usage);
    } catch (err) {
      if (!this.abort.signal.aborted) throw err;
    } finally {
      call.abort();
    }
  }

  /** 'metrics' gets each sample; 'error' the error that ended the stream (logged when nothing listens). */
  on(event: "metrics", listener: (metrics: Usage) => void): this;
  on(event: "error", listener: (error: unknown) => void): this;
  on(event: "metrics" | "error", listener: ((metrics: Usage) => void) | ((error: unknown) => void)): this {
    if (event === "metrics") this.listeners.push(listener as (u: Usage) => void);
    else this.errorListeners.push(listener as (e: unknown) => void);
    this.pump ??= (async () => {
      try {
        for await (const u of this) for (const l of this.listeners) callSafely(l, u);
      } catch (err) {
        if (this.errorListeners.length === 0) report("monitor stopped", err);
        for (const l of this.errorListeners) callSafely(l, err);
      }
    })();
    return this;
  }

  async stop(): Promise<void> {
    this.abort.abort();
    await this.pump;
  }
}

/** What on('resourceAlert', ...) receives: the spec's { type, current, threshold } (percentages), and the event. */
export interface ResourceAlert {
  type: "cpu" | "memory" | "disk";
  current: number;
  threshold: number;
  message: string;
  sequence: number;
  sandboxId: string;
  attributes: Record<string, string>;
}

/** The create options as given (connection options left out), with resources filled from the sandbox's. */
export type SandboxConfig = Omit<CreateOptions, "resources"> & { resources: Resources };

type Listener = (event: never) => unknown;

const CONNECTION_EVENTS = new Set(["connected", "disconnected", "reconnecting"]);
// Daemon events that on('error', ...) also receives, as a SandboxEventError of this type.
const ERROR_EVENTS: Record<string, SandboxErrorType> = { "out-of-memory": "out-of-memory", corruption: "corruption", error: "error" };

function resourceAlert(ev: Event): ResourceAlert {
  const a = ev.attributes;
  return {
    type: (a.type ?? "") as ResourceAlert["type"],
    current: Number.parseFloat(a.current ?? "") || 0,
    threshold: Number.parseFloat(a.threshold ?? a.percent ?? "") || 0,
    message: ev.message,
    sequence: ev.sequence,
    sandboxId: ev.sandboxId,
    attributes: a,
  };
}

/** A handle to one sandbox. */
export class Sandbox {
  /** destroy() closes the connection too (compute() shares one connection and leaves this false). */
  ownsClient = false;
  readonly files: Files;
  readonly snapshots: Snapshots;
  /** The create options as given, when this handle came from create (see config). */
  createOptions: CreateOptions = {};
  private readonly listeners = new Map<string, Listener[]>();
  private listening: AbortController | undefined;
  private listener: Promise<void> | undefined;
  /** The last event listeners saw: a new stream resumes after it. */
  private lastSequence = 0;
  private sawDestroyed = false;

  constructor(
    readonly client: Client,
    public info: SandboxMessage,
  ) {
    this.files = new Files(this);
    this.snapshots = new Snapshots(this);
  }

  get id(): string {
    return this.info.id;
  }
  get provider(): string {
    return this.info.provider;
  }
  get template(): string {
    return this.info.template;
  }
  get state(): string {
    return stateName(this.info.state);
  }
  get metadata(): Record<string, string> {
    return { ...this.info.metadata };
  }
  /** The effective resources (capped at the host); requestedResources says what was asked when it differs. */
  get resources(): Resources {
    return resourcesFromProto(this.info.resources);
  }
  /** What the last create, scale or limit change asked for, when the daemon capped it or a change waits for a restart; else undefined. */
  get requestedResources(): Resources | undefined {
    return this.info.requestedResources && resourcesFromProto(this.info.requestedResources);
  }
  /** The create options as given, with resources always present: sandbox.config.resources.memoryMB * 2 works. */
  get config(): SandboxConfig {
    const given = this.createOptions;
    return { ...given, template: typeof given.template === "object" ? given.template : this.template, resources: { ...this.resources, ...(given.resources ?? {}) } };
  }

  // ------------------------------------------------------------ commands

  /**
   * Runs a command to completion. A string goes through /bin/sh -c; an array is the argv.
   * A non-zero exit or a signal rejects with CommandExitError (its result is
   * e.result) unless options.check is false.
   */
  async exec(command: CommandLine, options: ExecOptions = {}): Promise<ExecResult> {
    const quick = options.stdin === undefined && !options.interactive && !options.onStdout && !options.onStderr;
    const result =
      quick && (await this.client.capabilities(this.provider)).has(EXEC_RESUME) ? await this.runCommand(command, options) : await new ExecStream(this, command, options).wait();
    return checked(result, options);
  }

  /** One unary call; output past what fits inline is read on with attach from where it stopped. */
  private async runCommand(command: CommandLine, options: ExecOptions): Promise<ExecResult> {
    const resp = await this.client.raw.processes.runCommand({ sandboxId: this.id, command: commandToProto(command, options) }, { signal: options.signal });
    if (resp.exited) return resultFromParts([resp.stdout], [resp.stderr], resp.exited, resp.processId);
    return new Process(this, resp.processId).collect([resp.stdout], [resp.stderr], options.signal);
  }

  /** Runs a command and streams its output as it is produced. */
  execStream(command: CommandLine, options: ExecOptions = {}): ExecStream {
    return new ExecStream(this, command, options);
  }

  /** Starts a background process that outlives this call and the connection. */
  async startProcess(command: CommandLine, options: ExecOptions & { tag?: string } = {}): Promise<Process> {
    const { stdin, ...rest } = options;
    const resp = await this.client.raw.processes.startProcess({
      sandboxId: this.id,
      command: commandToProto(command, { ...rest, interactive: rest.interactive || stdin !== undefined }),
      tag: options.tag ?? "",
    });
    const proc = new Process(this, resp.process!.processId);
    if (stdin !== undefined) await proc.writeStdin(stdin, { close: !options.interactive });
    return proc;
  }

  /** A handle to an earlier process by id or tag. */
  process(id: string): Process {
    return new Process(this, id);
  }

  async processes(): Promise<ProcessMessage[]> {
    const resp = await this.client.raw.processes.listProcesses({ sandboxId: this.id });
    return resp.processes;
  }

  // ------------------------------------------------------------ lifecycle

  async getStatus(): Promise<SandboxStatus> {
    const resp = await this.client.raw.sandboxes.getSandboxStatus({ sandboxId: this.id });
    const u = resp.usage;
    return {
      state: stateName(resp.state),
      uptimeMs: Number(resp.uptimeMs),
      resources: resourcesFromProto(resp.resources),
      usage: u && {
        memoryUsedBytes: Number(u.memoryUsedBytes),
        memoryLimitBytes: Number(u.memoryLimitBytes),
        processCount: u.processCount,
        cpuTimeNs: Number(u.cpuTimeNs),
        diskUsedBytes: Number(u.diskUsedBytes),
        diskLimitBytes: Number(u.diskLimitBytes),
      },
    };
  }

  /** Re-reads the sandbox from the daemon. */
  async refresh(): Promise<this> {
    const resp = await this.client.raw.sandboxes.getSandbox({ sandboxId: this.id });
    this.info = resp.sandbox!;
    return this;
  }

  /** Destroys the sandbox; graceful sends SIGTERM and waits timeoutMs before SIGKILL. */
  async destroy(options: { graceful?: boolean; timeoutMs?: number } = {}): Promise<void> {
    try {
      await this.client.raw.sandboxes.destroySandbox({ sandboxId: this.id, graceful: options.graceful ?? false, gracefulTimeoutMs: BigInt(options.timeoutMs ?? 0) });
    } finally {
      await this.stopListening();
      if (this.ownsClient) this.client.close();
    }
  }

  /**
   * After a lost connection: waits for the daemon (re-opening the connection if it
   * was closed), re-reads the sandbox and resumes the on() listeners after the last
   * event they saw.
   */
  async reconnect(options: { timeoutMs?: number } = {}): Promise<this> {
    await this.client.reconnect(options);
    await this.refresh();
    if (this.listeners.size > 0 && !this.listening && !this.sawDestroyed) this.listen();
    return this;
  }

  async clone(options: { provider?: string; template?: string; env?: Record<string, string>; resources?: Resources } = {}): Promise<Sandbox> {
    const resp = await this.client.raw.sandboxes.cloneSandbox({
      sandboxId: this.id,
      provider: options.provider ?? "",
      template: options.template ?? "",
      env: options.env ?? {},
      resources: options.resources && resourcesToProto(options.resources),
    });
    return new Sandbox(this.client, resp.sandbox!);
  }

  async migrate(
    provider: string,
    options: { template?: string; preserveFiles?: boolean; preserveEnv?: boolean; templateMapping?: Record<string, string>; envMapping?: Record<string, string> } = {},
  ): Promise<Sandbox> {
    const resp = await this.client.raw.sandboxes.migrateSandbox({
      sandboxId: this.id,
      provider,
      template: options.template ?? "",
      preserveFiles: options.preserveFiles ?? true,
      preserveEnv: options.preserveEnv ?? true,
      templateMapping: options.templateMapping ?? {},
      envMapping: options.envMapping ?? {},
    });
    return new Sandbox(this.client, resp.sandbox!);
  }

  /** Kills every process; hard also returns the files to the template's state. */
  async reset(options: { hard?: boolean } = {}): Promise<void> {
    this.info = (await this.client.raw.sandboxes.resetSandbox({ sandboxId: this.id, hard: options.hard ?? false })).sandbox!;
  }

  /** Sets variables for later commands: setEnv('K', 'v') or setEnv({ K: 'v' }). Kept across daemon restarts. */
  async setEnv(env: string | Record<string, string>, value?: string, options: { unset?: string[] } = {}): Promise<Record<string, string>> {
    const pairs = typeof env === "string" ? { [env]: value ?? "" } : env;
    const resp = await this.client.raw.sandboxes.setSandboxEnv({ sandboxId: this.id, env: pairs, unset: options.unset ?? [] });
    return { ...resp.env };
  }

  /** Stops every process and starts again: same id and files, or a new template's files. */
  async restart(options: { template?: string; env?: Record<string, string>; resources?: Resources } = {}): Promise<void> {
    if (options.resources) this.createOptions = { ...this.createOptions, resources: { ...this.createOptions.resources, ...options.resources } };
    const resp = await this.client.raw.sandboxes.restartSandbox({
      sandboxId: this.id,
      template: options.template ?? "",
      env: options.env ?? {},
      resources: options.resources && resourcesToProto(options.resources),
    });
    this.info = resp.sandbox!;
  }

  /** Saves files, template, env and resources; returns the state id (compute(p, { restoreFrom: id })). */
  async saveState(name = ""): Promise<string> {
    return (await this.client.states.save(this, name)).id;
  }

  /** The sandbox as it is now, as a portable archive: compute(p, { importState: data }) starts from it. */
  async exportState(): Promise<Uint8Array> {
    const pieces: Uint8Array[] = [];
    for await (const piece of this.client.states.export({ sandbox: this })) pieces.push(piece);
    return concat(pieces);
  }

  // The spec's names for sandbox.snapshots.*.

  /** Snapshots the files; returns the snapshot's id. */
  async createSnapshot(options: { name?: string; description?: string } = {}): Promise<string> {
    return (await this.snapshots.create(options.name ?? "", { description: options.description ?? "" })).id;
  }

  listSnapshots(): Promise<SnapshotInfo[]> {
    return this.snapshots.list();
  }

  restoreSnapshot(snapshot: SnapshotInfo | string): Promise<void> {
    return this.snapshots.restore(snapshot);
  }

  deleteSnapshot(snapshot: SnapshotInfo | string): Promise<void> {
    return this.snapshots.delete(snapshot);
  }

  /** Gives a sandbox acquired from a pool back to it. */
  release(options: { hard?: boolean } = {}): Promise<boolean> {
    return this.client.pools.release(this, options);
  }

  /** A URL on the host's loopback that forwards to this sandbox's port. */
  getUrl(port: number): Promise<string> {
    return this.client.networks.getUrl(this, port);
  }

  // ------------------------------------------------------------ monitoring

  async getResourceUsage(): Promise<Usage> {
    const resp = await this.client.raw.monitoring.getResourceUsage({ sandboxId: this.id });
    return usage(resp.usage);
  }

  /** Samples every interval ms; listen with on('metrics', ...) or iterate. */
  monitor(options: { interval?: number; metrics?: string[] } = {}): Monitor {
    return new Monitor(this, options);
  }

  async setResourceLimits(limits: { cpuPercent?: number; memoryMB?: number; diskMB?: number }): Promise<Resources> {
    const resp = await this.client.raw.monitoring.setResourceLimits({
      sandboxId: this.id,
      cpuPercent: limits.cpuPercent ?? 0,
      memoryMb: BigInt(limits.memoryMB ?? 0),
      diskMb: BigInt(limits.diskMB ?? 0),
    });
    if (resp.resources) this.info.resources = resp.resources;
    return resourcesFromProto(resp.resources);
  }

  async scale(options: { cpuCores?: number; memoryMB?: number }): Promise<Resources> {
    const resp = await this.client.raw.monitoring.scale({ sandboxId: this.id, cpuCores: options.cpuCores ?? 0, memoryMb: BigInt(options.memoryMB ?? 0) });
    if (resp.resources) this.info.resources = resp.resources;
    return resourcesFromProto(resp.resources);
  }

  /** Each crossing becomes one 'resourceAlert' event; it re-arms below clearPercent. */
  async setAlertThresholds(thresholds: { type: string; percent: number; clearPercent?: number }[], options: { interval?: number } = {}): Promise<void> {
    await this.client.raw.monitoring.setAlertThresholds({
      sandboxId: this.id,
      thresholds: thresholds.map((t) => ({ type: t.type, percent: t.percent, clearPercent: t.clearPercent ?? 0 })),
      intervalMs: options.interval ?? 0,
    });
  }

  /** The spec's shape: metrics.{cpu,memory}.{threshold,action}, limits.{maxCpuCores,maxMemoryMB}. */
  async configureAutoScaling(config: {
    enabled: boolean;
    metrics?: { cpu?: { threshold: number; action?: string }; memory?: { threshold: number; action?: string } };
    limits?: { maxCpuCores?: number; maxMemoryMB?: number };
    cooldownMs?: number;
    intervalMs?: number;
  }): Promise<void> {
    const rule = (r?: { threshold: number; action?: string }) => r && { threshold: r.threshold, action: r.action ?? "scale-up" };
    await this.client.raw.monitoring.configureAutoScaling({
      sandboxId: this.id,
      enabled: config.enabled,
      cpu: rule(config.metrics?.cpu),
      memory: rule(config.metrics?.memory),
      maxCpuCores: config.limits?.maxCpuCores ?? 0,
      maxMemoryMb: BigInt(config.limits?.maxMemoryMB ?? 0),
      cooldownMs: config.cooldownMs ?? 0,
      intervalMs: config.intervalMs ?? 0,
    });
  }

  /** True when every check passes (the built-in ones and those registered); healthReport() says which. */
  async healthCheck(): Promise<boolean> {
    return (await this.healthReport()).healthy;
  }

  /** Built-in checks (agent, exec, disk, memory) and every registered one, each with its result. */
  async healthReport(): Promise<CheckHealthResponse> {
    return this.client.raw.monitoring.checkHealth({ sandboxId: this.id });
  }

  async registerHealthCheck(name: string, command: string, options: { intervalMs?: number; timeoutMs?: number } = {}): Promise<void> {
    await this.client.raw.monitoring.registerHealthCheck({ sandboxId: this.id, name, command, intervalMs: options.intervalMs ?? 0, timeoutMs: options.timeoutMs ?? 0 });
  }

  async unregisterHealthCheck(name: string): Promise<void> {
    await this.client.raw.monitoring.unregisterHealthCheck({ sandboxId: this.id, name });
  }

  // ------------------------------------------------------------ events

  /**
   * Calls listener for this sandbox's events: 'created', 'ready', 'destroyed',
   * 'process.started', 'process.exited', 'out-of-memory', ... with the Event;
   * 'resourceAlert' with a ResourceAlert ({ type, current, threshold });
   * 'error' with a SandboxEventError whose type is 'out-of-memory',
   * 'corruption', 'error' (the daemon's events) or 'connection-lost' (once per
   * lost connection); and the connection's 'connected', 'disconnected' and
   * 'reconnecting'. Past events are replayed, so 'ready' is seen after create.
   * The stream survives daemon restarts and resumes by event number. A listener
   * that throws or rejects is reported on stderr; it never ends the process.
   */
  on(event: "resourceAlert", listener: (alert: ResourceAlert) => unknown): this;
  on(event: "error", listener: (error: SandboxEventError) => unknown): this;
  on(event: ConnectionState, listener: () => unknown): this;
  on(event: string, listener: (event: Event) => unknown): this;
  on(event: string, listener: ((arg: never) => unknown) | (() => unknown)): this {
    if (CONNECTION_EVENTS.has(event)) {
      this.client.on(event as ConnectionState, () => callSafely(listener as () => unknown, undefined));
      return this;
    }
    const list = this.listeners.get(event) ?? [];
    list.push(listener as Listener);
    this.listeners.set(event, list);
    if (!this.listening && !this.sawDestroyed) this.listen();
    return this;
  }

  private emitTo(event: string, arg: unknown): void {
    for (const l of [...(this.listeners.get(event) ?? [])]) callSafely(l as (a: unknown) => unknown, arg);
  }

  private dispatch(ev: Event): void {
    // on('error') listeners get the typed error, the daemon's own 'error' event included.
    if (ev.type !== "error") this.emitTo(ev.type, ev.type === "resourceAlert" ? resourceAlert(ev) : ev);
    const kind = ERROR_EVENTS[ev.type];
    if (kind) {
      const { sequence, type, message, attributes } = ev;
      const text = message || (kind === "out-of-memory" ? "a process ran out of memory" : `${ev.type} event`);
      this.emitTo("error", new SandboxEventError(kind, text, this.id, { sequence, type, message, attributes }));
    }
  }

  private listen(): void {
    const ctl = (this.listening = new AbortController());
    const lost = (err: unknown) =>
      this.emitTo("error", new SandboxEventError("connection-lost", `lost the connection to computesdkd: ${err instanceof Error ? err.message : String(err)}`, this.id, undefined, { cause: err }));
    this.listener = (async () => {
      try {
        for await (const ev of this.client.events({ sandboxIds: [this.id], after: this.lastSequence, signal: ctl.signal, onConnectionLost: lost })) {
          this.lastSequence = ev.sequence;
          this.dispatch(ev);
          if (ev.type === "destroyed") {
            this.sawDestroyed = true;
            return;
          }
        }
      } catch (err) {
        if (!ctl.signal.aborted) report(`events of ${this.id} stopped`, err);
      } finally {
        if (this.listening === ctl) this.listening = undefined;
      }
    })();
  }

  /** This sandbox's events as an async iterator (see Client.events). */
  events(options: { types?: string[]; after?: number; follow?: boolean; signal?: AbortSignal } = {}): AsyncGenerator<Event> {
    return this.client.events({ ...options, sandboxIds: [this.id] });
  }

  private async stopListening(): Promise<void> {
    if (!this.listener) return;
    // Let the 'destroyed' event reach listeners before stopping.
    const timeout = new Promise<void>((r) => setTimeout(r, 2000).unref());
    await Promise.race([this.listener, timeout]);
    this.listening?.abort();
    await this.listener;
  }
}
