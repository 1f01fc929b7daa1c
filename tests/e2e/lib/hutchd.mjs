// Starts a real hutchd for one test file: free ports on 127.0.0.1, a temporary
// data and run dir, readiness taken from the export lines it prints, and a
// stop() that sends SIGTERM (then SIGKILL) and removes the temporary dirs.
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { freePort } from './agent.mjs';

const here = fileURLToPath(new URL('.', import.meta.url));
export const hutchdBin = process.env.HUTCHD_BIN ??
  resolve(here, '../../../build/src/hutchd/hutchd');

function parseExports(text) {
  const env = {};
  for (const line of text.split('\n')) {
    const m = /^export (E2B_[A-Z_]+)=(.*)$/.exec(line);
    if (m) env[m[1]] = m[2];
  }
  return env;
}

// Options: env (extra HUTCH_* settings), args (extra flags), runtime (default
// false: the control plane runs without sandboxes).
export async function startHutchd(opts = {}) {
  const dir = mkdtempSync(join(tmpdir(), 'hutchd-e2e-'));
  const apiPort = await freePort();
  const proxyPort = await freePort();
  const args = [`--data-dir=${join(dir, 'data')}`, `--run-dir=${join(dir, 'run')}`,
    '--api-listen=127.0.0.1', `--api-port=${apiPort}`, `--proxy-port=${proxyPort}`,
    ...(opts.runtime ? [] : ['--no-runtime']), ...(opts.args ?? [])];
  const child = spawn(hutchdBin, args, {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, ...(opts.env ?? {}) },
  });
  let out = '';
  let log = '';
  child.stderr.on('data', (d) => { log += d; if (log.length > 1 << 20) log = log.slice(-65536); });
  const ready = new Promise((ok, fail) => {
    const timer = setTimeout(() => fail(new Error(`hutchd not ready in 10 s:\n${log}`)), 10000);
    child.stdout.on('data', (d) => {
      out += d;
      if (out.split('\n').length > 3) { clearTimeout(timer); ok(); }
    });
    child.once('exit', (code) => {
      clearTimeout(timer);
      fail(new Error(`hutchd exited with ${code}:\n${log}`));
    });
  });
  try {
    await ready;
  } catch (e) {
    rmSync(dir, { recursive: true, force: true });
    throw e;
  }
  const exports = parseExports(out);
  return {
    dir, apiPort, proxyPort, child, stdout: () => out, log: () => log,
    apiUrl: exports.E2B_API_URL,
    apiKey: exports.E2B_API_KEY,
    // Environment for the official SDK talking to this hutchd.
    sdkEnv: { E2B_API_URL: exports.E2B_API_URL, E2B_SANDBOX_URL: exports.E2B_SANDBOX_URL,
      E2B_API_KEY: exports.E2B_API_KEY },
    async stop() {
      if (child.exitCode === null && child.signalCode === null) {
        const exited = new Promise((r) => child.once('exit', r));
        child.kill('SIGTERM');
        const t = setTimeout(() => child.kill('SIGKILL'), 5000);
        await exited;
        clearTimeout(t);
      }
      rmSync(dir, { recursive: true, force: true });
    },
  };
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
