// Directory watching against a real agent: the SDK's watchDir (the WatchDir
// stream: recursive, includeEntry, stop, timeout, errors) and the polling
// watcher RPCs (CreateWatcher / GetWatcherEvents / RemoveWatcher), which the
// JS SDK does not use, called directly as JSON Connect unary requests.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, writeFileSync, rmSync, renameSync, chmodSync, readdirSync,
  readlinkSync } from 'node:fs';
import { join } from 'node:path';
import { Sandbox, FileNotFoundError, InvalidArgumentError, TimeoutError } from 'e2b';
import { startAgent, useSdkEnv } from './lib/agent.mjs';

let agent;
let sbx;

before(async () => {
  agent = await startAgent();
  useSdkEnv(agent);
  sbx = await Sandbox.create();
});

after(async () => {
  await agent?.stop();
});

const home = (p) => join(agent.home, p);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function until(cond, ms = 5000, what = 'condition') {
  const end = Date.now() + ms;
  while (Date.now() < end) {
    if (await cond()) return;
    await sleep(25);
  }
  assert.fail(`timed out waiting for ${what}`);
}

// inotify instances the agent holds open: one per live watcher.
function inotifyFds() {
  const dir = `/proc/${agent.child.pid}/fd`;
  let n = 0;
  for (const fd of readdirSync(dir)) {
    try {
      if (readlinkSync(join(dir, fd)) === 'anon_inode:inotify') n++;
    } catch { /* closed meanwhile */ }
  }
  return n;
}

async function rpc(method, body) {
  const res = await fetch(`${agent.url}/filesystem.Filesystem/${method}`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify(body),
  });
  return { status: res.status, body: await res.json() };
}

// Earlier tests' streams are released once the agent sees their client go,
// which can trail handle.stop(); count from a settled state.
async function settledInotifyFds() {
  await until(() => inotifyFds() === 0, 5000, 'earlier watchers released');
  return 0;
}

const brief = (events) => events.map((e) => `${e.type} ${e.name}`);

test('watchDir reports each operation, names relative, in order', async () => {
  mkdirSync(home('w1'));
  const events = [];
  const handle = await sbx.files.watchDir('w1', (e) => events.push(e));
  writeFileSync(home('w1/a.txt'), 'hello');
  chmodSync(home('w1/a.txt'), 0o600);
  renameSync(home('w1/a.txt'), home('w1/b.txt'));
  rmSync(home('w1/b.txt'));
  mkdirSync(home('w1/sub'));
  writeFileSync(home('w1/sub/not-seen.txt'), 'x'); // not recursive
  await until(() => events.some((e) => e.name === 'sub'), 5000, 'sub created');
  await sleep(200);
  await handle.stop();
  assert.deepEqual(brief(events), [
    'create a.txt', 'write a.txt', 'chmod a.txt', 'rename a.txt', 'create b.txt',
    'remove b.txt', 'create sub',
  ]);
  assert.equal(events[0].entry, undefined);
});

test('recursive watchDir follows new subdirectories; includeEntry', async () => {
  mkdirSync(home('w2'));
  const events = [];
  const handle = await sbx.files.watchDir('w2', (e) => events.push(e),
    { recursive: true, includeEntry: true });
  mkdirSync(home('w2/x/y'), { recursive: true });
  await until(() => events.some((e) => e.name === 'x/y'), 5000, 'x/y created');
  writeFileSync(home('w2/x/y/deep.txt'), 'deep');
  await until(() => events.some((e) => e.name === 'x/y/deep.txt' && e.type === 'write'),
    5000, 'deep write');
  rmSync(home('w2/x/y/deep.txt'));
  await until(() => events.some((e) => e.type === 'remove'), 5000, 'remove');
  await handle.stop();

  const create = events.find((e) => e.name === 'x/y/deep.txt' && e.type === 'create');
  assert.ok(create, brief(events).join(', '));
  assert.equal(create.entry.path, home('w2/x/y/deep.txt'));
  assert.equal(create.entry.type, 'file');
  const dir = events.find((e) => e.name === 'x' && e.type === 'create');
  assert.equal(dir.entry.type, 'dir');
  const removed = events.find((e) => e.type === 'remove');
  assert.equal(removed.name, 'x/y/deep.txt');
  assert.equal(removed.entry, undefined); // entries only for create/write/chmod
});

test('stop ends the stream and releases the watcher', async () => {
  mkdirSync(home('w3'));
  const before = await settledInotifyFds();
  const events = [];
  let exited = false;
  const handle = await sbx.files.watchDir('w3', (e) => events.push(e), {
    onExit: () => { exited = true; },
  });
  assert.equal(inotifyFds(), before + 1);
  await handle.stop();
  await until(() => inotifyFds() === before, 5000, 'inotify fd closed');
  writeFileSync(home('w3/after.txt'), 'x');
  await sleep(200);
  assert.deepEqual(events, []);
  await until(() => exited, 5000, 'onExit');
});

test('watchDir ends at its deadline with a timeout and releases the watcher', async () => {
  mkdirSync(home('w4'));
  const before = await settledInotifyFds();
  let exitErr = 'not yet';
  await sbx.files.watchDir('w4', () => {}, {
    timeoutMs: 700,
    onExit: (err) => { exitErr = err; },
  });
  await until(() => exitErr !== 'not yet', 5000, 'onExit');
  assert.ok(exitErr instanceof TimeoutError, String(exitErr));
  await until(() => inotifyFds() === before, 5000, 'inotify fd closed');
});

test('watchDir errors: missing path, a file', async () => {
  await assert.rejects(sbx.files.watchDir('no-such-dir', () => {}), FileNotFoundError);
  writeFileSync(home('plain.txt'), 'x');
  await assert.rejects(sbx.files.watchDir('plain.txt', () => {}), (err) => {
    assert.ok(err instanceof InvalidArgumentError, String(err));
    assert.match(err.message, /plain\.txt/);
    return true;
  });
});

test('polling watcher: create, collect and clear, remove', async () => {
  mkdirSync(home('p1'));
  const before = await settledInotifyFds();
  const created = await rpc('CreateWatcher', { path: 'p1', recursive: true });
  assert.equal(created.status, 200);
  const id = created.body.watcherId;
  assert.match(id, /^w[a-z0-9]{20}$/);
  assert.equal(inotifyFds(), before + 1);

  mkdirSync(home('p1/d'));
  await sleep(100);
  writeFileSync(home('p1/d/f.txt'), 'x');
  let events = [];
  await until(async () => {
    const got = await rpc('GetWatcherEvents', { watcherId: id });
    assert.equal(got.status, 200);
    events = events.concat(got.body.events ?? []);
    return events.some((e) => e.name === 'd/f.txt' && e.type === 'EVENT_TYPE_WRITE');
  }, 5000, 'events');
  assert.deepEqual(events.map((e) => `${e.type} ${e.name}`).slice(0, 3),
    ['EVENT_TYPE_CREATE d', 'EVENT_TYPE_CREATE d/f.txt', 'EVENT_TYPE_WRITE d/f.txt']);
  assert.equal(events[0].entry, undefined); // includeEntry was not asked for

  const again = await rpc('GetWatcherEvents', { watcherId: id });
  assert.deepEqual(again.body, {}); // returned events are cleared

  const removed = await rpc('RemoveWatcher', { watcherId: id });
  assert.equal(removed.status, 200);
  assert.deepEqual(removed.body, {});
  assert.equal(inotifyFds(), before);
  const gone = await rpc('GetWatcherEvents', { watcherId: id });
  assert.equal(gone.status, 404);
  assert.equal(gone.body.code, 'not_found');
  assert.match(gone.body.message, new RegExp(id));
  assert.equal((await rpc('RemoveWatcher', { watcherId: id })).body.code, 'not_found');
});

test('polling watcher with includeEntry and errors of CreateWatcher', async () => {
  mkdirSync(home('p2'));
  const { body } = await rpc('CreateWatcher', { path: home('p2'), includeEntry: true });
  writeFileSync(home('p2/e.txt'), 'abc');
  let events = [];
  await until(async () => {
    events = events.concat((await rpc('GetWatcherEvents', { watcherId: body.watcherId }))
      .body.events ?? []);
    return events.length >= 2;
  }, 5000, 'events');
  assert.equal(events[0].entry.path, home('p2/e.txt'));
  assert.equal(events[0].entry.name, 'e.txt');
  await rpc('RemoveWatcher', { watcherId: body.watcherId });

  assert.equal((await rpc('CreateWatcher', { path: 'nope' })).body.code, 'not_found');
  writeFileSync(home('p2-file'), 'x');
  assert.equal((await rpc('CreateWatcher', { path: 'p2-file' })).body.code,
    'invalid_argument');
  assert.equal((await rpc('GetWatcherEvents', { watcherId: '' })).body.code, 'not_found');
});
