// Storms of proxied requests at a paused sandbox created with autoResume:
// concurrent requests share one restore. When it succeeds, exactly one
// resume runs and every request is served; when it fails (images damaged on
// disk), one CRIU run answers the whole storm instead of one run per waiting
// request, each of which can take seconds and holds a proxy thread.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { rmSync } from 'node:fs';
import { join } from 'node:path';
import { Sandbox } from 'e2b';
import { requireBase, startHutchd, useEnv } from './lib/hutchd.mjs';

const STORM = 30;
const FAILED = /resume failed, the sandbox stays paused/;

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

// Lines of the hutchd log about this sandbox that contain `what`.
function logCount(id, what) {
  return h.log().split('\n').filter((l) => l.includes(id) && what.test(l)).length;
}

// STORM requests at once to the agent's health endpoint through the proxy.
function storm(id) {
  return Promise.all(Array.from({ length: STORM }, () =>
    fetch(`${h.sdkEnv.E2B_SANDBOX_URL}/health`, {
      headers: { 'E2b-Sandbox-Id': id, 'E2b-Sandbox-Port': '49983' },
    }).then(async (r) => { await r.arrayBuffer(); return r.status; })));
}

async function pausedAutoResume() {
  const sb = await Sandbox.create({ timeoutMs: 120_000,
    lifecycle: { onTimeout: 'pause', autoResume: true } });
  await sb.files.write('/home/user/a.txt', 'x');
  assert.equal(await sb.pause(), true);
  return sb;
}

test('autoResume storm: one restore serves every concurrent request', async (t) => {
  if (skipWithoutBase(t)) return;
  const sb = await pausedAutoResume();
  try {
    const codes = await storm(sb.sandboxId);
    assert.deepEqual([...new Set(codes)], [204], `statuses ${codes}`);
    assert.equal(logCount(sb.sandboxId, /msg="?resumed"?$/), 1, h.log());
    assert.equal((await sb.getInfo()).state, 'running');
  } finally {
    await Sandbox.kill(sb.sandboxId);
  }
});

test('autoResume storm: a failing restore runs once for the whole storm',
  async (t) => {
    if (skipWithoutBase(t)) return;
    const sb = await pausedAutoResume();
    try {
      // Without its process tree image CRIU cannot restore anything.
      rmSync(join(h.dir, 'data', 'sandboxes', sb.sandboxId, 'checkpoint',
        'pstree.img'));
      const codes = await storm(sb.sandboxId);
      assert.ok(codes.every((c) => c >= 500), `statuses ${codes}`);
      assert.equal(logCount(sb.sandboxId, FAILED), 1,
        `restores run for one storm: ${logCount(sb.sandboxId, FAILED)}`);
      assert.equal((await sb.getInfo()).state, 'paused');
    } finally {
      await Sandbox.kill(sb.sandboxId);
    }
  });
