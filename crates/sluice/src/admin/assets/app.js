// Sluice dashboard: plain JavaScript and SVG, no dependencies, no build
// step. Everything it shows comes from /api/v1/ on the same origin; the
// bearer token (when admin.token_file is set) is kept in sessionStorage.
'use strict';

const MAX_ROWS = 500;
const REFRESH_MS = 5000;
const COLORS = ['#1f6feb', '#bf3989', '#1a7f37', '#9a6700', '#8250df', '#cf222e', '#0a7ea4', '#6e7781'];

const $ = (sel) => document.querySelector(sel);
let flows = [];          // newest first, the rows shown (already filtered)
let zoneColors = {};
let streamAbort = null;

// === API ===

function authHeaders(extra = {}) {
  const t = sessionStorage.getItem('sluice-token');
  return t ? { ...extra, Authorization: 'Bearer ' + t } : extra;
}

async function api(path, opts = {}) {
  const res = await fetch(path, { ...opts, headers: authHeaders(opts.headers || {}) });
  if (res.status === 401) {
    askToken();
    throw new Error('bearer token required');
  }
  const body = await res.json().catch(() => ({}));
  if (!res.ok) throw new Error(body.error || res.statusText);
  return body;
}

function askToken() {
  $('#token-button').hidden = false;
  const d = $('#token-dialog');
  if (!d.open) d.showModal();
}

// === helpers ===

function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === 'class') e.className = v;
    else if (k === 'text') e.textContent = v;
    else e.setAttribute(k, v);
  }
  for (const c of children) e.append(c instanceof Node ? c : document.createTextNode(String(c ?? '')));
  return e;
}

function bytes(n) {
  if (n < 1024) return n + ' B';
  const u = ['KiB', 'MiB', 'GiB', 'TiB'];
  let i = -1;
  do { n /= 1024; i++; } while (n >= 1024 && i < u.length - 1);
  return n.toFixed(n < 10 ? 1 : 0) + ' ' + u[i];
}

// "3 flows", "1 flow": `n` with the word in the right number.
function plural(n, one, many = one + 's') {
  return `${n} ${n === 1 ? one : many}`;
}

const pad = (n) => String(n).padStart(2, '0');

// The browser's time zone as a short name ("UTC", "CET", "GMT+1").
function zoneName(d) {
  const part = new Intl.DateTimeFormat('en-US', { timeZoneName: 'short' })
    .formatToParts(d).find((p) => p.type === 'timeZoneName');
  if (part) return part.value;
  const off = -d.getTimezoneOffset();
  return `UTC${off < 0 ? '-' : '+'}${pad(Math.floor(Math.abs(off) / 60))}:${pad(Math.abs(off) % 60)}`;
}

// An absolute local timestamp with its time zone: "2026-12-04 22:31:05 UTC".
function time(ts) {
  const d = new Date(ts);
  if (isNaN(d)) return ts;
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} `
    + `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())} ${zoneName(d)}`;
}

// Hours and minutes with the time zone, for chart axes: "22:31 UTC".
function clock(ts) {
  const d = new Date(ts);
  return isNaN(d) ? ts : `${pad(d.getHours())}:${pad(d.getMinutes())} ${zoneName(d)}`;
}

// Axis ticks from 0 to at least `max` in even steps of 1, 2 or 5 times a
// power of ten (of a power of 1024 for bytes), so that no two labels are
// the same; only 0 when there is nothing to show.
function ticks(max, binary) {
  if (!(max > 0)) return [0];
  const raw = max / 3;
  const unit = binary && raw >= 1024 ? 1024 ** Math.floor(Math.log(raw) / Math.log(1024)) : 1;
  const r = Math.max(1, raw / unit);
  const mag = 10 ** Math.floor(Math.log10(r));
  const f = r / mag;
  const step = Math.max(1, unit * mag * (f <= 1 ? 1 : f <= 2 ? 2 : f <= 5 ? 5 : 10));
  const out = [0];
  while (out[out.length - 1] < max && out.length < 12) out.push(out[out.length - 1] + step);
  return out;
}

function verdictClass(r) {
  if (r.verdict === 'allow') return 'allow';
  return r.enforced ? 'deny' : 'report';
}

function verdictBadge(r) {
  const cls = verdictClass(r);
  const label = cls === 'report' ? 'deny (report)' : r.verdict;
  return el('span', { class: 'verdict ' + cls, title: r.enforced ? '' : 'would be denied; zone in report mode' }, label);
}

function destination(r) {
  const host = r.dst_host || r.dst_ip || '?';
  return r.dst_port ? `${host}:${r.dst_port}` : host;
}

function colorOf(zone) {
  const z = zone || '(none)';
  if (!(z in zoneColors)) zoneColors[z] = COLORS[Object.keys(zoneColors).length % COLORS.length];
  return zoneColors[z];
}

// === flows ===

function filters() {
  return { zone: $('#f-zone').value, verdict: $('#f-verdict').value, host: $('#f-host').value.trim() };
}

function matches(r, f) {
  if (f.zone && r.zone !== f.zone) return false;
  if (f.verdict && r.verdict !== f.verdict) return false;
  if (f.host) {
    const h = f.host.toLowerCase();
    if (![r.dst_host, r.dst_ip, r.sni].some((v) => v && v.toLowerCase().includes(h))) return false;
  }
  return true;
}

function flowRow(r, fresh) {
  // A long tunnel's interim record: the tunnel is still open, and its
  // bytes are those since the flow's previous record.
  const interim = r.interim === true;
  const tr = el('tr', { class: verdictClass(r) + (fresh ? ' fresh' : '') + (interim ? ' interim' : ''), 'data-id': r.id },
    el('td', { title: r.ts }, time(r.ts)),
    el('td', {}, r.listener),
    el('td', { class: 'mono' }, r.src),
    el('td', { class: 'user' }, r.user || '—'),
    el('td', {}, r.zone || '—'),
    el('td', { class: 'mono' }, destination(r)),
    el('td', { class: 'method' }, r.method || r.qtype || '—'),
    el('td', { class: 'num status' }, r.status ?? '—'),
    el('td', {}, verdictBadge(r)),
    el('td', { class: 'mono rule' }, r.rule),
    el('td', { class: 'wrap reason' }, r.reason + (r.error ? ' — ' + r.error : '')),
    el('td', { class: 'num' }, bytes(r.bytes_out)),
    el('td', { class: 'num' }, bytes(r.bytes_in)),
    el('td', { class: 'num', title: interim ? 'interim record: still open; bytes since its previous record' : '' },
      interim ? `${r.duration_ms} (open)` : r.duration_ms));
  return tr;
}

function renderFlows() {
  const body = $('#flows tbody');
  body.replaceChildren(...flows.map((r) => flowRow(r, false)));
  $('#flow-count').textContent = plural(flows.length, 'flow') + ' shown';
}

async function loadFlows() {
  const f = filters();
  const q = new URLSearchParams({ limit: String(MAX_ROWS) });
  for (const [k, v] of Object.entries(f)) if (v) q.set(k, v);
  try {
    const res = await api('/api/v1/flows?' + q);
    flows = res.flows;
    renderFlows();
  } catch (e) { console.warn('flows', e); }
}

function addFlow(r) {
  noteZone(r.zone);
  if ($('#f-pause').checked || !matches(r, filters())) return;
  flows.unshift(r);
  const body = $('#flows tbody');
  body.prepend(flowRow(r, true));
  while (flows.length > MAX_ROWS) { flows.pop(); body.lastElementChild?.remove(); }
  $('#flow-count').textContent = plural(flows.length, 'flow') + ' shown';
}

function noteZone(zone) {
  if (!zone) return;
  const sel = $('#f-zone');
  if ([...sel.options].some((o) => o.value === zone)) return;
  sel.append(el('option', { value: zone }, zone));
}

// The live stream: Server-Sent Events read with fetch, so the bearer token
// can travel in a header (EventSource cannot send one).
async function stream() {
  for (;;) {
    streamAbort = new AbortController();
    try {
      const res = await fetch('/api/v1/flows/stream', { headers: authHeaders(), signal: streamAbort.signal });
      if (res.status === 401) { askToken(); throw new Error('token'); }
      if (!res.ok || !res.body) throw new Error(res.statusText);
      setLive(true);
      const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
      let buf = '';
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += value;
        let i;
        while ((i = buf.indexOf('\n\n')) >= 0) {
          handleEvent(buf.slice(0, i));
          buf = buf.slice(i + 2);
        }
      }
    } catch (e) {
      if (e.name === 'AbortError') return;
    }
    setLive(false);
    await new Promise((ok) => setTimeout(ok, 2000));
  }
}

// One Server-Sent Events message: its event name and its data lines
// joined (the flow and alert streams both use this).
function parseSse(chunk) {
  let event = 'message';
  const data = [];
  for (const line of chunk.split('\n')) {
    if (line.startsWith('event:')) event = line.slice(6).trim();
    else if (line.startsWith('data:')) data.push(line.slice(5).trimStart());
  }
  return { event, data: data.length ? data.join('\n') : null };
}

function handleEvent(chunk) {
  const { event, data } = parseSse(chunk);
  if (event === 'flow' && data !== null) {
    try { addFlow(JSON.parse(data)); } catch (e) { console.warn('bad event', e); }
  } else if (event === 'lagged') {
    loadFlows();
  }
}

function setLive(on) {
  const b = $('#live');
  b.className = 'badge ' + (on ? 'on' : 'off');
  b.textContent = on ? 'live' : 'offline';
}

// === traffic chart (plain SVG) ===

const SVG = 'http://www.w3.org/2000/svg';
function svg(tag, attrs = {}) {
  const e = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  return e;
}

// One line chart: `series` are {key, color, dash, values, label}; `fmt`
// labels the y axis; `starts` are the buckets' start times.
function lineChart(box, starts, series, fmt, binary, aria) {
  const W = 600, H = 180, L = 56, B = 18, T = 8;
  const n = starts.length;
  const max = Math.max(0, ...series.flatMap((s) => s.values));
  const ys = ticks(max, binary);
  const top = Math.max(1, ys[ys.length - 1]);
  const x = (i) => L + (i * (W - L - 4)) / Math.max(1, n - 1);
  const y = (v) => T + (H - T - B) * (1 - v / top);
  const root = svg('svg', { viewBox: `0 0 ${W} ${H}`, preserveAspectRatio: 'none', 'aria-label': aria });
  for (const v of ys) {
    root.append(svg('line', { x1: L, x2: W, y1: y(v), y2: y(v), stroke: '#d0d7de', 'stroke-width': 1 }));
    const label = svg('text', { x: L - 4, y: y(v) + 3, 'text-anchor': 'end', class: 'y' });
    label.textContent = fmt(v);
    root.append(label);
  }
  for (const [i, anchor] of [[0, 'start'], [n - 1, 'end']]) {
    if (!starts[i]) continue;
    const label = svg('text', { x: x(i), y: H - 4, 'text-anchor': anchor, class: 'x' });
    label.textContent = clock(starts[i]);
    root.append(label);
  }
  for (const s of series) {
    const pts = s.values.map((v, i) => `${x(i).toFixed(1)},${y(v).toFixed(1)}`).join(' ');
    const attrs = { points: pts, fill: 'none', stroke: s.color, 'stroke-width': 2, 'data-zone': s.zone, 'data-series': s.key };
    if (s.dash) attrs['stroke-dasharray'] = '5 3';
    root.append(svg('polyline', attrs));
  }
  box.replaceChildren(root);
}

async function loadTraffic() {
  let t;
  try { t = await api('/api/v1/traffic'); } catch (e) { return; }
  const mins = Math.round(t.window_seconds / 60);
  const win = `last ${plural(mins, 'minute')}, ${t.bucket_seconds} s buckets`;
  $('#traffic-window').textContent = win;
  $('#denials-window').textContent = win;
  const zones = [...new Set(t.buckets.flatMap((b) => Object.keys(b.zones)))].sort();
  zones.forEach((z) => noteZone(z));
  const starts = t.buckets.map((b) => b.start);
  const of = (z, k) => t.buckets.map((b) => b.zones[z]?.[k] || 0);
  const sum = (v) => v.reduce((a, b) => a + b, 0);

  const bytesSeries = [];
  const legend = $('#legend');
  legend.replaceChildren();
  for (const z of zones) {
    const color = colorOf(z || '(none)');
    const out = of(z, 'bytes_out'), inn = of(z, 'bytes_in');
    bytesSeries.push({ key: 'out', zone: z, color, values: out });
    bytesSeries.push({ key: 'in', zone: z, color, dash: true, values: inn });
    const item = el('span', { 'data-zone': z }, `${z || '(no zone)'} ${bytes(sum(out))} out, ${bytes(sum(inn))} in`);
    item.style.setProperty('--swatch', color);
    legend.append(item);
  }
  if (zones.length) legend.append(el('span', { class: 'muted key' }, 'solid: out (to destinations) · dashed: in (to clients)'));
  else legend.append(el('span', { class: 'muted' }, 'no traffic in the window yet'));
  lineChart($('#chart'), starts, bytesSeries, bytes, true, 'bytes out and in over time per zone');

  const denySeries = [];
  const dlegend = $('#denials-legend');
  dlegend.replaceChildren();
  for (const z of zones) {
    const values = of(z, 'denied');
    const total = sum(values);
    if (!total) continue;
    const color = colorOf(z || '(none)');
    denySeries.push({ key: 'denied', zone: z, color, values });
    const item = el('span', { 'data-zone': z }, `${z || '(no zone)'} ${plural(total, 'denial')}`);
    item.style.setProperty('--swatch', color);
    dlegend.append(item);
  }
  if (!denySeries.length) dlegend.append(el('span', { class: 'muted' }, 'no denials in the window'));
  lineChart($('#denials-chart'), starts, denySeries, String, false, 'denied flows over time per zone');
}

// === top destinations ===

function topTable(kind, entries) {
  const max = Math.max(1, ...entries.map((d) => d.bytes_out));
  const table = el('table', { class: 'top ' + kind });
  table.append(el('tr', {}, el('th', {}, kind === 'sources' ? 'source' : 'destination'),
    el('th', { class: 'num' }, 'out'), el('th', { class: 'num' }, 'in'), el('th', { class: 'num' }, 'flows'),
    el('th', { class: 'num' }, 'denied'), el('th', {}, '')));
  for (const d of entries) {
    const bar = el('div', { class: 'bar' });
    bar.style.width = `${(100 * d.bytes_out) / max}%`;
    table.append(el('tr', {},
      el('td', { class: 'mono' }, d.key),
      el('td', { class: 'num' }, bytes(d.bytes_out)),
      el('td', { class: 'num' }, bytes(d.bytes_in)),
      el('td', { class: 'num' }, plural(d.flows, 'flow')),
      el('td', { class: 'num' }, d.denied ? `${d.denied} denied` : ''),
      el('td', { class: 'wrap' }, bar)));
  }
  return table;
}

async function loadTop() {
  let t;
  try { t = await api('/api/v1/top?by=bytes_out&limit=8'); } catch (e) { return; }
  const box = $('#top');
  box.replaceChildren();
  if (!t.zones.length) { box.append(el('p', { class: 'muted' }, 'no flows in the window yet')); return; }
  for (const z of t.zones) {
    box.append(el('h3', {}, `${z.zone || '(no zone)'} · ${plural(z.totals.flows, 'flow')}`));
    box.append(el('div', {}, el('h4', {}, 'Top sources'), topTable('sources', z.sources)),
      el('div', {}, el('h4', {}, 'Top destinations'), topTable('destinations', z.destinations)));
  }
}

// === denials, rules, alerts ===

async function loadDenials() {
  let d;
  try { d = await api('/api/v1/denials?limit=50'); } catch (e) { return; }
  $('#denials tbody').replaceChildren(...d.denials.map((r) => el('tr', { class: verdictClass(r) },
    el('td', { title: r.ts }, time(r.ts)),
    el('td', {}, r.zone || '—'),
    el('td', {}, r.user || '—'),
    el('td', { class: 'mono' }, r.src),
    el('td', { class: 'mono' }, destination(r)),
    el('td', { class: 'mono' }, r.rule),
    el('td', { class: 'wrap' }, r.reason))));
}

async function loadRules() {
  let r;
  try { r = await api('/api/v1/rules'); } catch (e) { return; }
  $('#policy').textContent = 'policy ' + r.policy_hash;
  const stale = r.rules.filter((x) => x.stale).length;
  const expired = r.rules.filter((x) => x.expired).length;
  const soon = r.rules.filter((x) => x.expiring_soon).length;
  $('#rules-note').textContent = `${plural(r.rules.length, 'rule')}, ${stale} stale (no hit in ${plural(Math.round(r.stale_after_seconds / 3600), 'hour')}), ${expired} expired, ${soon} expiring within a week`;
  // Expired rules match nothing; expiring ones stop within a week.
  const flags = (x) => {
    const out = [];
    if (x.expired) out.push(el('span', { class: 'expired', title: 'past its expiry: matches nothing' }, 'expired'));
    if (x.expiring_soon) out.push(el('span', { class: 'stale expiring', title: 'expires within a week' }, 'expiring'));
    if (x.stale) out.push(el('span', { class: 'stale' }, 'stale'));
    return out;
  };
  const rows = r.rules.map((x) => el('tr', { 'data-rule': x.id },
    el('td', { class: 'mono' }, x.id),
    el('td', {}, x.zone),
    el('td', {}, x.kind),
    el('td', { class: 'mono' }, x.text),
    el('td', { class: 'num' }, x.hits),
    el('td', {}, x.last_hit ? time(x.last_hit) : 'never'),
    el('td', { class: 'owner', title: x.ticket ? `ticket ${x.ticket}` : '' }, x.owner || ''),
    el('td', { class: 'expires' }, x.expires ? time(x.expires) : ''),
    el('td', {}, ...flags(x))));
  for (const o of r.other) {
    rows.push(el('tr', { 'data-rule': o.id, class: 'muted' },
      el('td', { class: 'mono' }, o.id), el('td', {}, '—'), el('td', {}, 'built-in'),
      el('td', {}, 'guard, fallback or earlier policy'), el('td', { class: 'num' }, o.hits),
      el('td', {}, time(o.last_hit)), el('td', {}, ''), el('td', {}, ''), el('td', {}, '')));
  }
  $('#rules tbody').replaceChildren(...rows);
}

function evidenceText(ev) {
  if (!ev || typeof ev !== 'object') return '';
  return Object.entries(ev).map(([k, v]) => `${k} ${typeof v === 'object' ? JSON.stringify(v) : v}`).join(' · ');
}

function alertRow(a) {
  const tr = el('tr', { class: 'sev-' + a.severity, 'data-id': a.id, 'data-kind': a.kind },
    el('td', { title: a.ts }, time(a.ts)),
    el('td', {}, el('span', { class: 'severity ' + a.severity }, a.severity)),
    el('td', {}, a.kind),
    el('td', {}, a.zone || '—'),
    el('td', { class: 'mono' }, a.src || '—'),
    el('td', { class: 'mono' }, a.dst || '—'),
    el('td', { class: 'wrap summary' }, a.summary),
    el('td', { class: 'num count' }, a.count));
  const ev = evidenceText(a.evidence);
  tr.title = ev + (a.user ? ` — user ${a.user}` : '') + (a.country ? ` — ${a.country}` : '');
  return tr;
}

// Ids of alerts that arrived on the live stream: marked `live` in the
// panel (and kept marked when the periodic refresh redraws it).
const liveAlerts = new Set();
const MAX_ALERT_ROWS = 100;

function markLive(tr, a) {
  if (liveAlerts.has(a.id)) {
    tr.classList.add('live');
    tr.dataset.live = 'stream';
  }
  return tr;
}

async function loadAlerts() {
  let a;
  try { a = await api('/api/v1/alerts?limit=' + MAX_ALERT_ROWS); } catch (e) { return; }
  const body = $('#alerts tbody');
  $('#alerts-note').textContent = a.alerts.length ? `${plural(a.alerts.length, 'alert')} shown, newest first` : '';
  if (!a.alerts.length) {
    body.replaceChildren(el('tr', { class: 'empty' }, el('td', { class: 'muted', colspan: '8' }, 'none')));
    return;
  }
  body.replaceChildren(...a.alerts.map((x) => markLive(alertRow(x), x)));
}

// A new alert from the live stream: on top of the panel at once.
function addAlert(a) {
  liveAlerts.add(a.id);
  const body = $('#alerts tbody');
  body.querySelector('tr.empty')?.remove();
  body.querySelector(`tr[data-id="${CSS.escape(a.id)}"]`)?.remove();
  body.prepend(markLive(alertRow(a), a));
  while (body.children.length > MAX_ALERT_ROWS) body.lastElementChild.remove();
  $('#alerts-note').textContent = `${plural(body.children.length, 'alert')} shown, newest first`;
}

// New alerts as Server-Sent Events, read like the flow stream (fetch, so
// the bearer token travels in a header).
async function alertStream() {
  for (;;) {
    try {
      const res = await fetch('/api/v1/alerts/stream', { headers: authHeaders(), signal: streamAbort?.signal });
      if (!res.ok || !res.body) throw new Error(res.statusText);
      $('#alerts-live').className = 'badge on';
      const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
      let buf = '';
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += value;
        let i;
        while ((i = buf.indexOf('\n\n')) >= 0) {
          handleAlertEvent(buf.slice(0, i));
          buf = buf.slice(i + 2);
        }
      }
    } catch (e) {
      if (e.name === 'AbortError') return;
    }
    $('#alerts-live').className = 'badge off';
    await new Promise((ok) => setTimeout(ok, 2000));
  }
}

function handleAlertEvent(chunk) {
  const { event, data } = parseSse(chunk);
  if (event === 'alert' && data !== null) {
    try { addAlert(JSON.parse(data)); } catch (e) { console.warn('bad alert event', e); }
  } else if (event === 'lagged') {
    loadAlerts();
  }
}

// === explainer ===

async function explain(ev) {
  ev.preventDefault();
  const out = $('#x-result');
  const body = {
    from: $('#x-from').value.trim(),
    target: $('#x-target').value.trim(),
    resolve: $('#x-resolve').checked,
  };
  const user = $('#x-user').value.trim();
  if (user) body.user = user;
  const addrs = $('#x-addrs').value.split(/[\s,]+/).filter(Boolean);
  if (addrs.length) { body.addrs = addrs; body.resolve = false; }
  out.replaceChildren(el('span', { class: 'muted' }, 'asking…'));
  try {
    const d = await api('/api/v1/check', {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify(body),
    });
    const dl = el('dl', {},
      el('dt', {}, 'destination'), el('dd', { class: 'mono' }, `${d.destination}:${d.port}`),
      el('dt', {}, 'zone'), el('dd', {}, `${d.zone ?? '—'} (${d.mode ?? 'no mode'})`),
      el('dt', {}, 'rule'), el('dd', { class: 'mono', id: 'x-rule' }, d.rule),
      el('dt', {}, 'why'), el('dd', { id: 'x-reason' }, d.reason));
    if (d.pending && d.pending !== 'nothing') {
      dl.append(el('dt', {}, 'pending'), el('dd', {}, `phase two (${d.pending}): give addresses or resolve`));
    }
    for (const a of d.allowed_addrs || []) dl.append(el('dt', {}, 'address'), el('dd', { class: 'mono' }, `${a} may be dialed`));
    for (const r of d.rejected_addrs || []) dl.append(el('dt', {}, 'address'), el('dd', { class: 'mono' }, `${r.addr} rejected by ${r.rule}: ${r.reason}`));
    const badge = verdictBadge(d);
    badge.id = 'x-verdict';
    out.replaceChildren(badge, dl);
  } catch (e) {
    out.replaceChildren(el('span', { class: 'error' }, String(e.message || e)));
  }
}

// === start ===

function refresh() {
  loadTraffic();
  loadTop();
  loadDenials();
  loadRules();
  loadAlerts();
}

function start() {
  for (const id of ['#f-zone', '#f-verdict']) $(id).addEventListener('change', loadFlows);
  let typing;
  $('#f-host').addEventListener('input', () => { clearTimeout(typing); typing = setTimeout(loadFlows, 250); });
  $('#f-clear').addEventListener('click', () => {
    $('#f-zone').value = ''; $('#f-verdict').value = ''; $('#f-host').value = '';
    loadFlows();
  });
  $('#explain').addEventListener('submit', explain);
  $('#token-button').addEventListener('click', askToken);
  $('#token-form').addEventListener('submit', () => {
    sessionStorage.setItem('sluice-token', $('#token-input').value);
    streamAbort?.abort();
    loadFlows(); refresh(); stream(); alertStream();
  });
  loadFlows();
  refresh();
  stream();
  alertStream();
  setInterval(refresh, REFRESH_MS);
}

document.addEventListener('DOMContentLoaded', start);
