// Load on loopback through the official SDK: 200 clients at once each create a
// sandbox, run a command in it through the proxy and kill it. The first run
// has the default plan and must see no 5xx at all; the second has a small
// plan (few creates per minute, few sandboxes at once) and must answer
// what is over it with 429 (RateLimitError), never 5xx. Outcomes are
// counted, printed, and checked against /metrics.
//
// HUTCH_LOAD_CLIENTS changes the number of clients (default 200).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { Sandbox, RateLimitError } from 'e2b';
import { requireBase, startHutchd, useEnv } from './lib/hutchd.mjs';

const clients = Number(process.env.HUTCH_LOAD_CLIENTS ?? 200);

let ok = true;
before((t) => { ok = requireBase(t); });

// Prometheus text to { 'name{labels}': value }.
function parseMetrics(text) {
  const out = {};
  for (const line of text.split('\n')) {
    if (!line || line.startsWith('#')) continue;
    const sp = line.lastIndexOf(' ');
    out[line.slice(0, sp)] = Number(line.slice(sp + 1));
  }
  return out;
}

async function metrics(h) {
  const res = await fetch(`${h.apiUrl}/metrics`);
  assert.equal(res.status, 200);
  return { text: await res.text(), get values() { return parseMetrics(this.text); } };
}

function fiveHundreds(m, prefix) {
  return Object.entries(m).filter(([k, v]) => k.startsWith(`${prefix}{status="5`) && v > 0);
}

// One client: create, run, kill. Returns the outcome's name.
async function client(i) {
  let sb;
  try {
    sb = await Sandbox.create({ timeoutMs: 120_000, metadata: { load: String(i) } });
  } catch (e) {
    return e instanceof RateLimitError ? 'create 429' : `create ${e.name}: ${e.message}`;
  }
  try {
    const r = await sb.commands.run(`echo client ${i}`);
    if (r.stdout !== `client ${i}\n`) return `run: wrong output ${JSON.stringify(r.stdout)}`;
    return (await sb.kill()) ? 'ok' : 'kill: not found';
  } catch (e) {
    await sb.kill().catch(() => {});
    return e instanceof RateLimitError ? 'run 429' : `run ${e.name}: ${e.message}`;
  }
}

async function burst(n) {
  const start = Date.now();
  const results = await Promise.all(Array.from({ length: n }, (_, i) => client(i)));
  const counts = {};
  for (const r of results) counts[r] = (counts[r] ?? 0) + 1;
  return { counts, seconds: (Date.now() - start) / 1000 };
}

test(`${clients} clients at once: create, run, kill; no 5xx`, { timeout: 300_000 },
  async (t) => {
    if (!ok) return t.skip('no base template');
    const h = await startHutchd({ runtime: true,
      env: { HUTCH_MAX_CONNECTIONS: '2000' } });
    const restore = useEnv(h.sdkEnv);
    try {
      const { counts, seconds } = await burst(clients);
      t.diagnostic(`outcomes in ${seconds.toFixed(1)} s: ${JSON.stringify(counts)}`);
      const m = (await metrics(h)).values;
      assert.deepEqual(fiveHundreds(m, 'hutch_api_requests_total'), []);
      assert.deepEqual(fiveHundreds(m, 'hutch_proxy_requests_total'), []);
      assert.equal(m.hutch_api_errors_total, 0);
      // Without a plan in the way every client got through.
      assert.deepEqual(counts, { ok: clients });
      assert.equal(m['hutch_sandbox_creates_total{result="ok"}'], clients);
      assert.equal(m.hutch_sandbox_create_seconds_count, clients);
      assert.equal(m['hutch_sandboxes{state="running"}'], 0);
      assert.deepEqual(await h.liveIds(), []);
      assert.deepEqual(h.runtimeObjects(), { run: [], disks: [], cgroups: [] });
    } finally {
      restore();
      await h.stop();
    }
  });

test(`${clients} clients against a small plan: the rest is 429, never 5xx`,
  { timeout: 300_000 }, async (t) => {
    if (!ok) return t.skip('no base template');
    const burstSize = 20;
    const h = await startHutchd({ runtime: true, env: {
      HUTCH_CREATE_RATE: '6', HUTCH_CREATE_BURST: String(burstSize),
      HUTCH_MAX_CONCURRENT: '10', HUTCH_MAX_CONNECTIONS: '2000' } });
    const restore = useEnv(h.sdkEnv);
    try {
      const { counts, seconds } = await burst(clients);
      t.diagnostic(`outcomes in ${seconds.toFixed(1)} s: ${JSON.stringify(counts)}`);
      const m = (await metrics(h)).values;
      assert.deepEqual(fiveHundreds(m, 'hutch_api_requests_total'), []);
      assert.deepEqual(fiveHundreds(m, 'hutch_proxy_requests_total'), []);
      const other = Object.keys(counts).filter((k) => k !== 'ok' && k !== 'create 429');
      assert.deepEqual(other, [], 'only successes and create 429s');
      // At most the burst (plus the refill of the run) got through, at least
      // the concurrency limit did.
      assert.ok(counts.ok >= 10 && counts.ok <= burstSize + 2, JSON.stringify(counts));
      assert.equal(counts.ok + counts['create 429'], clients);
      // The SDK retries a 429 a few times before it gives up.
      const answered429 = m['hutch_api_requests_total{status="429"}'];
      t.diagnostic(`429 answers: ${answered429}`);
      assert.ok(answered429 >= counts['create 429'], `${answered429} 429 answers`);
      assert.ok(m.hutch_api_rate_limited_total >= 1);
      assert.equal(m['hutch_sandbox_creates_total{result="ok"}'], counts.ok);
      assert.deepEqual(await h.liveIds(), []);
    } finally {
      restore();
      await h.stop();
    }
  });
