// The connection to computesdkd, and the calls that are not about one sandbox.
import { createClient, type Client as RpcClient, type Interceptor, type Transport } from "@connectrpc/connect";
import type { Http2SessionManager } from "@connectrpc/connect-node";

import { SandboxService, State, type Sandbox as SandboxMessage } from "./gen/computesdk/api/sandbox/v1/sandbox_pb.js";
import { ProcessService } from "./gen/computesdk/api/process/v1/process_pb.js";
import { FilesystemService } from "./gen/computesdk/api/filesystem/v1/filesystem_pb.js";
import { EventService } from "./gen/computesdk/api/events/v1/events_pb.js";
import { ProviderService, type Provider } from "./gen/computesdk/api/provider/v1/provider_pb.js";
import { MonitoringService } from "./gen/computesdk/api/monitoring/v1/monitoring_pb.js";
import { PoolService } from "./gen/computesdk/api/pool/v1/pool_pb.js";
import { GroupService } from "./gen/computesdk/api/group/v1/group_pb.js";
import { NetworkService } from "./gen/computesdk/api/network/v1/network_pb.js";
import { MessagingService } from "./gen/computesdk/api/messaging/v1/messaging_pb.js";
import { SnapshotService } from "./gen/computesdk/api/snapshot/v1/snapshot_pb.js";
import { VolumeService } from "./gen/computesdk/api/volume/v1/volume_pb.js";
import { States, Volumes } from "./state.js";
import { TemplateService } from "./gen/computesdk/api/template/v1/template_pb.js";
import { AdminService } from "./gen/computesdk/api/admin/v1/admin_pb.js";
import { Templates } from "./templates.js";
import { Quotas, Tokens } from "./admin.js";
import { Channels, Groups, Networks, Pools } from "./fleet.js";
import { ComputeSDKError, TemplateBuildError, typedError } from "./errors.js";
import { Sandbox } from "./sandbox.js";
import { CONNECT_KEYS, bearer, dial, invalid, isConnectionLoss, resolveEndpoint, sleep, typedErrors, unreachable, type ConnectionState, type ConnectOptions, type Endpoint } from "./connection.js";
import { createOptionsOnly, createRequest, type CreateOptions, type TemplateSpec } from "./create.js";
import { eventFromProto, type Event, type EventsOptions } from "./listeners.js";
import { probeSocket } from "./socketprobe.js";
import { linked } from "./background.js";

/** The generated service clients, for calls the idiomatic layer does not wrap; they fail with typed errors too. */
export interface Raw {
  sandboxes: RpcClient<typeof SandboxService>;
  processes: RpcClient<typeof ProcessService>;
  files: RpcClient<typeof FilesystemService>;
  events: RpcClient<typeof EventService>;
  providers: RpcClient<typeof ProviderService>;
  monitoring: RpcClient<typeof MonitoringService>;
  pools: RpcClient<typeof PoolService>;
  groups: RpcClient<typeof GroupService>;
  networks: RpcClient<typeof NetworkService>;
  messaging: RpcClient<typeof MessagingService>;
  snapshots: RpcClient<typeof SnapshotService>;
  volumes: RpcClient<typeof VolumeService>;
  templates: RpcClient<typeof TemplateService>;
  admin: RpcClient<typeof AdminService>;
}

export interface ListOptions {
  metadata?: Record<string, string>;
  states?: string[];
  provider?: string;
}

/** One connection to the daemon. Share it; close() it when done. */
export class Client {
  readonly raw: Raw;
  readonly pools: Pools;
  readonly groups: Groups;
  readonly networks: Networks;
  readonly channels: Channels;
  readonly states: States;
  readonly volumes: Volumes;
  readonly templates: Templates;
  /** Bearer tokens for the TCP listener (AdminService). */
  readonly tokens: Tokens;
  /** Per-tenant quotas (AdminService). */
  readonly quotas: Quotas;
  /** Each provider's capabilities, as ListProviders said. */
  private readonly known = new Map<string, ReadonlySet<string>>();
  /** The URL dialled: http://localhost over the Unix socket, else the TCP target. */
  readonly target: string;
  private session!: Http2SessionManager;
  private inner!: Transport;
  private readonly listeners = new Map<ConnectionState, Set<() => void>>();
  private closed = false;

  /** Where to dial, for reconnect(): never the token, which only the interceptor's closure holds. */
  private readonly endpoint: Omit<Endpoint, "token">;
  private readonly interceptors: Interceptor[];

  private constructor(endpoint: Endpoint) {
    const { token, ...where } = endpoint;
    this.endpoint = where;
    // The token rides on every call, unary and streaming; it is kept nowhere else.
    this.interceptors = token ? [bearer(token)] : [];
    this.target = endpoint.baseUrl;
    this.open();
    // Through this.inner, so that reconnect() can open a new connection under the same raw clients.
    const transport = typedErrors({ unary: (...args) => this.inner.unary(...args), stream: (...args) => this.inner.stream(...args) });
    this.raw = {
      sandboxes: createClient(SandboxService, transport),
      processes: createClient(ProcessService, transport),
      files: createClient(FilesystemService, transport),
      events: createClient(EventService, transport),
      providers: createClient(ProviderService, transport),
      monitoring: createClient(MonitoringService, transport),
      pools: createClient(PoolService, transport),
      groups: createClient(GroupService, transport),
      networks: createClient(NetworkService, transport),
      messaging: createClient(MessagingService, transport),
      snapshots: createClient(SnapshotService, transport),
      volumes: createClient(VolumeService, transport),
      templates: createClient(TemplateService, transport),
      admin: createClient(AdminService, transport),
    };
    this.tokens = new Tokens(this);
    this.quotas = new Quotas(this);
    this.states = new States(this);
    this.volumes = new Volumes(this);
    this.templates = new Templates(this);
    this.pools = new Pools(this);
    this.groups = new Groups(this);
    this.networks = new Networks(this);
    this.channels = new Channels(this);
  }

  /** Connects and waits until the daemon answers. */
  static async connect(options: ConnectOptions = {}): Promise<Client> {
    const endpoint = resolveEndpoint(options);
    // Fail fast, saying why: no socket, a stale one, or one this user may not use.
    if (endpoint.socket) await probeSocket(endpoint.socket, !options.socket && !process.env.COMPUTESDK_SOCKET);
    const client = new Client(endpoint);
    // A cheap call proves the daemon is there (and takes the token) and tells what each provider can do.
    try {
      client.remember((await client.raw.providers.listProviders({}, { timeoutMs: options.timeoutMs ?? 10_000 })).providers);
    } catch (err) {
      client.close();
      throw unreachable(err, endpoint);
    }
    return client;
  }

  private open(): void {
    ({ session: this.session, transport: this.inner } = dial(this.endpoint, this.interceptors));
    this.closed = false;
  }

  /** Whether close() was called (and no reconnect() since). */
  get isClosed(): boolean {
    return this.closed;
  }

  /** Closes the connection; calls in flight fail. reconnect() opens it again. */
  close(): void {
    this.closed = true;
    this.session.abort();
  }

  /**
   * Waits until the daemon answers (up to timeoutMs, default 30 s), opening a
   * new connection if this one was closed. Calls need not wait for it: they
   * dial again by themselves.
   */
  async reconnect(options: { timeoutMs?: number } = {}): Promise<void> {
    if (this.closed) this.open();
    const deadline = Date.now() + (options.timeoutMs ?? 30_000);
    for (let backoff = 50; ; backoff = Math.min(backoff * 2, 1000)) {
      try {
        this.remember((await this.raw.providers.listProviders({}, { timeoutMs: Math.max(1, Math.min(5_000, deadline - Date.now())) })).providers);
        return;
      } catch (err) {
        if (!(isConnectionLoss(err) || (err instanceof ComputeSDKError && err.code === "DEADLINE_EXCEEDED")) || Date.now() + backoff > deadline) throw err;
      }
      await sleep(backoff);
    }
  }

  /** Connection events: 'connected', 'disconnected', 'reconnecting'. */
  on(event: ConnectionState, listener: () => void): this {
    let set = this.listeners.get(event);
    if (!set) this.listeners.set(event, (set = new Set()));
    set.add(listener);
    return this;
  }

  off(event: ConnectionState, listener: () => void): this {
    this.listeners.get(event)?.delete(listener);
    return this;
  }

  private emit(event: ConnectionState): void {
    for (const l of [...(this.listeners.get(event) ?? [])]) l();
  }

  /**
   * Creates a sandbox on provider ("" = the daemon's default) once it is ready.
   * An inline template is built first (TemplateBuildError with the log's tail when
   * that fails); importState imports the archive, whose sandbox this is.
   */
  async create(provider = "", options: CreateOptions = {}): Promise<Sandbox> {
    const given = createOptionsOnly(options);
    let sandbox: Sandbox;
    if (options.importState) {
      sandbox = await this.states.import(options.importState, { provider, metadata: options.metadata ?? {} });
      if (options.env && Object.keys(options.env).length) await sandbox.setEnv(options.env);
    } else {
      const template = typeof options.template === "object" ? await this.buildInline(provider, options.template) : (options.template ?? "");
      const resp = await this.raw.sandboxes.createSandbox(createRequest(provider, { ...options, template }));
      sandbox = new Sandbox(this, resp.sandbox as SandboxMessage);
    }
    sandbox.createOptions = given;
    return sandbox;
  }

  private async buildInline(provider: string, spec: TemplateSpec): Promise<string> {
    const { name, ...definition } = spec;
    const log: string[] = [];
    try {
      await this.templates.build(name, definition, { provider, onEvent: (ev) => ev.type === "log" && log.push(ev.line) });
    } catch (err) {
      if (!(err instanceof TemplateBuildError) || log.length === 0) throw err;
      const tail = log.slice(-20).join("\n");
      throw new TemplateBuildError(err.message.includes(tail) ? err.message : `${err.message}\n${tail}`, err.code, err.reason, err.metadata, { cause: err });
    }
    return name;
  }

  /**
   * Creates many sandboxes in one call. One result per item, in order: a failed
   * item is its typed error and does not fail the others.
   */
  async batchCreate(items: (CreateOptions & { provider?: string })[]): Promise<(Sandbox | ComputeSDKError)[]> {
    if (items.some((i) => typeof i.template === "object" || i.importState)) throw invalid("batchCreate takes template names only: build inline templates first");
    const resp = await this.raw.sandboxes.batchCreateSandboxes({ requests: items.map((i) => createRequest(i.provider ?? "", { ...i, template: i.template as string | undefined })) });
    return resp.results.map((r) =>
      r.result.case === "sandbox" ? new Sandbox(this, r.result.value) : typedError(r.result.value?.code ?? "UNKNOWN", r.result.value?.reason ?? "", r.result.value?.message ?? ""),
    );
  }

  /** Every sandbox that is running now. */
  listActiveSandboxes(): Promise<Sandbox[]> {
    return this.list({ states: ["running"] });
  }

  async get(sandboxId: string): Promise<Sandbox> {
    const resp = await this.raw.sandboxes.getSandbox({ sandboxId });
    return new Sandbox(this, resp.sandbox as SandboxMessage);
  }

  /** Every matching sandbox, following pages. */
  async list(options: ListOptions = {}): Promise<Sandbox[]> {
    const out: Sandbox[] = [];
    let pageToken = "";
    const states = (options.states ?? []).map((s) => {
      // The generated enum drops the STATE_ prefix: State.RUNNING.
      const v = State[s.toUpperCase().replace(/^STATE_/, "") as keyof typeof State];
      if (v === undefined) throw new ComputeSDKError(`unknown state ${s}`, "INVALID_ARGUMENT", "INVALID_ARGUMENT");
      return v;
    });
    for (;;) {
      const resp = await this.raw.sandboxes.listSandboxes({
        pageSize: 100,
        pageToken,
        metadata: options.metadata ?? {},
        states,
        provider: options.provider ?? "",
      });
      out.push(...resp.sandboxes.map((s) => new Sandbox(this, s)));
      pageToken = resp.nextPageToken;
      if (!pageToken) return out;
    }
  }

  async providers(): Promise<Provider[]> {
    const resp = await this.raw.providers.listProviders({});
    this.remember(resp.providers);
    return resp.providers;
  }

  private remember(providers: Provider[]): void {
    for (const p of providers) this.known.set(p.name, new Set(p.capabilities));
  }

  /**
   * The provider's features ("exec.resume", "snapshots", ...), from ListProviders.
   * connect() learnt the providers the daemon had then; one it did not list is asked about once.
   */
  async capabilities(provider: string): Promise<ReadonlySet<string>> {
    if (!this.known.has(provider)) {
      await this.providers();
      if (!this.known.has(provider)) this.known.set(provider, new Set());
    }
    return this.known.get(provider)!;
  }

  /**
   * Lifecycle events. Survives daemon restarts: it reconnects by itself and
   * resumes after the last sequence it yielded, so nothing is lost or repeated.
   */
  async *events(options: EventsOptions = {}): AsyncGenerator<Event> {
    let last = options.after ?? 0;
    let backoff = 50;
    let lost = false;
    const follow = options.follow ?? true;
    for (;;) {
      // Connect's streams ignore return(): leaving the loop early must cancel the call, or it holds the process.
      const call = linked(options.signal);
      try {
        const stream = this.raw.events.subscribeEvents(
          {
            sandboxIds: options.sandboxIds ?? [],
            types: options.types ?? [],
            afterSequence: BigInt(last),
            noFollow: !follow,
          },
          { signal: call.signal },
        );
        for await (const resp of stream) {
          if (!resp.event) continue;
          if (lost) {
            lost = false;
            this.emit("connected");
          }
          backoff = 50;
          const ev = eventFromProto(resp.event!);
          last = ev.sequence;
          yield ev;
        }
        if (!follow) return;
        // A following stream only ends when the daemon shuts down: reconnect.
      } catch (err) {
        if (options.signal?.aborted || this.closed) return;
        if (!isConnectionLoss(err)) throw err;
      } finally {
        call.abort();
      }
      if (options.signal?.aborted) return;
      if (!lost) {
        lost = true;
        this.emit("disconnected");
        options.onConnectionLost?.(new ComputeSDKError(`lost the connection to computesdkd at ${this.endpoint.where}`, "UNAVAILABLE", "DAEMON_UNREACHABLE"));
      }
      this.emit("reconnecting");
      await sleep(backoff, options.signal);
      backoff = Math.min(backoff * 2, 2000);
    }
  }
}

/** Connects with the default options (or $COMPUTESDK_ADDRESS, $COMPUTESDK_SOCKET, ...: see ConnectOptions). */
export function connect(options: ConnectOptions = {}): Promise<Client> {
  return Client.connect(options);
}

// compute() and listActiveSandboxes() share one connection per set of connection
// options. It never holds the process open: Connect unrefs an idle connection.
const shared = new Map<string, Promise<Client>>();

/** The shared connection for these options (the default one for none); made on first use. */
export function defaultClient(options: ConnectOptions = {}): Promise<Client> {
  const picked = Object.fromEntries(CONNECT_KEYS.filter((k) => options[k] !== undefined).map((k) => [k, String(options[k])]));
  const env = ["COMPUTESDK_ADDRESS", "COMPUTESDK_SOCKET", "COMPUTESDK_TOKEN", "COMPUTESDK_CA", "COMPUTESDK_INSECURE"].map((k) => process.env[k] ?? "");
  const key = JSON.stringify([picked, env]);
  let client = shared.get(key);
  if (client) {
    // Someone closed the shared connection: open it again for the next user.
    return client.then((c) => (c.isClosed ? c.reconnect().then(() => c) : c));
  } else {
    client = Client.connect(options);
    shared.set(key, client);
    // A failed connect is not kept: the next call tries again.
    client.catch(() => shared.delete(key));
  }
  return client;
}

/**
 * Connects and creates a sandbox in one step, as the spec's compute() does.
 * Every compute() with the same connection options shares one connection.
 */
export async function compute(provider = "", options: CreateOptions & ConnectOptions = {}): Promise<Sandbox> {
  const client = await defaultClient(options);
  return client.create(provider, options);
}

/** The spec's listActiveSandboxes(): every running sandbox, over compute()'s shared connection. */
export async function listActiveSandboxes(options: ConnectOptions = {}): Promise<Sandbox[]> {
  return (await defaultClient(options)).listActiveSandboxes();
}
