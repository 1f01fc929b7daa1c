// What the persistence tests run inside sandboxes to tell a process that
// kept its memory from one started afresh, and a seedable generator for
// their random crash points.
import assert from 'node:assert/strict';

// A server holding a random token and a counter in memory only; "inc" bumps
// the counter, every reply names token, counter and pid. It listens on
// 0.0.0.0:7412 and on the sandbox's own eth0 address (7413), not 0.0.0.0.
export const memServerPy = `
import os, socket, threading
token = os.urandom(8).hex()
state = {'n': 0}
lock = threading.Lock()
def serve(conn):
    with conn, conn.makefile('rwb', buffering=0) as f:
        for line in f:
            with lock:
                if line.strip() == b'inc':
                    state['n'] += 1
                reply = 'token=%s n=%d pid=%d\\n' % (token, state['n'], os.getpid())
            f.write(reply.encode())
def listen(addr, port):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((addr, port))
    s.listen(16)
    while True:
        c, _ = s.accept()
        threading.Thread(target=serve, args=(c,), daemon=True).start()
# A second listener bound to the sandbox's own eth0 address, not 0.0.0.0.
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
u.connect(('10.255.255.1', 9))
threading.Thread(target=listen, args=(u.getsockname()[0], 7413), daemon=True).start()
listen('0.0.0.0', 7412)
`;

// One request on a fresh connection: "inc" or "get"; with "eth0", to the
// listener on the sandbox's own eth0 address (printed first).
export const memAskPy = `
import socket, sys
addr = ('127.0.0.1', 7412)
if sys.argv[2:] == ['eth0']:
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.connect(('10.255.255.1', 9))
    addr = (u.getsockname()[0], 7413)
    print(addr[0])
s = socket.create_connection(addr, timeout=5)
s.sendall(sys.argv[1].encode() + b'\\n')
print(s.makefile().readline().strip())
`;

// One of the server's replies: { token, n, pid }.
export function parseMemReply(line) {
  const m = /token=([0-9a-f]+) n=(\d+) pid=(\d+)/.exec(line);
  assert.ok(m, `a server reply: ${JSON.stringify(line)}`);
  return { token: m[1], n: Number(m[2]), pid: Number(m[3]) };
}

// The server's answer, asked from inside the sandbox (memAskPy must be at
// /home/user/mem-ask.py).
export async function memAsk(sb, what, via = '') {
  const r = await sb.commands.run(`python3 /home/user/mem-ask.py ${what} ${via}`);
  return parseMemReply(r.stdout);
}

// The sandbox's eth0 address, as its processes see it.
export async function eth0Address(sb) {
  return (await sb.commands.run('python3 /home/user/mem-ask.py get eth0')).stdout
    .split('\n')[0];
}

// mulberry32: small, seedable, good enough to spread delays.
export function rng(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
