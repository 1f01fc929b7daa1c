// Crash safety: hutchd is killed with SIGKILL in the middle of a burst of
// creates, commands and kills through the official SDK, then started again
// on the same data. Every sandbox whose create was acknowledged (and not
// killed since) must be listed and usable; every acknowledged kill must
// stay killed; and the runtime and the store must agree exactly: no
// sandbox without a row, no row without a sandbox.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
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

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// One worker: create, run a command, kill every other sandbox, until stopped.
async function worker(n, state) {
  for (let i = 0; !state.stop; i++) {
    let sb;
    try {
      sb = await Sandbox.create({ metadata: { worker: String(n) } });
    } catch { continue; }
    state.created.add(sb.sandboxId);
    try {
      await sb.commands.run(`echo ${n}-${i} > /tmp/mark`);
      state.marked.set(sb.sandboxId, `${n}-${i}`);
      if (i % 2 === 0) {
        state.killSent.add(sb.sandboxId);
        if (await sb.kill()) state.killed.add(sb.sandboxId);
      }
    } catch { /* hutchd went away mid-call: fine, checked after restart */ }
  }
}

async function runBurst(ms, workers) {
  const state = { stop: false, created: new Set(), killSent: new Set(), killed: new Set(),
    marked: new Map() };
  const all = Array.from({ length: workers }, (_, n) => worker(n, state));
  // Crash once the burst is well under way, with requests in flight.
  const t0 = Date.now();
  while (state.created.size < 6 && Date.now() - t0 < 30_000) await sleep(20);
  await sleep(ms);
  await h.crash();
  state.stop = true;
  await Promise.all(all);
  return state;
}

test('SIGKILL during a burst: acknowledged sandboxes survive, no orphans', async (t) => {
  if (!h) { t.skip('no base template'); return; }
  t.after(() => { if (process.env.HUTCH_E2E_DEBUG) process.stderr.write(h.log()); });
  const state = await runBurst(150, 6);
  assert.ok(state.created.size >= 6, `only ${state.created.size} creates acknowledged`);
  await h.restart();

  const live = new Set(await h.liveIds());
  for (const id of state.created) {
    if (state.killed.has(id)) {
      assert.ok(!live.has(id), `killed ${id} is listed again`);
    } else if (!state.killSent.has(id)) {
      assert.ok(live.has(id), `acknowledged ${id} is not listed after the restart`);
    } // a kill in flight at the crash may or may not have happened: both are fine
  }
  // Store and runtime agree exactly.
  const objs = h.runtimeObjects();
  const ids = [...live].sort();
  assert.deepEqual(objs.run, ids, 'runtime state dirs vs listed sandboxes');
  assert.deepEqual(objs.disks, ids, 'sandbox disks vs listed sandboxes');
  assert.deepEqual(objs.cgroups, ids, 'sandbox cgroups vs listed sandboxes');

  // Every survivor is usable through the proxy, with its own files intact.
  await Promise.all([...live].map(async (id) => {
    const sb = await Sandbox.connect(id);
    const r = await sb.commands.run('cat /tmp/mark 2>/dev/null || echo none; echo ok');
    assert.match(r.stdout, /ok\n$/);
    if (state.marked.has(id)) assert.equal(r.stdout, `${state.marked.get(id)}\nok\n`);
  }));

  // And the restarted hutchd keeps working: create, run, kill.
  const fresh = await Sandbox.create();
  assert.equal((await fresh.commands.run('echo after')).stdout, 'after\n');
  assert.equal(await fresh.kill(), true);
  for (const id of live) assert.equal(await Sandbox.kill(id), true);
  assert.deepEqual(h.runtimeObjects(), { run: [], disks: [], cgroups: [] });
});

// A hutchd that starts without its runtime cannot tell a running sandbox from
// a lost one. Asked to (--no-runtime), or when the runtime fails to start
// (here a net-cidr it refuses), it does not start at all, and the start with
// the runtime finds the sandbox as it was: running, listed, its files kept.
test('a start without the runtime is refused while sandboxes live; none is lost',
  async (t) => {
    if (!h) { t.skip('no base template'); return; }
    const sb = await Sandbox.create({ timeoutMs: 120_000 });
    let down = false;
    try {
      await sb.files.write('/home/user/kept.txt', 'kept');
      down = true;
      await assert.rejects(h.restart(['--no-runtime']),
        /--no-runtime: the store holds 1 running, 0 paused and 0 starting sandbox/);
      await assert.rejects(h.restart(['--net-cidr=10.214.0.0/24']),
        /sandbox runtime \(--no-runtime serves the API without sandboxes\): net_cidr/);
      await h.restart();
      down = false;
      assert.ok((await h.liveIds()).includes(sb.sandboxId), 'still listed');
      const again = await Sandbox.connect(sb.sandboxId);
      assert.equal(await again.files.read('/home/user/kept.txt'), 'kept');
    } finally {
      if (down) await h.restart().catch(() => {});
      await Sandbox.kill(sb.sandboxId).catch(() => {});
    }
  });
