// Exec round trip of `true` through the TypeScript client: p50/p95 in ms as JSON.
//   node dist/bench/rtt.js SOCKET [N]      (bench/clients.sh runs it)
import { connect } from "../src/index.js";

const [socket, n = "300"] = process.argv.slice(2);
const client = await connect({ socket });
const sb = await client.create("local");
for (let i = 0; i < 20; i++) await sb.exec(["true"]); // warm up
const times: number[] = [];
for (let i = 0; i < Number(n); i++) {
  const t0 = performance.now();
  await sb.exec(["true"]);
  times.push(performance.now() - t0);
}
await sb.destroy();
client.close();
times.sort((a, b) => a - b);
const at = (p: number) => times[Math.min(times.length - 1, Math.round((p / 100) * (times.length - 1)))]!;
console.log(JSON.stringify({ client: "typescript", n: times.length, p50_ms: +at(50).toFixed(3), p95_ms: +at(95).toFixed(3) }));
