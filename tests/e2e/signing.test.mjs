// Access token and pre-signed URLs on /files (protocol.md 5.4), with the
// official SDK: a Sandbox object holding the agent's access token sends it as
// X-Access-Token and signs uploadUrl/downloadUrl exactly as against E2B.
// URLs are then fetched without any token, as a browser would.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { Sandbox, AuthenticationError, getSignature } from 'e2b';
import { startAgent, useSdkEnv } from './lib/agent.mjs';

const TOKEN = 'a'.repeat(16) + '0123456789abcdef0123456789abcdef0123456789abcdef';

let agent;
let sbx;

function sandboxWith(token) {
  // The constructor Sandbox.create() uses once the API has answered.
  return new Sandbox({ sandboxId: 'isigning', envdAccessToken: token, envdVersion: '0.6.2' });
}

before(async () => {
  agent = await startAgent({ accessToken: TOKEN });
  useSdkEnv(agent);
  sbx = sandboxWith(TOKEN);
  await sbx.files.write('hello.txt', 'signed hello');
});

after(async () => {
  await agent?.stop();
});

async function message(res) {
  return (await res.json()).message;
}

test('the SDK with the token reads and writes', async () => {
  assert.equal(await sbx.files.read('hello.txt'), 'signed hello');
  assert.equal(readFileSync(join(agent.home, 'hello.txt'), 'utf8'), 'signed hello');
});

test('a wrong X-Access-Token is refused even with a valid signature', async () => {
  const wrong = sandboxWith('f'.repeat(64));
  await assert.rejects(wrong.files.read('hello.txt'), (e) => {
    assert.ok(e instanceof AuthenticationError);
    assert.match(e.message, /access token present in header but does not match/);
    return true;
  });
  const url = await sbx.downloadUrl('hello.txt');
  const res = await fetch(url, { headers: { 'X-Access-Token': 'nope' } });
  assert.equal(res.status, 401);
  assert.equal(await message(res), 'access token present in header but does not match');
});

test('signed download URL works without a token', async () => {
  const url = await sbx.downloadUrl('hello.txt');
  assert.match(url, /[?&]signature=v1_/);
  const res = await fetch(url);
  assert.equal(res.status, 200);
  assert.equal(await res.text(), 'signed hello');
});

test('signed upload URL works with a browser-style form', async () => {
  const url = await sbx.uploadUrl('up/form.txt');
  const form = new FormData();
  form.append('file', new Blob(['from a form']), 'ignored-name.txt');
  const res = await fetch(url, { method: 'POST', body: form });
  assert.equal(res.status, 200);
  const [entry] = await res.json();
  assert.equal(entry.path, join(agent.home, 'up/form.txt'));
  assert.equal(readFileSync(entry.path, 'utf8'), 'from a form');
});

test('signature for another user or path does not carry over', async () => {
  const asRoot = await sbx.downloadUrl('hello.txt', { user: 'root' });
  assert.match(asRoot, /username=root/);
  // Signed for root: valid, so the request goes on to read root's home.
  const res = await fetch(asRoot);
  assert.equal(res.status, 404);

  const url = new URL(await sbx.downloadUrl('hello.txt'));
  url.searchParams.set('username', 'root');
  const swapped = await fetch(url);
  assert.equal(swapped.status, 401);
  assert.equal(await message(swapped), 'invalid signature');

  const other = new URL(await sbx.downloadUrl('hello.txt'));
  other.searchParams.set('path', 'other.txt');
  const res2 = await fetch(other);
  assert.equal(res2.status, 401);
  assert.equal(await message(res2), 'invalid signature');

  // A read signature is not a write signature.
  const readUrl = await sbx.downloadUrl('hello.txt');
  const post = await fetch(readUrl, {
    method: 'POST', headers: { 'Content-Type': 'application/octet-stream' }, body: 'x',
  });
  assert.equal(post.status, 401);
  assert.equal(await message(post), 'invalid signature');
});

test('tampered signature is invalid', async () => {
  const url = new URL(await sbx.downloadUrl('hello.txt'));
  const sig = url.searchParams.get('signature');
  url.searchParams.set('signature', sig.slice(0, -1) + (sig.endsWith('A') ? 'B' : 'A'));
  const res = await fetch(url);
  assert.equal(res.status, 401);
  assert.equal(await message(res), 'invalid signature');
});

test('missing signature', async () => {
  for (const method of ['GET', 'POST']) {
    const res = await fetch(`${agent.url}/files?path=hello.txt`, { method });
    assert.equal(res.status, 401);
    assert.equal(await message(res), 'missing signature query parameter');
  }
});

test('expiration: valid in the future, refused in the past', async () => {
  const url = await sbx.downloadUrl('hello.txt', { useSignatureExpiration: 120 });
  assert.match(url, /signature_expiration=\d+/);
  assert.equal((await fetch(url)).status, 200);

  const expired = await sbx.downloadUrl('hello.txt', { useSignatureExpiration: -10 });
  const res = await fetch(expired);
  assert.equal(res.status, 401);
  assert.equal(await message(res), 'signature is already expired');

  const up = await sbx.uploadUrl('late.txt', { useSignatureExpiration: -1 });
  const res2 = await fetch(up, { method: 'POST', body: new FormData() });
  assert.equal(res2.status, 401);
  assert.equal(await message(res2), 'signature is already expired');

  // Moving the expiration forward breaks the signature.
  const moved = new URL(url);
  moved.searchParams.set('signature_expiration',
    String(Number(moved.searchParams.get('signature_expiration')) + 1000));
  const res3 = await fetch(moved);
  assert.equal(res3.status, 401);
  assert.equal(await message(res3), 'invalid signature');
});

test('the SDK test vector signs what the agent accepts', async () => {
  const { signature } = await getSignature({
    path: 'hello.txt', operation: 'read', user: 'user',
    envdAccessToken: '0tQG31xiMp0IOQfaz9dcwi72L1CPo8e0',
  });
  assert.equal(signature, 'v1_gUtH/s9YCJWgCizjfUxuWfhFE4QSydOWEIIvfLwDr6E');

  // Special characters in the path survive encoding and signing.
  const path = 'dir with space/+plus&amp=.txt';
  await sbx.files.write(path, 'odd');
  const res = await fetch(await sbx.downloadUrl(path));
  assert.equal(res.status, 200);
  assert.equal(await res.text(), 'odd');
});
