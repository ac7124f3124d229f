// The TypeScript client's test daemon (clients/typescript/test/daemon.ts, built into
// its dist), loaded by path at run time: one harness for both suites.
import type { Daemon as DaemonType } from "../../typescript/dist/test/daemon.js";

type DaemonModule = typeof import("../../typescript/dist/test/daemon.js");

// dist/test -> clients/typescript/dist/test.
const mod = (await import(new URL("../../../typescript/dist/test/daemon.js", import.meta.url).href)) as DaemonModule;

export const Daemon = mod.Daemon;
export type Daemon = DaemonType;
export const repoRoot = mod.repoRoot;
