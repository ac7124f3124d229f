// The connection to computesdkd, and the calls that are not about one sandbox.
import * as net from "node:net";
import * as os from "node:os";
import * as path from "node:path";
import { existsSync } from "node:fs";
import { randomUUID } from "node:crypto";
import { createClient, type Client as RpcClient, type Transport } from "@connectrpc/connect";
import { createGrpcTransport, Http2SessionManager } from "@connectrpc/connect-node";

import { PoolPolicy, SandboxService, State, type Sandbox as SandboxMessage } from "./gen/computesdk/api/sandbox/v1/sandbox_pb.js";
import { ProcessService } from "./gen/computesdk/api/process/v1/process_pb.js";
import { FilesystemService } from "./gen/computesdk/api/filesystem/v1/filesystem_pb.js";
import { EventService, type Event as EventMessage } from "./gen/computesdk/api/events/v1/events_pb.js";
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
import { Templates } from "./templates.js";
import { Channels, Groups, Networks, Pools } from "./fleet.js";
import { ComputeSDKError, fromError, typedError } from "./errors.js";
import { Sandbox, resourcesToProto, stateName, toDate, type Resources } from "./sandbox.js";

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
}

export type ConnectionState = "connected" | "disconnected" | "reconnecting";

export interface ConnectOptions {
  /** Unix socket of the daemon (default: $COMPUTESDK_SOCKET, then the daemon's default). */
  socket?: string;
  /** Any other gRPC target, as "http://host:port". */
  target?: string;
  /** How long connect() waits for the daemon (default 10 s). */
  timeoutMs?: number;
}

export interface CreateOptions {
  template?: string;
  metadata?: Record<string, string>;
  /** Idle lifetime before the daemon reaps the sandbox. */
  timeoutMs?: number;
  keepAlive?: boolean;
  resources?: Resources;
  env?: Record<string, string>;
  /** Makes retries of this create idempotent (a random id is the default). */
  requestId?: string;
  /** Tried in order when the provider is down. */
  fallbackProviders?: string[];
  /** Take a never-used warm sandbox from a matching pool: undefined follows the daemon. */
  usePool?: boolean;
  /** Start from a saved state (client.states.save) instead of the template. */
  restoreFrom?: string;
  /** Volumes to mount; an unknown name with sizeMB makes an ephemeral one. */
  volumes?: { name: string; mountPath: string; readOnly?: boolean; sizeMB?: number }[];
}

export interface Event {
  sequence: number;
  time: Date | undefined;
  sandboxId: string;
  type: string;
  message: string;
  attributes: Record<string, string>;
}

export interface EventsOptions {
  sandboxIds?: string[];
  types?: string[];
  /** Resume after this sequence number. */
  after?: number;
  /** false replays what is stored and ends. */
  follow?: boolean;
  signal?: AbortSignal;
}

export interface ListOptions {
  metadata?: Record<string, string>;
  states?: string[];
  provider?: string;
}

const MAX_MESSAGE = 64 * 1024 * 1024;

export function defaultSocket(): string {
  if (process.env.COMPUTESDK_SOCKET) return process.env.COMPUTESDK_SOCKET;
  const uid = os.userInfo().uid;
  if (uid === 0) return "/run/computesdk/computesdkd.sock";
  const runtime = process.env.XDG_RUNTIME_DIR || `/tmp/computesdk-${uid}`;
  return path.join(runtime, "computesdk", "computesdkd.sock");
}

export function eventFromProto(e: EventMessage): Event {
  return {
    sequence: Number(e.sequence),
    time: toDate(e.time),
    sandboxId: e.sandboxId,
    type: e.type,
    message: e.message,
    attributes: { ...e.attributes },
  };
}

const sleep = (ms: number, signal?: AbortSignal) =>
  new Promise<void>((resolve) => {
    const t = setTimeout(resolve, ms);
    signal?.addEventListener("abort", () => (clearTimeout(t), resolve()), { once: true });
  });

const SOCKET_ERRORS = new Set(["ENOENT", "ECONNREFUSED", "ECONNRESET", "EPIPE"]);

/** The daemon went away (restart, crash): worth reconnecting, unlike a refused call. */
function isConnectionLoss(err: unknown): boolean {
  if (!(err instanceof ComputeSDKError)) return false;
  if (err.code === "UNAVAILABLE" || err.code === "ABORTED") return true;
  // connect-node reports a socket that cannot be dialled as INTERNAL, the errno down its causes.
  for (let e = err.cause; e instanceof Error; e = e.cause) {
    const code = (e as { code?: unknown }).code;
    if (typeof code === "string" && SOCKET_ERRORS.has(code)) return true;
  }
  return false;
}

/**
 * The one call path: every call through the returned transport, raw ones
 * included, fails with a typed error. A transport and not a Connect
 * interceptor, because Connect wraps whatever an interceptor throws in a
 * ConnectError again.
 */
function typedErrors(transport: Transport): Transport {
  const rethrow = (err: unknown): never => {
    throw fromError(err);
  };
  async function* typedMessages<T>(messages: AsyncIterable<T>): AsyncIterable<T> {
    try {
      yield* messages;
    } catch (err) {
      throw fromError(err);
    }
  }
  return {
    unary: (...args) => transport.unary(...args).catch(rethrow),
    async stream(...args) {
      const res = await transport.stream(...args).catch(rethrow);
      return { ...res, message: typedMessages(res.message) };
    },
  };
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
  /** Each provider's capabilities, as ListProviders said. */
  private readonly known = new Map<string, ReadonlySet<string>>();
  readonly target: string;
  private readonly session: Http2SessionManager;
  private readonly listeners = new Map<ConnectionState, Set<() => void>>();
  private closed = false;

  private constructor(target: string, socket: string | undefined) {
    this.target = target;
    this.session = new Http2SessionManager(
      target,
      { pingIntervalMs: 30_000 },
      socket ? { createConnection: () => net.connect(socket) } : {},
    );
    const transport = typedErrors(
      createGrpcTransport({
        baseUrl: target,
        sessionManager: this.session,
        readMaxBytes: MAX_MESSAGE,
        writeMaxBytes: MAX_MESSAGE,
      }),
    );
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
    };
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
    let socket: string | undefined;
    let target = options.target;
    if (!target) {
      socket = path.resolve(options.socket ?? defaultSocket());
      // Fail fast: nothing will ever listen on a socket that does not exist.
      if (!existsSync(socket)) {
        throw new ComputeSDKError(`computesdkd is not running: no socket at ${socket}`, "UNAVAILABLE", "DAEMON_UNREACHABLE");
      }
      target = "http://localhost";
    }
    const client = new Client(target, socket);
    // A cheap call proves the daemon is there and tells what each provider can do.
    try {
      client.remember((await client.raw.providers.listProviders({}, { timeoutMs: options.timeoutMs ?? 10_000 })).providers);
    } catch (err) {
      client.close();
      if (err instanceof ComputeSDKError && (err.code === "UNAVAILABLE" || err.code === "DEADLINE_EXCEEDED")) {
        throw new ComputeSDKError(`cannot reach computesdkd at ${socket ?? target}: ${err.message}`, "UNAVAILABLE", "DAEMON_UNREACHABLE");
      }
      throw err;
    }
    return client;
  }

  /** Closes the connection; calls in flight fail. */
  close(): void {
    this.closed = true;
    this.session.abort();
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

  /** Creates a sandbox on provider ("" = the daemon's default) once it is ready. */
  async create(provider = "", options: CreateOptions = {}): Promise<Sandbox> {
    const resp = await this.raw.sandboxes.createSandbox(createRequest(provider, options));
    return new Sandbox(this, resp.sandbox as SandboxMessage);
  }

  /**
   * Creates many sandboxes in one call. One result per item, in order: a failed
   * item is its typed error and does not fail the others.
   */
  async batchCreate(items: (CreateOptions & { provider?: string })[]): Promise<(Sandbox | ComputeSDKError)[]> {
    const resp = await this.raw.sandboxes.batchCreateSandboxes({ requests: items.map((i) => createRequest(i.provider ?? "", i)) });
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
      const v = State[`STATE_${s.toUpperCase()}` as keyof typeof State];
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
      try {
        const stream = this.raw.events.subscribeEvents(
          {
            sandboxIds: options.sandboxIds ?? [],
            types: options.types ?? [],
            afterSequence: BigInt(last),
            noFollow: !follow,
          },
          { signal: options.signal },
        );
        for await (const resp of stream) {
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
      }
      if (options.signal?.aborted) return;
      if (!lost) {
        lost = true;
        this.emit("disconnected");
      }
      this.emit("reconnecting");
      await sleep(backoff, options.signal);
      backoff = Math.min(backoff * 2, 2000);
    }
  }
}

function createRequest(provider: string, o: CreateOptions) {
  return {
    provider,
    template: o.template ?? "",
    metadata: o.metadata ?? {},
    timeoutMs: BigInt(o.timeoutMs ?? 0),
    keepAlive: o.keepAlive ?? false,
    resources: resourcesToProto(o.resources),
    env: o.env ?? {},
    requestId: o.requestId ?? randomUUID(),
    fallbackProviders: o.fallbackProviders ?? [],
    poolPolicy: o.usePool === undefined ? PoolPolicy.UNSPECIFIED : o.usePool ? PoolPolicy.ALLOW : PoolPolicy.NEVER,
    restoreFrom: o.restoreFrom ?? "",
    volumes: (o.volumes ?? []).map((v) => ({ name: v.name, mountPath: v.mountPath, readOnly: v.readOnly ?? false, sizeMb: BigInt(v.sizeMB ?? 0) })),
  };
}

/** Connects with the default options (or $COMPUTESDK_SOCKET). */
export function connect(options: ConnectOptions = {}): Promise<Client> {
  return Client.connect(options);
}

/**
 * Connects and creates a sandbox in one step, as the spec's compute() does.
 * The sandbox owns that connection: destroy() closes it.
 */
export async function compute(provider = "", options: CreateOptions & ConnectOptions = {}): Promise<Sandbox> {
  const client = await Client.connect(options);
  try {
    const sandbox = await client.create(provider, options);
    sandbox.ownsClient = true;
    return sandbox;
  } catch (err) {
    client.close();
    throw err;
  }
}

export { stateName };
