// Between the wire's messages and the client's shapes: resources, states, times and bytes.
import { timestampDate, type Timestamp } from "@bufbuild/protobuf/wkt";

import { State, type Resources as ResourcesMessage } from "./gen/computesdk/api/sandbox/v1/sandbox_pb.js";

/** The largest stdin or file piece sent in one message. */
export const CHUNK = 1024 * 1024;

export interface Resources {
  cpuCores?: number;
  memoryMB?: number;
  diskMB?: number;
  pidsLimit?: number;
  gpu?: { enabled: boolean; type?: string; count?: number };
}

export function resourcesToProto(r: Resources | undefined) {
  return {
    cpuCores: r?.cpuCores ?? 0,
    memoryMb: BigInt(r?.memoryMB ?? 0),
    diskMb: BigInt(r?.diskMB ?? 0),
    pidsLimit: r?.pidsLimit ?? 0,
    gpu: r?.gpu ? { enabled: r.gpu.enabled, type: r.gpu.type ?? "", count: r.gpu.count ?? 0 } : undefined,
  };
}

export function resourcesFromProto(r: ResourcesMessage | undefined): Resources {
  const out: Resources = {
    cpuCores: r?.cpuCores ?? 0,
    memoryMB: Number(r?.memoryMb ?? 0n),
    diskMB: Number(r?.diskMb ?? 0n),
    pidsLimit: r?.pidsLimit ?? 0,
  };
  if (r?.gpu?.enabled) out.gpu = { enabled: true, type: r.gpu.type, count: r.gpu.count };
  return out;
}

/** 'creating', 'running', 'stopping', 'stopped', 'error'. */
export function stateName(s: State): string {
  return State[s].replace(/^STATE_/, "").toLowerCase();
}

export function toDate(t: Timestamp | undefined): Date | undefined {
  return t ? timestampDate(t) : undefined;
}

export const bytesOf = (d: string | Uint8Array) => (typeof d === "string" ? new TextEncoder().encode(d) : d);
export const decoder = new TextDecoder();

export function concat(parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}
