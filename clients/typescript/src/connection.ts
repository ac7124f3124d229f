// How to reach computesdkd: the options and the environment, the transport, and a lost daemon told apart from a refused call.
import * as net from "node:net";
import * as os from "node:os";
import * as path from "node:path";
import type { SecureClientSessionOptions } from "node:http2";
import { readFileSync } from "node:fs";
import { Code, ConnectError, type Interceptor, type Transport } from "@connectrpc/connect";
import { createGrpcTransport, Http2SessionManager } from "@connectrpc/connect-node";

import { ComputeSDKError, InvalidArgumentError, fromError } from "./errors.js";

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
export interface Endpoint {
  baseUrl: string;
  socket?: string;
  tls?: SecureClientSessionOptions;
  token?: string;
  /** For messages: the socket path or the URL, never the token. */
  where: string;
}

const MAX_MESSAGE = 64 * 1024 * 1024;

export function defaultSocket(): string {
  if (process.env.COMPUTESDK_SOCKET) return process.env.COMPUTESDK_SOCKET;
  const uid = os.userInfo().uid;
  if (uid === 0) return "/run/computesdk/computesdkd.sock";
  const runtime = process.env.XDG_RUNTIME_DIR || `/tmp/computesdk-${uid}`;
  return path.join(runtime, "computesdk", "computesdkd.sock");
}

export const invalid = (message: string) => new InvalidArgumentError(message, "INVALID_ARGUMENT", "INVALID_ARGUMENT");

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

export function bearer(token: string): Interceptor {
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
export function resolveEndpoint(options: ConnectOptions, env: NodeJS.ProcessEnv = process.env): Endpoint {
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


export const sleep = (ms: number, signal?: AbortSignal) =>
  new Promise<void>((resolve) => {
    const t = setTimeout(resolve, ms);
    signal?.addEventListener("abort", () => (clearTimeout(t), resolve()), { once: true });
  });

const SOCKET_ERRORS = new Set(["ENOENT", "ECONNREFUSED", "ECONNRESET", "EPIPE"]);

/** The daemon went away (restart, crash): worth reconnecting, unlike a refused call. */
export function isConnectionLoss(err: unknown): boolean {
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
export function typedErrors(transport: Transport): Transport {
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


/** A new connection to the endpoint: the HTTP/2 session and the gRPC transport over it. */
export function dial(endpoint: Omit<Endpoint, "token">, interceptors: Interceptor[]): { session: Http2SessionManager; transport: Transport } {
  const socket = endpoint.socket;
  const session = new Http2SessionManager(
    endpoint.baseUrl,
    { pingIntervalMs: 30_000 },
    socket ? { createConnection: () => net.connect(socket) } : (endpoint.tls ?? {}),
  );
  const transport = createGrpcTransport({
    baseUrl: endpoint.baseUrl,
    // The session manager dials (the socket, or TCP with endpoint.tls as its nodeOptions).
    sessionManager: session,
    readMaxBytes: MAX_MESSAGE,
    writeMaxBytes: MAX_MESSAGE,
    interceptors,
  });
  return { session, transport };
}

/** What connect() throws when its first call fails: DAEMON_UNREACHABLE, saying why, for a daemon it could not reach. */
export function unreachable(err: unknown, endpoint: Endpoint): unknown {
  // Nothing here cancels: a cancelled stream is the peer hanging up, e.g. a TLS port spoken to in plaintext.
  if (err instanceof ConnectError && err.code === Code.Canceled) {
    return new ComputeSDKError(
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
    return new ComputeSDKError(`cannot reach computesdkd at ${endpoint.where}: ${why}`, "UNAVAILABLE", "DAEMON_UNREACHABLE", {}, { cause: err });
  }
  return err;
}

/** The options that are the connection's: compute() takes them beside the create options. */
export const CONNECT_KEYS = ["socket", "address", "target", "token", "ca", "cert", "key", "insecure", "serverName", "timeoutMs"] as const;
