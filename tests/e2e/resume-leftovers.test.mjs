// What a resume leaves in the runtime's folders: nothing once the sandbox
// is killed. Each restore builds the sandbox's root in a scratch folder of
// the run dir (<id>.restore); it used to stay behind after every resume,
// succeeded or failed, and pile up in the run dir.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { rmSync } from 'node:fs';
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

const runEntriesOf = (id) => h.runtimeObjects().run.filter((n) => n.startsWith(id));

test('resumes, one failed, leave nothing in the run dir after the kill', async (t) => {
  if (skipWithoutBase(t)) return;
  const sb = await Sandbox.create({ timeoutMs: 120_000 });
  const id = sb.sandboxId;
  try {
    assert.equal(await sb.pause(), true);
    await Sandbox.connect(id);
    assert.deepEqual(runEntriesOf(id), [id], 'running: only its state folder');
    assert.equal(await sb.pause(), true);
    // A restore that fails (no process tree image) must not leave its
    // scratch folder either.
    rmSync(join(h.dir, 'data', 'sandboxes', id, 'checkpoint', 'pstree.img'));
    const r = await h.api('POST', `/sandboxes/${id}/resume`, {});
    assert.equal(r.status, 500, r.text);
    assert.deepEqual(runEntriesOf(id), [id], 'paused: only its state folder');
  } finally {
    await Sandbox.kill(id);
  }
  assert.deepEqual(runEntriesOf(id), [], 'nothing of the sandbox after its kill');
});
