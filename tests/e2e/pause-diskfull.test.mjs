// A pause that would run out of disk is refused: hutchd's data folder sits
// on a small tmpfs of the test's own; a python process holds 48 MiB of random
// bytes, more than the space left. The pause must answer an error that says
// so before anything is frozen or written (CRIU filling the file system
// would fail the writes of every sandbox disk on it), leave the sandbox
// running with the same process (its counter still moving), its files intact
// and no images behind; once space is back, the same sandbox pauses and
// resumes.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, rmSync, rmdirSync, statfsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Sandbox } from 'e2b';
import { requireBase, startHutchd, useEnv } from './lib/hutchd.mjs';

const TMPFS_MIB = 160;
const BALLAST_MIB = 48;
const LEFT_FREE_MIB = 12;

let h;
let restore;
let dataDir;
before(async (t) => {
  if (!requireBase(t)) return;
  dataDir = mkdtempSync(join(tmpdir(), 'hutch-diskfull-'));
  execFileSync('mount', ['-t', 'tmpfs', '-o', `size=${TMPFS_MIB}m,mode=0700`, 'hutch-diskfull',
    dataDir]);
  h = await startHutchd({ runtime: true, dataDir });
  restore = useEnv(h.sdkEnv);
});
after(async () => {
  restore?.();
  await h?.stop();
  if (dataDir) {
    execFileSync('umount', [dataDir]);
    rmdirSync(dataDir);
  }
});

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const filler = () => join(dataDir, 'filler');

// Takes all but `leaveMiB` of the data file system.
function fillDisk(leaveMiB) {
  const st = statfsSync(dataDir);
  const free = st.bavail * st.bsize;
  const take = free - leaveMiB * 1024 * 1024;
  assert.ok(take > 0, `only ${free} bytes free on ${dataDir}`);
  execFileSync('fallocate', ['-l', String(take), filler()]);
}

// pid, token and a counter written by the process every 100 ms
async function readState(sb) {
  const [pid, token, n] = (await sb.files.read('/home/user/state')).split(' ');
  return { pid, token, n: Number(n) };
}

test('a pause that fills the disk fails cleanly and the sandbox keeps running',
  async (t) => {
    if (!h) return t.skip('no base template (see the message above)');
    const sb = await Sandbox.create({ timeoutMs: 180_000 });
    try {
      await sb.files.write('/home/user/keep.txt', 'kept through a failed pause');
      await sb.files.write('/home/user/holder.py', [
        'import os, secrets, time',
        `ballast = os.urandom(${BALLAST_MIB} << 20)`,
        'token = secrets.token_hex(8)', 'n = 0', 'while True:', '    n += 1',
        "    with open('/home/user/state.tmp', 'w') as f:",
        "        f.write(f'{os.getpid()} {token} {n}')",
        "    os.replace('/home/user/state.tmp', '/home/user/state')",
        '    time.sleep(0.1)', '',
      ].join('\n'));
      await sb.commands.run('setsid nohup python3 /home/user/holder.py ' +
        '>/dev/null 2>&1 </dev/null &');
      let first;
      for (let i = 0; i < 50 && !first; i++) {
        await sleep(200);
        first = await readState(sb).catch(() => undefined);
      }
      assert.ok(first, 'the holder started');
      // the pools have refilled by now; what is left is the pause's to use
      await sleep(1_000);
      fillDisk(LEFT_FREE_MIB);

      const r = await h.api('POST', `/sandboxes/${sb.sandboxId}/pause`, {});
      assert.equal(r.status, 500, r.text);
      assert.equal(r.json.code, 500);
      assert.match(r.json.message, /keeps running/);
      // refused before anything is frozen or written: CRIU filling the file
      // system would have failed the writes of every sandbox disk in it
      assert.match(r.json.message,
        /not enough disk space for the memory images: about \d+ MiB needed, \d+ MiB free/);
      const freeMiB = Number(/(\d+) MiB free/.exec(r.json.message)[1]);
      assert.ok(freeMiB <= LEFT_FREE_MIB, `${freeMiB} MiB free reported`);

      assert.equal((await Sandbox.getInfo(sb.sandboxId)).state, 'running');
      const folder = readdirSync(join(dataDir, 'sandboxes', sb.sandboxId));
      assert.ok(!folder.some((n) => /^checkpoint(\.tmp|\.restoring)?$/.test(n)),
        `no images: ${folder.join(' ')}`);
      await sleep(500);
      const during = await readState(sb);
      assert.equal(during.pid, first.pid, 'the same process runs');
      assert.equal(during.token, first.token, 'with the same memory');
      assert.ok(during.n > first.n, `its counter moved: ${during.n} > ${first.n}`);
      assert.equal(await sb.files.read('/home/user/keep.txt'), 'kept through a failed pause');
      assert.equal((await sb.commands.run('echo alive')).stdout, 'alive\n');

      // space back: the same sandbox pauses and resumes with its memory
      rmSync(filler());
      assert.equal(await sb.pause(), true);
      assert.equal((await Sandbox.getInfo(sb.sandboxId)).state, 'paused');
      const again = await Sandbox.connect(sb.sandboxId);
      await sleep(500);
      const after = await readState(again);
      assert.equal(after.pid, first.pid);
      assert.equal(after.token, first.token);
      assert.ok(after.n >= during.n, `${after.n} >= ${during.n}`);
      assert.equal(await again.files.read('/home/user/keep.txt'),
        'kept through a failed pause');
      assert.equal(await Sandbox.kill(sb.sandboxId), true);
      assert.equal(existsSync(join(dataDir, 'sandboxes', sb.sandboxId)), false);
    } finally {
      rmSync(filler(), { force: true });
      await Sandbox.kill(sb.sandboxId).catch(() => {});
    }
  });
