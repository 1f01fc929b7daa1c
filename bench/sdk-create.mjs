// SDK-level create benchmark against a real hutchd with real sandboxes, with
// the warm pool (the default configuration, WARM sandboxes) and without it
// (every create starts a sandbox: "cold"):
//  1. latency of the official SDK's Sandbox.create() up to the first
//     commands.run() completing, one sandbox at a time (p50/p99), with the
//     create alone and the first command alone beside it;
//  2. throughput of raw API creates (POST /v2/sandboxes) from concurrent
//     clients, in creates per second.
// Budgets (from the project's targets) are printed next to the figures of
// this run. Everything it makes is removed at the end.
//
//   node bench/sdk-create.mjs [LATENCY_RUNS [API_CREATES [CONCURRENCY [WARM]]]]
import { performance } from 'node:perf_hooks';
import { Sandbox } from '../tests/e2e/node_modules/e2b/dist/index.mjs';
import { requireBase, startHutchd, useEnv } from '../tests/e2e/lib/hutchd.mjs';

const runs = Number(process.argv[2] ?? 100);
const apiCreates = Number(process.argv[3] ?? 200);
const concurrency = Number(process.argv[4] ?? 8);
const warm = Number(process.argv[5] ?? 4);
const BUDGET_P50_MS = 20;
const BUDGET_RATE = 200;

function pct(sorted, p) {
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))];
}
const fmt = (v) => v.toFixed(1);

function summary(name, samples) {
  const s = [...samples].sort((a, b) => a - b);
  return `${name.padEnd(28)} p50 ${fmt(pct(s, 50)).padStart(7)} ms   ` +
    `p99 ${fmt(pct(s, 99)).padStart(7)} ms   min ${fmt(s[0])} max ${fmt(s[s.length - 1])}`;
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

let warmPool = 0;

async function latency(h) {
  const total = [];
  const create = [];
  const first = [];
  // Two warm-up rounds (page cache, first connections) are not counted.
  for (let i = 0; i < runs + 2; i++) {
    const t0 = performance.now();
    const sb = await Sandbox.create();
    const t1 = performance.now();
    await sb.commands.run('true');
    const t2 = performance.now();
    if (i >= 2) { total.push(t2 - t0); create.push(t1 - t0); first.push(t2 - t1); }
    await h.api('DELETE', `/sandboxes/${sb.sandboxId}`);
    // One create at a time, as a user would: the pool refills in between.
    if (warmPool) await sleep(100);
  }
  return { total, create, first };
}

async function throughput(h) {
  const ids = [];
  let next = 0;
  let failed = 0;
  const t0 = performance.now();
  await Promise.all(Array.from({ length: concurrency }, async () => {
    while (next < apiCreates) {
      next++;
      const r = await h.api('POST', '/v2/sandboxes', { templateID: 'base' });
      if (r.status === 201) ids.push(r.json.sandboxID); else failed++;
    }
  }));
  const secs = (performance.now() - t0) / 1000;
  // Removal is not part of the figure.
  for (let i = 0; i < ids.length; i += 16) {
    await Promise.all(ids.slice(i, i + 16).map((id) => h.api('DELETE', `/sandboxes/${id}`)));
  }
  return { ok: ids.length, failed, secs };
}

async function measure(pool) {
  warmPool = pool;
  const h = await startHutchd({ runtime: true, warmPool: pool,
    args: ['--pool-size=16', '--log=warn'] });
  const restore = useEnv(h.sdkEnv);
  try {
    if (pool) await sleep(2000); // let the pool fill before the first create
    const lat = await latency(h);
    const tp = await throughput(h);
    return { lat, tp };
  } finally {
    restore();
    await h.stop();
  }
}

function report(label, { lat, tp }) {
  const p50 = pct([...lat.total].sort((a, b) => a - b), 50);
  const rate = tp.ok / tp.secs;
  console.log(`-- ${label}`);
  console.log(summary('create + first command', lat.total));
  console.log(summary('  Sandbox.create()', lat.create));
  console.log(summary('  first commands.run()', lat.first));
  console.log(`API creates per second       ${fmt(rate)} /s  (${tp.ok} in ${fmt(tp.secs)} s, ` +
    `${tp.failed} failed)`);
  console.log(`budget: create + first command p50 <= ${BUDGET_P50_MS} ms: ` +
    `${p50 <= BUDGET_P50_MS ? 'met' : 'NOT met'} (${fmt(p50)} ms)`);
  console.log(`budget: API creates >= ${BUDGET_RATE}/s: ` +
    `${rate >= BUDGET_RATE ? 'met' : 'NOT met'} (${fmt(rate)}/s)`);
}

const t = { skip: (m) => { console.error(m); process.exit(0); } };
requireBase(t);
const warmRun = await measure(warm);
const coldRun = await measure(0);
console.log(`sdk-create: ${runs} sequential SDK creates, ${apiCreates} API creates ` +
  `with ${concurrency} clients (base template, ${new Date().toISOString()})`);
report(`warm pool of ${warm} (hutchd's default is 2)`, warmRun);
report('no warm pool (every create starts a sandbox)', coldRun);
