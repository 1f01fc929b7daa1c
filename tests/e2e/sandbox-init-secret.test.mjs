// hutchd gives each sandbox's agent its own /init secret: creates work (the
// create's /init carries it), an /init sent through the proxy is refused
// whatever X-Hutch-Init-Secret it carries, the proxy never forwards that
// header to a sandbox, and sandbox code cannot find the secret.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { Sandbox } from 'e2b';
import { requireBase, startHutchd, useEnv } from './lib/hutchd.mjs';

let h;
let ok = true;
let sbx;
let restore;
before(async (t) => {
  ok = requireBase(t);
  if (!ok) return;
  h = await startHutchd({ runtime: true });
  restore = useEnv(h.sdkEnv);
  // secure: false is the case the secret protects (no access token)
  sbx = await Sandbox.create({ secure: false, timeoutMs: 120_000 });
});
after(async () => {
  await sbx?.kill().catch(() => {});
  restore?.();
  await h?.stop();
});

test('a create works and the sandbox runs commands', async (t) => {
  if (!ok) return t.skip('no base template');
  const r = await sbx.commands.run('echo up');
  assert.equal(r.stdout, 'up\n');
});

test('/init through the proxy with a guessed secret is refused', async (t) => {
  if (!ok) return t.skip('no base template');
  for (const path of ['/init', '/%69nit']) {
    const res = await fetch(`${h.sdkEnv.E2B_SANDBOX_URL}${path}`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', 'e2b-sandbox-id': sbx.sandboxId,
        'e2b-sandbox-port': '49983', 'x-hutch-init-secret': 'f'.repeat(64) },
      body: JSON.stringify({ accessToken: 'taken', envVars: { HIJACK: '1' } }),
    });
    assert.equal(res.status, 404, path);
    await res.arrayBuffer();
  }
  // still open and unchanged
  const r = await sbx.commands.run('echo "${HIJACK:-none}"');
  assert.equal(r.stdout, 'none\n');
});

test('the proxy never forwards X-Hutch-Init-Secret to a sandbox port', async (t) => {
  if (!ok) return t.skip('no base template');
  // a server in the sandbox that answers with the request headers it got
  const server = 'import http.server as s\n' +
    'class H(s.BaseHTTPRequestHandler):\n' +
    '  def do_GET(self):\n' +
    '    b = str(self.headers).encode()\n' +
    '    self.send_response(200); self.send_header("Content-Length", str(len(b)))\n' +
    '    self.end_headers(); self.wfile.write(b)\n' +
    's.HTTPServer(("127.0.0.1", 8123), H).serve_forever()\n';
  await sbx.files.write('/tmp/echo.py', server);
  await sbx.commands.run('python3 /tmp/echo.py', { background: true });
  let text = '';
  for (let i = 0; i < 50 && !text.includes('X-Probe'); i++) {
    const res = await fetch(`${h.sdkEnv.E2B_SANDBOX_URL}/`, {
      headers: { 'e2b-sandbox-id': sbx.sandboxId, 'e2b-sandbox-port': '8123',
        'x-probe': 'seen', 'x-hutch-init-secret': 'guess', 'X-HUTCH-INIT-SECRET': 'guess2' },
    }).catch(() => null);
    text = res && res.status === 200 ? await res.text() : '';
    if (!text.includes('X-Probe') && !text.includes('x-probe'))
      await new Promise((r) => setTimeout(r, 100));
  }
  assert.match(text, /x-probe: seen/i);
  assert.doesNotMatch(text, /init-secret/i);
});

test('sandbox code, root included, cannot read the secret', async (t) => {
  if (!ok) return t.skip('no base template');
  const r = await sbx.commands.run(
    'env; cat /proc/1/environ 2>&1; cat /proc/self/environ | tr "\\0" "\\n"',
    { user: 'root' });
  assert.match(r.stdout, /PATH=/); // the environments were read
  assert.doesNotMatch(r.stdout, /HUTCH_INIT_SECRET|HUTCH_/);
});
