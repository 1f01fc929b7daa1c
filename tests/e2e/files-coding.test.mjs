// How GET /files sends a file: a Content-Length for regular files (and a
// short body, not a hang, when one shrinks mid-download), streamed to EOF for files whose stat() size is made up (procfs,
// sysfs), and the content coding under both --download-gzip settings:
// fallback (the default: gzip only when identity is refused) and negotiate.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { readFileSync, statSync, writeFileSync, truncateSync } from 'node:fs';
import { get as httpGet } from 'node:http';
import { join } from 'node:path';
import { gunzipSync } from 'node:zlib';
import { Sandbox } from 'e2b';
import { startAgent, useSdkEnv } from './lib/agent.mjs';

let plain; // default settings
let negotiating; // --download-gzip=negotiate

before(async () => {
  plain = await startAgent();
  negotiating = await startAgent({ args: ['--download-gzip=negotiate'] });
  const text = 'compress me '.repeat(10000);
  for (const a of [plain, negotiating]) {
    writeFileSync(join(a.home, 'text.txt'), text);
    writeFileSync(join(a.home, 'noise.bin'), randomBytes(256 * 1024));
  }
});

after(async () => {
  await plain?.stop();
  await negotiating?.stop();
});

// The response's bytes as sent (node:http does not inflate, unlike fetch).
function get(agent, path, acceptEncoding) {
  const headers = acceptEncoding === undefined ? {} : { 'Accept-Encoding': acceptEncoding };
  const url = `${agent.url}/files?path=${encodeURIComponent(path)}`;
  return new Promise((ok, fail) => {
    httpGet(url, { headers }, (res) => {
      const chunks = [];
      res.on('data', (c) => chunks.push(c));
      res.on('end', () => ok({
        status: res.statusCode,
        coding: res.headers['content-encoding'] ?? null,
        length: res.headers['content-length'] ?? null,
        body: Buffer.concat(chunks),
      }));
      res.on('error', fail);
    }).on('error', fail);
  });
}

test('a regular file goes out with its size as Content-Length', async () => {
  const file = join(plain.home, 'noise.bin');
  const r = await get(plain, file, 'identity');
  assert.equal(r.status, 200);
  assert.equal(r.coding, null);
  assert.equal(r.length, String(statSync(file).size));
  assert.ok(r.body.equals(readFileSync(file)));
});

// CPU seconds the process has used (utime + stime, in clock ticks of 10 ms).
function cpuSeconds(pid) {
  const f = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1].split(' ');
  return (Number(f[11]) + Number(f[12])) / 100;
}

test('a file that shrinks mid-download ends the body short and leaves the agent idle',
  async () => {
    const file = join(plain.home, 'shrinks.bin');
    writeFileSync(file, Buffer.alloc(256 * 1024 * 1024));
    const got = await new Promise((ok, fail) => {
      httpGet(`${plain.url}/files?path=shrinks.bin`, (res) => {
        let n = 0;
        res.pause(); // let the socket buffers fill, then shrink the file
        setTimeout(() => { truncateSync(file, 1024 * 1024); res.resume(); }, 300);
        res.on('data', (c) => { n += c.length; });
        res.on('end', () => ok({ n, length: Number(res.headers['content-length']) }));
        res.on('error', () => ok({ n, length: Number(res.headers['content-length']) }));
        res.on('aborted', () => {});
      }).on('error', fail);
    });
    assert.equal(got.length, 256 * 1024 * 1024);
    assert.ok(got.n < got.length, `got ${got.n} bytes`);
    const before = cpuSeconds(plain.child.pid);
    await new Promise((r) => setTimeout(r, 1000));
    const spent = cpuSeconds(plain.child.pid) - before;
    assert.ok(spent < 0.2, `agent used ${spent} s of CPU in 1 s after the download ended`);
    assert.match(plain.log(), /shrank during its download/);
  });

test('sysfs files (stat says 4096) are streamed to EOF, not sized by stat', async () => {
  const file = '/sys/devices/system/cpu/online';
  const want = readFileSync(file);
  assert.equal(statSync(file).size, 4096); // the premise of this test
  const r = await get(plain, file, 'identity');
  assert.equal(r.status, 200);
  assert.equal(r.length, null); // chunked
  assert.ok(r.body.equals(want), `got ${JSON.stringify(r.body.toString())}`);
});

test('default (fallback): identity whenever the client accepts it', async () => {
  const want = readFileSync(join(plain.home, 'text.txt'));
  // Node's fetch sends "gzip, deflate" (and maybe br): all accept identity.
  for (const ae of ['gzip', 'gzip, deflate', 'gzip;q=1, identity;q=0.1', '*', undefined]) {
    const r = await get(plain, 'text.txt', ae);
    assert.equal(r.status, 200, `Accept-Encoding: ${ae}`);
    assert.equal(r.coding, null, `Accept-Encoding: ${ae}`);
    assert.ok(r.body.equals(want), `Accept-Encoding: ${ae}`);
  }
});

test('default (fallback): gzip for a client that refuses identity, 406 without it', async () => {
  const want = readFileSync(join(plain.home, 'text.txt'));
  for (const ae of ['gzip, identity;q=0', 'gzip, *;q=0']) {
    const r = await get(plain, 'text.txt', ae);
    assert.equal(r.status, 200, `Accept-Encoding: ${ae}`);
    assert.equal(r.coding, 'gzip', `Accept-Encoding: ${ae}`);
    assert.ok(gunzipSync(r.body).equals(want), `Accept-Encoding: ${ae}`);
  }
  const r = await get(plain, 'text.txt', 'br, identity;q=0');
  assert.equal(r.status, 406);
});

test('negotiate: gzip when the client prefers it and the data compresses', async () => {
  const want = readFileSync(join(negotiating.home, 'text.txt'));
  const r = await get(negotiating, 'text.txt', 'gzip');
  assert.equal(r.status, 200);
  assert.equal(r.coding, 'gzip');
  assert.ok(r.body.length < want.length / 10, `gzip body is ${r.body.length} bytes`);
  assert.ok(gunzipSync(r.body).equals(want));

  const ident = await get(negotiating, 'text.txt', 'identity');
  assert.equal(ident.coding, null);
  assert.equal(ident.length, String(want.length));
  assert.ok(ident.body.equals(want));
});

test('negotiate: incompressible data goes out as identity when allowed', async () => {
  const want = readFileSync(join(negotiating.home, 'noise.bin'));
  const r = await get(negotiating, 'noise.bin', 'gzip');
  assert.equal(r.coding, null);
  assert.ok(r.body.equals(want));
  const forced = await get(negotiating, 'noise.bin', 'gzip, identity;q=0');
  assert.equal(forced.coding, 'gzip');
  assert.ok(gunzipSync(forced.body).equals(want));
});

test('the SDK reads the same bytes under both settings, with and without gzip', async () => {
  for (const a of [plain, negotiating]) {
    useSdkEnv(a);
    const sbx = await Sandbox.create();
    const want = readFileSync(join(a.home, 'noise.bin'));
    for (const gzip of [false, true]) {
      assert.equal(await sbx.files.read('text.txt', { gzip }), 'compress me '.repeat(10000));
      const bytes = await sbx.files.read('noise.bin', { format: 'bytes', gzip });
      assert.ok(Buffer.from(bytes).equals(want), `gzip: ${gzip}`);
    }
  }
});

test('a bad --download-gzip value stops the agent with a message naming it', async () => {
  await assert.rejects(startAgent({ args: ['--download-gzip=always'] }), /agent exited with 1/);
});
