// chat.js — the chat panel. Messages travel on every peer's `chat` data channel (ordered,
// reliable) as {"from": name, "text": "...", "ts": ms}; each peer sends to each peer (mesh).

const MAX_TEXT = 4000;
const URL_RE = /\bhttps?:\/\/[^\s<>"']+/gi;

/**
 * The text as DOM nodes, with http(s) links clickable. Built from text nodes and <a>
 * elements only (never innerHTML), so nothing a peer sends can become markup.
 */
export function linkify(text) {
  const out = [];
  let last = 0;
  for (const m of text.matchAll(URL_RE)) {
    let url = m[0];
    // Punctuation at the end belongs to the sentence, not the link: "see https://x.org."
    const trail = url.match(/[.,;:!?)\]}]+$/);
    if (trail && !(trail[0].startsWith(')') && url.includes('('))) url = url.slice(0, -trail[0].length);
    let href;
    try { href = new URL(url); } catch { continue; }
    if (href.protocol !== 'http:' && href.protocol !== 'https:') continue;
    if (m.index > last) out.push(document.createTextNode(text.slice(last, m.index)));
    const a = document.createElement('a');
    a.href = href.href;
    a.textContent = url;
    a.target = '_blank';
    a.rel = 'noopener noreferrer nofollow';
    out.push(a);
    last = m.index + url.length;
  }
  if (last < text.length) out.push(document.createTextNode(text.slice(last)));
  return out;
}

export class Chat {
  /**
   * @param {object} o
   * @param {HTMLElement} o.list   the message list
   * @param {HTMLFormElement} o.form  contains #chat-input
   * @param {string} o.name  our display name
   * @param {(msg: object) => number} o.broadcast  sends to every open chat channel, returns how many
   * @param {() => void} o.onUnread  a message arrived (for the unread badge)
   */
  constructor({ list, form, name, broadcast, onUnread }) {
    Object.assign(this, { list, form, name, broadcast, onUnread });
    this.log = []; // [{from, text, ts, self, peer}] — also exposed to tests
    this.input = form.querySelector('#chat-input');
    form.addEventListener('submit', (e) => {
      e.preventDefault();
      const text = this.input.value.trim();
      if (text) this.send(text);
      this.input.value = '';
    });
    // Enter sends, Shift+Enter adds a line.
    this.input.addEventListener('keydown', (e) => {
      if (e.key === 'Enter' && !e.shiftKey && !e.isComposing) { e.preventDefault(); form.requestSubmit(); }
    });
  }

  send(text) {
    text = String(text).slice(0, MAX_TEXT);
    const msg = { from: this.name, text, ts: Date.now() };
    const delivered = this.broadcast(msg);
    this.#add({ ...msg, self: true, delivered });
    return delivered;
  }

  /** A chat frame from a peer. */
  receive(peer, msg) {
    if (typeof msg.text !== 'string') return;
    const from = typeof msg.from === 'string' && msg.from ? msg.from : peer.name;
    const ts = Number.isFinite(msg.ts) ? msg.ts : Date.now();
    this.#add({ from, text: msg.text.slice(0, MAX_TEXT), ts, self: false, peer: peer.id });
    this.onUnread();
  }

  /** A line from the app itself ("alice joined"). Not part of the chat log. */
  notice(text) {
    const li = document.createElement('li');
    li.className = 'notice';
    li.textContent = text;
    this.#append(li);
  }

  #add(entry) {
    this.log.push(entry);
    const last = this.list.lastElementChild;
    const li = document.createElement('li');
    li.className = `msg${entry.self ? ' self' : ''}`;
    const sameSender = last?.classList.contains('msg') && last.dataset.from === entry.from &&
      last.classList.contains('self') === entry.self && entry.ts - Number(last.dataset.ts) < 120000;
    li.dataset.from = entry.from;
    li.dataset.ts = entry.ts;
    if (!sameSender) {
      const head = document.createElement('div');
      head.className = 'msg-head';
      const who = document.createElement('span');
      who.className = 'msg-from';
      who.textContent = entry.self ? 'You' : entry.from;
      const when = document.createElement('time');
      when.dateTime = new Date(entry.ts).toISOString();
      when.textContent = new Date(entry.ts).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
      head.append(who, when);
      li.append(head);
    } else li.classList.add('cont');
    const body = document.createElement('div');
    body.className = 'msg-text';
    body.append(...linkify(entry.text));
    if (entry.self && entry.delivered === 0) body.title = 'Nobody else is connected yet';
    li.append(body);
    this.#append(li);
  }

  #append(li) {
    const atBottom = this.list.scrollHeight - this.list.scrollTop - this.list.clientHeight < 40;
    this.list.append(li);
    this.list.parentElement.querySelector('.chat-empty')?.remove();
    if (atBottom || li.classList.contains('self')) this.list.scrollTop = this.list.scrollHeight;
  }
}
