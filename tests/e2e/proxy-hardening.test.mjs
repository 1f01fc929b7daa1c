// The sandbox proxy against hostile request heads, over raw sockets so that
// nothing is cleaned up by a client library: reserved agent routes spelled
// with percent-encoding or dot segments, and bodies whose framing two
// servers could read differently (request smuggling).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { connect } from 'node:net';
import { startHutchd } from './lib/hutchd.mjs';

let h;
before(async () => { h = await startHutchd(); });
after(async () => { await h?.stop(); });

const id = 'iabcdefghij0123456789';

// Sends raw bytes and returns the first response's status and the whole text.
export function rawRequest(port, text, waitMs = 5000) {
  return new Promise((ok, fail) => {
    const s = connect(port, '127.0.0.1');
    let got = '';
    const timer = setTimeout(() => { s.destroy(); ok({ status: 0, text: got }); }, waitMs);
    s.on('data', (d) => {
      got += d;
      if (/\r\n\r\n/.test(got)) {
        clearTimeout(timer);
        s.destroy();
        ok({ status: Number(/^HTTP\/1\.1 (\d+)/.exec(got)?.[1] ?? 0), text: got });
      }
    });
    s.on('error', (e) => { clearTimeout(timer); fail(e); });
    s.write(text);
  });
}

// The proxy port routes on these headers; the API port only on a sandbox Host.
const routed = `E2b-Sandbox-Id: ${id}\r\nE2b-Sandbox-Port: 49983\r\n`;
const head = (port) => (port === h.proxyPort ? `Host: x\r\n${routed}` :
  `Host: 49983-${id}.hutch.test\r\n`);

for (const path of ['/%69nit', '/ini%74', '//init', '/./init', '/x/../init', '/%2569nit',
  '/INIT', '/%66reeze']) {
  test(`reserved route spelled ${path} is 404 from the proxy`, async () => {
    for (const port of [h.proxyPort, h.apiPort]) {
      const r = await rawRequest(port, `POST ${path} HTTP/1.1\r\n${head(port)}` +
        'Content-Length: 2\r\nConnection: close\r\n\r\n{}');
      assert.equal(r.status, 404, r.text);
      assert.match(r.text, /reserved for the control plane/);
    }
  });
}

test('a path that only looks like a reserved one is routed (sandbox lookup)', async () => {
  const r = await rawRequest(h.proxyPort, `GET /files?path=/init HTTP/1.1\r\nHost: x\r\n` +
    `${routed}Connection: close\r\n\r\n`);
  assert.equal(r.status, 502, r.text); // no such sandbox: it got past the route check
});

const framings = {
  'Content-Length with chunked': 'Content-Length: 4\r\nTransfer-Encoding: chunked\r\n',
  'chunked with Content-Length': 'Transfer-Encoding: chunked\r\nContent-Length: 4\r\n',
  'two differing Content-Lengths': 'Content-Length: 4\r\nContent-Length: 40\r\n',
  'Transfer-Encoding other than chunked': 'Transfer-Encoding: gzip, chunked\r\n',
};
for (const [name, hdrs] of Object.entries(framings)) {
  test(`request smuggling: ${name} is a 400`, async () => {
    for (const port of [h.proxyPort, h.apiPort]) {
      const r = await rawRequest(port, `POST /files HTTP/1.1\r\n${head(port)}${hdrs}` +
        'Connection: close\r\n\r\n0\r\n\r\nGET /init HTTP/1.1\r\nHost: x\r\n\r\n');
      assert.equal(r.status, 400, `${port}: ${r.text}`);
    }
  });
}

// The API answers a request without a valid key, or declaring a body over
// the limit, when its head arrives: the body is never waited for.
test('API: 401 and 413 come before the body is sent', async () => {
  const big = 'Content-Type: application/json\r\nContent-Length: 1000000\r\n';
  let r = await rawRequest(h.apiPort, `POST /sandboxes HTTP/1.1\r\nHost: x\r\n${big}\r\n`, 3000);
  assert.equal(r.status, 401, r.text);
  r = await rawRequest(h.apiPort, `POST /sandboxes HTTP/1.1\r\nHost: x\r\n` +
    `X-API-Key: ${h.apiKey}\r\nContent-Type: application/json\r\n` +
    'Content-Length: 2000000\r\n\r\n', 3000);
  assert.equal(r.status, 413, r.text);
});
