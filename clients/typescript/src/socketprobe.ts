// Why the daemon cannot be reached over its Unix socket, said at once instead of
// a generic "cannot reach" after connect()'s timeout. The same rules and words
// as the Python and Go clients.
import * as net from "node:net";
import * as os from "node:os";
import { statSync } from "node:fs";

import { ComputeSDKError, PermissionDeniedError } from "./errors.js";

/** Where a daemon run by root (a system service) listens. */
export const SYSTEM_SOCKET = "/run/computesdk/computesdkd.sock";

const uid = () => process.geteuid?.() ?? os.userInfo().uid;

/**
 * Fails at once, saying why, when nothing can answer at a Unix socket: no file,
 * a stale file nobody listens on, or a socket this user may not connect to. Any
 * other outcome (it accepts; it is slow to, as a busy daemon may be; another
 * error) is left to the connection. isDefault: the path is this user's default,
 * not one from an option or $COMPUTESDK_SOCKET.
 */
export async function probeSocket(path: string, isDefault: boolean, timeoutMs = 2000): Promise<void> {
  // A directory or a plain file refuses a connect like a stale socket does: name it.
  let isSocket = true;
  try {
    isSocket = statSync(path).isSocket();
  } catch {
    // missing or not ours to look at: the connect says which
  }
  if (!isSocket) {
    throw new ComputeSDKError(`${path} is not a socket (is it computesdkd's --socket?)`, "UNAVAILABLE", "DAEMON_UNREACHABLE");
  }
  const code = await new Promise<string | undefined>((resolve) => {
    const s = net.createConnection({ path });
    const done = (code?: string) => {
      clearTimeout(timer);
      s.destroy();
      resolve(code);
    };
    const timer = setTimeout(() => done(), timeoutMs);
    s.once("connect", () => done());
    s.on("error", (err: NodeJS.ErrnoException) => done(err.code));
  });
  switch (code) {
    case "ENOENT":
      throw new ComputeSDKError(`computesdkd is not running: no socket at ${path}${isDefault ? elsewhere() : ""}`, "UNAVAILABLE", "DAEMON_UNREACHABLE");
    case "ECONNREFUSED":
      throw new ComputeSDKError(`computesdkd is not running: ${path} is a stale socket (nothing listens on it)`, "UNAVAILABLE", "DAEMON_UNREACHABLE");
    case "EACCES":
    case "EPERM":
      throw new PermissionDeniedError(
        `permission denied on ${path} (uid ${uid()}): the daemon's socket is its owner's only (mode 0600, in a 0700 directory). ` +
          "Run as that user (for a system daemon, root), or reach its network listener with --address and a token",
        "PERMISSION_DENIED",
        "SOCKET_PERMISSION_DENIED",
      );
  }
}

/**
 * A non-root user's default is under their own runtime dir, so a system daemon's
 * socket is not where they look: say so, rather than only that nothing runs.
 */
function elsewhere(): string {
  if (uid() === 0) return ""; // root's default is the system socket itself
  try {
    statSync(SYSTEM_SOCKET);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    // /run/computesdk is root's: a system daemon may well be there. Anything else: none is.
    if (code !== "EACCES" && code !== "EPERM") return "";
  }
  return (
    ` (the default for uid ${uid()}; a system daemon would listen on ${SYSTEM_SOCKET}, which only root may use: ` +
    "run as root, set COMPUTESDK_SOCKET, or use --address with a token)"
  );
}
