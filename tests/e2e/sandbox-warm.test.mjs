// The warm pool: base sandboxes started ahead of creates. A create takes
// one and only configures it (token, env, user, egress policy), the pool
// refills, a clean stop leaves nothing, and after a crash the pooled
// sandboxes (which have no rows) are removed as orphans.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, readFileSync } from 'node:fs';
import { Sandbox } from 'e2b';
import { cgroupName, requireBase, startHutchd, useEnv } from './lib/hutchd.mjs';

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

// Waits until the runtime holds the live sandboxes plus `pooled` more.
async function poolFilled(pooled) {
  const t0 = Date.now();
  for (;;) {
    const live = await h.liveIds();
    const run = h.runtimeObjects().run;
    if (run.length === live.length + pooled) {
      return run.filter((id) => !live.includes(id));
    }
    if (Date.now() - t0 > 20_000) {
      throw new Error(`pool not filled: ${run.length} sandboxes, ${live.length} live`);
    }
    await sleep(50);
  }
}

test('the pool fills with sandboxes nobody listed', async (t) => {
  if (skipWithoutBase(t)) return;
  const pooled = await poolFilled(2);
  assert.equal(pooled.length, 2);
  assert.deepEqual(await h.liveIds(), []);
});

test('a create takes a pooled sandbox, configured for it, and the pool refills',
  async (t) => {
    if (skipWithoutBase(t)) return;
    const pooled = await poolFilled(2);
    const sb = await Sandbox.create({ envs: { WARM: 'yes' }, metadata: { k: 'v' } });
    try {
      assert.ok(pooled.includes(sb.sandboxId), `${sb.sandboxId} not from ${pooled}`);
      const r = await sb.commands.run('echo "$WARM $(whoami) $(pwd) $(hostname)"');
      assert.equal(r.stdout, `yes user /home/user ${sb.sandboxId}\n`);
      // The token was set by /init when taken: without it the agent refuses.
      const info = await h.api('GET', `/sandboxes/${sb.sandboxId}`);
      const stat = await fetch(`${h.sdkEnv.E2B_SANDBOX_URL}/filesystem.Filesystem/Stat`, {
        method: 'POST', body: '{"path":"/"}',
        headers: { 'Content-Type': 'application/json', 'E2b-Sandbox-Id': sb.sandboxId,
          'E2b-Sandbox-Port': '49983' },
      });
      assert.equal(stat.status, 401);
      assert.match(info.json.envdAccessToken, /^[0-9a-f]{64}$/);
      const span = new Date(info.json.endAt) - new Date(info.json.startedAt);
      assert.ok(Math.abs(span - 300_000) < 2000, `timeout span ${span}`);
      const again = await poolFilled(2);
      assert.ok(!again.includes(sb.sandboxId));
    } finally {
      await sb.kill();
    }
  });

test('a pooled sandbox gets the create\'s egress policy', async (t) => {
  if (skipWithoutBase(t)) return;
  const pooled = await poolFilled(2);
  const sb = await Sandbox.create({ allowInternetAccess: false });
  try {
    assert.ok(pooled.includes(sb.sandboxId));
    const info = await h.api('GET', `/sandboxes/${sb.sandboxId}`);
    assert.equal(info.json.allowInternetAccess, false);
    assert.equal((await sb.commands.run('echo fine')).stdout, 'fine\n');
  } finally {
    await sb.kill();
  }
});

test('more creates than the pool holds fall back to cold starts', async (t) => {
  if (skipWithoutBase(t)) return;
  await poolFilled(2);
  const sbs = await Promise.all(Array.from({ length: 5 }, () => Sandbox.create()));
  try {
    const outs = await Promise.all(sbs.map((s) => s.commands.run('echo up')));
    for (const o of outs) assert.equal(o.stdout, 'up\n');
  } finally {
    await Promise.all(sbs.map((s) => s.kill()));
  }
  await poolFilled(2);
});

// Host pids of a sandbox's processes, once it has some.
async function processesOf(id) {
  const t0 = Date.now();
  for (;;) {
    let procs = [];
    try {
      procs = readFileSync(`/sys/fs/cgroup/pids/${cgroupName}/${id}/cgroup.procs`, 'utf8')
        .split('\n').filter(Boolean).map(Number);
    } catch { /* not made yet */ }
    if (procs.length) return procs;
    if (Date.now() - t0 > 20_000) throw new Error(`${id} has no processes`);
    await sleep(50);
  }
}

test('a pooled sandbox whose agent died is replaced by a cold start', async (t) => {
  if (skipWithoutBase(t)) return;
  const pooled = await poolFilled(2);
  // Both: a create may take either. Killed from the host, as the OOM killer
  // or an operator would.
  for (const id of pooled) {
    for (const pid of await processesOf(id)) {
      try { process.kill(pid, 'SIGKILL'); } catch { /* gone already */ }
    }
  }
  await sleep(300);
  const sb = await Sandbox.create();
  try {
    assert.equal((await sb.commands.run('echo alive')).stdout, 'alive\n');
  } finally {
    await sb.kill();
  }
});

test('after a crash, pooled sandboxes are orphans and are removed', async (t) => {
  if (skipWithoutBase(t)) return;
  await poolFilled(2);
  const keep = await Sandbox.create();
  await poolFilled(2);
  await h.crash();
  await h.restart(['--warm-pool=0']);
  assert.deepEqual(await h.liveIds(), [keep.sandboxId]);
  assert.deepEqual(h.runtimeObjects().run, [keep.sandboxId]);
  assert.equal((await keep.commands.run('echo kept')).stdout, 'kept\n');
  await keep.kill();
});

test('a clean stop destroys the pool: nothing is left', async (t) => {
  if (skipWithoutBase(t)) return;
  await h.restart();
  await poolFilled(2);
  await h.stop();
  h = null;
  assert.equal(existsSync('/sys/fs/cgroup/pids/hutche2e'), false);
});
