// Commands: one-shot and streaming exec, and background processes.
import { create, type MessageInitShape } from "@bufbuild/protobuf";

import { CommandSchema, ExecRequestSchema, ExecStartSchema, type Command as CommandMessage, type ExecRequest, type Exited } from "./gen/computesdk/api/process/v1/process_pb.js";
import { CommandExitError, ComputeSDKError } from "./errors.js";
import { linked } from "./background.js";
import { CHUNK, bytesOf, concat, decoder } from "./convert.js";
import type { Sandbox } from "./sandbox.js";

/** A command: a string runs through /bin/sh -c, an array is the exact argv. */
export type CommandLine = string | string[];

export interface ExecOptions {
  cwd?: string;
  env?: Record<string, string>;
  timeoutMs?: number;
  /** Fed to the command, then stdin is closed. */
  stdin?: string | Uint8Array;
  /** Keep stdin open for sendStdin() / writeStdin(). */
  interactive?: boolean;
  /** Called with each piece of output, decoded as UTF-8 across chunk boundaries. */
  onStdout?: (text: string) => void;
  onStderr?: (text: string) => void;
  signal?: AbortSignal;
  /**
   * exec() only: false returns the result of a command that exits non-zero or is
   * killed by a signal; by default (true) it rejects with CommandExitError.
   * A timeout is not a failure here: the result says timedOut.
   */
  check?: boolean;
}

export interface OutputChunk {
  stream: "stdout" | "stderr";
  data: Uint8Array;
  offset: number;
  /** data as text; a UTF-8 character split across chunks is whole in the chunk it ends in. */
  readonly text: string;
}

export interface ExecResult {
  stdout: string;
  stderr: string;
  stdoutBytes: Uint8Array;
  stderrBytes: Uint8Array;
  exitCode: number;
  signal: number;
  durationMs: number;
  timedOut: boolean;
  oomKilled: boolean;
  processId: string;
}

export function commandToProto(command: CommandLine, o: ExecOptions): CommandMessage {
  return create(CommandSchema, {
    command: typeof command === "string" ? command : "",
    args: typeof command === "string" ? [] : command,
    cwd: o.cwd ?? "",
    env: o.env ?? {},
    timeoutMs: BigInt(o.timeoutMs ?? 0),
    stdin: o.interactive === true || o.stdin !== undefined,
  });
}

/** One streaming UTF-8 decoder per stream, so a character split across chunks decodes whole. */
class StreamDecoders {
  private readonly out = new TextDecoder();
  private readonly err = new TextDecoder();

  chunk(stream: "stdout" | "stderr", data: Uint8Array, offset: bigint): OutputChunk {
    const text = (stream === "stdout" ? this.out : this.err).decode(data, { stream: true });
    return { stream, data, offset: Number(offset), text };
  }
}

/** Throws CommandExitError for a failed one-shot exec unless options.check is false. */
export function checked(result: ExecResult, options: { check?: boolean }): ExecResult {
  if (options.check !== false && !result.timedOut && (result.exitCode !== 0 || result.signal !== 0)) throw new CommandExitError(result);
  return result;
}

export function resultFromParts(out: Uint8Array[], err: Uint8Array[], ex: Exited, processId: string): ExecResult {
  const stdoutBytes = concat(out);
  const stderrBytes = concat(err);
  return {
    stdout: decoder.decode(stdoutBytes),
    stderr: decoder.decode(stderrBytes),
    stdoutBytes,
    stderrBytes,
    exitCode: ex.exitCode,
    signal: ex.signal,
    durationMs: Number(ex.durationMs),
    timedOut: ex.timedOut,
    oomKilled: ex.oomKilled,
    processId,
  };
}

/** A queue the request side of a bidi call reads from. */
class RequestQueue<T> implements AsyncIterable<T> {
  private items: (T | null)[] = [];
  private wake: (() => void) | undefined;

  push(item: T | null): void {
    this.items.push(item);
    this.wake?.();
  }

  async *[Symbol.asyncIterator](): AsyncIterator<T> {
    for (;;) {
      while (this.items.length === 0) await new Promise<void>((r) => (this.wake = r));
      const item = this.items.shift()!;
      if (item === null) return;
      yield item;
    }
  }
}

/** A running command. Iterate it for output; then exitCode and wait() say how it ended. */
export class ExecStream implements AsyncIterable<OutputChunk> {
  processId = "";
  pid = 0;
  exited: Exited | undefined;
  private readonly requests = new RequestQueue<ExecRequest>();
  private readonly abort = new AbortController();
  private consumed = false;

  constructor(
    private readonly sandbox: Sandbox,
    command: CommandLine,
    private readonly options: ExecOptions,
  ) {
    this.push({ case: "start", value: create(ExecStartSchema, { sandboxId: sandbox.id, command: commandToProto(command, options) }) });
    if (options.stdin !== undefined) {
      this.sendStdin(options.stdin);
      if (!options.interactive) this.closeStdin();
    }
    options.signal?.addEventListener("abort", () => this.abort.abort(), { once: true });
  }

  private push(request: MessageInitShape<typeof ExecRequestSchema>["request"]): void {
    this.requests.push(create(ExecRequestSchema, { request }));
  }

  sendStdin(data: string | Uint8Array): void {
    const raw = bytesOf(data);
    for (let i = 0; i < raw.length; i += CHUNK) this.push({ case: "stdin", value: raw.subarray(i, i + CHUNK) });
  }

  closeStdin(): void {
    this.push({ case: "closeStdin", value: true });
  }

  /** Delivers a signal number to the command. */
  signal(signal: number): void {
    this.push({ case: "signal", value: signal });
  }

  get exitCode(): number | undefined {
    return this.exited?.exitCode;
  }

  async *[Symbol.asyncIterator](): AsyncIterator<OutputChunk> {
    if (this.consumed) throw new Error("an ExecStream can be iterated once");
    this.consumed = true;
    try {
      const responses = this.sandbox.client.raw.processes.exec(this.requests, { signal: this.abort.signal });
      const decoders = new StreamDecoders();
      for await (const resp of responses) {
        const ev = resp.event;
        if (ev.case === "started") {
          this.processId = ev.value.processId;
          this.pid = ev.value.pid;
        } else if (ev.case === "stdout" || ev.case === "stderr") {
          yield decoders.chunk(ev.case, ev.value.data, ev.value.offset);
        } else if (ev.case === "exited") {
          this.exited = ev.value;
        }
      }
    } finally {
      this.requests.push(null);
      this.abort.abort();
    }
  }

  /** Reads the rest of the output and returns the result. */
  async wait(): Promise<ExecResult> {
    const out: Uint8Array[] = [];
    const err: Uint8Array[] = [];
    for await (const c of this) {
      if (c.stream === "stdout") {
        out.push(c.data);
        this.options.onStdout?.(c.text);
      } else {
        err.push(c.data);
        this.options.onStderr?.(c.text);
      }
    }
    if (!this.exited) throw new ComputeSDKError("exec ended without an exit status", "ABORTED", "SANDBOX_TERMINATED");
    return resultFromParts(out, err, this.exited, this.processId);
  }
}

/** A background process; it outlives the call that started it and the connection. */
export class Process {
  constructor(
    readonly sandbox: Sandbox,
    readonly id: string,
  ) {}

  /** Output from these offsets (0, 0 replays it all) until the process ends. */
  async *attach(options: { stdoutOffset?: number; stderrOffset?: number; signal?: AbortSignal } = {}): AsyncGenerator<OutputChunk, Exited | undefined> {
    let exited: Exited | undefined;
    // Aborted when the caller leaves early: Connect's streams ignore return().
    const call = linked(options.signal);
    const stream = this.sandbox.client.raw.processes.attachProcess(
      {
        sandboxId: this.sandbox.id,
        processId: this.id,
        stdoutOffset: BigInt(options.stdoutOffset ?? 0),
        stderrOffset: BigInt(options.stderrOffset ?? 0),
      },
      { signal: call.signal },
    );
    const decoders = new StreamDecoders();
    try {
      for await (const resp of stream) {
        const ev = resp.event;
        if (ev.case === "stdout" || ev.case === "stderr") yield decoders.chunk(ev.case, ev.value.data, ev.value.offset);
        else if (ev.case === "exited") exited = ev.value;
      }
    } finally {
      call.abort();
    }
    return exited;
  }

  /** Waits for the end and returns the whole output. */
  wait(): Promise<ExecResult> {
    return this.collect([], []);
  }

  /** Appends the output from where out and err end until the process exits. */
  async collect(out: Uint8Array[], err: Uint8Array[], signal?: AbortSignal): Promise<ExecResult> {
    const length = (parts: Uint8Array[]) => parts.reduce((n, p) => n + p.length, 0);
    const it = this.attach({ stdoutOffset: length(out), stderrOffset: length(err), signal });
    for (;;) {
      const next = await it.next();
      if (next.done) {
        if (!next.value) throw new ComputeSDKError("process ended without an exit status", "ABORTED", "SANDBOX_TERMINATED");
        return resultFromParts(out, err, next.value, this.id);
      }
      (next.value.stream === "stdout" ? out : err).push(next.value.data);
    }
  }

  async writeStdin(data: string | Uint8Array, options: { close?: boolean } = {}): Promise<void> {
    const raw = bytesOf(data);
    let i = 0;
    do {
      const piece = raw.subarray(i, i + CHUNK);
      i += CHUNK;
      await this.sandbox.client.raw.processes.writeStdin({
        sandboxId: this.sandbox.id,
        processId: this.id,
        data: piece,
        close: (options.close ?? false) && i >= raw.length,
      });
    } while (i < raw.length);
  }

  async signal(signal: number): Promise<void> {
    await this.sandbox.client.raw.processes.signalProcess({ sandboxId: this.sandbox.id, processId: this.id, signal });
  }

  kill(): Promise<void> {
    return this.signal(9);
  }
}
