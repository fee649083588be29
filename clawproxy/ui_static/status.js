// The status page: polls /ui/api/stats once a second and redraws the cards and two charts.
//
// Both charts are drawn from the gateway's own windows, so they are full from the first
// snapshot and the page keeps no history: requests per second from its per-second series
// (the last 60 s), latency from its latency series (chat requests only, percentiles per
// step_seconds over the last 5 minutes).

import {byId, fmtDuration, fmtMs, fmtNumber, getJson, poll} from './common.js';

const POLL_MS = 1000;
const LATENCY_WINDOW_S = 300;
const CHART_HEIGHT = 220;
const MIN_SPAN_S = 60;

function cssColor(name) {
  return getComputedStyle(document.documentElement).getPropertyValue(name).trim();
}

// Clock labels for the time axis (uPlot's default adds a date line under them).
const clockLabels = (u, splits) => splits.map((t) => new Date(t * 1000).toLocaleTimeString('en-GB'));

function valuesIn(column, i0, i1) {
  let count = 0;
  for (let i = i0; i <= i1; i++) if (column[i] !== null && column[i] !== undefined) count++;
  return count;
}

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
    // Dots while there are few values (uPlot's default hides them when they bunch up, and
    // a lone value between gaps would draw nothing), plain lines once there are enough.
    series: [{}, ...series.map((s) => ({
      spanGaps: true,
      width: 2,
      points: {show: (u, si, i0, i1) => valuesIn(u.data[si], i0, i1) < 40},
      ...s,
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
const latencyChart = makeChart(byId('latency-chart'), LATENCY_WINDOW_S, [
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
  // ok, degraded or draining: the gateway's one status, the same as admin /health's.
  byId('card-gateway').dataset.state = s.status;
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

  // One point per step, at the step's last second; null where no chat request finished.
  const {step_seconds: step, ttft_ms: ttft, duration_ms: duration} = s.latency_series;
  const points = duration.p50.length;
  const ends = duration.p50.map((_, i) => now - (points - 1 - i) * step);
  const filled = duration.p50.filter((value) => value !== null).length;
  // Leave out the empty history before the first request, so a young one is not a sliver.
  const first = Math.max(0, duration.p50.findIndex((value) => value !== null));
  const columns = [ends, ttft.p50, ttft.p90, ttft.p99, duration.p50, duration.p99];
  latencyChart.setData(columns.map((column) => column.slice(filled ? first : points)));
  const chart = byId('latency-chart');
  chart.dataset.points = String(points);
  chart.dataset.filled = String(filled);
  chart.dataset.durationP50 = s.windows[0].duration_ms.p50 ?? '';
}

poll(async () => {
  const s = await getJson('/ui/api/stats');
  const now = Math.floor(Date.now() / 1000);
  renderCards(s);
  renderCharts(s, now);
  setText('updated', `Updated ${new Date().toLocaleTimeString('en-GB')}`);
}, POLL_MS);
