// Drives Sluice's dashboard in Debian's Chromium with playwright-core:
// load the page, send traffic through the proxy, see the flows appear live,
// filter them, use the explainer, see a DNS tunnelling burst appear live in
// the alerts panel (from the alert stream), and save a screenshot.
//
// Run by `cargo test` (crates/sluice/tests/admin.rs), which starts Sluice
// and a local origin and passes them in the environment:
//   SLUICE_ADMIN  http://127.0.0.1:PORT of the admin listener
//   SLUICE_PROXY  127.0.0.1:PORT of the HTTP proxy
//   SLUICE_ORIGIN 127.0.0.1:PORT of an origin the policy allows (rule `origin`)
//   SLUICE_DNS    127.0.0.1:PORT of the DNS listener (zone `web` for 127.0.0.1)
//   SCREENSHOT    where to save the screenshot (and beside it NAME-readme.png,
//                 the README's smaller one)
//   CHROMIUM      the browser (default /usr/bin/chromium)
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import dgram from 'node:dgram';
import http from 'node:http';
import { chromium } from 'playwright-core';

const admin = need('SLUICE_ADMIN');
const [proxyHost, proxyPort] = need('SLUICE_PROXY').split(':');
const origin = need('SLUICE_ORIGIN');
const [dnsHost, dnsPort] = need('SLUICE_DNS').split(':');
const screenshot = need('SCREENSHOT');

function need(name) {
  const v = process.env[name];
  if (!v) throw new Error(`${name} is not set`);
  return v;
}

function check(cond, what) {
  if (!cond) throw new Error('failed: ' + what);
  console.log('ok - ' + what);
}

/// One absolute-form request through the proxy (a POST when `body` is
/// given); resolves with the status.
function viaProxy(url, body) {
  return new Promise((resolve, reject) => {
    const u = new URL(url);
    const headers = { Host: u.host, Connection: 'close' };
    if (body) headers['Content-Length'] = String(body.length);
    const req = http.request({
      host: proxyHost, port: Number(proxyPort), method: body ? 'POST' : 'GET', path: url,
      headers, timeout: 10000,
    }, (res) => { res.resume(); res.on('end', () => resolve(res.statusCode)); });
    req.on('timeout', () => req.destroy(new Error('proxy request timed out')));
    req.on('error', reject);
    req.end(body);
  });
}

/// One DNS query of type TXT for `name` over UDP; resolves with the rcode.
function dnsTxt(sock, name, id) {
  const labels = name.split('.').map((l) => Buffer.concat([Buffer.from([l.length]), Buffer.from(l)]));
  const header = Buffer.from([id >> 8, id & 0xff, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
  const packet = Buffer.concat([header, ...labels, Buffer.from([0, 0, 16, 0, 1])]);
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => { sock.off('message', onMessage); reject(new Error(`no DNS answer for ${name}`)); }, 5000);
    function onMessage(msg) {
      if (msg.length < 12 || msg.readUInt16BE(0) !== id) return;
      clearTimeout(timer);
      sock.off('message', onMessage);
      resolve(msg[3] & 0x0f);
    }
    sock.on('message', onMessage);
    sock.send(packet, Number(dnsPort), dnsHost);
  });
}

/// What data leaving through DNS looks like: unique 50-character base32
/// labels under one domain, asked as TXT.
async function tunnellingBurst(domain, n) {
  const sock = dgram.createSocket('udp4');
  const alphabet = 'abcdefghijklmnopqrstuvwxyz234567';
  try {
    for (let i = 0; i < n; i++) {
      let label = '';
      for (let j = 0; j < 50; j++) label += alphabet[Math.floor(Math.random() * 32)];
      await dnsTxt(sock, `${label}.t.${domain}`, 0x1000 + i);
    }
  } finally {
    sock.close();
  }
}

/// The y-axis labels of a chart, bottom to top.
async function yLabels(sel) {
  return page.locator(sel + ' text.y').allTextContents();
}

const dir = mkdtempSync(join(tmpdir(), 'sluice-chromium-'));
const context = await chromium.launchPersistentContext(dir, {
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  headless: true,
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  viewport: { width: 1400, height: 1300 },
  // Not the machine's zone, so that the test shows times are converted and
  // labelled with the zone they are shown in.
  timezoneId: 'Asia/Kolkata',
});
const problems = [];
let page;
try {
  page = context.pages()[0] ?? await context.newPage();
  page.setDefaultTimeout(15000);
  page.on('console', (m) => { if (m.type() === 'error') problems.push(m.text()); });
  page.on('pageerror', (e) => problems.push(String(e)));

  await page.goto(admin + '/');
  await page.locator('#live', { hasText: 'live' }).waitFor();
  check(true, 'dashboard loaded and the live stream connected');
  await page.locator('#policy', { hasText: /policy [0-9a-f]{16}/ }).waitFor();
  check(true, 'policy hash shown');

  // Idle charts: a single `0 B` / `0` tick, never `1 B / 1 B / 0 B`.
  await page.waitForFunction(() => document.querySelectorAll('#chart text.y').length >= 1
    && document.querySelectorAll('#denials-chart text.y').length >= 1);
  check(JSON.stringify(await yLabels('#chart')) === '["0 B"]', `idle bytes axis: ${await yLabels('#chart')}`);
  check(JSON.stringify(await yLabels('#denials-chart')) === '["0"]', `idle denials axis: ${await yLabels('#denials-chart')}`);
  const xs = await page.locator('#chart text.x').allTextContents();
  check(xs.length === 2 && xs.every((t) => /^\d\d:\d\d GMT\+5:30$/.test(t)), `time axis with the time zone: ${xs}`);

  // Traffic after the page loaded: it can only arrive through the stream.
  const statuses = [];
  for (let i = 1; i <= 3; i++) statuses.push(await viaProxy(`http://${origin}/upload`, 'x'.repeat(4000 * i)));
  for (let i = 0; i < 2; i++) statuses.push(await viaProxy(`http://x${i}.blocked.test/`));
  statuses.push(await viaProxy(`http://${origin}/bytes/60000`));
  check(JSON.stringify(statuses) === '[200,200,200,403,403,200]', `proxy answered ${statuses}`);

  const rows = page.locator('#flows tbody tr');
  await page.waitForFunction(() => document.querySelectorAll('#flows tbody tr').length >= 6);
  check(true, 'six flows appeared live');
  check(await page.locator('#flows tbody tr.deny', { hasText: 'blocked.test' }).count() === 2,
    'denied flows are marked deny with their destination');
  check(await page.locator('#flows tbody tr.allow .verdict.allow').count() >= 3, 'allowed flows are green');
  check(await page.locator('#flows tbody tr', { hasText: 'blocked' }).first().locator('td.rule').innerText() === 'blocked',
    'the rule id is shown');
  const heads = await page.locator('#flows thead th').allInnerTexts();
  check(['user', 'method', 'status', 'reason'].every((h) => heads.includes(h)), `user, method, status and reason columns: ${heads}`);
  const post = page.locator('#flows tbody tr', { hasText: origin }).filter({ has: page.locator('td.method', { hasText: 'POST' }) }).first();
  check(await post.locator('td.status').innerText() === '200', 'an upload shows method POST and status 200');
  const denied = page.locator('#flows tbody tr.deny').first();
  check((await denied.locator('td.reason').innerText()).includes('matches deny rule blocked'), 'a denial shows its reason in a column');
  check(await denied.locator('td.user').innerText() === '—', 'no user shown as a dash');
  check(await denied.locator('td.status').innerText() === '403', 'a denial shows status 403');
  const when = page.locator('#flows tbody tr').first().locator('td').first();
  const shown = await when.innerText();
  const raw = await when.getAttribute('title');
  check(/^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d GMT\+5:30$/.test(shown), `absolute timestamp with the time zone: ${shown}`);
  const back = Date.parse(shown.replace(' ', 'T').replace(' GMT+5:30', '+05:30'));
  check(back === Math.floor(Date.parse(raw) / 1000) * 1000, `it is the record's time (${raw}) in that zone`);

  // Filters: verdict, then host substring, then clear.
  await page.selectOption('#f-verdict', 'deny');
  await page.waitForFunction(() => [...document.querySelectorAll('#flows tbody tr')].every((r) => r.classList.contains('deny')));
  check(await rows.count() === 2, 'verdict filter shows only the 2 denials');
  await page.selectOption('#f-verdict', '');
  await page.fill('#f-host', 'x1.blocked');
  await page.waitForFunction(() => document.querySelectorAll('#flows tbody tr').length === 1);
  check((await rows.first().innerText()).includes('x1.blocked.test'), 'host filter narrows to one flow');
  await page.click('#f-clear');
  await page.waitForFunction(() => document.querySelectorAll('#flows tbody tr').length >= 5);
  check(true, 'clearing the filters shows every flow again');

  // A filtered live view: new allowed traffic does not show under verdict=deny.
  await page.selectOption('#f-verdict', 'deny');
  await page.waitForFunction(() => document.querySelectorAll('#flows tbody tr').length === 2);
  await viaProxy(`http://${origin}/bytes/10`);
  await viaProxy('http://x9.blocked.test/');
  await page.waitForFunction(() => document.querySelectorAll('#flows tbody tr').length === 3);
  check(await page.locator('#flows tbody tr', { hasText: 'x9.blocked.test' }).count() === 1,
    'a live denial appears under the deny filter and the allowed flow does not');
  await page.click('#f-clear');

  // The explainer.
  await page.fill('#x-from', '127.0.0.1');
  await page.fill('#x-target', 'https://api.blocked.test/');
  await page.click('#x-go');
  await page.locator('#x-verdict.deny').waitFor();
  check(await page.locator('#x-rule').innerText() === 'blocked', 'explainer: denied by rule blocked');
  check((await page.locator('#x-reason').innerText()).includes('matches deny rule blocked'), 'explainer says why');
  await page.fill('#x-target', origin);
  await page.click('#x-go');
  await page.locator('#x-verdict.allow').waitFor();
  check(await page.locator('#x-rule').innerText() === 'origin', 'explainer: allowed by rule origin');

  // Panels refreshed from the API.
  await page.waitForFunction(() => document.querySelectorAll('#chart polyline').length >= 1);
  await page.locator('#legend', { hasText: /web 23 KiB out, 5\d KiB in/ }).waitFor();
  check(true, `bytes chart drawn with the 24,000 bytes sent and the 60,000 downloaded: ${await page.locator('#legend').innerText()}`);
  const inLine = await page.locator('#chart polyline[data-series="in"][data-zone="web"]').getAttribute('points');
  check(new Set(inLine.split(' ').map((p) => p.split(',')[1])).size > 1, 'the download is not a flat line');
  await page.locator('#denials-legend', { hasText: 'web 3 denials' }).waitFor();
  check(await page.locator('#denials-chart polyline[data-zone="web"]').count() === 1, 'denials over time drawn: web 3 denials');
  for (const c of ['#chart', '#denials-chart']) {
    const ys = await yLabels(c);
    check(ys.length >= 2 && new Set(ys).size === ys.length, `${c} axis labels do not repeat: ${ys}`);
  }
  await page.locator('#top table.destinations td', { hasText: origin.split(':')[0] }).first().waitFor();
  check(true, 'top destinations listed');
  check(await page.locator('#top table.sources td', { hasText: '127.0.0.1' }).count() >= 1, 'top sources listed');
  check(await page.locator('#top td', { hasText: /^1 flow$/ }).count() >= 1, 'one flow is "1 flow"');
  check(!/(^|[^0-9])1 (flows|denials|rules|alerts|minutes|hours)\b/.test(await page.locator('body').innerText()), 'no "1 flows"');
  await page.locator('#denials tbody tr', { hasText: 'matches deny rule blocked' }).first().waitFor();
  check(true, 'recent denials show rule and reason');
  await page.locator('#rules tbody tr[data-rule="blocked"]', { hasText: '3' }).waitFor();
  check(true, 'rule hit counts shown');
  check(await page.locator('#rules tbody tr[data-rule="never-used"] .stale').count() === 1, 'a rule without hits is marked stale');
  check(await page.locator('#rules tbody tr[data-rule="never-used"] .expired').count() === 1, 'an expired rule is marked expired');
  check(await page.locator('#rules tbody tr[data-rule="never-used"] td.owner', { hasText: 'bob' }).count() === 1, 'a rule shows its owner');
  check(await page.locator('#rules tbody tr[data-rule="origin"] .expired').count() === 0, 'a live rule is not marked expired');
  check(/1 expired/.test(await page.locator('#rules-note').innerText()), 'the rules note counts expired rules');
  check(await page.locator('#alerts tbody tr.empty', { hasText: 'none' }).count() === 1, 'alerts panel shown (empty)');

  // The README's picture (docs/dashboard.png is a copy): the top of the
  // page with HTTP traffic, small enough to keep in the repository.
  const readme = screenshot.replace(/\.png$/, '') + '-readme.png';
  await page.setViewportSize({ width: 1200, height: 900 });
  await page.evaluate(() => window.scrollTo(0, 0));
  await page.screenshot({ path: readme });
  await page.setViewportSize({ width: 1400, height: 1300 });
  check(true, `README screenshot saved to ${readme}`);

  // A DNS tunnelling burst: the alerts panel shows it live, from
  // /api/v1/alerts/stream (rows from the stream are marked `live`; the
  // panel's periodic refresh alone would not mark it).
  await page.locator('#alerts-live.on').waitFor();
  check(true, 'the alert stream connected');
  await tunnellingBurst('exfil-tunnel.test', 40);
  const alert = page.locator('#alerts tbody tr.live[data-kind="dns-tunnel"][data-live="stream"]', { hasText: 'exfil-tunnel.test' });
  await alert.waitFor();
  check(true, 'the tunnelling alert appeared live in the alerts panel');
  const cells = await alert.locator('td').allInnerTexts();
  check(cells[1] === 'critical' && cells[2] === 'dns-tunnel' && cells[3] === 'web',
    `severity, kind and zone shown: ${cells.slice(1, 4)}`);
  check(cells[4] === '127.0.0.1' && cells[5] === 'exfil-tunnel.test', `source and destination shown: ${cells.slice(4, 6)}`);
  check(cells[6].startsWith('possible DNS tunnelling to exfil-tunnel.test from 127.0.0.1'), `summary shown: ${cells[6]}`);
  check(Number(cells[7]) >= 1, `count shown: ${cells[7]}`);
  check(!cells.join(' ').includes('{'), 'readable, not raw JSON');
  check(await page.locator('#alerts tbody tr.empty').count() === 0, 'the empty note is gone');
  check(await page.locator('#alerts tbody tr[data-kind="dns-tunnel"]').count() === 1, 'one row for the alert');

  await page.screenshot({ path: screenshot, fullPage: true });
  check(true, `screenshot saved to ${screenshot}`);
  check(problems.length === 0, 'no console errors (CSP, scripts): ' + problems.join('; '));
} finally {
  await context.close();
  rmSync(dir, { recursive: true, force: true });
}
