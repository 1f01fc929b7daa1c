// Template benchmark against a real hutchd on a temporary data dir, through
// the official SDK's Template builder and Sandbox:
//  1. build time of one template (from base: ENV, WORKDIR, COPY of local
//     files, three RUN steps doing python and node work, start and ready
//     commands) cold (the first build on a fresh data dir, then skipCache),
//     cached (nothing changed) and with its last step changed (the earlier
//     layers are reused); p50 of a few runs each. Reference in the same run:
//     the same RUN commands run with `sh -c` on the host, in a copy of the
//     same files.
//  2. disk used by SANDBOXES sandboxes of that template, each writing WRITE_MB
//     of random bytes: the template's layers (stored once), and per sandbox
//     the blocks allocated under its folder (a sparse ext4 image), fresh and
//     after the write. Reference in the same run: an image formatted by
//     mkfs.ext4 with the runtime's options and size, never mounted.
// Then every sandbox is killed and the runtime is checked to hold nothing of
// them. Everything it makes is removed at the end.
//
//   node bench/template-build.mjs [RUNS [SANDBOXES [CONCURRENCY [WRITE_MB]]]]
import { performance } from 'node:perf_hooks';
import { spawnSync } from 'node:child_process';
import {
  cpSync, existsSync, lstatSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync,
  statSync, writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  Sandbox, Template, waitForFile,
} from '../tests/e2e/node_modules/e2b/dist/index.mjs';
import { requireBase, startHutchd, templateDir, useEnv } from '../tests/e2e/lib/hutchd.mjs';

const runs = Number(process.argv[2] ?? 3);
const sandboxes = Number(process.argv[3] ?? 100);
const concurrency = Number(process.argv[4] ?? 8);
const writeMb = Number(process.argv[5] ?? 1);
const DISK_MB = 2048; // hutchd's default --disk-mb, passed explicitly below
const NAME = 'bench-app';

const MiB = 1024 * 1024;
const fmtMs = (v) => `${v.toFixed(0).padStart(6)} ms`;
const fmtMiB = (b) => `${(b / MiB).toFixed(2).padStart(8)} MiB`;

function median(samples) {
  const s = [...samples].sort((a, b) => a - b);
  return s[Math.floor((s.length - 1) / 2)];
}

// The RUN steps: python writes many small files, node reads a CSV the COPY
// brought, python byte-compiles the copied sources. No network, no apt/pip.
// They run in the template's workdir, and on the host in a copy of it.
const RUN_GENERATE = 'python3 -c "import json, os\n' +
  'os.makedirs(\'gen\', exist_ok=True)\n' +
  'for i in range(2000):\n' +
  '    open(f\'gen/item{i}.json\', \'w\').write(json.dumps({\'i\': i, \'sq\': i * i}))"';
const RUN_SUMMARIZE = 'node -e "const fs = require(\'fs\');' +
  'const rows = fs.readFileSync(\'data/input.csv\', \'utf8\').trim().split(\'\\n\');' +
  'let sum = 0; for (const r of rows) sum += Number(r.split(\',\')[1]);' +
  'fs.writeFileSync(\'summary.json\', JSON.stringify({ rows: rows.length, sum }))"';
const runCompile = (version) =>
  `python3 -m compileall -q lib main.py && echo ${version} > version.txt`;

function makeContext() {
  const ctx = mkdtempSync(join(tmpdir(), 'hutch-bench-tpl-'));
  const app = join(ctx, 'app');
  mkdirSync(join(app, 'lib'), { recursive: true });
  mkdirSync(join(app, 'data'));
  writeFileSync(join(app, 'main.py'), 'from lib import mod0\nprint(mod0.VALUE)\n');
  writeFileSync(join(app, 'lib', '__init__.py'), '');
  for (let i = 0; i < 20; i++) {
    writeFileSync(join(app, 'lib', `mod${i}.py`),
      `VALUE = ${i}\n\ndef f(x):\n    return x * ${i} + VALUE\n`);
  }
  // About 1 MB of CSV: the node step sums its second column.
  const rows = [];
  for (let i = 0; i < 50000; i++) rows.push(`row${i},${i % 97},${'x'.repeat(8)}`);
  writeFileSync(join(app, 'data', 'input.csv'), `${rows.join('\n')}\n`);
  return ctx;
}

function appTemplate(ctx, version) {
  return Template({ fileContextPath: ctx })
    .fromTemplate('base')
    .setEnvs({ APP_MODE: 'bench' })
    .setWorkdir('/home/user/app')
    .copy('app', '/home/user/app')
    .runCmd(RUN_GENERATE)
    .runCmd(RUN_SUMMARIZE)
    .runCmd(runCompile(version))
    .setStartCmd('echo started > /tmp/started; exec sleep infinity',
      waitForFile('/tmp/started'));
}

async function timedBuild(tpl, opts = {}) {
  const logs = [];
  const t0 = performance.now();
  const info = await Template.build(tpl, NAME, {
    ...opts, onBuildLogs: (e) => logs.push(e.message),
  });
  const ms = performance.now() - t0;
  return { ms, info, cached: logs.filter((l) => /^CACHED/.test(l)).length };
}

const RUNS = () => [RUN_GENERATE, RUN_SUMMARIZE, runCompile('ref')];
// Debian's interpreters, as in base: a version manager's shims on PATH (this
// machine has pyenv's) would add their own start-up to every call.
const HOST_PATH = '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin';

// Reference: the same RUN commands, one `sh -c` each, in a fresh copy of the
// copied folder on the host (cold page cache is not attempted).
function hostRun(ctx) {
  const dir = mkdtempSync(join(tmpdir(), 'hutch-bench-host-'));
  try {
    cpSync(join(ctx, 'app'), dir, { recursive: true });
    const t0 = performance.now();
    for (const cmd of RUNS()) {
      const r = spawnSync('sh', ['-c', cmd],
        { cwd: dir, encoding: 'utf8', env: { ...process.env, PATH: HOST_PATH } });
      if (r.status !== 0) throw new Error(`host sh -c failed (${r.status}): ${r.stderr}`);
    }
    return performance.now() - t0;
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

function contextFiles(dir, rel = '') {
  const out = [];
  for (const e of readdirSync(join(dir, rel), { withFileTypes: true })) {
    const r = rel ? `${rel}/${e.name}` : e.name;
    if (e.isDirectory()) out.push(...contextFiles(dir, r));
    else out.push({ path: r, data: readFileSync(join(dir, r)) });
  }
  return out;
}

// Reference: the same commands through commands.run in one sandbox of base
// (same interpreters, same isolation), each run in a fresh copy of the files.
async function sandboxRuns(ctx) {
  const sb = await Sandbox.create('base');
  try {
    const files = contextFiles(join(ctx, 'app'))
      .map((f) => ({ path: `/home/user/src/${f.path}`, data: f.data }));
    await sb.files.write(files);
    const samples = [];
    for (let i = 0; i < runs; i++) {
      const cwd = `/home/user/ref${i}`;
      await sb.commands.run(`cp -a /home/user/src ${cwd}`);
      const t0 = performance.now();
      for (const cmd of RUNS()) await sb.commands.run(cmd, { cwd });
      samples.push(performance.now() - t0);
    }
    return samples;
  } finally {
    await sb.kill();
  }
}

async function buildTimes(ctx) {
  const cold = [];
  const cached = [];
  const changed = [];
  const cachedSteps = { cold: [], cached: [], changed: [] };
  let last;
  // The first build on the fresh data dir is cold by construction; then
  // skipCache runs every step again.
  for (let i = 0; i < runs; i++) {
    const b = await timedBuild(appTemplate(ctx, 'v0'), i ? { skipCache: true } : {});
    cold.push(b.ms); cachedSteps.cold.push(b.cached);
  }
  for (let i = 0; i < runs; i++) {
    const b = await timedBuild(appTemplate(ctx, 'v0'));
    cached.push(b.ms); cachedSteps.cached.push(b.cached);
  }
  for (let i = 0; i < runs; i++) {
    last = await timedBuild(appTemplate(ctx, `v${i + 1}`));
    changed.push(last.ms); cachedSteps.changed.push(last.cached);
  }
  const host = [];
  for (let i = 0; i < runs; i++) host.push(hostRun(ctx));
  const inSandbox = await sandboxRuns(ctx);
  return { cold, cached, changed, host, inSandbox, cachedSteps, info: last.info };
}

// Allocated bytes (st_blocks) and apparent bytes of every file below dir,
// symlinks not followed.
function allocated(dir) {
  let blocks = 0;
  let bytes = 0;
  const walk = (d) => {
    for (const e of readdirSync(d, { withFileTypes: true })) {
      const p = join(d, e.name);
      const st = statSync(p, { throwIfNoEntry: false });
      if (!st) continue;
      if (e.isDirectory()) walk(p);
      else if (!e.isSymbolicLink()) { blocks += st.blocks * 512; bytes += st.size; }
    }
  };
  walk(dir);
  return { blocks, bytes };
}

// du counts hard-linked files once, which a layer may hold.
function du(paths) {
  if (!paths.length) return 0;
  const r = spawnSync('du', ['-s', '-c', '--block-size=1', ...paths], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`du failed: ${r.stderr}`);
  return Number(/^(\d+)\s+total$/m.exec(r.stdout)[1]);
}

function buildLayers(dataDir, buildId) {
  const doc = JSON.parse(readFileSync(join(dataDir, 'tmpl', 'builds', `${buildId}.json`), 'utf8'));
  const ids = (doc.layers ?? []).map((l) => (typeof l === 'string' ? l : l.id));
  const layerDir = join(dataDir, 'layers');
  // base's layer is a symlink to its rootfs, used in place by every template.
  return ids.map((id) => join(layerDir, id))
    .filter((p) => lstatSync(p, { throwIfNoEntry: false })?.isDirectory());
}

// What a fresh disk costs with nothing written: the runtime's mkfs options.
function freshImage() {
  const dir = mkdtempSync(join(tmpdir(), 'hutch-bench-img-'));
  try {
    const img = join(dir, 'disk.img');
    const made = spawnSync('truncate', ['-s', `${DISK_MB}M`, img]);
    if (made.status !== 0) throw new Error(`truncate ${img} failed`);
    const r = spawnSync('mkfs.ext4', ['-q', '-F', '-m', '0', '-E',
      'lazy_itable_init=1,lazy_journal_init=1,nodiscard,root_owner=0:0', img],
    { encoding: 'utf8' });
    if (r.status !== 0) throw new Error(`mkfs.ext4 failed: ${r.stderr}`);
    const st = statSync(img);
    const info = spawnSync('dumpe2fs', ['-h', img], { encoding: 'utf8' }).stdout ?? '';
    const field = (name) => (new RegExp(`^${name}:\\s+(.*)$`, 'm').exec(info)?.[1] ?? '?');
    return {
      blocks: st.blocks * 512, size: st.size,
      journal: field('Total journal size'), inodes: field('Inode count'),
      reservedGdt: field('Reserved GDT blocks'),
      groups: Math.ceil(Number(field('Block count')) / Number(field('Blocks per group'))),
    };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

async function pool(n, fn) {
  let next = 0;
  await Promise.all(Array.from({ length: Math.min(concurrency, n) }, async () => {
    while (next < n) await fn(next++);
  }));
}

async function sandboxDisk(h) {
  const dataDir = join(h.dir, 'data');
  const list = new Array(sandboxes);
  const t0 = performance.now();
  await pool(sandboxes, async (i) => {
    list[i] = await Sandbox.create(NAME, { timeoutMs: 600_000 });
  });
  const createSecs = (performance.now() - t0) / 1000;
  const perSandbox = (label) => list.map((sb) => {
    const dir = join(dataDir, 'sandboxes', sb.sandboxId);
    if (!existsSync(dir)) throw new Error(`${label}: no folder ${dir}`);
    return allocated(dir);
  });
  // Flush what the start left in the page cache (overlay's syncfs reaches
  // the disk), so that "fresh" counts it.
  await pool(sandboxes, async (i) => { await list[i].commands.run('sync -f /home/user'); });
  const fresh = perSandbox('fresh');
  // Random bytes (nothing can be shared or skipped), flushed by syncfs so
  // the image's blocks are allocated before they are counted.
  const kb = writeMb * 1024;
  await pool(sandboxes, async (i) => {
    const r = await list[i].commands.run(
      `head -c ${kb}K /dev/urandom > /home/user/wrote.bin && sync -f /home/user/wrote.bin && ` +
      'stat -c %s /home/user/wrote.bin');
    if (r.stdout.trim() !== String(kb * 1024)) throw new Error(`write: ${r.stdout} ${r.stderr}`);
  });
  const written = perSandbox('written');
  const poolDir = join(dataDir, 'pool');
  const poolBytes = existsSync(poolDir) ? allocated(poolDir).blocks : 0;
  await pool(sandboxes, async (i) => { await list[i].kill(); });
  return { fresh, written, createSecs, poolBytes };
}

function leftovers(h) {
  const objs = h.runtimeObjects();
  const loops = spawnSync('losetup', ['-a'], { encoding: 'utf8' }).stdout ?? '';
  const ours = loops.split('\n').filter((l) => l.includes(join(h.dir, 'data', 'sandboxes')));
  return { disks: objs.disks, cgroups: objs.cgroups, loops: ours };
}

function stats(samples) {
  const s = [...samples].sort((a, b) => a - b);
  return { p50: median(s), min: s[0], max: s[s.length - 1] };
}

function row(label, value, ref) {
  console.log(`${label.padEnd(44)} ${value.padEnd(30)} ${ref ?? ''}`);
}

const started = performance.now();
const phase = (what) => process.stderr.write(
  `template-build: ${what} (${((performance.now() - started) / 1000).toFixed(1)} s)\n`);
const t = { skip: (m) => { console.error(m); process.exit(0); } };
requireBase(t);
const ctx = makeContext();
const h = await startHutchd({ runtime: true, args: ['--pool-size=8', '--log=warn',
  `--disk-mb=${DISK_MB}`] });
const restore = useEnv(h.sdkEnv);
let times;
let disk;
let layers;
let left;
try {
  phase('hutchd started, building');
  times = await buildTimes(ctx);
  phase('builds done, measuring layers');
  const dataDir = join(h.dir, 'data');
  const own = buildLayers(dataDir, times.info.buildId);
  layers = {
    count: own.length, own: du(own),
    all: du(readdirSync(join(dataDir, 'layers')).filter((n) => !n.startsWith('.'))
      .map((n) => join(dataDir, 'layers', n))),
    base: du([join(templateDir, 'base', 'rootfs')]),
  };
  phase('creating sandboxes');
  disk = await sandboxDisk(h);
  phase('sandboxes killed');
  left = leftovers(h);
} finally {
  restore();
  await h.stop();
  rmSync(ctx, { recursive: true, force: true });
}
phase('hutchd stopped');
const img = freshImage();

console.log(`template-build: ${runs} runs per build kind; ${sandboxes} sandboxes, ` +
  `${concurrency} at a time, ${writeMb} MiB written each (${new Date().toISOString()})`);
console.log('-- build time (SDK Template.build, from start to ready)');
const line = (label, samples, note) => {
  const s = stats(samples);
  row(label, `p50 ${fmtMs(s.p50)} (${s.min.toFixed(0)}-${s.max.toFixed(0)})`, note);
};
const steps = (k) => `CACHED steps: ${times.cachedSteps[k].join(', ')}`;
line('cold (fresh data dir, then skipCache)', times.cold, steps('cold'));
line('cached (nothing changed)', times.cached, steps('cached'));
line('last RUN changed', times.changed, steps('changed'));
line('reference: the 3 RUNs, sh -c on the host', times.host);
line('reference: the 3 RUNs, commands.run in base', times.inSandbox);
console.log('-- disk (allocated blocks; sandbox disks are sparse ext4 images)');
const per = (arr) => arr.map((x) => x.blocks);
const fresh = stats(per(disk.fresh));
const after = stats(per(disk.written));
const growth = stats(disk.written.map((x, i) => x.blocks - disk.fresh[i].blocks));
const total = per(disk.written).reduce((a, b) => a + b, 0);
row(`template layers (${layers.count}, stored once)`, fmtMiB(layers.own),
  `base rootfs under them, shared, not copied: ${fmtMiB(layers.base)}`);
row('all layers of every build in this run', fmtMiB(layers.all));
row('per sandbox, fresh (p50)', fmtMiB(fresh.p50),
  `reference: fresh mkfs image ${fmtMiB(img.blocks)} of ${fmtMiB(img.size)}`);
row('per sandbox, after its write (p50)', fmtMiB(after.p50),
  `min ${fmtMiB(after.min)} max ${fmtMiB(after.max)}`);
row('per sandbox, growth from the write (p50)', fmtMiB(growth.p50),
  `reference: it wrote ${fmtMiB(writeMb * MiB)}`);
row('per sandbox, above what it wrote (p50)', fmtMiB(after.p50 - writeMb * MiB));
row(`all ${sandboxes} sandboxes after their writes`, fmtMiB(total));
const budget = layers.own + sandboxes * writeMb * MiB;
const used = layers.own + total;
row('template layers + all sandboxes', fmtMiB(used),
  `budget: layers once + writes = ${fmtMiB(budget)}`);
console.log(`budget: disk <= layers once + what each sandbox wrote: ` +
  `${used <= budget ? 'met' : 'NOT met'} (${(used / MiB).toFixed(1)} MiB, ` +
  `${((used - budget) / sandboxes / MiB).toFixed(2)} MiB per sandbox over)`);
row('disk pool (formatted, waiting; not counted)', fmtMiB(disk.poolBytes));
console.log(`fresh image: ${img.reservedGdt} reserved GDT blocks (online-resize reserve), ` +
  `journal ${img.journal}, ${img.inodes} inodes in ${img.groups} block groups ` +
  '(lazy init: mkfs writes neither inode tables nor the journal)');
console.log(`creates: ${sandboxes} in ${disk.createSecs.toFixed(1)} s ` +
  `(${(sandboxes / disk.createSecs).toFixed(1)}/s with ${concurrency} clients)`);
const clean = !left.disks.length && !left.cgroups.length && !left.loops.length;
console.log(`after killing them all: ${clean ? 'nothing left' : 'LEFT BEHIND'} ` +
  `(sandbox folders ${left.disks.length}, cgroups ${left.cgroups.length}, ` +
  `loop devices ${left.loops.length})`);
console.log(`total time ${((performance.now() - started) / 1000).toFixed(0)} s`);
if (!clean) process.exitCode = 1;
