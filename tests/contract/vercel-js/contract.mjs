// Drives the Vercel fake with Vercel's official @vercel/sandbox SDK, unmodified.
//
// The SDK's base URL is fixed (https://vercel.com/api); every entry point
// takes a `fetch` option (WithFetchOptions), which is how Vercel's own mock
// (vercel-sandbox-mock) is plugged in. Here it re-targets that origin at the
// fake, VERCEL_FAKE_URL, and passes everything else through. Credentials
// come from VERCEL_TOKEN, VERCEL_TEAM_ID and VERCEL_PROJECT_ID.
//
// Prints one JSON line per step ({"step", "ok", ...}); exits non-zero on the
// first failure. Every answer the SDK takes is checked by its zod validators.
import assert from "node:assert/strict";
import { Sandbox } from "@vercel/sandbox";

const ORIGIN = "https://vercel.com/api";
const FAKE = process.env.VERCEL_FAKE_URL;
const fetchFake = (input, init) => {
  const url = typeof input === "string" ? input : input.toString();
  assert.ok(url.startsWith(ORIGIN), `the SDK called ${url}`);
  return globalThis.fetch(FAKE + url.slice(ORIGIN.length), init);
};
const creds = {
  token: process.env.VERCEL_TOKEN,
  teamId: process.env.VERCEL_TEAM_ID,
  projectId: process.env.VERCEL_PROJECT_ID,
  fetch: fetchFake,
};
const tag = `js-${process.pid}`;

async function step(name, fn) {
  try {
    const detail = (await fn()) ?? {};
    console.log(JSON.stringify({ step: name, ok: true, ...detail }));
  } catch (err) {
    console.log(JSON.stringify({ step: name, ok: false, error: String(err?.stack ?? err) }));
    process.exit(1);
  }
}

let sandbox;
let legacy;
await step("create (v3, image)", async () => {
  sandbox = await Sandbox.create({
    ...creds,
    resources: { vcpus: 2 },
    timeout: 120_000,
    persistent: false,
    tags: { contract: tag },
    env: { GREETING: "hello" },
  });
  assert.equal(sandbox.status, "running");
  assert.equal(sandbox.persistent, false);
  return { name: sandbox.name };
});
await step("create (v2, runtime)", async () => {
  legacy = await Sandbox.create({ ...creds, runtime: "python3.13", tags: { contract: tag } });
  assert.equal(legacy.runtime, "python3.13");
  assert.equal(legacy.persistent, true); // Vercel's default
});
await step("runCommand: output and exit code", async () => {
  const done = await sandbox.runCommand("sh", ["-c", "echo $GREETING; echo oops >&2; exit 3"]);
  assert.equal(done.exitCode, 3);
  assert.equal(await done.stdout(), "hello\n");
  assert.equal(await done.stderr(), "oops\n");
  const path = await sandbox.runCommand("sh", ["-c", "echo $PATH"]);
  assert.ok((await path.stdout()).split(":").includes("/vercel/bin"));
});
await step("runCommand detached: logs, wait, kill", async () => {
  const cmd = await sandbox.runCommand({ cmd: "sh", args: ["-c", "echo one; echo two"], detached: true });
  const finished = await cmd.wait();
  assert.equal(finished.exitCode, 0);
  assert.equal(await finished.stdout(), "one\ntwo\n");
  const sleeper = await sandbox.runCommand({ cmd: "sleep", args: ["30"], detached: true });
  await sleeper.kill("SIGKILL");
  assert.equal((await sleeper.wait()).exitCode, 137);
});
await step("files: mkDir, writeFiles, readFileToBuffer", async () => {
  await sandbox.mkDir("/vercel/sandbox/dir");
  const data = Buffer.from(Array.from({ length: 4096 }, (_, i) => i % 256));
  await sandbox.writeFiles([{ path: "/vercel/sandbox/dir/blob.bin", content: data }]);
  const back = await sandbox.readFileToBuffer({ path: "/vercel/sandbox/dir/blob.bin" });
  assert.ok(back.equals(data));
  assert.equal(await sandbox.readFileToBuffer({ path: "/vercel/sandbox/missing" }), null);
});
await step("list by tag, get, extendTimeout", async () => {
  const page = await Sandbox.list({ ...creds, tags: { contract: tag } });
  const names = page.sandboxes.map((s) => s.name).sort();
  assert.deepEqual(names, [sandbox.name, legacy.name].sort());
  const again = await Sandbox.get({ ...creds, name: sandbox.name });
  assert.equal(again.name, sandbox.name);
  await sandbox.extendTimeout(60_000);
  assert.equal(sandbox.timeout, 120_000); // the sandbox's default
  assert.equal(sandbox.currentSession().timeout, 180_000);
});
await step("stop and delete", async () => {
  await legacy.stop();
  assert.equal(legacy.status, "stopped");
  await legacy.delete();
  await sandbox.delete();
  const page = await Sandbox.list({ ...creds, tags: { contract: tag } });
  assert.equal(page.sandboxes.length, 0);
});
