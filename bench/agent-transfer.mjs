// Transfer speed of the agent's /files endpoint: a 100 MB file uploaded and
// downloaded over loopback, through the official SDK and through raw HTTP,
// printed next to reading and writing the same bytes locally in the same run.
// Node-side figures include hashing every byte (to check it); the curl rows
// (when curl is installed) show what the agent delivers to a C client.
//
//   node bench/agent-transfer.mjs [size MB, default 100] [rounds, default 3]
//
// Needs a built agent (HUTCH_AGENT_BIN, or build/src/agent/hutch-agent) and the
// e2e node modules (scripts/setup-deps). Figures are the best of the rounds.
import { createHash, randomBytes } from 'node:crypto';
import { readFileSync, writeFileSync, openSync, readSync, closeSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { createRequire } from 'node:module';
import { pathToFileURL } from 'node:url';
import { execFileSync } from 'node:child_process';

const e2e = new URL('../tests/e2e/', import.meta.url);
const require = createRequire(e2e);
const { Sandbox } = await import(pathToFileURL(require.resolve('e2b')).href);
const { startAgent, useSdkEnv } = await import(new URL('lib/agent.mjs', e2e).href);

const sizeMb = Number(process.argv[2] ?? 100);
const rounds = Number(process.argv[3] ?? 3);
const size = sizeMb * 1024 * 1024;

// Half random, half zeros per block: gzip has something to do, but not everything.
function makeData() {
  const buf = Buffer.alloc(size);
  for (let off = 0; off < size; off += 65536) randomBytes(32768).copy(buf, off);
  return buf;
}

async function timed(fn) {
  const t0 = process.hrtime.bigint();
  const out = await fn();
  const s = Number(process.hrtime.bigint() - t0) / 1e9;
  return { s, out };
}

const mbps = (s) => (size / 1024 / 1024 / s).toFixed(0);

function bodyStream(data) {
  let off = 0;
  return new ReadableStream({
    pull(ctrl) {
      if (off >= data.length) { ctrl.close(); return; }
      ctrl.enqueue(data.subarray(off, off + 1024 * 1024));
      off += 1024 * 1024;
    },
  });
}

async function drain(body) {
  const h = createHash('sha1');
  for await (const c of body) h.update(c);
  return h.digest('hex');
}

// Seconds curl spent on one transfer (its own clock), body thrown away.
function curlTime(args) {
  const out = execFileSync('curl', ['-sS', '--fail', '-o', '/dev/null', '-w', '%{time_total}',
    ...args], { encoding: 'utf8' });
  return Number(out);
}

let curl = true;
try { execFileSync('curl', ['--version'], { stdio: 'ignore' }); } catch { curl = false; }

const agent = await startAgent({ args: ['--log=warn'] });
useSdkEnv(agent);
const sbx = await Sandbox.create();
const data = makeData();
const want = createHash('sha1').update(data).digest('hex');
const local = join(agent.home, 'local.bin');
const results = {};

function keep(name, s) {
  results[name] = Math.min(results[name] ?? Infinity, s);
}

try {
  for (let r = 0; r < rounds; r++) {
    keep('local write', (await timed(() => writeFileSync(local, data))).s);
    keep('local read', (await timed(() => {
      const fd = openSync(local, 'r');
      const buf = Buffer.allocUnsafe(1024 * 1024);
      const h = createHash('sha1');
      let n;
      while ((n = readSync(fd, buf, 0, buf.length, null)) > 0) h.update(buf.subarray(0, n));
      closeSync(fd);
      return h.digest('hex');
    })).s);

    keep('raw upload (octet-stream)', (await timed(() => fetch(
      `${agent.url}/files?path=raw.bin`,
      { method: 'POST', headers: { 'Content-Type': 'application/octet-stream' },
        body: bodyStream(data), duplex: 'half' }).then((res) => res.arrayBuffer()))).s);
    let t = await timed(async () => drain((await fetch(`${agent.url}/files?path=raw.bin`,
      { headers: { 'Accept-Encoding': 'identity' } })).body));
    if (t.out !== want) throw new Error('raw download: content differs');
    keep('raw download (identity)', t.s);
    // gzip is only used for clients that refuse identity (default agent setting).
    t = await timed(async () => drain((await fetch(`${agent.url}/files?path=raw.bin`,
      { headers: { 'Accept-Encoding': 'gzip, identity;q=0' } })).body));
    if (t.out !== want) throw new Error('gzip download: content differs');
    keep('raw download (gzip, identity refused)', t.s);
    if (curl) {
      keep('curl upload (octet-stream)', curlTime(['-H', 'Content-Type: application/octet-stream',
        '--data-binary', `@${local}`, `${agent.url}/files?path=curl.bin`]));
      keep('curl download', curlTime([`${agent.url}/files?path=raw.bin`]));
    }

    keep('SDK write (Blob, multipart)',
      (await timed(() => sbx.files.write('sdk.bin', new Blob([data])))).s);
    keep('SDK write (stream)',
      (await timed(() => sbx.files.write('sdk-stream.bin', bodyStream(data)))).s);
    t = await timed(async () => drain(await sbx.files.read('sdk.bin', { format: 'stream' })));
    if (t.out !== want) throw new Error('SDK read: content differs');
    keep('SDK read (stream, default encoding)', t.s);
  }
} finally {
  await agent.stop();
  rmSync(local, { force: true });
}

console.log(`agent /files transfer, ${sizeMb} MB, best of ${rounds}, loopback`);
for (const [name, s] of Object.entries(results))
  console.log(`  ${name.padEnd(38)} ${mbps(s).padStart(6)} MB/s  (${s.toFixed(3)} s)`);
