// Test PKI made with the openssl CLI: a CA, and server or client certificates it signs.
import { execFileSync } from "node:child_process";
import { chmodSync, mkdirSync, writeFileSync } from "node:fs";
import * as path from "node:path";

const OPENSSL = process.env.OPENSSL ?? "/usr/bin/openssl";

function openssl(args: string[]): void {
  execFileSync(OPENSSL, args, { stdio: ["ignore", "ignore", "pipe"] });
}

const newKey = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];

export interface CA {
  name: string;
  /** The CA certificate, PEM. */
  cert: string;
  key: string;
}

export interface Issued {
  cert: string;
  key: string;
}

/** A self-signed CA in dir/name.pem and dir/name.key. */
export function makeCA(dir: string, name: string): CA {
  mkdirSync(dir, { recursive: true });
  const ca = { name, cert: path.join(dir, `${name}.pem`), key: path.join(dir, `${name}.key`) };
  openssl([
    "req", "-x509", ...newKey, "-keyout", ca.key, "-out", ca.cert, "-days", "2",
    "-subj", `/CN=computesdk test ${name}`,
    "-addext", "basicConstraints=critical,CA:TRUE",
    "-addext", "keyUsage=critical,keyCertSign,cRLSign",
  ]);
  chmodSync(ca.key, 0o600);
  return ca;
}

/**
 * A certificate signed by ca in dir/name.pem and dir/name.key: a server one
 * for IP:127.0.0.1 and DNS:localhost, or a client one.
 */
export function issue(ca: CA, dir: string, name: string, usage: "server" | "client"): Issued {
  const out = { cert: path.join(dir, `${name}.pem`), key: path.join(dir, `${name}.key`) };
  const csr = path.join(dir, `${name}.csr`);
  const ext = path.join(dir, `${name}.ext`);
  openssl(["req", ...newKey, "-keyout", out.key, "-out", csr, "-subj", `/CN=${usage === "server" ? "localhost" : name}`]);
  chmodSync(out.key, 0o600);
  writeFileSync(
    ext,
    [
      "basicConstraints=CA:FALSE",
      "keyUsage=critical,digitalSignature,keyEncipherment",
      usage === "server" ? "extendedKeyUsage=serverAuth" : "extendedKeyUsage=clientAuth",
      ...(usage === "server" ? ["subjectAltName=IP:127.0.0.1,DNS:localhost"] : []),
      "",
    ].join("\n"),
  );
  openssl(["x509", "-req", "-in", csr, "-CA", ca.cert, "-CAkey", ca.key, "-set_serial", `0x${Date.now().toString(16)}${Math.floor(Math.random() * 1e6).toString(16)}`, "-out", out.cert, "-days", "2", "-extfile", ext]);
  return out;
}
