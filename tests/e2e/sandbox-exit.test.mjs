// When a sandbox's agent (its init) ends, through the official SDK on real
// sandboxes. A user process that runs out of memory or fork-bombs the
// sandbox is what ends: the agent lives on and runs commands afterwards.
// An agent that ends by itself ends the sandbox at once, and its row says
// why, from the runtime's account (endReason in GET /v2/sandboxes?state=
// ended, the 404 of GET /sandboxes/{id}); the runtime's objects go with it.
// Host-side cgroup counters show each load really hit its limit.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync, rmSync } from 'node:fs';
import { Sandbox } from 'e2b';
import {
  cgroupName, requireBase, startHutchd, templatesBesideBase, useEnv,
} from './lib/hutchd.mjs';

let h;
let tpl;
let restore;
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// base, and "small": the base root file system with a 128 MB memory limit.
const makeTemplates = () => templatesBesideBase([{ name: 'small',
  json: JSON.stringify({ user: 'user', workdir: '/home/user', memoryMB: 128, cpuCount: 1 }) }]);

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

function skipWithoutBase(t) {
  return !h && (t.skip('no base template (see the message above)'), true);
}

// A counter from the sandbox's v1 cgroup (this host is hybrid): "key value" lines.
function cgCounter(id, ctrl, file, key) {
  const text = readFileSync(`/sys/fs/cgroup/${ctrl}/${cgroupName}/${id}/${file}`, 'utf8');
  const line = text.split('\n').find((l) => l.startsWith(`${key} `));
  return line ? Number(line.split(' ')[1]) : NaN;
}
const pidsNow = (id) =>
  Number(readFileSync(`/sys/fs/cgroup/pids/${cgroupName}/${id}/pids.current`, 'utf8'));

// The ended row of id, once the store has it (null after ms).
async function endedRow(id, ms = 15_000) {
  for (const t0 = Date.now(); Date.now() - t0 < ms; await sleep(100)) {
    const r = await h.api('GET', '/v2/sandboxes?state=ended&limit=100');
    const row = r.status === 200 && r.json.find((s) => s.sandboxID === id);
    if (row) return row;
  }
  return null;
}

async function assertEndedWith(id, prefix) {
  const row = await endedRow(id);
  assert.ok(row, `${id} never ended in the store`);
  assert.ok(row.endReason.startsWith(prefix), `endReason: ${row.endReason}`);
  const got = await h.api('GET', `/sandboxes/${id}`);
  assert.equal(got.status, 404);
  assert.ok(got.json.message.includes(prefix), got.json.message);
  assert.ok(!h.runtimeObjects().run.includes(id), 'the runtime still holds it');
  return row.endReason;
}

// Fills 512 MB for real (a bytes object is written as it is made).
const memoryBomb = 'python3 -c "x = b\'a\' * (512 << 20)"';

test('a user process killed for memory: the agent lives on and runs commands',
  async (t) => {
    if (skipWithoutBase(t)) return;
    const sb = await Sandbox.create('small');
    try {
      const kills = cgCounter(sb.sandboxId, 'memory', 'memory.oom_control', 'oom_kill');
      await assert.rejects(sb.commands.run(memoryBomb));
      assert.ok(cgCounter(sb.sandboxId, 'memory', 'memory.oom_control', 'oom_kill') > kills,
        'no OOM kill in the sandbox');
      assert.equal((await sb.commands.run('echo alive')).stdout, 'alive\n');
      assert.equal((await h.api('GET', `/sandboxes/${sb.sandboxId}`)).json.state, 'running');
    } finally {
      await sb.kill();
    }
  });

// The host pid of the sandbox's pid 1 (the agent) and its start time.
function initOf(id) {
  const procs = readFileSync(`/sys/fs/cgroup/pids/${cgroupName}/${id}/cgroup.procs`, 'utf8')
    .split('\n').filter(Boolean);
  for (const pid of procs) {
    try {
      const ns = readFileSync(`/proc/${pid}/status`, 'utf8').match(/^NSpid:\s+(.*)$/m);
      if (ns && ns[1].trim().split(/\s+/).pop() === '1') return `${pid}:${startOf(pid)}`;
    } catch { /* gone meanwhile */ }
  }
  return 'none';
}
function startOf(pid) {
  try {
    return readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1].split(' ')[19];
  } catch { return 'gone'; }
}
const alive = (init) => startOf(init.split(':')[0]) === init.split(':')[1];

test('a fork bomb: the agent outlives it and runs commands after it', async (t) => {
  if (skipWithoutBase(t)) return;
  const sb = await Sandbox.create();
  const id = sb.sandboxId;
  try {
    const init = initOf(id);
    assert.notEqual(init, 'none');
    const refused = cgCounter(id, 'pids', 'pids.events', 'max');
    const kills = cgCounter(id, 'memory', 'memory.oom_control', 'oom_kill');
    // Every process starts two more until a file appears 6 s later (made
    // without a fork); dash gives up a refused fork at once, so the bomb
    // ends by itself soon after.
    const bomb = await sb.commands.run("sh -c 'rm -f /tmp/stop; " +
      "(sleep 6; : > /tmp/stop) & f() { [ -e /tmp/stop ] || { f | f & }; }; f; wait'",
    { background: true, timeoutMs: 0 });
    let peak = 0;
    const t0 = Date.now();
    for (let n = 1; Date.now() - t0 < 120_000 && (Date.now() - t0 < 7_000 || n > 20);
      await sleep(250)) {
      n = pidsNow(id);
      peak = Math.max(peak, n);
      assert.ok(alive(init), `the agent died ${Date.now() - t0} ms into the bomb`);
    }
    const took = Date.now() - t0;
    const refusedNow = cgCounter(id, 'pids', 'pids.events', 'max') - refused;
    const killsNow = cgCounter(id, 'memory', 'memory.oom_control', 'oom_kill') - kills;
    // A real bomb runs into the sandbox's limits: the pids limit, or the
    // memory limit first (its processes then die of OOM kills).
    assert.ok(refusedNow > 0 || killsNow > 0,
      `no limit was hit (peak ${peak} tasks): not a fork bomb`);
    assert.ok(pidsNow(id) <= 20, `the bomb still runs after ${took} ms`);
    await bomb.wait().catch(() => {});
    assert.equal((await sb.commands.run('echo alive')).stdout, 'alive\n');
    assert.ok(alive(init), 'the agent is not the one that ran before the bomb');
    t.diagnostic(`peak ${peak} tasks, ${refusedNow} forks refused, ${killsNow} OOM ` +
      `kills, bomb over in ${took} ms`);
  } finally {
    await sb.kill();
  }
});

// The same memory spread over eight processes growing together: none of them
// comes near the agent's OOM score once root has raised the agent's
// oom_score_adj to 1000 (a single 128 MB process can outscore it: the
// adjustment is worth 1000/1000 of the cgroup's limit, the agent's own pages
// a few MB).
const spreadMemoryBomb = 'for i in 1 2 3 4 5 6 7 8; do python3 -c "import time\n' +
  'x = []\nwhile True:\n    x.append(b\'a\' * (4 << 20)); time.sleep(0.01)" & done; wait';

test('an agent killed by the OOM killer ends the sandbox with reason oom', async (t) => {
  if (skipWithoutBase(t)) return;
  const sb = await Sandbox.create('small');
  // Root in the sandbox may offer the agent to the OOM killer first, and
  // take back the preference the agent gives its children's.
  await assert.rejects(sb.commands.run('echo 1000 > /proc/1/oom_score_adj && ' +
    `echo 0 > /proc/self/oom_score_adj && ${spreadMemoryBomb}`, { user: 'root' }));
  const why = await assertEndedWith(sb.sandboxId, 'oom:');
  t.diagnostic(why);
  assert.equal(await sb.isRunning(), false);
});

test('an agent that exits ends the sandbox with its exit status', async (t) => {
  if (skipWithoutBase(t)) return;
  const sb = await Sandbox.create();
  // The agent stops on SIGTERM, which root in the sandbox may send it.
  await sb.commands.run('kill -TERM 1', { user: 'root' }).catch(() => {});
  const why = await assertEndedWith(sb.sandboxId, 'exited:');
  assert.match(why, /status 0$/);
  assert.equal(await sb.isRunning(), false);
});
