// Calls about many sandboxes at once: warm pools, groups, shared networks and
// message channels. Reached as client.pools, client.groups, client.networks and
// client.channels; createSharedNetwork() and MessageQueue read like the spec.

import type { Pool } from "./gen/computesdk/api/pool/v1/pool_pb.js";
import type { Network } from "./gen/computesdk/api/network/v1/network_pb.js";
import { codeName, ComputeSDKError, InvalidArgumentError, typedError } from "./errors.js";
import { Sandbox } from "./sandbox.js";
import { resourcesToProto, toDate, type Resources } from "./convert.js";
import { commandToProto, resultFromParts, type CommandLine, type ExecResult } from "./exec.js";
import type { Client } from "./client.js";
import { linked } from "./background.js";

type SandboxRef = string | Sandbox;
const idOf = (s: SandboxRef) => (typeof s === "string" ? s : s.id);

export interface PoolInfo {
  name: string;
  provider: string;
  template: string;
  min: number;
  max: number;
  idle: number;
  leased: number;
  creating: number;
  acquiredTotal: number;
  hitsTotal: number;
  missesTotal: number;
  releasedTotal: number;
  createdTotal: number;
  discardedTotal: number;
  createDrawsTotal: number;
  draining: boolean;
}

function poolInfo(p: Pool | undefined): PoolInfo {
  const s = p?.spec;
  const t = p?.stats;
  const n = (v: bigint | undefined) => Number(v ?? 0n);
  return {
    name: s?.name ?? "",
    provider: s?.provider ?? "",
    template: s?.template ?? "",
    min: s?.min ?? 0,
    max: s?.max ?? 0,
    idle: t?.idle ?? 0,
    leased: t?.leased ?? 0,
    creating: t?.creating ?? 0,
    acquiredTotal: n(t?.acquiredTotal),
    hitsTotal: n(t?.hitsTotal),
    missesTotal: n(t?.missesTotal),
    releasedTotal: n(t?.releasedTotal),
    createdTotal: n(t?.createdTotal),
    discardedTotal: n(t?.discardedTotal),
    createDrawsTotal: n(t?.createDrawsTotal),
    draining: p?.draining ?? false,
  };
}

export class Pools {
  constructor(private readonly client: Client) {}

  async create(name: string, options: { provider?: string; template?: string; min?: number; max?: number; resources?: Resources; env?: Record<string, string> } = {}): Promise<PoolInfo> {
    const resp = await this.client.raw.pools.createPool({
      spec: {
        name,
        provider: options.provider ?? "",
        template: options.template ?? "",
        min: options.min ?? 1,
        max: options.max ?? 10,
        resources: resourcesToProto(options.resources),
        env: options.env ?? {},
      },
    });
    return poolInfo(resp.pool);
  }

  async get(name: string): Promise<PoolInfo> {
    return poolInfo((await this.client.raw.pools.getPool({ name })).pool);
  }

  async list(): Promise<PoolInfo[]> {
    return (await this.client.raw.pools.listPools({})).pools.map(poolInfo);
  }

  async delete(name: string): Promise<void> {
    await this.client.raw.pools.deletePool({ name });
  }

  /** A healthy warm sandbox; release() gives it back. */
  async acquire(name: string, options: { metadata?: Record<string, string>; waitTimeoutMs?: number } = {}): Promise<Sandbox> {
    const resp = await this.client.raw.pools.acquireSandbox({ pool: name, metadata: options.metadata ?? {}, waitTimeoutMs: BigInt(options.waitTimeoutMs ?? 0) });
    return new Sandbox(this.client, resp.sandbox!);
  }

  /** Resets the sandbox and returns it to its pool (true), or destroys it (false). */
  async release(sandbox: SandboxRef, options: { hard?: boolean } = {}): Promise<boolean> {
    const resp = await this.client.raw.pools.releaseSandbox({ sandboxId: idOf(sandbox), hard: options.hard ?? false });
    return resp.returned;
  }
}

export interface MemberResult {
  sandboxId: string;
  result: ExecResult | undefined;
  error: ComputeSDKError | undefined;
  ok: boolean;
}

export class Groups {
  constructor(private readonly client: Client) {}

  async create(name: string, members: SandboxRef[] = []): Promise<string[]> {
    return (await this.client.raw.groups.createGroup({ name, sandboxIds: members.map(idOf) })).group!.sandboxIds;
  }

  async get(name: string): Promise<string[]> {
    return (await this.client.raw.groups.getGroup({ name })).group!.sandboxIds;
  }

  async list(): Promise<Record<string, string[]>> {
    const resp = await this.client.raw.groups.listGroups({});
    return Object.fromEntries(resp.groups.map((g) => [g.name, g.sandboxIds]));
  }

  async add(name: string, members: SandboxRef[]): Promise<string[]> {
    return (await this.client.raw.groups.addGroupMembers({ name, sandboxIds: members.map(idOf) })).group!.sandboxIds;
  }

  async remove(name: string, members: SandboxRef[]): Promise<string[]> {
    return (await this.client.raw.groups.removeGroupMembers({ name, sandboxIds: members.map(idOf) })).group!.sandboxIds;
  }

  /** Runs command on every member at once; yields each member's outcome as it finishes. */
  async *broadcast(name: string, command: CommandLine, options: { cwd?: string; env?: Record<string, string>; timeoutMs?: number } = {}): AsyncGenerator<MemberResult> {
    const call = linked(undefined);
    try {
      yield* this.outcomes(name, command, options, call.signal);
    } finally {
      call.abort(); // a caller that leaves early ends the call
    }
  }

  private async *outcomes(name: string, command: CommandLine, options: { cwd?: string; env?: Record<string, string>; timeoutMs?: number }, signal: AbortSignal): AsyncGenerator<MemberResult> {
    for await (const resp of this.client.raw.groups.broadcast({ name, command: commandToProto(command, options) }, { signal })) {
      const o = resp.outcome;
      if (o.case === "error") {
        const error = typedError(o.value.code, o.value.reason, o.value.message);
        yield { sandboxId: resp.sandboxId, result: undefined, error, ok: false };
      } else if (o.case === "result") {
        const result = resultFromParts([o.value.stdout], [o.value.stderr], o.value.exited!, "");
        yield { sandboxId: resp.sandboxId, result, error: undefined, ok: result.exitCode === 0 };
      }
    }
  }

  /** Destroys every member and forgets the group. */
  async destroyAll(name: string): Promise<string[]> {
    return (await this.client.raw.groups.deleteGroup({ name, destroyMembers: true })).destroyedSandboxIds;
  }

  /** Forgets the group; the members stay. */
  async delete(name: string): Promise<void> {
    await this.client.raw.groups.deleteGroup({ name, destroyMembers: false });
  }
}

export interface NetworkInfo {
  name: string;
  subnet: string;
  members: { sandboxId: string; hostname: string; address: string }[];
}

const networkInfo = (n: Network | undefined): NetworkInfo => ({
  name: n?.name ?? "",
  subnet: n?.subnet ?? "",
  members: (n?.members ?? []).map((m) => ({ sandboxId: m.sandboxId, hostname: m.hostname, address: m.address })),
});

export class Networks {
  constructor(private readonly client: Client) {}

  /** members: sandboxes (named by their ids) or { hostname: sandbox }. */
  async create(name: string, members: SandboxRef[] | Record<string, SandboxRef>): Promise<NetworkInfo> {
    const list = Array.isArray(members)
      ? members.map((s) => ({ sandboxId: idOf(s), hostname: "" }))
      : Object.entries(members).map(([hostname, s]) => ({ sandboxId: idOf(s), hostname }));
    return networkInfo((await this.client.raw.networks.createNetwork({ name, members: list })).network);
  }

  async get(name: string): Promise<NetworkInfo> {
    return networkInfo((await this.client.raw.networks.getNetwork({ name })).network);
  }

  async list(): Promise<NetworkInfo[]> {
    return (await this.client.raw.networks.listNetworks({})).networks.map(networkInfo);
  }

  async delete(name: string): Promise<void> {
    await this.client.raw.networks.deleteNetwork({ name });
  }

  /** The URL other members use to reach member's port. */
  async getServiceUrl(network: string, member: string, port: number): Promise<string> {
    return (await this.client.raw.networks.getServiceUrl({ network, member, port })).url;
  }

  /** A URL on the host's loopback that forwards to the sandbox's port. */
  async getUrl(sandbox: SandboxRef, port: number): Promise<string> {
    return (await this.client.raw.networks.exposePort({ sandboxId: idOf(sandbox), port })).url;
  }
}

/** A hostname a member can have: a DNS label, as the daemon requires. */
const SERVICE_NAME = /^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/;

/**
 * A shared network as the spec uses it. A member's name, which the others
 * resolve, is its env SERVICE_NAME (set at create or later with setEnv), else
 * its metadata "service", else metadata "name", else the name given in
 * createSharedNetwork({ name: sandbox }), else its id; the daemon keeps it live.
 */
export class SharedNetwork {
  constructor(
    private readonly client: Client,
    readonly info: NetworkInfo,
  ) {}

  get name(): string {
    return this.info.name;
  }

  /**
   * The URL members use for service's port, "http://api:80": computed here, no
   * call, so it is valid before any member has that name. resolveServiceUrl checks.
   */
  getServiceUrl(service: string, port = 80): string {
    const host = service.toLowerCase();
    if (!SERVICE_NAME.test(host)) throw new InvalidArgumentError(`service names are DNS labels (a-z, 0-9, '-', at most 63), not ${JSON.stringify(service.slice(0, 70))}`, "INVALID_ARGUMENT", "INVALID_HOSTNAME");
    if (!Number.isInteger(port) || port <= 0 || port >= 65536) throw new InvalidArgumentError(`bad port ${port}`, "INVALID_ARGUMENT", "INVALID_PORT");
    return `http://${host}:${port}`;
  }

  /** The URL of a member (by name or sandbox id) as the daemon has it now: NOT_FOUND MEMBER_NOT_FOUND when none has that name. */
  resolveServiceUrl(member: string, port = 80): Promise<string> {
    return this.client.networks.getServiceUrl(this.info.name, member, port);
  }

  /** The network as it is now, with each member's current name. */
  async refresh(): Promise<NetworkInfo> {
    const info = await this.client.networks.get(this.info.name);
    Object.assign(this.info, info);
    return info;
  }

  delete(): Promise<void> {
    return this.client.networks.delete(this.info.name);
  }
}

let networkCounter = 0;

/** The spec's createSharedNetwork([web, api]): members on a private subnet of their own. */
export async function createSharedNetwork(
  members: Sandbox[] | Record<string, Sandbox>,
  options: { name?: string } = {},
): Promise<SharedNetwork> {
  const first = Array.isArray(members) ? members[0] : Object.values(members)[0];
  if (!first) throw new ComputeSDKError("a network needs members", "INVALID_ARGUMENT", "INVALID_ARGUMENT");
  const name = options.name ?? `net-${process.pid}-${++networkCounter}`;
  return new SharedNetwork(first.client, await first.client.networks.create(name, members));
}

export interface Message {
  sequence: number;
  sender: string;
  recipient: string;
  payload: Uint8Array;
  senderSequence: number;
  sentAt: Date | undefined;
  readonly text: string;
}


/** Message channels hosted by the daemon: at least once, ordered per sender. */
export class Channels {
  constructor(private readonly client: Client) {}

  async connect(name: string, members: SandboxRef[], options: { capacity?: number } = {}): Promise<string[]> {
    return (await this.client.raw.messaging.createChannel({ name, members: members.map(idOf), capacity: options.capacity ?? 0 })).channel!.members;
  }

  async delete(name: string): Promise<void> {
    await this.client.raw.messaging.deleteChannel({ name });
  }

  /** Queues payload for recipient (undefined: every other member); waits while the queue is full. */
  async send(channel: string, sender: SandboxRef, recipient: SandboxRef | undefined, payload: unknown, options: { waitTimeoutMs?: number } = {}): Promise<number> {
    const data = payload instanceof Uint8Array ? payload : new TextEncoder().encode(typeof payload === "string" ? payload : JSON.stringify(payload));
    const resp = await this.client.raw.messaging.sendMessage({
      channel,
      sender: idOf(sender),
      recipient: recipient === undefined ? "" : idOf(recipient),
      payload: data,
      waitTimeoutMs: BigInt(options.waitTimeoutMs ?? 0),
    });
    return Number(resp.senderSequence);
  }

  /** Every unacknowledged message, then new ones; ack() them as they are handled. */
  async *subscribe(channel: string, member: SandboxRef, options: { signal?: AbortSignal } = {}): AsyncGenerator<Message> {
    // Aborted when the caller leaves early: Connect's streams ignore return().
    const call = linked(options.signal);
    try {
      for await (const resp of this.client.raw.messaging.subscribe({ channel, member: idOf(member) }, { signal: call.signal })) {
        const m = resp.message!;
        yield {
          sequence: Number(m.sequence),
          sender: m.sender,
          recipient: m.recipient,
          payload: m.payload,
          senderSequence: Number(m.senderSequence),
          sentAt: toDate(m.sendTime),
          get text() {
            return new TextDecoder().decode(this.payload);
          },
        };
      }
    } catch (err) {
      if (!options.signal?.aborted) throw err;
    } finally {
      call.abort();
    }
  }

  async ack(channel: string, member: SandboxRef, sequence: number): Promise<void> {
    await this.client.raw.messaging.ackMessages({ channel, member: idOf(member), sequence: BigInt(sequence) });
  }
}

let queueCounter = 0;

/** The spec's MessageQueue: connect(sandboxes), then send(from, to, payload). */
export class MessageQueue {
  private client: Client | undefined;
  readonly name: string;

  constructor(options: { name?: string } = {}) {
    this.name = options.name ?? `mq-${process.pid}-${++queueCounter}`;
  }

  /** Members are sandboxes or names; names let clients outside sandboxes take part. */
  async connect(members: (Sandbox | string)[], options: { client?: Client; capacity?: number } = {}): Promise<void> {
    const withClient = members.find((m): m is Sandbox => typeof m !== "string");
    this.client = options.client ?? withClient?.client;
    if (!this.client) throw new ComputeSDKError("connect needs a sandbox or a client", "INVALID_ARGUMENT", "INVALID_ARGUMENT");
    await this.client.channels.connect(this.name, members, { capacity: options.capacity });
  }

  private get channels(): Channels {
    if (!this.client) throw new ComputeSDKError("call connect() first", "FAILED_PRECONDITION", "NOT_CONNECTED");
    return this.client.channels;
  }

  send(from: Sandbox | string, to: Sandbox | string | undefined, payload: unknown): Promise<number> {
    return this.channels.send(this.name, from, to, payload);
  }

  subscribe(member: Sandbox | string, options: { signal?: AbortSignal } = {}): AsyncGenerator<Message> {
    return this.channels.subscribe(this.name, member, options);
  }

  ack(member: Sandbox | string, sequence: number): Promise<void> {
    return this.channels.ack(this.name, member, sequence);
  }
}

export { codeName };
