// computesdkd-provider through ComputeSDK's own compute API, as a user writes it,
// against a real daemon: every defineProvider method and the semantics README gives.
import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";

import { compute } from "computesdk";
import type { ProviderSandbox } from "@computesdk/provider";
import { Sandbox as DaemonSandbox } from "computesdkd-client";

import { computesdkd, TYPES_KEY, type ComputesdkdProvider, type DaemonCommandResult, type DaemonSandboxInfo } from "../src/index.js";
import { Daemon } from "./harness.js";

const daemon = new Daemon();
let provider: ComputesdkdProvider;
let failed = false;

before(async () => {
  await daemon.start();
  provider = computesdkd({ socket: daemon.socket });
  compute.setConfig({ provider });
});
after(async () => {
  await provider.close();
  await daemon.shutdown(failed);
});

/** Marks the suite failed (the daemon's log is printed) and rethrows. */
async function tracked(fn: () => Promise<void>): Promise<void> {
  try {
    await fn();
  } catch (err) {
    failed = true;
    throw err;
  }
}

type Sb = Awaited<ReturnType<typeof compute.sandbox.create>>;

/** Our client's sandbox behind ComputeSDK's (ComputeSDK's ProviderSandbox.getInstance()). */
const native = (sb: Sb) => (sb as unknown as ProviderSandbox<DaemonSandbox>).getInstance();

async function withSandbox(options: Parameters<typeof compute.sandbox.create>[0], fn: (sb: Sb) => Promise<void>): Promise<void> {
  const sb = await compute.sandbox.create(options);
  try {
    await fn(sb);
  } finally {
    await sb.destroy();
  }
}

describe("sandbox lifecycle", () => {
  it("creates, finds, lists and destroys, and a second destroy is no error", () =>
    tracked(async () => {
      const sb = await compute.sandbox.create({ name: "p19", metadata: { team: "a", n: 2, on: true, tags: ["x"] }, timeout: 120_000, envs: { GREETING: "hi" } });
      assert.equal(sb.provider, "computesdkd");
      const info = (await sb.getInfo()) as DaemonSandboxInfo;
      assert.equal(info.id, sb.sandboxId);
      assert.equal(info.provider, "computesdkd");
      assert.equal(info.status, "running");
      assert.equal(info.timeout, 120_000);
      assert.ok(info.createdAt instanceof Date && info.createdAt.getTime() > 0);
      // Values come back with their types; strings stay plain strings for other clients.
      assert.deepEqual(info.metadata, { team: "a", n: 2, on: true, tags: ["x"], name: "p19" });
      const raw = native(sb).metadata;
      assert.equal(raw.team, "a");
      assert.equal(raw.n, "2");
      assert.deepEqual(JSON.parse(raw[TYPES_KEY]!), ["n", "on", "tags"]);
      assert.equal((await sb.runCommand("echo $GREETING")).stdout, "hi\n");

      const again = await compute.sandbox.getById(sb.sandboxId);
      assert.equal(again?.sandboxId, sb.sandboxId);
      assert.ok((await compute.sandbox.list()).some((s) => s.sandboxId === sb.sandboxId));

      await sb.destroy();
      await sb.destroy();
      await compute.sandbox.destroy(sb.sandboxId);
      assert.equal(await compute.sandbox.getById(sb.sandboxId), null);
      assert.ok(!(await compute.sandbox.list()).some((s) => s.sandboxId === sb.sandboxId));
    }));

  it("maps templateId, runtime and the resource knobs", () =>
    tracked(async () => {
      await withSandbox({ templateId: "node", cpu: 1, memory: 256 }, async (sb) => {
        const info = (await sb.getInfo()) as DaemonSandboxInfo;
        assert.equal(info.template, "node");
        const status = await native(sb).getStatus();
        assert.equal(status.resources.memoryMB, 256);
        assert.equal(status.resources.cpuCores, 1);
        assert.match((await sb.runCommand("node -v")).stdout, /^v\d+/);
      });
      await withSandbox({ runtime: "python" }, async (sb) => {
        assert.equal(((await sb.getInfo()) as DaemonSandboxInfo).template, "python");
      });
    }));

  it("exposes options.ports at create, before anything listens", () =>
    tracked(async () => {
      await withSandbox({ ports: [3000] }, async (sb) => {
        const info = (await sb.getInfo()) as DaemonSandboxInfo;
        assert.match(info.urls[3000] ?? "", /^http:\/\/127\.0\.0\.1:\d+$/);
        assert.equal(await sb.getUrl({ port: 3000 }), info.urls[3000]);
      });
    }));
});

describe("runCommand", () => {
  it("gives exit codes, cwd, env, a timeout's 124, and a missing cwd's exit 1 without throwing", () =>
    tracked(async () => {
      await withSandbox({}, async (sb) => {
        const ok = (await sb.runCommand("pwd; echo $A; echo err >&2", { cwd: "/tmp", env: { A: "b" } })) as DaemonCommandResult;
        assert.equal(ok.stdout, "/tmp\nb\n");
        assert.equal(ok.stderr, "err\n");
        assert.equal(ok.exitCode, 0);
        assert.ok(ok.durationMs >= 0);

        const bad = await sb.runCommand("exit 3");
        assert.equal(bad.exitCode, 3);

        const slow = (await sb.runCommand("sleep 30", { timeout: 300 })) as DaemonCommandResult;
        assert.equal(slow.exitCode, 124);
        assert.equal(slow.timedOut, true);

        const killed = (await sb.runCommand("kill -9 $$")) as DaemonCommandResult;
        assert.equal(killed.exitCode, 137);
        assert.equal(killed.signal, 9);

        const lost = await sb.runCommand("echo never", { cwd: "/no/such/dir" });
        assert.equal(lost.exitCode, 1);
        assert.equal(lost.stdout, "");
        assert.match(lost.stderr, /\/no\/such\/dir/);
        const lostBg = await sb.runCommand("echo never", { cwd: "/no/such/dir", background: true });
        assert.equal(lostBg.exitCode, 1);
      });
    }));

  it("streams onStdout and onStderr while the command runs", () =>
    tracked(async () => {
      await withSandbox({}, async (sb) => {
        const out: string[] = [];
        const err: string[] = [];
        // The command waits for a file that only the onStdout callback writes: it finishes only if output streams.
        const r = await sb.runCommand("echo ready; i=0; while [ ! -f /tmp/go ] && [ $i -lt 600 ]; do sleep 0.05; i=$((i+1)); done; echo done >&2; test -f /tmp/go", {
          onStdout: (d) => {
            out.push(d);
            if (d.includes("ready")) void sb.filesystem.writeFile("/tmp/go", "1");
          },
          onStderr: (d) => err.push(d),
          timeout: 60_000,
        });
        assert.equal(r.exitCode, 0);
        assert.equal(out.join(""), "ready\n");
        assert.equal(err.join(""), "done\n");
        assert.equal(r.stdout, "ready\n");
        assert.equal(r.stderr, "done\n");
      });
    }));

  it("runs background commands as daemon processes that can be re-attached by id", () =>
    tracked(async () => {
      await withSandbox({}, async (sb) => {
        const r = (await sb.runCommand("sleep 0.2; echo bg > /tmp/bg.txt; echo out", { background: true })) as DaemonCommandResult;
        assert.equal(r.exitCode, 0);
        assert.ok(r.processId);
        const done = await native(sb).process(r.processId).wait();
        assert.equal(done.stdout, "out\n");
        assert.equal(await sb.filesystem.readFile("/tmp/bg.txt"), "bg\n");
        // And from another connection: the id is the daemon's, not this object's.
        const client = await provider.client();
        const seen = (await (await client.get(sb.sandboxId)).processes()).map((p) => p.processId);
        assert.ok(seen.includes(r.processId));
      });
    }));
});

describe("getUrl", () => {
  it("gives a URL before the server listens, which works once it does; ws; https refused unless rewritten", () =>
    tracked(async () => {
      await withSandbox({ templateId: "python" }, async (sb) => {
        const url = await sb.getUrl({ port: 8000 });
        assert.match(url, /^http:\/\/127\.0\.0\.1:\d+$/);
        await sb.filesystem.writeFile("/tmp/www/hello.txt", "hello");
        await sb.runCommand("python3 -m http.server 8000 --bind 127.0.0.1", { cwd: "/tmp/www", background: true });
        let body = "";
        for (let i = 0; i < 200 && body !== "hello"; i++) {
          body = await fetch(`${url}/hello.txt`).then((r) => (r.ok ? r.text() : ""), () => "");
          if (body !== "hello") await new Promise((r) => setTimeout(r, 50));
        }
        assert.equal(body, "hello");
        assert.equal(await sb.getUrl({ port: 8000, protocol: "ws" }), url.replace("http:", "ws:"));
        await assert.rejects(sb.getUrl({ port: 8000, protocol: "https" }), /plain HTTP/);
      });
      const rewriting = computesdkd({ socket: daemon.socket, publicUrl: (u, p) => `${p}://proxy.example${new URL(u).pathname.replace(/\/$/, "")}` });
      try {
        const sb = await rewriting.sandbox.create();
        assert.equal(await sb.getUrl({ port: 80, protocol: "https" }), "https://proxy.example");
        await sb.destroy();
      } finally {
        await rewriting.close();
      }
    }));
});

describe("filesystem", () => {
  it("reads, writes, lists, checks and removes like rm -rf", () =>
    tracked(async () => {
      await withSandbox({}, async (sb) => {
        const fs = sb.filesystem;
        await fs.mkdir("/workspace/a/b");
        await fs.mkdir("/workspace/a/b");
        await fs.writeFile("/workspace/a/b/f.txt", "héllo");
        await fs.writeFile("/workspace/a/new/g.txt", "g");
        assert.equal(await fs.readFile("/workspace/a/b/f.txt"), "héllo");
        const entries = (await fs.readdir("/workspace/a")).map((e) => [e.name, e.type]).sort();
        assert.deepEqual(entries, [["b", "directory"], ["new", "directory"]]);
        const [f] = await fs.readdir("/workspace/a/b");
        assert.equal(f?.type, "file");
        assert.equal(f?.size, Buffer.byteLength("héllo"));
        assert.ok(f?.modified instanceof Date);
        assert.equal(await fs.exists("/workspace/a/b/f.txt"), true);
        assert.equal(await fs.exists("/workspace/nope"), false);
        await fs.remove("/workspace/a");
        assert.equal(await fs.exists("/workspace/a"), false);
        await fs.remove("/workspace/a");
        await assert.rejects(fs.readFile("/workspace/a/b/f.txt"));
      });
    }));
});

describe("templates and snapshots", () => {
  it("builds, lists and deletes a template, and creates from it", () =>
    tracked(async () => {
      const tpl = provider.template!;
      const name = "p19-tpl";
      const built = await tpl.create({ name, description: "from the provider test", setup: ["echo made > /etc/p19"] } as never);
      assert.equal((built as { name: string }).name, name);
      assert.ok((await tpl.list()).some((t) => (t as { name: string }).name === name));
      await withSandbox({ templateId: name }, async (sb) => {
        assert.equal((await sb.runCommand("cat /etc/p19")).stdout, "made\n");
      });
      await assert.rejects(tpl.create({ name: "p19-bad", setup: ["echo broken >&2; exit 7"] } as never), (err: Error) => err.name === "TemplateBuildError" && /broken/.test(err.message));
      // An image is built once into a template named by its hash; "template:NAME" needs no registry.
      let fromImage = "";
      await withSandbox({ image: `template:${name}` }, async (sb) => {
        fromImage = ((await sb.getInfo()) as DaemonSandboxInfo).template;
        assert.match(fromImage, /^image-[0-9a-f]{16}$/);
        assert.equal((await sb.runCommand("cat /etc/p19")).stdout, "made\n");
      });
      await tpl.delete(fromImage);
      await tpl.delete(name);
      await tpl.delete(name);
      assert.ok(!(await tpl.list()).some((t) => (t as { name: string }).name === name));
    }));

  it("snapshots are saved states: new sandboxes start from them by snapshotId", () =>
    tracked(async () => {
      let snapshotId = "";
      await withSandbox({ templateId: "python" }, async (sb) => {
        await sb.filesystem.writeFile("/workspace/kept.txt", "kept");
        const snap = await compute.snapshot.create(sb.sandboxId, { name: "p19-snap" });
        assert.equal(snap.provider, "computesdkd");
        assert.ok(snap.createdAt instanceof Date);
        assert.equal(snap.metadata?.name, "p19-snap");
        assert.equal(snap.metadata?.sandboxId, sb.sandboxId);
        snapshotId = snap.id;
        const mine = await provider.snapshot!.list({ sandboxId: sb.sandboxId });
        assert.deepEqual(mine.map((s) => s.id), [snapshotId]);
      });
      assert.ok((await compute.snapshot.list()).some((s) => s.id === snapshotId));
      await withSandbox({ snapshotId }, async (sb) => {
        assert.equal(await sb.filesystem.readFile("/workspace/kept.txt"), "kept");
        assert.equal(((await sb.getInfo()) as DaemonSandboxInfo).template, "python");
      });
      await compute.snapshot.delete(snapshotId);
      await compute.snapshot.delete(snapshotId);
      assert.ok(!(await compute.snapshot.list()).some((s) => s.id === snapshotId));
    }));
});
