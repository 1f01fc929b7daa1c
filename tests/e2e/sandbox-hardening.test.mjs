// What code in a sandbox, root included, must not reach on the host or in
// the agent: the agent's descriptors (pidfd_getfd), its memory and
// environment (/proc/1/mem, /proc/1/environ), and any host file it could grow
// without limit (the init's output is a pipe into a capped init.log). Also
// the timeout rules of POST /sandboxes/{id}/timeout on a running sandbox.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { statSync } from 'node:fs';
import { join } from 'node:path';
import { Sandbox } from 'e2b';
import { requireBase, startHutchd, useEnv } from './lib/hutchd.mjs';

let h;
let restore;
let sb;
before(async (t) => {
  if (!requireBase(t)) return;
  h = await startHutchd({ runtime: true, args: ['--max-timeout=600'] });
  restore = useEnv(h.sdkEnv);
  sb = await Sandbox.create({ timeoutMs: 120_000 });
});
after(async () => { await sb?.kill().catch(() => {}); restore?.(); await h?.stop(); });

function skipWithoutBase(t) { return !h && (t.skip('no base template (see the message above)'), true); }

// Runs cmd and returns its result even when it exits non-zero.
async function run(cmd, user = 'root') {
  try {
    return await sb.commands.run(cmd, { user, timeoutMs: 60_000 });
  } catch (e) {
    if (e.exitCode === undefined) throw e;
    return e;
  }
}

const getfd = `python3 -c '
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
pidfd = os.pidfd_open(1)
fd = libc.syscall(438, pidfd, 1, 0)
if fd < 0:
    print("refused", os.strerror(ctypes.get_errno())); sys.exit(3)
os.write(fd, b"X" * (1 << 20)); print("wrote")
'`;

test('root in the sandbox cannot take the agent\'s stdout with pidfd_getfd', async (t) => {
  if (skipWithoutBase(t)) return;
  const r = await run(getfd);
  assert.equal(r.exitCode, 3, `${r.stdout}${r.stderr}`);
  assert.match(r.stdout, /refused Operation not permitted/);
  const viaSudo = await run(`sudo ${getfd}`, 'user');
  assert.equal(viaSudo.exitCode, 3, `${viaSudo.stdout}${viaSudo.stderr}`);
});

test('/proc/1/mem, /proc/1/environ and /proc/1/fd/1 are closed even to sudo', async (t) => {
  if (skipWithoutBase(t)) return;
  for (const f of ['environ', 'mem']) {
    const r = await run(`sudo dd if=/proc/1/${f} bs=1 count=1 skip=4096 of=/dev/null`, 'user');
    assert.notEqual(r.exitCode, 0, `/proc/1/${f} was readable: ${r.stderr}`);
    assert.match(r.stderr, /Permission denied/);
  }
  const w = await run('sudo sh -c "echo x > /proc/1/fd/1"', 'user');
  assert.notEqual(w.exitCode, 0, 'writing through /proc/1/fd/1 worked');
});

test('processes the agent starts stay dumpable (ptrace-readable by their user)', async (t) => {
  if (skipWithoutBase(t)) return;
  const r = await run('sleep 30 & p=$!; head -c 5 /proc/$p/environ >/dev/null && ' +
    'grep -c . /proc/$p/maps >/dev/null && echo readable; kill $p', 'user');
  assert.equal(r.stdout.trim(), 'readable', r.stderr);
});

test('the init\'s output reaches the host only as a capped init.log', async (t) => {
  if (skipWithoutBase(t)) return;
  const log = join(h.dir, 'data', 'sandboxes', sb.sandboxId, 'init.log');
  assert.ok(statSync(log).isFile());
  // The agent's fd 1 is a pipe (to the keeper), never a host file.
  const r = await run('sudo readlink /proc/1/fd/1 || true; ls -l /proc/self/fd/ >/dev/null');
  assert.doesNotMatch(r.stdout, /init\.log/);
  assert.ok(statSync(log).size <= 1 << 20, `init.log is ${statSync(log).size} bytes`);
});

test('timeout: above the maximum is a 400, huge values do not overflow', async (t) => {
  if (skipWithoutBase(t)) return;
  const id = sb.sandboxId;
  for (const timeout of [601, 2 ** 53, 9223372036854775807n]) {
    const res = await fetch(`${h.apiUrl}/sandboxes/${id}/timeout`, {
      method: 'POST',
      headers: { 'X-API-Key': h.apiKey, 'Content-Type': 'application/json' },
      body: `{"timeout": ${timeout}}`,
    });
    assert.equal(res.status, 400, `timeout ${timeout}`);
    assert.match(await res.text(), /cannot be greater than 600 seconds/);
  }
  assert.equal((await Sandbox.getInfo(id)).sandboxId, id, 'the sandbox must live on');
  assert.equal((await run('echo alive')).stdout, 'alive\n');
  await sb.setTimeout(300_000);
  const info = await Sandbox.getInfo(id);
  assert.ok(info.endAt.getTime() - Date.now() > 280_000);
  const c = await h.api('POST', `/sandboxes/${id}/connect`, { timeout: -5 });
  assert.equal(c.status, 400);
});

test('timeout: negative expires the sandbox now (as upstream)', async (t) => {
  if (skipWithoutBase(t)) return;
  const other = await Sandbox.create({ timeoutMs: 60_000 });
  const r = await h.api('POST', `/sandboxes/${other.sandboxId}/timeout`, { timeout: -1 });
  assert.equal(r.status, 204);
  const deadline = Date.now() + 20_000;
  while (Date.now() < deadline && await Sandbox.getInfo(other.sandboxId).then(() => true,
    () => false)) await new Promise((ok) => setTimeout(ok, 250));
  await assert.rejects(Sandbox.getInfo(other.sandboxId));
});
