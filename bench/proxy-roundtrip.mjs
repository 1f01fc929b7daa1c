// What the sandbox proxy adds to a round trip, measured in one run against a
// real hutchd with a real base sandbox, interleaved in rounds so that load
// elsewhere on the machine hits every series alike:
//   - SDK commands.run("true") through the proxy (E2B_SANDBOX_URL, header
//     routing), next to the same call straight to a standalone agent
//     (debug mode, no proxy);
//   - a raw GET /health to the agent through the proxy, next to the same
//     request straight to the standalone agent (both keep-alive): the
//     difference of these is the proxy's own cost;
//   - a loopback TCP round trip (1 byte, echo server in this process).
// The budget (p50 through the proxy at most 1 ms above the direct call) is
// printed beside the figures.
//
//   node bench/proxy-roundtrip.mjs [runs, default 300] [--json]
import { createServer, connect } from 'node:net';
import { createRequire } from 'node:module';
import { pathToFileURL } from 'node:url';
import http from 'node:http';

const e2e = new URL('../tests/e2e/', import.meta.url);
const require = createRequire(e2e);
const { Sandbox } = await import(pathToFileURL(require.resolve('e2b')).href);
const { startAgent } = await import(new URL('lib/agent.mjs', e2e).href);
const { requireBase, startHutchd } = await import(new URL('lib/hutchd.mjs', e2e).href);

const args = process.argv.slice(2);
const asJson = args.includes('--json');
const runs = Number(args.find((a) => !a.startsWith('--')) ?? 300);
const warmup = Math.max(20, Math.floor(runs / 10));
const rounds = 10;
const BUDGET_OVERHEAD_P50_MS = 1;

const now = () => process.hrtime.bigint();
const ms = (ns) => Number(ns) / 1e6;
const percentile = (sorted, p) =>
  sorted[Math.min(sorted.length - 1, Math.floor(p * (sorted.length - 1) + 0.5))];

async function echoPair() {
  const server = createServer((s) => { s.setNoDelay(true); s.pipe(s); });
  await new Promise((ok) => server.listen(0, '127.0.0.1', ok));
  const sock = connect(server.address().port, '127.0.0.1');
  sock.setNoDelay(true);
  await new Promise((ok, fail) => { sock.once('connect', ok); sock.once('error', fail); });
  let waiting = null;
  sock.on('data', () => { const w = waiting; waiting = null; w?.(); });
  return {
    once: () => new Promise((ok) => { waiting = ok; sock.write('x'); }),
    close: () => { sock.destroy(); server.close(); },
  };
}

// GET /health over one kept-alive connection.
function healthGetter(port, headers) {
  const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
  const get = () => new Promise((ok, fail) => {
    http.get({ host: '127.0.0.1', port, path: '/health', headers, agent }, (res) => {
      res.resume();
      res.on('end', () => (res.statusCode === 204 ? ok() :
        fail(new Error(`/health: ${res.statusCode}`))));
    }).on('error', fail);
  });
  get.close = () => agent.destroy();
  return get;
}

// The SDK reads its settings when a sandbox object is made.
async function withEnv(env, fn) {
  const keys = ['E2B_DEBUG', 'E2B_SANDBOX_URL', 'E2B_API_URL', 'E2B_API_KEY'];
  const saved = Object.fromEntries(keys.map((k) => [k, process.env[k]]));
  for (const k of keys) delete process.env[k];
  Object.assign(process.env, env);
  try { return await fn(); } finally {
    for (const k of keys) if (saved[k] === undefined) delete process.env[k];
    else process.env[k] = saved[k];
  }
}

requireBase();
const h = await startHutchd({ runtime: true, args: ['--log=warn'] });
const agent = await startAgent({ args: ['--log=warn'] });
const echo = await echoPair();
let proxied;
let direct;
let viaProxy;
let straight;
const samples = {};
try {
  proxied = await withEnv(h.sdkEnv, () => Sandbox.create());
  direct = await withEnv(agent.sdkEnv, () => Sandbox.create());
  viaProxy = healthGetter(h.proxyPort, { 'E2b-Sandbox-Id': proxied.sandboxId,
    'E2b-Sandbox-Port': '49983' });
  straight = healthGetter(agent.port, {});
  const run = (sbx) => async () => {
    const r = await sbx.commands.run('true');
    if (r.exitCode !== 0) throw new Error(`exit ${r.exitCode}`);
  };
  const series = {
    'raw TCP round trip (echo, 1 byte)': () => echo.once(),
    'raw GET /health, agent direct': straight,
    'raw GET /health, through proxy': viaProxy,
    'commands.run("true"), agent direct': run(direct),
    'commands.run("true"), through proxy': run(proxied),
  };
  const weight = (name) => (name.startsWith('raw') ? 4 : 1);
  for (const name of Object.keys(series)) samples[name] = [];
  for (const fn of Object.values(series))
    for (let i = 0; i < warmup; i++) await fn();
  for (let r = 0; r < rounds; r++) {
    for (const [name, fn] of Object.entries(series)) {
      const n = Math.ceil((runs * weight(name)) / rounds);
      for (let i = 0; i < n; i++) {
        const t0 = now();
        await fn();
        samples[name].push(now() - t0);
      }
    }
  }
} finally {
  viaProxy?.close();
  straight?.close();
  echo.close();
  await proxied?.kill().catch(() => {});
  await agent.stop();
  await h.stop();
}

const results = Object.entries(samples).map(([name, xs]) => {
  const sorted = xs.map(ms).sort((a, b) => a - b);
  return { name, runs: sorted.length, p50: percentile(sorted, 0.5),
    p99: percentile(sorted, 0.99), min: sorted[0] };
});
const by = Object.fromEntries(results.map((r) => [r.name, r]));
const overhead = {
  health: by['raw GET /health, through proxy'].p50 - by['raw GET /health, agent direct'].p50,
  run: by['commands.run("true"), through proxy'].p50 -
    by['commands.run("true"), agent direct'].p50,
};

if (asJson) {
  console.log(JSON.stringify({ results, overhead, budgetOverheadP50Ms: BUDGET_OVERHEAD_P50_MS }));
} else {
  console.log(`proxy round trips over loopback, ${runs} runs per series (raw: x4) after ` +
    `${warmup} warm-up, ms`);
  console.log(`  ${'series'.padEnd(38)} ${'p50'.padStart(8)} ${'p99'.padStart(8)} ` +
    `${'min'.padStart(8)}`);
  for (const r of results)
    console.log(`  ${r.name.padEnd(38)} ${r.p50.toFixed(3).padStart(8)} ` +
      `${r.p99.toFixed(3).padStart(8)} ${r.min.toFixed(3).padStart(8)}`);
  const verdict = (v) => (v <= BUDGET_OVERHEAD_P50_MS ? 'within' : 'OVER');
  console.log(`proxy overhead at p50: /health ${overhead.health.toFixed(3)} ms, ` +
    `commands.run ${overhead.run.toFixed(3)} ms (budget <= ${BUDGET_OVERHEAD_P50_MS} ms: ` +
    `${verdict(overhead.health)}, ${verdict(overhead.run)})`);
}
