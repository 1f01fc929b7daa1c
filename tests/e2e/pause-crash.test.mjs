// Crash safety of pause and resume: hutchd is killed with SIGKILL at a
// random point during a pause (10 runs) and during a resume (10 runs), then
// started again on the same data. Each time the sandbox must be running
// (answers a command, the python server's in-memory token unchanged) or
// paused and resumable (connect works, token unchanged): never gone, never
// half-restored. No CRIU process of this hutchd may be left, and the only
// sandbox cgroup is the sandbox's own. The delays are drawn from a seeded
// generator (HUTCH_CRASH_SEED repeats a run); the seed is printed.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { readdirSync, readFileSync, readlinkSync } from 'node:fs';
import { Sandbox } from 'e2b';
import { requireBase, startHutchd, useEnv } from './lib/hutchd.mjs';
import { rng } from './lib/memory.mjs';

let h;
let restore;
before(async (t) => {
  if (!requireBase(t)) return;
  h = await startHutchd({ runtime: true });
  restore = useEnv(h.sdkEnv);
});
after(async () => { restore?.(); await h?.stop(); });

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

const serverPy = `
import os, socket, threading
token = os.urandom(8).hex()
def serve(conn):
    with conn:
        conn.recv(16)
        conn.sendall(('token=%s pid=%d\\n' % (token, os.getpid())).encode())
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(('127.0.0.1', 7412))
s.listen(16)
while True:
    c, _ = s.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
`;
const askPy = `
import socket
s = socket.create_connection(('127.0.0.1', 7412), timeout=5)
s.sendall(b'get\\n')
print(s.makefile().readline().strip())
`;

async function token(sb) {
  const r = await sb.commands.run('python3 /home/user/crash-ask.py');
  const m = /token=([0-9a-f]+) pid=(\d+)/.exec(r.stdout);
  assert.ok(m, `server reply: ${JSON.stringify(r.stdout)}`);
  return `${m[1]}/${m[2]}`;
}

// CRIU processes started by this hutchd: their arguments name its data dir.
function criuProcesses() {
  const found = [];
  for (const pid of readdirSync('/proc').filter((p) => /^\d+$/.test(p))) {
    try {
      if (!readlinkSync(`/proc/${pid}/exe`).endsWith('/criu')) continue;
      const args = readFileSync(`/proc/${pid}/cmdline`, 'utf8');
      if (args.includes(h.dir)) found.push(pid);
    } catch { /* gone meanwhile */ }
  }
  return found;
}

async function noOrphans(id, what) {
  const end = Date.now() + 10_000;
  while (criuProcesses().length && Date.now() < end) await sleep(100);
  assert.deepEqual(criuProcesses(), [], `no CRIU left (${what})`);
  const cgroups = h.runtimeObjects().cgroups.filter((c) => c !== id);
  assert.deepEqual(cgroups, [], `no other sandbox cgroup (${what})`);
}

// Starts the operation, kills hutchd after delayMs, starts it again.
async function crashDuring(op, id, delayMs) {
  const call = op === 'pause' ?
    h.api('POST', `/sandboxes/${id}/pause`, {}) :
    h.api('POST', `/v2/sandboxes/${id}/connect`, { timeout: 300 });
  call.catch(() => {});
  await sleep(delayMs);
  await h.crash();
  await call.catch(() => {});
  await h.restart();
}

async function timed(fn) {
  const t0 = performance.now();
  await fn();
  return performance.now() - t0;
}

test('kill -9 of hutchd during pause and resume: running or paused, never lost',
  async (t) => {
    if (!h) return t.skip('no base template (see the message above)');
    const seed = Number(process.env.HUTCH_CRASH_SEED ?? Math.floor(Math.random() * 2 ** 31));
    process.stdout.write(`# pause-crash seed ${seed} (HUTCH_CRASH_SEED=${seed} repeats it)\n`);
    const rand = rng(seed);
    const sb = await Sandbox.create({ timeoutMs: 600_000 });
    const id = sb.sandboxId;
    try {
      await sb.files.write('/home/user/crash-server.py', serverPy);
      await sb.files.write('/home/user/crash-ask.py', askPy);
      await sb.commands.run('setsid nohup python3 /home/user/crash-server.py ' +
        '>/dev/null 2>&1 </dev/null &');
      await sleep(500);
      const want = await token(sb);

      const pauseMs = await timed(async () => assert.equal(await sb.pause(), true));
      const resumeMs = await timed(() => Sandbox.connect(id, { timeoutMs: 600_000 }));
      process.stdout.write(`# pause ${pauseMs.toFixed(0)} ms, resume ` +
        `${resumeMs.toFixed(0)} ms (delays drawn from 0 to these)\n`);
      const outcomes = { pause: { running: 0, paused: 0 }, resume: { running: 0, paused: 0 } };

      for (let run = 0; run < 20; run++) {
        const op = run % 2 === 0 ? 'pause' : 'resume';
        // Bring the sandbox to the state the operation starts from.
        let state = (await Sandbox.getInfo(id)).state;
        if (op === 'pause' && state === 'paused')
          await Sandbox.connect(id, { timeoutMs: 600_000 });
        if (op === 'resume' && state === 'running')
          assert.equal(await Sandbox.pause(id), true, `pause before run ${run}`);
        const delay = Math.floor(rand() * (op === 'pause' ? pauseMs : resumeMs));
        await crashDuring(op, id, delay);

        const info = await Sandbox.getInfo(id).catch((e) => e);
        assert.ok(!(info instanceof Error),
          `run ${run} (${op}, kill after ${delay} ms): sandbox lost: ${info.message}`);
        state = info.state;
        assert.ok(state === 'running' || state === 'paused',
          `run ${run}: state ${state}`);
        outcomes[op][state]++;
        const cur = state === 'paused' ?
          await Sandbox.connect(id, { timeoutMs: 600_000 }) :
          await Sandbox.connect(id);
        assert.equal(await token(cur), want,
          `run ${run} (${op}, kill after ${delay} ms, ${state}): memory state`);
        await noOrphans(id, `run ${run}`);
      }
      process.stdout.write(`# outcomes ${JSON.stringify(outcomes)}\n`);
    } finally {
      await Sandbox.kill(id).catch(() => {});
    }
    const left = h.runtimeObjects();
    assert.ok(!left.run.includes(id) && !left.disks.includes(id) &&
      !left.cgroups.includes(id), `nothing of the sandbox left: ${JSON.stringify(left)}`);
  });
