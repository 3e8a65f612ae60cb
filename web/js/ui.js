// ui.js — DOM for the call: icons, video tiles and their layout, the connection status pill,
// toasts. No call logic here; app.js decides what to show.

import { colorFor } from './pointers.js';
import { formatBps } from './stats.js';

export const $ = (sel, root = document) => root.querySelector(sel);

const ICONS = {
  logo: '<path d="M12 2l8.66 5v10L12 22l-8.66-5V7z"/><path d="M12 6v12M6.8 9l10.4 6M17.2 9L6.8 15"/>',
  mic: '<rect x="9" y="2.5" width="6" height="12" rx="3"/><path d="M5 11a7 7 0 0 0 14 0M12 18v3.5M8.5 21.5h7"/>',
  'mic-off': '<path d="M15 9.3V5.5a3 3 0 0 0-5.7-1.3M9 9v2.5a3 3 0 0 0 5 2.2M19 11a7 7 0 0 1-1.1 3.8M5 11a7 7 0 0 0 11.6 5.3M12 18v3.5M8.5 21.5h7M3 3l18 18"/>',
  cam: '<rect x="2.5" y="6" width="13" height="12" rx="2.5"/><path d="M15.5 10.2l6-3.7v11l-6-3.7z"/>',
  'cam-off': '<path d="M10 6h3a2.5 2.5 0 0 1 2.5 2.5v3.2l6-3.7v8M15.5 15.5V15.5a2.5 2.5 0 0 1-2.5 2.5H5A2.5 2.5 0 0 1 2.5 15.5v-7A2.5 2.5 0 0 1 5 6M3 3l18 18"/>',
  screen: '<rect x="2.5" y="3.5" width="19" height="13" rx="2"/><path d="M8 21h8M12 16.5V21M12 13V7.5M9.3 10.2L12 7.5l2.7 2.7"/>',
  chat: '<path d="M20.5 11.5a8 8 0 0 1-11.8 7L3.5 20l1.6-4.6A8 8 0 1 1 20.5 11.5z"/>',
  stats: '<path d="M3 20.5h18M6.5 16.5v-4M11 16.5v-9M15.5 16.5v-6M20 16.5V5"/>',
  leave: '<path d="M15 3.5h3.5a2 2 0 0 1 2 2v13a2 2 0 0 1-2 2H15M10 16.5L14.5 12 10 7.5M14.5 12H3.5"/>',
  link: '<path d="M10 13.5a4.5 4.5 0 0 0 6.4.4l3-3a4.5 4.5 0 0 0-6.4-6.4l-1.4 1.4"/><path d="M14 10.5a4.5 4.5 0 0 0-6.4-.4l-3 3a4.5 4.5 0 0 0 6.4 6.4l1.4-1.4"/>',
  send: '<path d="M21 3L10.5 13.5M21 3l-6.5 18-4-7.5L3 9.5z"/>',
  close: '<path d="M6 6l12 12M18 6L6 18"/>',
  dice: '<rect x="3.5" y="3.5" width="17" height="17" rx="3.5"/><circle cx="8.5" cy="8.5" r="1.2"/><circle cx="15.5" cy="15.5" r="1.2"/><circle cx="12" cy="12" r="1.2"/>',
  board: '<path d="M4 4l6.5 15.5 2.2-6.8 6.8-2.2z"/>',
  settings: '<circle cx="12" cy="12" r="3"/><path d="M19.4 15a1.7 1.7 0 0 0 .3 1.8l.1.1a2 2 0 1 1-2.8 2.8l-.1-.1a1.7 1.7 0 0 0-1.8-.3 1.7 1.7 0 0 0-1 1.5V21a2 2 0 1 1-4 0v-.1a1.7 1.7 0 0 0-1.1-1.5 1.7 1.7 0 0 0-1.8.3l-.1.1a2 2 0 1 1-2.8-2.8l.1-.1a1.7 1.7 0 0 0 .3-1.8 1.7 1.7 0 0 0-1.5-1H3a2 2 0 1 1 0-4h.1a1.7 1.7 0 0 0 1.5-1.1 1.7 1.7 0 0 0-.3-1.8l-.1-.1a2 2 0 1 1 2.8-2.8l.1.1a1.7 1.7 0 0 0 1.8.3H9a1.7 1.7 0 0 0 1-1.5V3a2 2 0 1 1 4 0v.1a1.7 1.7 0 0 0 1 1.5 1.7 1.7 0 0 0 1.8-.3l.1-.1a2 2 0 1 1 2.8 2.8l-.1.1a1.7 1.7 0 0 0-.3 1.8V9a1.7 1.7 0 0 0 1.5 1H21a2 2 0 1 1 0 4h-.1a1.7 1.7 0 0 0-1.5 1z"/>',
  'speaker-view': '<rect x="2.5" y="3.5" width="19" height="11" rx="2"/><rect x="2.5" y="17" width="5.5" height="3.5" rx="1"/><rect x="9.25" y="17" width="5.5" height="3.5" rx="1"/><rect x="16" y="17" width="5.5" height="3.5" rx="1"/>',
  grid: '<rect x="3" y="3" width="8" height="8" rx="1.5"/><rect x="13" y="3" width="8" height="8" rx="1.5"/><rect x="3" y="13" width="8" height="8" rx="1.5"/><rect x="13" y="13" width="8" height="8" rx="1.5"/>',
  pin: '<path d="M9 3h6l-1 6 4 4H6l4-4zM12 13v8"/>',
  fullscreen: '<path d="M4 9V4h5M20 9V4h-5M4 15v5h5M20 15v5h-5"/>',
};

export function icon(name) {
  return `<svg class="icon" viewBox="0 0 24 24" aria-hidden="true">${ICONS[name] ?? ''}</svg>`;
}

/** Fill every [data-icon] element with its icon (call again after changing data-icon). */
export function renderIcons(root = document) {
  for (const el of root.querySelectorAll('[data-icon]')) {
    if (el.dataset.iconShown === el.dataset.icon) continue;
    el.dataset.iconShown = el.dataset.icon;
    el.innerHTML = icon(el.dataset.icon);
  }
}

export function initials(name) {
  const parts = String(name).trim().split(/[\s_.-]+/).filter(Boolean);
  return ((parts[0]?.[0] ?? '?') + (parts[1]?.[0] ?? '')).toUpperCase();
}

// ---- Tiles

/**
 * The tiles of the call, laid out as a call app does:
 *   grid     every visible tile the same size, as large as fits (16:9; on a portrait screen
 *            tiles grow taller, up to 9:16, to fill it)
 *   speaker  one main tile (pinned, else someone sharing a screen, else the open board, else
 *            the active speaker) as large as fits, the others in a row of thumbnails below
 * Our own tile floats small in a corner (picture-in-picture) whenever there is anything
 * else to look at.
 */
export class TileGrid {
  constructor(root) {
    this.root = root;
    this.mode = 'grid';
    this.main = null; // the tile shown big in speaker mode
    new ResizeObserver(() => this.layout()).observe(root);
  }

  layout() {
    const all = [...this.root.children].filter((t) => t.classList.contains('tile') && !t.hidden);
    const self = all.find((t) => t.classList.contains('self'));
    const others = all.filter((t) => t !== self);
    self?.classList.toggle('pip', others.length > 0);
    const tiles = others.length ? others : all;
    for (const t of all) { t.classList.remove('main', 'thumb'); t.style.order = ''; }
    // In speaker view the thumbnails go on a row of their own, below the main tile.
    if (!this.brk) {
      this.brk = document.createElement('div');
      this.brk.className = 'tiles-break';
      this.brk.setAttribute('aria-hidden', 'true');
    }
    if (this.brk.parentNode !== this.root) this.root.append(this.brk);
    this.brk.hidden = true;
    if (!tiles.length) return;
    const style = getComputedStyle(this.root);
    const gap = parseFloat(style.columnGap) || 12;
    const W = this.root.clientWidth - parseFloat(style.paddingLeft) - parseFloat(style.paddingRight);
    const H = this.root.clientHeight - parseFloat(style.paddingTop) - parseFloat(style.paddingBottom);
    if (W <= 0 || H <= 0) return;
    this.root.classList.toggle('speaker', this.mode === 'speaker' && tiles.length > 1);
    if (this.mode === 'speaker' && tiles.length > 1) {
      const main = tiles.includes(this.main) ? this.main : tiles[0];
      const rest = tiles.filter((t) => t !== main);
      const thumbW = Math.max(96, Math.min(200, (W - gap * (rest.length - 1)) / rest.length));
      const thumbH = Math.round(thumbW * 9 / 16);
      const mainH = Math.max(120, H - thumbH - 2 * gap);
      const mainW = Math.min(W, mainH * 16 / 9);
      // 16:9, or on a portrait screen as tall as the space allows (up to 9:16).
      const mainHt = H > W ? Math.min(mainH, mainW * 16 / 9) : mainW * 9 / 16;
      main.classList.add('main');
      size(main, mainW, mainHt);
      main.style.order = '0';
      this.brk.hidden = false;
      this.brk.style.order = '1';
      for (const t of rest) { t.classList.add('thumb'); t.style.order = '2'; size(t, thumbW, thumbH); }
      return;
    }
    const n = tiles.length;
    const aspect = 16 / 9;
    let best = 0, bestCols = 1;
    for (let cols = 1; cols <= n; cols++) {
      const rows = Math.ceil(n / cols);
      const w = Math.min((W - gap * (cols - 1)) / cols, ((H - gap * (rows - 1)) / rows) * aspect);
      if (w > best) { best = w; bestCols = cols; }
    }
    // Everything fits on screen unless tiles would get tiny: then one full-width column
    // that scrolls (phones in portrait, many people).
    let w = best, h = best / aspect;
    if (best < 170 && W < 560) { w = W; h = W / aspect; bestCols = 1; }
    // A portrait screen: let tiles grow taller (up to 9:16) to use the height.
    const rows = Math.ceil(n / bestCols);
    const fillH = (H - gap * (rows - 1)) / rows;
    if (H > W && fillH > h) h = Math.min(fillH, w * 16 / 9);
    for (const t of tiles) size(t, w, h);
  }
}

function size(tile, w, h) {
  tile.style.setProperty('--tile-w', `${Math.max(96, Math.floor(w))}px`);
  tile.style.setProperty('--tile-h', `${Math.max(54, Math.floor(h))}px`);
}

/** Create the tile for a participant (self or a peer). */
export function createTile({ id, name, self }) {
  const t = document.createElement('article');
  t.className = `tile${self ? ' self' : ''}`;
  t.dataset.peer = id;
  t.dataset.name = name;
  t.style.setProperty('--c', colorFor(name));
  t.innerHTML = `
    <video playsinline autoplay muted></video>
    <div class="avatar" aria-hidden="true"><span></span></div>
    <div class="tile-state"><span class="spinner"></span><span class="tile-state-text">Connecting…</span></div>
    <div class="tile-label"><span class="mic-off" hidden>${icon('mic-off')}</span><span class="tile-name"></span></div>
    <div class="tile-badge" hidden></div>
    <dl class="tile-stats" aria-label="Connection statistics"></dl>
    <div class="tile-actions">
      <button type="button" class="tile-btn tile-pin" aria-pressed="false">${icon('pin')}</button>
      <button type="button" class="tile-btn tile-full">${icon('fullscreen')}</button>
    </div>
    ${self ? '' : '<audio autoplay></audio>'}`;
  t.querySelector('.avatar span').textContent = initials(name);
  t.querySelector('.tile-name').textContent = self ? `${name} (you)` : name;
  t.querySelector('.tile-pin').setAttribute('aria-label', `Pin ${self ? 'yourself' : name}`);
  t.querySelector('.tile-full').setAttribute('aria-label', `Show ${self ? 'yourself' : name} full screen`);
  const video = t.querySelector('video');
  const showVideo = () => t.classList.toggle('has-video', video.videoWidth > 0 && !t.classList.contains('video-off'));
  video.addEventListener('resize', showVideo);
  video.addEventListener('loadeddata', showVideo);
  video.addEventListener('emptied', showVideo);
  t.refreshVideo = showVideo;
  describeTile(t, { audio: true, video: true });
  return t;
}

/**
 * A tile's media state as everyone sees it: mic-off icon, avatar instead of video, the
 * speaking highlight, and an aria-label that says all of it.
 */
export function describeTile(tile, { audio, video, screen = false, speaking = false, connection = '' }) {
  tile.querySelector('.mic-off').hidden = audio;
  tile.classList.toggle('muted', !audio);
  tile.classList.toggle('speaking', !!speaking && audio);
  tile.classList.toggle('presenting', !!screen);
  const self = tile.classList.contains('self');
  const name = tile.dataset.name;
  const parts = [self ? `${name} (you)` : name];
  if (screen) parts.push('sharing the screen');
  parts.push(audio ? 'microphone on' : 'microphone off');
  if (!screen) parts.push(video ? 'camera on' : 'camera off');
  if (speaking && audio) parts.push('speaking');
  if (connection) parts.push(connection);
  const label = parts.join(', ');
  if (tile.getAttribute('aria-label') !== label) tile.setAttribute('aria-label', label);
}

/** Show a stream in a tile (video muted in the element; remote audio plays in <audio>). */
export function setTileStream(tile, stream, { videoOn = true, sinkId = '' } = {}) {
  // A media element showing a stream without tracks of its kind never gets data, and one
  // that is still loading holds back the page's load event: attach only when there is a track.
  const src = (kind) => (stream?.getTracks().some((t) => t.kind === kind) ? stream : null);
  const video = tile.querySelector('video');
  const hasLiveVideo = stream?.getVideoTracks().some((t) => t.readyState === 'live' && !t.muted);
  tile.classList.toggle('video-off', !videoOn || !hasLiveVideo);
  if (video.srcObject !== src('video')) {
    video.srcObject = src('video');
    if (video.srcObject) video.play().catch(() => {});
  }
  const audio = tile.querySelector('audio');
  if (audio && audio.srcObject !== src('audio')) {
    audio.srcObject = src('audio');
    if (audio.srcObject) audio.play().catch(() => document.body.classList.add('needs-audio-unlock'));
  }
  if (audio && sinkId !== undefined && audio.setSinkId && (audio.sinkId ?? '') !== sinkId) audio.setSinkId(sinkId).catch(() => {});
  tile.refreshVideo();
}

const STATE_TEXT = { new: 'Waiting…', connecting: 'Connecting…', disconnected: 'Reconnecting…', failed: 'Connection failed', closed: 'Closed' };

/** Update a peer tile from its RTCPeerConnection state and last stats. */
export function updatePeerTile(tile, peer) {
  const state = peer.pc.connectionState;
  tile.dataset.state = state;
  tile.querySelector('.tile-state-text').textContent = STATE_TEXT[state] ?? '';
  const s = peer.stats ?? {};
  // Technical labels: shown only with Stats on (CSS hides them otherwise).
  const badge = tile.querySelector('.tile-badge');
  if (s.candidateType) {
    badge.hidden = false;
    badge.dataset.type = s.candidateType;
    badge.textContent = `${s.candidateType} · ${s.protocol ?? '?'}${s.rttMs != null ? ` · ${s.rttMs} ms` : ''}`;
  } else badge.hidden = true;
  const dl = tile.querySelector('.tile-stats');
  if (!document.querySelector('.call.show-stats')) return; // not shown: skip the DOM work
  const pct = (v) => (v != null ? `${v < 10 ? v.toFixed(1) : Math.round(v)} %` : '–');
  const rows = [
    ['Path', s.candidateType ? `${s.candidateType}/${s.protocol} ⇄ ${s.remoteCandidateType ?? '?'}` : '–'],
    ['RTT', s.rttMs != null ? `${s.rttMs} ms` : '–'],
    ['In', formatBps(s.inBps)],
    ['Out', formatBps(s.outBps)],
    ['Loss', pct(s.lossPct)],
    ['Jitter', s.jitterMs != null ? `${s.jitterMs} ms` : '–'],
    ['Video', s.video ?? '–'],
    ['Audio', s.audio ?? '–'],
  ];
  dl.replaceChildren(...rows.flatMap(([k, v]) => {
    const dt = document.createElement('dt'); dt.textContent = k;
    const dd = document.createElement('dd'); dd.textContent = v;
    return [dt, dd];
  }));
}

// ---- Connection status and toasts

const CONN_TEXT = {
  idle: 'Not connected',
  connecting: 'Connecting…',
  joining: 'Joining…',
  joined: 'Connected',
  resuming: 'Reconnecting…',
  reconnecting: 'Reconnecting…',
  offline: 'Offline',
  left: 'Left the room',
};

/** The status pill: what the signaling connection is doing right now, including retries. */
export class ConnStatus {
  constructor(el) {
    this.el = el;
    this.text = el.querySelector('.conn-text');
    this.timer = null;
  }

  show(state, detail = {}, extra = '') {
    clearInterval(this.timer);
    this.el.dataset.state = state;
    const render = () => {
      let text = CONN_TEXT[state] ?? state;
      if (state === 'reconnecting' && detail.retryAt) {
        const secs = Math.max(0, Math.ceil((detail.retryAt - Date.now()) / 1000));
        text = secs > 1 ? `Reconnecting in ${secs} s…` : 'Reconnecting…';
      } else if (state === 'failed') {
        text = detail.code === 'room-full' ? 'Room is full' : `Cannot join: ${detail.message ?? detail.code}`;
      }
      this.text.textContent = text;
      if (extra) {
        const span = document.createElement('span');
        span.className = 'conn-extra';
        span.textContent = ` · ${extra}`;
        this.text.append(span);
      }
    };
    render();
    if (state === 'reconnecting') this.timer = setInterval(render, 250);
  }
}

export function toast(text, kind = 'info', ms = 3200) {
  const host = $('#toasts');
  const el = document.createElement('div');
  el.className = `toast ${kind}`;
  el.textContent = text;
  host.append(el);
  setTimeout(() => { el.classList.add('out'); el.setAttribute('aria-hidden', 'true'); }, ms);
  setTimeout(() => el.remove(), ms + 500);
}
