// Sandbox lifecycle through the official SDK on real sandboxes: getInfo,
// setTimeout (shorten, extend, expiry by the reaper), Sandbox.list with
// metadata and state filters over several pages, Sandbox.connect from a
// second process, and kill semantics.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { Sandbox, SandboxNotFoundError } from 'e2b';
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
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

test('getInfo reports a running sandbox with its dates', async (t) => {
  if (skipWithoutBase(t)) return;
  const before = Date.now();
  const sb = await Sandbox.create({ timeoutMs: 60_000 });
  try {
    const info = await Sandbox.getInfo(sb.sandboxId);
    assert.equal(info.sandboxId, sb.sandboxId);
    assert.equal(info.state, 'running');
    assert.ok(info.startedAt.getTime() >= before - 1000);
    assert.ok(info.endAt > info.startedAt);
    assert.equal(info.envdVersion, '0.6.13');
  } finally {
    await sb.kill();
  }
  await assert.rejects(Sandbox.getInfo(sb.sandboxId), SandboxNotFoundError);
});

test('setTimeout shortens, the reaper ends the sandbox, isRunning turns false',
  async (t) => {
    if (skipWithoutBase(t)) return;
    const sb = await Sandbox.create({ timeoutMs: 300_000 });
    await sb.setTimeout(10_000);
    let info = await sb.getInfo();
    let left = info.endAt.getTime() - Date.now();
    assert.ok(left > 5_000 && left <= 11_000, `left ${left} ms`);
    await sb.setTimeout(2_000);
    info = await sb.getInfo();
    left = info.endAt.getTime() - Date.now();
    assert.ok(left <= 2_500, `left ${left} ms`);
    assert.equal(await sb.isRunning(), true);
    await sleep(3_500);
    assert.equal(await sb.isRunning(), false);
    await assert.rejects(sb.getInfo(), SandboxNotFoundError);
    await assert.rejects(sb.commands.run('true'));
    await assert.rejects(sb.setTimeout(10_000), SandboxNotFoundError);
    assert.equal(await sb.kill(), false);
    const ids = await h.liveIds();
    assert.ok(!ids.includes(sb.sandboxId));
  });

test('setTimeout extends a sandbox past its first deadline', async (t) => {
  if (skipWithoutBase(t)) return;
  const sb = await Sandbox.create({ timeoutMs: 2_000 });
  try {
    await sb.setTimeout(60_000);
    await sleep(3_000);
    assert.equal(await sb.isRunning(), true);
    assert.equal((await sb.commands.run('echo still')).stdout, 'still\n');
  } finally {
    await sb.kill();
  }
});

test('list filters by metadata and state across pages', async (t) => {
  if (skipWithoutBase(t)) return;
  const tag = `run${process.pid}`;
  const made = await Promise.all(Array.from({ length: 5 }, (_, i) =>
    Sandbox.create({ metadata: { suite: tag, idx: String(i), 'odd key': 'a b&c=d' } })));
  const other = await Sandbox.create({ metadata: { suite: 'other' } });
  try {
    const pager = Sandbox.list({ query: { metadata: { suite: tag } }, limit: 2 });
    const seen = [];
    let pages = 0;
    while (pager.hasNext) {
      const items = await pager.nextItems();
      pages++;
      assert.ok(items.length <= 2);
      seen.push(...items);
    }
    assert.equal(pages, 3);
    assert.deepEqual(seen.map((s) => s.sandboxId).sort(),
      made.map((s) => s.sandboxId).sort());
    for (const s of seen) {
      assert.equal(s.state, 'running');
      assert.equal(s.metadata.suite, tag);
      assert.equal(s.metadata['odd key'], 'a b&c=d');
    }
    // Two keys AND together; the encoded value round-trips.
    const one = await Sandbox.list({ query: { metadata: { suite: tag, idx: '3' } } })
      .nextItems();
    assert.deepEqual(one.map((s) => s.sandboxId), [made[3].sandboxId]);
    const odd = await Sandbox.list({ query: { metadata: { 'odd key': 'a b&c=d' } } })
      .nextItems();
    assert.equal(odd.length, 5);
    // State filters: all running; paused matches none.
    const running = await Sandbox.list({ query: { state: ['running'],
      metadata: { suite: tag } } }).nextItems();
    assert.equal(running.length, 5);
    const paused = await Sandbox.list({ query: { state: ['paused'],
      metadata: { suite: tag } } }).nextItems();
    assert.equal(paused.length, 0);
    // A killed sandbox leaves the list.
    await made[0].kill();
    const after = await Sandbox.list({ query: { metadata: { suite: tag } } }).nextItems();
    assert.equal(after.length, 4);
    assert.ok(!after.some((s) => s.sandboxId === made[0].sandboxId));
  } finally {
    await Promise.all([...made, other].map((s) => s.kill()));
  }
});

// A second node process that knows only the id (and the API key in env).
function runChild(id) {
  const code = `
    import { Sandbox } from 'e2b';
    const sb = await Sandbox.connect(process.argv[1]);
    await sb.files.write('from-child.txt', 'child ' + process.pid);
    const r = await sb.commands.run('cat from-child.txt; echo; cat from-parent.txt');
    process.stdout.write(JSON.stringify({ out: r.stdout, id: sb.sandboxId }));
  `;
  return new Promise((ok, fail) => {
    const child = spawn(process.execPath, ['--input-type=module', '-e', code, id], {
      cwd: fileURLToPath(new URL('.', import.meta.url)),
      env: { ...process.env, ...h.sdkEnv },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    let errs = '';
    child.stdout.on('data', (d) => { out += d; });
    child.stderr.on('data', (d) => { errs += d; });
    child.on('exit', (code) => (code === 0 ? ok(JSON.parse(out)) :
      fail(new Error(`child exited ${code}: ${errs}`))));
  });
}

test('Sandbox.connect from a second process shares the sandbox', async (t) => {
  if (skipWithoutBase(t)) return;
  const sb = await Sandbox.create({ secure: true });
  try {
    await sb.files.write('from-parent.txt', 'parent');
    const res = await runChild(sb.sandboxId);
    assert.equal(res.id, sb.sandboxId);
    assert.match(res.out, /^child \d+\nparent$/);
    assert.match(await sb.files.read('from-child.txt'), /^child \d+$/);
  } finally {
    await sb.kill();
  }
  await assert.rejects(Sandbox.connect(sb.sandboxId), SandboxNotFoundError);
});

test('kill ends the sandbox at once; a second kill is false', async (t) => {
  if (skipWithoutBase(t)) return;
  const sb = await Sandbox.create();
  const bg = await sb.commands.run('sleep 600', { background: true });
  assert.ok(bg.pid > 0);
  assert.equal(await Sandbox.kill(sb.sandboxId), true);
  assert.equal(await sb.isRunning(), false);
  assert.equal(await sb.kill(), false);
  await assert.rejects(sb.files.read('/etc/hostname'));
});
