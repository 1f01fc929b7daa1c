// Slow and idle clients on the API and proxy ports (slowloris), scaled down
// through settings: 40 connections per port, so at most 10 may owe a request
// head at once, a 2 s deadline for the whole head, 8 connections per client
// address. Half-sent heads from many addresses must not keep /health from
// answering, a head trickled line by line is cut at the deadline, one
// address cannot pass its limit, and a proxied stream that outlives the
// deadline is left alone.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { connect } from 'node:net';
import { Sandbox } from 'e2b';
import { requireBase, startHutchd, useEnv } from './lib/hutchd.mjs';

let h;
let ok = true;
before(async (t) => {
  ok = requireBase(t);
  if (!ok) return;
  h = await startHutchd({
    runtime: true,
    args: ['--max-connections=40', '--proxy-max-connections=40', '--head-timeout=2',
      '--max-connections-per-ip=8', '--proxy-max-connections-per-ip=8'],
  });
});
after(async () => { await h?.stop(); });

// A connection from localAddress that sends a request line and one header,
// never the end of the head. Resolves once connected; .ended resolves with
// the milliseconds it stayed open when the server ends it.
function halfHead(port, localAddress) {
  return new Promise((resolve, reject) => {
    const s = connect({ port, host: '127.0.0.1', localAddress });
    const t0 = Date.now();
    s.ended = new Promise((r) => s.on('close', () => r(Date.now() - t0)));
    s.on('error', () => {});
    s.once('connect', () => {
      s.write('GET /health HTTP/1.1\r\nHost: x\r\n');
      resolve(s);
    });
    s.once('error', reject);
  });
}

async function health(port, localAddress = '127.0.0.1') {
  return new Promise((resolve, reject) => {
    const s = connect({ port, host: '127.0.0.1', localAddress });
    let got = '';
    const timer = setTimeout(() => { s.destroy(); resolve(0); }, 3000);
    s.on('data', (d) => {
      got += d;
      if (got.includes('\r\n\r\n')) {
        clearTimeout(timer);
        s.destroy();
        resolve(Number(/^HTTP\/1\.1 (\d+)/.exec(got)?.[1] ?? 0));
      }
    });
    s.on('close', () => { clearTimeout(timer); resolve(Number(/^HTTP\/1\.1 (\d+)/.exec(got)?.[1] ?? 0)); });
    s.on('error', reject);
    s.write('GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n');
  });
}

async function shutCount(reason) {
  const text = await (await fetch(`${h.apiUrl}/metrics`)).text();
  const get = (p) => Number(new RegExp(`^hutch_${p}_connections_shut_total\\{reason="${reason}"\\} (\\d+)$`, 'm')
    .exec(text)?.[1]);
  return { api: get('api'), proxy: get('proxy') };
}

const ports = () => ({ api: h.apiPort, proxy: h.proxyPort });

test('half-sent heads from many addresses do not lock /health out', async (t) => {
  if (!ok) return t.skip('no base template');
  for (const [name, port] of Object.entries(ports())) {
    const before = await shutCount('evicted');
    const socks = [];
    for (let i = 1; i <= 30; i++) socks.push(await halfHead(port, `127.0.1.${i}`));
    const status = await health(port, '127.0.2.1');
    // the API answers /health; the proxy answers that no sandbox is named
    assert.equal(status, name === 'api' ? 200 : 400, name);
    const after = await shutCount('evicted');
    assert.ok(after[name] - before[name] >= 20, `${name}: ${JSON.stringify(after)}`);
    for (const s of socks) s.destroy();
  }
});

test('a head trickled line by line is cut at the deadline', async (t) => {
  if (!ok) return t.skip('no base template');
  for (const [name, port] of Object.entries(ports())) {
    const s = await halfHead(port, '127.0.3.1');
    // a line every 300 ms would refresh an idle timeout forever
    const drip = setInterval(() => s.write('X-a: b\r\n'), 300);
    const lived = await Promise.race([s.ended, new Promise((r) => setTimeout(() => r(-1), 8000))]);
    clearInterval(drip);
    s.destroy();
    assert.ok(lived >= 1500 && lived < 5000, `${name}: open ${lived} ms`);
  }
  const n = await shutCount('head_timeout');
  assert.ok(n.api >= 1 && n.proxy >= 1, JSON.stringify(n));
});

test('one address cannot open more than its limit; others still get in', async (t) => {
  if (!ok) return t.skip('no base template');
  for (const [name, port] of Object.entries(ports())) {
    const socks = [];
    for (let i = 0; i < 8; i++) socks.push(await halfHead(port, '127.0.4.1'));
    const extra = await halfHead(port, '127.0.4.1');
    const lived = await Promise.race([extra.ended, new Promise((r) => setTimeout(() => r(-1), 1000))]);
    assert.ok(lived >= 0 && lived < 1000, `${name}: 9th connection open after ${lived} ms`);
    assert.equal(await health(port, '127.0.4.2'), name === 'api' ? 200 : 400, name);
    for (const s of socks) s.destroy();
  }
});

test('a proxied stream longer than the head deadline is left alone under attack',
  async (t) => {
    if (!ok) return t.skip('no base template');
    const restore = useEnv(h.sdkEnv);
    let sbx;
    try {
      sbx = await Sandbox.create({ timeoutMs: 60_000 });
      // The attack starts once the stream is under way (its first output
      // came back): a request whose head has not arrived yet competes for
      // the slots of heads owed, and may rightly be refused.
      let streaming;
      const started = new Promise((r) => { streaming = r; });
      const run = sbx.commands.run('echo started; sleep 5; echo done',
        { onStdout: (out) => { if (out.includes('started')) streaming(); } });
      await started;
      const socks = [];
      for (let i = 1; i <= 30; i++) socks.push(await halfHead(h.proxyPort, `127.0.5.${i}`));
      const r = await run;
      for (const s of socks) s.destroy();
      assert.equal(r.exitCode, 0);
      assert.equal(r.stdout, 'started\ndone\n');
    } finally {
      await sbx?.kill().catch(() => {});
      restore();
    }
  });
