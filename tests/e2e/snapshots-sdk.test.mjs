// The official SDK's own snapshot calls, unchanged, against hutchd:
// sandbox.createSnapshot, Sandbox.listSnapshots and sandbox.listSnapshots,
// Sandbox.create(snapshotId) and Sandbox.create(<snapshot name>) with the
// create's own options, Sandbox.fork, and Sandbox.deleteSnapshot (which the
// SDK sends as DELETE /templates/{id}). Another team can neither start from
// nor delete the snapshot.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { Sandbox, NotFoundError } from 'e2b';
import { requireBase, startHutchd, useEnv } from './lib/hutchd.mjs';

let h;
let restore;
before(async (t) => {
  if (!requireBase(t)) return;
  h = await startHutchd({ runtime: true });
  restore = useEnv(h.sdkEnv);
});
after(async () => { restore?.(); await h?.stop(); });

test('SDK snapshots: create, list, start from by id and name, fork, delete',
  async (t) => {
    if (!h) return t.skip('no base template (see the message above)');
    const src = await Sandbox.create({ timeoutMs: 120_000, metadata: { role: 'source' } });
    const made = [];
    try {
      await src.files.write('/home/user/state.txt', 'at the snapshot');
      const snap = await src.createSnapshot({ name: 'sdk-snap' });
      assert.match(snap.snapshotId, /^s[a-z0-9]{20}$/);
      assert.deepEqual(snap.names, ['sdk-snap']);
      // the source runs on, and writes after the snapshot stay its own
      await src.files.write('/home/user/state.txt', 'after the snapshot');

      const all = await Sandbox.listSnapshots().nextItems();
      assert.deepEqual(all.map((s) => s.snapshotId), [snap.snapshotId]);
      const mine = await src.listSnapshots().nextItems();
      assert.deepEqual(mine.map((s) => s.snapshotId), [snap.snapshotId]);

      const byId = await Sandbox.create(snap.snapshotId,
        { timeoutMs: 60_000, metadata: { role: 'from-id' } });
      made.push(byId);
      assert.notEqual(byId.sandboxId, src.sandboxId);
      assert.equal(await byId.files.read('/home/user/state.txt'), 'at the snapshot');
      const info = await Sandbox.getInfo(byId.sandboxId);
      assert.deepEqual(info.metadata, { role: 'from-id' }, 'the create\'s own metadata');
      assert.equal(info.state, 'running');

      const byName = await Sandbox.create('sdk-snap', { timeoutMs: 60_000 });
      made.push(byName);
      assert.equal(await byName.files.read('/home/user/state.txt'), 'at the snapshot');
      await byName.files.write('/home/user/state.txt', 'the copy by name');
      assert.equal(await byId.files.read('/home/user/state.txt'), 'at the snapshot',
        'each sandbox has its own copy');

      const forks = await Sandbox.fork(src.sandboxId, { count: 1 });
      assert.equal(forks.length, 1);
      assert.ok(forks[0] instanceof Sandbox, String(forks[0]));
      made.push(forks[0]);
      assert.equal(await forks[0].files.read('/home/user/state.txt'), 'after the snapshot');

      // another team: not found, and nothing deleted
      const other = h.createKey('snap-other');
      await assert.rejects(Sandbox.create(snap.snapshotId, { apiKey: other }),
        (e) => e instanceof NotFoundError || /404/.test(e.message));
      assert.equal(await Sandbox.deleteSnapshot(snap.snapshotId, { apiKey: other }), false);

      assert.equal(await Sandbox.deleteSnapshot(snap.snapshotId), true);
      assert.equal(existsSync(join(h.dir, 'data', 'snapshots', snap.snapshotId)), false);
      assert.equal(await Sandbox.deleteSnapshot(snap.snapshotId), false);
      assert.deepEqual(await Sandbox.listSnapshots().nextItems(), []);
      await assert.rejects(Sandbox.create(snap.snapshotId),
        (e) => e instanceof NotFoundError || /404/.test(e.message));
      // the sandboxes made from it live on without it
      assert.equal(await byId.files.read('/home/user/state.txt'), 'at the snapshot');
    } finally {
      for (const m of made) await m.kill().catch(() => {});
      await src.kill();
    }
  });
