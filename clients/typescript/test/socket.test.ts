// Why connect() cannot reach the daemon over its Unix socket, said at once: no
// socket, a stale one, one that is root's, a non-root user's default.
import { after, before, it } from "node:test";
import assert from "node:assert/strict";
import { execFile, spawn } from "node:child_process";
import { mkdtempSync, rmSync, statSync } from "node:fs";
import * as net from "node:net";
import * as os from "node:os";
import * as path from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";
import { promisify } from "node:util";

import { Client, ComputeSDKError, PermissionDeniedError } from "../src/index.js";
import { Daemon } from "./daemon.js";

const here = path.dirname(fileURLToPath(import.meta.url));
const NOBODY = ["--reuid=65534", "--regid=65534", "--clear-groups"];
// Dropping to uid 65534 takes root (and setpriv).
const asNobody = { skip: process.geteuid?.() !== 0 ? "needs root, to run the client as uid 65534" : false };
const HINT = "(the default for uid 65534; a system daemon would listen on /run/computesdk/computesdkd.sock";

const daemon = new Daemon({ listen: "socket" });
let failed = false;
const tmp = mkdtempSync(path.join(os.tmpdir(), "computesdk-ts-socket-"));
before(() => daemon.start());
after(async () => {
  await daemon.shutdown(failed);
  rmSync(tmp, { recursive: true, force: true });
});

async function tracked(fn: () => Promise<void>): Promise<void> {
  try {
    await fn();
  } catch (err) {
    failed = true;
    throw err;
  }
}

interface Outcome {
  ok?: boolean;
  name?: string;
  code?: string;
  reason?: string;
  message?: string;
}

/** connect(options) in a node run as uid 65534 (nobody), with none of our COMPUTESDK_* settings: what it threw. */
async function connectAsNobody(options: object, env: Record<string, string> = {}): Promise<Outcome> {
  const client = pathToFileURL(path.resolve(here, "../src/index.js")).href;
  const script = `import(process.argv[1]).then(async (m) => {
    try { (await m.Client.connect(JSON.parse(process.argv[2]))).close(); console.log(JSON.stringify({ ok: true })); }
    catch (e) { console.log(JSON.stringify({ name: e.name, code: e.code, reason: e.reason, message: e.message })); }
  })`;
  const clean = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith("COMPUTESDK_") && k !== "XDG_RUNTIME_DIR")) as Record<string, string>;
  const { stdout } = await promisify(execFile)("setpriv", [...NOBODY, process.execPath, "-e", script, client, JSON.stringify({ timeoutMs: 5000, ...options })], {
    encoding: "utf8",
    timeout: 60_000,
    cwd: "/",
    env: { ...clean, HOME: "/nonexistent", ...env },
  });
  return JSON.parse(stdout.trim().split("\n").at(-1)!) as Outcome;
}

/** A socket file with nothing behind it: what a daemon killed with SIGKILL leaves. */
async function staleSocket(where: string): Promise<void> {
  const child = spawn(process.execPath, ["-e", `require("net").createServer().listen(process.argv[1], () => console.log("up"))`, where], { stdio: ["ignore", "pipe", "inherit"] });
  await new Promise<void>((resolve, reject) => {
    child.stdout!.once("data", () => resolve());
    child.once("exit", (code) => reject(new Error(`the listener exited (${code}) before it listened`)));
  });
  const exited = new Promise((r) => child.once("exit", r));
  child.kill("SIGKILL");
  await exited;
  assert.ok(statSync(where).isSocket());
}

it("names a stale socket as stale", async () => {
  const where = path.join(tmp, "stale.sock");
  await staleSocket(where);
  await assert.rejects(Client.connect({ socket: where, timeoutMs: 30_000 }), (e: unknown) => {
    assert.ok(e instanceof ComputeSDKError && !(e instanceof PermissionDeniedError), String(e));
    assert.equal(e.code, "UNAVAILABLE");
    assert.equal(e.reason, "DAEMON_UNREACHABLE");
    assert.equal(e.message, `computesdkd is not running: ${where} is a stale socket (nothing listens on it)`);
    return true;
  });
});

it("says no daemon runs when there is no socket, with no hint for a path it was given", async () => {
  const where = path.join(tmp, "none.sock");
  await assert.rejects(Client.connect({ socket: where }), (e: unknown) => {
    assert.ok(e instanceof ComputeSDKError, String(e));
    assert.equal(e.code, "UNAVAILABLE");
    assert.equal(e.reason, "DAEMON_UNREACHABLE");
    assert.equal(e.message, `computesdkd is not running: no socket at ${where}`);
    return true;
  });
});

it("leaves a socket that accepts to the normal connect path", async () => {
  // Accepts and never answers, as a daemon too busy to: the probe passes, connect() times out.
  const where = path.join(tmp, "silent.sock");
  const held: net.Socket[] = [];
  const server = net.createServer((s) => held.push(s));
  await new Promise<void>((r) => server.listen(where, r));
  try {
    await assert.rejects(Client.connect({ socket: where, timeoutMs: 500 }), (e: unknown) => {
      assert.ok(e instanceof ComputeSDKError, String(e));
      assert.equal(e.reason, "DAEMON_UNREACHABLE");
      assert.match(e.message, /^cannot reach computesdkd at /);
      return true;
    });
  } finally {
    for (const s of held) s.destroy();
    await new Promise((r) => server.close(r));
  }
});

it("connects to a live daemon's socket as before", () =>
  tracked(async () => {
    const client = await Client.connect({ socket: daemon.socket });
    client.close();
  }));

it("names a socket the user may not use as a permission problem", asNobody, () =>
  tracked(async () => {
    const out = await connectAsNobody({ socket: daemon.socket });
    assert.equal(out.name, "PermissionDeniedError", JSON.stringify(out));
    assert.equal(out.code, "PERMISSION_DENIED");
    assert.equal(out.reason, "SOCKET_PERMISSION_DENIED");
    assert.ok(out.message!.startsWith(`permission denied on ${daemon.socket} (uid 65534): `), out.message);
    assert.ok(!out.message!.includes("not running"), out.message);
  }));

it("explains a non-root user's default socket", asNobody, () =>
  tracked(async () => {
    const out = await connectAsNobody({});
    assert.equal(out.reason, "DAEMON_UNREACHABLE", JSON.stringify(out));
    assert.ok(out.message!.startsWith("computesdkd is not running: no socket at /tmp/computesdk-65534/computesdk/computesdkd.sock"), out.message);
    // The hint is for when the system daemon's socket cannot even be looked for (its directory is root's).
    let hidden = false;
    try {
      const dir = statSync(path.dirname("/run/computesdk/computesdkd.sock"));
      hidden = dir.isDirectory() && dir.uid !== 65534 && (dir.mode & 0o001) === 0;
    } catch {
      // No /run/computesdk: no system daemon, no hint.
    }
    if (hidden) assert.ok(out.message!.includes(HINT), out.message);
    else assert.ok(!out.message!.includes(HINT), out.message);

    // Not for a socket given by $COMPUTESDK_SOCKET or an option; the default under $XDG_RUNTIME_DIR is still the default.
    const byEnv = await connectAsNobody({}, { COMPUTESDK_SOCKET: "/nonexistent-env/d.sock" });
    assert.equal(byEnv.message, "computesdkd is not running: no socket at /nonexistent-env/d.sock");
    const byOption = await connectAsNobody({ socket: "/nonexistent/d.sock" });
    assert.equal(byOption.message, "computesdkd is not running: no socket at /nonexistent/d.sock");
    const xdg = await connectAsNobody({}, { XDG_RUNTIME_DIR: "/nonexistent-xdg" });
    assert.ok(xdg.message!.startsWith("computesdkd is not running: no socket at /nonexistent-xdg/computesdk/computesdkd.sock"), xdg.message);
    assert.equal(xdg.message!.includes(HINT), hidden, xdg.message);
  }));
