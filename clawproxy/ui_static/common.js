// Shared by the three pages: the API key, fetch with it, polling, DOM and number helpers.
//
// Text from the gateway or a model reaches the page only as text nodes (el() and
// textContent), never through innerHTML, so nothing in a reply or an error can inject markup.

const KEY_STORE = 'clawproxy.apiKey';

/** An element with attributes, listeners (onclick: fn) and children (strings become text). */
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (name === 'class') node.className = value;
    else if (name === 'text') node.textContent = value;
    else if (name.startsWith('on')) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value === true ? '' : String(value));
  }
  node.append(...children);
  return node;
}

export const byId = (id) => document.getElementById(id);

// -- the API key ---------------------------------------------------------------------------

export function apiKey() {
  return localStorage.getItem(KEY_STORE) || '';
}

let asking = null; // the open key dialog, shared by every request that got a 401 meanwhile

/** Ask for the API key once (a modal form); resolves when a key has been stored. */
export function askKey(message) {
  if (asking) return asking;
  asking = new Promise((resolve) => {
    const input = el('input', {
      type: 'password', id: 'api-key-input', autocomplete: 'off', required: true,
      placeholder: 'sk-...', 'aria-label': 'API key',
    });
    const form = el('form', {},
      el('h2', {text: 'API key'}),
      el('p', {class: 'muted', text: message}),
      input,
      el('div', {class: 'actions'}, el('button', {type: 'submit', text: 'Save'})));
    const dialog = el('dialog', {id: 'key-dialog'}, form);
    // Escape would close the dialog with no key and leave the page stuck: keep it open.
    dialog.addEventListener('cancel', (event) => event.preventDefault());
    form.addEventListener('submit', (event) => {
      event.preventDefault();
      const key = input.value.trim();
      if (!key) return;
      localStorage.setItem(KEY_STORE, key);
      dialog.close();
      dialog.remove();
      showForgetButton();
      asking = null;
      resolve();
    });
    document.body.append(dialog);
    dialog.showModal();
    input.focus();
  });
  return asking;
}

/** The header's "Forget API key" button, shown while a key is stored in this browser. */
export function showForgetButton() {
  const button = byId('forget-key');
  if (!button) return;
  button.hidden = !apiKey();
  button.onclick = () => {
    localStorage.removeItem(KEY_STORE);
    location.reload();
  };
}

// -- requests ------------------------------------------------------------------------------

export class HttpError extends Error {
  constructor(status, message, retryAfterS) {
    super(message);
    this.status = status;
    this.retryAfterS = retryAfterS;
  }
}

/** fetch() with the stored key as a Bearer token; a 401 asks for a key and tries again. */
export async function api(path, init = {}) {
  for (;;) {
    const headers = new Headers(init.headers);
    const key = apiKey();
    if (key) headers.set('Authorization', `Bearer ${key}`);
    const response = await fetch(path, {...init, headers, cache: 'no-store'});
    if (response.status !== 401) return response;
    await response.body?.cancel();
    await askKey(key
      ? 'The gateway refused the stored key. Enter a valid API key.'
      : 'This gateway requires an API key. It is kept in this browser only.');
  }
}

/** An HttpError from a failed response, with the OpenAI-style error message if there is one. */
export async function httpError(response) {
  let message = `HTTP ${response.status}`;
  try {
    const body = await response.json();
    if (body?.error?.message) message = body.error.message;
  } catch {
    // Not JSON: the status says enough.
  }
  const retry = Number(response.headers.get('Retry-After'));
  return new HttpError(response.status, message, Number.isFinite(retry) ? retry : undefined);
}

export async function getJson(path) {
  const response = await api(path);
  if (!response.ok) throw await httpError(response);
  return response.json();
}

/**
 * Call fn every intervalMs while the page is visible (a hidden tab costs the gateway
 * nothing). fn's errors show in the banner; the next try waits for Retry-After or longer.
 */
export function poll(fn, intervalMs) {
  let timer = 0;
  let running = false;
  const banner = byId('banner');
  const tick = async () => {
    timer = 0;
    running = true;
    let wait = intervalMs;
    try {
      await fn();
      if (banner) banner.hidden = true;
    } catch (err) {
      if (banner) {
        banner.textContent = err instanceof HttpError
          ? `The gateway answered: ${err.message}`
          : 'Cannot reach the gateway; retrying.';
        banner.hidden = false;
      }
      wait = err.retryAfterS ? err.retryAfterS * 1000 : Math.min(intervalMs * 3, 10000);
    }
    running = false;
    if (!document.hidden) timer = setTimeout(tick, wait);
  };
  document.addEventListener('visibilitychange', () => {
    if (document.hidden && timer) {
      clearTimeout(timer);
      timer = 0;
    } else if (!document.hidden && !timer && !running) {
      tick();
    }
  });
  tick();
}

// -- formatting ----------------------------------------------------------------------------

export function fmtMs(ms) {
  if (ms === null || ms === undefined) return '–';
  if (ms < 1000) return `${ms < 10 ? ms.toFixed(1) : Math.round(ms)} ms`;
  return `${(ms / 1000).toFixed(ms < 10000 ? 2 : 1)} s`;
}

export function fmtBytes(bytes) {
  if (bytes === null || bytes === undefined) return '–';
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let value = bytes;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return `${value.toFixed(unit && value < 10 ? 1 : 0)} ${units[unit]}`;
}

export function fmtDuration(seconds) {
  const d = Math.floor(seconds / 86400);
  const h = Math.floor((seconds % 86400) / 3600);
  const m = Math.floor((seconds % 3600) / 60);
  const s = Math.floor(seconds % 60);
  if (d) return `${d}d ${h}h`;
  if (h) return `${h}h ${m}m`;
  if (m) return `${m}m ${s}s`;
  return `${s}s`;
}

export function fmtNumber(n) {
  return n === null || n === undefined ? '–' : Number(n).toLocaleString('en-US');
}

export function fmtClock(unixSeconds) {
  return new Date(unixSeconds * 1000).toLocaleTimeString('en-GB');
}

showForgetButton();
