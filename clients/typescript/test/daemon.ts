// A real computesdkd that a test file owns and can restart.
//
// With COMPUTESDK_TEST_TLS=1 (or new Daemon({ listen: "tls" })) it also serves
// TLS on a free loopback port, with a CA and a server certificate made here, and
// connectOptions() reaches it there with an admin token of tenant "ts-suite"
// made by the CLI. The harness's own cleanup keeps using the Unix socket.
import { execFile, spawn, spawnSync, type ChildProcess } from "node:child_process";
import { mkdtempSync, chmodSync, openSync, readFileSync, rmSync } from "node:fs";
import * as net from "node:net";
import * as path from "node:path";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";

import { Client, type ConnectOptions } from "../src/index.js";
import { issue, makeCA, type CA, type Issued } from "./certs.js";

const here = path.dirname(fileURLToPath(import.meta.url));
// dist/test -> the repository root.
export const repoRoot = path.resolve(here, "../../../..");

export type Listen = "socket" | "tls" | "insecure";

export interface DaemonOptions {
  /** What connectOptions() uses: the Unix socket only, TLS on TCP, or plaintext TCP (default: TLS if $COMPUTESDK_TEST_TLS=1). */
  listen?: Listen;
  /** With TLS: require client certificates signed by this test's client CA (--tls-client-ca). */
  clientCA?: boolean;
  /** The tenant of the token connectOptions() carries. */
  tenant?: string;
}

export class Daemon {
  readonly root: string;
  readonly socket: string;
  readonly listen: Listen;
  readonly tenant: string;
  /** With TLS: the CA that signed the server's certificate, and that certificate. */
  readonly ca: CA | undefined;
  readonly server: Issued | undefined;
  /** With clientCA: the CA the daemon trusts for client certificates, and a certificate it signed. */
  readonly clientCA: CA | undefined;
  readonly clientCert: Issued | undefined;
  /** The TCP port (kept across restarts), once started. */
  port = 0;
  /** The admin token of the tenant, once started over TCP. */
  token = "";
  private proc: ChildProcess | undefined;
  /** Set by tracked() when a test body failed. */
  failed = false;

  constructor(options: DaemonOptions = {}) {
    // Sandboxes' unprivileged init must traverse to what the daemon makes here.
    this.root = mkdtempSync("/var/tmp/computesdk-ts-");
    chmodSync(this.root, 0o711);
    this.socket = path.join(this.root, "d.sock");
    this.listen = options.listen ?? (process.env.COMPUTESDK_TEST_TLS === "1" ? "tls" : "socket");
    this.tenant = options.tenant ?? "ts-suite";
    if (this.listen === "tls") {
      const pki = path.join(this.root, "tls");
      this.ca = makeCA(pki, "ca");
      this.server = issue(this.ca, pki, "server", "server");
      if (options.clientCA) {
        this.clientCA = makeCA(pki, "client-ca");
        this.clientCert = issue(this.clientCA, pki, "client", "client");
      }
    }
  }

  /** host:port of the TCP listener. */
  get address(): string {
    return `127.0.0.1:${this.port}`;
  }

  /** How the suite's clients reach this daemon: the socket, or TCP (TLS or not) with the tenant's admin token. */
  connectOptions(): ConnectOptions {
    if (this.listen === "socket") return { socket: this.socket };
    if (this.listen === "insecure") return { address: this.address, insecure: true, token: this.token };
    return {
      address: this.address,
      ca: this.ca!.cert,
      token: this.token,
      ...(this.clientCert ? { cert: this.clientCert.cert, key: this.clientCert.key } : {}),
    };
  }

  /** Environment variables that make connect() reach it as connectOptions() does. */
  connectEnv(): Record<string, string> {
    if (this.listen === "socket") return { COMPUTESDK_SOCKET: this.socket };
    return {
      COMPUTESDK_ADDRESS: this.address,
      COMPUTESDK_TOKEN: this.token,
      ...(this.listen === "insecure" ? { COMPUTESDK_INSECURE: "1" } : { COMPUTESDK_CA: this.ca!.cert }),
      ...(this.clientCert ? { COMPUTESDK_CLIENT_CERT: this.clientCert.cert, COMPUTESDK_CLIENT_KEY: this.clientCert.key } : {}),
    };
  }

  /** A new token, made over the admin socket by the CLI (which prints it alone). */
  async createToken(scope: "read" | "write" | "admin", tenant = this.tenant): Promise<string> {
    return (await this.cli(["token", "create", "--tenant", tenant, "--scope", scope])).trim();
  }

  /** Runs the computesdk CLI against the admin socket; its stdout. */
  async cli(args: string[]): Promise<string> {
    const bin = process.env.COMPUTESDK_CLI ?? path.join(repoRoot, ".venv/bin/computesdk");
    // Only the socket: none of the environment's TCP settings.
    const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith("COMPUTESDK_") || k === "COMPUTESDK_SOCKET"));
    return (await promisify(execFile)(bin, ["--socket", this.socket, ...args], { encoding: "utf8", timeout: 30_000, env })).stdout;
  }

  async start(): Promise<void> {
    const bin = process.env.COMPUTESDKD ?? path.join(repoRoot, ".venv/bin/computesdkd");
    const log = openSync(path.join(this.root, "daemon.log"), "a");
    const args = ["--socket", this.socket, "--state-dir", path.join(this.root, "state"), "--log-format", "json", "--grace", "2", "--on-exit", "keep"];
    if (this.listen !== "socket") {
      if (!this.port) this.port = await freePort();
      if (this.listen === "insecure") args.push("--listen", this.address, "--insecure-listen");
      else {
        args.push("--listen", this.address, "--tls-cert", this.server!.cert, "--tls-key", this.server!.key);
        if (this.clientCA) args.push("--tls-client-ca", this.clientCA.cert);
      }
    }
    this.proc = spawn(bin, args, { stdio: ["ignore", log, log], detached: true });
    const deadline = Date.now() + 30_000;
    const exited = () => this.proc?.exitCode !== null && this.proc?.exitCode !== undefined;
    for (;;) {
      if (await canConnect(this.socket)) {
        if (this.listen === "socket" || (await canConnect(this.port))) break;
      }
      if (exited() || Date.now() > deadline) {
        throw new Error(`computesdkd did not listen on ${this.socket}${this.port ? ` and ${this.address}` : ""}:\n${this.logTail()}`);
      }
      await new Promise((r) => setTimeout(r, 20));
    }
    if (this.listen !== "socket" && !this.token) this.token = await this.createToken("admin");
  }

  stop(): Promise<void> {
    return this.end("SIGTERM");
  }

  /** kill -9: no shutdown at all, as a crash. */
  kill9(): Promise<void> {
    return this.end("SIGKILL");
  }

  private async end(signal: NodeJS.Signals): Promise<void> {
    const proc = this.proc;
    if (!proc || proc.exitCode !== null) return;
    const exited = new Promise((r) => proc.once("exit", r));
    proc.kill(signal);
    await exited;
    this.proc = undefined;
  }

  /** Runs a test's body; a failure keeps the daemon's root and prints its log at shutdown(this.failed). */
  async tracked(fn: () => Promise<void>): Promise<void> {
    try {
      await fn();
    } catch (err) {
      this.failed = true;
      throw err;
    }
  }

  async restart(): Promise<void> {
    await this.stop();
    await this.start();
  }

  /** Destroys what a failed test left behind, then stops. */
  async shutdown(failed: boolean): Promise<void> {
    try {
      const c = await Client.connect({ socket: this.socket });
      for (const sb of await c.list()) await sb.destroy().catch(() => undefined);
      c.close();
    } catch {
      // The daemon is already gone.
    }
    await this.stop();
    // The daemon keeps its disk store (and volumes) mounted under the state dir.
    const mounts = readFileSync("/proc/self/mounts", "utf8")
      .split("\n")
      .map((l) => l.split(" ")[1] ?? "")
      .filter((m) => m.startsWith(this.root + "/"))
      .sort()
      .reverse();
    for (const m of mounts) spawnSync("umount", ["-l", m]);
    if (failed) console.error(this.logTail());
    else rmSync(this.root, { recursive: true, force: true });
  }

  logTail(): string {
    return readFileSync(path.join(this.root, "daemon.log"), "utf8").slice(-4000);
  }
}

/** A loopback TCP port nothing listens on now. */
function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.once("error", reject);
    srv.listen(0, "127.0.0.1", () => {
      const { port } = srv.address() as net.AddressInfo;
      srv.close(() => resolve(port));
    });
  });
}

/** Whether something accepts connections on the socket path or loopback port. */
function canConnect(where: string | number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = typeof where === "number" ? net.connect(where, "127.0.0.1") : net.connect(where);
    s.once("connect", () => (s.destroy(), resolve(true)));
    s.once("error", () => resolve(false));
  });
}
