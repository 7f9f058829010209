// Drives the Restate peer like keyflow-bench drives the engine: restock 100 items, then N
// AddToCart calls for 1,000 users x 100 items (record i: user i mod 1000, item
// (i div 1000 + user) mod 100, quantity 1..5) with C calls in flight, then one checkout per
// user; throughput = N / (first AddToCart sent -> last receipt). Checks the quantities.
// Then the latency phase, as keyflow-bench's: R*S fresh users get a one-item basket (not
// timed), then checkout i is sent at start + i/R (open loop, whatever the answers do) and its
// latency is send -> the receipt (the checkout's response). W*R more users check out at the
// same rate just before, not measured (the warm-up, as keyflow-bench's).
// Usage: node driver.mjs <ingress-url> <records> <concurrency> <json-out> [rate/s] [seconds]
//        [warm-up seconds, default 30]
import { writeFileSync } from "node:fs";

const [url, recordsArg, concArg, out, rateArg, secsArg, warmArg] = process.argv.slice(2);
const RATE = Number(rateArg ?? 100);
const SECS = Number(secsArg ?? 10);
const WARM_SECS = Number(warmArg ?? 30);
const N = Number(recordsArg ?? 10000);
const C = Number(concArg ?? 100);
const run = `r${Date.now().toString(36)}`;
const users = 1000;
const items = 100;

async function call(path, body) {
  for (let attempt = 0; ; attempt++) {
    const res = await fetch(`${url}/${path}`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const text = await res.text();
    if (res.ok) return text.length ? JSON.parse(text) : null;
    if (attempt >= 5) throw new Error(`${path}: HTTP ${res.status} ${text}`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

async function pool(n, conc, f) {
  let next = 0;
  const lat = [];
  async function worker() {
    while (next < n) {
      const i = next++;
      const t = performance.now();
      await f(i);
      lat.push(performance.now() - t);
    }
  }
  await Promise.all(Array.from({ length: conc }, worker));
  return lat.sort((a, b) => a - b);
}

const itemId = (k) => `${run}-item${String(k).padStart(3, "0")}`;
const userId = (u) => `${run}-u${String(u).padStart(4, "0")}`;
await pool(items, 10, (k) => call(`stock/${itemId(k)}/restock`, 1e9));
// Warm-up: one add and a checkout.
await call(`cart/${run}-warm/addToCart`, { itemId: itemId(0), quantity: 1 });
await call(`cart/${run}-warm/checkout`);

let added = 0;
const t0 = performance.now();
const addLat = await pool(N, C, (i) => {
  const u = i % users;
  const q = 1 + (i % 5);
  added += q;
  return call(`cart/${userId(u)}/addToCart`, {
    itemId: itemId((Math.floor(i / users) + u) % items),
    quantity: q,
  });
});
const tAdds = performance.now();
let inReceipts = 0;
const buyers = Math.min(users, N);
await pool(buyers, C, async (u) => {
  const r = await call(`cart/${userId(u)}/checkout`);
  for (const q of Object.values(r.basket)) inReceipts += q;
});
const t1 = performance.now();
const pct = (v, q) => v[Math.min(v.length - 1, Math.ceil(q * v.length) - 1)];

// Latency phase: fixed-rate checkouts of one-item baskets.
// The first W checkouts are the warm-up: sent on the same schedule, not measured.
const L = Math.round(RATE * SECS);
const W = Math.round(RATE * WARM_SECS);
const latUser = (i) => `${run}-lat${String(i).padStart(5, "0")}`;
await pool(W + L, 100, (i) =>
  call(`cart/${latUser(i)}/addToCart`, { itemId: itemId(i % items), quantity: 1 }),
);
const checkoutLat = [];
const lStart = performance.now() + 50;
let lateReceipts = 0;
await Promise.all(
  Array.from({ length: W + L }, async (_, i) => {
    const due = lStart + (i * 1000) / RATE;
    await new Promise((r) => setTimeout(r, Math.max(0, due - performance.now())));
    const t = performance.now();
    const r = await call(`cart/${latUser(i)}/checkout`);
    if (i < W) return;
    checkoutLat.push(performance.now() - t);
    if (Object.values(r.basket).reduce((a, b) => a + b, 0) !== 1) lateReceipts++;
  }),
);
checkoutLat.sort((a, b) => a - b);
const latency = {
  checkouts: L,
  rate_per_s: RATE,
  warmup_secs: WARM_SECS,
  ms: {
    p50: pct(checkoutLat, 0.5),
    p99: pct(checkoutLat, 0.99),
    p999: pct(checkoutLat, 0.999),
    max: checkoutLat[checkoutLat.length - 1],
    mean: checkoutLat.reduce((a, b) => a + b, 0) / checkoutLat.length,
  },
  wrong_receipts: lateReceipts,
};
const result = {
  run,
  records: N,
  concurrency: C,
  seconds: (t1 - t0) / 1e3,
  records_per_s: N / ((t1 - t0) / 1e3),
  adds_seconds: (tAdds - t0) / 1e3,
  add_call_ms: { p50: pct(addLat, 0.5), p99: pct(addLat, 0.99) },
  quantity_added: added,
  quantity_in_receipts: inReceipts,
  quantity_ok: added === inReceipts,
  latency,
};
console.log(JSON.stringify(result));
if (out) writeFileSync(out, JSON.stringify(result, null, 2) + "\n");
if (!result.quantity_ok || latency.wrong_receipts > 0) process.exit(1);
