// The sandbox's filesystem.
import { create } from "@bufbuild/protobuf";

import { FileType, WriteFileFinishSchema, WriteFileHeaderSchema, WriteFileRequestSchema, type FileInfo as FileInfoMessage, type WriteFileRequest } from "./gen/computesdk/api/filesystem/v1/filesystem_pb.js";
import { ComputeSDKError } from "./errors.js";
import { CHUNK, bytesOf, concat, decoder, toDate } from "./convert.js";
import type { Sandbox } from "./sandbox.js";

export interface FileInfo {
  name: string;
  path: string;
  type: "file" | "directory" | "symlink" | "other";
  isDirectory: boolean;
  size: number;
  mode: number;
  modifiedAt: Date | undefined;
  linkTarget: string;
}

function fileInfo(f: FileInfoMessage | undefined): FileInfo {
  const type = ({ [FileType.FILE]: "file", [FileType.DIRECTORY]: "directory", [FileType.SYMLINK]: "symlink" } as Record<number, FileInfo["type"]>)[f?.type ?? 0] ?? "other";
  return {
    name: f?.name ?? "",
    path: f?.path ?? "",
    type,
    isDirectory: type === "directory",
    size: Number(f?.size ?? 0n),
    mode: f?.mode ?? 0,
    modifiedAt: toDate(f?.modifyTime),
    linkTarget: f?.linkTarget ?? "",
  };
}

/** The sandbox's filesystem. Paths are resolved inside the sandbox's root. */
export class Files {
  constructor(private readonly sandbox: Sandbox) {}

  private get rpc() {
    return this.sandbox.client.raw.files;
  }

  async read(path: string, options: { offset?: number; length?: number } = {}): Promise<Uint8Array> {
    const parts: Uint8Array[] = [];
    const stream = this.rpc.readFile({ sandboxId: this.sandbox.id, path, offset: BigInt(options.offset ?? 0), length: BigInt(options.length ?? 0) });
    for await (const resp of stream) parts.push(resp.data);
    return concat(parts);
  }

  async readText(path: string): Promise<string> {
    return decoder.decode(await this.read(path));
  }

  /** Writes a file, creating parent directories unless makeParents is false. */
  async write(path: string, data: string | Uint8Array, options: { mode?: number; makeParents?: boolean; append?: boolean } = {}): Promise<FileInfo> {
    const raw = bytesOf(data);
    const sandboxId = this.sandbox.id;
    async function* requests(): AsyncGenerator<WriteFileRequest> {
      const header = create(WriteFileHeaderSchema, { sandboxId, path, mode: options.mode ?? 0, makeParents: options.makeParents ?? true, append: options.append ?? false, expectFinish: true });
      yield create(WriteFileRequestSchema, { request: { case: "header", value: header } });
      for (let i = 0; i < raw.length; i += CHUNK) yield create(WriteFileRequestSchema, { request: { case: "data", value: raw.subarray(i, i + CHUNK) } });
      // Only now is the file put in place: a write cut short changes nothing.
      yield create(WriteFileRequestSchema, { request: { case: "finish", value: create(WriteFileFinishSchema) } });
    }
    const resp = await this.rpc.writeFile(requests());
    return fileInfo(resp.info);
  }

  async list(path = "/workspace"): Promise<FileInfo[]> {
    const resp = await this.rpc.listDirectory({ sandboxId: this.sandbox.id, path });
    return resp.entries.map(fileInfo);
  }

  async stat(path: string): Promise<FileInfo> {
    const resp = await this.rpc.statPath({ sandboxId: this.sandbox.id, path });
    return fileInfo(resp.info);
  }

  async exists(path: string): Promise<boolean> {
    try {
      await this.stat(path);
      return true;
    } catch (err) {
      if (err instanceof ComputeSDKError && err.code === "NOT_FOUND") return false;
      throw err;
    }
  }

  async mkdir(path: string, options: { parents?: boolean } = {}): Promise<FileInfo> {
    const resp = await this.rpc.makeDirectory({ sandboxId: this.sandbox.id, path, makeParents: options.parents ?? true });
    return fileInfo(resp.info);
  }

  async remove(path: string, options: { recursive?: boolean } = {}): Promise<void> {
    await this.rpc.removePath({ sandboxId: this.sandbox.id, path, recursive: options.recursive ?? false });
  }

  async move(source: string, destination: string): Promise<FileInfo> {
    const resp = await this.rpc.movePath({ sandboxId: this.sandbox.id, source, destination });
    return fileInfo(resp.info);
  }
}
