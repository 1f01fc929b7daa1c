// Starts a real hutch-agent on the host for one test file: a free port on
// 127.0.0.1 and a private folder holding its /etc/passwd, /etc/group and the
// users' homes, so nothing outside that folder is touched.
import { spawn } from 'node:child_process';
import { mkdtempSync, mkdirSync, writeFileSync, chmodSync, chownSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = fileURLToPath(new URL('.', import.meta.url));
export const agentBin = process.env.HUTCH_AGENT_BIN ??
  resolve(here, '../../../build/src/agent/hutch-agent');

function tryPort(port) {
  return new Promise((ok) => {
    const srv = createServer();
    srv.once('error', () => ok(null));
    srv.listen(port, '127.0.0.1', () => {
      const got = srv.address().port;
      srv.close(() => ok(got));
    });
  });
}

// A port for a server the test starts a moment later. Taken below the
// kernel's ephemeral range (32768-60999 by default): a port from that range
// can be handed to any outgoing connection in between, and a client socket
// on it makes the server's bind fail with EADDRINUSE (seen in CI).
export async function freePort() {
  for (let i = 0; i < 64; i++) {
    const port = await tryPort(20000 + Math.floor(Math.random() * 12000));
    if (port) return port;
  }
  const port = await tryPort(0);
  if (!port) throw new Error('no free port on 127.0.0.1');
  return port;
}

function makeRoot() {
  const root = mkdtempSync(join(tmpdir(), 'hutch-e2e-'));
  chmodSync(root, 0o755);
  const home = join(root, 'home', 'user');
  const rootHome = join(root, 'root');
  mkdirSync(join(root, 'etc'), { recursive: true });
  mkdirSync(home, { recursive: true });
  mkdirSync(rootHome, { recursive: true });
  chownSync(home, 1000, 1000);
  writeFileSync(join(root, 'etc', 'passwd'),
    `root:x:0:0:root:${rootHome}:/bin/bash\n` +
    `user:x:1000:1000:user:${home}:/bin/bash\n` +
    'nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n');
  writeFileSync(join(root, 'etc', 'group'),
    'root:x:0:\nuser:x:1000:\nsudo:x:27:user\nnogroup:x:65534:\n');
  return { root, home, rootHome };
}

async function waitHealthy(url, child, ms = 10000) {
  const until = Date.now() + ms;
  while (Date.now() < until) {
    if (child.exitCode !== null) throw new Error(`agent exited with ${child.exitCode}`);
    try {
      const res = await fetch(`${url}/health`);
      if (res.status === 204) return;
    } catch { /* not listening yet */ }
    await new Promise((r) => setTimeout(r, 20));
  }
  throw new Error(`agent at ${url} not healthy after ${ms} ms`);
}

// Options: accessToken, env (extra environment of the agent), args (extra flags),
// port (else a free one).
export async function startAgent(opts = {}) {
  const { root, home, rootHome } = makeRoot();
  const port = opts.port ?? await freePort();
  const url = `http://127.0.0.1:${port}`;
  const args = [`--listen=127.0.0.1`, `--port=${port}`, `--etc-dir=${join(root, 'etc')}`,
    '--default-user=user', ...(opts.args ?? [])];
  if (opts.accessToken) args.push(`--access-token=${opts.accessToken}`);
  const child = spawn(agentBin, args, {
    stdio: ['ignore', 'inherit', 'pipe'],
    env: { ...process.env, ...(opts.env ?? {}) },
  });
  let log = '';
  child.stderr.on('data', (d) => { log += d; if (log.length > 1 << 20) log = log.slice(-65536); });
  try {
    await waitHealthy(url, child);
  } catch (e) {
    // An agent that never became healthy (some tests expect that) must not
    // leave its folder or its process behind.
    if (child.exitCode === null) child.kill('SIGKILL');
    rmSync(root, { recursive: true, force: true });
    e.message += `\n${log}`;
    throw e;
  }
  return {
    url, port, root, home, rootHome, child,
    log: () => log,
    // Environment for the official SDK in debug mode, pointed at this agent.
    sdkEnv: { E2B_DEBUG: 'true', E2B_SANDBOX_URL: url, E2B_API_KEY: 'e2b_' + '0'.repeat(40) },
    async stop() {
      if (child.exitCode === null) {
        const exited = new Promise((r) => child.once('exit', r));
        child.kill('SIGTERM');
        const timer = setTimeout(() => child.kill('SIGKILL'), 5000);
        await exited;
        clearTimeout(timer);
      }
      rmSync(root, { recursive: true, force: true });
    },
  };
}

// The SDK reads its settings from process.env; set them for this agent.
export function useSdkEnv(agent) {
  Object.assign(process.env, agent.sdkEnv);
}
