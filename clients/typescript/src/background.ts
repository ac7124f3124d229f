// The client's own background work (event listeners, monitors, streams): errors are
// reported, never left as an unhandled rejection that would end the process, and
// streams are cancelled when left, so that they do not hold the process open.

/** Writes a background error to stderr: there is no caller to throw it to. */
export function report(what: string, err: unknown): void {
  console.error(`computesdkd-client: ${what}:`, err instanceof Error ? err.message : err);
}

/** Calls a user's listener; what it throws, or its promise rejects with, is reported. */
export function callSafely<A>(listener: (arg: A) => unknown, arg: A): void {
  try {
    const out = listener(arg);
    if (out && typeof (out as Promise<unknown>).then === "function") (out as Promise<unknown>).then(undefined, (err) => report("a listener failed", err));
  } catch (err) {
    report("a listener failed", err);
  }
}

/** An AbortController that also aborts with signal: Connect's streams ignore return(), so leaving one early must abort it. */
export function linked(signal: AbortSignal | undefined): AbortController {
  const ctl = new AbortController();
  if (signal?.aborted) ctl.abort();
  else signal?.addEventListener("abort", () => ctl.abort(), { once: true });
  return ctl;
}
