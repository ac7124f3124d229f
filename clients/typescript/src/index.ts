// computesdk: the TypeScript client of computesdkd, over its Unix socket or TCP with TLS and a token.
export { Client, compute, connect, defaultClient, defaultSocket, listActiveSandboxes } from "./client.js";
export type { ConnectOptions, ConnectionState, CreateOptions, Event, EventsOptions, ListOptions, Raw, TemplateSpec, VolumeSpec } from "./client.js";
export { ExecStream, Files, Monitor, Process, Sandbox, stateName } from "./sandbox.js";
export type { CommandLine, ExecOptions, ExecResult, FileInfo, OutputChunk, ResourceAlert, Resources, SandboxConfig, SandboxStatus, Usage } from "./sandbox.js";
export * from "./errors.js";
export { Channels, Groups, MessageQueue, Networks, Pools, SharedNetwork, createSharedNetwork } from "./fleet.js";
export type { MemberResult, Message, NetworkInfo, PoolInfo } from "./fleet.js";
export { Snapshots, States, Volumes } from "./state.js";
export type { SnapshotInfo, StateInfo, VolumeInfo } from "./state.js";
export { Templates } from "./templates.js";
export type { BuildEvent, BuildResult, TemplateDefinition, TemplateInfo } from "./templates.js";
export { Quotas, Tokens } from "./admin.js";
export type { Quota, QuotaUsage, Scope, TokenInfo } from "./admin.js";
