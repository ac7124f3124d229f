// Templates: client.templates lists the predefined ones and builds custom ones.

import type { BuildTemplateResponse, Template } from "./gen/computesdk/api/template/v1/template_pb.js";
import { InternalError } from "./errors.js";
import type { Client } from "./client.js";
import { toDate } from "./convert.js";

export interface TemplateInfo {
  name: string;
  provider: string;
  description: string;
  builtin: boolean;
  /** Content address of a built template; empty for predefined ones. */
  digest: string;
  baseImage: string;
  packages: string[];
  setup: string[];
  env: Record<string, string>;
  baseImageDigest: string;
  layerCount: number;
  sizeBytes: number;
  createdAt: Date | undefined;
  unavailableReason: string;
}

export interface TemplateDefinition {
  /** Empty: the provider's base. oci:DIR[:TAG], docker-archive:FILE, HOST/REPO[:TAG|@DIGEST] or template:NAME. */
  baseImage?: string;
  packages?: string[];
  env?: Record<string, string>;
  /** Shell commands run in order, as root, after the packages. */
  setup?: string[];
  description?: string;
}

export type BuildEvent =
  | { type: "progress"; step: number; totalSteps: number; description: string; bytesDone: number; bytesTotal: number }
  | { type: "log"; step: number; line: string; stderr: boolean }
  | { type: "result"; template: TemplateInfo; cacheHit: boolean; durationMs: number };

export interface BuildResult {
  template: TemplateInfo;
  cacheHit: boolean;
  durationMs: number;
  log: string[];
}

const templateInfo = (t: Template | undefined): TemplateInfo => ({
  name: t?.name ?? "",
  provider: t?.provider ?? "",
  description: t?.description ?? "",
  builtin: t?.builtin ?? false,
  digest: t?.digest ?? "",
  baseImage: t?.definition?.baseImage ?? "",
  packages: t?.definition?.packages ?? [],
  setup: t?.definition?.setup ?? [],
  env: { ...(t?.env ?? {}) },
  baseImageDigest: t?.baseImageDigest ?? "",
  layerCount: t?.layerCount ?? 0,
  sizeBytes: Number(t?.sizeBytes ?? 0n),
  createdAt: toDate(t?.createTime),
  unavailableReason: t?.unavailableReason ?? "",
});

function buildEvent(resp: BuildTemplateResponse): BuildEvent | undefined {
  const ev = resp.event;
  switch (ev.case) {
    case "progress":
      return { type: "progress", step: ev.value.step, totalSteps: ev.value.totalSteps, description: ev.value.description, bytesDone: Number(ev.value.bytesDone), bytesTotal: Number(ev.value.bytesTotal) };
    case "log":
      return { type: "log", step: ev.value.step, line: ev.value.line, stderr: ev.value.stderr };
    case "result":
      return { type: "result", template: templateInfo(ev.value.template), cacheHit: ev.value.cacheHit, durationMs: Number(ev.value.durationMs) };
    default:
      return undefined;
  }
}

export class Templates {
  constructor(private readonly client: Client) {}

  async list(options: { provider?: string } = {}): Promise<TemplateInfo[]> {
    return (await this.client.raw.templates.listTemplates({ provider: options.provider ?? "" })).templates.map(templateInfo);
  }

  async get(name: string, options: { provider?: string } = {}): Promise<TemplateInfo> {
    return templateInfo((await this.client.raw.templates.getTemplate({ name, provider: options.provider ?? "" })).template);
  }

  async delete(name: string, options: { provider?: string } = {}): Promise<void> {
    await this.client.raw.templates.deleteTemplate({ name, provider: options.provider ?? "" });
  }

  /** Builds a template, yielding progress, log lines and, last, the result. Leaving the loop early cancels the build. */
  async *buildStream(name: string, definition: TemplateDefinition = {}, options: { provider?: string; noCache?: boolean } = {}): AsyncGenerator<BuildEvent> {
    const abort = new AbortController();
    const req = {
      provider: options.provider ?? "",
      noCache: options.noCache ?? false,
      definition: { name, baseImage: definition.baseImage ?? "", packages: definition.packages ?? [], env: definition.env ?? {}, setup: definition.setup ?? [], description: definition.description ?? "" },
    };
    try {
      for await (const resp of this.client.raw.templates.buildTemplate(req, { signal: abort.signal })) {
        const ev = buildEvent(resp);
        if (ev) yield ev;
      }
    } finally {
      abort.abort();
    }
  }

  /** Builds a template and returns its result with the build's log. */
  async build(name: string, definition: TemplateDefinition = {}, options: { provider?: string; noCache?: boolean; onEvent?: (ev: BuildEvent) => void } = {}): Promise<BuildResult> {
    const log: string[] = [];
    for await (const ev of this.buildStream(name, definition, options)) {
      options.onEvent?.(ev);
      if (ev.type === "log") log.push(ev.line);
      if (ev.type === "result") return { template: ev.template, cacheHit: ev.cacheHit, durationMs: ev.durationMs, log };
    }
    throw new InternalError("the build stream ended without a result", "INTERNAL");
  }
}
