// Snapshots, saved states and volumes: sandbox.snapshots, client.states, client.volumes.

import { create } from "@bufbuild/protobuf";
import { ImportStateRequestSchema, type ImportStateRequest, type Snapshot, type State } from "./gen/computesdk/api/snapshot/v1/snapshot_pb.js";
import type { Volume } from "./gen/computesdk/api/volume/v1/volume_pb.js";
import type { Client } from "./client.js";
import { linked } from "./background.js";
// A cycle (sandbox.ts uses Snapshots) that ESM resolves: neither module uses
// the other's classes before both are loaded.
import { Sandbox } from "./sandbox.js";
import { toDate } from "./convert.js";

const CHUNK = 1024 * 1024;


export interface SnapshotInfo {
  id: string;
  sandboxId: string;
  name: string;
  description: string;
  createdAt: Date | undefined;
  sizeBytes: number;
}

const snapshotInfo = (s: Snapshot | undefined): SnapshotInfo => ({
  id: s?.id ?? "",
  sandboxId: s?.sandboxId ?? "",
  name: s?.name ?? "",
  description: s?.description ?? "",
  createdAt: toDate(s?.createTime),
  sizeBytes: Number(s?.sizeBytes ?? 0n),
});

export interface StateInfo {
  id: string;
  name: string;
  sandboxId: string;
  provider: string;
  template: string;
  env: Record<string, string>;
  createdAt: Date | undefined;
  sizeBytes: number;
}

const stateInfo = (s: State | undefined): StateInfo => ({
  id: s?.id ?? "",
  name: s?.name ?? "",
  sandboxId: s?.sandboxId ?? "",
  provider: s?.provider ?? "",
  template: s?.template ?? "",
  env: { ...(s?.env ?? {}) },
  createdAt: toDate(s?.createTime),
  sizeBytes: Number(s?.sizeBytes ?? 0n),
});

export interface VolumeInfo {
  name: string;
  sizeMB: number;
  persistent: boolean;
  createdAt: Date | undefined;
  mountedBy: string[];
  usedBytes: number;
}

const volumeInfo = (v: Volume | undefined): VolumeInfo => ({
  name: v?.name ?? "",
  sizeMB: Number(v?.sizeMb ?? 0n),
  persistent: v?.persistent ?? false,
  createdAt: toDate(v?.createTime),
  mountedBy: v?.mountedBy ?? [],
  usedBytes: Number(v?.usedBytes ?? 0n),
});

/** A sandbox's snapshots: copy-on-write, so the cost does not grow with its files. */
export class Snapshots {
  constructor(private readonly sandbox: Sandbox) {}

  private get rpc() {
    return this.sandbox.client.raw.snapshots;
  }

  async create(name = "", options: { description?: string } = {}): Promise<SnapshotInfo> {
    const resp = await this.rpc.createSnapshot({ sandboxId: this.sandbox.id, name, description: options.description ?? "" });
    return snapshotInfo(resp.snapshot);
  }

  async list(): Promise<SnapshotInfo[]> {
    return (await this.rpc.listSnapshots({ sandboxId: this.sandbox.id })).snapshots.map(snapshotInfo);
  }

  /** Files go back to the snapshot; every process stops; the id stays. */
  async restore(snapshot: SnapshotInfo | string): Promise<void> {
    const snapshotId = typeof snapshot === "string" ? snapshot : snapshot.id;
    const resp = await this.rpc.restoreSnapshot({ sandboxId: this.sandbox.id, snapshotId });
    this.sandbox.info = resp.sandbox!;
  }

  async delete(snapshot: SnapshotInfo | string): Promise<void> {
    const snapshotId = typeof snapshot === "string" ? snapshot : snapshot.id;
    await this.rpc.deleteSnapshot({ sandboxId: this.sandbox.id, snapshotId });
  }
}

/** Saved states: compute(provider, { restoreFrom: id }) starts from one. */
export class States {
  constructor(private readonly client: Client) {}

  async save(sandbox: Sandbox | string, name = ""): Promise<StateInfo> {
    const sandboxId = typeof sandbox === "string" ? sandbox : sandbox.id;
    return stateInfo((await this.client.raw.snapshots.saveState({ sandboxId, name })).state);
  }

  async list(): Promise<StateInfo[]> {
    return (await this.client.raw.snapshots.listStates({})).states.map(stateInfo);
  }

  async delete(stateId: string): Promise<void> {
    await this.client.raw.snapshots.deleteState({ stateId });
  }

  /** A saved state, or a sandbox as it is now, as a portable archive (tar). */
  async *export(source: { stateId: string } | { sandbox: Sandbox | string }): AsyncGenerator<Uint8Array> {
    const req =
      "stateId" in source
        ? { source: { case: "stateId" as const, value: source.stateId } }
        : { source: { case: "sandboxId" as const, value: typeof source.sandbox === "string" ? source.sandbox : source.sandbox.id } };
    const call = linked(undefined);
    try {
      for await (const resp of this.client.raw.snapshots.exportState(req, { signal: call.signal })) yield resp.data;
    } finally {
      call.abort(); // a caller that stops reading early ends the call
    }
  }

  /** Creates a sandbox from an archive that export() wrote. */
  async import(archive: Uint8Array | AsyncIterable<Uint8Array>, options: { provider?: string; metadata?: Record<string, string> } = {}): Promise<Sandbox> {
    async function* requests(): AsyncGenerator<ImportStateRequest> {
      yield create(ImportStateRequestSchema, { request: { case: "header", value: { provider: options.provider ?? "", metadata: options.metadata ?? {} } } });
      const pieces = archive instanceof Uint8Array ? [archive] : archive;
      for await (const piece of pieces) {
        for (let i = 0; i < piece.length; i += CHUNK) {
          yield create(ImportStateRequestSchema, { request: { case: "data", value: piece.subarray(i, i + CHUNK) } });
        }
      }
    }
    const resp = await this.client.raw.snapshots.importState(requests());
    return new Sandbox(this.client, resp.sandbox!);
  }
}

/** Named, size-limited volumes that sandboxes mount (create({ volumes })). */
export class Volumes {
  constructor(private readonly client: Client) {}

  async create(name: string, options: { sizeMB?: number; persistent?: boolean } = {}): Promise<VolumeInfo> {
    const resp = await this.client.raw.volumes.createVolume({ name, sizeMb: BigInt(options.sizeMB ?? 0), persistent: options.persistent ?? true });
    return volumeInfo(resp.volume);
  }

  async get(name: string): Promise<VolumeInfo> {
    return volumeInfo((await this.client.raw.volumes.getVolume({ name })).volume);
  }

  async list(): Promise<VolumeInfo[]> {
    return (await this.client.raw.volumes.listVolumes({})).volumes.map(volumeInfo);
  }

  async delete(name: string): Promise<void> {
    await this.client.raw.volumes.deleteVolume({ name });
  }
}
