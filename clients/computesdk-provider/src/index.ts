// computesdkd-provider: ComputeSDK's provider interface (defineProvider) on computesdkd.
//
//     import { compute } from 'computesdk'
//     import { computesdkd } from 'computesdkd-provider'
//     compute.setConfig({ provider: computesdkd({ socket: '/run/computesdk/computesdkd.sock' }) })
//     const sandbox = await compute.sandbox.create()
import { createHash } from "node:crypto";

import { defineProvider, type CreateSandboxOptions, type RunCommandOptions } from "@computesdk/provider";
import { Client, NotFoundError, Sandbox, type ConnectOptions, type ExecOptions, type StateInfo, type TemplateDefinition, type TemplateInfo } from "computesdkd-client";

import { commandResult, createOptions, fileEntry, missingCwd, sandboxInfo, type DaemonCommandResult } from "./mapping.js";

export { TIMEOUT_EXIT_CODE, MISSING_CWD_EXIT_CODE, TYPES_KEY, decodeMetadata, encodeMetadata } from "./mapping.js";
export type { DaemonCommandResult, DaemonSandboxInfo } from "./mapping.js";

/** Where the daemon is (computesdkd-client's ConnectOptions: socket, or address with token and CA), and what create asks of it. */
export interface ComputesdkdConfig extends ConnectOptions {
  /** The daemon's provider ("local", "docker", "e2b", ...); "" or unset: the daemon's default. */
  provider?: string;
  /** Template when create names none (no templateId, runtime or image): unset is the daemon's "base". */
  template?: string;
  /** Whether create may take a warm pooled sandbox; unset follows the daemon. */
  usePool?: boolean;
  /**
   * Rewrites getUrl's answer, e.g. onto a TLS proxy in front of the daemon's
   * --expose-host. Without it getUrl gives the daemon's plain-HTTP URL, and
   * refuses protocol "https" or "wss", which that URL cannot serve.
   */
  publicUrl?: (url: string, protocol: string) => string;
}

/** ComputeSDK's template.create options, with the definition ours builds from. */
export interface ComputesdkdTemplateOptions extends TemplateDefinition {
  name: string;
  description?: string;
  metadata?: Record<string, string>;
}

/** ComputeSDK's snapshot: here a saved state, which create({ snapshotId }) starts from. */
export interface ComputesdkdSnapshot {
  id: string;
  provider: "computesdkd";
  createdAt: Date;
  metadata: { name: string; sandboxId: string; template: string; backend: string; sizeBytes: number };
}

/** Each Client this package made, to its Connection (getUrl and getInfo see only the sandbox). */
const connections = new WeakMap<Client, Connection>();

/** One connection per provider instance, made at the first call and shared by all. */
class Connection {
  private client: Promise<Client> | undefined;
  /** URLs create exposed for options.ports, by sandbox. */
  readonly urls = new Map<string, Record<number, string>>();

  constructor(readonly config: ComputesdkdConfig) {}

  get(): Promise<Client> {
    this.client ??= Client.connect(this.config).then(
      (c) => (connections.set(c, this), c),
      (err: unknown) => {
        this.client = undefined; // the next call tries again
        throw err;
      },
    );
    return this.client;
  }

  async close(): Promise<void> {
    const c = this.client;
    this.client = undefined;
    if (c) (await c.catch(() => undefined))?.close();
  }
}

const swallowNotFound = (err: unknown) => {
  if (!(err instanceof NotFoundError)) throw err;
};

/** ComputeSDK runs a command string through a shell; so does exec with a string. */
async function run(sb: Sandbox, command: string, options: RunCommandOptions = {}): Promise<DaemonCommandResult> {
  const startedAt = Date.now();
  const exec: ExecOptions = { check: false };
  if (options.cwd) exec.cwd = options.cwd;
  if (options.env) exec.env = options.env;
  if (options.timeout) exec.timeoutMs = options.timeout;
  if (options.onStdout) exec.onStdout = options.onStdout;
  if (options.onStderr) exec.onStderr = options.onStderr;
  try {
    if (options.background) {
      // A background command is a daemon process that outlives the call: its id re-attaches.
      const proc = await sb.startProcess(command, exec);
      return { stdout: "", stderr: "", exitCode: 0, durationMs: Date.now() - startedAt, timedOut: false, signal: 0, oomKilled: false, processId: proc.id };
    }
    // exec() streams when onStdout/onStderr are set, else one unary call.
    return commandResult(await sb.exec(command, exec));
  } catch (err) {
    // The daemon refuses a missing cwd (NOT_FOUND); ComputeSDK's providers answer with a failed `cd`.
    if (options.cwd && err instanceof NotFoundError && !(await sb.files.exists(options.cwd))) return missingCwd(options.cwd, startedAt);
    throw err;
  }
}

/** The template create runs: templateId, else runtime ("node", "python"), else an image built into one, else the config's. */
async function templateFor(client: Client, conn: Connection, o: CreateSandboxOptions): Promise<string | undefined> {
  if (o.templateId) return o.templateId;
  if (o.runtime) return o.runtime;
  if (o.image) {
    // A repeat build of one definition is the daemon's cache hit.
    const name = "image-" + createHash("sha256").update(o.image).digest("hex").slice(0, 16);
    await client.templates.build(name, { baseImage: o.image }, { provider: conn.config.provider ?? "" });
    return name;
  }
  return conn.config.template;
}

const snapshotOf = (s: StateInfo): ComputesdkdSnapshot => ({
  id: s.id,
  provider: "computesdkd",
  createdAt: s.createdAt ?? new Date(0),
  metadata: { name: s.name, sandboxId: s.sandboxId, template: s.template, backend: s.provider, sizeBytes: s.sizeBytes },
});

const factory = defineProvider<Sandbox, Connection, TemplateInfo, ComputesdkdSnapshot>({
  name: "computesdkd",
  methods: {
    sandbox: {
      create: async (conn, options = {}) => {
        const client = await conn.get();
        const template = await templateFor(client, conn, options);
        const sb = await client.create(conn.config.provider ?? "", createOptions(options, template, conn.config.usePool));
        const ports: unknown = options.ports;
        if (Array.isArray(ports) && ports.length) {
          try {
            const urls: Record<number, string> = {};
            for (const port of ports) urls[Number(port)] = await sb.getUrl(Number(port));
            conn.urls.set(sb.id, urls);
          } catch (err) {
            await sb.destroy().catch(() => undefined);
            throw err;
          }
        }
        return { sandbox: sb, sandboxId: sb.id };
      },
      getById: async (conn, sandboxId) => {
        try {
          const sb = await (await conn.get()).get(sandboxId);
          return { sandbox: sb, sandboxId: sb.id };
        } catch (err) {
          swallowNotFound(err);
          return null;
        }
      },
      list: async (conn) => (await (await conn.get()).list()).map((sb) => ({ sandbox: sb, sandboxId: sb.id })),
      // Idempotent, as ComputeSDK's providers make it: a sandbox already gone is destroyed.
      destroy: async (conn, sandboxId) => {
        conn.urls.delete(sandboxId);
        await (await conn.get()).raw.sandboxes.destroySandbox({ sandboxId }).catch(swallowNotFound);
      },
      runCommand: (sb, command, options) => run(sb, command, options),
      // onStdout/onStderr over our own stream, as it is produced: no port, no bridge inside the sandbox.
      streamCommand: (sb, command, options) => run(sb, command, options),
      getInfo: async (sb) => {
        await sb.refresh();
        const conn = connections.get(sb.client);
        return sandboxInfo(sb, conn?.urls.get(sb.id) ?? {});
      },
      getUrl: async (sb, { port, protocol }) => {
        const url = await sb.getUrl(port);
        const scheme = (protocol ?? "http").replace(/:$/, "").toLowerCase();
        const rewrite = connections.get(sb.client)?.config.publicUrl;
        if (rewrite) return rewrite(url, scheme);
        if (scheme === "http") return url;
        if (scheme === "ws") return url.replace(/^http:/, "ws:");
        throw new Error(`computesdkd forwards port ${port} over plain HTTP (${url}); for ${scheme} put a TLS proxy in front and give computesdkd({ publicUrl }) to name it`);
      },
      getInstance: (sb) => sb,
      filesystem: {
        readFile: (sb, path) => sb.files.readText(path),
        writeFile: async (sb, path, content) => {
          await sb.files.write(path, content);
        },
        mkdir: async (sb, path) => {
          await sb.files.mkdir(path, { parents: true });
        },
        readdir: async (sb, path) => (await sb.files.list(path)).map(fileEntry),
        exists: (sb, path) => sb.files.exists(path),
        // rm -rf: a directory goes with its contents, a missing path is no error.
        remove: async (sb, path) => {
          await sb.files.remove(path, { recursive: true }).catch(swallowNotFound);
        },
      },
    },
    template: {
      create: async (conn, options) => {
        const o = options as ComputesdkdTemplateOptions;
        const definition: TemplateDefinition = { description: o.description ?? "" };
        if (o.baseImage) definition.baseImage = o.baseImage;
        if (o.packages) definition.packages = o.packages;
        if (o.env) definition.env = o.env;
        if (o.setup) definition.setup = o.setup;
        return (await (await conn.get()).templates.build(o.name, definition, { provider: conn.config.provider ?? "" })).template;
      },
      list: async (conn, options) => {
        const all = await (await conn.get()).templates.list({ provider: conn.config.provider ?? "" });
        return options?.limit ? all.slice(0, options.limit) : all;
      },
      delete: async (conn, templateId) => {
        await (await conn.get()).templates.delete(templateId, { provider: conn.config.provider ?? "" }).catch(swallowNotFound);
      },
    },
    snapshot: {
      // A saved state: files, template, env and resources; create({ snapshotId }) starts a new sandbox from it.
      create: async (conn, sandboxId, options) => snapshotOf(await (await conn.get()).states.save(sandboxId, options?.name ?? "")),
      list: async (conn, options) => {
        let all = (await (await conn.get()).states.list()).map(snapshotOf);
        if (options?.sandboxId) all = all.filter((s) => s.metadata.sandboxId === options.sandboxId);
        return options?.limit ? all.slice(0, options.limit) : all;
      },
      delete: async (conn, snapshotId) => {
        await (await conn.get()).states.delete(snapshotId).catch(swallowNotFound);
      },
    },
  },
});

export type ComputesdkdProvider = ReturnType<typeof factory> & {
  /** The shared connection (computesdkd-client's Client), for what ComputeSDK has no call for. */
  client(): Promise<Client>;
  /** Closes the connection; the next call opens a new one. */
  close(): Promise<void>;
};

/** A ComputeSDK provider on computesdkd: compute.setConfig({ provider: computesdkd({ socket }) }). */
export function computesdkd(config: ComputesdkdConfig = {}): ComputesdkdProvider {
  const conn = new Connection(config);
  return Object.assign(factory(conn), { client: () => conn.get(), close: () => conn.close() });
}
