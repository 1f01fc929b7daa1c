// PTY processes through the official SDK (pty.*) against a real agent:
// create, input, resize (stty size and SIGWINCH inside), connect from a
// second handle, kill, and the PTY-only error paths.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { Sandbox, CommandExitError } from 'e2b';

import { startAgent, useSdkEnv } from './lib/agent.mjs';

let agent;
let sbx;

before(async () => {
  agent = await startAgent();
  useSdkEnv(agent);
  sbx = await Sandbox.create();
});

after(async () => {
  await agent?.stop();
});

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const enc = (s) => new TextEncoder().encode(s);

// Collects PTY output as text and lets a test wait for a pattern.
function terminal() {
  const dec = new TextDecoder();
  const t = {
    text: '',
    bytes: [],
    onData: (d) => { t.bytes.push(...d); t.text += dec.decode(d, { stream: true }); },
    async waitFor(re, ms = 5000) {
      const end = Date.now() + ms;
      while (Date.now() < end) {
        const m = t.text.match(re);
        if (m) return m;
        await sleep(20);
      }
      assert.fail(`no ${re} in terminal output: ${JSON.stringify(t.text.slice(-500))}`);
    },
  };
  return t;
}

// A plain sh avoids depending on the host's bash startup files and prompt.
async function createPty(t, opts = {}) {
  const h = await sbx.pty.create({ cols: 80, rows: 24, onData: t.onData, timeoutMs: 30000,
    ...opts });
  await sbx.pty.sendInput(h.pid, enc('exec /bin/sh\n'));
  await sbx.pty.sendInput(h.pid, enc('PS1=""; stty -echo\n'));
  await sleep(100);
  return h;
}

test('pty: create, input, size, is a terminal', async () => {
  const t = terminal();
  const h = await createPty(t, { cols: 91, rows: 27 });
  await sbx.pty.sendInput(h.pid, enc('echo "size=$(stty size) term=$TERM"; tty\n'));
  await t.waitFor(/size=27 91 term=xterm-256color/);
  await t.waitFor(/\/dev\/pts\/\d+/);
  await sbx.pty.sendInput(h.pid, enc('exit 0\n'));
  const r = await h.wait();
  assert.equal(r.exitCode, 0);
});

test('pty: resize changes stty size and sends SIGWINCH', async () => {
  const t = terminal();
  const h = await createPty(t);
  // A foreground job of its own, so the kernel's SIGWINCH reaches its group.
  await sbx.pty.sendInput(h.pid, enc("sh -c 'trap \"echo winch-seen; exit 0\" WINCH; " +
    "echo ready; while :; do sleep 0.05; done'\n"));
  await t.waitFor(/ready/);
  await sbx.pty.resize(h.pid, { cols: 132, rows: 43 });
  await t.waitFor(/winch-seen/);
  await sbx.pty.sendInput(h.pid, enc('echo "now=$(stty size)"\n'));
  await t.waitFor(/now=43 132/);
  await sbx.pty.kill(h.pid);
  await assert.rejects(h.wait(), CommandExitError);
});

test('pty: output is raw bytes', async () => {
  const t = terminal();
  const h = await createPty(t);
  await sbx.pty.sendInput(h.pid, enc("printf 'B:\\377\\376:E'\n"));
  await t.waitFor(/B:.*:E/);
  const at = t.bytes.findIndex((b, i) => b === 0x42 && t.bytes[i + 1] === 0x3a);
  assert.deepEqual(t.bytes.slice(at, at + 6), [0x42, 0x3a, 0xff, 0xfe, 0x3a, 0x45]);
  await sbx.pty.kill(h.pid);
  await assert.rejects(h.wait());
});

test('pty: connect from a second handle sees live output', async () => {
  const t1 = terminal();
  const h = await createPty(t1);
  const other = await Sandbox.create();
  const t2 = terminal();
  const c = await other.pty.connect(h.pid, { onData: t2.onData });
  assert.equal(c.pid, h.pid);
  await other.pty.sendInput(h.pid, enc('echo from-second-$((6*7))\n'));
  await t1.waitFor(/from-second-42/);
  await t2.waitFor(/from-second-42/);
  await sbx.pty.sendInput(h.pid, enc('exit 3\n'));
  await assert.rejects(h.wait(), (e) => e.exitCode === 3);
  await assert.rejects(c.wait(), (e) => e.exitCode === 3);
});

test('pty: Ctrl+D ends the shell; closeStdin is refused for a PTY', async () => {
  const t = terminal();
  const h = await createPty(t);
  await assert.rejects(sbx.commands.closeStdin(h.pid), /Ctrl\+D/);
  await assert.rejects(sbx.commands.sendStdin(h.pid, 'x'), /stdin not enabled or closed/);
  await sbx.pty.sendInput(h.pid, new Uint8Array([4]));
  const r = await h.wait();
  assert.equal(r.exitCode, 0);
});

test('pty: kill is true, then false; resize of a pipe process fails', async () => {
  const t = terminal();
  const h = await createPty(t);
  assert.equal(await sbx.pty.kill(h.pid), true);
  await assert.rejects(h.wait(), (e) => {
    assert.equal(e.exitCode, -1);
    assert.equal(e.error, 'signal: killed');
    return true;
  });
  assert.equal(await sbx.pty.kill(h.pid), false);

  const bg = await sbx.commands.run('sleep 30', { background: true });
  await assert.rejects(sbx.pty.resize(bg.pid, { cols: 10, rows: 10 }), /not a PTY/);
  await assert.rejects(sbx.pty.sendInput(bg.pid, enc('x')), /stdin not enabled or closed/);
  await bg.kill();
});

test('pty: the deadline kills the terminal', async () => {
  const t = terminal();
  const h = await sbx.pty.create({ cols: 80, rows: 24, onData: t.onData, timeoutMs: 1000 });
  await assert.rejects(h.wait(), /timed out|deadline|timeout/i);
  const end = Date.now() + 5000;
  while ((await sbx.commands.list()).some((p) => p.pid === h.pid)) {
    assert.ok(Date.now() < end, 'pty process still listed after its deadline');
    await sleep(50);
  }
});
