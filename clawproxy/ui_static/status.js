// The status page: polls /ui/api/stats once a second and redraws the cards and two charts.
//
// Requests per second come from the gateway's own per-second series (the last 60 s), so
// the chart is full from the first snapshot. Latency percentiles exist only as a rolling
// 1-minute window, so this page keeps their history itself: one point per snapshot, the
// last LATENCY_POINTS of them.

import {byId, fmtDuration, fmtMs, fmtNumber, getJson, poll} from './common.js';

const POLL_MS = 1000;
const LATENCY_POINTS = 300;
const CHART_HEIGHT = 220;
const MIN_SPAN_S = 60;

const latency = [[], [], [], [], [], []]; // time, TTFT p50/p90/p99, duration p50/p99

function cssColor(name) {
  return getComputedStyle(document.documentElement).getPropertyValue(name).trim();
}

// Clock labels for the time axis (uPlot's default adds a date line under them).
const clockLabels = (u, splits) => splits.map((t) => new Date(t * 1000).toLocaleTimeString('en-GB'));

function makeChart(target, windowS, series) {
  const fg = cssColor('--muted');
  const grid = cssColor('--grid');
  const axis = {stroke: fg, grid: {stroke: grid, width: 1}, ticks: {stroke: grid, width: 1}};
  const chart = new uPlot({
    width: Math.max(target.clientWidth, 200),
    height: CHART_HEIGHT,
    cursor: {drag: {x: false, y: false}},
    legend: {live: false},
    padding: [12, 28, null, null], // room for the last time label
    scales: {
      // From the oldest point (at least a minute back, at most windowS) to the newest, so a
      // young history is neither a sliver at the edge nor stretched over empty years.
      x: {time: true, range: (u, min, max) => {
        const end = max ?? Date.now() / 1000;
        return [Math.max(end - windowS, Math.min(min ?? end, end - MIN_SPAN_S)), end];
      }},
      y: {range: (u, min, max) => [0, Math.max(max ?? 0, 1) * 1.1]},
    },
    axes: [{...axis, space: 70, values: clockLabels}, {...axis, size: 50}],
    // Dots while the history is short (uPlot's default hides them when they bunch up at
    // the right edge, leaving nothing visible), plain lines once there are enough points.
    series: [{}, ...series.map((s) => ({
      spanGaps: true, width: 2, points: {show: (u, si, i0, i1) => i1 - i0 < 40}, ...s,
    }))],
  }, [[], ...series.map(() => [])], target);
  // Follow the panel's width (window resizes, phone rotation).
  new ResizeObserver(() => {
    const width = Math.max(target.clientWidth, 200);
    if (width !== chart.width) chart.setSize({width, height: CHART_HEIGHT});
  }).observe(target);
  return chart;
}

const rpsChart = makeChart(byId('rps-chart'), 60, [
  {label: 'requests/s', stroke: cssColor('--accent'), fill: 'rgba(37, 99, 235, 0.15)'},
]);
const latencyChart = makeChart(byId('latency-chart'), LATENCY_POINTS * POLL_MS / 1000, [
  {label: 'TTFT p50', stroke: '#16a34a'},
  {label: 'TTFT p90', stroke: '#65a30d', dash: [6, 4]},
  {label: 'TTFT p99', stroke: '#ca8a04', dash: [2, 3]},
  {label: 'duration p50', stroke: '#2563eb'},
  {label: 'duration p99', stroke: '#9333ea', dash: [2, 3]},
]);

function setText(id, text) {
  byId(id).textContent = text;
}

function renderCards(s) {
  setText('gateway-status', s.status);
  setText('gateway-sub', `v${s.version} · up ${fmtDuration(s.uptime_seconds)} · ${s.connections} connections`);

  const up = s.upstream || {};
  const card = byId('ollama');
  card.dataset.state = up.reachable ? 'up' : 'down';
  setText('ollama-status', up.reachable ? 'up' : 'down');
  setText('ollama-sub', up.reachable
    ? `version ${up.version ?? '?'} · ${fmtMs(up.latency_ms)}`
    : up.error || 'no answer');

  setText('model', s.model);
  const details = s.model_details?.details;
  setText('model-sub', details
    ? [details.family, details.parameter_size, details.quantization_level].filter(Boolean).join(' · ')
    : '');

  setText('active', `${s.active} / ${s.max_concurrent}`);
  setText('active-sub', 'requests at Ollama now');
  setText('queued', `${s.queued} / ${s.queue_size}`);
  setText('queued-sub', 'waiting for a slot');

  const minute = s.windows[0];
  setText('rate', `${minute.requests_per_second} req/s`);
  setText('rate-sub',
    `${fmtNumber(minute.requests)} requests · ${minute.errors} errors · ${minute.tokens_per_second} tok/s`);
}

function renderCharts(s, now) {
  const counts = s.requests_per_second_series;
  const times = counts.map((_, i) => now - counts.length + 1 + i);
  rpsChart.setData([times, counts]);
  byId('rps-chart').dataset.total = String(counts.reduce((a, b) => a + b, 0));

  const {ttft_ms: ttft, duration_ms: duration} = s.windows[0];
  const point = [now, ttft.p50, ttft.p90, ttft.p99, duration.p50, duration.p99];
  point.forEach((value, i) => latency[i].push(value));
  if (latency[0].length > LATENCY_POINTS) latency.forEach((column) => column.shift());
  latencyChart.setData(latency);
  const chart = byId('latency-chart');
  chart.dataset.points = String(latency[0].length);
  chart.dataset.durationP50 = duration.p50 ?? '';
}

poll(async () => {
  const s = await getJson('/ui/api/stats');
  const now = Math.floor(Date.now() / 1000);
  renderCards(s);
  renderCharts(s, now);
  setText('updated', `Updated ${new Date().toLocaleTimeString('en-GB')}`);
}, POLL_MS);
