// Typed errors, mapped once from the daemon's status code and ErrorInfo.reason.
import { Code, ConnectError } from "@connectrpc/connect";

import type { Reason } from "./gen/computesdk/api/errors/v1/errors_pb.js";
import { ErrorInfoSchema } from "./googleapis/google/rpc/error_details_pb.js";

export class ComputeSDKError extends Error {
  /** Canonical code name, e.g. "NOT_FOUND". */
  readonly code: string;
  /** Stable ErrorInfo.reason, e.g. "SANDBOX_NOT_FOUND"; "" when the daemon gave none. */
  readonly reason: string;
  readonly metadata: Record<string, string>;

  constructor(message: string, code: string, reason = "", metadata: Record<string, string> = {}, options?: ErrorOptions) {
    super(message, options);
    this.name = new.target.name;
    this.code = code;
    this.reason = reason;
    this.metadata = metadata;
  }
}

export class NotFoundError extends ComputeSDKError {}
export class SandboxNotFoundError extends NotFoundError {}
export class TemplateNotFoundError extends NotFoundError {}
export class ProviderNotFoundError extends NotFoundError {}
export class ProcessNotFoundError extends NotFoundError {}
export class FileNotFoundError extends NotFoundError {}
export class InvalidArgumentError extends ComputeSDKError {}
export class PathOutsideSandboxError extends InvalidArgumentError {}
export class FailedPreconditionError extends ComputeSDKError {}
export class SandboxNotRunningError extends FailedPreconditionError {}
/** A template build step failed; the message holds its last lines. */
export class TemplateBuildError extends FailedPreconditionError {}
export class AlreadyExistsError extends ComputeSDKError {}
export class ResourceExhaustedError extends ComputeSDKError {}
export class PayloadTooLargeError extends ResourceExhaustedError {}
/** The provider cannot carry the feature; metadata names both. */
export class UnsupportedError extends ComputeSDKError {}
export class UnavailableError extends ComputeSDKError {}
/** The sandbox went away while the call was running. */
export class SandboxTerminatedError extends ComputeSDKError {}
export class DeadlineExceededError extends ComputeSDKError {}
export class OutOfRangeError extends ComputeSDKError {}
/** The call lacks what it needs: over TCP, a token's scope too narrow (SCOPE_INSUFFICIENT). */
export class PermissionDeniedError extends ComputeSDKError {}
/** Over TCP: no token (TOKEN_MISSING), or one the daemon refuses (TOKEN_INVALID, TOKEN_REVOKED, TOKEN_EXPIRED). */
export class UnauthenticatedError extends ComputeSDKError {}
export class InternalError extends ComputeSDKError {}

/** What CommandExitError carries: the shape of ExecResult (sandbox.ts), kept here so errors.ts imports nothing of the client. */
interface ExitedCommand {
  stdout: string;
  stderr: string;
  exitCode: number;
  signal: number;
  oomKilled: boolean;
  timedOut: boolean;
}

/**
 * A one-shot exec ended with a non-zero exit or a signal. Raised by the client,
 * not sent by the daemon (code and reason are empty); exec(cmd, { check: false })
 * returns the result instead. Streams (execStream, process.wait) never throw it.
 */
export class CommandExitError<R extends ExitedCommand = ExitedCommand> extends ComputeSDKError {
  readonly stdout: string;
  readonly stderr: string;
  readonly exitCode: number;
  readonly signal: number;
  readonly oomKilled: boolean;
  /** The whole ExecResult. */
  readonly result: R;

  constructor(result: R) {
    const how = result.signal ? `signal ${result.signal}` : `exit code ${result.exitCode}`;
    const tail = (result.stderr || result.stdout).trim().slice(-500);
    super(`command failed with ${how}${result.oomKilled ? " (out of memory)" : ""}${tail ? `: ${tail}` : ""}`, "", "");
    this.result = result;
    this.stdout = result.stdout;
    this.stderr = result.stderr;
    this.exitCode = result.exitCode;
    this.signal = result.signal;
    this.oomKilled = result.oomKilled;
  }
}

/** Why sandbox.on('error', ...) fired. */
export type SandboxErrorType = "out-of-memory" | "connection-lost" | "corruption" | "error";

/**
 * What sandbox.on('error', e => ...) receives: e.type says why; e.event is the
 * daemon's event behind it (undefined for 'connection-lost', which the client sees).
 */
export class SandboxEventError extends Error {
  readonly type: SandboxErrorType;
  readonly sandboxId: string;
  readonly event: { sequence: number; type: string; message: string; attributes: Record<string, string> } | undefined;

  constructor(type: SandboxErrorType, message: string, sandboxId: string, event?: SandboxEventError["event"], options?: ErrorOptions) {
    super(message, options);
    this.name = "SandboxEventError";
    this.type = type;
    this.sandboxId = sandboxId;
    this.event = event;
  }
}

type ErrorClass = new (m: string, c: string, r?: string, md?: Record<string, string>, o?: ErrorOptions) => ComputeSDKError;

// Keyed by the generated enum's names (the wire's reasons), so a reason the
// daemon does not send cannot be listed. The same reasons as the Python and Go clients.
const byReason: { [R in keyof typeof Reason]?: ErrorClass } = {
  SANDBOX_NOT_FOUND: SandboxNotFoundError,
  TEMPLATE_NOT_FOUND: TemplateNotFoundError,
  TEMPLATE_BUILD_FAILED: TemplateBuildError,
  PROVIDER_NOT_FOUND: ProviderNotFoundError,
  PROCESS_NOT_FOUND: ProcessNotFoundError,
  FILE_NOT_FOUND: FileNotFoundError,
  PATH_OUTSIDE_SANDBOX: PathOutsideSandboxError,
  SANDBOX_NOT_RUNNING: SandboxNotRunningError,
  PAYLOAD_TOO_LARGE: PayloadTooLargeError,
  SANDBOX_TERMINATED: SandboxTerminatedError,
  FEATURE_UNSUPPORTED: UnsupportedError,
};

const byCode: Partial<Record<Code, ErrorClass>> = {
  [Code.NotFound]: NotFoundError,
  [Code.InvalidArgument]: InvalidArgumentError,
  [Code.FailedPrecondition]: FailedPreconditionError,
  [Code.AlreadyExists]: AlreadyExistsError,
  [Code.ResourceExhausted]: ResourceExhaustedError,
  [Code.Unimplemented]: UnsupportedError,
  [Code.Unavailable]: UnavailableError,
  [Code.Aborted]: SandboxTerminatedError,
  [Code.DeadlineExceeded]: DeadlineExceededError,
  [Code.PermissionDenied]: PermissionDeniedError,
  [Code.Unauthenticated]: UnauthenticatedError,
  [Code.Internal]: InternalError,
  [Code.OutOfRange]: OutOfRangeError,
};

/** "NotFound" -> "NOT_FOUND". */
export function codeName(code: Code): string {
  return Code[code].replace(/([a-z])([A-Z])/g, "$1_$2").toUpperCase();
}

function errorClass(reason: string, code: Code | undefined): ErrorClass {
  return byReason[reason as keyof typeof Reason] ?? (code === undefined ? undefined : byCode[code]) ?? ComputeSDKError;
}

/** Turns anything a call threw into the most specific ComputeSDKError; cancellation passes as is. */
export function fromError(err: unknown): unknown {
  if (!(err instanceof ConnectError) || err.code === Code.Canceled) return err;
  const info = err.findDetails(ErrorInfoSchema)[0];
  const reason = info?.reason ?? "";
  return new (errorClass(reason, err.code))(err.rawMessage, codeName(err.code), reason, info?.metadata ?? {}, { cause: err });
}

/** The typed error for one failed item of a batch or broadcast, from its code name and reason. */
export function typedError(code: string, reason: string, message: string): ComputeSDKError {
  const entry = Object.entries(Code).find(([, v]) => typeof v === "number" && codeName(v as Code) === code);
  return new (errorClass(reason, entry?.[1] as Code | undefined))(message, code, reason);
}
