// TCP with TLS and a bearer token: first against a small TLS HTTP/2 server of
// this file's own (what the client sends, how it verifies), then against real
// daemons started with --listen --tls-cert --tls-key [--tls-client-ca].
import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import * as http2 from "node:http2";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { inspect } from "node:util";
import type { AddressInfo } from "node:net";
import { Code, ConnectError, type ConnectRouter } from "@connectrpc/connect";
import { connectNodeAdapter } from "@connectrpc/connect-node";

import { ProviderService } from "../src/gen/computesdk/api/provider/v1/provider_pb.js";
import { EventService } from "../src/gen/computesdk/api/events/v1/events_pb.js";
import { Client, ComputeSDKError, PermissionDeniedError, UnauthenticatedError, connect, type ConnectOptions } from "../src/index.js";
import { issue, makeCA, type CA, type Issued } from "./certs.js";
import { Daemon } from "./daemon.js";

const TOKEN = "tsk_fake.0123456789abcdef";

/** Runs fn with these environment variables set (undefined: unset), then puts them back. */
async function withEnv<T>(vars: Record<string, string | undefined>, fn: () => Promise<T>): Promise<T> {
  const saved = Object.fromEntries(Object.keys(vars).map((k) => [k, process.env[k]]));
  const set = (v: Record<string, string | undefined>) => {
    for (const [k, val] of Object.entries(v)) {
      if (val === undefined) delete process.env[k];
      else process.env[k] = val;
    }
  };
  set(vars);
  try {
    return await fn();
  } finally {
    set(saved);
  }
}

const ENV_NAMES = ["COMPUTESDK_ADDRESS", "COMPUTESDK_TOKEN", "COMPUTESDK_CA", "COMPUTESDK_CLIENT_CERT", "COMPUTESDK_CLIENT_KEY", "COMPUTESDK_INSECURE", "COMPUTESDK_SOCKET"];
const noEnv = Object.fromEntries(ENV_NAMES.map((k) => [k, undefined]));

const unreachable = (e: unknown) => e instanceof ComputeSDKError && e.reason === "DAEMON_UNREACHABLE";

describe("TLS and the token, against a fake server", () => {
  const dir = mkdtempSync(path.join(os.tmpdir(), "computesdk-ts-tls-"));
  let ca: CA;
  let serverCert: Issued;
  let clientCA: CA;
  let otherCA: CA;
  let goodClient: Issued;
  let rogueClient: Issued;
  let server: http2.Http2SecureServer;
  let mtls: http2.Http2SecureServer;
  let address = "";
  let mtlsAddress = "";
  /** The authorization header of every call the servers saw, by method. */
  const seen: { method: string; authorization: string | null }[] = [];

  const routes = (router: ConnectRouter) => {
    router.service(ProviderService, {
      listProviders(_req, ctx) {
        seen.push({ method: "ListProviders", authorization: ctx.requestHeader.get("authorization") });
        return { providers: [{ name: "fake", capabilities: ["exec"] }] };
      },
    });
    router.service(EventService, {
      async *subscribeEvents(_req, ctx) {
        seen.push({ method: "SubscribeEvents", authorization: ctx.requestHeader.get("authorization") });
        if (ctx.requestHeader.get("authorization") !== `Bearer ${TOKEN}`) {
          throw new ConnectError("no", Code.Unauthenticated);
        }
        yield { event: { sequence: 1n, sandboxId: "sbx-1", type: "created" } };
      },
    });
  };

  const listen = (srv: http2.Http2SecureServer) =>
    new Promise<string>((resolve) => srv.listen(0, "127.0.0.1", () => resolve(`127.0.0.1:${(srv.address() as AddressInfo).port}`)));

  before(async () => {
    ca = makeCA(dir, "ca");
    serverCert = issue(ca, dir, "server", "server");
    clientCA = makeCA(dir, "client-ca");
    otherCA = makeCA(dir, "other-ca");
    goodClient = issue(clientCA, dir, "good-client", "client");
    rogueClient = issue(otherCA, dir, "rogue-client", "client");
    const tls = { cert: readFileSync(serverCert.cert), key: readFileSync(serverCert.key), allowHTTP1: false };
    server = http2.createSecureServer(tls, connectNodeAdapter({ routes }));
    mtls = http2.createSecureServer({ ...tls, ca: readFileSync(clientCA.cert), requestCert: true, rejectUnauthorized: true }, connectNodeAdapter({ routes }));
    address = await listen(server);
    mtlsAddress = await listen(mtls);
  });

  after(() => {
    server?.close();
    mtls?.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it("sends the token on unary and streaming calls, trusting only ca", () =>
    withEnv(noEnv, async () => {
      seen.length = 0;
      const client = await connect({ address, ca: ca.cert, token: TOKEN });
      assert.equal(client.target, `https://${address}`);
      assert.deepEqual((await client.providers()).map((p) => p.name), ["fake"]);
      const events = [];
      for await (const ev of client.events({ follow: false })) events.push(ev.type);
      assert.deepEqual(events, ["created"]);
      client.close();
      assert.deepEqual(seen, [
        { method: "ListProviders", authorization: `Bearer ${TOKEN}` },
        { method: "ListProviders", authorization: `Bearer ${TOKEN}` },
        { method: "SubscribeEvents", authorization: `Bearer ${TOKEN}` },
      ]);
    }));

  it("takes the CA as a path, a PEM string or a Buffer, and the name to verify", () =>
    withEnv(noEnv, async () => {
      const pem = readFileSync(ca.cert);
      for (const caOption of [ca.cert, pem.toString(), pem]) (await connect({ address, ca: caOption })).close();
      (await connect({ address: address.replace("127.0.0.1", "localhost"), ca: ca.cert })).close();
      (await connect({ address, ca: ca.cert, serverName: "localhost" })).close();
      await assert.rejects(connect({ address, ca: ca.cert, serverName: "elsewhere.example" }), (e: unknown) => unreachable(e) && /TLS/.test((e as Error).message));
    }));

  it("refuses a server its CA did not sign, and plaintext to a TLS port", () =>
    withEnv(noEnv, async () => {
      // Node's default roots do not know the test CA.
      await assert.rejects(connect({ address, timeoutMs: 3000 }), (e: unknown) => unreachable(e) && /TLS/.test((e as Error).message));
      await assert.rejects(connect({ address, ca: otherCA.cert, timeoutMs: 3000 }), (e: unknown) => unreachable(e) && /TLS/.test((e as Error).message));
      await assert.rejects(connect({ address, insecure: true, timeoutMs: 3000 }), unreachable);
      await assert.rejects(connect({ target: `http://${address}`, timeoutMs: 3000 }), unreachable);
    }));

  it("presents a client certificate for mTLS", () =>
    withEnv(noEnv, async () => {
      (await connect({ address: mtlsAddress, ca: ca.cert, cert: goodClient.cert, key: goodClient.key })).close();
      (await connect({ address: mtlsAddress, ca: ca.cert, cert: readFileSync(goodClient.cert), key: readFileSync(goodClient.key, "utf8") })).close();
      for (const extra of [{}, { cert: rogueClient.cert, key: rogueClient.key }]) {
        await assert.rejects(connect({ address: mtlsAddress, ca: ca.cert, timeoutMs: 3000, ...extra }), unreachable);
      }
    }));

  it("reads the environment, explicit options first", () =>
    withEnv({ ...noEnv, COMPUTESDK_ADDRESS: address, COMPUTESDK_TOKEN: `${TOKEN}\n`, COMPUTESDK_CA: ca.cert, COMPUTESDK_SOCKET: "/nonexistent/env.sock" }, async () => {
      seen.length = 0;
      // COMPUTESDK_ADDRESS beats COMPUTESDK_SOCKET; the token's trailing newline (from $(...)) is dropped.
      const client = await connect();
      assert.equal(client.target, `https://${address}`);
      client.close();
      assert.deepEqual(seen, [{ method: "ListProviders", authorization: `Bearer ${TOKEN}` }]);
      // An explicit token beats the environment's; "" sends none.
      seen.length = 0;
      (await connect({ token: "tsk_other.x" })).close();
      (await connect({ token: "" })).close();
      assert.deepEqual(seen.map((s) => s.authorization), ["Bearer tsk_other.x", null]);
      // An explicit socket beats COMPUTESDK_ADDRESS.
      await assert.rejects(connect({ socket: "/nonexistent/explicit.sock" }), (e: unknown) => unreachable(e) && /explicit\.sock/.test((e as Error).message));
      // An explicit CA beats COMPUTESDK_CA.
      await assert.rejects(connect({ ca: otherCA.cert, timeoutMs: 3000 }), unreachable);
      // COMPUTESDK_INSECURE=1: plaintext, which a TLS port refuses.
      await withEnv({ COMPUTESDK_INSECURE: "1", COMPUTESDK_CA: undefined }, () => assert.rejects(connect({ timeoutMs: 3000 }), unreachable));
      // The environment's client certificate, for mTLS.
      await withEnv({ COMPUTESDK_ADDRESS: mtlsAddress, COMPUTESDK_CLIENT_CERT: goodClient.cert, COMPUTESDK_CLIENT_KEY: goodClient.key }, async () => (await connect()).close());
      await withEnv({ COMPUTESDK_ADDRESS: mtlsAddress, COMPUTESDK_CLIENT_CERT: goodClient.cert }, () => assert.rejects(connect(), /both cert and key/));
    }));

  it("refuses contradictory options without echoing the token", () =>
    withEnv(noEnv, async () => {
      const bad: [ConnectOptions, RegExp][] = [
        [{ socket: "/tmp/x.sock", address }, /one of socket, address and target/],
        [{ address: `https://${address}` }, /not a URL/],
        [{ address: "127.0.0.1" }, /host:port/],
        [{ address, insecure: true, ca: ca.cert }, /plaintext/],
        [{ address, cert: goodClient.cert }, /both cert and key/],
        [{ address, ca: "/nonexistent/ca.pem" }, /cannot read the CA/],
        [{ address, token: "tsk_secret.with space" }, /characters a header cannot carry/],
      ];
      for (const [options, message] of bad) {
        await assert.rejects(connect(options), (e: unknown) => {
          assert.ok(e instanceof ComputeSDKError && e.code === "INVALID_ARGUMENT", String(e));
          assert.match(e.message, message);
          assert.ok(!e.message.includes("tsk_secret"));
          return true;
        });
      }
    }));

  it("keeps the token out of the client and its errors", () =>
    withEnv(noEnv, async () => {
      const client = await connect({ address, ca: ca.cert, token: TOKEN });
      assert.ok(!inspect(client, { depth: 6, showHidden: true }).includes(TOKEN));
      client.close();
      await assert.rejects(connect({ address, ca: otherCA.cert, token: TOKEN, timeoutMs: 3000 }), (e: unknown) => {
        assert.ok(!inspect(e, { depth: 10 }).includes(TOKEN));
        return true;
      });
    }));
});

describe("TLS and the token, against computesdkd", () => {
  const daemon = new Daemon({ listen: "tls", tenant: "ts-tls" });
  let failed = false;
  let admin: Client; // over the admin socket
  before(async () => {
    await daemon.start();
    admin = await connect({ socket: daemon.socket });
  });
  after(async () => {
    admin?.close();
    await daemon.shutdown(failed);
  });
  const tracked = (fn: () => Promise<void>) => async () => {
    try {
      await withEnv(noEnv, fn);
    } catch (err) {
      failed = true;
      throw err;
    }
  };
  const tls = (extra: ConnectOptions = {}): ConnectOptions => ({ address: daemon.address, ca: daemon.ca!.cert, ...extra });
  const refused = (code: string, reason: string, cls: Function) => (e: unknown) => {
    assert.ok(e instanceof cls, `want a ${cls.name}, got ${inspect(e)}`);
    assert.equal((e as ComputeSDKError).code, code);
    assert.equal((e as ComputeSDKError).reason, reason);
    return true;
  };

  it("refuses plaintext on the TLS port", tracked(async () => {
    await assert.rejects(connect({ address: daemon.address, insecure: true, token: daemon.token, timeoutMs: 5000 }), unreachable);
  }));

  it("refuses a missing, wrong, revoked or expired token with its reason", tracked(async () => {
    await assert.rejects(connect(tls()), refused("UNAUTHENTICATED", "TOKEN_MISSING", UnauthenticatedError));
    await assert.rejects(connect(tls({ token: "tsk_nope.nope" })), refused("UNAUTHENTICATED", "TOKEN_INVALID", UnauthenticatedError));
    await assert.rejects(connect(tls({ token: `${daemon.token}x` })), refused("UNAUTHENTICATED", "TOKEN_INVALID", UnauthenticatedError));

    const revoked = await admin.tokens.create(daemon.tenant, { scope: "read", description: "to revoke" });
    assert.equal(revoked.token.tenant, daemon.tenant);
    assert.equal(revoked.token.scope, "read");
    const client = await connect(tls({ token: revoked.secret }));
    await admin.tokens.revoke(revoked.token.id);
    await assert.rejects(client.list(), refused("UNAUTHENTICATED", "TOKEN_REVOKED", UnauthenticatedError));
    client.close();
    assert.ok((await admin.tokens.list(daemon.tenant)).find((t) => t.id === revoked.token.id)?.revokedAt);

    const expiring = await admin.tokens.create(daemon.tenant, { scope: "read", ttlSeconds: 1 });
    await new Promise((r) => setTimeout(r, 2100));
    await assert.rejects(connect(tls({ token: expiring.secret })), refused("UNAUTHENTICATED", "TOKEN_EXPIRED", UnauthenticatedError));
  }));

  it("lets a read token list but not create", tracked(async () => {
    const reader = await connect(tls({ token: await daemon.createToken("read") }));
    assert.ok(Array.isArray(await reader.list()));
    await assert.rejects(reader.create("local"), refused("PERMISSION_DENIED", "SCOPE_INSUFFICIENT", PermissionDeniedError));
    reader.close();
  }));

  it("keeps a tenant's sandboxes its own, and rides out a restart over TLS", tracked(async () => {
    const client = await connect(tls({ token: daemon.token }));
    const other = await connect(tls({ token: await daemon.createToken("admin", "ts-other") }));
    const sb = await client.create("local");
    assert.deepEqual((await client.list()).map((s) => s.id), [sb.id]);
    assert.deepEqual((await other.list()).map((s) => s.id), []);
    other.close();

    const states: string[] = [];
    for (const s of ["connected", "disconnected", "reconnecting"] as const) client.on(s, () => states.push(s));
    const abort = new AbortController();
    const types: string[] = [];
    const sequences: number[] = [];
    const reading = (async () => {
      for await (const ev of sb.events({ signal: abort.signal })) {
        types.push(ev.type);
        sequences.push(ev.sequence);
      }
    })();
    while (!types.includes("ready")) await new Promise((r) => setTimeout(r, 20));
    await daemon.restart();
    assert.equal((await sb.exec(["true"])).exitCode, 0);
    await sb.destroy();
    while (!types.includes("destroyed")) await new Promise((r) => setTimeout(r, 20));
    abort.abort();
    await reading;
    client.close();
    assert.deepEqual(sequences, [...sequences].sort((a, b) => a - b));
    assert.equal(new Set(sequences).size, sequences.length, "an event came twice");
    assert.deepEqual(types.filter((t) => ["created", "ready", "destroyed"].includes(t)), ["created", "ready", "destroyed"]);
    assert.ok(states.includes("disconnected") && states.includes("reconnecting") && states.at(-1) === "connected", JSON.stringify(states));
  }));
});

describe("mTLS, against computesdkd --tls-client-ca", () => {
  const daemon = new Daemon({ listen: "tls", clientCA: true, tenant: "ts-mtls" });
  let failed = false;
  let rogue: Issued;
  before(async () => {
    await daemon.start();
    const otherCA = makeCA(path.join(daemon.root, "tls"), "other-ca");
    rogue = issue(otherCA, path.join(daemon.root, "tls"), "rogue", "client");
  });
  after(() => daemon.shutdown(failed));

  it("takes a client certificate from its CA and refuses others", () =>
    withEnv(noEnv, async () => {
      try {
        const good = await connect(daemon.connectOptions());
        assert.ok(Array.isArray(await good.list()));
        good.close();
        const base = { address: daemon.address, ca: daemon.ca!.cert, token: daemon.token, timeoutMs: 5000 };
        await assert.rejects(connect({ ...base, cert: rogue.cert, key: rogue.key }), ComputeSDKError);
        await assert.rejects(connect(base), ComputeSDKError);
        // The environment's certificate, as COMPUTESDK_CLIENT_CERT and COMPUTESDK_CLIENT_KEY.
        await withEnv(daemon.connectEnv(), async () => (await connect()).close());
      } catch (err) {
        failed = true;
        throw err;
      }
    }));
});

describe("plaintext TCP, against computesdkd --insecure-listen", () => {
  const daemon = new Daemon({ listen: "insecure", tenant: "ts-plain" });
  let failed = false;
  before(() => daemon.start());
  after(() => daemon.shutdown(failed));

  it("still wants the token, and COMPUTESDK_INSECURE=1 reaches it", () =>
    withEnv(noEnv, async () => {
      try {
        await assert.rejects(connect({ address: daemon.address, insecure: true }), (e: unknown) => e instanceof UnauthenticatedError && e.reason === "TOKEN_MISSING");
        // TLS to a plaintext port fails as unreachable.
        await assert.rejects(connect({ address: daemon.address, token: daemon.token, timeoutMs: 5000 }), unreachable);
        const client = await connect(daemon.connectOptions());
        assert.equal(client.target, `http://${daemon.address}`);
        assert.ok(Array.isArray(await client.list()));
        client.close();
        await withEnv(daemon.connectEnv(), async () => (await connect()).close());
      } catch (err) {
        failed = true;
        throw err;
      }
    }));
});
