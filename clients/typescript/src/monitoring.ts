// Resource figures: status, usage samples, the Monitor stream and resource alerts.
import type { Usage as UsageMessage } from "./gen/computesdk/api/monitoring/v1/monitoring_pb.js";
import { callSafely, linked, report } from "./background.js";
import { toDate, type Resources } from "./convert.js";
import type { Event } from "./listeners.js";
import type { Sandbox } from "./sandbox.js";

export interface SandboxStatus {
  state: string;
  uptimeMs: number;
  resources: Resources;
  usage: { memoryUsedBytes: number; memoryLimitBytes: number; processCount: number; cpuTimeNs: number; diskUsedBytes: number; diskLimitBytes: number } | undefined;
}

/** The one shape of resource figures (getResourceUsage() and monitor 'metrics'), the same in every client. MB are MiB. */
export interface Usage {
  sampledAt: Date | undefined;
  cpu: { percent: number };
  memory: { usedMB: number; totalMB: number; percent: number; usedBytes: number; limitBytes: number };
  disk: { usedMB: number; totalMB: number; percent: number; usedBytes: number; limitBytes: number };
  network: { rxBytes: number; txBytes: number; available: boolean };
  processCount: number;
}

const MB = 1024 * 1024;

export function usage(u: UsageMessage | undefined): Usage {
  const n = (v: bigint | undefined) => Number(v ?? 0n);
  const figures = (used: number, limit: number) => ({ usedMB: used / MB, totalMB: limit / MB, percent: limit > 0 ? (100 * used) / limit : 0, usedBytes: used, limitBytes: limit });
  return {
    sampledAt: toDate(u?.sampleTime),
    cpu: { percent: u?.cpuPercent ?? 0 },
    memory: figures(n(u?.memoryUsedBytes), n(u?.memoryLimitBytes)),
    disk: figures(n(u?.diskUsedBytes), n(u?.diskLimitBytes)),
    network: { rxBytes: n(u?.networkRxBytes), txBytes: n(u?.networkTxBytes), available: u?.hasNetwork ?? false },
    processCount: u?.processCount ?? 0,
  };
}

/** A running Monitor stream: on('metrics', ...) or iterate; stop() ends it. */
export class Monitor implements AsyncIterable<Usage> {
  private readonly abort = new AbortController();
  private readonly listeners: ((u: Usage) => void)[] = [];
  private readonly errorListeners: ((e: unknown) => void)[] = [];
  private pump: Promise<void> | undefined;

  constructor(
    private readonly sandbox: Sandbox,
    private readonly options: { interval?: number; metrics?: string[] },
  ) {}

  async *[Symbol.asyncIterator](): AsyncIterator<Usage> {
    const call = linked(this.abort.signal);
    try {
      const stream = this.sandbox.client.raw.monitoring.monitor(
        { sandboxId: this.sandbox.id, intervalMs: this.options.interval ?? 1000, metrics: this.options.metrics ?? [] },
        { signal: call.signal },
      );
      for await (const resp of stream) yield usage(resp.usage);
    } catch (err) {
      if (!this.abort.signal.aborted) throw err;
    } finally {
      call.abort();
    }
  }

  /** 'metrics' gets each sample; 'error' the error that ended the stream (logged when nothing listens). */
  on(event: "metrics", listener: (metrics: Usage) => void): this;
  on(event: "error", listener: (error: unknown) => void): this;
  on(event: "metrics" | "error", listener: ((metrics: Usage) => void) | ((error: unknown) => void)): this {
    if (event === "metrics") this.listeners.push(listener as (u: Usage) => void);
    else this.errorListeners.push(listener as (e: unknown) => void);
    this.pump ??= (async () => {
      try {
        for await (const u of this) for (const l of this.listeners) callSafely(l, u);
      } catch (err) {
        if (this.errorListeners.length === 0) report("monitor stopped", err);
        for (const l of this.errorListeners) callSafely(l, err);
      }
    })();
    return this;
  }

  async stop(): Promise<void> {
    this.abort.abort();
    await this.pump;
  }
}

/** What on('resourceAlert', ...) receives: the spec's { type, current, threshold } (percentages), and the event. */
export interface ResourceAlert {
  type: "cpu" | "memory" | "disk";
  current: number;
  threshold: number;
  message: string;
  sequence: number;
  sandboxId: string;
  attributes: Record<string, string>;
}

export function resourceAlert(ev: Event): ResourceAlert {
  const a = ev.attributes;
  return {
    type: (a.type ?? "") as ResourceAlert["type"],
    current: Number.parseFloat(a.current ?? "") || 0,
    threshold: Number.parseFloat(a.threshold ?? a.percent ?? "") || 0,
    message: ev.message,
    sequence: ev.sequence,
    sandboxId: ev.sandboxId,
    attributes: a,
  };
}
