// /files upload and download through the official SDK (debug mode) against a
// real agent: every write flavour, every read format, errors, ownership and a
// 1 GB streamed upload with the agent's memory watched.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { readFileSync, statSync, mkdirSync, symlinkSync, writeFileSync, chmodSync,
  existsSync } from 'node:fs';
import { join } from 'node:path';
import { gzipSync } from 'node:zlib';
import { Sandbox, FileNotFoundError, InvalidArgumentError } from 'e2b';
import { startAgent, useSdkEnv } from './lib/agent.mjs';

let agent;
let sbx;

before(async () => {
  agent = await startAgent();
  useSdkEnv(agent);
  sbx = await Sandbox.create();
});

after(async () => {
  await agent?.stop();
});

const home = (p) => join(agent.home, p);
// The SDK sets metadata: undefined on entries without it; compare what is sent.
const plain = (x) => JSON.parse(JSON.stringify(x));

async function streamText(stream) {
  const chunks = [];
  for await (const c of stream) chunks.push(Buffer.from(c));
  return Buffer.concat(chunks).toString();
}

test('write a string and read it back as text', async () => {
  const info = await sbx.files.write('hello.txt', 'hello world\n');
  assert.deepEqual(plain(info), { name: 'hello.txt', type: 'file', path: home('hello.txt') });
  assert.equal(await sbx.files.read('hello.txt'), 'hello world\n');
  assert.equal(readFileSync(home('hello.txt'), 'utf8'), 'hello world\n');
});

test('relative paths resolve against the user home, parents are created', async () => {
  await sbx.files.write('deep/er/nest.txt', 'n');
  assert.equal(readFileSync(home('deep/er/nest.txt'), 'utf8'), 'n');
  assert.equal(await sbx.files.read(home('deep/er/nest.txt')), 'n');
  assert.equal(await sbx.files.read('~/deep/er/nest.txt'), 'n');
});

test('files and new folders belong to the user (uid 1000)', async () => {
  await sbx.files.write('owned/by/user.txt', 'x');
  for (const p of ['owned', 'owned/by', 'owned/by/user.txt']) {
    const st = statSync(home(p));
    assert.equal(st.uid, 1000, p);
    assert.equal(st.gid, 1000, p);
  }
});

test('user root writes into root home and owns the file', async () => {
  const info = await sbx.files.write('r.txt', 'r', { user: 'root' });
  assert.equal(info.path, join(agent.rootHome, 'r.txt'));
  assert.equal(statSync(info.path).uid, 0);
  assert.equal(await sbx.files.read('r.txt', { user: 'root' }), 'r');
});

test('bytes, Blob and ArrayBuffer round-trip exactly', async () => {
  const data = randomBytes(300000);
  await sbx.files.write('bin/a.bin', new Uint8Array(data).buffer);
  const bytes = await sbx.files.read('bin/a.bin', { format: 'bytes' });
  assert.ok(Buffer.from(bytes).equals(data));

  await sbx.files.write('bin/b.bin', new Blob([data]));
  const blob = await sbx.files.read('bin/b.bin', { format: 'blob' });
  assert.ok(Buffer.from(await blob.arrayBuffer()).equals(data));
});

test('stream upload (octet-stream) and stream download', async () => {
  const parts = [Buffer.from('part one, '), Buffer.from('part two')];
  const body = new ReadableStream({
    start(ctrl) { for (const p of parts) ctrl.enqueue(p); ctrl.close(); },
  });
  const info = await sbx.files.write('stream.txt', body);
  assert.equal(info.path, home('stream.txt'));
  const stream = await sbx.files.read('stream.txt', { format: 'stream' });
  assert.equal(await streamText(stream), 'part one, part two');
});

test('gzip upload and gzip download', async () => {
  const text = 'compress me '.repeat(10000);
  await sbx.files.write('gz.txt', text, { gzip: true });
  assert.equal(readFileSync(home('gz.txt'), 'utf8'), text);
  assert.equal(await sbx.files.read('gz.txt', { gzip: true }), text);

  // By default gzip is only for clients that refuse identity
  // (files-coding.test.mjs covers both --download-gzip settings).
  const res = await fetch(`${agent.url}/files?path=gz.txt`, {
    headers: { 'Accept-Encoding': 'gzip, identity;q=0' },
  });
  assert.equal(res.status, 200);
  assert.equal(res.headers.get('content-encoding'), 'gzip');
  assert.equal(await res.text(), text); // fetch inflates it
});

test('identity download has the expected headers', async () => {
  writeFileSync(home('page.html'), '<p>hi</p>');
  const res = await fetch(`${agent.url}/files?path=page.html`, {
    headers: { 'Accept-Encoding': 'identity' },
  });
  assert.equal(res.status, 200);
  assert.equal(res.headers.get('content-encoding'), null);
  assert.equal(res.headers.get('content-type'), 'text/html; charset=utf-8');
  assert.equal(res.headers.get('content-disposition'), 'inline; filename="page.html"');
  assert.equal(res.headers.get('vary'), 'Accept-Encoding');
  assert.ok(Date.parse(res.headers.get('last-modified')) > 0);
  assert.equal(await res.text(), '<p>hi</p>');

  const refused = await fetch(`${agent.url}/files?path=page.html`, {
    headers: { 'Accept-Encoding': 'br, identity;q=0' },
  });
  assert.equal(refused.status, 406);
  assert.equal((await refused.json()).message, 'no acceptable encoding found, supported: [gzip]');
});

test('empty file: Content-Length 0 and an empty string', async () => {
  await sbx.files.write('empty.txt', '');
  assert.equal(statSync(home('empty.txt')).size, 0);
  const res = await fetch(`${agent.url}/files?path=empty.txt`);
  assert.equal(res.headers.get('content-length'), '0');
  assert.equal(await sbx.files.read('empty.txt'), '');
});

test('procfs files are read to EOF, not sized by stat', async () => {
  const text = await sbx.files.read('/proc/self/status', { user: 'root' });
  assert.match(text, /^Name:/);
  assert.match(text, /VmRSS:/);
});

test('multiple files in one request', async () => {
  const infos = await sbx.files.write([
    { path: 'multi/one.txt', data: 'one' },
    { path: home('multi/two.txt'), data: new Blob(['two']) },
  ]);
  assert.deepEqual(plain(infos), [
    { name: 'one.txt', type: 'file', path: home('multi/one.txt') },
    { name: 'two.txt', type: 'file', path: home('multi/two.txt') },
  ]);
  assert.equal(readFileSync(home('multi/one.txt'), 'utf8'), 'one');
  assert.equal(readFileSync(home('multi/two.txt'), 'utf8'), 'two');
});

test('metadata is echoed, stored as xattrs and replaced by the next upload', async () => {
  const info = await sbx.files.write('meta.txt', 'm', { metadata: { Owner: 'probe', tag: 'x' } });
  assert.deepEqual(info, {
    name: 'meta.txt', type: 'file', path: home('meta.txt'),
    metadata: { owner: 'probe', tag: 'x' },
  });
  // What Stat reads back comes from the file's xattrs, not from the request.
  let stored = await sbx.files.getInfo('meta.txt');
  assert.deepEqual(plain(stored.metadata), { owner: 'probe', tag: 'x' });

  // The next upload's keys replace the set: 'owner' goes, 'tag' changes.
  const other = await sbx.files.write('meta.txt', 'm1', { metadata: { tag: 'y', New: 'n' } });
  assert.deepEqual(other.metadata, { tag: 'y', new: 'n' });
  stored = await sbx.files.getInfo('meta.txt');
  assert.deepEqual(plain(stored.metadata), { tag: 'y', new: 'n' });

  // An upload without metadata clears it.
  const again = await sbx.files.write('meta.txt', 'm2');
  assert.equal(again.metadata, undefined);
  stored = await sbx.files.getInfo('meta.txt');
  assert.ok(stored.metadata === undefined || Object.keys(stored.metadata).length === 0,
    JSON.stringify(stored.metadata));
  assert.equal(await sbx.files.read('meta.txt'), 'm2');

  const raw = await fetch(`${agent.url}/files?path=meta2.txt`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/octet-stream', 'X-Metadata-K': 'v\u00e9' },
    body: 'x',
  }).catch((e) => e);
  // undici refuses non-Latin-1 header values itself; send a too-long key instead.
  if (!(raw instanceof Error)) assert.equal(raw.status, 400);
  const long = await fetch(`${agent.url}/files?path=meta2.txt`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/octet-stream', ['X-Metadata-' + 'k'.repeat(247)]: 'v' },
    body: 'x',
  });
  assert.equal(long.status, 400);
  assert.match((await long.json()).message, /^invalid metadata: /);
});

test('missing file gives FileNotFoundError with the absolute path', async () => {
  await assert.rejects(sbx.files.read('missing.txt'), (err) => {
    assert.ok(err instanceof FileNotFoundError);
    assert.match(err.message, new RegExp(`path '${home('missing.txt')}' does not exist`));
    return true;
  });
});

test('a directory cannot be read or overwritten', async () => {
  mkdirSync(home('adir'), { recursive: true });
  await assert.rejects(sbx.files.read('adir'), InvalidArgumentError);
  await assert.rejects(sbx.files.write('adir', 'x'), InvalidArgumentError);
});

test('a symlink to a root-only file gives the user nothing', async () => {
  const secret = join(agent.root, 'secret');
  writeFileSync(secret, 'root only');
  chmodSync(secret, 0o600);
  symlinkSync(secret, home('sneaky'));
  await assert.rejects(sbx.files.read('sneaky'), (e) => /permission denied/.test(e.message));
  await assert.rejects(sbx.files.write('sneaky', 'pwned'), (e) => /permission denied/.test(e.message));
  assert.equal(readFileSync(secret, 'utf8'), 'root only');

  // A dangling link pointing outside the home must not create the target as root.
  const target = join(agent.root, 'created-by-link');
  symlinkSync(target, home('dangling'));
  await assert.rejects(sbx.files.write('dangling', 'x'), (e) => /permission denied/.test(e.message));
  assert.equal(existsSync(target), false);
});

test('hostile bodies get clear 4xx errors', async () => {
  const post = (headers, body, q = '?path=h.txt') =>
    fetch(`${agent.url}/files${q}`, { method: 'POST', headers, body });
  const cases = [
    [{ 'Content-Type': 'text/plain' }, 'x', 400, /^unsupported content type: text\/plain/],
    [{ 'Content-Type': 'application/octet-stream' }, 'x', 400,
      /path query parameter is required/, ''],
    [{ 'Content-Type': 'application/octet-stream', 'Content-Encoding': 'gzip' },
      'not gzip', 400, /^error decompressing request body/],
    [{ 'Content-Type': 'application/octet-stream', 'Content-Encoding': 'gzip' },
      gzipSync(Buffer.alloc(100000)).subarray(0, 50), 400, /unexpected end of gzip stream/],
    [{ 'Content-Type': 'application/octet-stream', 'Content-Encoding': 'br' }, 'x', 400,
      /unsupported Content-Encoding: br/],
    [{ 'Content-Type': 'multipart/form-data; boundary=XX' },
      '--XX\r\nContent-Disposition: form-data; name="file"; filename="t"\r\n\r\nabc', 400,
      /ends before the closing boundary/],
    [{ 'Content-Type': 'multipart/form-data' }, 'x', 400, /boundary/],
    [{ 'Content-Type': 'multipart/form-data; boundary=XX' }, '--XX--\r\n', 400,
      /no part named 'file'/],
  ];
  for (const [headers, body, status, re, q] of cases) {
    const res = await post(headers, body, q);
    assert.equal(res.status, status, JSON.stringify(headers));
    assert.match(res.headers.get('content-type'), /^application\/json/);
    assert.match((await res.json()).message, re);
  }
  // The agent is still there.
  assert.equal((await fetch(`${agent.url}/health`)).status, 204);
});

function rssKb(pid) {
  const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return m ? Number(m[1]) : 0;
}

function watchRss(pid) {
  let max = rssKb(pid);
  const t = setInterval(() => { max = Math.max(max, rssKb(pid)); }, 20);
  return () => { clearInterval(t); return Math.max(max, rssKb(pid)); };
}

test('1 GB streamed upload keeps the agent under 64 MB and reads back intact', async (t) => {
  const total = 1024 * 1024 * 1024;
  const block = 1024 * 1024;
  const seed = randomBytes(block);
  const upHash = createHash('sha256');
  let sent = 0;
  // Generated on the fly: each block is the seed with its index stamped in.
  const body = new ReadableStream({
    pull(ctrl) {
      if (sent >= total) { ctrl.close(); return; }
      const b = Buffer.from(seed);
      b.writeUInt32LE(sent / block, 0);
      upHash.update(b);
      sent += block;
      ctrl.enqueue(b);
    },
  });
  const stop = watchRss(agent.child.pid);
  const info = await sbx.files.write('big.bin', body, { requestTimeoutMs: 600000 });
  const upMax = stop();
  assert.equal(info.path, home('big.bin'));
  assert.equal(statSync(home('big.bin')).size, total);
  assert.ok(upMax < 64 * 1024, `agent RSS reached ${upMax} kB during upload`);

  const stopDown = watchRss(agent.child.pid);
  const res = await fetch(`${agent.url}/files?path=big.bin`, {
    headers: { 'Accept-Encoding': 'identity' },
  });
  assert.equal(res.status, 200);
  const downHash = createHash('sha256');
  let got = 0;
  for await (const c of res.body) { downHash.update(c); got += c.length; }
  const downMax = stopDown();
  assert.equal(got, total);
  assert.equal(downHash.digest('hex'), upHash.digest('hex'));
  assert.ok(downMax < 64 * 1024, `agent RSS reached ${downMax} kB during download`);
  t.diagnostic(`agent max RSS: upload ${upMax} kB, download ${downMax} kB`);
});
