// The internals page: model details, GPUs, the nodes and the last requests, from /ui/api/stats
// every 2 s.
// Every value is written as text (el() / textContent).

import {byId, el, fmtBytes, fmtClock, fmtMs, fmtNumber, getJson, poll} from './common.js';

const POLL_MS = 2000;

function facts(target, rows) {
  target.replaceChildren(...rows.flatMap(([name, value]) => [
    el('dt', {text: name}),
    el('dd', {text: value === null || value === undefined || value === '' ? '–' : String(value)}),
  ]));
}

function loadedText(model) {
  if (!Array.isArray(model.loaded)) return 'unknown (Ollama did not say)';
  const entry = model.loaded.find((m) => m.name === model.name);
  if (!entry) return model.loaded.length ? `no (loaded: ${model.loaded.map((m) => m.name).join(', ')})` : 'no';
  const until = entry.expires_at ? ` · until ${new Date(entry.expires_at).toLocaleString('en-GB')}` : '';
  return `yes · ${fmtBytes(entry.size_vram)} VRAM of ${fmtBytes(entry.size)}${until}`;
}

function renderModel(model) {
  const details = model.details || {};
  const running = (model.loaded || []).find((m) => m.name === model.name);
  const context = [
    model.context_length ? `${fmtNumber(model.context_length)} (model)` : null,
    running?.context_length ? `${fmtNumber(running.context_length)} (loaded)` : null,
  ].filter(Boolean).join(' · ');
  const rows = [
    ['Name', model.name],
    ['Family', details.family],
    ['Parameters', [details.parameter_size, model.parameter_count ? fmtNumber(model.parameter_count) : null]
      .filter(Boolean).join(' · ')],
    ['Quantisation', details.quantization_level],
    ['Format', details.format],
    ['Context length', context],
    ['Capabilities', (model.capabilities || []).join(', ')],
    ['Loaded', loadedText(model)],
  ];
  if (model.error) rows.push(['Ollama', model.error]);
  facts(byId('model-facts'), rows);
}

function gpuTable(gpus) {
  const rows = gpus.map((g) => el('tr', {},
    el('td', {text: `${g.index}: ${g.name}`}),
    el('td', {},
      el('div', {class: 'meter', title: `${g.memory_percent}%`},
        el('span', {'data-percent': g.memory_percent})),
      `${fmtBytes(g.memory_used_bytes)} / ${fmtBytes(g.memory_total_bytes)}`),
    el('td', {class: 'num', text: g.utilization_percent === null ? '–' : `${g.utilization_percent}%`})));
  const table = el('table', {},
    el('thead', {}, el('tr', {}, el('th', {text: 'GPU'}), el('th', {text: 'Memory'}),
      el('th', {class: 'num', text: 'Utilisation'}))),
    el('tbody', {}, ...rows));
  // Bar widths go through the CSSOM: the CSP refuses inline style attributes.
  for (const bar of table.querySelectorAll('[data-percent]')) bar.style.width = `${bar.dataset.percent}%`;
  return table;
}

// This gateway's GPUs (NVML), then each node's from its exporter page (gpu_metrics_url).
function renderGpus(gpu, nodeGpus) {
  const target = byId('gpus');
  const remote = Object.entries(nodeGpus || {});
  const parts = [];
  if (gpu.available) {
    if (remote.length) parts.push(el('h3', {text: 'This gateway'}));
    parts.push(gpuTable(gpu.gpus));
  } else if (!remote.length) {
    parts.push(el('p', {class: 'muted', id: 'no-gpu'},
      `No GPU telemetry${gpu.reason ? `: ${gpu.reason}` : '.'}`));
  }
  for (const [name, sample] of remote) {
    parts.push(el('h3', {'data-gpu-node': name, text: `Node ${name}`}));
    parts.push(sample.available ? gpuTable(sample.gpus)
      : el('p', {class: 'muted', text: `No GPU telemetry: ${sample.reason}`}));
  }
  target.replaceChildren(...parts);
}

// A node's state as a class the stylesheet already has; draining has none, so it takes the
// warning colour through the CSSOM below (the CSP refuses inline style attributes).
const NODE_STATE_CLASS = {
  up: 'status-ok', ejected: 'status-bad', draining: 'node-draining', disabled: 'muted',
};
// Longer errors are cut in the table; the whole text is the cell's tooltip.
const ERROR_CHARS = 48;

function truncate(text, limit) {
  return text.length > limit ? `${text.slice(0, limit - 1)}…` : text;
}

function nodeStateText(n) {
  const parts = [n.state];
  if (n.state === 'ejected' && n.trial_in_seconds !== null && n.trial_in_seconds !== undefined) {
    parts.push(`trial in ${Math.ceil(n.trial_in_seconds)}s`);
  }
  if (n.busy) parts.push('busy');
  return parts.join(' · ');
}

// How the slots are shared: this gateway alone ("local") or with its peers through Redis.
function renderCoordination(c) {
  const rows = [['Slots shared', c.mode === 'local' ? 'local (this gateway alone)' : c.mode]];
  if (c.mode !== 'local') rows.push(['Gateway instances', c.live_instances]);
  facts(byId('coordination'), rows);
}

function renderNodes(nodes) {
  const target = byId('nodes');
  if (!nodes.length) {
    target.replaceChildren(el('p', {class: 'muted', id: 'no-nodes', text: 'No nodes in the pool.'}));
    return;
  }
  const rows = nodes.map((n) => {
    const cap = Number(n.max_concurrent) || 0;
    const percent = cap > 0 ? Math.min(100, Math.round((100 * n.inflight) / cap)) : 0;
    const failovers = Object.values(n.failovers || {}).reduce((sum, v) => sum + Number(v || 0), 0);
    const loaded = (n.loaded_models || []).join(', ');
    const serves = Array.isArray(n.models) ? n.models.join(', ') || 'none' : 'discovered';
    const error = n.last_error || '';
    return el('tr', {'data-node': n.name, 'data-state': n.state},
      el('td', {class: 'node-name', title: n.version ? `Ollama ${n.version}` : null, text: n.name}),
      el('td', {class: `node-state ${NODE_STATE_CLASS[n.state] || ''}`, text: nodeStateText(n)}),
      el('td', {class: 'node-load', title: `peak ${fmtNumber(n.peak_inflight)}`},
        el('div', {class: 'meter'}, el('span', {'data-percent': percent})),
        `${fmtNumber(n.inflight)} / ${fmtNumber(cap)}`),
      el('td', {class: 'num', text: fmtNumber(n.requests)}),
      el('td', {class: n.failures ? 'num status-bad' : 'num', text: fmtNumber(n.failures)}),
      el('td', {class: 'num', text: fmtNumber(n.ejections)}),
      el('td', {class: 'num', title: joinCounts(n.failovers), text: fmtNumber(failovers)}),
      el('td', {title: `serves: ${serves}`, text: loaded || '–'}),
      el('td', {class: error ? 'status-bad' : 'muted', title: error || null,
        text: error ? truncate(error, ERROR_CHARS) : '–'}));
  });
  const num = (text) => el('th', {class: 'num', text});
  const table = el('table', {id: 'nodes-table'},
    el('thead', {}, el('tr', {},
      el('th', {text: 'Node'}), el('th', {text: 'State'}), el('th', {text: 'In flight'}),
      num('Requests'), num('Failures'), num('Ejections'), num('Failovers'),
      el('th', {text: 'Loaded models'}), el('th', {text: 'Last error'}))),
    el('tbody', {}, ...rows));
  for (const bar of table.querySelectorAll('[data-percent]')) bar.style.width = `${bar.dataset.percent}%`;
  for (const cell of table.querySelectorAll('.node-draining')) {
    cell.style.color = 'var(--warn)';
    cell.style.fontWeight = '600';
  }
  target.replaceChildren(table);
}

function renderRecent(recent) {
  const rows = recent.map((r) => {
    const bad = r.status >= 400 || r.outcome !== 'ok';
    return el('tr', {},
      el('td', {text: fmtClock(r.time)}),
      el('td', {class: 'mono', text: r.endpoint}),
      el('td', {text: r.model}),
      el('td', {class: `num ${bad ? 'status-bad' : 'status-ok'}`, text: r.status}),
      el('td', {text: r.outcome}),
      el('td', {class: 'num', text: fmtMs(r.ttft_ms)}),
      el('td', {class: 'num', text: fmtMs(r.duration_ms)}),
      el('td', {class: 'num', text: fmtNumber(r.tokens)}));
  });
  if (!rows.length) {
    rows.push(el('tr', {}, el('td', {colspan: 8, class: 'muted', text: 'No requests yet.'})));
  }
  byId('recent').tBodies[0].replaceChildren(...rows);
}

function joinCounts(counts) {
  const entries = Object.entries(counts || {});
  return entries.length ? entries.map(([k, v]) => `${k} ${fmtNumber(v)}`).join(', ') : 'none';
}

function renderCounters(s) {
  facts(byId('counters'), [
    ['Admitted', fmtNumber(s.admitted)],
    ['Rejected', joinCounts(s.rejected)],
    ['Refused', joinCounts(s.refused)],
    ['Upstream errors', joinCounts(s.upstream_errors)],
    ['Tokens streamed', fmtNumber(s.tokens_streamed)],
    ['Alerts', joinCounts(s.alerts)],
    ['Gateway', `${s.status} · v${s.version}`],
  ]);
}

poll(async () => {
  const s = await getJson('/ui/api/stats');
  renderModel(s.model_details || {name: s.model});
  renderGpus(s.gpu, s.node_gpus);
  renderNodes(s.nodes || []);
  renderCoordination(s.coordination || {mode: 'local'});
  renderRecent(s.recent);
  renderCounters(s);
}, POLL_MS);
