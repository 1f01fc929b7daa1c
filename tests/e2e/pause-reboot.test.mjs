// A host reboot while sandboxes are paused, simulated: hutchd stops, then
// everything a reboot takes away goes (the run dir on tmpfs with the network
// namespace pinned there, the sandboxes' cgroups, the nftables table), and
// hutchd starts again on the same data folder. A sandbox paused with its
// memory cannot have its processes back (their network namespace and
// connections are gone); it must come back under the same id with its files,
// its template's start command run again, and its images removed. A
// memory-less paused sandbox comes back the same way it always does.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync, readdirSync, readFileSync, rmdirSync, rmSync } from 'node:fs';
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

// keepRunDir: a run dir on a disk rather than tmpfs keeps its files (the
// runtime's state files) but not the mounts pinning network namespaces.
function simulateReboot(keepRunDir) {
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
