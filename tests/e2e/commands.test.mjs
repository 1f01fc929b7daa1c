// process.Process through the official SDK (commands.*) against a real agent,
// plus a few raw Connect calls for what the SDK cannot show (exact bytes,
// error codes of edge cases).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { Sandbox, CommandExitError, InvalidArgumentError, TimeoutError } from 'e2b';

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

// Waits until cond() is true, polling.
async function until(cond, ms = 5000, what = 'condition') {
  const end = Date.now() + ms;
  while (Date.now() < end) {
    if (await cond()) return;
    await sleep(25);
  }
  assert.fail(`timed out waiting for ${what}`);
}

// ---- raw Connect (JSON codec) ----

function envelope(obj) {
  const body = Buffer.from(JSON.stringify(obj));
  const head = Buffer.alloc(5);
  head.writeUInt32BE(body.length, 1);
  return Buffer.concat([head, body]);
}

// Calls a server-streaming method; returns {messages, end} once it finishes.
async function rawStream(method, req, headers = {}) {
  const res = await fetch(`${agent.url}/process.Process/${method}`, {
    method: 'POST',
    headers: { 'content-type': 'application/connect+json', ...headers },
    body: envelope(req),
  });
  assert.equal(res.status, 200);
  const buf = Buffer.from(await res.arrayBuffer());
  const messages = [];
  let end = null;
  for (let off = 0; off < buf.length;) {
    const flags = buf[off];
    const len = buf.readUInt32BE(off + 1);
    const msg = JSON.parse(buf.subarray(off + 5, off + 5 + len).toString());
    off += 5 + len;
    if (flags & 2) end = msg;
    else messages.push(msg);
  }
  return { messages, end };
}

async function rawUnary(method, req) {
  const res = await fetch(`${agent.url}/process.Process/${method}`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify(req),
  });
  return { status: res.status, body: await res.json() };
}

// ---- commands.run ----

test('run: stdout, stderr and exit code 0', async () => {
  const r = await sbx.commands.run('echo out; echo err >&2');
  assert.equal(r.exitCode, 0);
  assert.equal(r.stdout, 'out\n');
  assert.equal(r.stderr, 'err\n');
  assert.equal(r.error, undefined);
});

test('run: non-zero exit throws CommandExitError with the output', async () => {
  await assert.rejects(sbx.commands.run('echo partial; exit 7'), (e) => {
    assert.ok(e instanceof CommandExitError, `got ${e}`);
    assert.equal(e.exitCode, 7);
    assert.equal(e.error, 'exit status 7');
    assert.equal(e.stdout, 'partial\n');
    return true;
  });
});

test('run: envs reach the process, request envs override user vars', async () => {
  const r = await sbx.commands.run('echo "$FOO|$USER|$HOME|$LOGNAME"; echo "$PATH"', {
    envs: { FOO: 'bar baz', LOGNAME: 'custom' },
  });
  const [line, path] = r.stdout.split('\n');
  assert.equal(line, `bar baz|user|${agent.home}|custom`);
  assert.ok(path.includes('/bin'), path);
});

test('run: cwd, relative cwd under home, default is home', async () => {
  mkdirSync(join(agent.home, 'sub'), { recursive: true });
  assert.equal((await sbx.commands.run('pwd', { cwd: '/tmp' })).stdout, '/tmp\n');
  assert.equal((await sbx.commands.run('pwd', { cwd: 'sub' })).stdout,
    `${join(agent.home, 'sub')}\n`);
  assert.equal((await sbx.commands.run('pwd')).stdout, `${agent.home}\n`);
});

test('run: missing cwd is InvalidArgumentError', async () => {
  await assert.rejects(sbx.commands.run('pwd', { cwd: '/no/such/dir' }), (e) => {
    assert.ok(e instanceof InvalidArgumentError, `got ${e}`);
    assert.match(e.message, /cwd '\/no\/such\/dir' does not exist/);
    return true;
  });
});

test('run: runs as the chosen user', async () => {
  const asUser = await sbx.commands.run('id -u; id -g; id -G');
  assert.equal(asUser.stdout, '1000\n1000\n1000 27\n');
  const asRoot = await sbx.commands.run('id -u; pwd', { user: 'root' });
  assert.equal(asRoot.stdout, `0\n${agent.rootHome}\n`);
});

test('run: unknown user is refused', async () => {
  await assert.rejects(sbx.commands.run('id -u', { user: 'nosuchuser' }),
    /invalid username: 'nosuchuser'/);
});

test('run: command not found is exit 127 from bash', async () => {
  await assert.rejects(sbx.commands.run('no-such-command-xyz'), (e) => {
    assert.equal(e.exitCode, 127);
    assert.match(e.stderr, /not found/);
    return true;
  });
});

test('run: signalled process reports exitCode -1 and "signal: killed"', async () => {
  await assert.rejects(sbx.commands.run('kill -9 $$'), (e) => {
    assert.ok(e instanceof CommandExitError, `got ${e}`);
    assert.equal(e.exitCode, -1);
    assert.equal(e.error, 'signal: killed');
    return true;
  });
});

test('run: 10 MB of output arrives complete', async () => {
  const size = 10 * 1024 * 1024;
  const r = await sbx.commands.run(`head -c ${size} /dev/zero | tr '\\0' 'a'; echo -n END`,
    { timeoutMs: 120000 });
  assert.equal(r.stdout.length, size + 3);
  assert.ok(r.stdout.endsWith('aaaEND'));
  assert.equal(r.stdout.indexOf('b'), -1);
});

test('run: binary output keeps its exact bytes on the wire', async () => {
  const { messages, end } = await rawStream('Start', {
    process: { cmd: '/bin/sh', args: ['-c', "printf '\\377\\376\\000\\001\\200abc'"] },
    stdin: false,
  });
  assert.deepEqual(end, {});
  assert.ok(messages[0].event.start.pid > 0);
  const bytes = Buffer.concat(messages.filter((m) => m.event.data?.stdout)
    .map((m) => Buffer.from(m.event.data.stdout, 'base64')));
  assert.deepEqual([...bytes], [0xff, 0xfe, 0x00, 0x01, 0x80, 0x61, 0x62, 0x63]);
  const last = messages.at(-1).event.end;
  assert.equal(last.exited, true);
  assert.equal(last.status, 'exit status 0');

  // Through the SDK the same bytes arrive, decoded as UTF-8 with replacements.
  let seen = '';
  await sbx.commands.run("printf '\\377abc'", { onStdout: (d) => { seen += d; } });
  assert.equal(seen, '\ufffdabc');
});

// ---- background commands ----

test('background: connect from a second handle and several clients', async () => {
  const h = await sbx.commands.run('sleep 0.7; for i in 1 2 3; do echo line$i; sleep 0.1; done',
    { background: true });
  const other = await Sandbox.create();
  const outs = ['', ''];
  const c1 = await other.commands.connect(h.pid, { onStdout: (d) => { outs[0] += d; } });
  const c2 = await sbx.commands.connect(h.pid, { onStdout: (d) => { outs[1] += d; } });
  const [r0, r1, r2] = await Promise.all([h.wait(), c1.wait(), c2.wait()]);
  for (const r of [r0, r1, r2]) assert.equal(r.exitCode, 0);
  assert.equal(r0.stdout, 'line1\nline2\nline3\n');
  assert.deepEqual(outs, ['line1\nline2\nline3\n', 'line1\nline2\nline3\n']);
});

test('background: list shows the config; gone after exit', async () => {
  const h = await sbx.commands.run('sleep 30', {
    background: true, cwd: '/tmp', envs: { LISTED: 'yes' },
  });
  const list = await sbx.commands.list();
  const me = list.find((p) => p.pid === h.pid);
  assert.ok(me, `pid ${h.pid} not in ${JSON.stringify(list)}`);
  assert.equal(me.cmd, '/bin/bash');
  assert.deepEqual(me.args, ['-l', '-c', 'sleep 30']);
  assert.equal(me.envs.LISTED, 'yes');
  assert.equal(me.cwd, '/tmp');
  assert.equal(await h.kill(), true);
  await assert.rejects(h.wait(), (e) => e.exitCode === -1);
  const after = await sbx.commands.list();
  assert.equal(after.find((p) => p.pid === h.pid), undefined);
});

test('stdin: sendStdin then closeStdin gives EOF', async () => {
  const h = await sbx.commands.run('cat; sleep 0.5; echo done',
    { background: true, stdin: true });
  await sbx.commands.sendStdin(h.pid, 'hello ');
  await h.sendStdin('world\n');
  await sbx.commands.closeStdin(h.pid);
  await sbx.commands.closeStdin(h.pid); // idempotent
  const r = await h.wait();
  assert.equal(r.stdout, 'hello world\ndone\n');
});

test('stdin: disabled stdin reads EOF and refuses input', async () => {
  const h = await sbx.commands.run('sleep 0.5; cat; echo eof', { background: true });
  await assert.rejects(sbx.commands.sendStdin(h.pid, 'x'), /stdin not enabled or closed/);
  const r = await h.wait();
  assert.equal(r.stdout, 'eof\n');
});

test('kill: true for a live process, false for an unknown pid', async () => {
  const h = await sbx.commands.run('sleep 30', { background: true });
  assert.equal(await sbx.commands.kill(h.pid), true);
  await assert.rejects(h.wait(), (e) => {
    assert.equal(e.exitCode, -1);
    assert.equal(e.error, 'signal: killed');
    return true;
  });
  assert.equal(await sbx.commands.kill(h.pid), false);
  assert.equal(await sbx.commands.kill(999999), false);
});

test('kill: reaches the whole process group', async () => {
  const h = await sbx.commands.run('sleep 30 & sleep 30 & wait', { background: true });
  await sleep(200);
  assert.equal(await h.kill(), true);
  // The end only comes once every holder of stdout is gone.
  await assert.rejects(h.wait(), (e) => e.exitCode === -1);
});

test('timeoutMs: foreground command is killed and the client gets TimeoutError', async () => {
  const t0 = Date.now();
  await assert.rejects(sbx.commands.run('sleep 20', { timeoutMs: 1000 }), TimeoutError);
  assert.ok(Date.now() - t0 < 5000);
  await until(async () => (await sbx.commands.list()).every((p) => p.args[2] !== 'sleep 20'),
    5000, 'the timed-out process to disappear');
});

test('timeoutMs: background command dies at its deadline after disconnect', async () => {
  const h = await sbx.commands.run('sleep 30', { background: true, timeoutMs: 1200 });
  await h.disconnect();
  assert.ok((await sbx.commands.list()).some((p) => p.pid === h.pid));
  await until(async () => !(await sbx.commands.list()).some((p) => p.pid === h.pid),
    6000, 'the deadline kill');
  // A late Connect still learns how it ended (kept for 30 s).
  const late = await sbx.commands.connect(h.pid);
  await assert.rejects(late.wait(), (e) => {
    assert.equal(e.exitCode, -1);
    assert.equal(e.error, 'signal: killed');
    return true;
  });
});

test('disconnect does not kill the process; no deadline with timeoutMs 0', async () => {
  const h = await sbx.commands.run('sleep 1.5; echo still-here', { background: true,
    timeoutMs: 0 });
  await h.disconnect();
  const c = await sbx.commands.connect(h.pid, { timeoutMs: 0 });
  const r = await c.wait();
  assert.equal(r.stdout, 'still-here\n');
});

test('connect: unknown pid is NotFound', async () => {
  await assert.rejects(sbx.commands.connect(999999), /process with pid 999999 not found/);
});

// ---- protocol edges (raw) ----

test('raw: tags select processes; empty oneofs and odd signals are refused', async () => {
  const start = rawStream('Start', {
    process: { cmd: '/bin/sh', args: ['-c', 'sleep 30'] }, tag: 'my-tag',
  }, { 'connect-timeout-ms': '20000' });
  let pid;
  await until(async () => {
    const { body } = await rawUnary('List', {});
    pid = body.processes?.find((p) => p.tag === 'my-tag')?.pid;
    return pid > 0;
  }, 5000, 'tagged process in List');

  let r = await rawUnary('SendInput', { process: { pid }, input: {} });
  assert.equal(r.body.code, 'unimplemented');
  r = await rawUnary('SendSignal', { process: { pid }, signal: 'SIGNAL_UNSPECIFIED' });
  assert.equal(r.body.code, 'unimplemented');
  r = await rawUnary('Update', { process: { pid }, pty: { size: { cols: 10, rows: 10 } } });
  assert.equal(r.body.code, 'internal');
  r = await rawUnary('SendSignal', { process: { tag: 'nope' }, signal: 'SIGNAL_SIGTERM' });
  assert.equal(r.body.code, 'not_found');
  assert.match(r.body.message, /tag 'nope'/);
  r = await rawUnary('SendSignal', { process: { tag: 'my-tag' }, signal: 'SIGNAL_SIGTERM' });
  assert.equal(r.status, 200);

  const { messages, end } = await start;
  assert.deepEqual(end, {});
  assert.equal(messages[0].event.start.pid, pid);
  assert.deepEqual(messages.at(-1).event.end,
    { exitCode: -1, status: 'signal: terminated', error: 'signal: terminated' });
});

test('raw: spawn failures are invalid_argument with the reason', async () => {
  let { end } = await rawStream('Start', { process: { cmd: '/no/such/binary' } });
  assert.equal(end.error.code, 'invalid_argument');
  assert.match(end.error.message, /fork\/exec \/no\/such\/binary: No such file or directory/);
  ({ end } = await rawStream('Start', { process: { cmd: 'no-such-prog-xyz' } }));
  assert.equal(end.error.code, 'invalid_argument');
  assert.match(end.error.message, /executable file not found/);
  ({ end } = await rawStream('Start', { process: { cmd: '/bin/true', envs: { 'A=B': '1' } } }));
  assert.equal(end.error.code, 'invalid_argument');
});

test('raw: StreamInput is unimplemented', async () => {
  const { end } = await rawStream('StreamInput', { start: { process: { pid: 1 } } });
  assert.equal(end?.error?.code, 'unimplemented');
});

test('no agent fds leak into user processes', async () => {
  // A simple command, not a pipeline: while bash sets a pipeline up it holds
  // pipe fds of its own, which are not the agent's.
  // "; true" keeps bash from exec-ing ls, so $$ is bash, not ls.
  const r = await sbx.commands.run('ls /proc/$$/fd; true');
  const fds = r.stdout.split('\n').filter(Boolean).map(Number).sort((a, b) => a - b);
  assert.deepEqual(fds, [0, 1, 2]);
});

test('a client that stops reading stalls only its own process', async () => {
  // 64 MiB of output to a client that never reads: the agent must neither
  // buffer it all nor stop serving other processes.
  const ctl = new AbortController();
  const res = await fetch(`${agent.url}/process.Process/Start`, {
    method: 'POST',
    headers: { 'content-type': 'application/connect+json', 'connect-timeout-ms': '60000' },
    body: envelope({ process: { cmd: '/bin/sh', args: ['-c', 'head -c 67108864 /dev/zero'] },
      tag: 'flood' }),
    signal: ctl.signal,
  });
  assert.equal(res.status, 200);
  await sleep(500);

  const t0 = Date.now();
  const r = await sbx.commands.run('echo other-process-ok');
  assert.equal(r.stdout, 'other-process-ok\n');
  assert.ok(Date.now() - t0 < 3000, `took ${Date.now() - t0} ms`);

  // The flood is held back, not finished...
  const { body } = await rawUnary('List', {});
  assert.ok(body.processes?.some((p) => p.tag === 'flood'), 'flood already done');
  // ...and once its only client goes away, its output is dropped and it ends.
  ctl.abort();
  await until(async () => !(await rawUnary('List', {})).body.processes
    ?.some((p) => p.tag === 'flood'), 10000, 'the flood to finish without a client');
});

// ---- keepalives and deadlines (raw, with arrival times) ----

// Opens a server stream and collects its frames with the time each arrived
// (ms since the request was sent) until the end frame.
async function timedStream(method, req, headers = {}) {
  const t0 = Date.now();
  const res = await fetch(`${agent.url}/process.Process/${method}`, {
    method: 'POST',
    headers: { 'content-type': 'application/connect+json', ...headers },
    body: envelope(req),
  });
  assert.equal(res.status, 200);
  const frames = [];
  let buf = Buffer.alloc(0);
  for await (const chunk of res.body) {
    buf = Buffer.concat([buf, Buffer.from(chunk)]);
    while (buf.length >= 5 && buf.length >= 5 + buf.readUInt32BE(1)) {
      const len = buf.readUInt32BE(1);
      frames.push({ t: Date.now() - t0, flags: buf[0],
        msg: JSON.parse(buf.subarray(5, 5 + len).toString()) });
      buf = buf.subarray(5 + len);
    }
  }
  assert.equal(buf.length, 0, 'stream ended inside a frame');
  assert.equal(frames.at(-1)?.flags, 2, 'no end-of-stream frame');
  return frames;
}

const isKeepalive = (f) => f.flags === 0 && f.msg.event?.keepalive !== undefined;

test('keepalive: an idle stream gets one keepalive event per Keepalive-Ping-Interval', async () => {
  const frames = await timedStream('Start',
    { process: { cmd: '/bin/sh', args: ['-c', 'sleep 3.6'] } },
    { 'keepalive-ping-interval': '1', 'connect-timeout-ms': '20000' });
  const keep = frames.filter(isKeepalive);
  // the exact shape of protocol.md §4.5: an empty oneof member written as {}
  for (const k of keep) assert.deepEqual(k.msg, { event: { keepalive: {} } });
  assert.ok(keep.length >= 3 && keep.length <= 4, `${keep.length} keepalives`);
  assert.ok(keep[0].t >= 900, `first keepalive after ${keep[0].t} ms`);
  for (let i = 1; i < keep.length; i++) {
    const gap = keep[i].t - keep[i - 1].t;
    assert.ok(gap >= 900 && gap < 1600, `keepalive gap of ${gap} ms`);
  }
  // start first, then keepalives, then the end event and end-of-stream
  assert.ok(frames[0].msg.event.start.pid > 0);
  assert.ok(frames.at(-2).msg.event.end);
  assert.deepEqual(frames.at(-1).msg, {});
});

test('keepalive: output resets the timer; without the header the interval is 90 s', async () => {
  // Output every 0.3 s for 2.4 s, then 2.3 s of silence, interval 1 s.
  const script = 'for i in 1 2 3 4 5 6 7 8; do echo $i; sleep 0.3; done; sleep 2.3';
  const frames = await timedStream('Start', { process: { cmd: '/bin/sh', args: ['-c', script] } },
    { 'keepalive-ping-interval': '1', 'connect-timeout-ms': '20000' });
  const lastData = frames.filter((f) => f.msg.event?.data).at(-1);
  const keep = frames.filter(isKeepalive);
  assert.ok(keep.length >= 1, 'no keepalive in the silence');
  for (const k of keep) assert.ok(k.t >= lastData.t + 900, `keepalive at ${k.t} ms ` +
    `while output was flowing (last output at ${lastData.t} ms)`);

  const quiet = await timedStream('Start', { process: { cmd: '/bin/sh', args: ['-c', 'sleep 2.2'] } },
    { 'connect-timeout-ms': '20000' });
  assert.equal(quiet.filter(isKeepalive).length, 0);
  // an unusable value falls back to the default, it does not refuse the call
  const odd = await timedStream('Start', { process: { cmd: '/bin/sh', args: ['-c', 'sleep 1.3'] } },
    { 'keepalive-ping-interval': '0', 'connect-timeout-ms': '20000' });
  assert.equal(odd.filter(isKeepalive).length, 0);
  assert.deepEqual(odd.at(-1).msg, {});
});

test('connect deadline: the stream ends with deadline_exceeded, the process runs on', async () => {
  const h = await sbx.commands.run('sleep 3; echo survived', { background: true,
    timeoutMs: 0 });
  try {
    // raw: the end frame carries the code
    const t0 = Date.now();
    const frames = await timedStream('Connect', { process: { pid: h.pid } },
      { 'connect-timeout-ms': '400' });
    assert.equal(frames[0].msg.event.start.pid, h.pid);
    assert.deepEqual(frames.at(-1).msg,
      { error: { code: 'deadline_exceeded', message: 'the operation timed out' } });
    assert.ok(Date.now() - t0 < 1500, `deadline ended the stream after ${Date.now() - t0} ms`);
    assert.ok((await sbx.commands.list()).some((p) => p.pid === h.pid),
      'the process died with its Connect stream');

    // the SDK: a TimeoutError from wait(), and the process is still listed
    const c = await sbx.commands.connect(h.pid, { timeoutMs: 300 });
    await assert.rejects(c.wait(), TimeoutError);
    assert.ok((await sbx.commands.list()).some((p) => p.pid === h.pid),
      'the process died with the SDK Connect stream');

    // and it finishes its work: a new Connect without a deadline sees the end
    const r = await (await sbx.commands.connect(h.pid, { timeoutMs: 0 })).wait();
    assert.equal(r.exitCode, 0);
    assert.equal(r.stdout, 'survived\n');
  } finally {
    await h.kill().catch(() => {});
  }
});
