// A host reboot while sandboxes are paused, simulated: hutchd stops, then
// everything a reboot takes away goes (every process it left, the run dir on
// tmpfs with the network namespaces pinned there, the sandboxes' cgroups, the
// nftables table), the images are marked as made in an earlier boot (the
// boot id hutchd records with them), and hutchd starts again on the same
// data folder. A sandbox paused with its memory cannot have its processes
// back (their network namespace and connections are gone); it must come back
// under the same id with its files, its template's start command run again,
// and its images removed. A memory-less paused sandbox comes back the same
// way it always does, and so does one whose pause the reboot cut short.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import {
  existsSync, readdirSync, readFileSync, rmdirSync, rmSync, writeFileSync,
} from 'node:fs';
import { join } from 'node:path';
import { Sandbox } from 'e2b';
import { cgroupName, requireBase, startHutchd, useEnv } from './lib/hutchd.mjs';

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

for (const keepRunDir of [false, true]) {
  test(`after a host reboot a paused sandbox resumes with its files, same id ` +
    `(run dir ${keepRunDir ? 'kept' : 'on tmpfs'})`, (t) => rebootCase(t, keepRunDir));
}

async function rebootCase(t, keepRunDir) {
    if (!h) return t.skip('no base template (see the message above)');
    const withMemory = await Sandbox.create({ timeoutMs: 120_000 });
    const diskOnly = await Sandbox.create({ timeoutMs: 120_000 });
    try {
      for (const sb of [withMemory, diskOnly]) {
        await sb.files.write('/home/user/kept.txt', `kept by ${sb.sandboxId}`);
        await sb.commands.run('echo etc > /etc/hutch-reboot', { user: 'root' });
      }
      await withMemory.commands.run('setsid nohup sleep 1000 >/dev/null 2>&1 </dev/null &');
      assert.equal(await withMemory.pause(), true);
      assert.equal(await diskOnly.pause({ keepMemory: false }), true);
      assert.ok(existsSync(join(folderOf(withMemory.sandboxId), 'checkpoint')));

      await h.restart([], () => simulateReboot(keepRunDir));

      for (const sb of [withMemory, diskOnly]) {
        assert.equal((await Sandbox.getInfo(sb.sandboxId)).state, 'paused');
        const again = await Sandbox.connect(sb.sandboxId);
        assert.equal(again.sandboxId, sb.sandboxId);
        assert.equal((await Sandbox.getInfo(sb.sandboxId)).state, 'running');
        assert.equal(await again.files.read('/home/user/kept.txt'), `kept by ${sb.sandboxId}`);
        const r = await again.commands.run('cat /etc/hutch-reboot; pgrep -x sleep || true');
        assert.equal(r.stdout, 'etc\n', 'files kept; the old processes are gone');
        await again.files.write('/home/user/after.txt', 'written after the reboot');
        assert.equal(await again.files.read('/home/user/after.txt'), 'written after the reboot');
      }
      assert.equal(existsSync(join(folderOf(withMemory.sandboxId), 'checkpoint')), false,
        'the images that can no longer be restored are gone');
      // it pauses and resumes with memory again as usual
      await withMemory.commands.run('setsid nohup sleep 1001 >/dev/null 2>&1 </dev/null &');
      assert.equal(await withMemory.pause(), true);
      const back = await Sandbox.connect(withMemory.sandboxId);
      const r = await back.commands.run('pgrep -x sleep | wc -l');
      assert.equal(r.stdout.trim(), '1', 'the process started after the reboot lives on');
      for (const sb of [withMemory, diskOnly]) {
        assert.equal(await Sandbox.kill(sb.sandboxId), true);
        assert.equal(existsSync(folderOf(sb.sandboxId)), false, `${sb.sandboxId} left nothing`);
      }
    } finally {
      await Sandbox.kill(withMemory.sandboxId).catch(() => {});
      await Sandbox.kill(diskOnly.sandboxId).catch(() => {});
    }
}

// No reboot: hutchd restarts with a max-sandboxes below the slot of a sandbox
// paused with its memory, so the runtime refuses to re-adopt it (its state
// file and pinned namespace stay). That is no reason to throw the memory
// away: connect fails and keeps the images, whatever "memory" says, and a
// restart with the settings it was paused under restores its processes.
test('a paused sandbox the runtime did not re-adopt keeps its memory', async (t) => {
  if (!h) return t.skip('no base template (see the message above)');
  const first = await Sandbox.create({ timeoutMs: 120_000 });
  const sb = await Sandbox.create({ timeoutMs: 120_000 });
  try {
    await Sandbox.kill(first.sandboxId);
    const state = readFileSync(join(h.dir, 'run', sb.sandboxId, 'state'), 'utf8');
    const slot = Number(/^slot=(\d+)$/m.exec(state)[1]);
    assert.ok(slot >= 1, `the second sandbox has slot ${slot}`);
    await sb.commands.run('setsid nohup sleep 1002 >/dev/null 2>&1 </dev/null &');
    assert.equal(await sb.pause(), true);
    const images = join(folderOf(sb.sandboxId), 'checkpoint');

    await h.restart([`--max-sandboxes=${slot}`]);
    assert.match(h.log(), /cannot re-adopt: .*slot out of range/);
    for (const body of [{}, { memory: false }]) {
      const r = await h.api('POST', `/v2/sandboxes/${sb.sandboxId}/connect`, body);
      assert.equal(r.status, 500, r.text);
      assert.match(r.json.message, /did not re-adopt .* images are kept/);
      assert.ok(existsSync(images), 'the images stay');
      assert.equal((await Sandbox.getInfo(sb.sandboxId)).state, 'paused');
    }

    await h.restart();
    const back = await Sandbox.connect(sb.sandboxId);
    const ps = await back.commands.run('pgrep -x -f "sleep 1002" | wc -l');
    assert.equal(ps.stdout.trim(), '1', 'its process came back with its memory');
  } finally {
    await Sandbox.kill(first.sandboxId).catch(() => {});
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
