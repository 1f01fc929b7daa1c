// Snapshots and fork on real sandboxes: the official SDK drives the sandboxes,
// raw fetch the endpoints the SDK lacks. A snapshot of a running sandbox keeps
// it running (same id, same process, deadline unchanged); a fork from the
// snapshot is a new sandbox with the files as they were, and writes in one do
// not show in the other. Also: fork of a sandbox in one call (count), list and
// delete, another team gets 404, bad bodies 400, and nothing stays on disk;
// a restart removes the snapshot folders a crash can leave. Forks keep the
// source's memory: its processes run on in each fork with their state, under
// the fork's own id, hostname, host uid range, cgroups and access token.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import {
  existsSync, mkdirSync, readdirSync, readFileSync, rmSync, symlinkSync, writeFileSync,
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

function skipWithoutBase(t) {
  return !h && (t.skip('no base template (see the message above)'), true);
}
const snapDir = (sid) => join(h.dir, 'data', 'snapshots', sid);
const diskOf = (id) => join(h.dir, 'data', 'sandboxes', id, 'disk.img');

function otherTeam() {
  const key = h.createKey('fork-other');
  return async (method, path, body) => {
    const res = await fetch(`${h.apiUrl}${path}`, {
      method,
      headers: { 'X-API-Key': key, 'Content-Type': 'application/json' },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    return { status: res.status, json: await res.json().catch(() => null) };
  };
}

async function forkedSandbox(result) {
  assert.equal(result.length, 1);
  assert.ok(result[0].sandbox, `fork failed: ${JSON.stringify(result[0].error)}`);
  return Sandbox.connect(result[0].sandbox.sandboxID);
}

test('snapshot of a running sandbox, fork from it, copies are separate',
  async (t) => {
    if (skipWithoutBase(t)) return;
    let src = await Sandbox.create({ timeoutMs: 300_000 });
    let fork;
    let snapId;
    try {
      await src.files.write('/home/user/state.txt', 'before the snapshot');
      await src.commands.run('mkdir -p /opt/app && echo v1 > /opt/app/version',
        { user: 'root' });
      // A process whose pid must be the same after the snapshot: the source
      // is paused with its memory and resumed, not restarted.
      const bg = await src.commands.run('sleep 1000', { background: true });
      const endBefore = (await Sandbox.getInfo(src.sandboxId)).endAt.getTime();

      const made = await h.api('POST', `/sandboxes/${src.sandboxId}/snapshots`,
        { name: 'first' });
      assert.equal(made.status, 201, made.text);
      const snap = made.json;
      snapId = snap.snapshotID;
      assert.match(snap.snapshotID, /^s[a-z0-9]{20}$/);
      assert.equal(snap.sandboxID, src.sandboxId);
      assert.equal(snap.templateID, 'base');
      assert.deepEqual(snap.names, ['first']);
      assert.ok(snap.sizeBytes > 0);
      assert.ok(existsSync(join(snapDir(snap.snapshotID), 'disk.img')));

      // The source runs on: same id, its process alive, deadline unchanged.
      const info = await Sandbox.getInfo(src.sandboxId);
      assert.equal(info.state, 'running');
      assert.equal(info.endAt.getTime(), endBefore);
      // As a pause does, the snapshot closed the connections open into the
      // sandbox: the SDK object reconnects through connect.
      src = await Sandbox.connect(src.sandboxId);
      const ps = await src.commands.run(`kill -0 ${bg.pid} && echo alive`);
      assert.equal(ps.stdout, 'alive\n');
      await src.files.write('/home/user/state.txt', 'after the snapshot');

      const listed = await h.api('GET', '/snapshots');
      assert.equal(listed.status, 200);
      assert.ok(listed.json.some((s) => s.snapshotID === snap.snapshotID));
      const one = await h.api('GET', `/snapshots/${snap.snapshotID}`);
      assert.equal(one.status, 200);
      assert.equal(one.json.sandboxID, src.sandboxId);

      const forked = await h.api('POST', `/snapshots/${snap.snapshotID}/fork`,
        { timeout: 120 });
      assert.equal(forked.status, 201, forked.text);
      fork = await forkedSandbox(forked.json);
      assert.notEqual(fork.sandboxId, src.sandboxId);
      assert.equal(await fork.isRunning(), true);
      // The files as they were at the snapshot.
      assert.equal(await fork.files.read('/home/user/state.txt'), 'before the snapshot');
      assert.equal((await fork.commands.run('cat /opt/app/version')).stdout, 'v1\n');
      // With memory: the source's process is in the fork, same pid inside.
      const sleeps = await fork.commands.run('pgrep -x sleep || true');
      assert.equal(sleeps.stdout.trim(), String(bg.pid));

      // Writes stay in their own sandbox, both ways.
      await fork.files.write('/home/user/only-fork.txt', 'fork');
      await src.files.write('/home/user/only-source.txt', 'source');
      assert.equal(await src.files.exists('/home/user/only-fork.txt'), false);
      assert.equal(await fork.files.exists('/home/user/only-source.txt'), false);
      assert.equal(await src.files.read('/home/user/state.txt'), 'after the snapshot');

      // Deleting the snapshot leaves the fork running; its folder goes.
      const del = await h.api('DELETE', `/snapshots/${snap.snapshotID}`);
      assert.equal(del.status, 204);
      assert.equal(existsSync(snapDir(snap.snapshotID)), false);
      assert.equal((await h.api('GET', `/snapshots/${snap.snapshotID}`)).status, 404);
      assert.equal((await h.api('DELETE', `/snapshots/${snap.snapshotID}`)).status, 404);
      assert.equal(await fork.files.read('/home/user/only-fork.txt'), 'fork');
    } finally {
      const forkId = fork?.sandboxId;
      if (snapId) await h.api('DELETE', `/snapshots/${snapId}`);
      await fork?.kill();
      await src.kill();
      if (forkId) assert.equal(existsSync(diskOf(forkId)), false, 'fork disk removed');
    }
  });

test('fork of a sandbox in one call makes count sandboxes; no snapshot stays',
  async (t) => {
    if (skipWithoutBase(t)) return;
    const src = await Sandbox.create({ timeoutMs: 120_000 });
    const forks = [];
    try {
      await src.files.write('/home/user/fork-me.txt', 'shared start');
      const before = (await h.api('GET', `/snapshots?sandboxID=${src.sandboxId}`)).json;
      assert.deepEqual(before, []);
      const r = await h.api('POST', `/sandboxes/${src.sandboxId}/fork`,
        { count: 2, timeout: 60 });
      assert.equal(r.status, 201, r.text);
      assert.equal(r.json.length, 2);
      for (const one of r.json) assert.ok(one.sandbox, JSON.stringify(one.error));
      // Before any connect, which would move the deadline.
      const info = await Sandbox.getInfo(r.json[0].sandbox.sandboxID);
      const left = info.endAt.getTime() - Date.now();
      assert.ok(left > 30_000 && left <= 61_000, `fork deadline from its timeout: ${left}`);
      for (const one of r.json) forks.push(await Sandbox.connect(one.sandbox.sandboxID));
      assert.notEqual(forks[0].sandboxId, forks[1].sandboxId);
      for (const f of forks)
        assert.equal(await f.files.read('/home/user/fork-me.txt'), 'shared start');
      // The snapshot the fork took is gone again.
      const after = (await h.api('GET', `/snapshots?sandboxID=${src.sandboxId}`)).json;
      assert.deepEqual(after, []);
      assert.equal(await src.isRunning(), true);
    } finally {
      for (const f of forks) await f.kill();
      await src.kill();
    }
  });

test('a paused sandbox is snapshotted without resuming it', async (t) => {
  if (skipWithoutBase(t)) return;
  const src = await Sandbox.create({ timeoutMs: 120_000 });
  let fork;
  try {
    await src.files.write('/home/user/paused.txt', 'written before the pause');
    assert.equal(await src.pause(), true);
    const made = await h.api('POST', `/sandboxes/${src.sandboxId}/snapshots`);
    assert.equal(made.status, 201, made.text);
    assert.deepEqual(made.json.names, []);
    assert.equal((await Sandbox.getInfo(src.sandboxId)).state, 'paused');
    const forked = await h.api('POST', `/snapshots/${made.json.snapshotID}/fork`);
    assert.equal(forked.status, 201, forked.text);
    fork = await forkedSandbox(forked.json);
    assert.equal(await fork.files.read('/home/user/paused.txt'), 'written before the pause');
    assert.equal((await Sandbox.getInfo(src.sandboxId)).state, 'paused');
    assert.equal((await h.api('DELETE', `/snapshots/${made.json.snapshotID}`)).status, 204);
  } finally {
    await fork?.kill();
    await src.kill();
  }
});

test('another team gets 404; bad bodies get 400', async (t) => {
  if (skipWithoutBase(t)) return;
  const src = await Sandbox.create({ timeoutMs: 120_000 });
  try {
    const made = await h.api('POST', `/sandboxes/${src.sandboxId}/snapshots`);
    assert.equal(made.status, 201, made.text);
    const sid = made.json.snapshotID;
    const other = otherTeam();
    assert.equal((await other('POST', `/sandboxes/${src.sandboxId}/snapshots`)).status,
      404);
    assert.equal((await other('POST', `/sandboxes/${src.sandboxId}/fork`)).status, 404);
    assert.equal((await other('GET', `/snapshots/${sid}`)).status, 404);
    assert.equal((await other('POST', `/snapshots/${sid}/fork`)).status, 404);
    assert.equal((await other('DELETE', `/snapshots/${sid}`)).status, 404);
    const theirs = await other('GET', '/snapshots');
    assert.equal(theirs.status, 200);
    assert.deepEqual(theirs.json, []);
    // Still there for its own team.
    assert.equal((await h.api('GET', `/snapshots/${sid}`)).status, 200);

    const bad = [
      ['POST', `/sandboxes/${src.sandboxId}/snapshots`, { name: 7 }],
      ['POST', `/sandboxes/${src.sandboxId}/snapshots`, { name: 'x'.repeat(129) }],
      ['POST', `/sandboxes/${src.sandboxId}/snapshots`, { name: 'a\nb' }],
      ['POST', `/sandboxes/${src.sandboxId}/snapshots`, { nmae: 'typo' }],
      ['POST', `/sandboxes/${src.sandboxId}/fork`, { count: 0 }],
      ['POST', `/sandboxes/${src.sandboxId}/fork`, { count: 11 }],
      ['POST', `/sandboxes/${src.sandboxId}/fork`, { count: '1' }],
      ['POST', `/sandboxes/${src.sandboxId}/fork`, { timeout: -1 }],
      ['POST', `/snapshots/${sid}/fork`, { timeout: 10 ** 9 }],
      ['POST', `/snapshots/${sid}/fork`, [1]],
    ];
    for (const [method, path, body] of bad) {
      const r = await h.api(method, path, body);
      assert.equal(r.status, 400, `${path} ${JSON.stringify(body)}: ${r.text}`);
      assert.ok(r.json?.message, 'a message says what is wrong');
    }
    const raw = await fetch(`${h.apiUrl}/sandboxes/${src.sandboxId}/snapshots`, {
      method: 'POST',
      headers: { 'X-API-Key': h.apiKey, 'Content-Type': 'application/json' },
      body: '{"name": ',
    });
    assert.equal(raw.status, 400);
    assert.equal((await h.api('GET', '/snapshots?sandboxID=..%2Fx')).status, 400);
    assert.equal((await h.api('GET', '/snapshots/..')).status, 404);
    assert.equal((await h.api('POST', '/sandboxes/inosuchsandbox0000000/snapshots'))
      .status, 404);
    // No sandbox was made by the bad requests and no snapshot beyond ours.
    const listed = (await h.api('GET', '/snapshots')).json.map((s) => s.snapshotID);
    assert.deepEqual(listed, [sid]);
    assert.deepEqual(await h.liveIds(), [src.sandboxId]);
    assert.equal((await h.api('DELETE', `/snapshots/${sid}`)).status, 204);
    assert.deepEqual(readdirSync(join(h.dir, 'data', 'snapshots')), []);
  } finally {
    await src.kill();
  }
});

test('a restart removes unfinished and unreferenced snapshot folders, nothing else',
  async (t) => {
    if (skipWithoutBase(t)) return;
    const src = await Sandbox.create({ timeoutMs: 120_000 });
    try {
      const made = await h.api('POST', `/sandboxes/${src.sandboxId}/snapshots`);
      assert.equal(made.status, 201, made.text);
      const kept = made.json.snapshotID;
      // what a crash leaves: an unfinished copy, a folder without a row
      // (names of the shape new snapshot ids have: 's' and 20 of [a-z0-9])
      const leftovers = ['sunfinished0000000000.tmp', 'snorowforthis00000000'];
      // not ours: other names (a sandbox id's shape too), and a link named
      // like a snapshot whose target's disk.img must survive
      const foreign = ['Not-A-Snapshot', 'sx.tmp.old', 'backup',
        'ilooksliketheidofasbx'];
      for (const name of [...leftovers, ...foreign]) {
        mkdirSync(snapDir(name));
        writeFileSync(join(snapDir(name), 'disk.img'), 'x');
      }
      const elsewhere = join(h.dir, 'elsewhere');
      mkdirSync(elsewhere);
      writeFileSync(join(elsewhere, 'disk.img'), 'x');
      mkdirSync(join(elsewhere, 'checkpoint'));
      writeFileSync(join(elsewhere, 'checkpoint', 'pages-1.img'), 'x');
      const link = snapDir('slinktoanotherfolder0');
      symlinkSync(elsewhere, link);
      // memory images in the leftovers: a folder of them, and a link named
      // like one (the link goes, what it leads to stays)
      mkdirSync(join(snapDir(leftovers[0]), 'checkpoint'));
      writeFileSync(join(snapDir(leftovers[0]), 'checkpoint', 'pages-1.img'), 'x');
      writeFileSync(join(snapDir(leftovers[0]), 'agent-token'), 'ab');
      symlinkSync(join(elsewhere, 'checkpoint'), join(snapDir(leftovers[1]), 'checkpoint'));
      await h.restart();
      for (const name of leftovers) assert.equal(existsSync(snapDir(name)), false, name);
      for (const name of foreign) assert.equal(existsSync(snapDir(name)), true, name);
      assert.ok(existsSync(join(elsewhere, 'disk.img')), 'nothing removed through a link');
      assert.ok(existsSync(join(elsewhere, 'checkpoint', 'pages-1.img')),
        'no image removed through a link');
      assert.ok(existsSync(join(snapDir(kept), 'disk.img')), 'a recorded snapshot stays');
      assert.equal((await h.api('GET', `/snapshots/${kept}`)).status, 200);
      assert.equal((await h.api('DELETE', `/snapshots/${kept}`)).status, 204);
      for (const name of foreign) rmSync(snapDir(name), { recursive: true });
      rmSync(link);
      rmSync(elsewhere, { recursive: true });
    } finally {
      await Sandbox.kill(src.sandboxId);
    }
  });

// A client keeps one connection to the server (lib/memory.mjs) and logs each
// reply, and a last BROKEN line when the connection goes.
const memClientPy = `
import socket, time
s = socket.create_connection(('127.0.0.1', 7412))
f = s.makefile('rwb', buffering=0)
out = open('/tmp/mem-client.log', 'a', buffering=1)
try:
    while True:
        f.write(b'get\\n')
        line = f.readline()
        if not line:
            raise EOFError('closed')
        out.write(line.decode())
        time.sleep(0.2)
except Exception as e:
    out.write('BROKEN %r\\n' % (e,))
`;
// The agent's answer to GET /envs with a given token, from inside the sandbox.
const agentAskPy = `
import sys, urllib.request, urllib.error
req = urllib.request.Request('http://127.0.0.1:49983/envs',
                             headers={'X-Access-Token': sys.argv[1]})
try:
    print(urllib.request.urlopen(req, timeout=5).status)
except urllib.error.HTTPError as e:
    print(e.code)
`;

// The first host id of the sandbox's user namespace, from inside it.
async function hostUidBase(sb, pid) {
  const r = await sb.commands.run(`cat /proc/${pid}/uid_map`);
  const f = r.stdout.trim().split(/\s+/).map(Number);
  assert.equal(f.length, 3, r.stdout);
  assert.equal(f[0], 0);
  return f[1];
}

// Host pids whose pid inside is `inner`, in the sandbox's own pids cgroup
// and its cgroup2 leaf (freeze and kill act there: a fork's task in the
// source's would be killed by the source's pause).
function hostPidsOf(id, inner) {
  const v2 = existsSync(`/sys/fs/cgroup/unified/${cgroupName}`) ?
    `/sys/fs/cgroup/unified/${cgroupName}/${id}` : `/sys/fs/cgroup/${cgroupName}/${id}`;
  const read = (dir) => readFileSync(`${dir}/cgroup.procs`, 'utf8').split('\n')
    .filter(Boolean);
  const both = new Set(read(v2));
  const procs = read(`/sys/fs/cgroup/pids/${cgroupName}/${id}`).filter((p) => both.has(p));
  return procs.filter((p) => {
    try {
      const ns = /NSpid:\s+(.*)/.exec(readFileSync(`/proc/${p}/status`, 'utf8'))[1];
      return Number(ns.trim().split(/\s+/).at(-1)) === inner;
    } catch { return false; }
  });
}

function hostUidOf(pid) {
  return Number(/Uid:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))[1]);
}

test('forks run the source\'s processes with their memory, under their own identity',
  async (t) => {
    if (skipWithoutBase(t)) return;
    const src = await Sandbox.create({ timeoutMs: 300_000 });
    const forks = [];
    let sid;
    try {
      await src.files.write('/home/user/mem-server.py', memServerPy);
      await src.files.write('/home/user/mem-client.py', memClientPy);
      await src.files.write('/home/user/mem-ask.py', memAskPy);
      await src.files.write('/home/user/agent-ask.py', agentAskPy);
      await src.files.write('/home/user/state.txt', 'at the snapshot');
      await src.commands.run('setsid nohup python3 /home/user/mem-server.py ' +
        '>/tmp/mem-server.out 2>&1 </dev/null &');
      await new Promise((r) => setTimeout(r, 500));
      await src.commands.run('setsid nohup python3 /home/user/mem-client.py ' +
        '>/dev/null 2>&1 </dev/null &');
      for (let i = 0; i < 3; i++) await memAsk(src, 'inc');
      const before = await memAsk(src, 'get');
      assert.equal(before.n, 3);
      assert.deepEqual(await memAsk(src, 'get', 'eth0'), before);
      const srcAddr = await eth0Address(src);
      const srcBase = await hostUidBase(src, before.pid);
      const srcToken = (await h.api('GET', `/sandboxes/${src.sandboxId}`)).json
        .envdAccessToken;
      assert.match(srcToken, /^[0-9a-f]{64}$/, 'a secure source');

      const t0 = Date.now();
      const made = await h.api('POST', `/sandboxes/${src.sandboxId}/snapshots`);
      assert.equal(made.status, 201, made.text);
      const snapMs = Date.now() - t0;
      sid = made.json.snapshotID;
      assert.ok(existsSync(join(snapDir(sid), 'checkpoint')), 'memory images kept');
      for (let i = 0; i < 2; i++) {
        const t1 = Date.now();
        forks.push(await Sandbox.create(sid, { timeoutMs: 120_000 }));
        t.diagnostic(`fork ${i} with memory: ${Date.now() - t1} ms (snapshot ${snapMs} ms)`);
      }
      const [a, b] = forks;

      // Each fork: the same process with the same memory, at the snapshot.
      for (const f of forks) {
        const now = await memAsk(f, 'get');
        assert.deepEqual(now, before, `${f.sandboxId}: the server's memory`);
        assert.equal(await f.files.read('/home/user/state.txt'), 'at the snapshot');
        // The listener bound to the source's eth0 address listens on the
        // fork's: the source's does not exist in the fork's netns.
        const via = await f.commands.run('python3 /home/user/mem-ask.py get eth0');
        const [addr, reply] = via.stdout.trim().split('\n');
        assert.notEqual(addr, srcAddr, 'the fork has an address of its own');
        assert.match(reply, new RegExp(`token=${before.token} n=3 pid=${before.pid}`));
      }
      // Counters go their own ways: the source's and each fork's.
      await memAsk(a, 'inc');
      await memAsk(a, 'inc');
      await memAsk(b, 'inc');
      await memAsk(src, 'inc');
      assert.equal((await memAsk(a, 'get')).n, 5);
      assert.equal((await memAsk(b, 'get')).n, 4);
      const srcNow = await memAsk(src, 'get');
      assert.equal(srcNow.n, 4);
      assert.equal(srcNow.pid, before.pid);
      assert.equal(srcNow.token, before.token);

      // Identity: id, hostname, /etc/hosts, host id range, cgroups, token.
      const bases = new Set([srcBase]);
      for (const f of forks) {
        assert.notEqual(f.sandboxId, src.sandboxId);
        assert.equal((await f.commands.run('hostname')).stdout.trim(), f.sandboxId);
        assert.match((await f.commands.run('cat /etc/hosts')).stdout,
          new RegExp(`127\\.0\\.1\\.1\\s+${f.sandboxId}`));
        const base = await hostUidBase(f, before.pid);
        assert.ok(!bases.has(base), `${f.sandboxId}: its own host id range (${base})`);
        bases.add(base);
        const hostPids = hostPidsOf(f.sandboxId, before.pid);
        assert.equal(hostPids.length, 1, 'the server is in the fork\'s own cgroup');
        const uid = hostUidOf(hostPids[0]);
        assert.ok(uid >= base && uid < base + 65536, `host uid ${uid} in ${base}+65536`);
        assert.equal(hostPidsOf(src.sandboxId, before.pid).length, 1, 'source intact');

        const token = (await h.api('GET', `/sandboxes/${f.sandboxId}`)).json.envdAccessToken;
        assert.match(token, /^[0-9a-f]{64}$/);
        assert.notEqual(token, srcToken);
        const asks = async (tok) =>
          (await f.commands.run(`python3 /home/user/agent-ask.py ${tok}`)).stdout.trim();
        assert.equal(await asks(token), '200', 'the fork\'s token works');
        assert.equal(await asks(srcToken), '401', 'the source\'s does not');
      }
      assert.equal(await src.commands.run('hostname').then((r) => r.stdout.trim()),
        src.sandboxId);

      // The client's connection came back closed in the forks (its peer
      // there was the source's), and goes on in the source.
      for (const f of forks) {
        let log = '';
        for (let i = 0; i < 50 && !log.includes('BROKEN'); i++) {
          log = await f.files.read('/tmp/mem-client.log');
          await new Promise((r) => setTimeout(r, 100));
        }
        assert.match(log, /BROKEN/, `${f.sandboxId}: the client's connection closed`);
      }
      const srcLog = await src.files.read('/tmp/mem-client.log');
      assert.doesNotMatch(srcLog, /BROKEN/);
      assert.match(srcLog.trim().split('\n').at(-1), /n=4 /, 'the source\'s client goes on');

      // The source's next pause (another snapshot) leaves the forks alone.
      const again = await h.api('POST', `/sandboxes/${src.sandboxId}/snapshots`);
      assert.equal(again.status, 201, again.text);
      await h.api('DELETE', `/snapshots/${again.json.snapshotID}`);
      assert.equal((await memAsk(a, 'get')).n, 5);
      assert.equal((await memAsk(b, 'get')).n, 4);

      // A fork of a fork: its agent took the first fork's init secret and
      // token, which the second fork's start must show.
      const ofA = await h.api('POST', `/sandboxes/${a.sandboxId}/snapshots`);
      assert.equal(ofA.status, 201, ofA.text);
      const c = await Sandbox.create(ofA.json.snapshotID, { timeoutMs: 60_000 });
      forks.push(c);
      await h.api('DELETE', `/snapshots/${ofA.json.snapshotID}`);
      assert.deepEqual(await memAsk(c, 'get'), { ...before, n: 5 });
      assert.equal((await c.commands.run('hostname')).stdout.trim(), c.sandboxId);
      assert.ok(!bases.has(await hostUidBase(c, before.pid)), 'its own host id range');
    } finally {
      for (const f of forks) await f.kill().catch(() => {});
      if (sid) await h.api('DELETE', `/snapshots/${sid}`);
      await src.kill();
    }
  });

test('a fork whose restore fails leaves nothing behind and the snapshot intact',
  async (t) => {
    if (skipWithoutBase(t)) return;
    const src = await Sandbox.create({ timeoutMs: 120_000 });
    let sid;
    let fork;
    try {
      const bg = await src.commands.run('sleep 1000', { background: true });
      const made = await h.api('POST', `/sandboxes/${src.sandboxId}/snapshots`);
      assert.equal(made.status, 201, made.text);
      sid = made.json.snapshotID;
      const images = join(snapDir(sid), 'checkpoint');
      const before = h.runtimeObjects();
      const live = await h.liveIds();
      const forkOnce = async () => {
        const r = await h.api('POST', `/snapshots/${sid}/fork`);
        assert.equal(r.status, 201, r.text);
        assert.equal(r.json.length, 1);
        return r.json[0];
      };
      // Two ways to fail: images hutchd refuses (its user namespace map),
      // and images CRIU cannot restore (a page image gone).
      const userns = readdirSync(images).find((n) => /^userns-\d+\.img$/.test(n));
      const pages = readdirSync(images).filter((n) => /^pages-\d+\.img$/.test(n));
      assert.ok(userns && pages.length, readdirSync(images).join(' '));
      const saved = new Map([userns, ...pages].map((n) => [n, readFileSync(join(images, n))]));
      const breakages = [
        [() => writeFileSync(join(images, userns), 'not an image'), /userns-\d+\.img/],
        [() => { for (const p of pages) rmSync(join(images, p)); }, /restor/],
      ];
      for (const [doBreak, why] of breakages) {
        doBreak();
        const one = await forkOnce();
        assert.equal(one.sandbox, undefined, 'no sandbox from broken images');
        assert.equal(one.error.code, 500);
        assert.match(one.error.message, why);
        assert.deepEqual(await h.liveIds(), live, 'no sandbox left');
        assert.deepEqual(h.runtimeObjects(), before, 'no runtime objects left');
        for (const [n, data] of saved) writeFileSync(join(images, n), data);
      }
      // The snapshot is whole again: a fork from it runs the source's process.
      const ok = await forkOnce();
      assert.ok(ok.sandbox, JSON.stringify(ok.error));
      fork = await Sandbox.connect(ok.sandbox.sandboxID);
      const sleeps = await fork.commands.run('pgrep -x sleep || true');
      assert.equal(sleeps.stdout.trim(), String(bg.pid));
    } finally {
      await fork?.kill();
      if (sid) await h.api('DELETE', `/snapshots/${sid}`);
      await src.kill();
    }
  });

test('kill -9 of hutchd during a fork: a whole fork or none, the snapshot intact',
  async (t) => {
    if (skipWithoutBase(t)) return;
    const seed = Number(process.env.HUTCH_CRASH_SEED ?? Math.floor(Math.random() * 2 ** 31));
    t.diagnostic(`fork crash seed ${seed} (HUTCH_CRASH_SEED=${seed} repeats it)`);
    const rand = rng(seed);
    const src = await Sandbox.create({ timeoutMs: 300_000 });
    let sid;
    try {
      const bg = await src.commands.run('sleep 1000', { background: true });
      const made = await h.api('POST', `/sandboxes/${src.sandboxId}/snapshots`);
      assert.equal(made.status, 201, made.text);
      sid = made.json.snapshotID;
      const t0 = Date.now();
      const first = await h.api('POST', `/snapshots/${sid}/fork`);
      const forkMs = Date.now() - t0;
      assert.ok(first.json[0].sandbox, first.text);
      await h.api('DELETE', `/sandboxes/${first.json[0].sandbox.sandboxID}`);
      const before = h.runtimeObjects();
      let whole = 0;
      for (let run = 0; run < 6; run++) {
        const delay = Math.floor(rand() * forkMs * 1.2);
        const pending = h.api('POST', `/snapshots/${sid}/fork`).catch(() => null);
        await new Promise((r) => setTimeout(r, delay));
        await h.crash();
        await pending;
        await h.restart();
        const others = (await h.liveIds()).filter((id) => id !== src.sandboxId);
        assert.ok(others.length <= 1, `run ${run} (${delay} ms): ${others}`);
        for (const id of others) {
          // A fork that finished is whole: the source's process runs in it.
          const f = await Sandbox.connect(id);
          const sleeps = await f.commands.run('pgrep -x sleep || true');
          assert.equal(sleeps.stdout.trim(), String(bg.pid), `run ${run}: ${id}`);
          await f.kill();
          whole++;
        }
        assert.deepEqual(h.runtimeObjects(), before, `run ${run} (${delay} ms): leftovers`);
        assert.equal((await h.api('GET', `/snapshots/${sid}`)).status, 200);
      }
      t.diagnostic(`${whole} of 6 forks finished before the kill (fork ${forkMs} ms)`);
      // The snapshot still forks, and the source runs on.
      const last = await h.api('POST', `/snapshots/${sid}/fork`);
      assert.ok(last.json[0].sandbox, last.text);
      await h.api('DELETE', `/sandboxes/${last.json[0].sandbox.sandboxID}`);
      const again = await Sandbox.connect(src.sandboxId);
      assert.equal((await again.commands.run(`kill -0 ${bg.pid} && echo alive`)).stdout,
        'alive\n');
    } finally {
      if (sid) await h.api('DELETE', `/snapshots/${sid}`);
      await Sandbox.kill(src.sandboxId);
    }
  });
