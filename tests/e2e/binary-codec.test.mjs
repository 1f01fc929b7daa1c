// The agent's Connect layer driven by connect-es itself, in both codecs:
// binary protobuf (useBinaryFormat: true) and JSON. Message and service
// descriptors come from our own .proto files, compiled at test time into a
// descriptor set by protoc-c (Debian's protobuf-c-compiler).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createFileRegistry, fromBinary, toBinary, create } from '@bufbuild/protobuf';
import { FileDescriptorSetSchema } from '@bufbuild/protobuf/wkt';
import { createClient, Code, ConnectError } from '@connectrpc/connect';
import { createConnectTransport } from '@connectrpc/connect-node';
import { startAgent } from './lib/agent.mjs';

const protoDir = resolve(fileURLToPath(new URL('.', import.meta.url)), '../../proto');

function loadRegistry() {
  const dir = mkdtempSync(join(tmpdir(), 'hutch-desc-'));
  try {
    const out = join(dir, 'set.pb');
    execFileSync('protoc-c', [`--proto_path=${protoDir}`, `--descriptor_set_out=${out}`,
      '--include_imports', 'process/process.proto', 'filesystem/filesystem.proto']);
    return createFileRegistry(fromBinary(FileDescriptorSetSchema, readFileSync(out)));
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

const registry = loadRegistry();
const ProcessService = registry.getService('process.Process');
const FilesystemService = registry.getService('filesystem.Filesystem');
const auth = { Authorization: 'Basic ' + Buffer.from('user:').toString('base64') };
let agent;

before(async () => {
  agent = await startAgent();
  writeFileSync(join(agent.home, 'a.txt'), 'hello');
});
after(async () => { await agent?.stop(); });

function clients(useBinaryFormat) {
  const transport = createConnectTransport({ baseUrl: agent.url, httpVersion: '1.1',
    useBinaryFormat });
  return { proc: createClient(ProcessService, transport),
    fs: createClient(FilesystemService, transport) };
}

async function runEcho(proc, args, opts = {}) {
  const events = [];
  const stream = proc.start({ process: { cmd: '/bin/sh', args },
    Stdin: { case: 'stdin', value: false } },
    { headers: auth, timeoutMs: 10000, ...opts });
  for await (const msg of stream) events.push(msg.event.event);
  return events;
}

for (const binary of [true, false]) {
  const name = binary ? 'binary' : 'JSON';

  test(`${name}: unary Stat and ListDir`, async () => {
    const { fs } = clients(binary);
    const st = await fs.stat({ path: 'a.txt' }, { headers: auth });
    assert.equal(st.entry.name, 'a.txt');
    assert.equal(st.entry.path, join(agent.home, 'a.txt'));
    assert.equal(st.entry.size, 5n);
    assert.equal(st.entry.type, 1); // FILE_TYPE_FILE
    assert.ok(st.entry.modifiedTime.seconds > 0n);

    const ls = await fs.listDir({ path: '', depth: 1 }, { headers: auth });
    assert.deepEqual(ls.entries.map((e) => e.name), ['a.txt']);
  });

  test(`${name}: unary error keeps its Connect code`, async () => {
    const { fs } = clients(binary);
    await assert.rejects(fs.stat({ path: 'missing.txt' }, { headers: auth }),
      (e) => e instanceof ConnectError && e.code === Code.NotFound);
    const bad = { Authorization: 'Basic ' + Buffer.from('bob:').toString('base64') };
    await assert.rejects(fs.stat({ path: 'a.txt' }, { headers: bad }),
      (e) => e.code === Code.Unauthenticated && /invalid username: 'bob'/.test(e.rawMessage));
  });

  test(`${name}: server stream of Start echo hi`, async () => {
    const { proc } = clients(binary);
    const events = await runEcho(proc, ['-c', 'echo hi']);
    assert.equal(events[0].case, 'start');
    assert.ok(events[0].value.pid > 0);
    const out = Buffer.concat(events.filter((e) => e.case === 'data')
      .map((e) => Buffer.from(e.value.output.value))).toString();
    assert.equal(out, 'hi\n');
    const end = events.at(-1);
    assert.equal(end.case, 'end');
    assert.equal(end.value.exited, true);
    assert.equal(end.value.exitCode, 0);
  });

  test(`${name}: stream errors arrive in-band`, async () => {
    const { proc } = clients(binary);
    await assert.rejects(runEchoWithCwd(proc, '/definitely/not/here'),
      (e) => e instanceof ConnectError && e.code === Code.InvalidArgument &&
        /does not exist/.test(e.rawMessage));
    await assert.rejects(async () => {
      for await (const m of proc.connect({ process: { selector: { case: 'pid', value: 999999 } } },
        { headers: auth })) void m;
    }, (e) => e.code === Code.NotFound);
  });

  test(`${name}: deadline ends the stream with deadline_exceeded`, async () => {
    const { proc } = clients(binary);
    const t0 = Date.now();
    await assert.rejects(runEcho(proc, ['-c', 'sleep 20'], { timeoutMs: 800 }),
      (e) => e.code === Code.DeadlineExceeded);
    assert.ok(Date.now() - t0 < 5000);
  });

  test(`${name}: idle Connect stream gets keepalives; its deadline leaves the process`,
    async () => {
      const { proc } = clients(binary);
      // Started without a deadline; leaving the Start stream does not stop it.
      let pid;
      for await (const m of proc.start({ process: { cmd: '/bin/sleep', args: ['30'] } },
        { headers: auth })) {
        pid = m.event.event.value.pid;
        break;
      }
      const selector = { process: { selector: { case: 'pid', value: pid } } };
      try {
        const seen = [];
        const t0 = Date.now();
        // The deadline as a header, not timeoutMs: the client's own timer
        // would otherwise hang up first, and the agent's end would go unseen.
        await assert.rejects(async () => {
          for await (const m of proc.connect(selector, { headers: { ...auth,
            'Keepalive-Ping-Interval': '1', 'Connect-Timeout-Ms': '2400' } }))
            seen.push(m.event.event.case);
        }, (e) => e.code === Code.DeadlineExceeded && e.rawMessage === 'the operation timed out');
        assert.deepEqual(seen, ['start', 'keepalive', 'keepalive']);
        const took = Date.now() - t0;
        assert.ok(took >= 2300 && took < 2950, `the stream ended after ${took} ms`);
        const { processes } = await proc.list({}, { headers: auth });
        assert.ok(processes.some((p) => p.pid === pid), 'the process ended with the stream');
      } finally {
        await proc.sendSignal({ ...selector, signal: 9 }, { headers: auth });
      }
    });
}

async function runEchoWithCwd(proc, cwd) {
  // Our "optional" fields are one-member oneofs in the .proto, so protobuf-es
  // sees oneofs, named without the underscore: { Cwd: { case: 'cwd', value } }.
  const stream = proc.start({ process: { cmd: '/bin/sh', args: ['-c', 'true'],
    Cwd: { case: 'cwd', value: cwd } } },
    { headers: auth, timeoutMs: 10000 });
  for await (const m of stream) void m;
}

test('binary unary answers application/proto; JSON body is refused under it', async () => {
  const Req = registry.getMessage('filesystem.StatRequest');
  const Resp = registry.getMessage('filesystem.StatResponse');
  const res = await fetch(`${agent.url}/filesystem.Filesystem/Stat`, {
    method: 'POST', headers: { 'Content-Type': 'application/proto', ...auth },
    body: toBinary(Req, create(Req, { path: 'a.txt' })),
  });
  assert.equal(res.status, 200);
  assert.equal(res.headers.get('content-type'), 'application/proto');
  const msg = fromBinary(Resp, new Uint8Array(await res.arrayBuffer()));
  assert.equal(msg.entry.name, 'a.txt');

  const bad = await fetch(`${agent.url}/filesystem.Filesystem/Stat`, {
    method: 'POST', headers: { 'Content-Type': 'application/proto' }, body: '{"path":"a"}',
  });
  assert.equal(bad.status, 400);
  assert.equal((await bad.json()).code, 'invalid_argument');
});

test('stream response is enveloped connect+proto ending with one end-stream frame', async () => {
  const Req = registry.getMessage('process.StartRequest');
  const Resp = registry.getMessage('process.StartResponse');
  const msg = toBinary(Req, create(Req, { process: { cmd: '/bin/echo', args: ['x'] } }));
  const body = Buffer.concat([Buffer.from([0, 0, 0, 0, msg.length]), Buffer.from(msg)]);
  const res = await fetch(`${agent.url}/process.Process/Start`, {
    method: 'POST', headers: { 'Content-Type': 'application/connect+proto', ...auth }, body,
  });
  assert.equal(res.status, 200);
  assert.equal(res.headers.get('content-type'), 'application/connect+proto');
  const buf = Buffer.from(await res.arrayBuffer());
  const frames = [];
  for (let off = 0; off < buf.length;) {
    const len = buf.readUInt32BE(off + 1);
    frames.push({ flags: buf[off], data: buf.subarray(off + 5, off + 5 + len) });
    off += 5 + len;
  }
  assert.equal(frames.filter((f) => f.flags === 2).length, 1);
  assert.equal(frames.at(-1).flags, 2);
  assert.equal(frames.at(-1).data.toString(), '{}');
  const first = fromBinary(Resp, frames[0].data);
  assert.equal(first.event.event.case, 'start');
});
