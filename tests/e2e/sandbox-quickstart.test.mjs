// Real sandboxes from the base template through the official SDK, against a
// real hutchd and its proxy (E2B_SANDBOX_URL): the quick start, the create
// options and what the template decides (user, workdir, resources).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { Sandbox, SandboxError, CommandExitError } from 'e2b';
import { requireBase, startHutchd, useEnv } from './lib/hutchd.mjs';

let h;
let restore;
before(async (t) => {
  if (!requireBase(t)) return;
  h = await startHutchd({ runtime: true, warmPool: 2 });
  restore = useEnv(h.sdkEnv);
});
after(async () => { restore?.(); await h?.stop(); });

function skipWithoutBase(t) { return !h && (t.skip('no base template (see the message above)'), true); }

test('quick start: create, run, write, read, kill', async (t) => {
  if (skipWithoutBase(t)) return;
  const sb = await Sandbox.create();
  try {
    assert.match(sb.sandboxId, /^[a-z0-9]+$/);
    const r = await sb.commands.run('echo "hello from $(whoami)"; pwd');
    assert.equal(r.exitCode, 0);
    assert.equal(r.stdout, 'hello from user\n/home/user\n');
    const w = await sb.files.write('/home/user/notes/hello.txt', 'Hello, sandbox!');
    assert.equal(w.path, '/home/user/notes/hello.txt');
    assert.equal(await sb.files.read('notes/hello.txt'), 'Hello, sandbox!');
    const cat = await sb.commands.run('cat /home/user/notes/hello.txt; stat -c %U notes');
    assert.equal(cat.stdout, 'Hello, sandbox!user\n');
    assert.equal(await sb.isRunning(), true);
  } finally {
    assert.equal(await sb.kill(), true);
  }
  assert.equal(await sb.isRunning(), false);
  assert.equal(await sb.kill(), false);
});

test('the base template is a real Debian with python, node and sudo', async (t) => {
  if (skipWithoutBase(t)) return;
  const sb = await Sandbox.create('base');
  try {
    const r = await sb.commands.run(
      'python3 -c "print(6*7)"; node -e "console.log(6*7)"; sudo -n id -u; ' +
      '. /etc/os-release; echo $ID');
    assert.equal(r.stdout, '42\n42\n0\ndebian\n');
    const fail = sb.commands.run('exit 3');
    await assert.rejects(fail, (e) => e instanceof CommandExitError && e.exitCode === 3);
  } finally {
    await sb.kill();
  }
});

test('envs reach every command; template and create env merge', async (t) => {
  if (skipWithoutBase(t)) return;
  const sb = await Sandbox.create({ envs: { GREETING: 'hi there', LANG: 'C.UTF-8' } });
  try {
    const r = await sb.commands.run('echo "$GREETING|$LANG"');
    assert.equal(r.stdout, 'hi there|C.UTF-8\n');
    const o = await sb.commands.run('echo "$GREETING"', { envs: { GREETING: 'override' } });
    assert.equal(o.stdout, 'override\n');
  } finally {
    await sb.kill();
  }
});

test('timeout and metadata are kept; resources come from template.json', async (t) => {
  if (skipWithoutBase(t)) return;
  const sb = await Sandbox.create({ timeoutMs: 120_000, metadata: { owner: 'e2e', n: '1' } });
  try {
    const info = await sb.getInfo();
    assert.equal(info.sandboxId, sb.sandboxId);
    assert.equal(info.templateId, 'base');
    assert.deepEqual(info.metadata, { owner: 'e2e', n: '1' });
    assert.equal(info.state, 'running');
    const span = info.endAt.getTime() - info.startedAt.getTime();
    assert.ok(Math.abs(span - 120_000) < 2000, `endAt - startedAt = ${span} ms`);
    assert.equal(info.cpuCount, 2);
    assert.equal(info.memoryMB, 512);
  } finally {
    await sb.kill();
  }
});

test('secure sandboxes need the access token at the proxy', async (t) => {
  if (skipWithoutBase(t)) return;
  const sb = await Sandbox.create({ secure: true });
  try {
    const info = await h.api('GET', `/sandboxes/${sb.sandboxId}`);
    assert.match(info.json.envdAccessToken, /^[0-9a-f]{64}$/);
    const rpc = (token) => fetch(`${h.sdkEnv.E2B_SANDBOX_URL}/filesystem.Filesystem/Stat`, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json', 'E2b-Sandbox-Id': sb.sandboxId,
        'E2b-Sandbox-Port': '49983', ...(token ? { 'X-Access-Token': token } : {}) },
      body: JSON.stringify({ path: '/home/user' }),
    });
    assert.equal((await rpc(null)).status, 401);
    assert.equal((await rpc('0'.repeat(64))).status, 401);
    const ok = await rpc(info.json.envdAccessToken);
    assert.equal(ok.status, 200);
    assert.equal((await ok.json()).entry.path, '/home/user');
    // /init is the control plane's: never reachable through the proxy.
    const init = await fetch(`${h.sdkEnv.E2B_SANDBOX_URL}/init`, {
      method: 'POST', body: '{}',
      headers: { 'E2b-Sandbox-Id': sb.sandboxId, 'E2b-Sandbox-Port': '49983',
        'X-Access-Token': info.json.envdAccessToken },
    });
    assert.equal(init.status, 404);
  } finally {
    await sb.kill();
  }
});

test('an insecure sandbox (secure=false in the raw API) has no token', async (t) => {
  if (skipWithoutBase(t)) return;
  const r = await h.api('POST', '/sandboxes', { templateID: 'base', secure: false });
  assert.equal(r.status, 201, r.text);
  assert.equal(r.json.envdAccessToken, undefined);
  const sb = await Sandbox.connect(r.json.sandboxID);
  try {
    assert.equal((await sb.commands.run('echo open')).stdout, 'open\n');
  } finally {
    await sb.kill();
  }
});

test('allowInternetAccess false and network rules are stored and reported', async (t) => {
  if (skipWithoutBase(t)) return;
  const sb = await Sandbox.create({ allowInternetAccess: false });
  const sb2 = await Sandbox.create({
    network: { allowOut: ['192.0.2.0/24'], denyOut: ['0.0.0.0/0'] },
  });
  try {
    const info = await h.api('GET', `/sandboxes/${sb.sandboxId}`);
    assert.equal(info.json.allowInternetAccess, false);
    const info2 = await h.api('GET', `/sandboxes/${sb2.sandboxId}`);
    assert.deepEqual(info2.json.network.allowOut, ['192.0.2.0/24']);
    assert.deepEqual(info2.json.network.denyOut, ['0.0.0.0/0']);
    // The sandboxes still work for everything that stays inside them.
    assert.equal((await sb.commands.run('echo inside')).stdout, 'inside\n');
    // What this node cannot enforce is refused, not silently ignored.
    await assert.rejects(Sandbox.create({
      network: { allowOut: ['example.com'], denyOut: ['0.0.0.0/0'] } }),
    (e) => e instanceof SandboxError && /400/.test(e.message) && /domain/.test(e.message));
    await assert.rejects(Sandbox.create({
      network: { rules: { 'example.com': [{ transform: { headers: { A: 'b' } } }] } } }),
    (e) => e instanceof SandboxError && /rules/.test(e.message));
  } finally {
    await sb.kill();
    await sb2.kill();
  }
});

test('an unknown template is a 404 naming it; a tagged one too', async (t) => {
  if (skipWithoutBase(t)) return;
  await assert.rejects(Sandbox.create('no-such-template'),
    (e) => e instanceof SandboxError && /404/.test(e.message) &&
      /no-such-template/.test(e.message));
  const r = await h.api('POST', '/sandboxes', { templateID: 'base:v9' });
  assert.equal(r.status, 404);
  assert.match(r.json.message, /tag/);
  const ok = await h.api('POST', '/sandboxes', { templateID: 'BASE:default', timeout: 30 });
  assert.equal(ok.status, 201, ok.text);
  assert.equal(ok.json.templateID, 'base');
  assert.equal((await h.api('DELETE', `/sandboxes/${ok.json.sandboxID}`)).status, 204);
});
