// Image import end to end: `hutchd templates import` runs beside a live
// hutchd (same data dir) and the official SDK creates sandboxes from the
// imported templates by name. The images are made here by
// tests/template-fixtures/mkimage.py (busybox-static, two layers: a
// whiteout and an opaque folder in the second), as a `docker save` tarball
// and as a gzip OCI layout; both carry the same layers, which are stored
// once. A hostile image (a layer not matching its digest) is refused and
// leaves no template and no layer behind.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, rmdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Sandbox } from 'e2b';
import { hutchdBin, startHutchd, useEnv } from './lib/hutchd.mjs';

const here = dirname(fileURLToPath(import.meta.url));
const mkimage = join(here, '..', 'template-fixtures', 'mkimage.py');
const isolation = ['--cgroup-name=hutchimp', '--veth-prefix=him', '--net-cidr=10.236.0.0/16'];
let h;
let restore;
let work;

function removeIsolatedRoots() {
  const roots = ['/sys/fs/cgroup', '/sys/fs/cgroup/unified'];
  try {
    for (const d of readdirSync('/sys/fs/cgroup')) roots.push(join('/sys/fs/cgroup', d));
  } catch { /* no cgroup fs */ }
  for (const r of roots) {
    const dir = join(r, 'hutchimp');
    if (existsSync(dir)) {
      try { rmdirSync(dir); } catch (e) { process.stderr.write(`${dir}: ${e.code}\n`); }
    }
  }
  spawnSync('nft', ['delete', 'table', 'inet', 'hutchimp'], { stdio: 'ignore' });
}

function makeImage(format, name, variant) {
  const out = join(work, name);
  const r = spawnSync('python3', [mkimage, format, out, ...(variant ? [variant] : [])],
    { encoding: 'utf8' });
  assert.equal(r.status, 0, r.stderr);
  return out;
}

function hutchd(...args) {
  return spawnSync(hutchdBin, [`--data-dir=${join(h.dir, 'data')}`, '--log=error', ...args],
    { encoding: 'utf8' });
}

function layersOnDisk() {
  return readdirSync(join(h.dir, 'data', 'layers')).filter((n) => n !== '.lock').sort();
}

before(async () => {
  h = await startHutchd({ runtime: true, args: isolation });
  restore = useEnv(h.sdkEnv);
  work = mkdtempSync(join(tmpdir(), 'hutch-img-'));
});
after(async () => {
  restore?.();
  await h?.stop();
  if (h) removeIsolatedRoots();
  if (work) rmSync(work, { recursive: true, force: true });
});

async function waitForFile(sbx, path) {
  for (let i = 0; i < 100; i++) {
    if (await sbx.files.exists(path)) return;
    await new Promise((r) => setTimeout(r, 100));
  }
  assert.fail(`${path} never appeared`);
}

let dockerLayers;

test('a docker save tarball becomes a template a sandbox starts from', async () => {
  const img = makeImage('docker', 'busy.tar');
  const r = hutchd('templates', 'import', 'busy', img);
  assert.equal(r.status, 0, r.stderr);
  const out = JSON.parse(r.stdout);
  assert.deepEqual(out.names, ['busy']);
  assert.equal(out.layers.length, 2);
  dockerLayers = out.layers;

  const sbx = await Sandbox.create('busy');
  try {
    // The image's User (uid 1000) is looked up in its /etc/passwd.
    const who = await sbx.commands.run('id -un; pwd; echo "$HELLO"');
    assert.equal(who.stdout, 'user\n/home/user\nworld\n');
    const motd = await sbx.commands.run('cat /etc/motd');
    assert.equal(motd.stdout, 'hello from layer two\n');
    // Layer two's whiteout hides layer one's file; its opaque folder hides
    // layer one's entries of that folder.
    const gone = await sbx.commands.run('test -e /etc/remove-me && echo there || echo gone');
    assert.equal(gone.stdout, 'gone\n');
    assert.equal((await sbx.commands.run('ls /opt/old')).stdout, 'b\n');
    // Absolute symlinks stay symlinks, resolved inside the sandbox.
    assert.equal((await sbx.commands.run('readlink /usr/bin/env')).stdout, '/bin/busybox\n');
    assert.equal((await sbx.commands.run('stat -c %U /home/user/owned')).stdout, 'user\n');
    // Entrypoint + Cmd became the start command.
    await waitForFile(sbx, '/tmp/started');
    assert.equal(await sbx.files.read('/tmp/started'), 'started\n');
  } finally {
    await sbx.kill();
  }
});

test('an OCI layout with the same layers stores them once; a tag names it', async () => {
  const img = makeImage('oci-gz', 'busy-oci');
  const r = hutchd('templates', 'import', 'busy-oci:v1', img);
  assert.equal(r.status, 0, r.stderr);
  const out = JSON.parse(r.stdout);
  assert.deepEqual(out.tags, ['v1']);
  assert.deepEqual(out.layers, dockerLayers);
  assert.deepEqual(layersOnDisk(), [...dockerLayers].sort());

  const sbx = await Sandbox.create('busy-oci:v1');
  try {
    assert.equal((await sbx.commands.run('cat /etc/motd')).stdout, 'hello from layer two\n');
  } finally {
    await sbx.kill();
  }
  const alias = await h.api('GET', '/templates/aliases/busy-oci');
  assert.equal(alias.status, 200);
});

test('a layer not matching its digest is refused and leaves nothing', async () => {
  const before = layersOnDisk();
  const img = makeImage('oci', 'bad', 'bad-digest-fresh');
  const r = hutchd('templates', 'import', 'bad', img);
  assert.notEqual(r.status, 0);
  assert.match(r.stderr, /layers\[1\] 'blobs\/sha256\/[0-9a-f]{64}' does not match its digest/);
  assert.deepEqual(layersOnDisk(), before);
  assert.equal((await h.api('GET', '/templates/aliases/bad')).status, 404);
  await assert.rejects(Sandbox.create('bad'));
});
