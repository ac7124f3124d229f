// A real computesdkd that a test file owns and can restart.
import { spawn, spawnSync, type ChildProcess } from "node:child_process";
import { mkdtempSync, chmodSync, openSync, readFileSync, rmSync } from "node:fs";
import * as net from "node:net";
import * as path from "node:path";
import { fileURLToPath } from "node:url";

import { Client } from "../src/index.js";

const here = path.dirname(fileURLToPath(import.meta.url));
// dist/test -> the repository root.
export const repoRoot = path.resolve(here, "../../../..");

export class Daemon {
  readonly root: string;
  readonly socket: string;
  private proc: ChildProcess | undefined;

  constructor() {
    // Sandboxes' unprivileged init must traverse to what the daemon makes here.
    this.root = mkdtempSync("/var/tmp/computesdk-ts-");
    chmodSync(this.root, 0o711);
    this.socket = path.join(this.root, "d.sock");
  }

  async start(): Promise<void> {
    const bin = process.env.COMPUTESDKD ?? path.join(repoRoot, ".venv/bin/computesdkd");
    const log = openSync(path.join(this.root, "daemon.log"), "a");
    this.proc = spawn(
      bin,
      ["--socket", this.socket, "--state-dir", path.join(this.root, "state"), "--log-format", "json", "--grace", "2", "--on-exit", "keep"],
      { stdio: ["ignore", log, log], detached: true },
    );
    const deadline = Date.now() + 30_000;
    while (Date.now() < deadline) {
      if (await canConnect(this.socket)) return;
      await new Promise((r) => setTimeout(r, 20));
    }
    throw new Error(`computesdkd did not listen on ${this.socket}:\n${this.logTail()}`);
  }

  async stop(): Promise<void> {
    const proc = this.proc;
    if (!proc || proc.exitCode !== null) return;
    const exited = new Promise((r) => proc.once("exit", r));
    proc.kill("SIGTERM");
    await exited;
    this.proc = undefined;
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

function canConnect(socket: string): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.connect(socket);
    s.once("connect", () => (s.destroy(), resolve(true)));
    s.once("error", () => resolve(false));
  });
}
