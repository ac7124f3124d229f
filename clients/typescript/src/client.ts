// The connection to computesdkd, and the calls that are not about one sandbox.
import * as net from "node:net";
import * as os from "node:os";
import * as path from "node:path";
import type { SecureClientSessionOptions } from "node:http2";
import { readFileSync } from "node:fs";
import { randomUUID } from "node:crypto";
import { Code, ConnectError, createClient, type Client as RpcClient, type Interceptor, type Transport } from "@connectrpc/connect";
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
import { AdminService } from "./gen/computesdk/api/admin/v1/admin_pb.js";
import { Templates, type TemplateDefinition } from "./templates.js";
import { Quotas, Tokens } from "./admin.js";
import { Channels, Groups, Networks, Pools } from "./fleet.js";
import { ComputeSDKError, InvalidArgumentError, TemplateBuildError, fromError, typedError } from "./errors.js";
import { Sandbox, resourcesToProto, stateName, toDate, type Resources } from "./sandbox.js";
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

export type ConnectionState = "connected" | "disconnected" | "reconnecting";

/**
 * Where the daemon is and how to reach it: one of socket, address and target.
 * With none, $COMPUTESDK_ADDRESS if set, else $COMPUTESDK_SOCKET, else the
 * daemon's default socket. Every other option left out (undefined) is taken
 * from its environment variable; an explicit option always beats it.
 *
 *     COMPUTESDK_ADDRESS      host:port of the daemon's TCP listener (TLS unless insecure)
 *     COMPUTESDK_TOKEN        bearer token sent on every call
 *     COMPUTESDK_CA           the CA (PEM file) that alone is trusted for the daemon's certificate
 *     COMPUTESDK_CLIENT_CERT  PEM client certificate, for a daemon that wants mTLS
 *     COMPUTESDK_CLIENT_KEY   its private key
 *     COMPUTESDK_INSECURE=1   plaintext TCP instead of TLS
 *     COMPUTESDK_SOCKET       the Unix socket, when no address is given
 *
 * For example, with a token from `computesdk token create --tenant me --scope write`:
 *
 *     const client = await connect({ address: "sandboxes.internal:7443", ca: "/etc/computesdk/ca.pem", token });
 *
 * A token the daemon refuses fails connect() with an UnauthenticatedError whose
 * reason says why (TOKEN_MISSING, TOKEN_INVALID, TOKEN_REVOKED, TOKEN_EXPIRED);
 * a call the token's scope does not cover fails with a PermissionDeniedError
 * (SCOPE_INSUFFICIENT). A daemon that cannot be reached, or whose TLS handshake
 * fails, gives reason DAEMON_UNREACHABLE with the cause in the message (at
 * once when there is no socket, or only a stale one); a socket this user may
 * not connect to, a PermissionDeniedError (SOCKET_PERMISSION_DENIED).
 */
export interface ConnectOptions {
  /** The daemon's Unix (admin) socket: no TLS, no token needed. Beats $COMPUTESDK_ADDRESS. */
  socket?: string;
  /**
   * "host:port" of the daemon's TCP listener (computesdkd --listen), "[::1]:port"
   * for IPv6. TLS, verified against Node's default roots or ca, unless insecure.
   */
  address?: string;
  /**
   * Any other gRPC target, "http://host:port" (plaintext) or "https://host:port"
   * (TLS with ca, cert, key and serverName; the environment's TLS settings do not apply).
   */
  target?: string;
  /**
   * Bearer token, sent as "authorization: Bearer <token>" on every call, unary
   * and streaming (default: $COMPUTESDK_TOKEN; "" sends none). The Unix socket
   * ignores it. The client keeps it out of errors and logs.
   */
  token?: string;
  /**
   * The only CA trusted to sign the daemon's certificate, instead of Node's
   * default roots: a PEM file's path, or the PEM itself as a string or Buffer
   * (default: $COMPUTESDK_CA).
   */
  ca?: string | Buffer;
  /** Client certificate for a daemon that requires one (computesdkd --tls-client-ca): path or PEM (default: $COMPUTESDK_CLIENT_CERT). */
  cert?: string | Buffer;
  /** The client certificate's private key: path or PEM (default: $COMPUTESDK_CLIENT_KEY). */
  key?: string | Buffer;
  /**
   * Plaintext TCP to address, for a daemon started with --insecure-listen, e.g.
   * on loopback (default: $COMPUTESDK_INSECURE=1). The token still goes on every
   * call, in the clear: keep it to networks you trust.
   */
  insecure?: boolean;
  /** Checks the daemon's certificate against this name (also sent as SNI) instead of the address's host. */
  serverName?: string;
  /** How long connect() waits for the daemon (default 10 s). */
  timeoutMs?: number;
}

/** A resolved ConnectOptions: what the transport dials. */
interface Endpoint {
  baseUrl: string;
  socket?: string;
  tls?: SecureClientSessionOptions;
  token?: string;
  /** For messages: the socket path or the URL, never the token. */
  where: string;
}

/** A volume to mount, the spec's way ({ name, path, size: '10GB', persistent } or { name, path, mountExisting: true }). */
export interface VolumeSpec {
  name: string;
  /** Where it is mounted (mountPath is the older spelling). */
  path?: string;
  mountPath?: string;
  readOnly?: boolean;
  /** For a volume this create makes: "10GB" (10^9 bytes), "10GiB", "512MB"; a bare number is MB. The daemon parses it. */
  size?: string | number;
  /** The size in MB, the older spelling; size wins. */
  sizeMB?: number;
  /** A volume this create makes outlives the sandbox (default: removed with it). */
  persistent?: boolean;
  /** The volume must exist: NOT_FOUND VOLUME_NOT_FOUND instead of making it. */
  mountExisting?: boolean;
}

/** An inline template: built (a cache hit when built before with the same definition), then used. */
export type TemplateSpec = TemplateDefinition & { name: string };

export interface CreateOptions {
  /** A template's name, or a definition to build first. */
  template?: string | TemplateSpec;
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
  /** Start from a saved state (sandbox.saveState(), client.states.save) instead of the template. */
  restoreFrom?: string;
  /** Start from an archive (sandbox.exportState()): imported, then the sandbox is the import's. */
  importState?: Uint8Array;
  /** Volumes to mount; a name not there yet is made (size, persistent) unless mountExisting. */
  volumes?: VolumeSpec[];
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
  /** Called once each time the stream loses the daemon (before it reconnects by itself). */
  onConnectionLost?: (err: unknown) => void;
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

const invalid = (message: string) => new InvalidArgumentError(message, "INVALID_ARGUMENT", "INVALID_ARGUMENT");

/** A path, or PEM text when it holds a PEM header; a Buffer is PEM as is. */
function pem(value: string | Buffer, what: string): string | Buffer {
  if (Buffer.isBuffer(value) || value.includes("-----BEGIN")) return value;
  try {
    return readFileSync(value);
  } catch (err) {
    throw invalid(`cannot read the ${what} ${value}: ${(err as Error).message}`);
  }
}

/** An option left out (undefined) is taken from the environment; "" (or null) is none. */
function pick<T>(option: T | undefined | null, env: T | undefined): T | undefined {
  const v = option === undefined ? env : option;
  return v === "" || v === null ? undefined : v;
}

/** COMPUTESDK_INSECURE=1 (or true, yes, on). */
const envTrue = (v: string | undefined) => ["1", "true", "yes", "on"].includes((v ?? "").trim().toLowerCase());

function bearer(token: string): Interceptor {
  const value = `Bearer ${token}`;
  return (next) => (req) => {
    req.header.set("authorization", value);
    return next(req);
  };
}

/**
 * Which transport the options (then the environment) ask for; throws
 * InvalidArgumentError on a contradiction. The same rules as the Go client.
 */
function resolveEndpoint(options: ConnectOptions, env: NodeJS.ProcessEnv = process.env): Endpoint {
  const chosen = (["socket", "address", "target"] as const).filter((k) => options[k]);
  if (chosen.length > 1) throw invalid(`give one of socket, address and target, not ${chosen.join(" and ")}`);
  const address = options.address || (chosen.length === 0 ? env.COMPUTESDK_ADDRESS?.trim() : undefined);
  const target = options.target;

  // The token goes on any connection (the Unix socket ignores it).
  const rawToken = pick(options.token, env.COMPUTESDK_TOKEN)?.trim();
  const token = rawToken ? { token: checkToken(rawToken) } : {};
  if (!target && !address) {
    const socket = path.resolve(options.socket || defaultSocket());
    return { baseUrl: "http://localhost", socket, where: socket, ...token };
  }

  // TLS settings asked for in the options; the environment's apply to an address only.
  const explicitTls = (["ca", "cert", "key", "serverName"] as const).filter((k) => options[k]);
  let baseUrl: string;
  if (target) {
    baseUrl = target;
  } else {
    if (/^[a-z][a-z0-9+.-]*:\/\//i.test(address!)) throw invalid(`address is host:port, not a URL (${address}); a URL goes in target`);
    let plaintext = envTrue(env.COMPUTESDK_INSECURE) && explicitTls.length === 0;
    if (options.insecure !== undefined) plaintext = options.insecure;
    baseUrl = `${plaintext ? "http" : "https"}://${address}`;
  }
  let url: URL;
  try {
    url = new URL(baseUrl);
  } catch {
    throw invalid(`not a host:port or URL: ${target ?? address}`);
  }
  if (address && (!url.port || url.pathname !== "/" || url.search || url.hash || url.username)) throw invalid(`address must be host:port, not ${address}`);
  if (url.protocol !== "http:" && url.protocol !== "https:") throw invalid(`target must be http:// or https://, not ${url.protocol}`);
  const endpoint: Endpoint = { baseUrl, where: baseUrl, ...token };
  if (url.protocol === "http:") {
    if (explicitTls.length) throw invalid(`${options.insecure ? "insecure" : "an http:// target"} is plaintext: it takes no ${explicitTls.join(", ")}`);
    return endpoint;
  }

  const fromEnv = !target;
  const ca = pick(options.ca, fromEnv ? env.COMPUTESDK_CA : undefined);
  let cert = options.cert;
  let key = options.key;
  if (cert === undefined && key === undefined && fromEnv) {
    cert = env.COMPUTESDK_CLIENT_CERT;
    key = env.COMPUTESDK_CLIENT_KEY;
  }
  cert = pick(cert, undefined);
  key = pick(key, undefined);
  const tls: SecureClientSessionOptions = {};
  if (ca) tls.ca = pem(ca, "CA");
  if (!cert !== !key) throw invalid("a client certificate needs both cert and key (COMPUTESDK_CLIENT_CERT and COMPUTESDK_CLIENT_KEY)");
  if (cert && key) {
    tls.cert = pem(cert, "client certificate");
    tls.key = pem(key, "client key");
  }
  if (options.serverName) tls.servername = options.serverName;
  endpoint.tls = tls;
  return endpoint;
}

/** A header value cannot carry controls or spaces; say so without echoing the secret. */
function checkToken(token: string): string {
  if (!/^[\x21-\x7e]+$/.test(token)) throw invalid("the token has characters a header cannot carry (is it the whole output of token create?)");
  return token;
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
  // A stream the daemon's death cut (kill -9) ends as CANCELED: the caller's own cancel is told apart by its signal.
  if (err instanceof ConnectError) return err.code === Code.Canceled || err.code === Code.Unavailable;
  if (!(err instanceof ComputeSDKError)) return false;
  if (err.code === "UNAVAILABLE" || err.code === "ABORTED") return true;
  // connect-node reports a socket that cannot be dialled as INTERNAL, the errno down its causes.
  for (let e = err.cause; e instanceof Error; e = e.cause) {
    const code = (e as { code?: unknown }).code;
    if (typeof code === "string" && SOCKET_ERRORS.has(code)) return true;
  }
  return false;
}

/** The TLS layer's complaint (a certificate not trusted, a name that does not match, ...), if that is why a call failed. */
function tlsFailure(err: ComputeSDKError): string | undefined {
  for (let e = err.cause; e instanceof Error; e = e.cause) {
    const code = (e as { code?: unknown }).code;
    if (typeof code !== "string") continue;
    if (!/CERT|SSL|TLS|SELF_SIGNED|UNABLE_TO_(GET|VERIFY)|HOSTNAME|ALTNAME|ALPN/.test(code)) continue;
    // OpenSSL's own errors carry a short reason beside a long message.
    const reason = (e as { reason?: unknown }).reason;
    return `${(typeof reason === "string" && reason ? reason : e.message).trim()} (${code})`;
  }
  return undefined;
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
      // Nothing here cancels: a cancelled stream is the peer hanging up, e.g. a TLS port spoken to in plaintext.
      if (err instanceof ConnectError && err.code === Code.Canceled) {
        throw new ComputeSDKError(
          `cannot reach computesdkd at ${endpoint.where}: the connection closed before it answered ${endpoint.tls ? "(does it want a client certificate, or refuse this one?)" : "(is it a TLS port?)"}`,
          "UNAVAILABLE",
          "DAEMON_UNREACHABLE",
          {},
          { cause: err },
        );
      }
      if (err instanceof ComputeSDKError && (isConnectionLoss(err) || err.code === "DEADLINE_EXCEEDED" || tlsFailure(err))) {
        const tls = tlsFailure(err);
        const why = tls ? `TLS: ${tls}` : err.message;
        throw new ComputeSDKError(`cannot reach computesdkd at ${endpoint.where}: ${why}`, "UNAVAILABLE", "DAEMON_UNREACHABLE", {}, { cause: err });
      }
      throw err;
    }
    return client;
  }

  private open(): void {
    const endpoint = this.endpoint;
    const socket = endpoint.socket;
    this.session = new Http2SessionManager(
      endpoint.baseUrl,
      { pingIntervalMs: 30_000 },
      socket ? { createConnection: () => net.connect(socket) } : (endpoint.tls ?? {}),
    );
    this.inner = createGrpcTransport({
      baseUrl: endpoint.baseUrl,
      // The session manager dials (the socket, or TCP with endpoint.tls as its nodeOptions).
      sessionManager: this.session,
      readMaxBytes: MAX_MESSAGE,
      writeMaxBytes: MAX_MESSAGE,
      interceptors: this.interceptors,
    });
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

function createRequest(provider: string, o: Omit<CreateOptions, "template"> & { template?: string }) {
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
    volumes: (o.volumes ?? []).map((v) => ({
      name: v.name,
      mountPath: v.path ?? v.mountPath ?? "",
      readOnly: v.readOnly ?? false,
      // A size string goes as given (the daemon parses it); a number is MB.
      size: typeof v.size === "string" ? v.size : "",
      sizeMb: BigInt(typeof v.size === "number" ? Math.ceil(v.size) : (v.sizeMB ?? 0)),
      persistent: v.persistent ?? false,
      mustExist: v.mountExisting ?? false,
    })),
  };
}

const CONNECT_KEYS = ["socket", "address", "target", "token", "ca", "cert", "key", "insecure", "serverName", "timeoutMs"] as const;

/** The create options without the connection's (sandbox.config must not hold a token). */
function createOptionsOnly(o: CreateOptions & ConnectOptions): CreateOptions {
  const out: Record<string, unknown> = { ...o };
  for (const k of CONNECT_KEYS) delete out[k];
  return out as CreateOptions;
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

export { stateName };
