// One sandbox: lifecycle, commands, processes, files, monitoring and events.
import type { Sandbox as SandboxMessage } from "./gen/computesdk/api/sandbox/v1/sandbox_pb.js";
import type { Process as ProcessMessage } from "./gen/computesdk/api/process/v1/process_pb.js";
import type { CheckHealthResponse } from "./gen/computesdk/api/monitoring/v1/monitoring_pb.js";
import type { SandboxEventError } from "./errors.js";
import { Snapshots, type SnapshotInfo } from "./state.js";
import type { Client } from "./client.js";
import type { ConnectionState } from "./connection.js";
import type { CreateOptions } from "./create.js";
import { concat, resourcesFromProto, resourcesToProto, stateName, type Resources } from "./convert.js";
import { ExecStream, Process, checked, commandToProto, resultFromParts, type CommandLine, type ExecOptions, type ExecResult } from "./exec.js";
import { Files } from "./files.js";
import { Monitor, usage, type ResourceAlert, type SandboxStatus, type Usage } from "./monitoring.js";
import { SandboxListeners, type Event } from "./listeners.js";

/** The capability RunCommand needs: output past what fits inline is read on with attach. */
const EXEC_RESUME = "exec.resume";

/** The create options as given (connection options left out), with resources filled from the sandbox's. */
export type SandboxConfig = Omit<CreateOptions, "resources"> & { resources: Resources };

/** A handle to one sandbox. */
export class Sandbox {
  /** destroy() closes the connection too (compute() shares one connection and leaves this false). */
  ownsClient = false;
  readonly files: Files;
  readonly snapshots: Snapshots;
  /** The create options as given, when this handle came from create (see config). */
  createOptions: CreateOptions = {};
  private readonly listeners: SandboxListeners;

  constructor(
    readonly client: Client,
    public info: SandboxMessage,
  ) {
    this.files = new Files(this);
    this.snapshots = new Snapshots(this);
    this.listeners = new SandboxListeners(this);
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
      await this.listeners.stop();
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
    this.listeners.resume();
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
    this.listeners.add(event, listener);
    return this;
  }

  /** This sandbox's events as an async iterator (see Client.events). */
  events(options: { types?: string[]; after?: number; follow?: boolean; signal?: AbortSignal } = {}): AsyncGenerator<Event> {
    return this.client.events({ ...options, sandboxIds: [this.id] });
  }
}
