// filesystem.Filesystem unary RPCs through the official SDK (debug mode)
// against a real agent: getInfo, exists, list, makeDir, rename, remove, their
// errors, symlink rules and home-relative paths; plus raw Connect calls for
// codes the SDK hides.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, writeFileSync, symlinkSync, statSync, lstatSync, chownSync, chmodSync,
  realpathSync, existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { Sandbox, FileNotFoundError, InvalidArgumentError, SandboxError } from 'e2b';
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

// A file in the user's home, owned by the user like one they wrote.
function userFile(rel, data = 'hello', mode = 0o644) {
  writeFileSync(home(rel), data);
  chmodSync(home(rel), mode);
  chownSync(home(rel), 1000, 1000);
}

async function rpc(method, body) {
  const res = await fetch(`${agent.url}/filesystem.Filesystem/${method}`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify(body),
  });
  return { status: res.status, body: await res.json() };
}

test('getInfo describes a file completely', async () => {
  userFile('info.txt', 'hello', 0o640);
  const st = statSync(home('info.txt'));
  const info = await sbx.files.getInfo('info.txt');
  assert.equal(info.name, 'info.txt');
  assert.equal(info.type, 'file');
  assert.equal(info.path, home('info.txt'));
  assert.equal(info.size, 5);
  assert.equal(info.mode, 0o640);
  assert.equal(info.permissions, '-rw-r-----');
  assert.equal(info.owner, 'user');
  assert.equal(info.group, 'user');
  assert.equal(info.modifiedTime.getTime(), Math.floor(st.mtimeMs));
  assert.equal(info.symlinkTarget, undefined);
});

test('getInfo on a directory, "~", an absolute path and the raw JSON', async () => {
  mkdirSync(home('adir'));
  const byTilde = await sbx.files.getInfo('~/adir');
  const byAbs = await sbx.files.getInfo(home('adir'));
  assert.equal(byTilde.type, 'dir');
  assert.equal(byTilde.path, home('adir'));
  assert.equal(byAbs.path, home('adir'));
  assert.equal(byTilde.permissions, 'drwxr-xr-x');
  assert.equal(byTilde.owner, 'root');

  const raw = await rpc('Stat', { path: 'adir' });
  assert.equal(raw.status, 200);
  assert.equal(raw.body.entry.type, 'FILE_TYPE_DIRECTORY');
  assert.equal(typeof raw.body.entry.size, 'string'); // int64 as a JSON string
  assert.match(raw.body.entry.modifiedTime, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{3,9})?Z$/);
});

test('getInfo follows a symlink for type and mode, not for the name', async () => {
  mkdirSync(home('real-dir'));
  chmodSync(home('real-dir'), 0o700);
  symlinkSync('real-dir', home('dir-link'));
  const info = await sbx.files.getInfo('dir-link');
  assert.equal(info.name, 'dir-link');
  assert.equal(info.path, home('dir-link'));
  assert.equal(info.type, 'dir');
  assert.equal(info.mode, 0o700);
  assert.equal(info.permissions, 'Lrwxrwxrwx');
  assert.equal(info.symlinkTarget, realpathSync(home('real-dir')));
  assert.equal(info.size, lstatSync(home('dir-link')).size);

  symlinkSync('nowhere', home('broken-link'));
  const broken = await sbx.files.getInfo('broken-link');
  assert.equal(broken.type, undefined); // FILE_TYPE_UNSPECIFIED
  assert.equal(broken.symlinkTarget, home('broken-link'));
});

test('exists and missing files', async () => {
  userFile('here.txt');
  assert.equal(await sbx.files.exists('here.txt'), true);
  assert.equal(await sbx.files.exists('not-here.txt'), false);
  assert.equal(await sbx.files.exists('here.txt/below'), false);
  await assert.rejects(sbx.files.getInfo('not-here.txt'), (err) => {
    assert.ok(err instanceof FileNotFoundError, String(err));
    assert.match(err.message, /not-here\.txt/);
    return true;
  });
});

test('list: depth, byte order, symlinks listed but not entered', async () => {
  mkdirSync(home('tree/b/c'), { recursive: true });
  writeFileSync(home('tree/b/c/deep.txt'), 'd');
  writeFileSync(home('tree/b/z.txt'), 'z');
  writeFileSync(home('tree/a.txt'), 'a');
  writeFileSync(home('tree/B.txt'), 'B');
  symlinkSync('b', home('tree/ln'));
  symlinkSync('missing', home('tree/broken')); // UNSPECIFIED: the SDK drops it

  const names = (entries) => entries.map((e) => e.path.slice(home('tree').length + 1));
  assert.deepEqual(names(await sbx.files.list('tree')), ['B.txt', 'a.txt', 'b', 'ln']);
  assert.deepEqual(names(await sbx.files.list('tree', { depth: 2 })),
    ['B.txt', 'a.txt', 'b', 'b/c', 'b/z.txt', 'ln']);
  assert.deepEqual(names(await sbx.files.list('tree', { depth: 10 })),
    ['B.txt', 'a.txt', 'b', 'b/c', 'b/c/deep.txt', 'b/z.txt', 'ln']);

  const ln = (await sbx.files.list('tree')).find((e) => e.name === 'ln');
  assert.equal(ln.type, 'dir');
  assert.equal(ln.symlinkTarget, realpathSync(home('tree/b')));

  // Listing through a symlink reports paths under the path that was asked for.
  const via = await sbx.files.list('tree/ln');
  assert.deepEqual(via.map((e) => e.path), [home('tree/ln/c'), home('tree/ln/z.txt')]);

  const raw = await rpc('ListDir', { path: 'tree', depth: 1 });
  assert.equal(raw.body.entries.length, 5);
  assert.equal(raw.body.entries[3].name, 'broken');
  assert.equal(raw.body.entries[3].type, undefined); // UNSPECIFIED is proto3's default
  assert.equal(raw.body.entries[3].symlinkTarget, home('tree/broken'));
});

test('list errors: missing, not a directory, symlink loop; empty directory', async () => {
  await assert.rejects(sbx.files.list('no-such-dir'), FileNotFoundError);
  userFile('plain.txt');
  await assert.rejects(sbx.files.list('plain.txt'), (err) => {
    assert.ok(err instanceof InvalidArgumentError, String(err));
    assert.match(err.message, /not a directory/);
    return true;
  });
  symlinkSync('loop-b', home('loop-a'));
  symlinkSync('loop-a', home('loop-b'));
  const raw = await rpc('ListDir', { path: 'loop-a', depth: 1 });
  assert.equal(raw.body.code, 'failed_precondition');
  assert.match(raw.body.message, /loop-a/);

  mkdirSync(home('empty'));
  assert.deepEqual(await sbx.files.list('empty'), []);
});

test('makeDir: true, then false; parents created and owned by the user', async () => {
  assert.equal(await sbx.files.makeDir('made/nested/deeper'), true);
  assert.equal(await sbx.files.makeDir('made/nested/deeper'), false);
  for (const p of ['made', 'made/nested', 'made/nested/deeper']) {
    const st = statSync(home(p));
    assert.ok(st.isDirectory());
    assert.equal(st.uid, 1000, p);
    assert.equal(st.gid, 1000, p);
    assert.equal(st.mode & 0o777, 0o755, p);
  }
  // Another user's request makes directories that user owns.
  const rootMade = join(agent.root, 'root-made');
  assert.equal(await sbx.files.makeDir(rootMade, { user: 'root' }), true);
  assert.equal(statSync(rootMade).uid, 0);
  // The user may not remove what root made outside the user's reach.
  await assert.rejects(sbx.files.remove(rootMade), /permission denied/i);
  await sbx.files.remove(rootMade, { user: 'root' });
  assert.equal(existsSync(rootMade), false);

  const raw = await rpc('MakeDir', { path: 'made' });
  assert.equal(raw.status, 409);
  assert.equal(raw.body.code, 'already_exists');

  userFile('a-file');
  await assert.rejects(sbx.files.makeDir('a-file'), InvalidArgumentError);
  await assert.rejects(sbx.files.makeDir('a-file/sub'), InvalidArgumentError);
});

test('rename: returns the new entry, creates parents, overwrites files', async () => {
  userFile('old.txt', 'payload');
  const info = await sbx.files.rename('old.txt', 'moved/into/new.txt');
  assert.equal(info.path, home('moved/into/new.txt'));
  assert.equal(info.name, 'new.txt');
  assert.equal(info.type, 'file');
  assert.equal(info.size, 7);
  assert.equal(existsSync(home('old.txt')), false);
  assert.equal(statSync(home('moved/into')).uid, 1000);

  userFile('other.txt', 'new content');
  await sbx.files.rename('other.txt', 'moved/into/new.txt');
  assert.equal(readFileSync(home('moved/into/new.txt'), 'utf8'), 'new content');

  await assert.rejects(sbx.files.rename('ghost.txt', 'x.txt'), FileNotFoundError);
});

test('remove: recursive, never through symlinks, quiet when missing', async () => {
  mkdirSync(home('outside'));
  writeFileSync(home('outside/precious'), 'keep');
  mkdirSync(home('doomed/sub'), { recursive: true });
  writeFileSync(home('doomed/sub/f'), 'x');
  symlinkSync(home('outside'), home('doomed/sub/to-outside'));
  symlinkSync(home('outside/precious'), home('doomed/to-file'));
  // The user's own tree (the agent removes it with the user's permissions).
  for (const p of ['outside', 'outside/precious', 'doomed', 'doomed/sub', 'doomed/sub/f'])
    chownSync(home(p), 1000, 1000);

  await sbx.files.remove('doomed');
  assert.equal(existsSync(home('doomed')), false);
  assert.equal(readFileSync(home('outside/precious'), 'utf8'), 'keep');

  symlinkSync('outside', home('outside-link'));
  await sbx.files.remove('outside-link');
  assert.equal(existsSync(home('outside-link')), false);
  assert.equal(existsSync(home('outside/precious')), true);

  await sbx.files.remove('never-existed'); // no error, like envd
  const raw = await rpc('Remove', { path: '/' });
  assert.equal(raw.body.code, 'invalid_argument');
});

test('hostile paths: very long names are refused cleanly', async () => {
  const long = 'x'.repeat(70000);
  await assert.rejects(sbx.files.getInfo(long), (err) => {
    assert.ok(err instanceof InvalidArgumentError || err instanceof SandboxError, String(err));
    return true;
  });
  const raw = await rpc('Stat', { path: '/' + 'y/'.repeat(3000) });
  assert.equal(raw.body.code, 'invalid_argument');
  const nul = await rpc('Stat', { path: 'a\u0000b' });
  assert.equal(nul.body.code, 'invalid_argument'); // never silently cut at the NUL
  // The agent is still serving.
  assert.equal(await sbx.files.exists('.'), true);
});

test('filesystem calls run with the user\'s permissions; root keeps root\'s', async () => {
  // A root-only folder beside the home: the user may neither look in nor touch it.
  const secret = join(agent.root, 'secret');
  mkdirSync(secret, { mode: 0o700 });
  chmodSync(secret, 0o700);
  writeFileSync(join(secret, 'key'), 'k');
  // A root-owned file in a folder the user can read but not write.
  const shelf = join(agent.root, 'shelf');
  mkdirSync(shelf, { mode: 0o755 });
  writeFileSync(join(shelf, 'book'), 'b');
  // A symlink the user planted in their home, pointing at the root-only folder.
  symlinkSync(secret, home('planted'));

  await assert.rejects(sbx.files.list(secret), /permission denied|Permission denied/i);
  await assert.rejects(sbx.files.list('~/planted'), /permission denied|Permission denied/i);
  await assert.rejects(sbx.files.getInfo(join(secret, 'key')), SandboxError);
  await assert.rejects(sbx.files.remove(join(shelf, 'book')), /permission denied/i);
  assert.ok(existsSync(join(shelf, 'book')));
  await assert.rejects(sbx.files.rename(join(shelf, 'book'), home('stolen')),
    /permission denied/i);
  await assert.rejects(sbx.files.makeDir(join(shelf, 'new')), SandboxError);
  assert.ok(!existsSync(join(shelf, 'new')));
  await assert.rejects(sbx.files.watchDir(secret, () => {}), /permission denied|denied/i);

  // What the user made is the user's; root still reaches everything.
  assert.equal(await sbx.files.makeDir(home('mine')), true);
  assert.equal(statSync(home('mine')).uid, 1000);
  const listed = await sbx.files.list(secret, { user: 'root' });
  assert.deepEqual(listed.map((e) => e.name), ['key']);
  await sbx.files.remove(join(shelf, 'book'), { user: 'root' });
  assert.ok(!existsSync(join(shelf, 'book')));
});
