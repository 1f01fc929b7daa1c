// Pause and resume through the official SDK on real sandboxes: a disk-only
// pause keeps files and the id and starts the sandbox again on resume; a
// pause with memory keeps a process's state (CRIU); double pause answers 409
// (SDK false); a paused sandbox is listed with state "paused" and filtered
// by state; kill of a paused sandbox deletes its disk; the deadline stops
// while paused; onTimeout 'pause' pauses instead of killing; a restart of
// hutchd keeps paused sandboxes paused; connect with onResume 'reboot'
// starts one afresh on its disk; autoResume brings one back on traffic.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { Sandbox, SandboxNotFoundError } from 'e2b';
import { requireBase, startHutchd, useEnv } from './lib/hutchd.mjs';

let h;
let restore;
before(async (t) => {
  if (!requireBase(t)) return;
  h = await startHutchd({ runtime: true });
  restore = useEnv(h.sdkEnv);
});
after(async () => { restore?.(); await h?.stop(); });

function skipWithoutBase(t) {
  return !h && (t.skip('no base template (see the message above)'), true);
}
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const folderOf = (id) => join(h.dir, 'data', 'sandboxes', id);
const diskOf = (id) => join(folderOf(id), 'disk.img');

async function writeFiles(sb) {
  await sb.files.write('/home/user/notes.txt', 'kept across a pause');
  await sb.commands.run('mkdir -p /opt/data && echo opt > /opt/data/x && ' +
    'echo etc > /etc/hutch-pause-test', { user: 'root' });
}

async function checkFiles(sb) {
  assert.equal(await sb.files.read('/home/user/notes.txt'), 'kept across a pause');
  const r = await sb.commands.run('cat /opt/data/x /etc/hutch-pause-test');
  assert.equal(r.stdout, 'opt\netc\n');
  // the root is writable again (an overlay mounted by the wrong user comes
  // back read-only, which reads alone would not show)
  await sb.files.write('/home/user/after-resume.txt', 'written after');
  assert.equal(await sb.files.read('/home/user/after-resume.txt'), 'written after');
  const w = await sb.commands.run('touch /opt/data/y /etc/hutch-after && echo ok',
    { user: 'root' });
  assert.equal(w.stdout, 'ok\n');
}

test('disk-only pause keeps files and the id; connect resumes it (201)',
  async (t) => {
    if (skipWithoutBase(t)) return;
    const sb = await Sandbox.create({ timeoutMs: 120_000 });
    try {
      await writeFiles(sb);
      await sb.commands.run('sleep 1000', { background: true });
      assert.equal(await sb.pause({ keepMemory: false }), true);
      assert.ok(existsSync(diskOf(sb.sandboxId)), 'the disk stays');
      const info = await Sandbox.getInfo(sb.sandboxId);
      assert.equal(info.state, 'paused');
      assert.equal(await sb.isRunning(), false);
      // setTimeout is for running sandboxes only
      await assert.rejects(sb.setTimeout(10_000), SandboxNotFoundError);

      const raw = await h.api('POST', `/v2/sandboxes/${sb.sandboxId}/connect`,
        { timeout: 60 });
      assert.equal(raw.status, 201, raw.text);
      assert.equal(raw.json.sandboxID, sb.sandboxId);
      const resumed = await Sandbox.getInfo(sb.sandboxId);
      assert.equal(resumed.state, 'running');
      const left = resumed.endAt.getTime() - Date.now();
      assert.ok(left > 50_000 && left <= 61_000, `deadline from the connect: ${left}`);
      const again = await Sandbox.connect(sb.sandboxId);
      assert.equal(again.sandboxId, sb.sandboxId);
      assert.equal(await again.isRunning(), true);
      await checkFiles(again);
      // a new process tree: the background sleep is gone
      const ps = await again.commands.run('pgrep -x sleep || true');
      assert.equal(ps.stdout.trim(), '');
      // running: connect answers 200 and does not resume again
      const raw2 = await h.api('POST', `/v2/sandboxes/${sb.sandboxId}/connect`,
        { timeout: 60 });
      assert.equal(raw2.status, 200);
    } finally {
      await Sandbox.kill(sb.sandboxId);
    }
  });

test('double pause is 409 (SDK false); list state filter; kill deletes the disk',
  async (t) => {
    if (skipWithoutBase(t)) return;
    const sb = await Sandbox.create({ timeoutMs: 120_000, metadata: { t: 'pause-list' } });
    const other = await Sandbox.create({ timeoutMs: 120_000, metadata: { t: 'pause-list' } });
    try {
      assert.equal(await sb.pause({ keepMemory: false }), true);
      assert.equal(await sb.pause({ keepMemory: false }), false);
      const raw = await h.api('POST', `/sandboxes/${sb.sandboxId}/pause`, {});
      assert.equal(raw.status, 409);
      assert.equal(raw.json.code, 409);
      const byState = async (state) => {
        const p = Sandbox.list({ query: { metadata: { t: 'pause-list' }, state } });
        return (await p.nextItems()).map((s) => `${s.sandboxId}:${s.state}`).sort();
      };
      assert.deepEqual(await byState(['paused']), [`${sb.sandboxId}:paused`]);
      assert.deepEqual(await byState(['running']), [`${other.sandboxId}:running`]);
      assert.deepEqual(await byState(['running', 'paused']),
        [`${sb.sandboxId}:paused`, `${other.sandboxId}:running`].sort());
      // the old resume endpoint: 201 with the sandbox, then 409 when running
      const res = await h.api('POST', `/sandboxes/${sb.sandboxId}/resume`, { timeout: 30 });
      assert.equal(res.status, 201, res.text);
      assert.equal(res.json.sandboxID, sb.sandboxId);
      const res2 = await h.api('POST', `/sandboxes/${sb.sandboxId}/resume`, { timeout: 30 });
      assert.equal(res2.status, 409);
      assert.equal(await sb.pause({ keepMemory: false }), true);
      assert.equal(await Sandbox.kill(sb.sandboxId), true);
      assert.equal(existsSync(diskOf(sb.sandboxId)), false, 'disk deleted');
      assert.equal(existsSync(folderOf(sb.sandboxId)), false, 'folder deleted');
      await assert.rejects(Sandbox.getInfo(sb.sandboxId), SandboxNotFoundError);
      await assert.rejects(Sandbox.connect(sb.sandboxId), SandboxNotFoundError);
      assert.equal(await Sandbox.kill(sb.sandboxId), false);
    } finally {
      await Sandbox.kill(sb.sandboxId).catch(() => {});
      await other.kill();
    }
  });

test('pause of an unknown sandbox is 404; bad bodies are 400', async (t) => {
  if (skipWithoutBase(t)) return;
  const r = await h.api('POST', '/sandboxes/inotthereatall00000000/pause', {});
  assert.equal(r.status, 404);
  await assert.rejects(Sandbox.pause('inotthereatall00000000'), SandboxNotFoundError);
  const sb = await Sandbox.create({ timeoutMs: 60_000 });
  try {
    const bad = await h.api('POST', `/sandboxes/${sb.sandboxId}/pause`, { memory: 'no' });
    assert.equal(bad.status, 400);
    assert.equal((await sb.getInfo()).state, 'running');
    const bad2 = await h.api('POST', '/v2/sandboxes', { templateID: 'base',
      autoPause: true, autoPauseMemory: false, autoResume: { enabled: true } });
    assert.equal(bad2.status, 400);
  } finally {
    await sb.kill();
  }
});

test('paused time does not count; a restart keeps a paused sandbox paused',
  async (t) => {
    if (skipWithoutBase(t)) return;
    const sb = await Sandbox.create({ timeoutMs: 3_000 });
    try {
      await writeFiles(sb);
      assert.equal(await sb.pause({ keepMemory: false }), true);
      await sleep(4_000); // past the deadline: the reaper must not end it
      assert.equal((await Sandbox.getInfo(sb.sandboxId)).state, 'paused');
      await h.restart();
      assert.equal((await Sandbox.getInfo(sb.sandboxId)).state, 'paused');
      assert.ok((await h.liveIds()).includes(sb.sandboxId));
      const again = await Sandbox.connect(sb.sandboxId, { timeoutMs: 60_000 });
      await checkFiles(again);
    } finally {
      await Sandbox.kill(sb.sandboxId);
    }
  });

test("onTimeout 'pause' pauses at the deadline instead of killing", async (t) => {
  if (skipWithoutBase(t)) return;
  const sb = await Sandbox.create({ timeoutMs: 2_000,
    lifecycle: { onTimeout: { action: 'pause', keepMemory: false } } });
  try {
    await writeFiles(sb);
    let info = await sb.getInfo();
    assert.deepEqual(info.lifecycle, { onTimeout: 'pause', autoResume: false });
    await sleep(4_000);
    info = await Sandbox.getInfo(sb.sandboxId);
    assert.equal(info.state, 'paused');
    const again = await Sandbox.connect(sb.sandboxId, { timeoutMs: 60_000 });
    await checkFiles(again);
    // a sandbox once paused with memory leaves nothing behind when killed
    assert.equal(await Sandbox.kill(sb.sandboxId), true);
    assert.equal(existsSync(folderOf(sb.sandboxId)), false,
      `${folderOf(sb.sandboxId)} is gone after the kill`);
  } finally {
    await Sandbox.kill(sb.sandboxId);
  }
});

test('pause with memory keeps a python process and its state', async (t) => {
  if (skipWithoutBase(t)) return;
  const sb = await Sandbox.create({ timeoutMs: 120_000 });
  try {
    await writeFiles(sb);
    await sb.files.write('/home/user/counter.py', [
      'import time', 'n = 0', 'while True:', '    n += 1',
      "    open('/home/user/count', 'w').write(str(n))", '    time.sleep(0.1)', '',
    ].join('\n'));
    // Detached from the command's stream: the pause closes proxied
    // connections, and a process is not meant to depend on one.
    await sb.commands.run('setsid nohup python3 /home/user/counter.py ' +
      '>/dev/null 2>&1 </dev/null &');
    await sleep(1_000);
    const before = Number(await sb.files.read('/home/user/count'));
    assert.ok(before > 0);
    assert.equal(await sb.pause(), true);
    assert.equal((await Sandbox.getInfo(sb.sandboxId)).state, 'paused');
    const again = await Sandbox.connect(sb.sandboxId);
    await sleep(500);
    const after = Number(await again.files.read('/home/user/count'));
    // counting went on from where it was, in the same process
    assert.ok(after >= before, `${after} >= ${before}`);
    await sleep(1_000);
    const later = Number(await again.files.read('/home/user/count'));
    const ps = await again.commands.run('ps -eo pid,args');
    assert.ok(later > after, `still counting after the resume: ${later} > ${after}\n` +
      ps.stdout);
    await checkFiles(again);
    // a sandbox once paused with memory leaves nothing behind when killed
    assert.equal(await Sandbox.kill(sb.sandboxId), true);
    assert.equal(existsSync(folderOf(sb.sandboxId)), false,
      `${folderOf(sb.sandboxId)} is gone after the kill`);
  } finally {
    await Sandbox.kill(sb.sandboxId);
  }
});

test("connect with onResume 'reboot' starts afresh on the disk, same id", async (t) => {
  if (skipWithoutBase(t)) return;
  const sb = await Sandbox.create({ timeoutMs: 120_000 });
  try {
    await writeFiles(sb);
    await sb.commands.run('setsid nohup sleep 1000 >/dev/null 2>&1 </dev/null &');
    assert.equal(await sb.pause(), true);
    assert.ok(existsSync(join(folderOf(sb.sandboxId), 'checkpoint')), 'memory images');
    const bad = await h.api('POST', `/v2/sandboxes/${sb.sandboxId}/connect`,
      { memory: 'no' });
    assert.equal(bad.status, 400, bad.text);
    assert.equal((await Sandbox.getInfo(sb.sandboxId)).state, 'paused');

    const again = await Sandbox.connect(sb.sandboxId, { onResume: 'reboot' });
    assert.equal(again.sandboxId, sb.sandboxId);
    assert.equal((await Sandbox.getInfo(sb.sandboxId)).state, 'running');
    const ps = await again.commands.run('pgrep -x sleep || echo none');
    assert.equal(ps.stdout, 'none\n', 'the processes were not restored');
    await checkFiles(again);
    assert.equal(existsSync(join(folderOf(sb.sandboxId), 'checkpoint')), false,
      'the images are dropped');
    // on a running sandbox the option changes nothing: its processes live on
    // (files alone would not tell: a fresh start keeps them too)
    await again.commands.run('setsid nohup sleep 1001 >/dev/null 2>&1 </dev/null &');
    const running = await Sandbox.connect(sb.sandboxId, { onResume: 'reboot' });
    const still = await running.commands.run('pgrep -x -f "sleep 1001" | wc -l');
    assert.equal(still.stdout.trim(), '1', 'the running sandbox was not restarted');
    assert.equal(await running.files.read('/home/user/after-resume.txt'), 'written after');
  } finally {
    await Sandbox.kill(sb.sandboxId);
  }
});

test('autoResume: traffic to a paused sandbox resumes it', async (t) => {
  if (skipWithoutBase(t)) return;
  const sb = await Sandbox.create({ timeoutMs: 120_000,
    lifecycle: { onTimeout: 'pause', autoResume: true } });
  try {
    await sb.files.write('/home/user/a.txt', 'x');
    assert.equal(await sb.pause(), true);
    // the next SDK call goes through the proxy and wakes it up
    assert.equal(await sb.files.read('/home/user/a.txt'), 'x');
    assert.equal((await sb.getInfo()).state, 'running');
  } finally {
    await Sandbox.kill(sb.sandboxId);
  }
});
