// The chat page: conversations kept in this browser, replies streamed from the gateway.
//
// A reply is one fetch() of /v1/chat/completions with stream: true, read with the body's
// stream reader: each SSE event's delta is appended as it arrives, and the message is
// repainted at most once per animation frame (Markdown, built as DOM nodes). Stop aborts
// the fetch: the browser closes the connection, the gateway cancels the request, and that
// closes its stream to Ollama, so the model stops generating too. Conversations live in
// localStorage (the last MAX_CHATS), never on the gateway.

import {api, byId, el, httpError, getJson} from './common.js';
import {renderMarkdown} from './markdown.js';

const CHATS_STORE = 'clawproxy.chats';
const MODEL_STORE = 'clawproxy.model';
const MAX_CHATS = 50;
const TITLE_CHARS = 60;

const messagesBox = byId('messages');
const input = byId('input');
const modelSelect = byId('model');
const sendButton = byId('send');
const stopButton = byId('stop');

let chats = loadChats();
let currentId = null;
let controller = null; // the AbortController of the reply in flight

function loadChats() {
  try {
    const stored = JSON.parse(localStorage.getItem(CHATS_STORE) || '[]');
    return Array.isArray(stored) ? stored : [];
  } catch {
    return [];
  }
}

function saveChats() {
  chats.sort((a, b) => b.updated - a.updated);
  chats = chats.slice(0, MAX_CHATS);
  try {
    localStorage.setItem(CHATS_STORE, JSON.stringify(chats));
  } catch {
    // Storage full or disabled: the conversation still works, it just is not kept.
  }
}

const currentChat = () => chats.find((c) => c.id === currentId) || null;

// -- history (left) ------------------------------------------------------------------------

function renderHistory() {
  byId('history').replaceChildren(...chats.map((chat) => el('li', {class: chat.id === currentId ? 'current' : ''},
    el('button', {class: 'open', type: 'button', title: chat.title, onclick: () => openChat(chat.id)}, chat.title),
    el('button', {
      class: 'delete', type: 'button', 'aria-label': `Delete “${chat.title}”`, title: 'Delete',
      onclick: () => deleteChat(chat.id),
    }, '×'))));
}

function openChat(id) {
  if (controller) controller.abort();
  currentId = id;
  const chat = currentChat();
  messagesBox.replaceChildren();
  for (const message of chat ? chat.messages : []) showMessage(message.role, message.content).paint();
  if (!chat || !chat.messages.length) {
    messagesBox.append(el('p', {class: 'empty', id: 'empty'},
      'Ask anything. Enter sends, Shift+Enter adds a line.'));
  }
  renderHistory();
  input.focus();
}

function deleteChat(id) {
  chats = chats.filter((c) => c.id !== id);
  saveChats();
  if (id === currentId) openChat(null);
  else renderHistory();
}

// -- messages (right) ----------------------------------------------------------------------

/** A message bubble; paint() redraws it from its content (Markdown for the assistant). */
function showMessage(role, content) {
  byId('empty')?.remove();
  const body = el('div', {class: 'body'});
  const node = el('div', {class: `msg ${role}`, 'data-role': role}, body);
  const view = {node, content, thinking: '', thinkingNode: null, noteNode: null};
  view.paint = () => {
    if (role === 'assistant') renderMarkdown(body, view.content);
    else body.textContent = view.content;
    if (view.thinking) {
      if (!view.thinkingNode) {
        view.thinkingNode = el('details', {class: 'thinking'}, el('summary', {text: 'Thinking'}), el('pre'));
        node.prepend(view.thinkingNode);
      }
      view.thinkingNode.lastChild.textContent = view.thinking;
    }
  };
  view.note = (text) => {
    view.noteNode ??= node.appendChild(el('div', {class: 'note'}));
    view.noteNode.textContent = text;
  };
  messagesBox.append(node);
  return view;
}

function nearBottom() {
  return messagesBox.scrollHeight - messagesBox.scrollTop - messagesBox.clientHeight < 80;
}

/** The data of each SSE event in a response body, as the events complete. */
async function* sseData(body) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = '';
  try {
    for (;;) {
      const {value, done} = await reader.read();
      if (done) return;
      buffer += value;
      let end;
      while ((end = buffer.indexOf('\n\n')) >= 0) {
        const event = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        // Comment lines (": keep-alive" while the model loads) carry no data.
        const data = event.split('\n').filter((line) => line.startsWith('data:'))
          .map((line) => line.slice(line.startsWith('data: ') ? 6 : 5));
        if (data.length) yield data.join('\n');
      }
    }
  } finally {
    reader.releaseLock();
  }
}

function setBusy(busy) {
  sendButton.hidden = busy;
  stopButton.hidden = !busy;
  modelSelect.disabled = busy;
}

async function send() {
  const text = input.value;
  if (!text.trim() || controller) return;
  let chat = currentChat();
  if (!chat) {
    chat = {id: `${Date.now().toString(36)}${Math.random().toString(36).slice(2, 6)}`,
      title: text.trim().slice(0, TITLE_CHARS), messages: [], updated: Date.now()};
    chats.unshift(chat);
    currentId = chat.id;
  }
  chat.messages.push({role: 'user', content: text});
  chat.updated = Date.now();
  saveChats();
  renderHistory();
  input.value = '';
  showMessage('user', text).paint();

  const reply = showMessage('assistant', '');
  reply.node.dataset.state = 'streaming';
  messagesBox.scrollTop = messagesBox.scrollHeight;
  controller = new AbortController();
  setBusy(true);
  let frame = 0;
  const repaint = () => {
    frame = 0;
    const follow = nearBottom();
    reply.paint();
    if (follow) messagesBox.scrollTop = messagesBox.scrollHeight;
  };
  let state = 'error';
  try {
    const request = {stream: true, messages: chat.messages.map(({role, content}) => ({role, content}))};
    if (modelSelect.value) request.model = modelSelect.value;
    const response = await api('/v1/chat/completions', {
      method: 'POST',
      headers: {'Content-Type': 'application/json'},
      body: JSON.stringify(request),
      signal: controller.signal,
    });
    if (!response.ok) throw await httpError(response);
    let finished = false;
    for await (const data of sseData(response.body)) {
      if (data === '[DONE]') {
        finished = true;
        break;
      }
      const event = JSON.parse(data);
      if (event.error) throw new Error(event.error.message || 'the model failed');
      const delta = event.choices?.[0]?.delta || {};
      reply.content += delta.content || '';
      reply.thinking += delta.reasoning_content || '';
      frame ||= requestAnimationFrame(repaint);
    }
    // A stream the gateway cut (Ollama failed) ends without [DONE]: never show it as whole.
    if (!finished) throw new Error('the reply was cut off before its end');
    state = 'done';
  } catch (err) {
    if (err.name === 'AbortError') {
      state = 'stopped';
      reply.note('Stopped.');
    } else {
      reply.note(`Error: ${err.message}`);
    }
  } finally {
    if (frame) cancelAnimationFrame(frame);
    repaint();
    reply.node.dataset.state = state;
    if (reply.content) chat.messages.push({role: 'assistant', content: reply.content});
    chat.updated = Date.now();
    saveChats();
    controller = null;
    setBusy(false);
  }
}

// -- model picker --------------------------------------------------------------------------

// From the UI's own /ui/api/models, not the public /health and /v1/models: those count as
// traffic, and the page's own look-ups must not show up in the gateway's numbers.
async function loadModels() {
  try {
    const models = await getJson('/ui/api/models');
    modelSelect.options[0].textContent = `Gateway default (${models.default_model})`;
    const saved = localStorage.getItem(MODEL_STORE) || '';
    for (const model of models.data) modelSelect.append(el('option', {value: model.id}, model.id));
    if ([...modelSelect.options].some((o) => o.value === saved)) modelSelect.value = saved;
  } catch (err) {
    const banner = byId('banner');
    banner.textContent = `Could not list models: ${err.message}`;
    banner.hidden = false;
  }
}

// -- wiring --------------------------------------------------------------------------------

input.addEventListener('keydown', (event) => {
  // Enter sends; Shift+Enter is the textarea's own newline. Not while an IME composes.
  if (event.key === 'Enter' && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    send();
  }
});
byId('composer').addEventListener('submit', (event) => {
  event.preventDefault();
  send();
});
stopButton.addEventListener('click', () => controller?.abort());
byId('new-chat').addEventListener('click', () => openChat(null));
modelSelect.addEventListener('change', () => localStorage.setItem(MODEL_STORE, modelSelect.value));

openChat(chats[0]?.id ?? null);
loadModels();
