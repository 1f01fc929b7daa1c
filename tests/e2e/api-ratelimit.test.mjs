// Per-team request budget: a tiny plan set through HUTCH_* variables makes
// the third request within a minute a 429, which the official SDK turns into RateLimitError.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { Sandbox, RateLimitError } from 'e2b';
import { startHutchd, useEnv } from './lib/hutchd.mjs';

let h;
let restore;
before(async () => {
  h = await startHutchd({ env: { HUTCH_REQUEST_RATE: '1', HUTCH_REQUEST_BURST: '2' } });
  restore = useEnv(h.sdkEnv);
});
after(async () => { restore?.(); await h?.stop(); });

test('over the budget: 429 with Retry-After and RateLimit headers, then RateLimitError',
  async () => {
    const url = `${h.apiUrl}/v2/sandboxes`;
    const headers = { 'X-API-Key': h.apiKey };
    assert.equal((await fetch(url, { headers })).status, 200);
    assert.equal((await fetch(url, { headers })).status, 200);
    const res = await fetch(url, { headers });
    assert.equal(res.status, 429);
    assert.ok(Number(res.headers.get('retry-after')) >= 1);
    assert.equal(res.headers.get('ratelimit-limit'), '2');
    assert.equal(res.headers.get('ratelimit-remaining'), '0');
    assert.ok(Number(res.headers.get('ratelimit-reset')) >= 1);
    const body = await res.json();
    assert.equal(body.code, 429);
    await assert.rejects(Sandbox.getInfo('iabcdefghij0123456789'), RateLimitError);
  });
