// Who may call the daemon over the network: client.tokens and client.quotas.
//
// On the Unix socket every tenant is in reach. Over TCP a token of scope
// "admin" reaches its own tenant only (its tokens, its quota read-only).

import { Scope as ScopeProto, type Quota as QuotaProto, type Token as TokenProto, type Usage as UsageProto } from "./gen/computesdk/api/admin/v1/admin_pb.js";
import { InvalidArgumentError } from "./errors.js";
import type { Client } from "./client.js";
import { toDate } from "./convert.js";

/** What a token may do within its tenant; each includes the one before. */
export type Scope = "read" | "write" | "admin";

export interface TokenInfo {
  /** Public; the first part of the secret. */
  id: string;
  tenant: string;
  scope: Scope;
  description: string;
  createdAt: Date | undefined;
  /** undefined: never expires. */
  expiresAt: Date | undefined;
  /** Set once revoked. */
  revokedAt: Date | undefined;
}

/** A tenant's bounds; 0 in a field means no bound. */
export interface Quota {
  maxSandboxes: number;
  maxCpuCores: number;
  maxMemoryMB: number;
  maxDiskMB: number;
  maxVolumeMB: number;
  /** Sandboxes created per second (a token bucket: bursts of this many). */
  createsPerSecond: number;
}

/** What a tenant holds now, in a Quota's units. */
export interface QuotaUsage {
  sandboxes: number;
  cpuCores: number;
  memoryMB: number;
  diskMB: number;
  volumeMB: number;
}

const SCOPES: Record<Scope, ScopeProto> = { read: ScopeProto.READ, write: ScopeProto.WRITE, admin: ScopeProto.ADMIN };

function scopeToProto(scope: Scope | undefined): ScopeProto {
  if (scope === undefined) return ScopeProto.UNSPECIFIED;
  const v = SCOPES[scope];
  if (v === undefined) throw new InvalidArgumentError(`unknown scope ${scope} (read, write or admin)`, "INVALID_ARGUMENT", "INVALID_ARGUMENT");
  return v;
}

function tokenInfo(t: TokenProto | undefined): TokenInfo {
  const scope = (Object.keys(SCOPES) as Scope[]).find((k) => SCOPES[k] === t?.scope) ?? "write";
  return {
    id: t?.id ?? "",
    tenant: t?.tenant ?? "",
    scope,
    description: t?.description ?? "",
    createdAt: toDate(t?.createTime),
    expiresAt: toDate(t?.expireTime),
    revokedAt: toDate(t?.revokeTime),
  };
}

function quotaInfo(q: QuotaProto | undefined): Quota {
  return {
    maxSandboxes: q?.maxSandboxes ?? 0,
    maxCpuCores: q?.maxCpuCores ?? 0,
    maxMemoryMB: Number(q?.maxMemoryMb ?? 0n),
    maxDiskMB: Number(q?.maxDiskMb ?? 0n),
    maxVolumeMB: Number(q?.maxVolumeMb ?? 0n),
    createsPerSecond: q?.createsPerSecond ?? 0,
  };
}

function usageInfo(u: UsageProto | undefined): QuotaUsage {
  return {
    sandboxes: u?.sandboxes ?? 0,
    cpuCores: u?.cpuCores ?? 0,
    memoryMB: Number(u?.memoryMb ?? 0n),
    diskMB: Number(u?.diskMb ?? 0n),
    volumeMB: Number(u?.volumeMb ?? 0n),
  };
}

/** Bearer tokens for the daemon's TCP listener. */
export class Tokens {
  constructor(private readonly client: Client) {}

  /**
   * Makes a token. The secret (what ConnectOptions.token takes) is in this
   * answer only: the daemon keeps a hash. Scope defaults to "write".
   */
  async create(tenant: string, options: { scope?: Scope; description?: string; ttlSeconds?: number } = {}): Promise<{ token: TokenInfo; secret: string }> {
    const resp = await this.client.raw.admin.createToken({
      tenant,
      scope: scopeToProto(options.scope),
      description: options.description ?? "",
      ttlSeconds: BigInt(options.ttlSeconds ?? 0),
    });
    return { token: tokenInfo(resp.token), secret: resp.secret };
  }

  /** Tokens in reach (never their secrets), revoked ones included; tenant "" is every tenant in reach. */
  async list(tenant = ""): Promise<TokenInfo[]> {
    return (await this.client.raw.admin.listTokens({ tenant })).tokens.map(tokenInfo);
  }

  /** Makes the token useless at once; calls in flight finish. */
  async revoke(id: string): Promise<TokenInfo> {
    return tokenInfo((await this.client.raw.admin.revokeToken({ id })).token);
  }
}

/** Per-tenant quotas. */
export class Quotas {
  constructor(private readonly client: Client) {}

  async get(tenant: string): Promise<{ quota: Quota; usage: QuotaUsage }> {
    const resp = await this.client.raw.admin.getQuota({ tenant });
    return { quota: quotaInfo(resp.quota), usage: usageInfo(resp.usage) };
  }

  /** Replaces the tenant's quota (fields left out are 0: no bound). Over the Unix socket only. */
  async set(tenant: string, quota: Partial<Quota>): Promise<Quota> {
    const resp = await this.client.raw.admin.setQuota({
      tenant,
      quota: {
        maxSandboxes: quota.maxSandboxes ?? 0,
        maxCpuCores: quota.maxCpuCores ?? 0,
        maxMemoryMb: BigInt(quota.maxMemoryMB ?? 0),
        maxDiskMb: BigInt(quota.maxDiskMB ?? 0),
        maxVolumeMb: BigInt(quota.maxVolumeMB ?? 0),
        createsPerSecond: quota.createsPerSecond ?? 0,
      },
    });
    return quotaInfo(resp.quota);
  }
}
