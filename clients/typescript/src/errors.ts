// Typed errors, mapped once from the daemon's status code and ErrorInfo.reason.
import { Code, ConnectError } from "@connectrpc/connect";
import { BinaryReader } from "@bufbuild/protobuf/wire";

export class ComputeSDKError extends Error {
  /** Canonical code name, e.g. "NOT_FOUND". */
  readonly code: string;
  /** Stable ErrorInfo.reason, e.g. "SANDBOX_NOT_FOUND"; "" when the daemon gave none. */
  readonly reason: string;
  readonly metadata: Record<string, string>;

  constructor(message: string, code: string, reason = "", metadata: Record<string, string> = {}) {
    super(message);
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
export class PermissionDeniedError extends ComputeSDKError {}
export class InternalError extends ComputeSDKError {}

type ErrorClass = new (m: string, c: string, r?: string, md?: Record<string, string>) => ComputeSDKError;

const byReason: Record<string, ErrorClass> = {
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
  [Code.Internal]: InternalError,
  [Code.OutOfRange]: OutOfRangeError,
};

/** "NotFound" -> "NOT_FOUND". */
export function codeName(code: Code): string {
  return Code[code].replace(/([a-z])([A-Z])/g, "$1_$2").toUpperCase();
}

interface ErrorInfo {
  reason: string;
  domain: string;
  metadata: Record<string, string>;
}

// google.rpc.ErrorInfo is three fields; decoding them here spares every user
// a generated copy of googleapis.
function decodeErrorInfo(bytes: Uint8Array): ErrorInfo {
  const info: ErrorInfo = { reason: "", domain: "", metadata: {} };
  const r = new BinaryReader(bytes);
  while (r.pos < r.len) {
    const [field, wireType] = r.tag();
    if (field === 1) info.reason = r.string();
    else if (field === 2) info.domain = r.string();
    else if (field === 3) {
      const entry = new BinaryReader(r.bytes());
      let key = "";
      let value = "";
      while (entry.pos < entry.len) {
        const [f, wt] = entry.tag();
        if (f === 1) key = entry.string();
        else if (f === 2) value = entry.string();
        else entry.skip(wt);
      }
      info.metadata[key] = value;
    } else r.skip(wireType);
  }
  return info;
}

/** Turns anything a call threw into the most specific ComputeSDKError. */
export function fromError(err: unknown): unknown {
  if (err instanceof ComputeSDKError) return err;
  if (!(err instanceof ConnectError)) return err;
  if (err.code === Code.Canceled) return err;
  let info: ErrorInfo | undefined;
  for (const d of err.details) {
    if ("type" in d && d.type === "google.rpc.ErrorInfo") info = decodeErrorInfo(d.value);
  }
  const reason = info?.reason ?? "";
  const cls = byReason[reason] ?? byCode[err.code] ?? ComputeSDKError;
  return new cls(err.rawMessage, codeName(err.code), reason, info?.metadata ?? {});
}

/** Runs a call and rethrows its failure as a typed error. */
export async function translated<T>(call: () => Promise<T>): Promise<T> {
  try {
    return await call();
  } catch (err) {
    throw fromError(err);
  }
}

/** The typed error for one failed item of a batch or broadcast, from its code name and reason. */
export function typedError(code: string, reason: string, message: string): ComputeSDKError {
  const entry = Object.entries(Code).find(([, v]) => typeof v === "number" && codeName(v as Code) === code);
  const cls = byReason[reason] ?? (entry ? byCode[entry[1] as Code] : undefined) ?? ComputeSDKError;
  return new cls(message, code, reason);
}
