// What create asks for: the options, with their volumes and inline templates, and the request they become.
import { randomUUID } from "node:crypto";

import { PoolPolicy } from "./gen/computesdk/api/sandbox/v1/sandbox_pb.js";
import type { TemplateDefinition } from "./templates.js";
import { resourcesToProto, type Resources } from "./convert.js";
import { CONNECT_KEYS, type ConnectOptions } from "./connection.js";

/** A volume to mount, the spec's way ({ name, path, size: '10GB', persistent } or { name, path, mountExisting: true }). */
export interface VolumeSpec {
  name: string;
  /** Where it is mounted (mountPath is the older spelling). */
  path?: string;
  mountPath?: string;
  readOnly?: boolean;
  /** For a volume this create makes: "10GB" (10^9 bytes), "10GiB", "512MB"; a bare number is MB. The daemon parses it. */
  size?: string | number;
  /** The size in MB, the older spelling; size wins. */
  sizeMB?: number;
  /** A volume this create makes outlives the sandbox (default: removed with it). */
  persistent?: boolean;
  /** The volume must exist: NOT_FOUND VOLUME_NOT_FOUND instead of making it. */
  mountExisting?: boolean;
}

/** An inline template: built (a cache hit when built before with the same definition), then used. */
export type TemplateSpec = TemplateDefinition & { name: string };

export interface CreateOptions {
  /** A template's name, or a definition to build first. */
  template?: string | TemplateSpec;
  metadata?: Record<string, string>;
  /** Idle lifetime before the daemon reaps the sandbox. */
  timeoutMs?: number;
  keepAlive?: boolean;
  resources?: Resources;
  env?: Record<string, string>;
  /** Makes retries of this create idempotent (a random id is the default). */
  requestId?: string;
  /** Tried in order when the provider is down. */
  fallbackProviders?: string[];
  /** Take a never-used warm sandbox from a matching pool: undefined follows the daemon. */
  usePool?: boolean;
  /** Start from a saved state (sandbox.saveState(), client.states.save) instead of the template. */
  restoreFrom?: string;
  /** Start from an archive (sandbox.exportState()): imported, then the sandbox is the import's. */
  importState?: Uint8Array;
  /** Volumes to mount; a name not there yet is made (size, persistent) unless mountExisting. */
  volumes?: VolumeSpec[];
}

/** The CreateSandboxRequest for these options (template a name by now). */
export function createRequest(provider: string, o: Omit<CreateOptions, "template"> & { template?: string }) {
  return {
    provider,
    template: o.template ?? "",
    metadata: o.metadata ?? {},
    timeoutMs: BigInt(o.timeoutMs ?? 0),
    keepAlive: o.keepAlive ?? false,
    resources: resourcesToProto(o.resources),
    env: o.env ?? {},
    requestId: o.requestId ?? randomUUID(),
    fallbackProviders: o.fallbackProviders ?? [],
    poolPolicy: o.usePool === undefined ? PoolPolicy.UNSPECIFIED : o.usePool ? PoolPolicy.ALLOW : PoolPolicy.NEVER,
    restoreFrom: o.restoreFrom ?? "",
    volumes: (o.volumes ?? []).map((v) => ({
      name: v.name,
      mountPath: v.path ?? v.mountPath ?? "",
      readOnly: v.readOnly ?? false,
      // A size string goes as given (the daemon parses it); a number is MB.
      size: typeof v.size === "string" ? v.size : "",
      sizeMb: BigInt(typeof v.size === "number" ? Math.ceil(v.size) : (v.sizeMB ?? 0)),
      persistent: v.persistent ?? false,
      mustExist: v.mountExisting ?? false,
    })),
  };
}

/** The create options without the connection's (sandbox.config must not hold a token). */
export function createOptionsOnly(o: CreateOptions & ConnectOptions): CreateOptions {
  const out: Record<string, unknown> = { ...o };
  for (const k of CONNECT_KEYS) delete out[k];
  return out as CreateOptions;
}
