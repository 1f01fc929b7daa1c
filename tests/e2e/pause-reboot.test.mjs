// A host reboot while sandboxes are paused, simulated: hutchd stops, then
// everything a reboot takes away goes (every process it left, the run dir on
// tmpfs with the network namespaces pinned there, the sandboxes' cgroups, the
// nftables table), the images are marked as made in an earlier boot (the
// boot id hutchd records with them), and hutchd starts again on the same
// data folder. A sandbox paused with its memory comes back with its
// processes under the same id, in whatever slot (id range, address) is free
// now: a python server with its token and counter, a loop sleeping on
// monotonic deadlines counting on, its files; the clocks inside go on from
// the pause. Images that cannot be restored still give the sandbox back,
// afresh on its disk. A memory-less paused sandbox comes back the same way
// it always does, and one whose pause the reboot cut short comes back
// paused on its disk.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import {
  existsSync, mkdirSync, readdirSync, readFileSync, renameSync, rmdirSync, rmSync,
  writeFileSync,
} from 'node:fs';
import { join } from 'node:path';
import { Sandbox } from 'e2b';
import { cgroupName, requireBase, startHutchd, useEnv } from './lib/hutchd.mjs';
import { eth0Address, memAsk, memAskPy, memServerPy, rng } from './lib/memory.mjs';

let h;
let restore;
before(async (t) => {
  if (!requireBase(t)) return;
  h = await startHutchd({ runtime: true });
  restore = useEnv(h.sdkEnv);
});
after(async () => { restore?.(); await h?.stop(); });

const folderOf = (id) => join(h.dir, 'data', 'sandboxes', id);

// Removes a folder tree of cgroups from the leaves up (rmdir only: a cgroup
// with processes would refuse, and none may have any here).
function removeCgroupTree(dir) {
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    if (e.isDirectory()) removeCgroupTree(join(dir, e.name));
  }
  rmdirSync(dir);
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// The sandbox cgroups of this hutchd in the hierarchy with cgroup.kill.
function sandboxCgroups() {
  const found = [];
  for (const base of [join('/sys/fs/cgroup/unified', cgroupName),
    join('/sys/fs/cgroup', cgroupName)]) {
    if (!existsSync(base)) continue;
    for (const e of readdirSync(base, { withFileTypes: true })) {
      if (e.isDirectory() && existsSync(join(base, e.name, 'cgroup.kill'))) {
        found.push(join(base, e.name));
      }
    }
  }
  return found;
}

// What a reboot ends: the keepers and CRIU runs a dead hutchd left (their
// command lines name its folder), then every task of its sandboxes.
async function endEveryProcess() {
  for (const pid of readdirSync('/proc').filter((p) => /^\d+$/.test(p))) {
    try {
      if (readFileSync(`/proc/${pid}/cmdline`, 'utf8').includes(h.dir)) {
        process.kill(Number(pid), 'SIGKILL');
      }
    } catch { /* gone meanwhile */ }
  }
  for (const cg of sandboxCgroups()) writeFileSync(join(cg, 'cgroup.kill'), '1');
  const end = Date.now() + 10_000;
  const busy = () => sandboxCgroups()
    .filter((cg) => readFileSync(join(cg, 'cgroup.procs'), 'utf8').trim());
  while (busy().length && Date.now() < end) await sleep(50);
  assert.deepEqual(busy(), [], 'no task left');
}

// The boot id recorded with every sandbox's images becomes another one's.
function markImagesFromEarlierBoot() {
  const sandboxes = join(h.dir, 'data', 'sandboxes');
  for (const id of readdirSync(sandboxes)) {
    for (const dir of ['checkpoint', 'checkpoint.restoring', 'checkpoint.tmp']) {
      const file = join(sandboxes, id, dir, 'hutch-boot-id');
      if (existsSync(file)) writeFileSync(file, '00000000-0000-4000-8000-000000000000\n');
    }
  }
}

// keepRunDir: a run dir on a disk rather than tmpfs keeps its files (the
// runtime's state files) but not the mounts pinning network namespaces.
async function simulateReboot(keepRunDir) {
  await endEveryProcess();
  markImagesFromEarlierBoot();
  const run = join(h.dir, 'run');
  const mounts = readFileSync('/proc/self/mountinfo', 'utf8').split('\n')
    .map((l) => l.split(' ')[4]).filter((m) => m && m.startsWith(`${run}/`))
    .sort().reverse();
  for (const m of mounts) execFileSync('umount', ['-l', m]);
  if (!keepRunDir) rmSync(run, { recursive: true, force: true });
  for (const root of readdirSync('/sys/fs/cgroup')) {
    const dir = join('/sys/fs/cgroup', root, cgroupName);
    if (existsSync(dir)) removeCgroupTree(dir);
  }
  spawnSync('nft', ['delete', 'table', 'inet', cgroupName], { stdio: 'ignore' });
}

// time.sleep of python >= 3.11 sleeps with clock_nanosleep(CLOCK_MONOTONIC,
// TIMER_ABSTIME) and sleeps again to the same deadline when interrupted: a
// clock that jumped back would hang it until it caught up.
const loopPy = `
import time
n = 0
while True:
    time.sleep(0.2)
    n += 1
    with open('/tmp/loop-count.tmp', 'w') as f:
        f.write('%d\\n' % n)
    import os
    os.replace('/tmp/loop-count.tmp', '/tmp/loop-count')
`;

const loopCount = async (sb) =>
  Number((await sb.commands.run('cat /tmp/loop-count')).stdout.trim());

// CLOCK_MONOTONIC and CLOCK_BOOTTIME inside the sandbox, in seconds.
async function clocks(sb) {
  const r = await sb.commands.run('python3 -c "import time; print(time.clock_gettime(' +
    'time.CLOCK_MONOTONIC), time.clock_gettime(time.CLOCK_BOOTTIME))"');
  const [mono, boot] = r.stdout.trim().split(' ').map(Number);
  return { mono, boot };
}

// The first host id of the user namespace of a process inside.
async function uidBase(sb, pid) {
  const f = (await sb.commands.run(`cat /proc/${pid}/uid_map`)).stdout.trim().split(/\s+/);
  return Number(f[1]);
}

// Fills a new sandbox (kept.txt on its disk, `sleep <n>` running) and pauses
// it with its memory.
async function pauseWithSleep(sb, n) {
  await sb.files.write('/home/user/kept.txt', 'kept');
  await sb.commands.run(`setsid nohup sleep ${n} >/dev/null 2>&1 </dev/null &`);
  assert.equal(await sb.pause(), true);
}

// The sandbox is back with its files and, from its memory, its `sleep <n>`.
async function assertBackWithSleep(id, n) {
  const again = await Sandbox.connect(id);
  assert.equal(await again.files.read('/home/user/kept.txt'), 'kept');
  assert.equal((await again.commands.run(`pgrep -x -f "sleep ${n}" | wc -l`)).stdout.trim(),
    '1', 'its processes came back');
}

const slotOf = (id) => Number(/^slot=(\d+)$/m.exec(
  readFileSync(join(h.dir, 'run', id, 'state'), 'utf8'))[1]);

// Sandboxes that take slot `slot` (as the first free one) so that a sandbox
// made after them gets another; at most four.
async function squatSlot(slot) {
  const made = [];
  const taken = () => readdirSync(join(h.dir, 'run'), { withFileTypes: true })
    .some((e) => e.isDirectory() && existsSync(join(h.dir, 'run', e.name, 'state')) &&
      slotOf(e.name) === slot);
  while (!taken() && made.length < 4) made.push(await Sandbox.create({ timeoutMs: 120_000 }));
  assert.ok(taken(), `slot ${slot} taken by another sandbox`);
  return made;
}

for (const keepRunDir of [false, true]) {
  test(`after a host reboot a paused sandbox resumes with its processes and files, ` +
    `same id (run dir ${keepRunDir ? 'kept' : 'on tmpfs'})`, (t) => rebootCase(t, keepRunDir));
}

async function rebootCase(t, keepRunDir) {
  if (!h) return t.skip('no base template (see the message above)');
  const withMemory = await Sandbox.create({ timeoutMs: 120_000 });
  const diskOnly = await Sandbox.create({ timeoutMs: 120_000 });
  let squatters = [];
  try {
    for (const sb of [withMemory, diskOnly]) {
      await sb.files.write('/home/user/kept.txt', `kept by ${sb.sandboxId}`);
      await sb.commands.run('echo etc > /etc/hutch-reboot', { user: 'root' });
    }
    await withMemory.files.write('/home/user/mem-server.py', memServerPy);
    await withMemory.files.write('/home/user/mem-ask.py', memAskPy);
    await withMemory.files.write('/home/user/loop.py', loopPy);
    await withMemory.commands.run('setsid nohup python3 /home/user/mem-server.py ' +
      '>/tmp/mem-server.out 2>&1 </dev/null &');
    await withMemory.commands.run('setsid nohup python3 /home/user/loop.py ' +
      '>/tmp/loop.out 2>&1 </dev/null &');
    await withMemory.commands.run('setsid nohup sleep 1000 >/dev/null 2>&1 </dev/null &');
    await sleep(500);
    for (let i = 0; i < 3; i++) await memAsk(withMemory, 'inc');
    const before = await memAsk(withMemory, 'get', 'eth0');
    assert.equal(before.n, 3);
    const addrBefore = await eth0Address(withMemory);
    const slotBefore = slotOf(withMemory.sandboxId);
    const counted = await loopCount(withMemory);
    assert.ok(counted > 0, 'the loop counts');
    const clockBefore = await clocks(withMemory);
    const wallBefore = Date.now();
    assert.equal(await withMemory.pause(), true);
    assert.equal(await diskOnly.pause({ keepMemory: false }), true);
    assert.ok(existsSync(join(folderOf(withMemory.sandboxId), 'checkpoint')));

    // Paused for at least 3 s: that time must not pass inside.
    await h.restart([], async () => { await simulateReboot(keepRunDir); await sleep(3000); });
    // On tmpfs the runtime forgot every slot: another sandbox takes the
    // one it had, so that it comes back in another id range and address.
    if (!keepRunDir) squatters = await squatSlot(slotBefore);

    for (const sb of [withMemory, diskOnly]) {
      assert.equal((await Sandbox.getInfo(sb.sandboxId)).state, 'paused');
      const again = await Sandbox.connect(sb.sandboxId);
      assert.equal(again.sandboxId, sb.sandboxId);
      assert.equal((await Sandbox.getInfo(sb.sandboxId)).state, 'running');
      assert.equal(await again.files.read('/home/user/kept.txt'), `kept by ${sb.sandboxId}`);
      assert.equal((await again.commands.run('cat /etc/hutch-reboot')).stdout, 'etc\n');
      await again.files.write('/home/user/after.txt', 'written after the reboot');
      assert.equal(await again.files.read('/home/user/after.txt'), 'written after the reboot');
    }
    const wallAfter = Date.now();
    const clockAfter = await clocks(withMemory);
    const wallTaken = (Date.now() - wallBefore) / 1000;
    const insideMono = clockAfter.mono - clockBefore.mono;
    const insideBoot = clockAfter.boot - clockBefore.boot;
    t.diagnostic(`inside: monotonic +${insideMono.toFixed(2)} s, boottime ` +
      `+${insideBoot.toFixed(2)} s; host: ${wallTaken.toFixed(2)} s ` +
      `(${((wallAfter - wallBefore) / 1000).toFixed(2)} s until both were back)`);
    for (const d of [insideMono, insideBoot]) {
      assert.ok(d > 0, 'the clocks inside go on forwards');
      assert.ok(d < wallTaken - 2.5, 'the paused time did not pass inside');
    }

    // The processes, with their memory, under the id range of the slot it has now.
    // its listener on the eth0 address answers on the address it has now
    const after = await memAsk(withMemory, 'get', 'eth0');
    assert.deepEqual(after, before, 'the same server, its memory kept');
    assert.equal((await memAsk(withMemory, 'inc')).n, 4);
    const slotAfter = slotOf(withMemory.sandboxId);
    if (!keepRunDir) assert.notEqual(slotAfter, slotBefore, 'another slot');
    assert.equal(await uidBase(withMemory, before.pid), 0x10000000 + slotAfter * 65536,
      'its processes run in the id range of its slot now');
    t.diagnostic(`slot ${slotBefore} -> ${slotAfter}, eth0 ${addrBefore} -> ` +
      `${await eth0Address(withMemory)}`);
    const n1 = await loopCount(withMemory);
    assert.ok(n1 >= counted, `the loop kept its count (${counted} -> ${n1})`);
    await sleep(1000);
    const n2 = await loopCount(withMemory);
    assert.ok(n2 >= n1 + 3, `the sleeping loop counts on (${n1} -> ${n2})`);
    assert.equal((await withMemory.commands.run('pgrep -x sleep | wc -l')).stdout.trim(), '1');
    assert.equal((await diskOnly.commands.run('pgrep -x sleep || echo none')).stdout,
      'none\n', 'a memory-less pause started afresh');
    assert.equal(existsSync(join(folderOf(withMemory.sandboxId), 'checkpoint')), false,
      'the images were spent by the restore');

    // it pauses and resumes with memory again as usual
    await withMemory.commands.run('setsid nohup sleep 1001 >/dev/null 2>&1 </dev/null &');
    assert.equal(await withMemory.pause(), true);
    const back = await Sandbox.connect(withMemory.sandboxId);
    const r = await back.commands.run('pgrep -x sleep | wc -l');
    assert.equal(r.stdout.trim(), '2', 'the processes from before and after the reboot');
    assert.equal((await memAsk(back, 'get')).n, 4);
    for (const sb of [withMemory, diskOnly]) {
      assert.equal(await Sandbox.kill(sb.sandboxId), true);
      assert.equal(existsSync(folderOf(sb.sandboxId)), false, `${sb.sandboxId} left nothing`);
    }
  } finally {
    for (const sb of [withMemory, diskOnly, ...squatters]) {
      await Sandbox.kill(sb.sandboxId).catch(() => {});
    }
  }
}

// Images of an earlier boot that cannot be restored (here: a broken user
// namespace image) do not keep the sandbox from coming back: it starts
// afresh on its disk under the same id, as every sandbox paused with memory
// did after a reboot before their processes could be restored.
test('after a host reboot, images that cannot be restored: afresh on its disk',
  async (t) => {
    if (!h) return t.skip('no base template (see the message above)');
    const sb = await Sandbox.create({ timeoutMs: 120_000 });
    try {
      await sb.files.write('/home/user/kept.txt', 'kept');
      await sb.commands.run('setsid nohup sleep 1003 >/dev/null 2>&1 </dev/null &');
      assert.equal(await sb.pause(), true);
      const images = join(folderOf(sb.sandboxId), 'checkpoint');
      const userns = readdirSync(images).find((n) => /^userns-\d+\.img$/.test(n));
      await h.restart([], async () => {
        await simulateReboot(false);
        writeFileSync(join(images, userns), 'not an image');
      });
      const again = await Sandbox.connect(sb.sandboxId);
      assert.equal(again.sandboxId, sb.sandboxId);
      assert.equal(await again.files.read('/home/user/kept.txt'), 'kept');
      assert.equal((await again.commands.run('pgrep -x sleep || echo none')).stdout, 'none\n');
      assert.match(h.log(), new RegExp('not restoring its memory \\(it was paused before ' +
        'the host restarted, and its processes could not be restored: .*userns-\\d+\\.img'));
      assert.equal(existsSync(images), false, 'the images went');
      assert.equal(existsSync(`${images}.moving`), false);
    } finally {
      await Sandbox.kill(sb.sandboxId).catch(() => {});
    }
  });

// The host went down in the middle of a resume: CRIU had the images, moved
// to checkpoint.restoring, and its restore never finished. They are whole,
// and the sandbox resumes with its processes from them, not afresh.
test('after a reboot in the middle of a resume the memory comes back', async (t) => {
  if (!h) return t.skip('no base template (see the message above)');
  const sb = await Sandbox.create({ timeoutMs: 120_000 });
  try {
    await pauseWithSleep(sb, 1007);
    const images = join(folderOf(sb.sandboxId), 'checkpoint');
    await h.restart([], async () => {
      await simulateReboot(false);
      renameSync(images, `${images}.restoring`);
    });
    assert.equal((await Sandbox.getInfo(sb.sandboxId)).state, 'paused');
    await assertBackWithSleep(sb.sandboxId, 1007);
    assert.equal(existsSync(`${images}.restoring`), false, 'the images were spent');
  } finally {
    await Sandbox.kill(sb.sandboxId).catch(() => {});
  }
});

// hutchd killed inside the create that a resume makes on the sandbox's kept
// disk (after a reboot; a memory-less pause's resume does the same), left as
// the crash leaves it: the create's run dir made and nothing in it yet; a run
// dir that outlived the state file the resume released (on a disk rather
// than tmpfs, a netns pin file of the old boot keeps it from being removed);
// or a state file whose init never ran. The runtime's start-up cleanup of
// such a half-made create removed the disk, and with it the sandbox's
// files; it removes only a disk the create marked as made by itself.
for (const leftover of ['an empty run dir', 'a leftover netns file', 'no init']) {
  test(`a crash inside the create of a resume keeps the disk (${leftover})`, async (t) => {
    if (!h) return t.skip('no base template (see the message above)');
    const sb = await Sandbox.create({ timeoutMs: 120_000 });
    try {
      await pauseWithSleep(sb, 1004);
      await h.restart([], async () => {
        await simulateReboot(false);
        const dir = join(h.dir, 'run', sb.sandboxId);
        mkdirSync(dir, { recursive: true });
        if (leftover === 'a leftover netns file') writeFileSync(join(dir, 'netns'), '');
        if (leftover === 'no init') {
          writeFileSync(join(dir, 'state'), 'slot=3\nuid_base=268632064\nnet_slot=3\n' +
            'host_if=\nhost_ip=0\nsbx_ip=0\nkeeper_pid=0\ninit_pid=0\ninit_start=0\n');
        }
      });
      assert.match(h.log(), new RegExp(`${sb.sandboxId}.*(never got a state|half-made).*` +
        'its kept disk stays'));
      assert.equal((await Sandbox.getInfo(sb.sandboxId)).state, 'paused');
      await assertBackWithSleep(sb.sandboxId, 1004);
    } finally {
      await Sandbox.kill(sb.sandboxId).catch(() => {});
    }
  });
}

// After a reboot every slot is in use (max-sandboxes 1, another sandbox made
// first): the sandbox cannot be made again, and nothing is wrong with its
// images. The resume fails and keeps them (a fresh start on the disk would
// fail the same way); once a slot is free it resumes with its processes.
test('after a host reboot, no free slot: the resume fails and the memory stays',
  async (t) => {
    if (!h) return t.skip('no base template (see the message above)');
    const sb = await Sandbox.create({ timeoutMs: 120_000 });
    let other;
    try {
      await pauseWithSleep(sb, 1006);
      const images = join(folderOf(sb.sandboxId), 'checkpoint');
      await h.restart(['--max-sandboxes=1'], () => simulateReboot(false));
      other = await Sandbox.create({ timeoutMs: 120_000 });
      const r = await h.api('POST', `/v2/sandboxes/${sb.sandboxId}/connect`, {});
      assert.ok(r.status >= 400, `connect: ${r.status} ${r.text}`);
      assert.match(r.text, /slots in use/);
      assert.ok(existsSync(images), 'the images stay');
      assert.equal((await Sandbox.getInfo(sb.sandboxId)).state, 'paused');
      await Sandbox.kill(other.sandboxId);
      await assertBackWithSleep(sb.sandboxId, 1006);
    } finally {
      if (other) await Sandbox.kill(other.sandboxId).catch(() => {});
      await Sandbox.kill(sb.sandboxId).catch(() => {});
      await h.restart();
    }
  });

// kill -9 of hutchd at seeded random points of a resume after a reboot
// (release, the new sandbox's create, the rewrite of the images, CRIU):
// after a restart the sandbox is running or paused, and in both cases its
// server comes back with the same token and pid, never afresh.
test('kill -9 of hutchd during resumes after a reboot: running or paused, memory kept',
  async (t) => {
    if (!h) return t.skip('no base template (see the message above)');
    const seed = Number(process.env.HUTCH_CRASH_SEED ?? Math.floor(Math.random() * 2 ** 31));
    t.diagnostic(`seed ${seed} (HUTCH_CRASH_SEED=${seed} repeats it)`);
    const rand = rng(seed);
    const sb = await Sandbox.create({ timeoutMs: 600_000 });
    const id = sb.sandboxId;
    try {
      await sb.files.write('/home/user/mem-server.py', memServerPy);
      await sb.files.write('/home/user/mem-ask.py', memAskPy);
      await sb.commands.run('setsid nohup python3 /home/user/mem-server.py ' +
        '>/dev/null 2>&1 </dev/null &');
      await sleep(500);
      await memAsk(sb, 'inc');
      const want = await memAsk(sb, 'get');
      let resumeMs = 0;
      const outcomes = { running: 0, paused: 0 };
      for (let run = 0; run < 7; run++) {
        assert.equal(await Sandbox.pause(id), true, `pause before run ${run}`);
        await h.restart([], () => simulateReboot(false));
        const call = h.api('POST', `/v2/sandboxes/${id}/connect`, { timeout: 600 });
        call.catch(() => {});
        if (run === 0) {
          // the first one measures how long a resume after a reboot takes
          const t0 = performance.now();
          assert.equal((await call).status, 201);
          resumeMs = performance.now() - t0;
          t.diagnostic(`resume after a reboot ${resumeMs.toFixed(0)} ms (delays drawn from ` +
            '0 to this)');
        } else {
          const delay = Math.floor(rand() * resumeMs);
          await sleep(delay);
          await h.crash();
          await call.catch(() => {});
          await h.restart();
          const info = await Sandbox.getInfo(id).catch((e) => e);
          assert.ok(!(info instanceof Error), `run ${run} (kill after ${delay} ms): ` +
            `sandbox lost: ${info.message}`);
          assert.ok(['running', 'paused'].includes(info.state), `run ${run}: ${info.state}`);
          outcomes[info.state]++;
        }
        const cur = await Sandbox.connect(id, { timeoutMs: 600_000 });
        const got = await memAsk(cur, 'get');
        assert.deepEqual(got, want, `run ${run}: memory kept`);
      }
      t.diagnostic(`outcomes ${JSON.stringify(outcomes)}`);
    } finally {
      await Sandbox.kill(id).catch(() => {});
    }
  });

// No reboot: hutchd is restarted with a max-sandboxes that holds the first
// of three sandboxes but not the other two (a running one and one paused
// with its memory). A slot is two numbers, the id range and the network
// namespace's: both must lie below the setting. Starting would leave the
// running one without deadline or API and the paused one unresumable, so the
// start fails and names the setting (after adopting the one that fits, which
// it lets go of again); the start with the old settings takes all three
// back, memory included.
test('a start whose max-sandboxes leaves sandboxes out fails and loses nothing',
  async (t) => {
    if (!h) return t.skip('no base template (see the message above)');
    const sandboxes = [];
    let down = false;
    try {
      for (let i = 0; i < 3; i++) sandboxes.push(await Sandbox.create({ timeoutMs: 120_000 }));
      const state = (id) => readFileSync(join(h.dir, 'run', id, 'state'), 'utf8');
      const field = (id, name) => Number(new RegExp(`^${name}=(\\d+)$`, 'm').exec(state(id))[1]);
      const room = (s) => Math.max(field(s.sandboxId, 'slot'), field(s.sandboxId, 'net_slot')) + 1;
      sandboxes.sort((a, b) => room(a) - room(b));
      const [fits, running, sb] = sandboxes;
      const limit = room(fits);
      const need = room(sb);
      assert.ok(room(running) > limit, `slots: ${sandboxes.map(room)}`);
      await sb.commands.run('setsid nohup sleep 1002 >/dev/null 2>&1 </dev/null &');
      assert.equal(await sb.pause(), true);
      const images = join(folderOf(sb.sandboxId), 'checkpoint');

      down = true;
      await assert.rejects(h.restart([`--max-sandboxes=${limit}`]), new RegExp(
        `start with max-sandboxes ${need} or more .* take back 2 sandbox.*` +
        `${running.sandboxId}`, 's'));
      assert.ok(existsSync(images), 'the images stay');
      for (const s of [fits, running]) {
        const init = field(s.sandboxId, 'init_pid');
        assert.doesNotThrow(() => process.kill(init, 0), `${s.sandboxId} runs on`);
      }

      await h.restart();
      down = false;
      for (const s of [fits, running]) {
        const again = await Sandbox.connect(s.sandboxId);
        assert.equal((await again.commands.run('echo still here')).stdout, 'still here\n');
      }
      const back = await Sandbox.connect(sb.sandboxId);
      const ps = await back.commands.run('pgrep -x -f "sleep 1002" | wc -l');
      assert.equal(ps.stdout.trim(), '1', 'its process came back with its memory');
    } finally {
      if (down) await h.restart().catch(() => {});
      for (const s of sandboxes) await Sandbox.kill(s.sandboxId).catch(() => {});
    }
  });

// No reboot: the state file of a sandbox paused with its memory is damaged
// while hutchd is down (a slot no setting could hold), so the runtime does
// not re-adopt it; its pinned namespace stays. That is no reason to throw the
// memory away: connect fails and keeps the images, whatever "memory" says,
// and once the file is whole again a start restores its processes.
test('a paused sandbox the runtime did not re-adopt keeps its memory', async (t) => {
  if (!h) return t.skip('no base template (see the message above)');
  const sb = await Sandbox.create({ timeoutMs: 120_000 });
  const statePath = join(h.dir, 'run', sb.sandboxId, 'state');
  let whole;
  try {
    await sb.commands.run('setsid nohup sleep 1002 >/dev/null 2>&1 </dev/null &');
    assert.equal(await sb.pause(), true);
    const images = join(folderOf(sb.sandboxId), 'checkpoint');

    await h.restart([], () => {
      whole = readFileSync(statePath, 'utf8');
      writeFileSync(statePath, whole.replace(/^slot=\d+$/m, 'slot=4294967295'));
    });
    assert.match(h.log(), /cannot re-adopt: .*damaged/);
    for (const body of [{}, { memory: false }]) {
      const r = await h.api('POST', `/v2/sandboxes/${sb.sandboxId}/connect`, body);
      assert.equal(r.status, 500, r.text);
      assert.match(r.json.message, /did not re-adopt .* images are kept/);
      assert.ok(existsSync(images), 'the images stay');
      assert.equal((await Sandbox.getInfo(sb.sandboxId)).state, 'paused');
    }

    await h.restart([], () => writeFileSync(statePath, whole));
    whole = undefined;
    const back = await Sandbox.connect(sb.sandboxId);
    const ps = await back.commands.run('pgrep -x -f "sleep 1002" | wc -l');
    assert.equal(ps.stdout.trim(), '1', 'its process came back with its memory');
  } finally {
    if (whole) await h.restart([], () => writeFileSync(statePath, whole)).catch(() => {});
    await Sandbox.kill(sb.sandboxId).catch(() => {});
  }
});

// The host goes down in the middle of a pause with memory (hutchd killed a
// moment into it, then everything else a reboot ends): whatever the dump had
// reached, the sandbox is paused afterwards, not lost, and comes back with
// its disk. Its memory is gone with the boot.
test('a reboot in the middle of a pause with memory keeps the sandbox paused',
  async (t) => {
    if (!h) return t.skip('no base template (see the message above)');
    const sb = await Sandbox.create({ timeoutMs: 120_000 });
    try {
      await sb.files.write('/home/user/kept.txt', 'written before the pause');
      // 300 MB to dump, so that the pause lasts long enough to be cut short
      await sb.commands.run('setsid nohup python3 -c "import os, time; ' +
        'b = os.urandom(300 << 20); open(\'/home/user/ready\', \'w\').close(); ' +
        'time.sleep(1000)" >/dev/null 2>&1 </dev/null &');
      for (let i = 0; i < 100; i++) {
        if ((await sb.commands.run('test -e /home/user/ready && echo y || true')).stdout) break;
        await sleep(100);
      }
      const call = h.api('POST', `/sandboxes/${sb.sandboxId}/pause`, {});
      call.catch(() => {});
      await sleep(150);
      await h.crash();
      await call.catch(() => {});
      await h.restart([], () => simulateReboot(false));

      assert.equal((await Sandbox.getInfo(sb.sandboxId)).state, 'paused',
        `not lost: ${h.log().split('\n').filter((l) => l.includes(sb.sandboxId)).join('\n')}`);
      const again = await Sandbox.connect(sb.sandboxId);
      assert.equal(await again.files.read('/home/user/kept.txt'), 'written before the pause');
      const ps = await again.commands.run('pgrep -x python3 || echo none');
      assert.equal(ps.stdout, 'none\n', 'its processes ended with the boot');
      assert.equal(existsSync(join(folderOf(sb.sandboxId), 'checkpoint')), false);
      assert.equal(existsSync(join(folderOf(sb.sandboxId), 'checkpoint.tmp')), false);
    } finally {
      await Sandbox.kill(sb.sandboxId).catch(() => {});
    }
  });
