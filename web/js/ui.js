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

/** The grid of tiles: sizes them as large as they fit (16:9), centred, like a call app. */
export class TileGrid {
  constructor(root) {
    this.root = root;
    new ResizeObserver(() => this.layout()).observe(root);
  }

  layout() {
    const tiles = [...this.root.children].filter((t) => !t.hidden);
    const n = tiles.length;
    if (!n) return;
    const style = getComputedStyle(this.root);
    const gap = parseFloat(style.columnGap) || 12;
    const W = this.root.clientWidth - parseFloat(style.paddingLeft) - parseFloat(style.paddingRight);
    const H = this.root.clientHeight - parseFloat(style.paddingTop) - parseFloat(style.paddingBottom);
    const aspect = 16 / 9;
    let best = 0;
    for (let cols = 1; cols <= n; cols++) {
      const rows = Math.ceil(n / cols);
      best = Math.max(best, Math.min((W - gap * (cols - 1)) / cols, ((H - gap * (rows - 1)) / rows) * aspect));
    }
    // Everything fits on screen unless tiles would get tiny: then one full-width column
    // that scrolls (phones in portrait).
    if (best < 170 && W < 560) best = W;
    this.root.style.setProperty('--tile-w', `${Math.max(120, Math.floor(best))}px`);
  }
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
    <div class="avatar"><span></span></div>
    <div class="tile-state"><span class="spinner"></span><span class="tile-state-text">Connecting…</span></div>
    <div class="tile-label"><span class="mic-off" hidden>${icon('mic-off')}</span><span class="tile-name"></span></div>
    <div class="tile-badge" hidden></div>
    <dl class="tile-stats"></dl>
    ${self ? '' : '<audio autoplay></audio>'}`;
  t.querySelector('.avatar span').textContent = initials(name);
  t.querySelector('.tile-name').textContent = self ? `${name} (you)` : name;
  const video = t.querySelector('video');
  const showVideo = () => t.classList.toggle('has-video', video.videoWidth > 0 && !t.classList.contains('video-off'));
  video.addEventListener('resize', showVideo);
  video.addEventListener('loadeddata', showVideo);
  video.addEventListener('emptied', showVideo);
  t.refreshVideo = showVideo;
  return t;
}

/** Show a stream in a tile (video muted in the element; remote audio plays in <audio>). */
export function setTileStream(tile, stream, { videoOn = true } = {}) {
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
  tile.refreshVideo();
}

const STATE_TEXT = { new: 'Waiting…', connecting: 'Connecting…', disconnected: 'Reconnecting…', failed: 'Connection failed', closed: 'Closed' };

/** Update a peer tile from its RTCPeerConnection state and last stats. */
export function updatePeerTile(tile, peer) {
  const state = peer.pc.connectionState;
  tile.dataset.state = state;
  tile.querySelector('.tile-state-text').textContent = STATE_TEXT[state] ?? '';
  const s = peer.stats ?? {};
  const badge = tile.querySelector('.tile-badge');
  if (s.candidateType) {
    badge.hidden = false;
    badge.dataset.type = s.candidateType;
    badge.textContent = `${s.candidateType} · ${s.protocol ?? '?'}${s.rttMs != null ? ` · ${s.rttMs} ms` : ''}`;
  } else badge.hidden = true;
  const dl = tile.querySelector('.tile-stats');
  const rows = [
    ['Path', s.candidateType ? `${s.candidateType}/${s.protocol} ⇄ ${s.remoteCandidateType ?? '?'}` : '–'],
    ['RTT', s.rttMs != null ? `${s.rttMs} ms` : '–'],
    ['In', formatBps(s.inBps)],
    ['Out', formatBps(s.outBps)],
    ['Video', s.video ?? '–'],
    ['Frames', s.framesDecoded != null ? String(s.framesDecoded) : '–'],
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
  joining: 'Joining room…',
  joined: 'Connected',
  resuming: 'Resuming session…',
  offline: 'Offline — waiting for the network',
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
      if (state === 'reconnecting') {
        const secs = Math.max(0, Math.ceil((detail.retryAt - Date.now()) / 1000));
        text = `Signaling lost — ${detail.willResume ? 'resuming' : 'retrying'} in ${secs}s (attempt ${detail.attempt})`;
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

export function toast(text, kind = 'info') {
  const host = $('#toasts');
  const el = document.createElement('div');
  el.className = `toast ${kind}`;
  el.textContent = text;
  host.append(el);
  setTimeout(() => el.classList.add('out'), 3200);
  setTimeout(() => el.remove(), 3700);
}
