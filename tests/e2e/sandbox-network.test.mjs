// Egress rules through the official SDK, with their effect on real traffic:
// sandbox.updateNetwork (PUT /sandboxes/{id}/network) on a running sandbox
// changes what its next connection reaches (allowOut beating denyOut as
// E2B has it, private ranges closed unless allowed, internet off), and
// hutchd's egress-conn-max setting caps a sandbox's open connections.
//
// The "outside" is a network namespace this file makes (root, as every
// runtime test): a veth from the host (203.0.113.1) to 203.0.113.2 and
// 203.0.113.130 (one per /25) and the private 192.168.213.2 (by a /32
// route), with an echo listener. Nothing leaves the machine; everything is
// removed afterwards.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { readdirSync } from 'node:fs';
import { connect } from 'node:net';
import { ALL_TRAFFIC, Sandbox } from 'e2b';
import { requireBase, startHutchd, useEnv } from './lib/hutchd.mjs';

const ns = 'hutche2e-net';
const hostIf = 'e2enet0'; // not the sandbox veth prefix "hte"
const A = '203.0.113.2';
const B = '203.0.113.130';
const PRIV = '192.168.213.2';
const PORT = 9100;
const CAP = 4;

let h;
let restore;
let listener;
let netUp = false;
// The first `ip netns add` on a machine makes /run/netns a mount of its own
// (a shared bind onto itself): the teardown removes it again if it made it.
let netnsDirWasMounted = true;
const netnsDirMounted = () => spawnSync('mountpoint', ['-q', '/run/netns']).status === 0;

function ip(...args) {
  const r = spawnSync('ip', args, { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`ip ${args.join(' ')}: ${r.stderr}`);
  return r.stdout;
}

function tearDownNet() {
  listener?.kill('SIGKILL');
  // `ip netns exec` may leave the server as another process in the namespace.
  const pids = spawnSync('ip', ['netns', 'pids', ns], { encoding: 'utf8' }).stdout ?? '';
  for (const p of pids.split('\n').filter(Boolean)) {
    try { process.kill(Number(p), 'SIGKILL'); } catch { /* already gone */ }
  }
  spawnSync('ip', ['link', 'del', hostIf], { stdio: 'ignore' });
  spawnSync('ip', ['netns', 'del', ns], { stdio: 'ignore' });
  if (!netnsDirWasMounted && netnsDirMounted() && readdirSync('/run/netns').length === 0) {
    spawnSync('umount', ['/run/netns'], { stdio: 'inherit' });
  }
}

async function setUpNet() {
  // A /32 of ours must not take over an address the host already routes.
  const routed = ip('-4', 'route', 'show', 'table', 'all', 'to', 'match', PRIV)
    .split('\n').filter((l) => l && !/^(default|local|broadcast) /.test(l));
  if (routed.length) throw new Error(`the host routes ${PRIV} already: ${routed.join('; ')}`);
  netnsDirWasMounted = netnsDirMounted();
  tearDownNet(); // leftovers of an interrupted run
  netUp = true;
  ip('netns', 'add', ns);
  ip('link', 'add', hostIf, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', ns);
  ip('addr', 'add', '203.0.113.1/24', 'dev', hostIf);
  ip('link', 'set', hostIf, 'up');
  ip('-n', ns, 'link', 'set', 'lo', 'up');
  for (const a of [`${A}/24`, `${B}/24`, `${PRIV}/32`]) ip('-n', ns, 'addr', 'add', a, 'dev', 'eth0');
  ip('-n', ns, 'link', 'set', 'eth0', 'up');
  ip('route', 'add', `${PRIV}/32`, 'dev', hostIf);
  const echo = `require('net').createServer((s) => { s.on('error', () => {}); s.pipe(s); })
    .listen(${PORT}, '0.0.0.0', () => console.log('listening'));`;
  listener = spawn('ip', ['netns', 'exec', ns, process.execPath, '-e', echo],
    { stdio: ['ignore', 'pipe', 'inherit'] });
  await new Promise((ok, fail) => {
    const t = setTimeout(() => fail(new Error('echo listener not up in 5 s')), 5000);
    listener.stdout.on('data', (d) => { if (/listening/.test(d)) { clearTimeout(t); ok(); } });
    listener.once('exit', (c) => { clearTimeout(t); fail(new Error(`listener exited ${c}`)); });
  });
}

before(async (t) => {
  if (!requireBase(t)) return;
  await setUpNet();
  h = await startHutchd({ runtime: true, args: [`--egress-conn-max=${CAP}`] });
  restore = useEnv(h.sdkEnv);
});
after(async () => {
  restore?.();
  await h?.stop();
  if (netUp) tearDownNet();
});

// The host's own connect: the control that a peer answers at all.
function hostReaches(addr) {
  return new Promise((ok) => {
    const s = connect({ host: addr, port: PORT, timeout: 2000 }, () => { s.destroy(); ok(true); });
    s.on('error', () => ok(false));
    s.on('timeout', () => { s.destroy(); ok(false); });
  });
}

function skipWithoutBase(t) { return !h && (t.skip('no base template (see the message above)'), true); }

// Connects to each address once (one byte echoed back): {ip: [result, ms]}.
const reachPy = `
import json, socket, sys, time
port, out = int(sys.argv[1]), {}
for ip in sys.argv[2:]:
    t = time.monotonic()
    try:
        s = socket.create_connection((ip, port), timeout=3)
        s.sendall(b"x")
        r = "ok" if s.recv(1) == b"x" else "no echo"
        s.close()
    except OSError as e:
        r = type(e).__name__
    out[ip] = [r, round((time.monotonic() - t) * 1000, 2)]
print(json.dumps(out))
`;

async function reach(sb, ...ips) {
  const r = await sb.commands.run(`python3 /tmp/reach.py ${PORT} ${ips.join(' ')}`);
  return JSON.parse(r.stdout);
}

// Reachable, or refused at once (a reset, not a timeout).
function expectReach(got, want, what) {
  for (const [addr, ok] of Object.entries(want)) {
    const [res, ms] = got[addr];
    if (ok) assert.equal(res, 'ok', `${what}: ${addr} should be reachable, got ${res}`);
    else {
      assert.equal(res, 'ConnectionRefusedError', `${what}: ${addr} should be refused, got ${res}`);
      assert.ok(ms < 1000, `${what}: ${addr} refused only after ${ms} ms`);
    }
  }
}

test('updateNetwork changes what a running sandbox reaches, from its next connection', async (t) => {
  if (skipWithoutBase(t)) return;
  const sb = await Sandbox.create({ timeoutMs: 120_000 });
  try {
    await sb.files.write('/tmp/reach.py', reachPy);
    for (const addr of [A, B, PRIV]) assert.ok(await hostReaches(addr), `host to ${addr}`);
    expectReach(await reach(sb, A, B, PRIV), { [A]: true, [B]: true, [PRIV]: false },
      'default rules');

    await sb.updateNetwork({ denyOut: ['203.0.113.128/25'] });
    expectReach(await reach(sb, A, B), { [A]: true, [B]: false }, 'denyOut the upper /25');

    // What the SDK builds for "only these": allowOut beats ALL_TRAFFIC in denyOut.
    await sb.updateNetwork({ allowOut: [B], denyOut: [ALL_TRAFFIC] });
    expectReach(await reach(sb, A, B), { [A]: false, [B]: true }, 'allowOut B, denyOut all');

    await sb.updateNetwork({ allowInternetAccess: false });
    expectReach(await reach(sb, A, B), { [A]: false, [B]: false }, 'internet off');

    // A private range is closed by default and open once allowed.
    await sb.updateNetwork({ allowOut: ['192.168.0.0/16'], allowInternetAccess: false });
    expectReach(await reach(sb, A, PRIV), { [A]: false, [PRIV]: true },
      'allowOut 192.168/16, internet off');

    const info = await h.api('GET', `/sandboxes/${sb.sandboxId}`);
    assert.deepEqual(info.json.network.allowOut, ['192.168.0.0/16']);
    assert.deepEqual(info.json.network.denyOut, ['0.0.0.0/0']);

    await sb.updateNetwork({});
    expectReach(await reach(sb, A, B, PRIV), { [A]: true, [B]: true, [PRIV]: false },
      'rules cleared');
  } finally {
    await sb.kill();
  }
});

// Holds CAP connections, tries one more, checks the held ones still echo,
// ends one the orderly way and tries again (a few times: the kernel drops
// a closed flow from the count lazily).
const capPy = `
import json, socket, sys, time
ip, port, cap = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
def attempt():
    t = time.monotonic()
    try:
        s = socket.create_connection((ip, port), timeout=3)
        return s, "ok", round((time.monotonic() - t) * 1000, 2)
    except OSError as e:
        return None, type(e).__name__, round((time.monotonic() - t) * 1000, 2)
held = []
for _ in range(cap):
    s, r, ms = attempt()
    if s: held.append(s)
_, over, over_ms = attempt()
echo = 0
for s in held:
    s.sendall(b"e")
    echo += s.recv(1) == b"e"
held[0].shutdown(socket.SHUT_WR)
held[0].recv(1)
held.pop(0).close()
again, retries = None, 0
for retries in range(20):
    again, r, ms = attempt()
    if again: break
    time.sleep(0.05)
print(json.dumps({"held": len(held) + 1 if again else len(held), "over": over,
                  "over_ms": over_ms, "echo": echo, "freed": r, "retries": retries}))
`;

test('egress-conn-max caps the connections a sandbox holds open; closing one frees a slot', async (t) => {
  if (skipWithoutBase(t)) return;
  const sb = await Sandbox.create({ timeoutMs: 120_000 });
  try {
    await sb.files.write('/tmp/cap.py', capPy);
    const r = JSON.parse((await sb.commands.run(`python3 /tmp/cap.py ${A} ${PORT} ${CAP}`)).stdout);
    assert.equal(r.echo, CAP, `all ${CAP} connections under the cap work: ${JSON.stringify(r)}`);
    assert.equal(r.over, 'ConnectionRefusedError', `connection ${CAP + 1}: ${JSON.stringify(r)}`);
    assert.ok(r.over_ms < 1000, `refused only after ${r.over_ms} ms`);
    assert.equal(r.freed, 'ok', `a slot after closing one: ${JSON.stringify(r)}`);
    assert.equal(r.held, CAP);
    t.diagnostic(`connection ${CAP + 1} refused in ${r.over_ms} ms; a slot free again after ` +
      `${r.retries} retries of 50 ms`);
  } finally {
    await sb.kill();
  }
});
