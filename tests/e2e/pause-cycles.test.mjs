// Acceptance of pause and resume with memory through the official SDK: one
// sandbox with a python server holding state only in memory, a client
// process keeping ONE TCP connection to it open, a PTY running a shell with
// a variable set, and files in /home/user, /opt, /etc and /tmp goes through
// 10 pause/resume cycles, one of them across a hutchd restart and one
// across the auto-pause at the deadline (lifecycle onTimeout 'pause').
// After every resume: the id is the same, the server's in-memory token and
// counter are those of the same process, the client's connection (same
// local port, same client pid) still carries replies, the PTY's shell
// answers with its variable, and the files are intact and writable.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { Sandbox } from 'e2b';
import { requireBase, startHutchd, useEnv } from './lib/hutchd.mjs';
import { memAsk, memAskPy, memServerPy, parseMemReply } from './lib/memory.mjs';

let h;
let restore;
before(async (t) => {
  if (!requireBase(t)) return;
  h = await startHutchd({ runtime: true });
  restore = useEnv(h.sdkEnv);
});
after(async () => { restore?.(); await h?.stop(); });

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const enc = (s) => new TextEncoder().encode(s);

// The server (lib/memory.mjs) keeps a random token and a counter in memory
// only (nothing on disk could bring them back after a cold restart). "inc"
// bumps the counter; every reply names the token, the counter and the
// server's pid.

// The client opens one connection and, every 200 ms, sends "inc" and
// appends "<its local port> <client pid> <reply>" to a file. A broken
// connection ends it with a last line saying so.
const clientPy = `
import os, socket, time
s = socket.create_connection(('127.0.0.1', 7412))
port = s.getsockname()[1]
f = s.makefile('rwb', buffering=0)
out = open('/tmp/acc-client.log', 'a', buffering=1)
try:
    while True:
        f.write(b'inc\\n')
        line = f.readline()
        if not line:
            raise EOFError('closed by the server')
        out.write('%d %d %s' % (port, os.getpid(), line.decode()))
        time.sleep(0.2)
except Exception as e:
    out.write('BROKEN %r\\n' % (e,))
`;

// A fresh connection that asks for the state without changing it.
const ask = (sb) => memAsk(sb, 'get');

// The client's lines: [{ port, pid, reply }], BROKEN lines fail the test.
async function clientLines(sb) {
  const text = await sb.files.read('/tmp/acc-client.log');
  const lines = text.split('\n').filter(Boolean);
  for (const l of lines) assert.ok(!l.startsWith('BROKEN'), `client: ${l}`);
  return lines.map((l) => {
    const [port, pid] = l.split(' ');
    return { port: Number(port), pid: Number(pid), reply: parseMemReply(l) };
  });
}

// Terminal output of the PTY, wherever its current handle delivers it.
function terminal() {
  const dec = new TextDecoder();
  const t = {
    text: '',
    onData: (d) => { t.text += dec.decode(d, { stream: true }); },
    async waitFor(re, ms = 10_000) {
      const end = Date.now() + ms;
      while (Date.now() < end) {
        if (re.test(t.text)) return;
        await sleep(50);
      }
      assert.fail(`no ${re} in the PTY's output: ${JSON.stringify(t.text.slice(-400))}`);
    },
  };
  return t;
}

const places = [
  { path: '/home/user/acc-file', user: 'user' },
  { path: '/opt/acc/acc-file', user: 'root' },
  { path: '/etc/acc-file', user: 'root' },
  { path: '/tmp/acc-file', user: 'user' },
];

async function appendFiles(sb, cycle) {
  for (const p of places) {
    const r = await sb.commands.run(`echo cycle-${cycle} >> ${p.path} && echo ok`,
      { user: p.user });
    assert.equal(r.stdout, 'ok\n', `${p.path} writable after cycle ${cycle}`);
  }
}

async function checkFiles(sb, cycle) {
  const want = Array.from({ length: cycle + 1 }, (_, i) => `cycle-${i}\n`).join('');
  for (const p of places)
    assert.equal(await sb.files.read(p.path), want, `${p.path} after cycle ${cycle}`);
}

test('10 pause/resume cycles keep memory, a TCP connection, a PTY and files',
  async (t) => {
    if (!h) return t.skip('no base template (see the message above)');
    const sb = await Sandbox.create({ timeoutMs: 300_000,
      lifecycle: { onTimeout: 'pause' } });
    const id = sb.sandboxId;
    try {
      await sb.commands.run('mkdir -p /opt/acc', { user: 'root' });
      await sb.files.write('/home/user/acc-server.py', memServerPy);
      await sb.files.write('/home/user/acc-client.py', clientPy);
      await sb.files.write('/home/user/mem-ask.py', memAskPy);
      // Detached from the command stream: a pause closes proxied streams.
      await sb.commands.run('setsid nohup python3 /home/user/acc-server.py ' +
        '>/tmp/acc-server.out 2>&1 </dev/null &');
      await sleep(500);
      await sb.commands.run('setsid nohup python3 /home/user/acc-client.py ' +
        '>/tmp/acc-client.out 2>&1 </dev/null &');
      await appendFiles(sb, 0);

      const term = terminal();
      const pty = await sb.pty.create({ cols: 80, rows: 24, onData: term.onData,
        timeoutMs: 0 });
      const secret = `v${Math.random().toString(16).slice(2, 10)}`;
      // The SDK's own shell (bash). dash opens /dev/tty for job control,
      // which CRIU 4.2 cannot dump (docs/snapshot.md, "Known limits").
      await sb.pty.sendInput(pty.pid, enc(`ACC=${secret}; echo "set-$ACC"\n`));
      await term.waitFor(new RegExp(`set-${secret}`));
      // Each cycle reconnects by pid: the pause closes this stream anyway.
      await pty.disconnect();

      await sleep(600);
      const first = await ask(sb);
      const firstLines = await clientLines(sb);
      assert.ok(firstLines.length >= 2, 'the client is exchanging data');
      const conn = { port: firstLines[0].port, pid: firstLines[0].pid };
      let last = first;
      let seenLines = firstLines.length;
      let cur = sb;

      for (let cycle = 1; cycle <= 10; cycle++) {
        const how = cycle === 4 ? 'restart' : cycle === 7 ? 'auto-pause' : 'pause';
        if (how === 'auto-pause') {
          await cur.setTimeout(1_000);
          const end = Date.now() + 20_000;
          while ((await Sandbox.getInfo(id)).state !== 'paused') {
            assert.ok(Date.now() < end, 'auto-paused within 20 s of its deadline');
            await sleep(250);
          }
        } else {
          assert.equal(await cur.pause(), true, `pause ${cycle}`);
        }
        assert.equal((await Sandbox.getInfo(id)).state, 'paused');
        if (how === 'restart') {
          await h.restart();
          assert.equal((await Sandbox.getInfo(id)).state, 'paused', 'paused after restart');
        }
        cur = await Sandbox.connect(id, { timeoutMs: 300_000 });
        assert.equal(cur.sandboxId, id, `id unchanged after cycle ${cycle} (${how})`);
        const info = await Sandbox.getInfo(id);
        assert.equal(info.sandboxId, id);
        assert.equal(info.state, 'running');

        // Memory: the same process with the same token, the counter on.
        const now = await ask(cur);
        assert.equal(now.token, first.token, `token after cycle ${cycle} (${how})`);
        assert.equal(now.pid, first.pid, `server pid after cycle ${cycle}`);
        assert.ok(now.n >= last.n, `counter ${now.n} >= ${last.n}`);

        // The open connection: new replies, on the same port, same client.
        await sleep(700);
        const lines = await clientLines(cur);
        assert.ok(lines.length >= seenLines + 2,
          `the connection carries data after cycle ${cycle} (${how}): ` +
          `${lines.length} lines, ${seenLines} before`);
        for (const l of lines.slice(seenLines)) {
          assert.equal(l.port, conn.port, 'the same connection (local port)');
          assert.equal(l.pid, conn.pid, 'the same client process');
          assert.equal(l.reply.token, first.token);
        }
        seenLines = lines.length;
        last = lines[lines.length - 1].reply;

        // The PTY: reconnect by pid, its shell still has the variable.
        const handle = await cur.pty.connect(pty.pid, { onData: term.onData,
          timeoutMs: 0 });
        await cur.pty.sendInput(pty.pid, enc(`echo "c${cycle}-$ACC"\n`));
        await term.waitFor(new RegExp(`c${cycle}-${secret}`));
        await handle.disconnect();

        await checkFiles(cur, cycle - 1);
        await appendFiles(cur, cycle);
        await checkFiles(cur, cycle);
      }
      const ps = await cur.commands.run('ps -eo pid,args');
      assert.match(ps.stdout, /acc-server\.py/);
      assert.match(ps.stdout, /acc-client\.py/);
    } finally {
      await Sandbox.kill(id).catch(() => {});
    }
  });
