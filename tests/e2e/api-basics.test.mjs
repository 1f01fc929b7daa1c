// The control plane through the official SDK: authentication, not-found
// semantics, listing, and the API's own error shapes.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { Sandbox, AuthenticationError, SandboxNotFoundError } from 'e2b';
import { startHutchd, useEnv } from './lib/hutchd.mjs';

let h;
let restore;
before(async () => {
  h = await startHutchd();
  restore = useEnv(h.sdkEnv);
});
after(async () => { restore?.(); await h?.stop(); });

test('first start prints the three export lines and a fresh key', () => {
  const lines = h.stdout().trim().split('\n');
  assert.equal(lines.length, 3);
  assert.match(lines[0], /^export E2B_API_URL=http:\/\/127\.0\.0\.1:\d+$/);
  assert.match(lines[1], /^export E2B_SANDBOX_URL=http:\/\/127\.0\.0\.1:\d+$/);
  assert.match(h.apiKey, /^e2b_[0-9a-f]{40}$/);
});

test('a bad key is an AuthenticationError', async () => {
  await assert.rejects(
    Sandbox.getInfo('iabcdefghij0123456789', { apiKey: 'e2b_' + '1'.repeat(40) }),
    AuthenticationError);
  await assert.rejects(Sandbox.list({ apiKey: 'not-a-key' }).nextItems(),
    AuthenticationError);
});

test('getInfo of an unknown sandbox is SandboxNotFoundError', async () => {
  await assert.rejects(Sandbox.getInfo('iabcdefghij0123456789'), SandboxNotFoundError);
});

test('kill of an unknown sandbox returns false', async () => {
  assert.equal(await Sandbox.kill('iabcdefghij0123456789'), false);
});

test('setTimeout and connect of an unknown sandbox are not found', async () => {
  await assert.rejects(Sandbox.setTimeout('iabcdefghij0123456789', 5000),
    SandboxNotFoundError);
  await assert.rejects(Sandbox.connect('iabcdefghij0123456789'), SandboxNotFoundError);
});

test('list is empty and ends after one page', async () => {
  const pager = Sandbox.list();
  assert.deepEqual(await pager.nextItems(), []);
  assert.equal(pager.hasNext, false);
  const filtered = Sandbox.list({ query: { metadata: { 'we ird': 'v&l=ue' },
    state: ['running'] }, limit: 5 });
  assert.deepEqual(await filtered.nextItems(), []);
});

test('create without a runtime is an honest 503 (ServiceBusyError in the SDK)',
  async () => {
    await assert.rejects(Sandbox.create(), (e) => e.name === 'ServiceBusyError' &&
      /runtime is not available/.test(e.message));
  });

async function api(path, init = {}) {
  const res = await fetch(`${h.apiUrl}${path}`, {
    ...init, headers: { 'X-API-Key': h.apiKey, ...(init.headers ?? {}) },
  });
  const text = await res.text();
  return { res, body: text ? JSON.parse(text) : null };
}

test('every error is JSON {code, message} with the exact status', async () => {
  for (const [path, init, status] of [
    ['/v2/sandboxes?limit=0', {}, 400],
    ['/v2/sandboxes?limit=101', {}, 400],
    ['/v2/sandboxes?nextToken=garbage', {}, 400],
    ['/v2/sandboxes?state=sleeping', {}, 400],
    ['/v2/sandboxes?metadata=novalue', {}, 400],
    ['/v2/sandboxes', { method: 'POST', body: '{"templateID":"base","timeout":0}' }, 400],
    ['/v2/sandboxes', { method: 'POST', body: '{"templateID":"base","timeout":999999}' }, 400],
    ['/v2/sandboxes', { method: 'POST', body: 'not json' }, 400],
    ['/v2/sandboxes', { method: 'POST', body: '{}' }, 400],
    ['/sandboxes/inope/timeout', { method: 'POST', body: '{"timeout":5}' }, 404],
    ['/sandboxes/inope/pause', { method: 'POST', body: '{}' }, 404],
    ['/nowhere', {}, 404],
  ]) {
    const { res, body } = await api(path, init);
    assert.equal(res.status, status, `${path}: ${JSON.stringify(body)}`);
    assert.match(res.headers.get('content-type'), /application\/json/);
    assert.equal(body.code, status);
    assert.equal(typeof body.message, 'string');
  }
});

test('the maximum timeout is refused with its value, not cut', async () => {
  const { res, body } = await api('/v2/sandboxes',
    { method: 'POST', body: '{"templateID":"base","timeout":3601}' });
  assert.equal(res.status, 400);
  assert.match(body.message, /3600/);
});

test('CORS preflight and exposed headers', async () => {
  const res = await fetch(`${h.apiUrl}/v2/sandboxes`, { method: 'OPTIONS' });
  assert.equal(res.status, 204);
  assert.equal(res.headers.get('access-control-allow-origin'), '*');
  assert.match(res.headers.get('access-control-allow-headers'), /X-API-Key/);
  const { res: r2 } = await api('/v2/sandboxes');
  assert.match(r2.headers.get('access-control-expose-headers'), /X-Next-Token/);
});

test('/metrics counts requests by status', async () => {
  const res = await fetch(`${h.apiUrl}/metrics`);
  const text = await res.text();
  assert.equal(res.status, 200);
  assert.match(text, /hutch_api_requests_total\{status="401"\} \d+/);
  assert.match(text, /hutch_sandboxes\{state="running"\} 0/);
  assert.match(text, /hutch_api_request_duration_seconds_count \d+/);
});
