// Pause with memory of a sandbox whose TCP connections are half-closed.
// A python server inside the sandbox holds three connections from clients
// in the same sandbox, each of which has sent its request and shut down its
// write side, so the server has read EOF on all three:
//   A: the server has not answered yet: its socket is in CLOSE_WAIT, the
//      client's (still waiting for the answer) in FIN_WAIT2;
//   C: the client has closed its socket altogether and exited: CLOSE_WAIT
//      on the server's side, nothing of the client's left to restore;
//   D: the server answered with more than the client (not reading yet)
//      takes, then shut down its own side: LAST_ACK with its data and FIN
//      still queued, the client's socket in FIN_WAIT2 with a full queue;
//   E: the other way round: the client sent more than the server (not
//      reading) takes, then shut down its side: FIN_WAIT1 with its FIN
//      queued behind the data, the server's socket ESTABLISHED.
// CRIU restores the peer's FIN by sending a crafted packet from a raw
// socket, which the restored tasks may not open in the sandbox's netns
// (owned by the host); CRIU patch 0004 sends it from its usernsd helper.
// Two pause/resume cycles, then the same server process answers A and C,
// whose sockets read EOF as before, D's client reads all its data and the
// server's FIN, and the server reads all of E's data and its FIN.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { Sandbox } from 'e2b';
import { requireBase, startHutchd, useEnv } from './lib/hutchd.mjs';

let h;
let restore;
before(async (t) => {
  if (!requireBase(t)) return;
  h = await startHutchd({ runtime: true });
  restore = useEnv(h.sdkEnv);
});
after(async () => { restore?.(); await h?.stop(); });

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const PORT = 7421;
// include/net/tcp_states.h
const TCP_STATE = { ESTABLISHED: 1, CLOSE_WAIT: 8, LAST_ACK: 9 };

// One thread per connection. The first line says what the peer wants:
// "hello <name>" is a request, read to its EOF (the peer's FIN) and kept
// open, except E's, which is answered "ok" and then not read at all;
// "status" and "finish" are the test's own calls, answered with JSON.
// The token and the kept sockets exist in this process's memory only.
const serverPy = `
import hashlib, json, os, socket, threading, time
token = os.urandom(8).hex()
held = {}
lock = threading.Lock()

def read_to_eof(conn, buf):
    while True:
        b = conn.recv(65536)
        if not b:
            return buf
        buf += b

def tcp_state(conn):
    return conn.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)[0]

# Sends from a random blob until the peer's window and our buffer are full;
# a pause, then again, so that no ACK in flight leaves room for the FIN.
def fill(conn):  # (the same in client E)
    blob = os.urandom(4 << 20)
    sent = 0
    conn.setblocking(False)
    for _ in range(2):
        try:
            while sent < len(blob):
                sent += conn.send(blob[sent:sent + 65536])
        except BlockingIOError:
            pass
        time.sleep(0.3)
    assert sent < len(blob), 'the peer took the whole blob'
    return sent, hashlib.sha256(blob[:sent]).hexdigest()

def status():
    with lock:
        return {'token': token, 'pid': os.getpid(),
                'held': {n: {'port': e['port'], 'data': e['data'],
                             'state': tcp_state(e['conn']),
                             'sent': e.get('sent'), 'sha': e.get('sha')}
                         for n, e in held.items()}}

# Each kept socket must read EOF again (the FIN restored), then the server
# answers A and C and closes all of them. E's is read to its end first.
def read_e(c):
    c.setblocking(True)
    c.settimeout(10)
    h = hashlib.sha256()
    n = 0
    try:
        while True:
            b = c.recv(65536)
            if not b:
                return {'eof': True, 'got': n, 'sha': h.hexdigest(), 'closed': True}
            n += len(b)
            h.update(b)
    except OSError as ex:
        return {'eof': False, 'got': n, 'read_error': repr(ex)}

def finish():
    out = {}
    with lock:
        for n, e in held.items():
            c = e['conn']
            if n == 'E':
                out[n] = read_e(c)
                c.close()
                continue
            r = {}
            try:
                c.setblocking(False)
                r['read'] = c.recv(16).decode()
                r['eof'] = r['read'] == ''
            except OSError as ex:
                r['eof'] = False
                r['read_error'] = repr(ex)
            try:
                c.setblocking(True)
                if n != 'D':
                    c.sendall(('answer token=%s got=%s' % (token, e['data'])).encode())
                c.close()
                r['closed'] = True
            except OSError as ex:
                r['closed'] = False
                r['error'] = repr(ex)
            out[n] = r
        held.clear()
    return out

def serve(conn):
    buf = b''
    while b'\\n' not in buf:
        b = conn.recv(65536)
        if not b:
            break
        buf += b
    line = buf.split(b'\\n', 1)[0].decode()
    if line in ('status', 'finish'):
        reply = status() if line == 'status' else finish()
        conn.sendall(json.dumps(reply).encode())
        conn.close()
        return
    name = line.split()[1]
    port = conn.getpeername()[1]
    if name == 'E':
        conn.sendall(b'ok\\n')
        with lock:
            held[name] = {'conn': conn, 'port': port, 'data': buf.decode()}
        return
    entry = {'conn': conn, 'port': port, 'data': read_to_eof(conn, buf).decode()}
    if name == 'D':
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)
        entry['sent'], entry['sha'] = fill(conn)
        conn.shutdown(socket.SHUT_WR)
    with lock:
        held[name] = entry

s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(('127.0.0.1', ${PORT}))
s.listen(16)
while True:
    c, _ = s.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
`;

// A: sends its request, shuts down its write side, waits for the answer.
const clientAPy = `
import os, socket
s = socket.create_connection(('127.0.0.1', ${PORT}))
open('/tmp/fin-A.pid', 'w').write('%d %d' % (os.getpid(), s.getsockname()[1]))
s.sendall(b'hello A\\nthe body of A\\n')
s.shutdown(socket.SHUT_WR)
got = b''
while True:
    b = s.recv(65536)
    if not b:
        break
    got += b
open('/tmp/fin-A.out', 'w').write('%d %d %s' % (os.getpid(), s.getsockname()[1],
                                                 got.decode()))
`;

// C: sends its request and closes the socket at once.
const clientCPy = `
import socket
s = socket.create_connection(('127.0.0.1', ${PORT}))
s.sendall(b'hello C\\nthe body of C\\n')
s.close()
`;

// D: a small receive buffer, its request, its write side shut down; reads
// only once /tmp/fin-D.go exists, to the end, and records what it got.
const clientDPy = `
import hashlib, os, socket, time
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32768)
s.connect(('127.0.0.1', ${PORT}))
open('/tmp/fin-D.pid', 'w').write('%d %d' % (os.getpid(), s.getsockname()[1]))
s.sendall(b'hello D\\n')
s.shutdown(socket.SHUT_WR)
while not os.path.exists('/tmp/fin-D.go'):
    time.sleep(0.1)
h = hashlib.sha256()
n = 0
while True:
    b = s.recv(65536)
    if not b:
        break
    n += len(b)
    h.update(b)
open('/tmp/fin-D.out', 'w').write('%d %d %d %s' % (os.getpid(), s.getsockname()[1], n,
                                                    h.hexdigest()))
`;

// E: a small send buffer; sends more than the server takes (it does not
// read), shuts down its write side with data still queued and waits until
// the server closes.
const clientEPy = `
import hashlib, os, socket, time
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 32768)
s.connect(('127.0.0.1', ${PORT}))
s.sendall(b'hello E\\n')
assert s.recv(3) == b'ok\\n'
blob = os.urandom(4 << 20)
sent = 0
s.setblocking(False)
for _ in range(2):
    try:
        while sent < len(blob):
            sent += s.send(blob[sent:sent + 65536])
    except BlockingIOError:
        pass
    time.sleep(0.3)
assert sent < len(blob), 'the server took the whole blob'
s.shutdown(socket.SHUT_WR)
open('/tmp/fin-E.sent', 'w').write('%d %d %d %s' % (os.getpid(), s.getsockname()[1], sent,
                                                     hashlib.sha256(blob[:sent]).hexdigest()))
s.setblocking(True)
while s.recv(65536):
    pass
open('/tmp/fin-E.done', 'w').write('closed by the server')
`;

const askPy = `
import socket, sys
s = socket.create_connection(('127.0.0.1', ${PORT}), timeout=10)
s.sendall(sys.argv[1].encode() + b'\\n')
out = b''
while True:
    b = s.recv(65536)
    if not b:
        break
    out += b
print(out.decode())
`;

async function ask(sb, what) {
  const r = await sb.commands.run(`python3 /home/user/fin-ask.py ${what}`);
  return JSON.parse(r.stdout);
}

// Polls probe until it returns something; on timeout the failure shows what
// the python processes printed.
async function waitFor(sb, what, probe, ms = 15_000) {
  const end = Date.now() + ms;
  for (;;) {
    const v = await probe();
    if (v) return v;
    if (Date.now() > end) {
      const r = await sb.commands.run('tail -n 20 /tmp/fin-*.out /tmp/fin-*.err || true');
      assert.fail(`${what} within ${ms} ms; the scripts' output:\n${r.stdout}`);
    }
    await sleep(200);
  }
}

const exists = async (sb, path) =>
  (await sb.commands.run(`test -e ${path} && echo y || echo n`)).stdout === 'y\n';

// The sandbox's TCP sockets as `ss -tan` lists them: "local peer" -> state.
async function tcpTable(sb) {
  const r = await sb.commands.run('ss -tanH');
  const table = new Map();
  for (const line of r.stdout.split('\n').filter(Boolean)) {
    const [state, , , local, peer] = line.trim().split(/\s+/);
    table.set(`${local} ${peer}`, state);
  }
  return { table, text: r.stdout };
}

const NAMES = ['A', 'C', 'D', 'E'];
const srv = `127.0.0.1:${PORT}`;
const cli = (port) => `127.0.0.1:${port}`;

// Both ends of A, D and E and the server's end of C, as ss shows them.
async function checkStates(sb, ports, when) {
  const { table, text } = await tcpTable(sb);
  const want = [
    [`${srv} ${cli(ports.A)}`, 'CLOSE-WAIT'],
    [`${cli(ports.A)} ${srv}`, 'FIN-WAIT-2'],
    [`${srv} ${cli(ports.C)}`, 'CLOSE-WAIT'],
    [`${srv} ${cli(ports.D)}`, 'LAST-ACK'],
    [`${cli(ports.D)} ${srv}`, 'FIN-WAIT-2'],
    [`${srv} ${cli(ports.E)}`, 'ESTAB'],
    [`${cli(ports.E)} ${srv}`, 'FIN-WAIT-1'],
  ];
  for (const [pair, state] of want)
    assert.equal(table.get(pair), state, `${pair} ${when}; ss -tan:\n${text}`);
}

// The server's view of its own kept sockets (TCP_INFO), and its identity.
function checkStatus(st, first, when) {
  assert.equal(st.token, first.token, `the server's in-memory token ${when}`);
  assert.equal(st.pid, first.pid, `the same server process ${when}`);
  assert.deepEqual(Object.keys(st.held).sort(), NAMES);
  for (const n of NAMES) {
    assert.equal(st.held[n].port, first.held[n].port, `${n}: the same connection ${when}`);
    assert.equal(st.held[n].data, first.held[n].data, `${n}: its request ${when}`);
  }
  assert.equal(st.held.A.state, TCP_STATE.CLOSE_WAIT, `A in CLOSE_WAIT ${when}`);
  assert.equal(st.held.C.state, TCP_STATE.CLOSE_WAIT, `C in CLOSE_WAIT ${when}`);
  assert.equal(st.held.D.state, TCP_STATE.LAST_ACK, `D in LAST_ACK ${when}`);
  assert.equal(st.held.E.state, TCP_STATE.ESTABLISHED, `E's server end ${when}`);
}

test('half-closed TCP sockets (CLOSE_WAIT, FIN_WAIT1/2, LAST_ACK) survive pauses with memory',
  async (t) => {
    if (!h) return t.skip('no base template (see the message above)');
    const sb = await Sandbox.create({ timeoutMs: 300_000 });
    const id = sb.sandboxId;
    try {
      await sb.files.write('/home/user/fin-server.py', serverPy);
      await sb.files.write('/home/user/fin-a.py', clientAPy);
      await sb.files.write('/home/user/fin-c.py', clientCPy);
      await sb.files.write('/home/user/fin-d.py', clientDPy);
      await sb.files.write('/home/user/fin-e.py', clientEPy);
      await sb.files.write('/home/user/fin-ask.py', askPy);
      // Detached from the command stream: a pause closes proxied streams.
      const detached = (file, out) => sb.commands.run(`setsid nohup python3 ` +
        `/home/user/${file} >/tmp/${out} 2>&1 </dev/null &`);
      await detached('fin-server.py', 'fin-server.out');
      await waitFor(sb, 'the server listening', async () =>
        (await tcpTable(sb)).table.get(`${srv} 0.0.0.0:*`) === 'LISTEN');
      await detached('fin-a.py', 'fin-a.err');
      await sb.commands.run('python3 /home/user/fin-c.py');
      await detached('fin-d.py', 'fin-d.err');
      await detached('fin-e.py', 'fin-e.err');

      const first = await waitFor(sb, 'four half-closed connections', async () => {
        const st = await ask(sb, 'status');
        return NAMES.every((n) => st.held[n]) && await exists(sb, '/tmp/fin-E.sent') &&
          st;
      });
      assert.match(first.held.A.data, /^hello A\nthe body of A\n$/);
      assert.ok(first.held.D.sent > 0, 'D got an answer larger than it takes');
      const [clientA] = (await sb.files.read('/tmp/fin-A.pid')).split(' ').map(Number);
      const [clientD] = (await sb.files.read('/tmp/fin-D.pid')).split(' ').map(Number);
      const eSent = (await sb.files.read('/tmp/fin-E.sent')).split(' ');
      const [clientE] = eSent.map(Number);
      const ports = Object.fromEntries(NAMES.map((n) => [n, first.held[n].port]));
      checkStatus(first, first, 'before the pause');
      await checkStates(sb, ports, 'before the pause');

      let cur = sb;
      for (let cycle = 1; cycle <= 2; cycle++) {
        assert.equal(await cur.pause(), true, `pause ${cycle}`);
        assert.equal((await Sandbox.getInfo(id)).state, 'paused');
        cur = await Sandbox.connect(id, { timeoutMs: 300_000 });
        assert.equal((await Sandbox.getInfo(id)).state, 'running', `resume ${cycle}`);
        checkStatus(await ask(cur, 'status'), first, `after resume ${cycle}`);
        await checkStates(cur, ports, `after resume ${cycle}`);
        const ps = await cur.commands.run(`ps -o pid= -p ${clientA},${clientD},${clientE}`);
        assert.deepEqual(ps.stdout.trim().split(/\s+/).map(Number).sort(),
          [clientA, clientD, clientE].sort(), 'the waiting clients are the same processes');
      }

      // The server reads EOF on every kept socket, answers, closes.
      const fin = await ask(cur, 'finish');
      for (const n of NAMES) {
        assert.equal(fin[n].eof, true, `${n} reads EOF: ${JSON.stringify(fin[n])}`);
        assert.equal(fin[n].closed, true, `${n} answered and closed: ` +
          JSON.stringify(fin[n]));
      }
      assert.equal([clientE, ports.E, fin.E.got, fin.E.sha].join(' '), eSent.join(' '),
        'E: the server read every byte the client queued, in order, then its FIN');
      await waitFor(cur, 'client E saw the server close', () => exists(cur, '/tmp/fin-E.done'));
      const outA = await waitFor(cur, 'client A got its answer', async () =>
        await exists(cur, '/tmp/fin-A.out') && cur.files.read('/tmp/fin-A.out'));
      assert.equal(outA, `${clientA} ${ports.A} answer token=${first.token} ` +
        `got=${first.held.A.data}`);

      await cur.commands.run('touch /tmp/fin-D.go');
      const outD = await waitFor(cur, 'client D read to the end', async () =>
        await exists(cur, '/tmp/fin-D.out') && cur.files.read('/tmp/fin-D.out'));
      assert.equal(outD, `${clientD} ${ports.D} ${first.held.D.sent} ${first.held.D.sha}`,
        'D: every byte the server queued, in order, then its FIN');

      // Nothing of the three is left half-closed.
      await waitFor(cur, 'no half-closed socket left', async () => {
        const { table } = await tcpTable(cur);
        return [...table.entries()].every(([pair, state]) => !pair.includes(srv) ||
          ['LISTEN', 'TIME-WAIT'].includes(state));
      });
      const errs = await cur.commands.run('cat /tmp/fin-server.out /tmp/fin-a.err ' +
        '/tmp/fin-d.err /tmp/fin-e.err');
      assert.equal(errs.stdout, '', 'no python errors');
    } finally {
      await Sandbox.kill(id).catch(() => {});
    }
  });
