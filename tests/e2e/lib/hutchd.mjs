// Starts a real hutchd for one test file: free ports on 127.0.0.1, a temporary
// data and run dir, readiness taken from the export lines it prints, and a
// stop() that kills every sandbox it made, sends SIGTERM (then SIGKILL) and
// removes the temporary dirs. With runtime: true it makes real sandboxes from
// the templates in HUTCH_TEMPLATE_DIR (default /var/lib/hutch/templates, the
// shared base built by scripts/build-base), in a cgroup and firewall table of
// its own so that it never touches another runtime's sandboxes.
import { spawn, spawnSync } from 'node:child_process';
import {
  appendFileSync, chmodSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync,
  rmdirSync, rmSync, symlinkSync, writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { freePort } from './agent.mjs';

const here = fileURLToPath(new URL('.', import.meta.url));
export const hutchdBin = process.env.HUTCHD_BIN ?? process.env.HUTCH_HUTCHD_BIN ??
  resolve(here, '../../../build/src/hutchd/hutchd');
export const templateDir = process.env.HUTCH_TEMPLATE_DIR ?? '/var/lib/hutch/templates';

// Tests that need real sandboxes call this first. The base template is a
// prerequisite the test command builds (scripts/build-base); it is only
// skipped when HUTCH_ALLOW_NO_BASE says so, never silently.
export function requireBase(t) {
  const marker = join(templateDir, 'base', 'complete');
  if (existsSync(marker)) return true;
  const msg = `base template missing (${marker}); build it with scripts/build-base`;
  if (process.env.HUTCH_ALLOW_NO_BASE) {
    const why = `${msg} (skipped: HUTCH_ALLOW_NO_BASE is set)`;
    // before() hooks have no skip(): the tests then skip themselves.
    if (typeof t?.skip === 'function') t.skip(why);
    process.stderr.write(`# ${why}\n`);
    return false;
  }
  throw new Error(msg);
}

// A template folder of a test's own: the shared base by symlink, and each
// of templates ({ name, json, complete }) on the base's root file system
// with that template.json text ("complete: false" leaves the marker out).
// The caller removes the folder.
export function templatesBesideBase(templates) {
  const dir = mkdtempSync(join(tmpdir(), 'hutch-tpl-e2e-'));
  symlinkSync(join(templateDir, 'base'), join(dir, 'base'));
  for (const { name, json, complete = true } of templates) {
    mkdirSync(join(dir, name));
    symlinkSync(join(templateDir, 'base', 'rootfs'), join(dir, name, 'rootfs'));
    writeFileSync(join(dir, name, 'template.json'), json);
    if (complete) writeFileSync(join(dir, name, 'complete'), '');
  }
  return dir;
}

function parseExports(text) {
  const env = {};
  for (const line of text.split('\n')) {
    const m = /^export (E2B_[A-Z_]+)=(.*)$/.exec(line);
    if (m) env[m[1]] = m[2];
  }
  return env;
}

function launch(args, env) {
  const child = spawn(hutchdBin, args, {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, ...env },
  });
  const state = { child, out: '', log: '' };
  child.stderr.on('data', (d) => {
    state.log += d;
    if (state.log.length > 1 << 20) state.log = state.log.slice(-65536);
  });
  state.ready = new Promise((ok, fail) => {
    const timer = setTimeout(() => fail(new Error(`hutchd not ready in 15 s:\n${state.log}`)),
      15000);
    child.stdout.on('data', (d) => {
      state.out += d;
      if (state.out.split('\n').length > 3) { clearTimeout(timer); ok(); }
    });
    child.once('exit', (code, sig) => {
      clearTimeout(timer);
      fail(new Error(`hutchd exited with ${code ?? sig}:\n${state.log}`));
    });
  });
  state.ready.catch(() => {});
  return state;
}

// A sandbox that could not be removed still has its disk mounted under the
// data dir; deleting through a mount would reach into it, so it is left.
function removeUnlessMounted(dir) {
  const mounts = readFileSync('/proc/self/mountinfo', 'utf8').split('\n')
    .map((l) => l.split(' ')[4]).filter((m) => m && m.startsWith(`${dir}/`));
  if (mounts.length) {
    process.stderr.write(`hutchd e2e: left ${dir}: still mounted: ${mounts.join(' ')}\n`);
    return;
  }
  rmSync(dir, { recursive: true, force: true });
}

// hutchd leaves its cgroup subtree and nftables table in place when it stops
// (its sandboxes outlive it by design). Once the test's sandboxes are gone,
// both are empty and are removed here, so a test run leaves nothing behind.
export const cgroupName = 'hutche2e';
function removeRuntimeRoots() {
  const roots = ['/sys/fs/cgroup', '/sys/fs/cgroup/unified'];
  try {
    for (const d of readdirSync('/sys/fs/cgroup')) roots.push(join('/sys/fs/cgroup', d));
  } catch { /* no cgroup fs: nothing to remove */ }
  for (const r of roots) {
    const dir = join(r, cgroupName);
    if (!existsSync(dir)) continue;
    try { rmdirSync(dir); } catch (e) {
      process.stderr.write(`hutchd e2e: cannot remove ${dir}: ${e.code}\n`);
    }
  }
  spawnSync('nft', ['delete', 'table', 'inet', cgroupName], { stdio: 'ignore' });
}

async function terminate(child, signal = 'SIGTERM') {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise((r) => child.once('exit', r));
  child.kill(signal);
  const t = setTimeout(() => child.kill('SIGKILL'), 5000);
  await exited;
  clearTimeout(t);
}

// Options: env (extra HUTCH_* settings), args (extra flags), runtime (default
// false: the control plane runs without sandboxes), templateDir (instead of
// the shared one), warmPool (sandboxes kept started ahead; default 0 so that
// the runtime holds exactly the listed sandboxes).
export async function startHutchd(opts = {}) {
  const dir = mkdtempSync(join(tmpdir(), 'hutchd-e2e-'));
  // The runtime mounts under the run dir from inside the sandbox's user
  // namespace, whose root is an unprivileged host id: it must traverse.
  chmodSync(dir, 0o755);
  const apiPort = await freePort();
  const proxyPort = await freePort();
  const runtimeArgs = opts.runtime ?
    [`--template-dir=${opts.templateDir ?? templateDir}`, `--cgroup-name=${cgroupName}`,
      '--veth-prefix=hte', '--net-cidr=10.214.0.0/16', '--pool-size=2',
      `--warm-pool=${opts.warmPool ?? 0}`] :
    ['--no-runtime'];
  // opts.dataDir: a data folder of the caller's (say on a small file
  // system of its own); the caller removes it.
  const args = [`--data-dir=${opts.dataDir ?? join(dir, 'data')}`,
    `--run-dir=${join(dir, 'run')}`,
    '--api-listen=127.0.0.1', `--api-port=${apiPort}`, `--proxy-port=${proxyPort}`,
    ...runtimeArgs, ...(opts.args ?? [])];
  let cur = launch(args, opts.env ?? {});
  try {
    await cur.ready;
  } catch (e) {
    rmSync(dir, { recursive: true, force: true });
    throw e;
  }
  const exports = parseExports(cur.out);
  const h = {
    dir, apiPort, proxyPort,
    get child() { return cur.child; },
    stdout: () => cur.out,
    log: () => cur.log,
    // What the runtime holds for this hutchd: sandbox state dirs in the run
    // dir, disk folders in the data dir, and sandbox cgroups.
    runtimeObjects() {
      const list = (d) => { try { return readdirSync(d); } catch { return []; } };
      return {
        run: list(join(dir, 'run')).filter((n) => n !== 'mnt').sort(),
        disks: list(join(dir, 'data', 'sandboxes')).sort(),
        cgroups: list(`/sys/fs/cgroup/pids/${cgroupName}`)
          .filter((n) => /^[a-z0-9]+$/.test(n) && !n.startsWith('pids') &&
            n !== 'tasks').sort(),
      };
    },
    apiUrl: exports.E2B_API_URL,
    apiKey: exports.E2B_API_KEY,
    // Environment for the official SDK talking to this hutchd.
    sdkEnv: { E2B_API_URL: exports.E2B_API_URL, E2B_SANDBOX_URL: exports.E2B_SANDBOX_URL,
      E2B_API_KEY: exports.E2B_API_KEY },
    // A raw API call with this hutchd's key.
    async api(method, path, body) {
      const res = await fetch(`${exports.E2B_API_URL}${path}`, {
        method,
        headers: { 'X-API-Key': exports.E2B_API_KEY, 'Content-Type': 'application/json' },
        body: body === undefined ? undefined : JSON.stringify(body),
      });
      const text = await res.text();
      let json = null;
      try { json = text ? JSON.parse(text) : null; } catch { json = null; }
      return { status: res.status, headers: res.headers, json, text };
    },
    // Every sandbox the store knows as live (all pages).
    async liveIds() {
      const ids = [];
      let token = '';
      for (;;) {
        const q = `?limit=100${token ? `&nextToken=${encodeURIComponent(token)}` : ''}`;
        const r = await h.api('GET', `/v2/sandboxes${q}`);
        if (r.status !== 200) throw new Error(`list: ${r.status} ${r.text}`);
        ids.push(...r.json.map((s) => s.sandboxID));
        token = r.headers.get('x-next-token');
        if (!token) return ids;
      }
    },
    // Simulates a crash: SIGKILL, no clean-up by hutchd. Sandboxes live on.
    async crash() { await terminate(cur.child, 'SIGKILL'); },
    // A new API key of the given team, made by `hutchd keys create` on this
    // hutchd's data (the running daemon sees it at once).
    createKey(team) {
      const made = spawnSync(hutchdBin, [`--data-dir=${opts.dataDir ?? join(dir, 'data')}`,
        'keys', 'create', '--team', team], { encoding: 'utf8' });
      if (made.status !== 0) throw new Error(`hutchd keys create: ${made.stderr}`);
      return made.stdout.trim();
    },
    // Starts hutchd again on the same ports and data (after crash or stop);
    // between(), if given, runs while no hutchd is up.
    async restart(extraArgs = [], between = undefined) {
      await terminate(cur.child);
      await between?.();
      cur = launch([...args, ...extraArgs], opts.env ?? {});
      await cur.ready;
    },
    async stop() {
      if (opts.runtime && cur.child.exitCode === null && cur.child.signalCode === null) {
        // Sandboxes outlive hutchd by design: remove them while it can.
        try {
          for (const id of await h.liveIds()) await h.api('DELETE', `/sandboxes/${id}`);
        } catch (e) {
          process.stderr.write(`hutchd e2e: cleaning sandboxes failed: ${e.message}\n`);
        }
      }
      await terminate(cur.child);
      // HUTCH_E2E_LOG=<file> keeps every hutchd's log (sanitizer reports too).
      if (process.env.HUTCH_E2E_LOG) appendFileSync(process.env.HUTCH_E2E_LOG, cur.log);
      if (opts.runtime) removeRuntimeRoots();
      removeUnlessMounted(dir);
    },
  };
  return h;
}

// Applies env to process.env for the SDK and returns a function restoring it.
export function useEnv(env) {
  const saved = {};
  for (const [k, v] of Object.entries(env)) { saved[k] = process.env[k]; process.env[k] = v; }
  delete process.env.E2B_DEBUG;
  return () => {
    for (const [k, v] of Object.entries(saved)) {
      if (v === undefined) delete process.env[k]; else process.env[k] = v;
    }
  };
}
