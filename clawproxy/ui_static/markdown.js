// A small Markdown renderer for model replies that builds DOM nodes, never HTML strings.
//
// Model text is untrusted: every piece of it becomes a text node or textContent, so a reply
// containing <script> or <img onerror> shows as those characters. Links are kept only for
// http(s) URLs (no javascript:, data: or relative ones), and a link's clickable text is
// always its own target, as the URL parser spells it (a look-alike host shows as punycode):
// "[your bank](URL)" renders as "your bank (URL)" with only the URL clickable, so no
// label can hide where a link goes. It covers what chat
// models write: paragraphs with line breaks, headings, fenced code, lists, quotes, rules,
// and inline code, bold, italics and links. It runs on the whole reply for every repaint while
// streaming; an unclosed code fence simply runs to the end until its closing line arrives.

import {el} from './common.js';

const FENCE = /^\s*(`{3,}|~{3,})\s*([\w+#.-]*)/;
const HEADING = /^(#{1,6})\s+(.*)$/;
const RULE = /^\s*([-*_])(\s*\1){2,}\s*$/;
const LIST_ITEM = /^(\s*)([-*+]|\d{1,9}[.)])\s+(.*)$/;
const QUOTE = /^\s*>\s?(.*)$/;
// Inline spans, leftmost first: `code`, **bold**, __bold__, *em*, _em_, [text](url).
const INLINE = /(`+)(.+?)\1|\*\*(.+?)\*\*|__(.+?)__|\*([^\s*](?:.*?[^\s*])?)\*|\b_([^_]+)_\b|\[([^\]]+)\]\(([^)\s]+)\)/g;

/** Replace container's children with the rendering of text. */
export function renderMarkdown(container, text) {
  const fragment = document.createDocumentFragment();
  renderBlocks(fragment, text.split('\n'));
  container.replaceChildren(fragment);
}

function startsBlock(line) {
  return FENCE.test(line) || HEADING.test(line) || RULE.test(line) || LIST_ITEM.test(line) ||
    QUOTE.test(line);
}

function renderBlocks(parent, lines) {
  let i = 0;
  while (i < lines.length) {
    const line = lines[i];
    let match;
    if (!line.trim()) {
      i += 1;
    } else if ((match = line.match(FENCE))) {
      const close = match[1];
      const body = [];
      for (i += 1; i < lines.length && !lines[i].trim().startsWith(close); i += 1) body.push(lines[i]);
      i += 1;
      const code = el('code', {}, body.join('\n'));
      if (match[2]) code.dataset.lang = match[2];
      parent.append(el('pre', {}, code));
    } else if ((match = line.match(HEADING))) {
      // Inside a chat bubble, "#" is a section title, not a page title: h3 to h6.
      parent.append(inline(el(`h${Math.min(match[1].length + 2, 6)}`), match[2]));
      i += 1;
    } else if (RULE.test(line)) {
      parent.append(el('hr'));
      i += 1;
    } else if ((match = line.match(LIST_ITEM))) {
      i = renderList(parent, lines, i, /\d/.test(match[2]));
    } else if (QUOTE.test(line)) {
      const quoted = [];
      for (; i < lines.length && (match = lines[i].match(QUOTE)); i += 1) quoted.push(match[1]);
      const quote = el('blockquote');
      renderBlocks(quote, quoted);
      parent.append(quote);
    } else {
      const paragraph = [];
      for (; i < lines.length && lines[i].trim() && !startsBlock(lines[i]); i += 1) paragraph.push(lines[i]);
      parent.append(inlineLines(el('p'), paragraph));
    }
  }
}

function renderList(parent, lines, start, ordered) {
  const list = el(ordered ? 'ol' : 'ul');
  const items = [];
  let i = start;
  for (; i < lines.length; i += 1) {
    const match = lines[i].match(LIST_ITEM);
    if (match && /\d/.test(match[2]) === ordered) {
      if (ordered && !items.length) list.start = parseInt(match[2], 10);
      items.push([match[3]]);
    } else if (items.length && lines[i].trim() && /^\s/.test(lines[i])) {
      items.at(-1).push(lines[i].trim()); // an indented continuation of the item above
    } else {
      break;
    }
  }
  for (const item of items) list.append(inlineLines(el('li'), item));
  parent.append(list);
  return i;
}

function inlineLines(node, lines) {
  lines.forEach((line, index) => {
    if (index) node.append(el('br'));
    inline(node, line);
  });
  return node;
}

function safeLink(href) {
  try {
    const url = new URL(href);
    return url.protocol === 'http:' || url.protocol === 'https:' ? url.href : null;
  } catch {
    return null;
  }
}

/** A link that shows where it goes: the URL is the clickable text; a label that says
 * anything else stays beside it, as text. Without a safe URL, the source as written. */
function appendLink(node, label, url, source) {
  if (!url) {
    node.append(source);
    return;
  }
  const anchor = el('a', {href: url, rel: 'noopener noreferrer', target: '_blank'}, url);
  if (safeLink(label.trim()) === url) {
    node.append(anchor);
  } else {
    node.append(inline(el('span', {class: 'link-label'}), label), ' (', anchor, ')');
  }
}

/** Append text to node with inline Markdown spans; returns node. */
function inline(node, text) {
  let last = 0;
  for (const match of text.matchAll(INLINE)) {
    node.append(text.slice(last, match.index));
    last = match.index + match[0].length;
    const [whole, , code, bold1, bold2, em1, em2, label, href] = match;
    if (code !== undefined) {
      node.append(el('code', {}, code.trim() || code));
    } else if (bold1 !== undefined || bold2 !== undefined) {
      node.append(inline(el('strong'), bold1 ?? bold2));
    } else if (em1 !== undefined || em2 !== undefined) {
      node.append(inline(el('em'), em1 ?? em2));
    } else {
      appendLink(node, label, safeLink(href), whole);
    }
  }
  node.append(text.slice(last));
  return node;
}
