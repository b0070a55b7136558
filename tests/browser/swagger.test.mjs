// Swagger UI in a real browser: Debian's Chromium, driven by playwright-core.
//
//   CONTEXTD_BASE_URL=http://127.0.0.1:PORT CONTEXTD_KEY=ctxd_... node swagger.test.mjs
//
// scripts/test-browser.sh starts a fresh server (auth on, an admin bootstrap key, the default
// configuration otherwise) and runs this with its URL and key. Exit code 0 means every check passed:
//
//   1. /swagger-ui/ loads and renders every operation of /openapi.json, and the page fetches
//      nothing from outside loopback (every request of the browser is recorded; others are
//      refused and listed).
//   2. "Authorize" takes the key: click Authorize, fill the bearer value, Authorize, Close.
//   3. Every operation, run through the UI as a user would: expand it, "Try it out", keep the
//      values Swagger UI pre-fills from the document (bodies and parameters), fill only the
//      required path parameters that have none (each one is printed), "Execute", and read the
//      status Swagger UI shows. Writes (PUT, POST, DELETE, PATCH) must answer 2xx; GETs 2xx, or
//      404 for something that does not exist yet (reported as such). The operations run in an
//      order where what they act on exists (see ORDER).
//   4. Without authorizing, a protected GET shows 401.
//
// The point of 3 is the document's examples: what Swagger UI pre-fills comes from them (or is
// generated from the schemas), so a wrong example is a failing row here, with the body that was
// sent and the server's `detail`. When a write that later operations depend on fails (the PUT
// that makes the context, the POST that makes a key), the test makes the thing over plain HTTP
// and says so, so that each later row fails only for its own examples.

import { createRequire } from 'node:module';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

// ---------------------------------------------------------------------------------------------
// Settings

const BASE_URL = (process.argv[2] || process.env.CONTEXTD_BASE_URL || '').replace(/\/+$/, '');
const KEY = process.env.CONTEXTD_KEY || '';
const CHROMIUM = process.env.CHROMIUM_PATH || '/usr/bin/chromium';
if (!BASE_URL || !KEY) {
  console.error('usage: CONTEXTD_BASE_URL=http://127.0.0.1:PORT CONTEXTD_KEY=<admin key> node swagger.test.mjs');
  process.exit(2);
}

// Values for required path parameters the document gives no example for. A document example
// for a parameter wins (Swagger UI pre-fills it, and the test keeps it).
const CONTEXT_ID = 'ctx_browser'; // {id} of /contexts/... and /sync/factory/...
const VERSION_N = '1'; //            {n} of /contexts/{id}/versions/{n}...
// {id} of /admin/keys/{id}: the id of the key that POST /admin/keys made just before.

// Time limits (ms). The whole run stays well under three minutes; WATCHDOG ends it regardless.
const UI_TIMEOUT = 15_000; //  an element to appear, a click to land
const CALL_TIMEOUT = 20_000; // an executed request to be answered and shown
const WATCHDOG = 170_000;

// The order the operations run in: things are made before they are read, restored, merged or
// deleted. Operations of the document that are not listed run after the listed non-DELETEs and
// before the DELETEs (writes first, then reads); listed ones the document lacks are skipped.
const ORDER = [
  'POST /admin/keys', //                      a key, revoked by the last row
  'GET /admin/keys',
  'POST /contexts', //                        the example's context (its context_id, if any)
  'PUT /contexts/{id}', //                    the context the {id} rows below act on
  'GET /contexts/{id}',
  'GET /contexts',
  'GET /contexts/{id}/versions',
  'GET /contexts/{id}/versions/{n}',
  'POST /contexts/{id}/versions/{n}/restore',
  'POST /sync/factory', //                    the second context the merge example names
  'POST /contexts/merge',
  'POST /contexts/search',
  'POST /cache/warm',
  'GET /sync/factory/changes',
  'GET /sync/factory/{id}',
  'GET /healthz',
  'GET /readyz',
  'GET /metrics',
  'GET /metrics/summary',
  'DELETE /contexts/{id}',
  'DELETE /admin/keys/{id}',
];
const METHODS = ['get', 'put', 'post', 'delete', 'patch'];
const WRITES = new Set(['PUT', 'POST', 'DELETE', 'PATCH']);

// playwright-core is installed by scripts/test-browser.sh into target/browser/node_modules
// (CONTEXTD_BROWSER_DEPS), not beside this file; a plain `npm ci` here works too.
const here = path.dirname(fileURLToPath(import.meta.url));
function loadPlaywright() {
  const dirs = [process.env.CONTEXTD_BROWSER_DEPS, path.join(here, '../../target/browser'), here];
  for (const dir of dirs.filter(Boolean)) {
    try {
      return createRequire(path.join(path.resolve(dir), 'package.json'))('playwright-core');
    } catch (e) {
      if (e.code !== 'MODULE_NOT_FOUND') throw e;
    }
  }
  throw new Error('playwright-core not found: run scripts/test-browser.sh (it installs it)');
}
const { chromium } = loadPlaywright();

// ---------------------------------------------------------------------------------------------
// Results

const checks = []; // { name, ok, detail }
function check(name, ok, detail = '') {
  checks.push({ name, ok, detail });
  console.log(`${ok ? 'ok  ' : 'FAIL'}  ${name}${detail ? `: ${detail}` : ''}`);
}
const log = (msg) => console.log(`      ${msg}`);

// Is this URL served by this machine (or not fetched at all)?
function isLocal(url) {
  const u = new URL(url);
  if (['data:', 'blob:', 'about:'].includes(u.protocol)) return true;
  return ['127.0.0.1', 'localhost', '[::1]'].includes(u.hostname);
}

// ---------------------------------------------------------------------------------------------
// The document

async function loadDocument() {
  const res = await fetch(`${BASE_URL}/openapi.json`);
  if (!res.ok) throw new Error(`GET /openapi.json answered ${res.status}`);
  const doc = await res.json();
  const ops = [];
  for (const [p, item] of Object.entries(doc.paths || {})) {
    for (const m of METHODS) {
      if (!item[m]) continue;
      // Parameters may sit on the path item and on the operation (the operation's win).
      const params = new Map();
      for (const prm of [...(item.parameters || []), ...(item[m].parameters || [])]) {
        const resolved = prm.$ref ? resolveRef(doc, prm.$ref) : prm;
        params.set(`${resolved.in}:${resolved.name}`, resolved);
      }
      ops.push({ method: m.toUpperCase(), path: p, op: item[m], params: [...params.values()] });
    }
  }
  return { doc, ops: orderOperations(ops) };
}

function resolveRef(doc, ref) {
  return ref.replace(/^#\//, '').split('/').reduce((node, key) => node?.[key.replace(/~1/g, '/').replace(/~0/g, '~')], doc);
}

// Sort by ORDER; unlisted ones go after the listed non-DELETEs, writes before reads, and all
// DELETEs last.
function orderOperations(ops) {
  const rank = (o) => {
    const i = ORDER.indexOf(`${o.method} ${o.path}`);
    if (o.method === 'DELETE') return 3000 + (i < 0 ? 999 : i);
    if (i >= 0) return i;
    return 1000 + (WRITES.has(o.method) ? 0 : 1);
  };
  return ops.map((o, i) => ({ o, i })).sort((a, b) => rank(a.o) - rank(b.o) || a.i - b.i).map(({ o }) => o);
}

// ---------------------------------------------------------------------------------------------
// Swagger UI, by its DOM (Swagger UI 5)

async function openSwaggerUi(page) {
  await page.goto(`${BASE_URL}/swagger-ui/`, { waitUntil: 'load', timeout: UI_TIMEOUT });
  await page.locator('.opblock').first().waitFor({ timeout: UI_TIMEOUT });
}

// The block of one operation: an `.opblock-<method>` whose summary shows the path.
function opblock(page, method, p) {
  return page
    .locator(`.opblock.opblock-${method.toLowerCase()}`)
    .filter({ has: page.locator(`.opblock-summary-path[data-path="${p}"]`) })
    .first();
}

async function authorize(page, key) {
  await page.locator('.auth-wrapper button.authorize').first().click({ timeout: UI_TIMEOUT });
  const modal = page.locator('.modal-ux');
  await modal.waitFor({ timeout: UI_TIMEOUT });
  // The http/bearer scheme's value field (the only input of a one-scheme document).
  const input = modal.locator('input#auth-bearer-value, input[aria-label="auth-bearer-value"], .auth-container input[type="text"]').first();
  await input.fill(key, { timeout: UI_TIMEOUT });
  await modal.locator('.auth-btn-wrapper button.authorize, button[aria-label="Apply credentials"]').first().click({ timeout: UI_TIMEOUT });
  // Authorized: the form shows "Authorized" and offers Logout.
  await modal.locator('button[aria-label="Remove authorization"], h6:has-text("Authorized")').first().waitFor({ timeout: UI_TIMEOUT });
  await modal.locator('button.btn-done').first().click({ timeout: UI_TIMEOUT });
  await modal.waitFor({ state: 'detached', timeout: UI_TIMEOUT });
  // The lock on the top button closes once a scheme is authorized.
  return page.locator('.auth-wrapper button.authorize.locked').count();
}

// A path template as a regular expression over URL paths: /contexts/{id} -> ^/contexts/[^/]+$
function pathRegex(template) {
  const esc = template.split(/\{[^}]+\}/).map((s) => s.replace(/[.*+?^$()|[\]\\]/g, '\\$&'));
  return new RegExp(`^${esc.join('[^/]+')}$`);
}

// Run one operation through the UI. `fill` maps names of required path parameters without a
// value to the value to type. Returns what Swagger UI showed and what the browser sent.
async function runOperation(page, op, fill) {
  const block = opblock(page, op.method, op.path);
  await block.waitFor({ timeout: UI_TIMEOUT });
  try {
    return await tryItOut(page, block, op, fill);
  } finally {
    // Collapse it again: every open block re-renders on each later change, and with a few
    // open the page gets several times slower.
    if (await block.evaluate((el) => el.classList.contains('is-open')).catch(() => false)) {
      await block.locator('.opblock-summary').first().click({ timeout: UI_TIMEOUT }).catch(() => {});
    }
  }
}

async function tryItOut(page, block, { method, path: p, params }, fill) {
  await block.scrollIntoViewIfNeeded();
  // Expand (unless deep linking or an earlier run left it open).
  if (!(await block.evaluate((el) => el.classList.contains('is-open')))) {
    await block.locator('.opblock-summary').first().click({ timeout: UI_TIMEOUT });
  }
  await block.locator('button.try-out__btn').first().click({ timeout: UI_TIMEOUT });
  await block.locator('button.execute').first().waitFor({ timeout: UI_TIMEOUT });

  // Required path parameters that Swagger UI left empty (no example in the document).
  const filled = [];
  for (const prm of params.filter((x) => x.in === 'path' && x.required)) {
    const input = block.locator(`tr[data-param-name="${prm.name}"][data-param-in="path"] input`).first();
    if ((await input.inputValue({ timeout: UI_TIMEOUT })) !== '') continue;
    const value = fill[prm.name];
    if (value === undefined) throw new Error(`no value to fill for the path parameter {${prm.name}}`);
    await input.fill(String(value));
    filled.push(`${prm.name}=${value}`);
  }

  // Execute, and catch the request Swagger UI makes (method and path template) to see what it
  // sent; the status is then read from the page, as a user reads it.
  const re = pathRegex(p);
  const matches = (r) => r.method() === method && re.test(new URL(r.url()).pathname);
  const requestSent = page.waitForRequest(matches, { timeout: CALL_TIMEOUT }).catch(() => null);
  const responded = page.waitForResponse((r) => matches(r.request()), { timeout: CALL_TIMEOUT }).catch(() => null);
  await block.locator('button.execute').first().click({ timeout: UI_TIMEOUT });
  const request = await requestSent;
  if (!request) {
    // Swagger UI validates before sending: required fields it finds empty or wrong get `.invalid`.
    const invalid = await block.locator('.invalid').evaluateAll((els) => els.map((e) => e.closest('tr')?.dataset.paramName || e.className));
    return { filled, status: null, problem: `Swagger UI sent nothing${invalid.length ? ` (invalid: ${invalid.join(', ')})` : ''}` };
  }
  const response = await responded;
  const shown = block.locator('.live-responses-table .response .response-col_status').first();
  await shown.waitFor({ timeout: CALL_TIMEOUT });
  const text = (await shown.innerText()).trim();
  const status = /^\d{3}/.test(text) ? Number(text.slice(0, 3)) : null;

  const url = new URL(request.url());
  let body = null; // what the server answered, parsed when it is JSON
  if (response) {
    try { body = await response.json(); } catch { body = null; }
  }
  if (response && status !== null && status !== response.status()) {
    log(`note: Swagger UI shows ${status}, the network saw ${response.status()}`);
  }
  return {
    filled,
    status,
    shownText: text,
    sentPath: url.pathname,
    query: url.search,
    sent: compactJson(request.postData()),
    answer: body,
    problem: status === null ? `Swagger UI shows "${text}"` : problemText(body),
  };
}

function compactJson(text) {
  if (text == null || text === '') return '';
  try { return JSON.stringify(JSON.parse(text)); } catch { return text; }
}

// The server's explanation of an error answer (problem+json), if any.
function problemText(body) {
  if (!body || typeof body !== 'object') return '';
  return [body.detail || body.title, body.errors && JSON.stringify(body.errors)].filter(Boolean).join(' ');
}

// ---------------------------------------------------------------------------------------------
// Plain HTTP, only to stand in for a failed write that later rows depend on

async function api(method, p, body) {
  const res = await fetch(`${BASE_URL}${p}`, {
    method,
    headers: { authorization: `Bearer ${KEY}`, 'content-type': 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const json = await res.json().catch(() => null);
  if (!res.ok) throw new Error(`${method} ${p} answered ${res.status}: ${problemText(json)}`);
  return json;
}

// ---------------------------------------------------------------------------------------------
// The run

async function main() {
  const started = Date.now();
  const { ops } = await loadDocument();
  console.log(`swagger: ${ops.length} operations in ${BASE_URL}/openapi.json; Chromium at ${CHROMIUM}`);

  const profile = fs.mkdtempSync(path.join(os.tmpdir(), 'contextd-chromium-'));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    args: [
      '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      // Without these Chromium dials out by itself, which this closed network refuses.
      '--disable-background-networking', '--disable-component-update', '--disable-sync',
    ],
  });
  try {
    context.setDefaultTimeout(UI_TIMEOUT);

    // Every request any page makes is recorded; one leaving loopback is refused (it could not
    // be answered here anyway) and fails check 1.
    const outside = new Set();
    context.on('request', (r) => { if (!isLocal(r.url())) outside.add(r.url()); });
    await context.route('**/*', (route) => {
      if (isLocal(route.request().url())) return route.continue();
      outside.add(route.request().url());
      return route.abort('blockedbyclient');
    });
    const pageErrors = [];

    // --- 4. Without authorizing, a protected GET shows 401 (its own page, never authorized).
    const anon = context.pages()[0] || (await context.newPage());
    anon.on('pageerror', (e) => pageErrors.push(String(e)));
    await openSwaggerUi(anon);
    const protectedGet = ops.find((o) => o.method === 'GET' && o.path === '/contexts')
      || ops.find((o) => o.method === 'GET' && (o.op.security ?? []).some((s) => Object.keys(s).length > 0));
    {
      const r = await runOperation(anon, protectedGet, { id: CONTEXT_ID, n: VERSION_N });
      check(`unauthorized ${protectedGet.method} ${protectedGet.path} shows 401`, r.status === 401,
        `Swagger UI shows ${r.status ?? r.problem}`);
    }
    await anon.close();

    // --- 1. The page loads and renders every operation.
    const page = await context.newPage();
    page.on('pageerror', (e) => pageErrors.push(String(e)));
    await openSwaggerUi(page);
    const rendered = await page.locator('.opblock').evaluateAll((els) => els.map((el) => {
      const method = [...el.classList].find((c) => c.startsWith('opblock-') && !c.startsWith('opblock-summary'))?.slice(8);
      return `${(method || '').toUpperCase()} ${el.querySelector('.opblock-summary-path')?.getAttribute('data-path')}`;
    }));
    const missing = ops.map((o) => `${o.method} ${o.path}`).filter((k) => !rendered.includes(k));
    check(`/swagger-ui/ renders all ${ops.length} operations`, missing.length === 0,
      missing.length ? `missing: ${missing.join(', ')}` : `${rendered.length} operation blocks`);

    // --- 2. Authorize with the key.
    const locked = await authorize(page, KEY);
    check('Authorize takes the bearer key', locked > 0, locked > 0 ? '' : 'the Authorize button did not lock');

    // --- 3. Every operation, in order.
    const fill = { id: CONTEXT_ID, n: VERSION_N };
    const rows = [];
    for (const o of ops) {
      const isKeyRoute = o.path.startsWith('/admin/keys/');
      const values = isKeyRoute ? { ...fill, id: fill.keyId } : fill;
      let r;
      try {
        r = await runOperation(page, o, values);
      } catch (e) {
        r = { filled: [], status: null, problem: `UI step failed: ${String(e.message).split('\n')[0]}` };
      }
      const write = WRITES.has(o.method);
      const ok2xx = r.status !== null && r.status >= 200 && r.status < 300;
      const ok = ok2xx || (!write && r.status === 404);
      rows.push({ ...o, ...r, ok, note: ok && !ok2xx ? 'ok (404: not there)' : ok ? 'ok' : 'FAIL' });
      if (r.filled.length) log(`${o.method} ${o.path}: filled required path parameter(s) without an example: ${r.filled.join(', ')}`);

      // Keep what the later rows need, standing in for a failed write over plain HTTP.
      if (o.method === 'POST' && o.path === '/admin/keys') {
        fill.keyId = ok2xx && r.answer?.id;
        if (!fill.keyId) {
          fill.keyId = (await api('POST', '/admin/keys', { name: 'browser-test', role: 'read' })).id;
          log(`POST /admin/keys failed in the UI: made key ${fill.keyId} over HTTP for DELETE /admin/keys/{id}`);
        }
      }
      if (o.method === 'PUT' && o.path === '/contexts/{id}' && !ok2xx) {
        const id = r.sentPath ? decodeURIComponent(r.sentPath.split('/')[2]) : CONTEXT_ID;
        await api('PUT', `/contexts/${encodeURIComponent(id)}`, { data: { made_by: 'browser-test' }, source: 'mcp' });
        log(`PUT /contexts/{id} failed in the UI: made context ${id} over HTTP for the rows after it`);
      }
    }

    // The table: method, path, status, result, and what Swagger UI sent.
    console.log('');
    const w = { m: 6, p: Math.max(...rows.map((r) => r.path.length)), s: 6, r: 19 };
    console.log(`${'METHOD'.padEnd(w.m)}  ${'PATH'.padEnd(w.p)}  ${'STATUS'.padEnd(w.s)}  ${'RESULT'.padEnd(w.r)}  SENT (query, body)`);
    for (const r of rows) {
      const sent = [r.query, r.sent].filter(Boolean).join(' ') || '-';
      console.log(`${r.method.padEnd(w.m)}  ${r.path.padEnd(w.p)}  ${String(r.status ?? '-').padEnd(w.s)}  ${r.note.padEnd(w.r)}  ${sent}`);
      if (!r.ok && r.problem) console.log(`${''.padEnd(w.m + w.p + w.s + 6)}  why: ${r.problem}`);
    }
    console.log('');
    for (const r of rows) check(`${r.method} ${r.path} through Swagger UI`, r.ok, r.ok ? `${r.status}` : `${r.status ?? '-'} ${r.problem || ''}`.trim());

    // --- 1, the second half: nothing from outside loopback, over the whole run.
    check('the page fetches nothing from outside 127.0.0.1', outside.size === 0,
      outside.size ? [...outside].join(', ') : '');
    if (pageErrors.length) log(`page errors: ${pageErrors.join(' | ')}`);
    log(`browser part took ${((Date.now() - started) / 1000).toFixed(1)} s`);
  } finally {
    await context.close().catch(() => {});
    fs.rmSync(profile, { recursive: true, force: true });
  }
}

const watchdog = setTimeout(() => {
  console.error(`swagger: gave up after ${WATCHDOG / 1000} s`);
  process.exit(1);
}, WATCHDOG);

try {
  await main();
} catch (e) {
  check('the run completed', false, e.stack || String(e));
}
clearTimeout(watchdog);
const failed = checks.filter((c) => !c.ok).length;
console.log(`swagger: ${checks.length - failed} passed, ${failed} failed`);
process.exit(failed ? 1 : 0);
