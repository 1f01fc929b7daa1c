// Template builds through the official SDK's Template builder against a real
// hutchd with real build sandboxes: from `base` with RUN, COPY of local
// files, ENV, WORKDIR and start/ready commands; a sandbox made from the
// alias sees all of it; a second build with one step changed reuses the
// earlier steps (the build log says CACHED); a failing step fails the build
// with its output; the template endpoints answer with exact statuses.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import {
  existsSync, mkdtempSync, mkdirSync, readdirSync, rmdirSync, rmSync, writeFileSync, symlinkSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Sandbox, Template, waitForFile, BuildError } from 'e2b';
import { requireBase, startHutchd, useEnv } from './lib/hutchd.mjs';

let h;
let restore;
let ctx;
const isolation = ['--cgroup-name=hutchtpl', '--veth-prefix=htp', '--net-cidr=10.233.0.0/16'];

// The harness removes its own cgroup and table; these are ours.
function removeIsolatedRoots() {
  const roots = ['/sys/fs/cgroup', '/sys/fs/cgroup/unified'];
  try {
    for (const d of readdirSync('/sys/fs/cgroup')) roots.push(join('/sys/fs/cgroup', d));
  } catch { /* no cgroup fs */ }
  for (const r of roots) {
    const dir = join(r, 'hutchtpl');
    if (existsSync(dir)) {
      try {
        rmdirSync(dir);
      } catch (e) {
        process.stderr.write(`cannot remove ${dir}: ${e.code}\n`);
      }
    }
  }
  spawnSync('nft', ['delete', 'table', 'inet', 'hutchtpl'], { stdio: 'ignore' });
}
before(async (t) => {
  if (!requireBase(t)) return;
  // Its own cgroup, firewall table, veths and addresses: builds make many
  // short sandboxes, and another hutchd e2e run must not tear its table down.
  h = await startHutchd({ runtime: true, args: isolation });
  restore = useEnv(h.sdkEnv);
  ctx = mkdtempSync(join(tmpdir(), 'hutch-tpl-ctx-'));
  writeFileSync(join(ctx, 'hello.txt'), 'hello from the build context\n');
  mkdirSync(join(ctx, 'app', 'lib'), { recursive: true });
  writeFileSync(join(ctx, 'app', 'main.py'), 'print("main")\n');
  writeFileSync(join(ctx, 'app', 'lib', 'util.py'), 'X = 42\n');
  symlinkSync('main.py', join(ctx, 'app', 'entry.py'));
});
after(async () => {
  restore?.();
  await h?.stop();
  if (h) removeIsolatedRoots();
  if (ctx) rmSync(ctx, { recursive: true, force: true });
});

function skipWithoutBase(t) {
  return !h && (t.skip('no base template (see the message above)'), true);
}

function appTemplate(lastRun) {
  return Template({ fileContextPath: ctx })
    .fromTemplate('base')
    .runCmd('echo "built by $(whoami)" > /home/user/run.txt')
    .copy('hello.txt', '/home/user/hello.txt')
    .copy('app', '/home/user/app')
    .setEnvs({ GREETING: 'hi there', EMPTYISH: 'x y' })
    .setWorkdir('/home/user/app')
    .runCmd(lastRun)
    .setStartCmd('sleep 1; echo started > /tmp/started; sleep 3600',
      waitForFile('/tmp/started'));
}

async function build(tpl, name, opts = {}) {
  const logs = [];
  const info = await Template.build(tpl, name, {
    ...opts, onBuildLogs: (e) => logs.push(e.message),
  });
  return { info, logs };
}

test('build from base: RUN, COPY, ENV, WORKDIR, start and ready commands', async (t) => {
  if (skipWithoutBase(t)) return;
  const { info, logs } = await build(appTemplate('pwd > where.txt'), 'e2e-app');
  assert.match(info.templateId, /^[a-z0-9]{20}$/);
  assert.match(info.buildId, /^[0-9a-f-]{36}$/);
  assert.ok(logs.some((l) => /build finished/.test(l)), logs.join('\n'));
  assert.equal(logs.filter((l) => /^CACHED/.test(l)).length, 0, logs.join('\n'));
  assert.equal(await Template.exists('e2e-app'), true);

  const sb = await Sandbox.create('e2e-app');
  try {
    const r = await sb.commands.run(
      'cat /home/user/run.txt /home/user/hello.txt lib/util.py where.txt; ' +
      'readlink entry.py; echo "$GREETING|$EMPTYISH"; pwd; cat /tmp/started; ' +
      'stat -c "%U %a" /home/user/hello.txt /home/user/app; stat -c %U /home/user');
    assert.equal(r.stdout,
      'built by user\nhello from the build context\nX = 42\n/home/user/app\n' +
      'main.py\nhi there|x y\n/home/user/app\nstarted\n' +
      'user 644\nuser 755\nuser\n');
    const py = await sb.commands.run('python3 main.py');
    assert.equal(py.stdout, 'main\n');
    const pid = await sb.commands.run('pgrep -f "sleep 3600"');
    assert.match(pid.stdout, /^\d+/);
  } finally {
    await sb.kill();
  }
  // Keep a name for this build: the next test moves the default tag.
  const tagged = await h.api('POST', '/templates/tags', { target: 'e2e-app', tags: ['first'] });
  assert.equal(tagged.status, 201, tagged.text);
  assert.equal(tagged.json.buildID, info.buildId);
});

test('a second build with one changed step reuses the earlier layers', async (t) => {
  if (skipWithoutBase(t)) return;
  const { logs } = await build(appTemplate('pwd > where.txt; echo v2 > version.txt'),
    'e2e-app');
  const cached = logs.filter((l) => /^CACHED/.test(l));
  // RUN, COPY, COPY, WORKDIR come from the cache; the changed RUN does not.
  assert.equal(cached.length, 4, logs.join('\n'));
  assert.ok(cached.some((l) => /RUN echo "built by/.test(l)));
  assert.ok(!cached.some((l) => /version\.txt/.test(l)), logs.join('\n'));
  const sb = await Sandbox.create('e2e-app');
  try {
    const r = await sb.commands.run('cat version.txt where.txt /home/user/run.txt');
    assert.equal(r.stdout, 'v2\n/home/user/app\nbuilt by user\n');
  } finally {
    await sb.kill();
  }
  // The tag still names the first build.
  const old = await Sandbox.create('e2e-app:first');
  try {
    const r = await old.commands.run('ls; cat where.txt');
    assert.equal(r.stdout, 'entry.py\nlib\nmain.py\nwhere.txt\n/home/user/app\n');
  } finally {
    await old.kill();
  }
  // skipCache builds every step again.
  const again = await build(appTemplate('true'), 'e2e-app-nocache', { skipCache: true });
  assert.equal(again.logs.filter((l) => /^CACHED/.test(l)).length, 0);
});

test('a failing step fails the build with its output, nothing is published', async (t) => {
  if (skipWithoutBase(t)) return;
  const tpl = Template().fromTemplate('base')
    .runCmd('echo about to fail; echo oops >&2; exit 7');
  await assert.rejects(build(tpl, 'e2e-broken'), (e) => {
    assert.ok(e instanceof BuildError, String(e));
    assert.match(e.message, /exited with status 7; output: about to fail \| oops$/);
    return true;
  });
  await assert.rejects(Sandbox.create('e2e-broken'), /not found/);
  // An image no registry serves (a closed loopback port: no traffic leaves).
  await assert.rejects(build(Template().fromImage('127.0.0.1:1/none/such:v1'), 'e2e-image'),
    (e) => e instanceof BuildError && /image '127\.0\.0\.1:1\/none\/such:v1'/.test(e.message));
  // A start command that ends before the ready command succeeds fails at once.
  const ready = Template().fromTemplate('base').setStartCmd('exit 3', 'false');
  await assert.rejects(build(ready, 'e2e-never-ready'), (e) => {
    assert.ok(e instanceof BuildError, String(e));
    assert.match(e.message, /start command ended \(status 3\) before the ready command/);
    return true;
  });
});

test('USER creates the user and makes it the default; RUN as root on request', async (t) => {
  if (skipWithoutBase(t)) return;
  // fromBaseImage() names e2bdev/base, which this node serves from `base`.
  const tpl = Template().fromBaseImage()
    .runCmd('touch /made-by-root && chmod 600 /made-by-root', { user: 'root' })
    .setUser('appuser')
    .runCmd('whoami > /home/appuser/who.txt')
    .setWorkdir('/home/appuser');
  await build(tpl, 'e2e-user');
  const sb = await Sandbox.create('e2e-user');
  try {
    const r = await sb.commands.run('whoami; pwd; cat who.txt; stat -c "%U %a" /made-by-root');
    assert.equal(r.stdout, 'appuser\n/home/appuser\nappuser\nroot 600\n');
  } finally {
    await sb.kill();
  }
});

test('template endpoints: hashes, aliases, tags, delete', async (t) => {
  if (skipWithoutBase(t)) return;
  const made = await h.api('POST', '/v3/templates', { name: 'e2e-rest:first', cpuCount: 1 });
  assert.equal(made.status, 202, made.text);
  assert.deepEqual(made.json.tags, ['first']);
  assert.deepEqual(made.json.names, ['e2e-rest']);
  assert.equal(made.json.public, false);
  const tid = made.json.templateID;

  let r = await h.api('GET', `/templates/${tid}/files/ABC`);
  assert.equal(r.status, 400);
  assert.equal(r.json.message, 'Invalid files hash');
  const hash = 'a'.repeat(64);
  r = await h.api('GET', `/templates/${tid}/files/${hash}`);
  assert.equal(r.status, 201);
  assert.equal(r.json.present, false);
  // The signed URL needs no key; a changed signature is refused.
  // (the first character changed to another one: a '0' stays a '0')
  const bad = await fetch(r.json.url.replace(/signature=(.)/,
    (_, c) => `signature=${c === '0' ? '1' : '0'}`), { method: 'PUT', body: 'x' });
  assert.equal(bad.status, 403);
  const put = await fetch(r.json.url, { method: 'PUT', body: 'not a tar' });
  assert.equal(put.status, 200);
  r = await h.api('GET', `/templates/${tid}/files/${hash}`);
  assert.equal(r.json.present, true);

  r = await h.api('POST', `/v2/templates/${tid}/builds/${made.json.buildID}`,
    { fromTemplate: 'base', steps: [{ type: 'NOPE', args: [] }] });
  assert.equal(r.status, 400);
  r = await h.api('POST', `/v2/templates/${tid}/builds/${made.json.buildID}`,
    { fromTemplate: 'base', steps: [{ type: 'COPY', args: ['a', '/a'], filesHash: hash }] });
  assert.equal(r.status, 202, r.text);
  let st;
  for (let i = 0; i < 100; i++) {
    st = await h.api('GET', `/templates/${tid}/builds/${made.json.buildID}/status`);
    if (st.json.status === 'error' || st.json.status === 'ready') break;
    await new Promise((ok) => setTimeout(ok, 100));
  }
  assert.equal(st.json.status, 'error');
  assert.match(st.json.reason.message, /archive/);
  assert.equal(st.json.reason.step, '1');
  const end = await h.api('GET', `/templates/${tid}/builds/${made.json.buildID}/status` +
    `?logsOffset=${st.json.logEntries.length}`);
  assert.deepEqual(end.json.logEntries, []);

  r = await h.api('GET', '/templates/aliases/e2e-rest');
  assert.equal(r.status, 200);
  assert.equal(r.json.templateID, tid);
  r = await h.api('GET', '/templates/aliases/no-such-alias');
  assert.equal(r.status, 404);
  r = await h.api('GET', '/templates/aliases/base');
  assert.equal(r.status, 200);

  // Tags point at builds that succeeded: e2e-app's default build.
  r = await h.api('POST', '/templates/tags', { target: 'e2e-app', tags: ['stable', 'v1'] });
  assert.equal(r.status, 201, r.text);
  assert.deepEqual(r.json.tags, ['stable', 'v1']);
  const appId = (await h.api('GET', '/templates/aliases/e2e-app')).json.templateID;
  r = await h.api('GET', `/templates/${appId}/tags`);
  assert.equal(r.status, 200);
  assert.deepEqual(r.json.map((x) => x.tag).sort(), ['default', 'first', 'stable', 'v1']);
  const sb = await Sandbox.create('e2e-app:stable');
  await sb.kill();
  r = await h.api('DELETE', '/templates/tags', { name: 'e2e-app', tags: ['v1'] });
  assert.equal(r.status, 204);
  r = await h.api('GET', `/templates/${appId}/tags`);
  assert.deepEqual(r.json.map((x) => x.tag).sort(), ['default', 'first', 'stable']);

  r = await h.api('DELETE', `/templates/${tid}`);
  assert.equal(r.status, 204);
  r = await h.api('DELETE', `/templates/${tid}`);
  assert.equal(r.status, 404);
});

test('another team cannot see, use or take over a template', async (t) => {
  if (skipWithoutBase(t)) return;
  const key = h.createKey('other-team');
  const other = async (method, path, body) => {
    const res = await fetch(`${h.apiUrl}${path}`, {
      method,
      headers: { 'X-API-Key': key, 'Content-Type': 'application/json' },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    return { status: res.status, json: await res.json().catch(() => null) };
  };
  const appId = (await h.api('GET', '/templates/aliases/e2e-app')).json.templateID;
  // the listing: the team's own templates with their newest build, nobody else's
  for (const path of ['/templates', '/v2/templates']) {
    const mine = await h.api('GET', path);
    assert.equal(mine.status, 200, mine.text);
    const app = mine.json.find((x) => x.templateID === appId);
    assert.ok(app, `${path} lists e2e-app: ${mine.text}`);
    assert.deepEqual(app.names, ['e2e-app']);
    assert.equal(app.buildStatus, 'ready');
    assert.match(app.buildID, /^[0-9a-f-]{36}$/);
    assert.ok(app.buildCount >= 2, 'it was built twice');
    assert.equal(app.public, false);
    for (const k of ['cpuCount', 'memoryMB', 'diskSizeMB', 'spawnCount']) {
      assert.equal(typeof app[k], 'number', k);
    }
    assert.ok(Date.parse(app.createdAt) <= Date.parse(app.updatedAt));
    const theirs = await other('GET', path);
    assert.equal(theirs.status, 200);
    assert.deepEqual(theirs.json, []);
  }
  assert.equal((await other('GET', '/templates/aliases/e2e-app')).status, 403);
  assert.equal((await other('GET', `/templates/${appId}/tags`)).status, 403);
  assert.equal((await other('GET', `/templates/${appId}/files/${'b'.repeat(64)}`)).status,
    403);
  assert.equal((await other('DELETE', `/templates/${appId}`)).status, 403);
  assert.equal((await other('POST', '/v3/templates', { name: 'e2e-app' })).status, 409);
  const create = await other('POST', '/sandboxes', { templateID: 'e2e-app' });
  assert.equal(create.status, 404);
  assert.match(create.json.message, /not found/);
  // base stays everyone's.
  assert.equal((await other('GET', '/templates/aliases/base')).status, 200);
});
