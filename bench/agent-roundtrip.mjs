// Round-trip latency of the agent over loopback: commands.run("true")
// through the official SDK (debug mode, real agent), next to the floors it
// stands on, all measured in the same run:
//   - a raw TCP round trip (1 byte to an echo server in this process),
//   - a raw HTTP round trip to the agent's /health (fetch, keep-alive),
//   - spawning /bin/true and `/bin/bash -l -c true` from this process, since
//     the SDK runs every command through `bash -l -c`,
//   - process.Process/Start of both over raw Connect (no SDK), which splits
//     the SDK row into the agent's work, bash's and the SDK's.
//
//   node bench/agent-roundtrip.mjs [runs, default 300] [--json]
//
// Needs a built agent (HUTCH_AGENT_BIN, or build/src/agent/hutch-agent) and the
// e2e node modules (scripts/setup-deps). Each series runs after a warm-up;
// the series are interleaved in rounds so a burst of load elsewhere on the
// machine hits all of them rather than one.
import { spawn } from 'node:child_process';
import { createServer, connect } from 'node:net';
import { createRequire } from 'node:module';
import { pathToFileURL } from 'node:url';

const e2e = new URL('../tests/e2e/', import.meta.url);
const require = createRequire(e2e);
const { Sandbox } = await import(pathToFileURL(require.resolve('e2b')).href);
const { startAgent, useSdkEnv } = await import(new URL('lib/agent.mjs', e2e).href);

const args = process.argv.slice(2);
const asJson = args.includes('--json');
const runs = Number(args.find((a) => !a.startsWith('--')) ?? 300);
const warmup = Math.max(20, Math.floor(runs / 10));
const rounds = 10;

const now = () => process.hrtime.bigint();
const ms = (ns) => Number(ns) / 1e6;

function percentile(sorted, p) {
  return sorted[Math.min(sorted.length - 1, Math.floor(p * (sorted.length - 1) + 0.5))];
}

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

// As the agent starts a command for the sandbox's user: that uid, its home,
// a plain PATH (root's own login files here may do far more than a
// sandbox's would).
function spawnOnce(cmd, argv) {
  return new Promise((ok, fail) => {
    const child = spawn(cmd, argv, {
      stdio: 'ignore', uid: 1000, gid: 1000, cwd: agent.home,
      env: { HOME: agent.home, USER: 'user', LOGNAME: 'user', SHELL: '/bin/bash',
        PATH: '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' },
    });
    child.once('error', fail);
    child.once('exit', (code) => (code === 0 ? ok() : fail(new Error(`${cmd}: exit ${code}`))));
  });
}

// process.Process/Start over raw Connect (JSON codec, fetch): the agent's
// side of a command without the SDK's. Reads the stream to its end message
// and checks the exit code.
async function rawStart(cmd, args) {
  const body = Buffer.from(JSON.stringify({ process: { cmd, args } }));
  const frame = Buffer.alloc(5 + body.length);
  frame.writeUInt32BE(body.length, 1);
  body.copy(frame, 5);
  const res = await fetch(`${agent.url}/process.Process/Start`, {
    method: 'POST', headers: { 'content-type': 'application/connect+json' }, body: frame,
  });
  const buf = Buffer.from(await res.arrayBuffer());
  if (res.status !== 200 || !/"exitCode"|"exited":true/.test(buf.toString()))
    throw new Error(`Start ${cmd}: ${res.status} ${buf.toString().slice(0, 200)}`);
}

const agent = await startAgent({ args: ['--log=warn'] });
useSdkEnv(agent);
const sbx = await Sandbox.create();
const echo = await echoPair();

const series = {
  'raw TCP round trip (echo, 1 byte)': () => echo.once(),
  'raw HTTP GET /health (fetch)': async () => {
    const res = await fetch(`${agent.url}/health`);
    await res.arrayBuffer();
    if (res.status !== 204) throw new Error(`/health: ${res.status}`);
  },
  'spawn /bin/true (node)': () => spawnOnce('/bin/true', []),
  'spawn /bin/bash -l -c true (node)': () => spawnOnce('/bin/bash', ['-l', '-c', 'true']),
  'raw Connect Start /bin/true': () => rawStart('/bin/true', []),
  'raw Connect Start bash -l -c true': () => rawStart('/bin/bash', ['-l', '-c', 'true']),
  'SDK commands.run("true")': async () => {
    const r = await sbx.commands.run('true');
    if (r.exitCode !== 0) throw new Error(`exit ${r.exitCode}`);
  },
};
// The floors are cheap: give them more samples.
const weight = (name) => (name.startsWith('raw') ? 4 : 1);
const samples = Object.fromEntries(Object.keys(series).map((k) => [k, []]));

try {
  for (const [name, fn] of Object.entries(series))
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
  echo.close();
  await agent.stop();
}

const results = Object.entries(samples).map(([name, xs]) => {
  const sorted = xs.map(ms).sort((a, b) => a - b);
  return { name, runs: sorted.length, p50: percentile(sorted, 0.5),
    p99: percentile(sorted, 0.99), min: sorted[0] };
});

if (asJson) {
  console.log(JSON.stringify(results));
} else {
  console.log(`agent round trips over loopback, ${runs} runs per series after ` +
    `${warmup} warm-up, ms`);
  console.log(`  ${'series'.padEnd(38)} ${'p50'.padStart(8)} ${'p99'.padStart(8)} ` +
    `${'min'.padStart(8)}`);
  for (const r of results)
    console.log(`  ${r.name.padEnd(38)} ${r.p50.toFixed(3).padStart(8)} ` +
      `${r.p99.toFixed(3).padStart(8)} ${r.min.toFixed(3).padStart(8)}`);
}
