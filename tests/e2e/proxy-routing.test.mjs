// The sandbox proxy end to end, through the official SDK and raw HTTP against
// a real hutchd with real sandboxes: getHost() URLs served by web servers in
// the sandbox (on 127.0.0.1 and on 0.0.0.0) reached by Host routing on the
// proxy port and on the API port, a WebSocket echo, pre-signed /files URLs
// with no headers at all, the proxy's own errors (unknown and killed
// sandboxes, reserved agent routes, browser pages) and the traffic access
// token.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import http from 'node:http';
import net from 'node:net';
import { Sandbox } from 'e2b';
import { requireBase, startHutchd, useEnv } from './lib/hutchd.mjs';

const domain = 'hutch.test';
let h;
let restore;
before(async (t) => {
  if (!requireBase(t)) return;
  h = await startHutchd({ runtime: true, args: [`--domain=${domain}`] });
  restore = useEnv(h.sdkEnv);
});
after(async () => { restore?.(); await h?.stop(); });

function skipWithoutBase(t) {
  return !h && (t.skip('no base template (see the message above)'), true);
}

// One HTTP/1.1 request to 127.0.0.1:port with exactly these headers (fetch
// would not let the Host header through unchanged).
function request(port, { method = 'GET', path = '/', headers = {}, body } = {}) {
  return new Promise((ok, fail) => {
    const req = http.request({ host: '127.0.0.1', port, method, path, headers, agent: false },
      (res) => {
        const chunks = [];
        res.on('data', (c) => chunks.push(c));
        res.on('end', () => {
          const text = Buffer.concat(chunks).toString();
          let json = null;
          try { json = JSON.parse(text); } catch { json = null; }
          ok({ status: res.statusCode, headers: res.headers, text, json });
        });
        res.on('error', fail);
      });
    req.on('error', fail);
    req.setTimeout(30000, () => req.destroy(new Error(`${method} ${path}: no answer in 30 s`)));
    req.end(body);
  });
}

// Retries until the server in the sandbox answers (it was started in the
// background); the proxy says 502 "port is not open" until then.
async function untilServing(port, host, path = '/') {
  const deadline = Date.now() + 20000;
  for (;;) {
    const r = await request(port, { path, headers: { Host: host } });
    if (r.status !== 502 || Date.now() > deadline) return r;
    await new Promise((res) => setTimeout(res, 100));
  }
}

const ports = () => [['proxy port', h.proxyPort], ['API port', h.apiPort]];

test('getHost(): servers on 127.0.0.1 and 0.0.0.0, proxy port and API port', async (t) => {
  if (skipWithoutBase(t)) return;
  const sb = await Sandbox.create();
  try {
    await sb.files.write('/home/user/site/index.html', 'served from the sandbox\n');
    await sb.commands.run('cd /home/user/site && exec python3 -m http.server 8000 ' +
      '--bind 127.0.0.1', { background: true });
    const js = 'require("http").createServer((q, s) => { s.setHeader("x-seen-host", ' +
      'q.headers.host); s.end(q.method + " " + q.url + "\\n"); }).listen(3000, "0.0.0.0")';
    await sb.files.write('/home/user/srv.js', js);
    await sb.commands.run('exec node /home/user/srv.js', { background: true });

    const loopbackHost = sb.getHost(8000);
    assert.equal(loopbackHost, `8000-${sb.sandboxId}.${domain}`);
    const anyHost = sb.getHost(3000);
    for (const [name, port] of ports()) {
      const a = await untilServing(port, loopbackHost, '/index.html');
      assert.equal(a.status, 200, `${name}: ${a.text}`);
      assert.equal(a.text, 'served from the sandbox\n');
      const b = await untilServing(port, anyHost, '/some/path?x=1&y=%20z');
      assert.equal(b.status, 200, `${name}: ${b.text}`);
      assert.equal(b.text, 'GET /some/path?x=1&y=%20z\n', name);
      assert.equal(b.headers['x-seen-host'], anyHost, 'the public Host goes upstream');
      // Any domain: only the left-most label routes.
      const c = await request(port, { path: '/q', headers: { Host: `3000-${sb.sandboxId}.x.y` } });
      assert.equal(c.text, 'GET /q\n', name);
      // A body reaches the sandbox's server and the answer comes back.
      const d = await request(port, { method: 'POST', path: '/post',
        headers: { Host: anyHost, 'Content-Type': 'text/plain' }, body: 'x'.repeat(100000) });
      assert.equal(d.status, 200);
      assert.equal(d.text, 'POST /post\n');
      // Nothing listens on 8001.
      const e = await request(port, { headers: { Host: sb.getHost(8001) } });
      assert.equal(e.status, 502);
      assert.equal(e.json.message, 'The sandbox is running but port is not open');
      assert.equal(e.json.port, 8001);
      assert.equal(e.json.sandboxId, sb.sandboxId);
    }
    // The API itself still answers on its port when Host names no sandbox.
    const health = await request(h.apiPort, { path: '/health' });
    assert.equal(health.status, 200);
  } finally {
    await sb.kill();
  }
});

const wsEcho = `
const crypto = require('crypto');
const server = require('http').createServer((q, s) => s.end('not a websocket\\n'));
server.on('upgrade', (req, sock, head) => {
  const accept = crypto.createHash('sha1')
    .update(req.headers['sec-websocket-key'] + '258EAFA5-E914-47DA-95CA-C5AB0DC85B11')
    .digest('base64');
  sock.write('HTTP/1.1 101 Switching Protocols\\r\\nUpgrade: websocket\\r\\n' +
    'Connection: Upgrade\\r\\nSec-WebSocket-Accept: ' + accept + '\\r\\n\\r\\n');
  let buf = head;
  sock.on('data', (d) => {
    buf = Buffer.concat([buf, d]);
    while (buf.length >= 2) {
      let len = buf[1] & 127, off = 2;
      if (len === 126) { if (buf.length < 4) return; len = buf.readUInt16BE(2); off = 4; }
      if (buf.length < off + 4 + len) return;
      const mask = buf.subarray(off, off + 4);
      const data = Buffer.from(buf.subarray(off + 4, off + 4 + len));
      for (let i = 0; i < len; i++) data[i] ^= mask[i % 4];
      const op = buf[0] & 15;
      buf = buf.subarray(off + 4 + len);
      if (op === 8) { sock.end(Buffer.from([0x88, 0])); return; }
      const text = Buffer.from('echo: ' + data.toString());
      const hdr = text.length < 126 ? Buffer.from([0x81, text.length]) :
        Buffer.from([0x81, 126, text.length >> 8, text.length & 255]);
      sock.write(Buffer.concat([hdr, text]));
    }
  });
});
server.listen(8080, '127.0.0.1');
`;

function maskedFrame(text, opcode = 1) {
  const data = Buffer.from(text);
  const mask = randomBytes(4);
  const len = data.length < 126 ? Buffer.from([0x80 | opcode, 0x80 | data.length]) :
    Buffer.from([0x80 | opcode, 0x80 | 126, data.length >> 8, data.length & 255]);
  const masked = Buffer.from(data.map((b, i) => b ^ mask[i % 4]));
  return Buffer.concat([len, mask, masked]);
}

// A WebSocket client over a raw socket: the handshake carries the sandbox
// Host (node 20 has no global WebSocket, and a browser-style one could not
// set Host anyway).
function wsConnect(port, host) {
  return new Promise((ok, fail) => {
    const key = randomBytes(16).toString('base64');
    const sock = net.connect(port, '127.0.0.1');
    let buf = Buffer.alloc(0);
    let opened = false;
    const frames = [];
    const waiters = [];
    const deliver = () => {
      while (!opened ? false : buf.length >= 2) {
        let len = buf[1] & 127, off = 2;
        if (len === 126) { if (buf.length < 4) return; len = buf.readUInt16BE(2); off = 4; }
        if (buf.length < off + len) return;
        frames.push({ op: buf[0] & 15, text: buf.subarray(off, off + len).toString() });
        buf = buf.subarray(off + len);
      }
      while (frames.length && waiters.length) waiters.shift()(frames.shift());
    };
    sock.on('error', fail);
    sock.on('data', (d) => {
      buf = Buffer.concat([buf, d]);
      if (!opened) {
        const end = buf.indexOf('\r\n\r\n');
        if (end < 0) return;
        const headText = buf.subarray(0, end).toString();
        buf = buf.subarray(end + 4);
        if (!headText.startsWith('HTTP/1.1 101')) {
          fail(new Error(`no upgrade: ${headText} ${buf}`));
          sock.destroy();
          return;
        }
        const want = createHash('sha1').update(`${key}258EAFA5-E914-47DA-95CA-C5AB0DC85B11`)
          .digest('base64');
        assert.match(headText, new RegExp(`sec-websocket-accept: ${want.replace(/[+/]/g, '\\$&')}`,
          'i'));
        opened = true;
        ok({
          send: (text) => sock.write(maskedFrame(text)),
          next: () => new Promise((res) => { waiters.push(res); deliver(); }),
          close: () => new Promise((res) => { sock.once('close', res); sock.write(maskedFrame('', 8)); }),
          socket: sock,
        });
      }
      deliver();
    });
    sock.write(`GET /ws HTTP/1.1\r\nHost: ${host}\r\nUpgrade: websocket\r\n` +
      `Connection: Upgrade\r\nSec-WebSocket-Key: ${key}\r\nSec-WebSocket-Version: 13\r\n\r\n`);
  });
}

test('WebSocket echo through the proxy port and the API port', async (t) => {
  if (skipWithoutBase(t)) return;
  const sb = await Sandbox.create();
  try {
    await sb.files.write('/home/user/ws.js', wsEcho);
    await sb.commands.run('exec node /home/user/ws.js', { background: true });
    const host = sb.getHost(8080);
    await untilServing(h.proxyPort, host);
    for (const [name, port] of ports()) {
      const ws = await wsConnect(port, host);
      ws.send('hello');
      assert.deepEqual(await ws.next(), { op: 1, text: 'echo: hello' }, name);
      const big = 'z'.repeat(5000);
      ws.send(big);
      ws.send('after');
      assert.equal((await ws.next()).text, `echo: ${big}`);
      assert.equal((await ws.next()).text, 'echo: after');
      await ws.close();
    }
    // Killing the sandbox ends a connection that is still open.
    const ws = await wsConnect(h.proxyPort, host);
    const closed = new Promise((res) => ws.socket.once('close', res));
    await sb.kill();
    await closed;
  } finally {
    await sb.kill();
  }
});

test('signed upload and download URLs with no headers; bad signature; no leak across',
  async (t) => {
    if (skipWithoutBase(t)) return;
    const a = await Sandbox.create({ secure: true });
    const b = await Sandbox.create({ secure: true });
    try {
      await a.files.write('/home/user/a.txt', 'secret of a');
      await b.files.write('/home/user/a.txt', 'secret of b');
      const down = await a.downloadUrl('/home/user/a.txt');
      assert.ok(down.startsWith(h.sdkEnv.E2B_SANDBOX_URL), down);
      assert.match(down, /signature=/);
      const r = await fetch(down);
      assert.equal(r.status, 200);
      assert.equal(await r.text(), 'secret of a');

      const up = await a.uploadUrl('/home/user/up.txt');
      const form = new FormData();
      form.append('file', new Blob(['uploaded with a URL']), 'up.txt');
      const u = await fetch(up, { method: 'POST', body: form });
      assert.equal(u.status, 200, await u.text());
      assert.equal(await a.files.read('/home/user/up.txt'), 'uploaded with a URL');
      await assert.rejects(b.files.read('/home/user/up.txt'));

      // A signature changed by one character matches no sandbox.
      const url = new URL(down);
      const sig = url.searchParams.get('signature');
      url.searchParams.set('signature', sig.slice(0, -1) + (sig.endsWith('A') ? 'B' : 'A'));
      const bad = await fetch(url);
      assert.equal(bad.status, 401);
      // a's signature for a's path never opens b's file, even with b named.
      const cross = await fetch(down, { headers: { 'E2b-Sandbox-Id': b.sandboxId,
        'E2b-Sandbox-Port': '49983' } });
      assert.notEqual(await cross.text(), 'secret of b');
      assert.ok(cross.status >= 400, `cross status ${cross.status}`);
      // b's URL gives b's file.
      const bd = await fetch(await b.downloadUrl('/home/user/a.txt'));
      assert.equal(await bd.text(), 'secret of b');
      // After a is killed its URLs lead nowhere.
      await a.kill();
      const gone = await fetch(down);
      assert.ok(gone.status === 401 || gone.status === 502, `after kill: ${gone.status}`);
    } finally {
      await a.kill();
      await b.kill();
    }
  });

test('proxy errors: unknown and killed sandboxes 502, reserved routes 404, HTML for browsers',
  async (t) => {
    if (skipWithoutBase(t)) return;
    for (const [name, port] of ports()) {
      const r = await request(port, { headers: { Host: `8000-nosuchsandbox00.${domain}` } });
      assert.equal(r.status, 502, name);
      assert.match(r.headers['content-type'], /^application\/json/);
      assert.deepEqual(r.json, { message: 'The sandbox was not found', code: 502,
        sandboxId: 'nosuchsandbox00' });
    }
    // A malformed sandbox host is refused by the proxy port; on the API port
    // a host that is not "<port>-<id>." is the API's own.
    const bad = await request(h.proxyPort, { headers: { Host: `abc-x.${domain}` } });
    assert.equal(bad.status, 400);
    const api = await request(h.apiPort, { headers: { Host: `abc-x.${domain}` } });
    assert.equal(api.status, 401, 'an API request without a key');
    const sb = await Sandbox.create();
    const envd = sb.getHost(49983);
    for (const [name, port] of ports()) {
      const init = await request(port, { method: 'POST', path: '/init', headers: { Host: envd },
        body: '{}' });
      assert.equal(init.status, 404, name);
      assert.equal(init.json.path, '/init');
      assert.equal(init.json.sandboxId, undefined);
      const health = await request(port, { path: '/health', headers: { Host: envd } });
      assert.equal(health.status, 204, `${name}: the agent's own health route`);
    }
    // A browser navigation gets a page, with what the URL carried escaped.
    const page = await request(h.proxyPort, { path: '/<script>', headers: {
      Host: sb.getHost(8123), Accept: 'text/html,application/xhtml+xml', 'Sec-Fetch-Mode': 'navigate',
      'User-Agent': 'Mozilla/5.0' } });
    assert.equal(page.status, 502);
    assert.match(page.headers['content-type'], /^text\/html/);
    assert.match(page.text, /port is not open/);
    assert.doesNotMatch(page.text, /<script>/);
    assert.equal(await sb.isRunning(), true);
    assert.equal(await sb.kill(), true);
    assert.equal(await sb.isRunning(), false);
    for (const [name, port] of ports()) {
      const r = await request(port, { path: '/health', headers: { Host: envd } });
      assert.equal(r.status, 502, name);
      assert.equal(r.json.message, 'The sandbox was not found');
    }
  });

test('traffic access token: 403 without it or with a wrong one, through with it',
  async (t) => {
    if (skipWithoutBase(t)) return;
    const sb = await Sandbox.create({ secure: true, network: { allowPublicTraffic: false } });
    try {
      assert.ok(sb.trafficAccessToken, 'the create answer carries the token');
      await sb.commands.run('exec python3 -m http.server 8000 --bind 0.0.0.0 -d /etc',
        { background: true });
      const host = sb.getHost(8000);
      for (const [name, port] of ports()) {
        const none = await request(port, { path: '/hostname', headers: { Host: host } });
        assert.equal(none.status, 403, name);
        assert.match(none.json.message, /Token header 'e2b-traffic-access-token' is missing/);
        const wrong = await request(port, { path: '/hostname', headers: { Host: host,
          'e2b-traffic-access-token': 'wrong' } });
        assert.equal(wrong.status, 403);
        assert.match(wrong.json.message, /is invalid/);
      }
      const deadline = Date.now() + 20000;
      let ok;
      do {
        ok = await request(h.proxyPort, { path: '/os-release', headers: { Host: host,
          'e2b-traffic-access-token': sb.trafficAccessToken } });
      } while (ok.status === 502 && Date.now() < deadline &&
        await new Promise((r) => setTimeout(r, 100, true)));
      assert.equal(ok.status, 200, ok.text);
      assert.match(ok.text, /debian/i);
      const viaApi = await request(h.apiPort, { path: '/os-release', headers: { Host: host,
        'e2b-traffic-access-token': sb.trafficAccessToken } });
      assert.equal(viaApi.status, 200);
      // The agent's port is exempt: the SDK works without the traffic token.
      assert.equal((await sb.commands.run('echo ok')).stdout, 'ok\n');
    } finally {
      await sb.kill();
    }
  });

test('/metrics: sandboxes by state, create and proxy histograms, 429s, errors', async (t) => {
  if (skipWithoutBase(t)) return;
  const sb = await Sandbox.create();
  const res = await fetch(`${h.apiUrl}/metrics`);
  await sb.kill();
  assert.equal(res.status, 200);
  assert.match(res.headers.get('content-type'), /^text\/plain; version=0\.0\.4/);
  const text = await res.text();
  const value = (name) => {
    const line = text.split('\n').find((l) => l.startsWith(`${name} `));
    assert.ok(line, `${name} is in /metrics`);
    return Number(line.slice(name.length + 1));
  };
  assert.equal(value('hutch_sandboxes{state="running"}'), 1);
  for (const s of ['creating', 'paused', 'ended']) value(`hutch_sandboxes{state="${s}"}`);
  // Every create in this file succeeded; the histogram counts them all.
  const creates = value('hutch_sandbox_create_seconds_count');
  assert.ok(creates >= 6, `${creates} creates`);
  assert.equal(value('hutch_sandbox_creates_total{result="ok"}'), creates);
  assert.equal(value('hutch_sandbox_create_seconds_bucket{le="+Inf"}'), creates);
  assert.ok(value('hutch_sandbox_create_seconds_sum') > 0);
  assert.equal(value('hutch_sandbox_creates_total{result="failed"}'), 0);
  // Histogram buckets never decrease.
  const buckets = text.split('\n').filter((l) => l.startsWith('hutch_proxy_response_head_seconds_bucket'))
    .map((l) => Number(l.split(' ')[1]));
  assert.equal(buckets.length, 13);
  assert.deepEqual([...buckets].sort((a, b) => a - b), buckets);
  const proxied = value('hutch_proxy_response_head_seconds_count');
  assert.equal(buckets.at(-1), proxied);
  // The proxy's own answers of this file are counted by status.
  assert.ok(value('hutch_proxy_requests_total{status="502"}') >= 4);
  assert.ok(value('hutch_proxy_requests_total{status="403"}') >= 4);
  assert.ok(value('hutch_proxy_requests_total{status="404"}') >= 2);
  assert.ok(value('hutch_proxy_websockets_total') >= 3);
  assert.equal(value('hutch_proxy_websockets_open'), 0);
  assert.equal(value('hutch_api_rate_limited_total'), 0);
  assert.equal(value('hutch_api_errors_total'), 0);
  value('hutch_api_request_duration_seconds_count');
});

test('a paused sandbox is not routed: 502 JSON naming it; resume routes it again',
  async (t) => {
    if (skipWithoutBase(t)) return;
    const sb = await Sandbox.create();
    try {
      const host = sb.getHost(49983);
      const before = await request(h.proxyPort, { path: '/health', headers: { Host: host } });
      assert.equal(before.status, 204);
      const p = await h.api('POST', `/sandboxes/${sb.sandboxId}/pause`, {});
      assert.equal(p.status, 204);
      const paused = await request(h.proxyPort, { path: '/health', headers: { Host: host } });
      assert.equal(paused.status, 502);
      assert.equal(paused.json.code, 502);
      assert.equal(paused.json.sandboxId, sb.sandboxId);
      assert.match(paused.json.message, /not found/);
      const r = await h.api('POST', `/sandboxes/${sb.sandboxId}/resume`, {});
      assert.equal(r.status, 201);
      const again = await h.api('POST', `/sandboxes/${sb.sandboxId}/resume`, {});
      assert.equal(again.status, 409, 'a running sandbox is not resumed');
      const after = await request(h.proxyPort, { path: '/health', headers: { Host: host } });
      assert.equal(after.status, 204);
      assert.equal((await sb.commands.run('echo still here')).stdout, 'still here\n');
    } finally {
      await sb.kill();
    }
  });
