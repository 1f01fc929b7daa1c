// Snapshots and fork on real sandboxes: the official SDK drives the sandboxes,
// raw fetch the endpoints the SDK lacks. A snapshot of a running sandbox keeps
// it running (same id, same process, deadline unchanged); a fork from the
// snapshot is a new sandbox with the files as they were, and writes in one do
// not show in the other. Forks are filesystem-only: the source's processes do
// not carry over. Also: fork of a sandbox in one call (count), list and
// delete, another team gets 404, bad bodies 400, and nothing stays on disk;
// a restart removes the snapshot folders a crash can leave.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import {
  existsSync, mkdirSync, readdirSync, rmSync, symlinkSync, writeFileSync,
} from 'node:fs';
import { join } from 'node:path';
import { Sandbox } from 'e2b';
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
const snapDir = (sid) => join(h.dir, 'data', 'snapshots', sid);
const diskOf = (id) => join(h.dir, 'data', 'sandboxes', id, 'disk.img');

function otherTeam() {
  const key = h.createKey('fork-other');
  return async (method, path, body) => {
    const res = await fetch(`${h.apiUrl}${path}`, {
      method,
      headers: { 'X-API-Key': key, 'Content-Type': 'application/json' },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    return { status: res.status, json: await res.json().catch(() => null) };
  };
}

async function forkedSandbox(result) {
  assert.equal(result.length, 1);
  assert.ok(result[0].sandbox, `fork failed: ${JSON.stringify(result[0].error)}`);
  return Sandbox.connect(result[0].sandbox.sandboxID);
}

test('snapshot of a running sandbox, fork from it, copies are separate',
  async (t) => {
    if (skipWithoutBase(t)) return;
    let src = await Sandbox.create({ timeoutMs: 300_000 });
    let fork;
    let snapId;
    try {
      await src.files.write('/home/user/state.txt', 'before the snapshot');
      await src.commands.run('mkdir -p /opt/app && echo v1 > /opt/app/version',
        { user: 'root' });
      // A process whose pid must be the same after the snapshot: the source
      // is paused with its memory and resumed, not restarted.
      const bg = await src.commands.run('sleep 1000', { background: true });
      const endBefore = (await Sandbox.getInfo(src.sandboxId)).endAt.getTime();

      const made = await h.api('POST', `/sandboxes/${src.sandboxId}/snapshots`,
        { name: 'first' });
      assert.equal(made.status, 201, made.text);
      const snap = made.json;
      snapId = snap.snapshotID;
      assert.match(snap.snapshotID, /^s[a-z0-9]{20}$/);
      assert.equal(snap.sandboxID, src.sandboxId);
      assert.equal(snap.templateID, 'base');
      assert.deepEqual(snap.names, ['first']);
      assert.ok(snap.sizeBytes > 0);
      assert.ok(existsSync(join(snapDir(snap.snapshotID), 'disk.img')));

      // The source runs on: same id, its process alive, deadline unchanged.
      const info = await Sandbox.getInfo(src.sandboxId);
      assert.equal(info.state, 'running');
      assert.equal(info.endAt.getTime(), endBefore);
      // As a pause does, the snapshot closed the connections open into the
      // sandbox: the SDK object reconnects through connect.
      src = await Sandbox.connect(src.sandboxId);
      const ps = await src.commands.run(`kill -0 ${bg.pid} && echo alive`);
      assert.equal(ps.stdout, 'alive\n');
      await src.files.write('/home/user/state.txt', 'after the snapshot');

      const listed = await h.api('GET', '/snapshots');
      assert.equal(listed.status, 200);
      assert.ok(listed.json.some((s) => s.snapshotID === snap.snapshotID));
      const one = await h.api('GET', `/snapshots/${snap.snapshotID}`);
      assert.equal(one.status, 200);
      assert.equal(one.json.sandboxID, src.sandboxId);

      const forked = await h.api('POST', `/snapshots/${snap.snapshotID}/fork`,
        { timeout: 120 });
      assert.equal(forked.status, 201, forked.text);
      fork = await forkedSandbox(forked.json);
      assert.notEqual(fork.sandboxId, src.sandboxId);
      assert.equal(await fork.isRunning(), true);
      // The files as they were at the snapshot.
      assert.equal(await fork.files.read('/home/user/state.txt'), 'before the snapshot');
      assert.equal((await fork.commands.run('cat /opt/app/version')).stdout, 'v1\n');
      // Filesystem-only: the source's processes are not in the fork.
      const sleeps = await fork.commands.run('pgrep -x sleep || true');
      assert.equal(sleeps.stdout.trim(), '');

      // Writes stay in their own sandbox, both ways.
      await fork.files.write('/home/user/only-fork.txt', 'fork');
      await src.files.write('/home/user/only-source.txt', 'source');
      assert.equal(await src.files.exists('/home/user/only-fork.txt'), false);
      assert.equal(await fork.files.exists('/home/user/only-source.txt'), false);
      assert.equal(await src.files.read('/home/user/state.txt'), 'after the snapshot');

      // Deleting the snapshot leaves the fork running; its folder goes.
      const del = await h.api('DELETE', `/snapshots/${snap.snapshotID}`);
      assert.equal(del.status, 204);
      assert.equal(existsSync(snapDir(snap.snapshotID)), false);
      assert.equal((await h.api('GET', `/snapshots/${snap.snapshotID}`)).status, 404);
      assert.equal((await h.api('DELETE', `/snapshots/${snap.snapshotID}`)).status, 404);
      assert.equal(await fork.files.read('/home/user/only-fork.txt'), 'fork');
    } finally {
      const forkId = fork?.sandboxId;
      if (snapId) await h.api('DELETE', `/snapshots/${snapId}`);
      await fork?.kill();
      await src.kill();
      if (forkId) assert.equal(existsSync(diskOf(forkId)), false, 'fork disk removed');
    }
  });

test('fork of a sandbox in one call makes count sandboxes; no snapshot stays',
  async (t) => {
    if (skipWithoutBase(t)) return;
    const src = await Sandbox.create({ timeoutMs: 120_000 });
    const forks = [];
    try {
      await src.files.write('/home/user/fork-me.txt', 'shared start');
      const before = (await h.api('GET', `/snapshots?sandboxID=${src.sandboxId}`)).json;
      assert.deepEqual(before, []);
      const r = await h.api('POST', `/sandboxes/${src.sandboxId}/fork`,
        { count: 2, timeout: 60 });
      assert.equal(r.status, 201, r.text);
      assert.equal(r.json.length, 2);
      for (const one of r.json) assert.ok(one.sandbox, JSON.stringify(one.error));
      // Before any connect, which would move the deadline.
      const info = await Sandbox.getInfo(r.json[0].sandbox.sandboxID);
      const left = info.endAt.getTime() - Date.now();
      assert.ok(left > 30_000 && left <= 61_000, `fork deadline from its timeout: ${left}`);
      for (const one of r.json) forks.push(await Sandbox.connect(one.sandbox.sandboxID));
      assert.notEqual(forks[0].sandboxId, forks[1].sandboxId);
      for (const f of forks)
        assert.equal(await f.files.read('/home/user/fork-me.txt'), 'shared start');
      // The snapshot the fork took is gone again.
      const after = (await h.api('GET', `/snapshots?sandboxID=${src.sandboxId}`)).json;
      assert.deepEqual(after, []);
      assert.equal(await src.isRunning(), true);
    } finally {
      for (const f of forks) await f.kill();
      await src.kill();
    }
  });

test('a paused sandbox is snapshotted without resuming it', async (t) => {
  if (skipWithoutBase(t)) return;
  const src = await Sandbox.create({ timeoutMs: 120_000 });
  let fork;
  try {
    await src.files.write('/home/user/paused.txt', 'written before the pause');
    assert.equal(await src.pause(), true);
    const made = await h.api('POST', `/sandboxes/${src.sandboxId}/snapshots`);
    assert.equal(made.status, 201, made.text);
    assert.deepEqual(made.json.names, []);
    assert.equal((await Sandbox.getInfo(src.sandboxId)).state, 'paused');
    const forked = await h.api('POST', `/snapshots/${made.json.snapshotID}/fork`);
    assert.equal(forked.status, 201, forked.text);
    fork = await forkedSandbox(forked.json);
    assert.equal(await fork.files.read('/home/user/paused.txt'), 'written before the pause');
    assert.equal((await Sandbox.getInfo(src.sandboxId)).state, 'paused');
    assert.equal((await h.api('DELETE', `/snapshots/${made.json.snapshotID}`)).status, 204);
  } finally {
    await fork?.kill();
    await src.kill();
  }
});

test('another team gets 404; bad bodies get 400', async (t) => {
  if (skipWithoutBase(t)) return;
  const src = await Sandbox.create({ timeoutMs: 120_000 });
  try {
    const made = await h.api('POST', `/sandboxes/${src.sandboxId}/snapshots`);
    assert.equal(made.status, 201, made.text);
    const sid = made.json.snapshotID;
    const other = otherTeam();
    assert.equal((await other('POST', `/sandboxes/${src.sandboxId}/snapshots`)).status,
      404);
    assert.equal((await other('POST', `/sandboxes/${src.sandboxId}/fork`)).status, 404);
    assert.equal((await other('GET', `/snapshots/${sid}`)).status, 404);
    assert.equal((await other('POST', `/snapshots/${sid}/fork`)).status, 404);
    assert.equal((await other('DELETE', `/snapshots/${sid}`)).status, 404);
    const theirs = await other('GET', '/snapshots');
    assert.equal(theirs.status, 200);
    assert.deepEqual(theirs.json, []);
    // Still there for its own team.
    assert.equal((await h.api('GET', `/snapshots/${sid}`)).status, 200);

    const bad = [
      ['POST', `/sandboxes/${src.sandboxId}/snapshots`, { name: 7 }],
      ['POST', `/sandboxes/${src.sandboxId}/snapshots`, { name: 'x'.repeat(129) }],
      ['POST', `/sandboxes/${src.sandboxId}/snapshots`, { name: 'a\nb' }],
      ['POST', `/sandboxes/${src.sandboxId}/snapshots`, { nmae: 'typo' }],
      ['POST', `/sandboxes/${src.sandboxId}/fork`, { count: 0 }],
      ['POST', `/sandboxes/${src.sandboxId}/fork`, { count: 11 }],
      ['POST', `/sandboxes/${src.sandboxId}/fork`, { count: '1' }],
      ['POST', `/sandboxes/${src.sandboxId}/fork`, { timeout: -1 }],
      ['POST', `/snapshots/${sid}/fork`, { timeout: 10 ** 9 }],
      ['POST', `/snapshots/${sid}/fork`, [1]],
    ];
    for (const [method, path, body] of bad) {
      const r = await h.api(method, path, body);
      assert.equal(r.status, 400, `${path} ${JSON.stringify(body)}: ${r.text}`);
      assert.ok(r.json?.message, 'a message says what is wrong');
    }
    const raw = await fetch(`${h.apiUrl}/sandboxes/${src.sandboxId}/snapshots`, {
      method: 'POST',
      headers: { 'X-API-Key': h.apiKey, 'Content-Type': 'application/json' },
      body: '{"name": ',
    });
    assert.equal(raw.status, 400);
    assert.equal((await h.api('GET', '/snapshots?sandboxID=..%2Fx')).status, 400);
    assert.equal((await h.api('GET', '/snapshots/..')).status, 404);
    assert.equal((await h.api('POST', '/sandboxes/inosuchsandbox0000000/snapshots'))
      .status, 404);
    // No sandbox was made by the bad requests and no snapshot beyond ours.
    const listed = (await h.api('GET', '/snapshots')).json.map((s) => s.snapshotID);
    assert.deepEqual(listed, [sid]);
    assert.deepEqual(await h.liveIds(), [src.sandboxId]);
    assert.equal((await h.api('DELETE', `/snapshots/${sid}`)).status, 204);
    assert.deepEqual(readdirSync(join(h.dir, 'data', 'snapshots')), []);
  } finally {
    await src.kill();
  }
});

test('a restart removes unfinished and unreferenced snapshot folders, nothing else',
  async (t) => {
    if (skipWithoutBase(t)) return;
    const src = await Sandbox.create({ timeoutMs: 120_000 });
    try {
      const made = await h.api('POST', `/sandboxes/${src.sandboxId}/snapshots`);
      assert.equal(made.status, 201, made.text);
      const kept = made.json.snapshotID;
      // what a crash leaves: an unfinished copy, a folder without a row
      // (names of the shape new snapshot ids have: 's' and 20 of [a-z0-9])
      const leftovers = ['sunfinished0000000000.tmp', 'snorowforthis00000000'];
      // not ours: other names (a sandbox id's shape too), and a link named
      // like a snapshot whose target's disk.img must survive
      const foreign = ['Not-A-Snapshot', 'sx.tmp.old', 'backup',
        'ilooksliketheidofasbx'];
      for (const name of [...leftovers, ...foreign]) {
        mkdirSync(snapDir(name));
        writeFileSync(join(snapDir(name), 'disk.img'), 'x');
      }
      const elsewhere = join(h.dir, 'elsewhere');
      mkdirSync(elsewhere);
      writeFileSync(join(elsewhere, 'disk.img'), 'x');
      const link = snapDir('slinktoanotherfolder0');
      symlinkSync(elsewhere, link);
      await h.restart();
      for (const name of leftovers) assert.equal(existsSync(snapDir(name)), false, name);
      for (const name of foreign) assert.equal(existsSync(snapDir(name)), true, name);
      assert.ok(existsSync(join(elsewhere, 'disk.img')), 'nothing removed through a link');
      assert.ok(existsSync(join(snapDir(kept), 'disk.img')), 'a recorded snapshot stays');
      assert.equal((await h.api('GET', `/snapshots/${kept}`)).status, 200);
      assert.equal((await h.api('DELETE', `/snapshots/${kept}`)).status, 204);
      for (const name of foreign) rmSync(snapDir(name), { recursive: true });
      rmSync(link);
      rmSync(elsewhere, { recursive: true });
    } finally {
      await Sandbox.kill(src.sandboxId);
    }
  });
