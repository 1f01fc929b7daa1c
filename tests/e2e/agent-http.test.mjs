// The agent's own HTTP surface: /health, /envs, /init, /metrics, CORS,
// JSON errors, access-token enforcement on RPC paths, keep-alive and a clean
// stop. Drives the real hutch-agent binary, with the official SDK where the
// SDK itself talks to these endpoints.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import { Sandbox, AuthenticationError } from 'e2b';
import { startAgent, useSdkEnv } from './lib/agent.mjs';

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
    // and a huge body is refused without being stored
    const res = await post(`${agent.url}/init`, `{"envVars":{"A":"${'x'.repeat(2 << 20)}"}}`);
    assert.equal(res.status, 413);
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
        { headers: { 'x-big': 'a'.repeat(200 * 1024) } },
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
