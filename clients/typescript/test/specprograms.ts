// The spec's TypeScript blocks as programs (test/spec.test.ts runs them).
//
// Read at test time from the repository's copy of the spec. Each block, in
// order, becomes one program; a block that declares the same const more than
// once (three `const sandbox = ...` in a row) is split at each redeclaration
// into variants; a top-level statement that needs a GPU is a variant of its own
// (with the declarations it needs), so the rest of its block still runs. The
// only change to the spec's text is provider names ('e2b', 'vercel', 'modal',
// 'daytona') becoming 'local'. Around it go: an import of the client's names
// the block uses and does not import, a preamble making the `sandbox` a block
// uses without defining, and glue that uses what the block leaves unused (its
// classes, functions and results), printing what the test then checks.
import { readFileSync } from "node:fs";
import ts from "typescript";

export interface Program {
  /** "Basic Creation #2": the section's title, and the variant's number when split. */
  name: string;
  section: string;
  /** The spec's code of this program, providers changed. */
  code: string;
  /** The module node runs. */
  source: string;
  /** It needs a GPU: it must fail with GPU_UNAVAILABLE. */
  gpu: boolean;
}

const PROVIDERS = /(['"])(e2b|vercel|modal|daytona)\1/g;
const GPU = /gpu:\s*\{\s*enabled:\s*true|(['"])(pytorch-gpu|gpu-ml|python-gpu|pytorch)\1/;
/** The client's exports a block may use without importing them. */
const CLIENT_NAMES = ["compute", "createSharedNetwork", "MessageQueue", "listActiveSandboxes", "Sandbox", "defaultClient"];

/** Each ```typescript block with the title of the heading above it. */
export function specBlocks(markdown: string): { section: string; code: string }[] {
  const out: { section: string; code: string }[] = [];
  let section = "";
  const lines = markdown.split("\n");
  for (let i = 0; i < lines.length; i++) {
    const heading = /^#{1,6}\s+(.*)$/.exec(lines[i]!);
    if (heading) section = heading[1]!.trim();
    if (lines[i]!.trim() !== "```typescript") continue;
    const body: string[] = [];
    for (i++; i < lines.length && lines[i]!.trim() !== "```"; i++) body.push(lines[i]!);
    out.push({ section, code: body.join("\n") });
  }
  return out;
}

/** The only change the spec's code gets. */
export const toLocal = (code: string) => code.replace(PROVIDERS, "$1local$1");

interface Statement {
  text: string;
  declares: string[];
  /** A declaration that runs nothing: class, function, or a const without await. */
  inert: boolean;
}

function statements(code: string): Statement[] {
  const file = ts.createSourceFile("block.ts", code, ts.ScriptTarget.ES2022, true, ts.ScriptKind.TS);
  return file.statements.map((st) => {
    const declares: string[] = [];
    if (ts.isVariableStatement(st)) {
      for (const d of st.declarationList.declarations) if (ts.isIdentifier(d.name)) declares.push(d.name.text);
    } else if ((ts.isClassDeclaration(st) || ts.isFunctionDeclaration(st)) && st.name) declares.push(st.name.text);
    const text = st.getFullText(file).replace(/^\n+/, "");
    const inert = ts.isClassDeclaration(st) || ts.isFunctionDeclaration(st) || (ts.isVariableStatement(st) && !/\bawait\b/.test(text));
    return { text, declares, inert };
  });
}

/** Splits a block at each redeclaration; a GPU statement becomes a variant with the inert declarations before it. */
function variants(code: string): { code: string; gpu: boolean }[] {
  const groups: Statement[][] = [[]];
  for (const st of statements(code)) {
    const current = groups.at(-1)!;
    const seen = new Set(current.flatMap((s) => s.declares));
    if (st.declares.some((n) => seen.has(n))) groups.push([st]);
    else current.push(st);
  }
  const out: { code: string; gpu: boolean }[] = [];
  for (const group of groups) {
    const gpuAt = group.map((s, i) => (GPU.test(s.text) ? i : -1)).filter((i) => i >= 0);
    const rest = group.filter((_, i) => !gpuAt.includes(i));
    if (rest.length > 0) out.push({ code: rest.map((s) => s.text).join("\n"), gpu: false });
    for (const i of gpuAt) {
      const needed = group.slice(0, i).filter((s) => s.inert && !GPU.test(s.text));
      out.push({ code: [...needed, group[i]!].map((s) => s.text).join("\n"), gpu: true });
    }
  }
  return out;
}

/** Whether code uses `name` as a variable it does not declare itself (a free variable). */
export function usesFree(code: string, name: string): boolean {
  const file = ts.createSourceFile("v.ts", code, ts.ScriptTarget.ES2022, true, ts.ScriptKind.TS);
  const binds = (n: ts.BindingName): boolean =>
    ts.isIdentifier(n) ? n.text === name : n.elements.some((e) => !ts.isOmittedExpression(e) && binds(e.name));
  const listBinds = (l: ts.VariableDeclarationList) => l.declarations.some((d) => binds(d.name));
  const declaresHere = (node: ts.Node): boolean => {
    if (ts.isFunctionLike(node) && node.parameters.some((p) => binds(p.name))) return true;
    if ((ts.isForOfStatement(node) || ts.isForInStatement(node) || ts.isForStatement(node)) && node.initializer && ts.isVariableDeclarationList(node.initializer)) {
      if (listBinds(node.initializer)) return true;
    }
    if (ts.isCatchClause(node) && node.variableDeclaration && binds(node.variableDeclaration.name)) return true;
    const body = ts.isSourceFile(node) || ts.isBlock(node) ? node.statements : undefined;
    return !!body?.some((st) => ts.isVariableStatement(st) && listBinds(st.declarationList));
  };
  let free = false;
  const visit = (node: ts.Node): void => {
    if (free) return;
    if (ts.isIdentifier(node) && node.text === name) {
      const p = node.parent;
      const isName = (ts.isPropertyAccessExpression(p) && p.name === node) || (ts.isPropertyAssignment(p) && p.name === node) || (ts.isVariableDeclaration(p) && p.name === node) || ts.isParameter(p) || ts.isTypeReferenceNode(p);
      if (!isName) {
        let bound = false;
        for (let n: ts.Node | undefined = node.parent; n && !bound; n = n.parent) bound = declaresHere(n);
        free ||= !bound;
      }
    }
    ts.forEachChild(node, visit);
  };
  visit(file);
  return free;
}

/** Glue per section: what the spec leaves implicit, printing one JSON line "RESULT {...}" for the test. */
const GLUE: Record<string, string> = {
  "Batch Creation": `
const pool = new SandboxPool()
const first = await pool.acquire('local', { template: 'python' })
await first.exec('touch /tmp/used')
await first.startProcess('sleep 600')
await pool.release(first)
const again = await pool.acquire('local', { template: 'python' })
const kept = (await again.exec('test -e /tmp/used', { check: false })).exitCode === 0
const processes = (await again.processes()).filter((p) => p.running).length
await pool.release(again)
await pool.cleanup()
console.log('RESULT ' + JSON.stringify({ reused: first === again, kept, processes }))`,
  "Lifecycle Events": `
await sandbox.exec('true')
await sandbox.destroy()`,
  "Status Monitoring": `
await sandbox.destroy()`,
  "Health Checks": `
const report = await runHealthChecks(sandbox)
console.log('RESULT ' + JSON.stringify({ isHealthy, report }))
await sandbox.destroy()`,
  "Resource Monitoring": `
const after = await sandbox.getResourceUsage()
await sandbox.refresh()
console.log('RESULT ' + JSON.stringify({ usage, limits: sandbox.resources, requested: sandbox.requestedResources, diskTotalMB: after.disk.totalMB }))
await sandbox.destroy()`,
  "Auto-scaling": `
console.log('RESULT ' + JSON.stringify({ resources: (await sandbox.refresh()).resources }))
await sandbox.destroy()`,
  "Persistent Storage": `
await sandbox.exec('echo kept > /workspace/kept')
console.log('RESULT ' + JSON.stringify({ seen: (await sandbox2.exec('cat /workspace/kept')).stdout }))
await sandbox2.destroy()
await sandbox.destroy()`,
  "State Snapshots": `
console.log('RESULT ' + JSON.stringify({ snapshotId, listed: snapshots.map((s) => ({ id: s.id, name: s.name })), left: (await sandbox.listSnapshots()).length }))
await sandbox.destroy()`,
  "State Persistence": `
console.log('RESULT ' + JSON.stringify({ restored: (await newSandbox.exec('cat /workspace/marker')).stdout, imported: (await importedSandbox.exec('cat /workspace/marker')).stdout }))
await Promise.all([newSandbox.destroy(), importedSandbox.destroy(), sandbox.destroy()])`,
  "Reset and Restart": `
console.log('RESULT ' + JSON.stringify({ debug: (await sandbox.exec('echo $DEBUG')).stdout, template: sandbox.template }))
await sandbox.destroy()`,
  Cloning: `
console.log('RESULT ' + JSON.stringify({ clone: clonedSandbox.id !== sandbox.id, template: clonedSandbox.template }))
await Promise.all([clonedSandbox.destroy(), sandbox.destroy()])`,
  Migration: `
console.log('RESULT ' + JSON.stringify({ migrated: migratedSandbox.id, template: migratedSandbox.template }))
await migratedSandbox.destroy()`,
  "Sandbox Groups": `
console.log('RESULT ' + JSON.stringify(Object.fromEntries([...results].map(([name, r]) => [name, r.error !== undefined ? { error: r.error } : { exitCode: r.exitCode, stdout: r.stdout }]))))
await group.destroyAll()`,
  "Inter-Sandbox Communication": `
let message
for await (const m of messageQueue.subscribe('api')) { message = { sender: m.sender, payload: JSON.parse(m.text) }; await messageQueue.ack('api', m.sequence); break }
const apiUrl = (await webSandbox.exec('echo $API_URL')).stdout.trim()
// The name the spec set after asking for the URL resolves inside the other member, once the daemon has it.
let resolves = false
for (let i = 0; i < 100 && !resolves; i++) {
  resolves = (await webSandbox.exec('getent hosts api', { check: false })).exitCode === 0
  if (!resolves) await new Promise((r) => setTimeout(r, 100))
}
console.log('RESULT ' + JSON.stringify({ apiUrl, message, resolves, api: apiSandbox.id }))
await Promise.all([webSandbox.destroy(), apiSandbox.destroy()])`,
  "Error Recovery": `
const breaker = new SandboxCircuitBreaker()
const ok = (await breaker.execute(() => sandbox.exec('echo ok'))).stdout
const failures = []
for (let i = 0; i < 6; i++) {
  try { await breaker.execute(() => sandbox.exec('exit 1')) } catch (e) { failures.push(e.constructor.name + ': ' + e.message.split(':')[0]) }
}
// Out of memory: the 'error' listener restarts with twice the memory.
const before = sandbox.config.resources.memoryMB
await sandbox.exec('python3 -c "x = bytearray(1024 * 1024 * 1024)"', { check: false })
for (let i = 0; i < 300 && sandbox.resources.memoryMB === before; i++) await new Promise((r) => setTimeout(r, 100))
console.log('RESULT ' + JSON.stringify({ ok, failures, memoryBefore: before, memoryAfter: sandbox.resources.memoryMB }))
await sandbox.destroy()`,
  "Graceful Shutdown": `
console.log('RESULT ' + JSON.stringify({ sandbox: sandbox.id }))
console.log('READY')
setInterval(() => {}, 1000)`,
  "Connection Pooling": `
const pool = new SandboxPool()
const first = await pool.acquire('local', { template: 'python' })
await pool.release(first, 'local', { template: 'python' })
const again = await pool.acquire('local', { template: 'python' })
console.log('RESULT ' + JSON.stringify({ reused: first === again }))
await again.destroy()`,
  "Caching and Reuse": `
const a = await createOptimizedSandbox('local', { template: 'python' })
await a.exec('echo cached > /workspace/c')
const b = await createOptimizedSandbox('local', { template: 'python' })
console.log('RESULT ' + JSON.stringify({ cloned: a.id !== b.id, copied: (await b.exec('cat /workspace/c')).stdout }))
await Promise.all([a.destroy(), b.destroy()])`,
};

/** The sandbox a block uses without making it; some sections need a particular one. */
const PREAMBLE: Record<string, string> = {
  "Error Recovery": "const sandbox = await compute('local', { template: 'python', resources: { memoryMB: 128 } })",
  // The spec's templateMapping maps 'python:3.11': a sandbox of that template.
  Migration: "const sandbox = await compute('local', { template: 'python:3.11' })",
  "State Persistence": "const sandbox = await compute('local', { template: 'python' })\nawait sandbox.exec('echo saved > /workspace/marker')",
};

/** Glue that only fits one variant of a split block (by "Section #n"). */
const VARIANT_GLUE: Record<string, string> = {
  "Basic Creation #1": "console.log('RESULT ' + JSON.stringify({ state: sandbox.state }))\nawait sandbox.destroy()",
  "Basic Creation #2": "console.log('RESULT ' + JSON.stringify({ state: sandbox.state, template: sandbox.template }))\nawait sandbox.destroy()",
  "Template-Based Creation #1": "console.log('RESULT ' + JSON.stringify({ custom: (await sandbox.exec('python3 -c \"import numpy, pandas, sklearn; print(1)\"')).stdout, env: (await sandbox.exec('echo $PYTHONPATH')).stdout }))\nawait Promise.all([webSandbox.destroy(), devSandbox.destroy(), sandbox.destroy()])",
};

/** Every program of the spec, in order. */
export function specPrograms(specPath: string): Program[] {
  const out: Program[] = [];
  for (const block of specBlocks(readFileSync(specPath, "utf8"))) {
    const vs = variants(toLocal(block.code));
    vs.forEach((v, i) => {
      const name = vs.length > 1 ? `${block.section} #${i + 1}` : block.section;
      const glue = v.gpu ? "" : (VARIANT_GLUE[name] ?? GLUE[block.section] ?? "");
      out.push({ name, section: block.section, code: v.code, gpu: v.gpu, source: program(block.section, v.code, glue) });
    });
  }
  return out;
}

function program(section: string, code: string, glue: string): string {
  const imported = new Set([...code.matchAll(/import\s*\{([^}]*)\}/g)].flatMap((m) => m[1]!.split(",").map((n) => n.trim().replace(/^type\s+/, ""))));
  const whole = `${code}\n${glue}`;
  const needsSandbox = usesFree(whole, "sandbox");
  const preamble = needsSandbox ? (PREAMBLE[section] ?? "const sandbox = await compute('local', { template: 'python' })") : "";
  const names = CLIENT_NAMES.filter((n) => !imported.has(n) && (new RegExp(`\\b${n}\\b`).test(whole) || (n === "compute" && preamble)));
  const header = names.length ? `import { ${names.join(", ")} } from 'computesdkd-client'\n` : "";
  // The spec is TypeScript: its types are stripped (no checking: the spec's own snippets are not strict TS).
  const ts_ = [header, preamble, code, glue].filter(Boolean).join("\n");
  return ts.transpileModule(ts_, { compilerOptions: { module: ts.ModuleKind.ESNext, target: ts.ScriptTarget.ES2022, verbatimModuleSyntax: false } }).outputText;
}
