// API create throughput against a real hutchd with real base sandboxes, raw
// HTTP (POST /v2/sandboxes, keep-alive fetch) from CONCURRENCY clients:
//   - "warm": a warm pool as large as its burst (at most 60 creates, so the
//     pool fills in a few seconds), so every create is the
//     control plane's own work (auth, rate limit, store commits, /init to a
//     started agent): what the API path itself sustains;
//   - "cold": no warm pool beyond the default, so most creates start a
//     sandbox: what the runtime sustains on this machine.
// Reference from the same run: one fdatasync of a 4 KiB write in the same
// temporary folder (each create commits to the store several times), p50.
// Removal of the sandboxes is not timed. Everything made is removed.
//
//   node bench/api-creates.mjs [CREATES [CONCURRENCY]]
import { closeSync, fdatasyncSync, mkdtempSync, openSync, rmSync, writeSync } from 'node:fs';
import { loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { requireBase, startHutchd } from '../tests/e2e/lib/hutchd.mjs';

const creates = Number(process.argv[2] ?? 200);
const concurrency = Number(process.argv[3] ?? 8);
const BUDGET_RATE = 200;
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function fsyncReference() {
  const dir = mkdtempSync(join(tmpdir(), 'hutch-bench-'));
  const fd = openSync(join(dir, 'f'), 'w');
  const xs = [];
  try {
    for (let i = 0; i < 40; i++) {
      writeSync(fd, Buffer.alloc(4096, 1));
      const t0 = performance.now();
      fdatasyncSync(fd);
      xs.push(performance.now() - t0);
    }
  } finally {
    closeSync(fd);
    rmSync(dir, { recursive: true, force: true });
  }
  xs.sort((a, b) => a - b);
  return xs[Math.floor(xs.length / 2)];
}

async function burst(warm, total) {
  const h = await startHutchd({ runtime: true, warmPool: warm,
    args: ['--pool-size=16', '--log=warn'] });
  const ids = [];
  let next = 0;
  let failed = 0;
  try {
    // Let the warm pool fill (a cold start is about 30 ms of CPU here).
    await sleep(2000 + warm * 100);
    const t0 = performance.now();
    await Promise.all(Array.from({ length: concurrency }, async () => {
      while (next < total) {
        next++;
        const r = await h.api('POST', '/v2/sandboxes', { templateID: 'base' });
        if (r.status === 201) ids.push(r.json.sandboxID); else failed++;
      }
    }));
    const secs = (performance.now() - t0) / 1000;
    return { rate: ids.length / secs, ok: ids.length, failed, secs };
  } finally {
    for (let i = 0; i < ids.length; i += 16) {
      await Promise.all(ids.slice(i, i + 16).map((id) => h.api('DELETE', `/sandboxes/${id}`)));
    }
    await h.stop();
  }
}

requireBase();
const load = () => loadavg().map((v) => v.toFixed(2)).join(' ');
const fsyncBefore = fsyncReference();
const loadBefore = load();
const warmCreates = Math.min(creates, 60);
const warm = await burst(warmCreates, warmCreates);
const cold = await burst(0, creates);
const fsyncAfter = fsyncReference();
const line = (name, r) => console.log(`${name.padEnd(44)} ${r.rate.toFixed(1).padStart(7)} /s  ` +
  `(${r.ok} in ${r.secs.toFixed(2)} s, ${r.failed} failed)`);
console.log(`api-creates: ${warmCreates} warm and ${creates} cold raw API creates, ` +
  `${concurrency} clients, base template, load ${loadBefore} -> ${load()}`);
line(`warm pool of ${warmCreates} (control plane only)`, warm);
line('no warm pool (every create starts a sandbox)', cold);
console.log(`reference: fdatasync of 4 KiB here, p50 ${fsyncBefore.toFixed(2)} ms before, ` +
  `${fsyncAfter.toFixed(2)} ms after`);
const verdict = (r) => (r.rate >= BUDGET_RATE ? 'met' : 'NOT met');
console.log(`budget: API creates >= ${BUDGET_RATE}/s: warm ${verdict(warm)}, ` +
  `cold ${verdict(cold)}`);
