// hutchd runs the CRIU its `criu` setting names, for the pause that keeps
// memory and for its resume: set through HUTCH_CRIU (the settings' own
// environment name), a wrapper that logs its calls and runs the real CRIU
// must see a dump and a restore, and a process must live through both. A
// --criu naming no program makes the pause fail cleanly: the sandbox runs on.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { chmodSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Sandbox } from 'e2b';
import { requireBase, startHutchd, useEnv } from './lib/hutchd.mjs';

const REAL_CRIU = '/usr/local/lib/hutch/criu';

async function withHutchd(opts, fn) {
  const h = await startHutchd({ runtime: true, ...opts });
  const restore = useEnv(h.sdkEnv);
  try {
    await fn(h);
  } finally {
    restore();
    await h.stop();
  }
}

test('HUTCH_CRIU names the CRIU of a pause with memory and of its resume', async (t) => {
  if (!requireBase(t)) return;
  const dir = mkdtempSync(join(tmpdir(), 'hutch-criu-setting-'));
  const calls = join(dir, 'calls');
  const wrapper = join(dir, 'criu');
  writeFileSync(wrapper, `#!/bin/sh\necho "$*" >> '${calls}'\nexec ${REAL_CRIU} "$@"\n`);
  chmodSync(wrapper, 0o755);
  try {
    await withHutchd({ env: { HUTCH_CRIU: wrapper } }, async () => {
      const sb = await Sandbox.create({ timeoutMs: 120_000 });
      try {
        await sb.commands.run('sleep 1000', { background: true });
        const before = (await sb.commands.run('pgrep -x sleep')).stdout.trim();
        assert.equal(await sb.pause(), true);
        assert.match(readFileSync(calls, 'utf8'), /(^|\s)dump\s/);
        const back = await Sandbox.connect(sb.sandboxId);
        assert.match(readFileSync(calls, 'utf8'), /(^|\s)restore\s/);
        // the same process: memory came back through the wrapper's CRIU
        assert.equal((await back.commands.run('pgrep -x sleep')).stdout.trim(), before);
      } finally {
        await Sandbox.kill(sb.sandboxId);
      }
    });
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('--criu naming no program: the pause fails and the sandbox runs on', async (t) => {
  if (!requireBase(t)) return;
  const missing = join(tmpdir(), 'hutch-criu-setting-none', 'criu');
  await withHutchd({ args: [`--criu=${missing}`] }, async () => {
    const sb = await Sandbox.create({ timeoutMs: 120_000 });
    try {
      await sb.commands.run('sleep 1000', { background: true });
      await assert.rejects(sb.pause());
      const info = await Sandbox.getInfo(sb.sandboxId);
      assert.equal(info.state, 'running');
      assert.notEqual((await sb.commands.run('pgrep -x sleep')).stdout.trim(), '');
    } finally {
      await Sandbox.kill(sb.sandboxId);
    }
  });
});
