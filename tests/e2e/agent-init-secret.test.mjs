// The agent's /init secret: with HUTCH_INIT_SECRET set (hutchd sets it for
// each sandbox) only a request carrying it in X-Hutch-Init-Secret may
// configure the sandbox, even one with no access token yet; without the
// setting /init stays open as in envd. The secret never reaches the
// processes the agent starts.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import net from 'node:net';
import { Sandbox } from 'e2b';
import { agentBin, freePort, startAgent, useSdkEnv } from './lib/agent.mjs';

const SECRET = 'a'.repeat(40) + '0123456789abcdef';

function init(url, body, headers = {}) {
  return fetch(`${url}/init`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...headers },
    body: JSON.stringify(body),
  });
}

test('with a secret, /init without it or with a wrong one is 401 and changes nothing',
  async () => {
    const agent = await startAgent({ env: { HUTCH_INIT_SECRET: SECRET } });
    try {
      for (const headers of [{}, { 'x-hutch-init-secret': '' },
        { 'x-hutch-init-secret': SECRET.slice(0, -1) },
        { 'x-hutch-init-secret': SECRET + 'x' },
        { 'x-hutch-init-secret': SECRET.toUpperCase() }]) {
        const res = await init(agent.url, { accessToken: 'taken', envVars: { HIJACK: '1' } },
          headers);
        assert.equal(res.status, 401, JSON.stringify(headers));
        assert.equal(res.headers.get('content-type'), 'application/json; charset=utf-8');
        const body = await res.json();
        assert.equal(body.code, 401);
        assert.match(body.message, /X-Hutch-Init-Secret/);
      }
      // still open (no token was set) and without the refused env var
      const envs = await fetch(`${agent.url}/envs`);
      assert.equal(envs.status, 200);
      assert.deepEqual(await envs.json(), {});
    } finally {
      await agent.stop();
    }
  });

test('with a secret, /init carrying it applies; a re-init also needs the token', async () => {
  const agent = await startAgent({ env: { HUTCH_INIT_SECRET: SECRET } });
  try {
    let res = await init(agent.url, { accessToken: 'tok-1', envVars: { FOO: 'bar' } },
      { 'x-hutch-init-secret': SECRET });
    assert.equal(res.status, 204);
    res = await fetch(`${agent.url}/envs`, { headers: { 'x-access-token': 'tok-1' } });
    assert.deepEqual(await res.json(), { FOO: 'bar' });
    // the secret alone does not replace the token set by the first init
    res = await init(agent.url, {}, { 'x-hutch-init-secret': SECRET });
    assert.equal(res.status, 401);
    // the token alone is not enough either
    res = await init(agent.url, {}, { 'x-access-token': 'tok-1' });
    assert.equal(res.status, 401);
    res = await init(agent.url, { accessToken: 'tok-2' },
      { 'x-hutch-init-secret': SECRET, 'x-access-token': 'tok-1' });
    assert.equal(res.status, 204);
  } finally {
    await agent.stop();
  }
});

test('an init carrying initSecret replaces the secret: the old one is refused after it',
  async () => {
    const NEXT = 'b'.repeat(40) + 'fedcba9876543210';
    const agent = await startAgent({ env: { HUTCH_INIT_SECRET: SECRET } });
    try {
      // Bad values are refused whole: neither the secret nor the token changes.
      for (const initSecret of ['', 'x'.repeat(128), 7]) {
        const res = await init(agent.url, { accessToken: 'tok-x', initSecret },
          { 'x-hutch-init-secret': SECRET });
        assert.equal(res.status, 400, JSON.stringify(initSecret));
        assert.match((await res.json()).message, /initSecret/);
      }
      let res = await init(agent.url, { accessToken: 'tok-1', initSecret: NEXT },
        { 'x-hutch-init-secret': SECRET });
      assert.equal(res.status, 204);
      res = await init(agent.url, { accessToken: 'tok-2' },
        { 'x-hutch-init-secret': SECRET, 'x-access-token': 'tok-1' });
      assert.equal(res.status, 401);
      res = await init(agent.url, { accessToken: 'tok-2' },
        { 'x-hutch-init-secret': NEXT, 'x-access-token': 'tok-1' });
      assert.equal(res.status, 204);
    } finally {
      await agent.stop();
    }
  });

// A fork's agent is its source's: the last init it saw is the source's, by
// the host's clock then. A clock stepped back since must not make it drop
// the fork's own init (hutchd would take the 204 for a fork with its
// identity while its agent kept the source's token and secret).
test('an init carrying initSecret applies even when older than the last init', async () => {
  const NEXT = 'c'.repeat(40) + '0123456789abcdef';
  const agent = await startAgent({ env: { HUTCH_INIT_SECRET: SECRET } });
  try {
    let res = await init(agent.url, { accessToken: 'tok-1', timestamp: '2100-01-01T00:00:00Z' },
      { 'x-hutch-init-secret': SECRET });
    assert.equal(res.status, 204);
    // The control: an ordinary older init is still ignored (a late retry).
    res = await init(agent.url, { accessToken: 'tok-x', timestamp: new Date().toISOString() },
      { 'x-hutch-init-secret': SECRET, 'x-access-token': 'tok-1' });
    assert.equal(res.status, 204);
    res = await fetch(`${agent.url}/envs`, { headers: { 'x-access-token': 'tok-1' } });
    assert.equal(res.status, 200);
    res = await init(agent.url, {
      accessToken: 'tok-2', initSecret: NEXT, timestamp: new Date().toISOString(),
    }, { 'x-hutch-init-secret': SECRET, 'x-access-token': 'tok-1' });
    assert.equal(res.status, 204);
    res = await fetch(`${agent.url}/envs`, { headers: { 'x-access-token': 'tok-2' } });
    assert.equal(res.status, 200);
    res = await init(agent.url, { accessToken: 'tok-3' },
      { 'x-hutch-init-secret': NEXT, 'x-access-token': 'tok-2' });
    assert.equal(res.status, 204);
  } finally {
    await agent.stop();
  }
});

test('without the setting, an init cannot set a secret: /init stays open', async () => {
  const agent = await startAgent();
  try {
    let res = await init(agent.url, { envVars: { A: '1' }, initSecret: SECRET });
    assert.equal(res.status, 400);
    assert.match((await res.json()).message, /initSecret/);
    res = await init(agent.url, { envVars: { B: '2' } });
    assert.equal(res.status, 204);
    const envs = await fetch(`${agent.url}/envs`);
    assert.deepEqual(await envs.json(), { B: '2' });
  } finally {
    await agent.stop();
  }
});

// A second listener sharing the agent's port (SO_REUSEPORT, open to any
// process of the agent's user: root in a sandbox) would take a share of its
// connections, hutchd's /init with the secret among them.
const shareListener = `
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
try:
    s.bind(('127.0.0.1', int(sys.argv[1])))
    s.listen()
    print('shared')
except OSError as e:
    print('refused', e.errno)
`;

test('no other socket can listen on the agent\'s port beside it', async () => {
  const agent = await startAgent({ env: { HUTCH_INIT_SECRET: SECRET } });
  try {
    const port = new URL(agent.url).port;
    const r = spawnSync('python3', ['-c', shareListener, port], { encoding: 'utf8' });
    assert.equal(r.status, 0, r.stderr);
    assert.equal(r.stdout.trim(), 'refused 98'); // EADDRINUSE
    // The control: a port nobody listens on can be bound the same way.
    const free = spawnSync('python3', ['-c', shareListener, String(await freePort())],
      { encoding: 'utf8' });
    assert.equal(free.stdout.trim(), 'shared');
  } finally {
    await agent.stop();
  }
});

// A connection the agent closed first stays in TIME_WAIT on its port; a
// resume (CRIU binds the restored listener in the kept netns) or a restart
// must still get the port: the listener has SO_REUSEADDR.
test('an agent listens again on its port beside its closed connections', async () => {
  const agent = await startAgent();
  const { port } = agent;
  try {
    const answer = await new Promise((resolve, reject) => {
      const c = net.connect(port, '127.0.0.1', () => c.write(
        'GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n'));
      let got = '';
      c.on('data', (d) => { got += d; });
      c.on('end', () => { c.end(); resolve(got); });
      c.on('error', reject);
    });
    assert.match(answer, /^HTTP\/1\.1 204/);
  } finally {
    await agent.stop();
  }
  const again = await startAgent({ port });
  try {
    assert.equal((await fetch(`${again.url}/health`)).status, 204);
  } finally {
    await again.stop();
  }
});

test('the secret is not in the environment of started processes', async () => {
  const agent = await startAgent({ env: { HUTCH_INIT_SECRET: SECRET } });
  try {
    useSdkEnv(agent);
    const sbx = await Sandbox.connect('debug_sandbox_id');
    const r = await sbx.commands.run('env; cat /proc/self/environ | tr "\\0" "\\n"');
    assert.equal(r.exitCode, 0);
    assert.match(r.stdout, /PATH=/); // the output is the environment
    assert.ok(!r.stdout.includes(SECRET), 'secret leaked to a process');
    assert.ok(!/HUTCH_/.test(r.stdout), r.stdout);
  } finally {
    await agent.stop();
  }
});

test('without the setting, /init is open on a sandbox with no token (envd)', async () => {
  const agent = await startAgent();
  try {
    const res = await init(agent.url, { envVars: { A: '1' } });
    assert.equal(res.status, 204);
    const envs = await fetch(`${agent.url}/envs`);
    assert.deepEqual(await envs.json(), { A: '1' });
  } finally {
    await agent.stop();
  }
});

test('an init secret longer than the agent takes stops it with a clear error', async () => {
  const port = await freePort();
  const r = spawnSync(agentBin, ['--listen=127.0.0.1', `--port=${port}`], {
    env: { ...process.env, HUTCH_INIT_SECRET: 'x'.repeat(200) }, encoding: 'utf8',
    timeout: 10000,
  });
  assert.equal(r.status, 1, r.stderr);
  assert.match(r.stderr, /init-secret: longer than 127 bytes/);
});
