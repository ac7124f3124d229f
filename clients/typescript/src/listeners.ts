// Lifecycle events, and a sandbox's on() listeners: one event stream for them all, resumed by event number.
import type { Event as EventMessage } from "./gen/computesdk/api/events/v1/events_pb.js";
import { SandboxEventError, type SandboxErrorType } from "./errors.js";
import { callSafely, report } from "./background.js";
import { toDate } from "./convert.js";
import type { ConnectionState } from "./connection.js";
import { resourceAlert } from "./monitoring.js";
import type { Sandbox } from "./sandbox.js";

export interface Event {
  sequence: number;
  time: Date | undefined;
  sandboxId: string;
  type: string;
  message: string;
  attributes: Record<string, string>;
}

export interface EventsOptions {
  sandboxIds?: string[];
  types?: string[];
  /** Resume after this sequence number. */
  after?: number;
  /** false replays what is stored and ends. */
  follow?: boolean;
  signal?: AbortSignal;
  /** Called once each time the stream loses the daemon (before it reconnects by itself). */
  onConnectionLost?: (err: unknown) => void;
}

export function eventFromProto(e: EventMessage): Event {
  return {
    sequence: Number(e.sequence),
    time: toDate(e.time),
    sandboxId: e.sandboxId,
    type: e.type,
    message: e.message,
    attributes: { ...e.attributes },
  };
}

type Listener = (event: never) => unknown;

const CONNECTION_EVENTS = new Set(["connected", "disconnected", "reconnecting"]);
// Daemon events that on('error', ...) also receives, as a SandboxEventError of this type.
const ERROR_EVENTS: Record<string, SandboxErrorType> = { "out-of-memory": "out-of-memory", corruption: "corruption", error: "error" };

/** The listeners of one Sandbox, and the event stream that feeds them while any are there. */
export class SandboxListeners {
  private readonly listeners = new Map<string, Listener[]>();
  private listening: AbortController | undefined;
  private listener: Promise<void> | undefined;
  /** The last event listeners saw: a new stream resumes after it. */
  private lastSequence = 0;
  private sawDestroyed = false;

  constructor(private readonly sandbox: Sandbox) {}

  /** Sandbox.on(): see there. */
  add(event: string, listener: ((arg: never) => unknown) | (() => unknown)): void {
    if (CONNECTION_EVENTS.has(event)) {
      this.sandbox.client.on(event as ConnectionState, () => callSafely(listener as () => unknown, undefined));
      return;
    }
    const list = this.listeners.get(event) ?? [];
    list.push(listener as Listener);
    this.listeners.set(event, list);
    if (!this.listening && !this.sawDestroyed) this.listen();
  }

  /** After a reconnect: a stream that ended with the connection starts again after the last event seen. */
  resume(): void {
    if (this.listeners.size > 0 && !this.listening && !this.sawDestroyed) this.listen();
  }

  private emitTo(event: string, arg: unknown): void {
    for (const l of [...(this.listeners.get(event) ?? [])]) callSafely(l as (a: unknown) => unknown, arg);
  }

  private dispatch(ev: Event): void {
    // on('error') listeners get the typed error, the daemon's own 'error' event included.
    if (ev.type !== "error") this.emitTo(ev.type, ev.type === "resourceAlert" ? resourceAlert(ev) : ev);
    const kind = ERROR_EVENTS[ev.type];
    if (kind) {
      const { sequence, type, message, attributes } = ev;
      const text = message || (kind === "out-of-memory" ? "a process ran out of memory" : `${ev.type} event`);
      this.emitTo("error", new SandboxEventError(kind, text, this.sandbox.id, { sequence, type, message, attributes }));
    }
  }

  private listen(): void {
    const ctl = (this.listening = new AbortController());
    const lost = (err: unknown) =>
      this.emitTo("error", new SandboxEventError("connection-lost", `lost the connection to computesdkd: ${err instanceof Error ? err.message : String(err)}`, this.sandbox.id, undefined, { cause: err }));
    this.listener = (async () => {
      try {
        for await (const ev of this.sandbox.client.events({ sandboxIds: [this.sandbox.id], after: this.lastSequence, signal: ctl.signal, onConnectionLost: lost })) {
          this.lastSequence = ev.sequence;
          this.dispatch(ev);
          if (ev.type === "destroyed") {
            this.sawDestroyed = true;
            return;
          }
        }
      } catch (err) {
        if (!ctl.signal.aborted) report(`events of ${this.sandbox.id} stopped`, err);
      } finally {
        if (this.listening === ctl) this.listening = undefined;
      }
    })();
  }

  /** Stops the stream, once listeners saw the 'destroyed' event (or 2 s passed). */
  async stop(): Promise<void> {
    if (!this.listener) return;
    // Let the 'destroyed' event reach listeners before stopping.
    const timeout = new Promise<void>((r) => setTimeout(r, 2000).unref());
    await Promise.race([this.listener, timeout]);
    this.listening?.abort();
    await this.listener;
  }
}
