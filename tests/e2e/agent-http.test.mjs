// The agent's own HTTP surface: /health, /envs, /init, /metrics, CORS,
// JSON errors, access-token enforcement on RPC paths, keep-alive and a clean
// stop. Drives the real hutch-agent binary, with the official SDK where the
// SDK itself talks to these endpoints.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import net from 'node:net';
import { spawn, spawnSync } from 'node:child_process';
import {
  chmodSync, chownSync, copyFileSync, existsSync, mkdirSync, mkdtempSync, readdirSync,
  readFileSync, rmSync, symlinkSync, writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Sandbox, AuthenticationError } from 'e2b';
import { agentBin, freePort, startAgent, useSdkEnv } from './lib/agent.mjs';

const here = fileURLToPath(new URL('.', import.meta.url));

const UNAUTHORIZED = {
  code: 401,
  message: 'unauthorized access, please provide a valid access token or method signing if supported',
};

async function jsonOf(res) {
  assert.equal(res.headers.get('content-type'), 'application/json; charset=utf-8');
  return res.json();
}

function post(url, body, headers = {}) {
  return fetch(url, {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...headers },
    body: typeof body === 'string' ? body : JSON.stringify(body),
  });
}

// A Connect unary call made by hand, to see the agent's answer before the
// Connect layer (and whatever the service does).
function rpc(url, path, headers = {}) {
  return post(`${url}${path}`, {}, { 'connect-protocol-version': '1', ...headers });
}

test('health answers 204 with no-store, and the SDK sees the sandbox running', async () => {
  const agent = await startAgent();
  try {
    const res = await fetch(`${agent.url}/health`);
    assert.equal(res.status, 204);
    assert.equal(res.headers.get('cache-control'), 'no-store');
    assert.equal(await res.text(), '');

    useSdkEnv(agent);
    const sbx = await Sandbox.connect('debug_sandbox_id');
    assert.equal(await sbx.isRunning(), true);
  } finally {
    await agent.stop();
  }
});

test('unknown paths and wrong methods get JSON errors', async () => {
  const agent = await startAgent();
  try {
    let res = await fetch(`${agent.url}/no/such/thing?x=1`);
    assert.equal(res.status, 404);
    let body = await jsonOf(res);
    assert.equal(body.code, 404);
    assert.match(body.message, /no\/such\/thing/);

    res = await post(`${agent.url}/health`, 'x');
    assert.equal(res.status, 405);
    assert.equal((await jsonOf(res)).code, 405);

    res = await fetch(`${agent.url}/init`);
    assert.equal(res.status, 405);
    assert.equal(res.headers.get('allow'), 'POST');

    // Hostile bytes in the path come back escaped, never as broken JSON.
    res = await fetch(`${agent.url}/%00%ff%0a<script>`);
    assert.equal(res.status, 404);
    body = await jsonOf(res);
    assert.equal(body.code, 404);
  } finally {
    await agent.stop();
  }
});

test('CORS preflight allows any origin, method and header for two hours', async () => {
  const agent = await startAgent({ accessToken: 'tok' });
  try {
    const res = await fetch(`${agent.url}/process.Process/Start`, {
      method: 'OPTIONS',
      headers: {
        origin: 'https://app.example',
        'access-control-request-method': 'POST',
        'access-control-request-headers': 'connect-protocol-version,content-type,x-access-token',
      },
    });
    // no token needed for a preflight: browsers never send one
    assert.equal(res.status, 204);
    assert.equal(res.headers.get('access-control-allow-origin'), '*');
    for (const m of ['HEAD', 'GET', 'POST', 'PUT', 'PATCH', 'DELETE'])
      assert.match(res.headers.get('access-control-allow-methods'), new RegExp(`\\b${m}\\b`));
    assert.equal(res.headers.get('access-control-allow-headers'),
      'connect-protocol-version,content-type,x-access-token');
    assert.equal(res.headers.get('access-control-max-age'), '7200');

    const health = await fetch(`${agent.url}/health`, { headers: { origin: 'https://x' } });
    assert.equal(health.headers.get('access-control-allow-origin'), '*');
    assert.match(health.headers.get('access-control-expose-headers'), /Grpc-Status/);
  } finally {
    await agent.stop();
  }
});

test('RPC answers, streams and RPC errors carry CORS headers for browsers', async () => {
  const agent = await startAgent();
  try {
    const ok = await rpc(agent.url, '/process.Process/List');
    assert.equal(ok.status, 200);
    assert.equal(ok.headers.get('access-control-allow-origin'), '*');
    const missing = await rpc(agent.url, '/process.Process/NoSuchMethod');
    assert.equal(missing.status, 404);
    assert.equal(missing.headers.get('access-control-allow-origin'), '*');
    const body = JSON.stringify({ process: { cmd: '/bin/true' } });
    const frame = Buffer.alloc(5 + Buffer.byteLength(body));
    frame.writeUInt32BE(Buffer.byteLength(body), 1);
    frame.write(body, 5);
    const stream = await fetch(`${agent.url}/process.Process/Start`, {
      method: 'POST',
      headers: { 'content-type': 'application/connect+json' },
      body: frame,
    });
    assert.equal(stream.status, 200);
    assert.equal(stream.headers.get('access-control-allow-origin'), '*');
    await stream.arrayBuffer();
  } finally {
    await agent.stop();
  }
});

test('init sets the token, env vars and default user; the token is then enforced', async () => {
  const agent = await startAgent();
  try {
    // open sandbox: /envs needs no token and starts empty
    let res = await fetch(`${agent.url}/envs`);
    assert.equal(res.status, 200);
    assert.deepEqual(await jsonOf(res), {});

    res = await post(`${agent.url}/init`, {
      accessToken: 'secret-1',
      envVars: { FOO: 'bar', SPACED: 'a b', EMPTY: '' },
      defaultUser: 'root',
      defaultWorkdir: '/tmp',
      timestamp: new Date().toISOString(),
    });
    assert.equal(res.status, 204);
    assert.match(res.headers.get('x-envd-version'), /^\d+\.\d+\.\d+$/);

    // no token, wrong token: 401 with envd's exact body
    for (const headers of [{}, { 'x-access-token': 'secret-2' }, { 'x-access-token': '' }]) {
      res = await fetch(`${agent.url}/envs`, { headers });
      assert.equal(res.status, 401);
      assert.deepEqual(await jsonOf(res), UNAUTHORIZED);
      res = await rpc(agent.url, '/process.Process/List', headers);
      assert.equal(res.status, 401);
      assert.deepEqual(await jsonOf(res), UNAUTHORIZED);
      res = await rpc(agent.url, '/filesystem.Filesystem/Stat', headers);
      assert.equal(res.status, 401);
    }

    // the right token passes the check (what follows is the RPC layer's business)
    res = await fetch(`${agent.url}/envs`, { headers: { 'x-access-token': 'secret-1' } });
    assert.equal(res.status, 200);
    assert.deepEqual(await res.json(), { FOO: 'bar', SPACED: 'a b', EMPTY: '' });
    res = await rpc(agent.url, '/process.Process/List', { 'x-access-token': 'secret-1' });
    assert.notEqual(res.status, 401);
    await res.arrayBuffer();

    // health stays open
    assert.equal((await fetch(`${agent.url}/health`)).status, 204);

    // the SDK (debug mode has no token) gets AuthenticationError
    useSdkEnv(agent);
    const sbx = await Sandbox.connect('debug_sandbox_id');
    await assert.rejects(sbx.files.list('/'), AuthenticationError);
    await assert.rejects(sbx.commands.list(), AuthenticationError);

    // a re-init needs the current token
    res = await post(`${agent.url}/init`, { accessToken: 'stolen' });
    assert.equal(res.status, 401);
    res = await post(`${agent.url}/init`, { accessToken: 'stolen' },
      { 'x-access-token': 'nope' });
    assert.equal(res.status, 401);

    // an init without accessToken clears it (envd's rule); env vars are kept
    res = await post(`${agent.url}/init`, {}, { 'x-access-token': 'secret-1' });
    assert.equal(res.status, 204);
    res = await fetch(`${agent.url}/envs`);
    assert.equal(res.status, 200);
    assert.equal((await res.json()).FOO, 'bar');
  } finally {
    await agent.stop();
  }
});

test('an init older than the last one applied is ignored', async () => {
  const agent = await startAgent();
  try {
    let res = await post(`${agent.url}/init`,
      { envVars: { V: 'new' }, timestamp: '2030-01-01T00:00:00.5Z' });
    assert.equal(res.status, 204);
    res = await post(`${agent.url}/init`,
      { envVars: { V: 'old' }, timestamp: '2030-01-01T01:00:00+02:00' });
    assert.equal(res.status, 204);
    assert.deepEqual(await (await fetch(`${agent.url}/envs`)).json(), { V: 'new' });
    res = await post(`${agent.url}/init`,
      { envVars: { V: 'newer' }, timestamp: '2030-01-01T00:00:01Z' });
    assert.deepEqual(await (await fetch(`${agent.url}/envs`)).json(), { V: 'newer' });
  } finally {
    await agent.stop();
  }
});

test('a bad init is refused whole with a JSON 400 naming the field', async () => {
  const agent = await startAgent();
  try {
    await post(`${agent.url}/init`, { envVars: { KEEP: '1' } });
    const cases = [
      ['{not json', /invalid JSON/],
      ['[1,2]', /object/],
      [{ envVars: { 'A=B': 'x' } }, /envVars/],
      [{ envVars: { A: 1 } }, /envVars\.A/],
      [{ envVars: ['A'] }, /envVars/],
      [{ accessToken: 5 }, /accessToken/],
      [{ accessToken: 'x'.repeat(300) }, /accessToken/],
      [{ defaultUser: 'no-such-user', envVars: { KEEP: '2' } }, /defaultUser.*no-such-user/],
      [{ defaultWorkdir: 'relative/dir' }, /defaultWorkdir/],
      [{ timestamp: 'yesterday' }, /timestamp/],
    ];
    for (const [body, re] of cases) {
      const res = await post(`${agent.url}/init`, body);
      assert.equal(res.status, 400, JSON.stringify(body));
      const err = await jsonOf(res);
      assert.equal(err.code, 400);
      assert.match(err.message, re);
    }
    // nothing of the refused inits was applied
    assert.deepEqual(await (await fetch(`${agent.url}/envs`)).json(), { KEEP: '1' });
    // and a huge body is refused without being stored. The agent answers 413
    // and closes as soon as the declared size is too big, so a client still
    // sending may see the connection closed (EPIPE) before it reads the 413.
    const res = await post(`${agent.url}/init`, `{"envVars":{"A":"${'x'.repeat(2 << 20)}"}}`)
      .catch((e) => e);
    if (res instanceof Error) {
      assert.match(String(res.cause?.code), /^(EPIPE|ECONNRESET|UND_ERR_SOCKET)$/);
    } else {
      assert.equal(res.status, 413);
    }
    assert.equal((await (await fetch(`${agent.url}/envs`)).json()).KEEP, '1');
  } finally {
    await agent.stop();
  }
});

test('metrics report CPU, memory and disk', async () => {
  const agent = await startAgent({ accessToken: 'm-token' });
  try {
    assert.equal((await fetch(`${agent.url}/metrics`)).status, 401);
    const res = await fetch(`${agent.url}/metrics`, { headers: { 'x-access-token': 'm-token' } });
    assert.equal(res.status, 200);
    const m = await jsonOf(res);
    for (const k of ['ts', 'cpu_count', 'cpu_used_pct', 'mem_total', 'mem_used', 'mem_cache',
      'mem_total_mib', 'mem_used_mib', 'disk_used', 'disk_total'])
      assert.equal(typeof m[k], 'number', k);
    assert.ok(Math.abs(m.ts - Date.now() / 1000) < 10);
    assert.ok(m.cpu_count >= 1);
    assert.ok(m.cpu_used_pct >= 0 && m.cpu_used_pct <= 100);
    assert.ok(m.mem_total > m.mem_used && m.mem_used > 0);
    assert.equal(m.mem_total_mib, Math.floor(m.mem_total / 1048576));
    assert.ok(m.disk_total >= m.disk_used && m.disk_used > 0);
  } finally {
    await agent.stop();
  }
});

// Requests over one keep-alive connection: the SDK pools connections, and
// streams can be long, so the agent must not close after each response.
function getOnAgent(url, httpAgent, headers = {}) {
  return new Promise((ok, fail) => {
    const req = http.get(url, { agent: httpAgent, headers }, (res) => {
      res.resume();
      res.on('end', () => ok({ status: res.statusCode, reused: req.reusedSocket }));
    });
    req.on('error', fail);
  });
}

test('connections are kept alive across requests, errors included', async () => {
  const agent = await startAgent();
  const httpAgent = new http.Agent({ keepAlive: true, maxSockets: 1 });
  try {
    const first = await getOnAgent(`${agent.url}/health`, httpAgent);
    const second = await getOnAgent(`${agent.url}/nothing-here`, httpAgent);
    const third = await getOnAgent(`${agent.url}/envs`, httpAgent);
    assert.deepEqual([first.status, second.status, third.status], [204, 404, 200]);
    assert.equal(first.reused, false);
    assert.equal(second.reused, true);
    assert.equal(third.reused, true);
  } finally {
    httpAgent.destroy();
    await agent.stop();
  }
});

test('oversized headers are refused and the agent keeps serving', async () => {
  const agent = await startAgent();
  try {
    const status = await new Promise((ok) => {
      const req = http.get(`${agent.url}/health`,
        // Past the agent's 512 KiB connection pool (Go's envd allows 1 MB).
        { headers: { 'x-big': 'a'.repeat(1024 * 1024) } },
        (res) => { res.resume(); ok(res.statusCode); });
      req.on('error', () => ok('closed'));
    });
    assert.ok(status === 431 || status === 413 || status === 'closed', String(status));
    assert.equal((await fetch(`${agent.url}/health`)).status, 204);
  } finally {
    await agent.stop();
  }
});

test('SIGTERM stops the agent cleanly', async () => {
  const agent = await startAgent();
  const exited = new Promise((r) => agent.child.once('exit', (code, sig) => r({ code, sig })));
  agent.child.kill('SIGTERM');
  const { code, sig } = await exited;
  assert.equal(sig, null);
  assert.equal(code, 0);
  assert.match(agent.log(), /msg="ready /);
  assert.match(agent.log(), /stopping on signal 15/);
  await agent.stop();
});

// Zombies listed as children of the agent until reaped.
function childrenOf(pid) {
  let all = [];
  for (const task of readdirSync(`/proc/${pid}/task`)) {
    try {
      const text = readFileSync(`/proc/${pid}/task/${task}/children`, 'utf8').trim();
      if (text) all = all.concat(text.split(/\s+/).map(Number));
    } catch { /* task ended */ }
  }
  return all;
}

test('orphaned grandchildren of commands are reaped by the agent', async () => {
  const agent = await startAgent();
  try {
    useSdkEnv(agent);
    const sbx = await Sandbox.connect('debug_sandbox_id');
    // The shell exits at once; its background children are re-parented to
    // the agent (a child subreaper) and must not stay zombies.
    const r = await sbx.commands.run('for i in 1 2 3; do sleep 0.2 & done; echo started');
    assert.equal(r.stdout.trim(), 'started');
    const until = Date.now() + 5000;
    let kids = childrenOf(agent.child.pid);
    while (kids.length && Date.now() < until) {
      await new Promise((ok) => setTimeout(ok, 50));
      kids = childrenOf(agent.child.pid);
    }
    assert.deepEqual(kids, []);
  } finally {
    await agent.stop();
  }
});

// The bundle (scripts/agent-bundle) runs in a root filesystem holding nothing
// but itself, passwd/group and a static busybox: no libc of its own.
test('the agent bundle runs in an empty chroot with only busybox', async (t) => {
  if (process.getuid() !== 0) return t.skip('chroot needs root');
  const busybox = '/bin/busybox';
  if (!existsSync(busybox) || spawnSync('ldd', [busybox]).status === 0)
    return t.skip('needs the static busybox of busybox-static');
  const buildDir = resolve(dirname(agentBin), '../..');
  const root = mkdtempSync(join(tmpdir(), 'hutch-bundle-root-'));
  let child;
  try {
    chmodSync(root, 0o755);
    const made = spawnSync(resolve(here, '../../scripts/agent-bundle'),
      [buildDir, join(root, 'agent')], { encoding: 'utf8' });
    assert.equal(made.status, 0, made.stderr);
    for (const d of ['bin', 'etc', 'dev', 'tmp', 'home/user', 'root']) mkdirSync(join(root, d), { recursive: true });
    chmodSync(join(root, 'tmp'), 0o1777);
    chownSync(join(root, 'home/user'), 1000, 1000);
    copyFileSync(busybox, join(root, 'bin/busybox'));
    chmodSync(join(root, 'bin/busybox'), 0o755);
    for (const applet of ['sh', 'uname', 'cat', 'ls', 'id', 'sleep']) symlinkSync('busybox', join(root, 'bin', applet));
    // The SDK runs commands with /bin/bash -l -c; busybox has no bash applet.
    writeFileSync(join(root, 'bin/bash'), '#!/bin/sh\nexec /bin/sh "$@"\n', { mode: 0o755 });
    writeFileSync(join(root, 'etc/passwd'),
      'root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000:user:/home/user:/bin/sh\n');
    writeFileSync(join(root, 'etc/group'), 'root:x:0:\nuser:x:1000:\n');
    assert.equal(spawnSync('mknod', ['-m', '666', join(root, 'dev/null'), 'c', '1', '3']).status, 0);

    const port = await freePort();
    const url = `http://127.0.0.1:${port}`;
    child = spawn('/usr/sbin/chroot', [root, '/agent/ld.so', '--library-path', '/agent/lib',
      '/agent/hutch-agent', '--listen=127.0.0.1', `--port=${port}`],
    { stdio: ['ignore', 'inherit', 'pipe'], env: {} });
    let log = '';
    child.stderr.on('data', (d) => { log += d; });
    const until = Date.now() + 10000;
    for (;;) {
      assert.equal(child.exitCode, null, `agent exited: ${log}`);
      try { if ((await fetch(`${url}/health`)).status === 204) break; } catch { /* starting */ }
      assert.ok(Date.now() < until, `not healthy: ${log}`);
      await new Promise((ok) => setTimeout(ok, 50));
    }
    Object.assign(process.env, { E2B_DEBUG: 'true', E2B_SANDBOX_URL: url });
    const sbx = await Sandbox.connect('debug_sandbox_id');
    const r = await sbx.commands.run('echo "hi $(uname -s) $(id -u)"; ls /');
    assert.equal(r.exitCode, 0);
    const lines = r.stdout.trim().split('\n');
    assert.equal(lines[0], 'hi Linux 1000');
    assert.deepEqual(lines.slice(1).sort(), ['agent', 'bin', 'dev', 'etc', 'home', 'root', 'tmp']);
  } finally {
    if (child && child.exitCode === null) {
      const exited = new Promise((r) => child.once('exit', r));
      child.kill('SIGTERM');
      await exited;
    }
    rmSync(root, { recursive: true, force: true });
  }
});

// Raw bytes on a socket: the answer's status line and body, or '' when closed.
function rawRequest(port, data) {
  return new Promise((ok, fail) => {
    const s = net.connect(port, '127.0.0.1', () => s.end(data));
    let out = '';
    s.on('data', (d) => { out += d; });
    s.on('close', () => ok(out));
    s.on('error', fail);
    s.setTimeout(5000, () => s.destroy());
  });
}

test('ambiguous framing and NUL bytes in values are refused with 400', async () => {
  const agent = await startAgent();
  try {
    const list = 'POST /process.Process/List HTTP/1.1\r\nHost: x\r\n' +
      'Content-Type: application/json\r\n';
    let r = await rawRequest(agent.port,
      `${list}Content-Length: 2\r\nContent-Length: 40\r\n\r\n{}`);
    assert.match(r, /^HTTP\/1\.1 400 /);
    assert.match(r, /conflicting Content-Length headers/);
    r = await rawRequest(agent.port,
      `${list}Content-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n`);
    assert.match(r, /^HTTP\/1\.1 400 /);
    assert.match(r, /Content-Length together with Transfer-Encoding/);
    for (const q of ['path=%00', 'path=/tmp/a%00b', 'username=us%00er']) {
      r = await rawRequest(agent.port, `GET /files?${q} HTTP/1.1\r\nHost: x\r\n\r\n`);
      assert.match(r, /^HTTP\/1\.1 400 /, q);
      assert.match(r, /query parameter '(path|username)' contains a NUL byte/, q);
    }
    // the same duplicate with equal values is plain HTTP and still served
    r = await rawRequest(agent.port,
      `${list}Content-Length: 2\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}`);
    assert.match(r, /^HTTP\/1\.1 200 /);
  } finally {
    await agent.stop();
  }
});

test('connections that never send a request cannot lock clients out', async () => {
  const agent = await startAgent({ args: ['--max-connections=64'] });
  const socks = [];
  try {
    // Twice the connection limit, silent or with half a request each.
    for (let i = 0; i < 128; i++) {
      const s = net.connect(agent.port, '127.0.0.1');
      s.on('error', () => {});
      s.gone = new Promise((ok) => s.on('close', ok));
      if (i % 2) s.write('GET /health HTTP/1.1\r\nHost: x\r\n');
      socks.push(s);
    }
    await new Promise((ok) => setTimeout(ok, 500));
    const t0 = Date.now();
    const res = await fetch(`${agent.url}/health`);
    assert.equal(res.status, 204);
    const list = await rpc(agent.url, '/process.Process/List');
    assert.equal(list.status, 200);
    assert.ok(Date.now() - t0 < 3000, `answers took ${Date.now() - t0} ms`);
    // Each of them is shut down: evicted by newer ones, or after the idle timeout.
    const all = Promise.all(socks.map((s) => s.gone));
    const limit = new Promise((_, fail) => setTimeout(() => fail(new Error('still open')),
      25000));
    await Promise.race([all, limit]);
  } finally {
    for (const s of socks) s.destroy();
    await agent.stop();
  }
});

test('SIGTERM ends open streams with unavailable before the agent stops', async () => {
  const agent = await startAgent();
  try {
    const body = JSON.stringify({ path: agent.home });
    const frame = Buffer.alloc(5 + Buffer.byteLength(body));
    frame.writeUInt32BE(Buffer.byteLength(body), 1);
    frame.write(body, 5);
    const res = await fetch(`${agent.url}/filesystem.Filesystem/WatchDir`, {
      method: 'POST',
      headers: { 'content-type': 'application/connect+json' },
      body: frame,
    });
    assert.equal(res.status, 200);
    const reader = res.body.getReader();
    let buf = Buffer.alloc(0);
    const first = await reader.read(); // the start event
    buf = Buffer.concat([buf, Buffer.from(first.value)]);
    agent.child.kill('SIGTERM');
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      buf = Buffer.concat([buf, Buffer.from(value)]);
    }
    const frames = [];
    for (let off = 0; off + 5 <= buf.length;) {
      const len = buf.readUInt32BE(off + 1);
      frames.push({ flags: buf[off], msg: JSON.parse(buf.subarray(off + 5, off + 5 + len)) });
      off += 5 + len;
    }
    const end = frames.at(-1);
    assert.equal(end.flags, 2);
    assert.deepEqual(end.msg.error, { code: 'unavailable', message: 'agent shutting down' });
  } finally {
    await agent.stop();
  }
});

// One Connect frame: flags byte, 4-byte big-endian length, the message.
function frame(msg, flags = 0) {
  const body = Buffer.isBuffer(msg) ? msg : Buffer.from(msg);
  const head = Buffer.alloc(5);
  head[0] = flags;
  head.writeUInt32BE(body.length, 1);
  return Buffer.concat([head, body]);
}

// Splits a streamed response body into its frames (JSON messages).
function framesOf(buf) {
  const frames = [];
  for (let off = 0; off < buf.length;) {
    assert.ok(off + 5 <= buf.length, 'response ends inside a frame header');
    const len = buf.readUInt32BE(off + 1);
    assert.ok(off + 5 + len <= buf.length, 'response ends inside a frame');
    frames.push({ flags: buf[off], msg: JSON.parse(buf.subarray(off + 5, off + 5 + len)) });
    off += 5 + len;
  }
  return frames;
}

async function rawCall(url, path, contentType, body) {
  const headers = contentType ? { 'content-type': contentType } : {};
  const res = await fetch(`${url}${path}`, { method: 'POST', headers, body });
  return { status: res.status, type: res.headers.get('content-type'),
    body: Buffer.from(await res.arrayBuffer()) };
}

// The agent still answers, over the SDK's usual calls, after abuse.
async function assertServing(agent) {
  assert.equal(agent.child.exitCode, null, 'the agent exited');
  assert.equal((await fetch(`${agent.url}/health`)).status, 204);
  const list = await rpc(agent.url, '/process.Process/List');
  assert.equal(list.status, 200);
  assert.ok(Array.isArray((await list.json()).processes ?? []));
}

test('malformed unary bodies get a Connect error with a 4xx status', async () => {
  const agent = await startAgent();
  try {
    const stat = '/filesystem.Filesystem/Stat';
    const cases = [
      // [content type, body, status, message]
      ['application/json', '{"path":', 400, /^invalid JSON at line 1 column \d+/],
      ['application/json', '[1]', 400, /must be a JSON object/],
      ['application/json', '{"path":5}', 400, /'path'/],
      // a length-delimited field declaring 16 bytes with 1 present
      ['application/proto', Buffer.from([0x0a, 0x10, 0x61]), 400,
        /^invalid binary filesystem\.StatRequest message$/],
      ['application/proto', Buffer.from([0x0a, 0x01, 0xff]), 400,
        /field 'path': not valid UTF-8/],
      ['text/plain', '{}', 415, /unsupported content type 'text\/plain' for \/filesystem/],
      ['application/connect+json', frame('{}'), 415,
        /unary call: use application\/json or application\/proto/],
      [null, Buffer.from('{}'), 415, /unsupported content type ''/],
    ];
    for (const [type, body, status, re] of cases) {
      const r = await rawCall(agent.url, stat, type, body);
      const what = `${type} ${JSON.stringify(body.toString())}`;
      assert.equal(r.status, status, what);
      assert.equal(r.type, 'application/json', what);
      const err = JSON.parse(r.body);
      assert.deepEqual(Object.keys(err).sort(), ['code', 'message'], what);
      assert.equal(err.code, 'invalid_argument', what);
      assert.match(err.message, re, what);
    }
    await assertServing(agent);
  } finally {
    await agent.stop();
  }
});

test('malformed stream requests end in-band with invalid_argument', async () => {
  const agent = await startAgent();
  try {
    const start = JSON.stringify({ process: { cmd: '/bin/sh', args: ['-c', 'touch ran'] },
      cwd: agent.home });
    const declaresMore = frame(start);
    declaresMore.writeUInt32BE(Buffer.byteLength(start) + 10, 1);
    const cases = [
      // [content type, body, message]
      ['application/connect+json', Buffer.from(start),
        /^the body is not an enveloped Connect message \(first byte 0x7b\)/],
      ['application/connect+json', Buffer.from([0, 0, 0]),
        /^truncated envelope: 3 of 5 header bytes$/],
      ['application/connect+json', declaresMore,
        new RegExp(`^truncated envelope: declares ${Buffer.byteLength(start) + 10} bytes, ` +
          `${Buffer.byteLength(start)} present$`)],
      ['application/connect+json', Buffer.concat([frame(start), frame(start)]),
        /carries exactly one message; \d+ extra bytes follow it/],
      ['application/connect+json', frame(start, 1), /^compressed messages are not supported$/],
      ['application/connect+json', frame(start, 2), /unexpected envelope flags 0x02/],
      ['application/connect+json', frame('{"process":'), /^invalid JSON/],
      ['application/connect+proto', frame(Buffer.from([0x0a, 0x10, 0x61])),
        /^invalid binary process\.StartRequest message$/],
    ];
    for (const [type, body, re] of cases) {
      const r = await rawCall(agent.url, '/process.Process/Start', type, body);
      const what = `${type} ${JSON.stringify(body.toString('latin1'))}`;
      // Streaming errors are in-band: 200, the stream's content type, one end frame.
      assert.equal(r.status, 200, what);
      assert.equal(r.type, type, what);
      const frames = framesOf(r.body);
      assert.equal(frames.length, 1, what);
      assert.equal(frames[0].flags, 2, what);
      assert.equal(frames[0].msg.error.code, 'invalid_argument', what);
      assert.match(frames[0].msg.error.message, re, what);
    }
    // A stream endpoint called with the unary content type: 415 with a JSON error.
    const r = await rawCall(agent.url, '/process.Process/Start', 'application/json', start);
    assert.equal(r.status, 415);
    assert.equal(JSON.parse(r.body).code, 'invalid_argument');
    assert.match(JSON.parse(r.body).message, /server-streaming call: use application\/connect/);
    // none of the refused requests ran the command
    assert.equal(existsSync(join(agent.home, 'ran')), false);
    await assertServing(agent);
    // ...and a well-formed one does
    const ok = await rawCall(agent.url, '/process.Process/Start', 'application/connect+json',
      frame(start));
    assert.deepEqual(framesOf(ok.body).at(-1), { flags: 2, msg: {} });
    assert.equal(existsSync(join(agent.home, 'ran')), true);
  } finally {
    await agent.stop();
  }
});

test('a body cut short of its Content-Length is dropped without a hang', async () => {
  const agent = await startAgent();
  try {
    const t0 = Date.now();
    const r = await rawRequest(agent.port, 'POST /process.Process/Start HTTP/1.1\r\n' +
      'Host: x\r\nContent-Type: application/connect+json\r\nContent-Length: 500\r\n\r\n' +
      '\0\0\0\x01\xf4{"process":');
    assert.equal(r, '');
    assert.ok(Date.now() - t0 < 4000, `closed after ${Date.now() - t0} ms`);
    await assertServing(agent);
  } finally {
    await agent.stop();
  }
});

test('WatchDir keepalives are {"keepalive":{}} and its deadline ends it', async () => {
  const agent = await startAgent();
  try {
    const t0 = Date.now();
    const res = await fetch(`${agent.url}/filesystem.Filesystem/WatchDir`, {
      method: 'POST',
      headers: { 'content-type': 'application/connect+json', 'keepalive-ping-interval': '1',
        'connect-timeout-ms': '2600' },
      body: frame(JSON.stringify({ path: agent.home })),
    });
    const frames = framesOf(Buffer.from(await res.arrayBuffer()));
    const took = Date.now() - t0;
    assert.deepEqual(frames.map((f) => f.msg), [
      { start: {} }, { keepalive: {} }, { keepalive: {} },
      { error: { code: 'deadline_exceeded', message: 'the operation timed out' } },
    ]);
    assert.deepEqual(frames.map((f) => f.flags), [0, 0, 0, 2]);
    assert.ok(took >= 2500 && took < 4500, `stream lasted ${took} ms`);
  } finally {
    await agent.stop();
  }
});

const sleepMs = (ms) => new Promise((ok) => setTimeout(ok, ms));

async function waitFor(cond, what, ms = 5000) {
  const end = Date.now() + ms;
  while (!cond()) {
    assert.ok(Date.now() < end, `timed out waiting for ${what}`);
    await sleepMs(20);
  }
}

// A live (not zombie) process with that pid and command name.
function running(pid, comm) {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const name = stat.slice(stat.indexOf('(') + 1, stat.lastIndexOf(')'));
    const state = stat.slice(stat.lastIndexOf(')') + 2)[0];
    return name === comm && state !== 'Z';
  } catch {
    return false;
  }
}

test('on SIGTERM the agent forwards it to its processes and kills the rest after 2 s',
  async () => {
    const agent = await startAgent();
    let deafPid;
    try {
      useSdkEnv(agent);
      const sbx = await Sandbox.connect('debug_sandbox_id');
      const marker = join(agent.home, 'got-term');
      const polite = await sbx.commands.run(
        `trap 'echo term > ${marker}; exit 0' TERM; sleep 60 & wait`,
        { background: true, timeoutMs: 0 });
      const deaf = await sbx.commands.run("trap '' TERM; exec sleep 61",
        { background: true, timeoutMs: 0 });
      deafPid = deaf.pid;
      await polite.disconnect();
      await deaf.disconnect();
      // Each trap is set: the first shell waits on its sleep, the second exec'd its own.
      await waitFor(() => childrenOf(polite.pid).length === 1, 'the trap to be set');
      await waitFor(() => running(deaf.pid, 'sleep'), 'the exec');

      const t0 = Date.now();
      const exited = new Promise((ok) => agent.child.once('exit',
        (code, sig) => ok({ code, sig, took: Date.now() - t0 })));
      agent.child.kill('SIGTERM');
      await waitFor(() => existsSync(marker), 'the forwarded SIGTERM', 1500);
      assert.equal(readFileSync(marker, 'utf8'), 'term\n');
      await sleepMs(1200);
      assert.ok(running(deaf.pid, 'sleep'), 'the process ignoring SIGTERM died within 1.2 s');
      const { code, sig, took } = await exited;
      assert.deepEqual({ code, sig }, { code: 0, sig: null });
      assert.ok(took >= 1900 && took < 5000, `the agent stopped after ${took} ms`);
      assert.equal(running(deaf.pid, 'sleep'), false, 'the agent left a process running');
      assert.match(agent.log(), /processes still running after 2000 ms, killing them/);
    } finally {
      // Only if the agent failed to: our own test process, by its pid.
      if (deafPid && running(deafPid, 'sleep')) process.kill(deafPid, 'SIGKILL');
      await agent.stop();
    }
  });

// The agent as PID 1 of a new PID namespace, as in a sandbox: it signals
// every process there, also one in a session of its own whose parent lives.
test('as PID 1 the agent signals every process of its namespace on SIGTERM', async (t) => {
  if (process.getuid() !== 0) return t.skip('a PID namespace needs root');
  const root = mkdtempSync(join(tmpdir(), 'hutch-pid1-'));
  let ns;
  try {
    chmodSync(root, 0o755);
    mkdirSync(join(root, 'etc'));
    writeFileSync(join(root, 'etc/passwd'), `root:x:0:0:root:${root}:/bin/bash\n`);
    writeFileSync(join(root, 'etc/group'), 'root:x:0:\n');
    const port = await freePort();
    ns = spawn('unshare', ['--pid', '--fork', '--mount-proc', '--kill-child', agentBin,
      '--listen=127.0.0.1', `--port=${port}`, `--etc-dir=${join(root, 'etc')}`,
      '--default-user=root'], { stdio: ['ignore', 'inherit', 'pipe'] });
    let log = '';
    ns.stderr.on('data', (d) => { log += d; });
    const url = `http://127.0.0.1:${port}`;
    await waitFor(() => /msg="ready /.test(log) || ns.exitCode !== null, 'the agent', 10000);
    assert.equal(ns.exitCode, null, log);
    const [agentPid] = childrenOf(ns.pid);
    const nspid = readFileSync(`/proc/${agentPid}/status`, 'utf8').match(/^NSpid:\s+(.*)$/m)[1];
    assert.equal(nspid.split(/\s+/).at(-1), '1', 'the agent is not PID 1 of its namespace');

    Object.assign(process.env, { E2B_DEBUG: 'true', E2B_SANDBOX_URL: url });
    const sbx = await Sandbox.connect('debug_sandbox_id');
    const f = (name) => join(root, name);
    const detached = await sbx.commands.run(`setsid sh -c 'trap "echo term > ${f('detached')}; ` +
      `exit 0" TERM; echo > ${f('detached-ready')}; while :; do sleep 0.1; done' & wait`,
    { background: true, timeoutMs: 0 });
    const deaf = await sbx.commands.run(`trap '' TERM; echo > ${f('deaf-ready')}; ` +
      `while :; do date +%s%3N > ${f('heartbeat')}; sleep 0.1; done`,
    { background: true, timeoutMs: 0 });
    await detached.disconnect();
    await deaf.disconnect();
    await waitFor(() => existsSync(f('detached-ready')) && existsSync(f('deaf-ready')),
      'the traps to be set');

    const t0 = Date.now();
    const exited = new Promise((ok) => ns.once('exit', (code) => ok({ code,
      took: Date.now() - t0 })));
    process.kill(agentPid, 'SIGTERM');
    const { code, took } = await exited;
    assert.equal(code, 0, log);
    assert.equal(readFileSync(f('detached'), 'utf8'), 'term\n');
    // The deaf loop lived on through the grace period, then was killed.
    const lastBeat = Number(readFileSync(f('heartbeat'), 'utf8'));
    assert.ok(lastBeat - t0 >= 1500, `last heartbeat ${lastBeat - t0} ms after SIGTERM`);
    assert.ok(took >= 1900 && took < 5000, `the agent stopped after ${took} ms`);
    assert.match(log, /processes still running after 2000 ms, killing them/);
  } finally {
    if (ns && ns.exitCode === null) {
      const gone = new Promise((ok) => ns.once('exit', ok));
      ns.kill('SIGKILL'); // --kill-child takes the namespace with it
      await gone;
    }
    rmSync(root, { recursive: true, force: true });
  }
});
