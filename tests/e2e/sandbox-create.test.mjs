// Creating sandboxes for real: parallel creates are isolated from each
// other, every template is found by name in the template dir, and a create
// that fails (template unusable, agent refusing its configuration, agent not
// ready in time) answers a JSON error with the reason and leaves nothing
// behind in the runtime or the list.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { chmodSync, existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Sandbox } from 'e2b';
import { requireBase, startHutchd, templatesBesideBase, useEnv } from './lib/hutchd.mjs';

let h;
let tpl;
let restore;

// A template dir of our own: base, and templates that cannot work.
function makeTemplates() {
  return templatesBesideBase([
    { name: 'ghost', json: JSON.stringify({ user: 'ghost', workdir: '/home/ghost' }) },
    { name: 'rootly', json: JSON.stringify({ user: 'root', workdir: '/tmp',
      env: { FROM_TPL: 'yes' }, cpuCount: 1, memoryMB: 256 }) },
    { name: 'broken', json: '{"user": ' },
    { name: 'halfbuilt', json: '{}', complete: false },
  ]);
}

before(async (t) => {
  if (!requireBase(t)) return;
  tpl = makeTemplates();
  h = await startHutchd({ runtime: true, templateDir: tpl });
  restore = useEnv(h.sdkEnv);
});
after(async () => {
  restore?.();
  await h?.stop();
  if (tpl) rmSync(tpl, { recursive: true, force: true });
});

function readFirst(paths) {
  const p = paths.find((f) => existsSync(f));
  assert.ok(p, `none of ${paths.join(', ')}`);
  return readFileSync(p, 'utf8').trim();
}

function skipWithoutBase(t) { return !h && (t.skip('no base template (see the message above)'), true); }

async function assertNothingLeft() {
  assert.deepEqual(await h.liveIds(), []);
  assert.deepEqual(h.runtimeObjects(), { run: [], disks: [], cgroups: [] });
}

test('parallel creates give isolated sandboxes', async (t) => {
  if (skipWithoutBase(t)) return;
  const sbs = await Promise.all(Array.from({ length: 6 }, () => Sandbox.create()));
  try {
    assert.equal(new Set(sbs.map((s) => s.sandboxId)).size, 6);
    await sbs[0].files.write('/tmp/mine', 'zero');
    const others = await Promise.all(sbs.slice(1).map((s) =>
      s.commands.run('test -e /tmp/mine && echo seen || echo absent')));
    for (const r of others) assert.equal(r.stdout, 'absent\n');
    const hosts = await Promise.all(sbs.map((s) => s.commands.run('hostname')));
    assert.deepEqual(hosts.map((r) => r.stdout.trim()), sbs.map((s) => s.sandboxId));
    assert.equal(h.runtimeObjects().run.length, 6);
  } finally {
    await Promise.all(sbs.map((s) => s.kill()));
  }
  await assertNothingLeft();
});

test('another template by name: its user, workdir, env and resources', async (t) => {
  if (skipWithoutBase(t)) return;
  const sb = await Sandbox.create('rootly');
  try {
    const r = await sb.commands.run('id -u; pwd; echo $FROM_TPL');
    assert.equal(r.stdout, '0\n/tmp\nyes\n');
    const info = await sb.getInfo();
    assert.equal(info.templateId, 'rootly');
    assert.equal(info.cpuCount, 1);
    assert.equal(info.memoryMB, 256);
    // The runtime applied the template's memory: read it from the host side.
    const limit = readFirst([
      `/sys/fs/cgroup/memory/hutche2e/${sb.sandboxId}/memory.limit_in_bytes`,
      `/sys/fs/cgroup/hutche2e/${sb.sandboxId}/memory.max`]);
    assert.equal(Number(limit), 256 * 1024 * 1024);
  } finally {
    await sb.kill();
  }
});

test('a template the agent refuses rolls back with the reason', async (t) => {
  if (skipWithoutBase(t)) return;
  const r = await h.api('POST', '/v2/sandboxes', { templateID: 'ghost' });
  assert.equal(r.status, 500);
  assert.equal(r.json.code, 500);
  assert.match(r.json.message, /ghost/);
  assert.match(r.json.message, /\/init/);
  await assertNothingLeft();
});

test('a broken template.json is a 500 naming the file; half-built is not found',
  async (t) => {
    if (skipWithoutBase(t)) return;
    const r = await h.api('POST', '/v2/sandboxes', { templateID: 'broken' });
    assert.equal(r.status, 500);
    assert.match(r.json.message, /template\.json/);
    const half = await h.api('POST', '/v2/sandboxes', { templateID: 'halfbuilt' });
    assert.equal(half.status, 404);
    // the message names the template, never a path on the server
    assert.equal(half.json.message, "template 'halfbuilt' not found");
    await assertNothingLeft();
  });

test('the SDK sees a failed create as an error, and can create again after', async (t) => {
  if (skipWithoutBase(t)) return;
  await assert.rejects(Sandbox.create('ghost'), /500/);
  const sb = await Sandbox.create();
  assert.equal((await sb.commands.run('echo ok')).stdout, 'ok\n');
  await sb.kill();
  await assertNothingLeft();
});

// An agent folder whose "agent" is a shell script run by the sandbox's /bin/sh.
function fakeAgent(script) {
  const dir = mkdtempSync(join(tmpdir(), 'hutch-fake-agent-'));
  chmodSync(dir, 0o755);
  writeFileSync(join(dir, 'hutch-agent'), `#!/bin/sh\n${script}\n`, { mode: 0o755 });
  return dir;
}

// Runs fn against a hutchd whose sandboxes start the given fake agent.
async function withFakeAgent(script, args, fn) {
  const agent = fakeAgent(script);
  const saved = h;
  await saved.stop(); // a second hutchd would share the runtime's names
  // Through the environment, which outranks flags and any HUTCH_AGENT_DIR set.
  h = await startHutchd({ runtime: true, templateDir: tpl, args,
    env: { HUTCH_AGENT_DIR: agent } });
  try {
    await fn();
  } finally {
    await h.stop();
    rmSync(agent, { recursive: true, force: true });
    h = await startHutchd({ runtime: true, templateDir: tpl });
    restore?.();
    restore = useEnv(h.sdkEnv);
  }
}

test('an agent not ready in agent-ready-ms is a 503 and is rolled back', async (t) => {
  if (skipWithoutBase(t)) return;
  await withFakeAgent('exec sleep 600', ['--agent-ready-ms=300'], async () => {
    const t0 = Date.now();
    const r = await h.api('POST', '/v2/sandboxes', { templateID: 'base' });
    assert.equal(r.status, 503, r.text);
    assert.match(r.json.message, /agent not listening after 300 ms/);
    assert.ok(Date.now() - t0 < 5000);
    await assertNothingLeft();
  });
});

test('an agent that exits at once is a 500 with its exit status', async (t) => {
  if (skipWithoutBase(t)) return;
  await withFakeAgent('exit 7', [], async () => {
    const r = await h.api('POST', '/v2/sandboxes', { templateID: 'base' });
    assert.equal(r.status, 500, r.text);
    assert.match(r.json.message, /exited with status 7/);
    await assertNothingLeft();
  });
});
