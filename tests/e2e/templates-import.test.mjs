// Image import end to end: `hutchd templates import` runs beside a live
// hutchd (same data dir) and the official SDK creates sandboxes from the
// imported templates by name. The images are made here by
// tests/template-fixtures/mkimage.py (busybox-static, two layers: a
// whiteout and an opaque folder in the second), as a `docker save` tarball
// and as a gzip OCI layout; both carry the same layers, which are stored
// once. A hostile image (a layer not matching its digest) is refused and
// leaves no template and no layer behind. Pulls run against
// tests/template-fixtures/registry.py on 127.0.0.1 (OCI distribution API,
// anonymous bearer tokens, blobs through a redirect): `hutchd templates
// pull`, fromImage in an SDK build, and a registry sending corrupt layers.
// Garbage collection: a template deleted through the API loses the layers
// only it used (the daemon collects in the background), not before its
// last sandbox ended (then `hutchd templates gc` collects them).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, rmdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Sandbox, Template, BuildError } from 'e2b';
import { hutchdBin, startHutchd, useEnv } from './lib/hutchd.mjs';

const here = dirname(fileURLToPath(import.meta.url));
const mkimage = join(here, '..', 'template-fixtures', 'mkimage.py');
const registryPy = join(here, '..', 'template-fixtures', 'registry.py');
const registries = [];
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
  for (const r of registries) r.child.stdin.end();
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

// Starts the test registry serving an OCI layout; resolves with its port.
async function startRegistry(layout, repo, ...flags) {
  const child = spawn('python3', [registryPy, layout, repo, ...flags],
    { stdio: ['pipe', 'pipe', 'inherit'] });
  const port = await new Promise((resolve, reject) => {
    let out = '';
    child.stdout.on('data', (d) => {
      out += d;
      const m = /PORT (\d+)/.exec(out);
      if (m) resolve(Number(m[1]));
    });
    child.on('exit', (code) => reject(new Error(`registry exited ${code}`)));
  });
  const stats = async () => (await fetch(`http://127.0.0.1:${port}/stats`)).json();
  const reg = { child, port, stats };
  registries.push(reg);
  return reg;
}

test('templates pull: a registry image becomes a template; stored layers are not fetched',
  async () => {
    const layout = makeImage('oci-gz', 'pull-layout', 'fresh');
    const reg = await startRegistry(layout, 'hutch/busy');
    const r = hutchd('templates', 'pull', `127.0.0.1:${reg.port}/hutch/busy:v1`, 'pulled');
    assert.equal(r.status, 0, r.stderr);
    assert.deepEqual(JSON.parse(r.stdout).names, ['pulled']);
    const first = await reg.stats();
    assert.equal(first.token, 1);
    // The config and the new layer, through the redirect; layer one was
    // stored by the imports above.
    assert.equal(first.blob, 2);

    const sbx = await Sandbox.create('pulled');
    try {
      assert.equal((await sbx.commands.run('cat /etc/motd; id -un')).stdout,
        'hello from layer two\nuser\n');
    } finally {
      await sbx.kill();
    }
    // Another tag of the same image: the config is fetched, the layers not.
    const again = hutchd('templates', 'pull', `127.0.0.1:${reg.port}/hutch/busy:v2`);
    assert.equal(again.status, 0, again.stderr);
    assert.deepEqual(JSON.parse(again.stdout).names, ['busy']);
    assert.equal((await reg.stats()).blob, 3);
  });

test('fromImage in an SDK build pulls the image and builds on it', async () => {
  const layout = makeImage('oci', 'from-layout');
  const reg = await startRegistry(layout, 'hutch/base-img');
  const ref = `127.0.0.1:${reg.port}/hutch/base-img:1.0`;
  const tpl = Template().fromImage(ref)
    .runCmd('echo "built on $(cat /etc/motd)" > /built', { user: 'root' });
  const logs = [];
  await Template.build(tpl, 'from-img', { onBuildLogs: (e) => logs.push(e.message) });
  assert.ok(logs.some((l) => l.includes(`FROM ${ref}`)), logs.join('\n'));
  const sbx = await Sandbox.create('from-img');
  try {
    assert.equal((await sbx.commands.run('cat /built')).stdout,
      'built on hello from layer two\n');
  } finally {
    await sbx.kill();
  }
  // A second build finds the image by its reference: nothing is pulled.
  const before = await reg.stats();
  await Template.build(Template().fromImage(ref).runCmd('true', { user: 'root' }), 'from-img2');
  assert.deepEqual(await reg.stats(), before);
});

test('a registry sending corrupt layers: the pull fails, nothing is kept', async () => {
  const layout = makeImage('oci', 'corrupt-layout', 'fresh2');
  const reg = await startRegistry(layout, 'hutch/bad', '--corrupt-layers');
  const before = layersOnDisk();
  const r = hutchd('templates', 'pull', `127.0.0.1:${reg.port}/hutch/bad:v1`);
  assert.notEqual(r.status, 0);
  assert.match(r.stderr, /layers\[\d\].*blob sha256:[0-9a-f]{64}: \d+ bytes hashing to/);
  assert.deepEqual(layersOnDisk(), before);
  assert.deepEqual(readdirSync(join(h.dir, 'data', 'tmpl')).filter((n) => n.startsWith('.')), []);
  await assert.rejects(
    Template.build(Template().fromImage(`127.0.0.1:${reg.port}/hutch/bad:v1`), 'bad-img'),
    (e) => e instanceof BuildError && /hashing to sha256/.test(e.message));
});

async function waitFor(cond, what) {
  for (let i = 0; i < 100; i++) {
    if (cond()) return;
    await new Promise((r) => setTimeout(r, 100));
  }
  assert.fail(`timed out waiting for ${what}`);
}

test('deleting a template through the API collects the layers only it used', async () => {
  const r = hutchd('templates', 'import', 'gc-b', makeImage('docker', 'gc-b.tar', 'fresh4'));
  assert.equal(r.status, 0, r.stderr);
  const [shared, own] = JSON.parse(r.stdout).layers;
  assert.ok(layersOnDisk().includes(own));
  assert.equal((await h.api('DELETE', '/templates/gc-b')).status, 204);
  await waitFor(() => !layersOnDisk().includes(own), `layer ${own} to go`);
  assert.ok(layersOnDisk().includes(shared));
  // The other templates still make sandboxes.
  const sbx = await Sandbox.create('busy');
  await sbx.kill();
});

test('a deleted template keeps its layers while a sandbox uses it', async () => {
  const r = hutchd('templates', 'import', 'gc-a', makeImage('docker', 'gc-a.tar', 'fresh3'));
  assert.equal(r.status, 0, r.stderr);
  const own = JSON.parse(r.stdout).layers[1];
  const sbx = await Sandbox.create('gc-a');
  try {
    assert.equal((await h.api('DELETE', '/templates/gc-a')).status, 204);
    const gc = hutchd('templates', 'gc');
    assert.equal(gc.status, 0, gc.stderr);
    assert.equal(JSON.parse(gc.stdout).layersRemoved, 0);
    assert.ok(layersOnDisk().includes(own));
    assert.match((await sbx.commands.run('cat /etc/fresh')).stdout, /fresh3/);
  } finally {
    await sbx.kill();
  }
  const gc = hutchd('templates', 'gc');
  assert.equal(gc.status, 0, gc.stderr);
  assert.equal(JSON.parse(gc.stdout).layersRemoved, 1);
  assert.ok(!layersOnDisk().includes(own));
});
