// gsinfer status page: polls /api/status every second and redraws.
'use strict';

const $ = (id) => document.getElementById(id);
const esc = (s) => String(s).replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' }[c]));
const dash = '–';

function num(x, digits) {
  if (x === null || x === undefined || Number.isNaN(x)) return dash;
  return Number(x).toLocaleString('en-US', { maximumFractionDigits: digits === undefined ? 0 : digits });
}
function fixed(x, digits) { return x === null || x === undefined ? dash : Number(x).toFixed(digits); }
function ms(us) { return us === null || us === undefined ? dash : (us / 1000).toFixed(us < 10000 ? 2 : 1) + ' ms'; }
function duration(s) {
  s = Math.floor(s);
  const d = Math.floor(s / 86400), h = Math.floor(s / 3600) % 24, m = Math.floor(s / 60) % 60, sec = s % 60;
  return (d ? d + 'd ' : '') + (d || h ? h + 'h ' : '') + (d || h || m ? m + 'm ' : '') + sec + 's';
}
function mib(bytes) { return bytes === null || bytes === undefined ? dash : (bytes / 1048576).toFixed(1) + ' MiB'; }
function utc(ns) { return ns === null || ns === undefined ? dash : new Date(ns / 1e6).toISOString().replace('T', ' ').slice(0, 19) + 'Z'; }
function row(cells) { return '<tr>' + cells.join('') + '</tr>'; }
function th(label, cls) { return '<th' + (cls ? ' class="' + cls + '"' : '') + '>' + label + '</th>'; }
function td(html, cls) { return '<td' + (cls ? ' class="' + cls + '"' : '') + '>' + html + '</td>'; }
function pill(text, kind) { return '<span class="pill pill-' + kind + '">' + esc(text) + '</span>'; }
function empty(cols, text) { return '<tr><td class="empty" colspan="' + cols + '">' + text + '</td></tr>'; }

// Inline SVG sparkline of recent scores with the threshold as a dashed line;
// the stretches above the threshold are drawn in red.
function sparkline(scores, thresholds) {
  const w = 240, h = 36, pad = 2;
  if (!scores || scores.length < 2) return '<svg class="spark" viewBox="0 0 ' + w + ' ' + h + '" role="img" aria-label="no scores yet"></svg>';
  const thr = thresholds && thresholds.length ? thresholds : scores.map(() => null);
  const top = Math.max(...scores, ...thr.filter((t) => t !== null)) * 1.1 || 1;
  const x = (i) => pad + (i * (w - 2 * pad)) / (scores.length - 1);
  const y = (v) => h - pad - (Math.max(0, v) / top) * (h - 2 * pad);
  const pts = scores.map((v, i) => x(i).toFixed(1) + ',' + y(v).toFixed(1));
  let hot = '';
  for (let i = 1; i < scores.length; i++) {
    if (thr[i] !== null && (scores[i] > thr[i] || scores[i - 1] > thr[i - 1])) hot += 'M' + pts[i - 1] + 'L' + pts[i];
  }
  const t = thr[thr.length - 1];
  const thrLine = t === null ? '' : '<line class="thr" x1="0" x2="' + w + '" y1="' + y(t).toFixed(1) + '" y2="' + y(t).toFixed(1) + '"/>';
  return '<svg class="spark" viewBox="0 0 ' + w + ' ' + h + '" preserveAspectRatio="none" role="img" aria-label="recent scores">' +
    '<path class="area" d="M' + x(0).toFixed(1) + ',' + (h - pad) + 'L' + pts.join('L') + 'L' + x(scores.length - 1).toFixed(1) + ',' + (h - pad) + 'Z"/>' +
    '<polyline class="line" points="' + pts.join(' ') + '"/>' + (hot ? '<path class="hot" d="' + hot + '"/>' : '') + thrLine + '</svg>';
}

function tile(label, value, unit, bad, id) {
  return '<div class="tile' + (bad ? ' bad' : '') + '"' + (id ? ' id="' + id + '"' : '') + '><div class="label">' + label +
    '</div><div class="value">' + value + (unit ? '<small>' + unit + '</small>' : '') + '</div></div>';
}

function stateKind(state) { return { ready: 'ok', loading: 'wait', rebuilding: 'warn', failed: 'bad' }[state] || 'wait'; }

function renderModels(models) {
  if (!models.length) return '<p class="muted">No model registered yet.</p>';
  return models.map((m) => {
    const budget = m.latency_budget_us;
    const lat = m.latency_us;
    const bars = lat ? [['p50', lat.p50], ['p99', lat.p99], ['p99.9', lat.p999]].map(([k, v]) => {
      const frac = Math.min(1, v / (2 * budget));
      return '<div class="row"><span class="muted">' + k + '</span><div class="meter"><span class="' + (v > budget ? 'over' : '') +
        '" style="width:' + (frac * 100).toFixed(1) + '%"></span></div><span class="num">' + ms(v) + '</span></div>';
    }).join('') : '<div class="muted">no windows scored yet</div>';
    const engine = m.engine + (m.device ? ' on ' + m.device : '');
    return '<div class="model"><div class="head"><b>' + esc(m.name) + '</b><span class="muted">v' + m.version + ' · ' + esc(engine) + '</span>' +
      pill(m.state, stateKind(m.state)) + '</div>' +
      (m.state === 'rebuilding' && m.progress !== null ? '<div class="progress"><span style="width:' + (m.progress * 100).toFixed(0) + '%"></span></div><div class="muted">rebuilding engine: ' + (m.progress * 100).toFixed(0) + ' %</div>' : '') +
      (m.reason ? '<div class="reason">' + esc(m.reason) + '</div>' : '') +
      (m.note ? '<div class="muted note">' + esc(m.note) + '</div>' : '') +
      '<dl><div><dt>Queue depth</dt><dd>' + num(m.queue_depth) + ' items</dd></div>' +
      '<div><dt>Windows dropped</dt><dd' + (m.windows_dropped > 0 ? ' style="color:var(--bad)"' : '') + '>' + num(m.windows_dropped) + '</dd></div>' +
      '<div><dt>Windows</dt><dd>' + num(m.windows) + '</dd></div>' +
      (m.nonfinite_errors > 0 ? '<div><dt>Non-finite outputs</dt><dd style="color:var(--bad)" title="raw errors that were NaN or infinite, left out of scoring">' + num(m.nonfinite_errors) + '</dd></div>' : '') +
      '<div><dt>Served / failed</dt><dd>' + num(m.requests ? m.requests.success : 0) + ' / ' + num(m.requests ? m.requests.fail : 0) + '</dd></div>' +
      '<div><dt>Engine / batch p50</dt><dd>' + ms(m.inference_us ? m.inference_us.p50 : null) + '</dd></div>' +
      '<div><dt>Engine / batch p99</dt><dd>' + ms(m.inference_us ? m.inference_us.p99 : null) + '</dd></div>' +
      '<div><dt>Queue wait p99</dt><dd>' + ms(m.queue_us ? m.queue_us.p99 : null) + '</dd></div>' +
      '<div><dt>Buckets</dt><dd>' + esc(m.buckets.join(' ')) + '</dd></div>' +
      '<div><dt>Dispatch size</dt><dd title="batch sent without waiting for the deadline, learned from the engine\'s time per window">' + (m.dispatch_size ? num(m.dispatch_size) : '–') + '</dd></div></dl>' +
      '<div class="lat"><div class="muted" style="font-size:12px;margin-bottom:2px">Window latency (sample received → scored) vs budget ' + ms(budget) + '</div>' + bars + '</div></div>';
  }).join('');
}

function render(s) {
  $('version').textContent = 'v' + s.version;
  $('uptime').textContent = duration(s.uptime_s);
  const p = s.process || {};
  $('memory').textContent = mib(p.rss_bytes) + (p.heap_allocated_bytes ? ' (heap ' + mib(p.heap_allocated_bytes) + ')' : '');
  $('clock').textContent = new Date().toISOString().slice(11, 19) + 'Z';
  const open = s.channels.filter((c) => c.last && c.last.anomalous);
  const overall = $('overall');
  const health = s.health || { state: s.ready ? 'nominal' : 'not_ready', why: [] };
  const healthText = { nominal: 'nominal', over_budget: 'over budget', degraded: 'degraded', not_ready: 'not ready' };
  if (open.length) { overall.className = 'pill pill-bad'; overall.textContent = open.length + ' anomal' + (open.length > 1 ? 'ies' : 'y'); }
  else { overall.className = 'pill ' + (health.state === 'nominal' ? 'pill-ok' : 'pill-warn'); overall.textContent = healthText[health.state] || health.state; }
  overall.title = health.why.join('; ');
  const why = $('health');
  why.hidden = health.state === 'nominal';
  why.textContent = health.why.length ? (healthText[health.state] || health.state) + ': ' + health.why.join('; ') : '';

  const alarm = $('alarm');
  alarm.hidden = open.length === 0;
  alarm.innerHTML = open.length ? '&#9888; <b>Anomaly</b> on ' + open.map((c) => esc(c.channel) + ' (' + esc(c.model) + ', score ' +
    fixed(c.last.score, 3) + ' &gt; ' + fixed(c.last.threshold, 3) + ' since sample ' + num(c.last.index) + ')').join(', ') : '';

  const samplesPerS = s.sources.reduce((a, x) => a + (x.samples_per_s || 0), 0);
  const dropped = s.models.reduce((a, m) => a + m.windows_dropped, 0);
  const queued = s.models.reduce((a, m) => a + m.queue_depth, 0);
  const rejected = Object.values(s.rejected).reduce((a, n) => a + n, 0);
  const p99 = Math.max(0, ...s.models.map((m) => (m.latency_us ? m.latency_us.p99 : 0)));
  const budget = Math.min(...s.models.map((m) => m.latency_budget_us));
  const windows = s.models.reduce((a, m) => a + m.windows, 0);
  $('tiles').innerHTML =
    tile('Ingest', num(samplesPerS, 1), 'samples/s', false, 'tile-rate') +
    tile('Windows', num(windows), '', false, 'tile-windows') +
    tile('Latency p99 · budget ' + (budget / 1000).toFixed(0) + ' ms', p99 ? (p99 / 1000).toFixed(1) : dash, p99 ? 'ms' : '', p99 > budget) +
    tile('Queued', num(queued), 'items', false) +
    tile('Dropped', num(dropped), 'windows', dropped > 0) +
    tile('Rejected', num(rejected), 'inputs', rejected > 0);

  $('models').innerHTML = renderModels(s.models);

  $('sources').innerHTML = row([th('Source'), th('Link'), th('Rate', 'num'), th('Messages', 'num'), th('Samples', 'num')]) +
    (s.sources.length ? s.sources.map((x) => row([
      td('<b>' + esc(x.kind) + '</b> <span class="muted">' + esc(x.endpoint) + '</span>'),
      td(pill(x.state, x.state === 'connected' ? 'ok' : 'bad') + (x.disconnects ? ' <span class="muted">' + x.disconnects + ' drops</span>' : '')),
      td(num(x.samples_per_s, 1) + ' samples/s<br><span class="muted">' + num(x.messages_per_s, 1) + ' msg/s</span>', 'num'),
      td(num(x.messages), 'num'), td(num(x.samples), 'num')])).join('') : empty(5, 'no sources'));

  const reasons = Object.entries(s.rejected);
  $('rejected').innerHTML = row([th('Reason'), th('Count', 'num')]) + reasons.map(([r, n]) =>
    '<tr' + (n > 0 ? ' class="anomalous"' : '') + '>' + td(esc(r.replace(/_/g, ' '))) + td(num(n), 'num') + '</tr>').join('');

  $('channels').innerHTML = row([th('Channel'), th('Model', 'hide-narrow'), th('Samples', 'num hide-narrow'), th('Last score', 'num'),
    th('Threshold', 'num hide-narrow'), th('Recent scores'), th('State')]) +
    (s.channels.length ? s.channels.map((c) => {
      const last = c.last;
      const bad = last && last.anomalous;
      return '<tr' + (bad ? ' class="anomalous"' : '') + '>' + td('<b>' + esc(c.channel) + '</b>') + td(esc(c.model), 'hide-narrow') +
        td(num(c.samples), 'num hide-narrow') + td(last ? fixed(last.score, 4) : dash, 'num') + td(last ? fixed(last.threshold, 4) : dash, 'num hide-narrow') +
        td(sparkline(c.recent_scores, c.recent_thresholds)) +
        td(last ? pill(bad ? 'anomaly' : 'nominal', bad ? 'bad' : 'ok') : pill('warming up', 'wait')) + '</tr>';
    }).join('') : empty(7, 'no telemetry received yet'));

  $('events').innerHTML = row([th('Event'), th('Channel'), th('Model', 'hide-narrow'), th('Start (sample · UTC)'), th('End (sample · UTC)', 'hide-narrow'),
    th('Max score', 'num'), th('Threshold', 'num hide-narrow')]) +
    (s.events.length ? s.events.slice().reverse().map((e) => {
      const start = e.event === 'anomaly_start';
      return '<tr' + (start ? ' class="anomalous"' : '') + '>' + td(pill(start ? 'start' : 'end', start ? 'bad' : 'ok')) + td('<b>' + esc(e.channel) + '</b>') +
        td(esc(e.model), 'hide-narrow') + td(num(e.start) + ' <span class="muted">' + utc(e.start_t) + '</span>') +
        td(e.end === null ? dash : num(e.end) + ' <span class="muted">' + utc(e.end_t) + '</span>', 'hide-narrow') +
        td(fixed(e.max_score, 4), 'num') + td(fixed(e.threshold, 4), 'num hide-narrow') + '</tr>';
    }).join('') : empty(7, 'no anomaly events'));
}

async function refresh() {
  try {
    const r = await fetch('/api/status', { cache: 'no-store' });
    if (!r.ok) throw new Error('HTTP ' + r.status);
    render(await r.json());
  } catch (e) {
    const overall = $('overall');
    overall.className = 'pill pill-bad';
    overall.textContent = 'status unavailable';
  }
}
refresh();
setInterval(refresh, 1000);
