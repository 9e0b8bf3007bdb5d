// The live dashboard in a real browser (Debian's headless Chromium driven by playwright-core).
//
//   node dashboard.test.mjs <admin-url> <screenshot.png>
//
// Run by crates/veltrix/tests/dashboard.rs against the real engine while events flow; exits 0
// when every check passed. Env: VELTRIX_DASHBOARD_TOKEN (the engine's [api] token, if set),
// CHROMIUM (default /usr/bin/chromium).
import assert from 'node:assert/strict';
import path from 'node:path';
import { chromium } from 'playwright-core';

const [adminUrl, screenshot] = process.argv.slice(2);
if (!adminUrl || !screenshot) {
  console.error('usage: node dashboard.test.mjs <admin-url> <screenshot.png>');
  process.exit(2);
}
const base = adminUrl.replace(/\/+$/, '');
const token = process.env.VELTRIX_DASHBOARD_TOKEN || '';
const executablePath = process.env.CHROMIUM || '/usr/bin/chromium';
const WAIT = 30_000; // a failure guard, not a timing assertion

// The whole run is bounded: a hang fails instead of blocking CI.
const guard = setTimeout(() => {
  console.error('FAIL: the browser test took longer than 150 s');
  process.exit(1);
}, 150_000);

let passed = 0;
async function check(name, fn) {
  const started = Date.now();
  await fn();
  passed += 1;
  console.log(`ok ${passed} - ${name} (${Date.now() - started} ms)`);
}
const tid = (id) => `[data-testid="${id}"]`;

async function stats() {
  const res = await fetch(`${base}/api/v1/stats`, {
    headers: token ? { Authorization: `Bearer ${token}` } : {},
  });
  assert.equal(res.status, 200, 'GET /api/v1/stats with the token');
  return res.json();
}

const browser = await chromium.launch({
  executablePath,
  args: [
    '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync',
  ],
});
const problems = [];
try {
  const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
  const page = await context.newPage();
  page.on('pageerror', (err) => problems.push(`page error: ${err.message}`));
  page.on('console', (msg) => {
    // A CSP violation or a script error shows up as a console error.
    if (msg.type() === 'error' && !/Failed to load resource.*40[13]/.test(msg.text())) {
      problems.push(`console error: ${msg.text()}`);
    }
  });
  const requests = [];
  page.on('request', (req) => requests.push(req.url()));

  await check('GET / serves the page as HTML with a strict Content-Security-Policy', async () => {
    const res = await page.goto(`${base}/`);
    assert.equal(res.status(), 200);
    const headers = res.headers();
    assert.match(headers['content-type'], /^text\/html; charset=utf-8/);
    const csp = headers['content-security-policy'] || '';
    assert.match(csp, /default-src 'none'/);
    assert.match(csp, /connect-src 'self'/);
    assert.doesNotMatch(csp, /unsafe-inline|unsafe-eval/);
    assert.equal(await page.title(), 'Veltrix · live dashboard');
  });

  if (token) {
    await check('a 401 from the stats asks for the token; a wrong one is refused', async () => {
      await page.waitForSelector(`${tid('status')}[data-state="auth"]`, { timeout: WAIT });
      await page.locator(tid('token-form')).waitFor({ state: 'visible' });
      await page.fill(tid('token-input'), 'not-the-token');
      await page.click(tid('token-submit'));
      await page.waitForSelector(`${tid('status')}[data-state="auth"]`, { timeout: WAIT });
      await page.locator(tid('token-form')).waitFor({ state: 'visible' });
      assert.match(await page.textContent('#token-hint'), /refused/);
    });
    await check('the right token makes it live; it is kept in sessionStorage only', async () => {
      await page.fill(tid('token-input'), token);
      await page.click(tid('token-submit'));
      await page.waitForSelector(`${tid('status')}[data-state="live"]`, { timeout: WAIT });
      assert.ok(await page.locator(tid('token-form')).isHidden());
      assert.equal(await page.evaluate(() => sessionStorage.getItem('veltrix.adminToken')), token);
      assert.equal(await page.evaluate(() => localStorage.length), 0);
      // A reload in the same tab goes straight to live.
      await page.reload();
      await page.waitForSelector(`${tid('status')}[data-state="live"]`, { timeout: WAIT });
      assert.ok(await page.locator(tid('token-form')).isHidden());
    });
  }

  const doc = await stats();
  await check('the graph shows every source, queue, pipeline and sink, and the edges between them', async () => {
    await page.waitForSelector(`${tid('status')}[data-state="live"]`, { timeout: WAIT });
    assert.ok(doc.queues.length > 0 && doc.pipelines.length > 0, 'the topology has queues and pipelines');
    for (const [kind, list] of [['source', doc.sources], ['queue', doc.queues], ['pipeline', doc.pipelines], ['sink', doc.sinks]]) {
      for (const item of list) {
        const node = page.locator(tid(`${kind}-${item.name}`));
        await node.waitFor({ state: 'visible', timeout: WAIT });
        const box = await node.boundingBox();
        assert.ok(box.width > 100 && box.height > 50, `${kind} ${item.name} is drawn (${JSON.stringify(box)})`);
        assert.ok(box.x >= 0 && box.x + box.width <= 1280, `${kind} ${item.name} fits 1280 px`);
      }
    }
    for (const p of doc.pipelines) {
      for (const q of p.from) await page.locator(tid(`edge-queue-${q}-pipeline-${p.name}`)).waitFor({ state: 'attached' });
      await page.locator(tid(`edge-pipeline-${p.name}-sink-${p.sink}`)).waitFor({ state: 'attached' });
    }
    for (const s of doc.sources) {
      for (const q of s.to_queues) await page.locator(tid(`edge-source-${s.name}-queue-${q}`)).waitFor({ state: 'attached' });
    }
    // No horizontal scrolling at 1280×800.
    assert.ok(await page.evaluate(() => document.documentElement.scrollWidth <= window.innerWidth));
  });

  const pipeline = doc.pipelines[0].name;
  await check(`live numbers render and change (pipeline ${pipeline})`, async () => {
    const delivered = tid(`delivered-pipeline-${pipeline}`);
    await page.waitForFunction((sel) => /^\d[\d,]*$/.test(document.querySelector(sel)?.textContent || ''), delivered, { timeout: WAIT });
    const first = await page.textContent(delivered);
    await page.waitForFunction(([sel, before]) => document.querySelector(sel).textContent !== before, [delivered, first], { timeout: WAIT });
    const later = await page.textContent(delivered);
    const num = (s) => Number(s.replace(/,/g, ''));
    assert.ok(num(later) > num(first), `delivered grows: ${first} -> ${later}`);
    // A non-zero rate on the pipeline and on the edge into its sink.
    const rate = tid(`rate-pipeline-${pipeline}`);
    await page.waitForFunction((sel) => /^[\d.]+[kM]?\/s$/.test(document.querySelector(sel).textContent) && document.querySelector(sel).textContent !== '0/s', rate, { timeout: WAIT });
    const edgeRate = tid(`edge-rate-pipeline-${pipeline}-sink-${doc.pipelines[0].sink}`);
    await page.waitForFunction((sel) => document.querySelector(sel).textContent !== '0/s', edgeRate, { timeout: WAIT });
    for (const q of doc.queues) {
      assert.match(await page.textContent(tid(`depth-queue-${q.name}`)), /^\d[\d,]*$|^\d+(\.\d)?M$/);
      assert.match(await page.textContent(tid(`fill-queue-${q.name}`)), /%$/);
    }
    for (const p of doc.pipelines) {
      for (const f of ['p50', 'p99', 'busy', 'retries', 'dlq']) {
        assert.notEqual(await page.textContent(tid(`${f}-pipeline-${p.name}`)), '', `${f} of ${p.name}`);
      }
    }
    console.log(`   delivered ${first} -> ${later}, rate ${await page.textContent(rate)}`);
  });

  await check('the bottleneck stage is outlined and named', async () => {
    await page.waitForFunction(() => {
      const marked = document.querySelectorAll('[data-bottleneck="true"]');
      const named = document.querySelector('[data-testid="bottleneck"]').textContent;
      return marked.length === 1 && named.includes(marked[0].getAttribute('data-testid').split('-').slice(1).join('-'));
    }, null, { timeout: WAIT });
    const marked = page.locator('[data-bottleneck="true"]');
    const id = await marked.getAttribute('data-testid');
    const tag = page.locator(tid(`bottleneck-tag-${id}`));
    assert.ok(await tag.isVisible(), `the BOTTLENECK tag of ${id} shows`);
    assert.match(await tag.textContent(), /^BOTTLENECK · /);
    console.log(`   bottleneck: ${id} (${await tag.textContent()})`);
  });

  await check('sparklines draw the history', async () => {
    const spark = tid(`spark-pipeline-${pipeline}-rate`);
    await page.waitForFunction((sel) => {
      const line = document.querySelector(`${sel} polyline`);
      return line && line.getAttribute('points').split(' ').length >= 3;
    }, spark, { timeout: WAIT });
    for (const q of doc.queues) await page.locator(`${tid(`spark-queue-${q.name}-depth`)} polyline`).first().waitFor({ state: 'attached', timeout: WAIT });
    for (const p of doc.pipelines) await page.locator(tid(`spark-pipeline-${p.name}-p99`)).waitFor({ state: 'attached' });
  });

  await check('everything the page loaded came from the engine itself', async () => {
    const origin = new URL(base).origin;
    const foreign = requests.filter((u) => !u.startsWith(origin) && !u.startsWith('data:'));
    assert.deepEqual(foreign, []);
    assert.ok(requests.some((u) => u.endsWith('/api/v1/stats')), 'the page polled /api/v1/stats');
  });

  await check(`screenshot saved to ${screenshot}`, async () => {
    // Let a few more samples arrive, so the sparklines have some history.
    await page.waitForTimeout(4000);
    await page.screenshot({ path: screenshot });
  });

  await check('a failing engine shows "engine unreachable", and the page recovers', async () => {
    await page.route('**/api/v1/stats', (route) => route.abort('connectionrefused'));
    await page.waitForSelector(`${tid('status')}[data-state="unreachable"]`, { timeout: WAIT });
    const banner = page.locator(tid('unreachable'));
    assert.ok(await banner.isVisible());
    assert.match(await banner.textContent(), /Engine unreachable/);
    assert.ok(await page.evaluate(() => document.body.classList.contains('stale')), 'old numbers are greyed out');
    const down = screenshot.replace(/\.png$/, '') + '-unreachable.png';
    await page.screenshot({ path: down });
    await page.unroute('**/api/v1/stats');
    await page.waitForSelector(`${tid('status')}[data-state="live"]`, { timeout: WAIT });
    assert.ok(await banner.isHidden());
    console.log(`   screenshot of the unreachable state: ${path.basename(down)}`);
  });

  // Chromium reports its own refusal of the aborted requests as console errors; only problems
  // from before that step count.
  await check('no script errors and no Content-Security-Policy violations', async () => {
    const real = problems.filter((p) => !/ERR_CONNECTION_REFUSED|Failed to load resource/.test(p));
    assert.deepEqual(real, []);
  });
} catch (err) {
  console.error(`FAIL after ${passed} passed: ${err.stack || err}`);
  if (problems.length) console.error(`page problems:\n  ${problems.join('\n  ')}`);
  await browser.close();
  process.exit(1);
}
await browser.close();
clearTimeout(guard);
console.log(`dashboard browser test: all ${passed} checks passed`);
