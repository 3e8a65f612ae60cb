// app.js — wires the modules together.
//
// Screens: landing (no ?room=) → pre-join (camera preview, name, devices, join muted or
// without camera) → the call; "room is full" (waits with the camera off and gets in by itself
// when a seat frees up); "you left".
//
// URL parameters:
//   ?room=NAME   that room (spaces and other characters become dashes: "team standup" is
//                team-standup); the link is shareable
//   &name=NAME   display name; with it the pre-join screen is skipped and the page joins
//                at once (links made for someone, automation)
//   &media=0     join without asking for camera/microphone (the Mic/Camera buttons ask later)
//   &relay=1     force iceTransportPolicy "relay" (media only through the TURN relay);
//                relay=udp / relay=tcp / relay=tls also keep only that transport to the relay
//                (tls: the turns: URLs a server with a certificate hands out)
//
// Keyboard: M microphone, V camera, Escape closes chat/settings (not while typing).
//
// Test hook (for automation; read-only unless noted):
//   window.icebreaker = {
//     state,            signaling state: connecting|joining|joined|reconnecting|resuming|offline|left|failed
//     id, room, name,   our peer id (kept across resumes), room, display name
//     media,            local media status: pending|ok|audio-only|video-only|denied|no-devices|unavailable|off
//     counters,         {joins, resumes, resumeFailures, drops, peerLeft} since the page loaded
//     peers(),          [{id, name, serial, connectionState, candidateType, protocol, rttMs,
//                         framesDecoded, audioPacketsReceived, collisions,
//                         mediaState, level, speaking}] (stats refresh once a second;
//                         serial identifies the RTCPeerConnection: it changes if one is recreated;
//                         mediaState: what it announced on `media`, null if nothing)
//     localTracks(),    [{kind, label, deviceId, enabled, readyState}] of what we send
//     chatLog,          [{from, text, ts, self}] every chat message sent or received
//     pointers,         {name: {x, y}} latest pointer position of each remote participant
//     board(),          {strokes: [{from, color, points, first, last}], inked}: the drawing
//     banners,          every text the connection banner showed, in order
//     sendChat(text),   send a chat message to everyone
//     showBoard(),      open the shared board (as its button does; no-op when open)
//     dropSocket(),     abandon the signaling WebSocket as a network cut would (it then resumes)
//     endTrack(kind),   fire `ended` on our audio or video track, as unplugging the device does
//   }

import { Signaling } from './signaling.js';
import { Media } from './media.js';
import { PeerManager } from './peers.js';
import { Chat } from './chat.js';
import { Pointers } from './pointers.js';
import { Board } from './board.js';
import { startStats } from './stats.js';
import { $, renderIcons, initials, TileGrid, createTile, setTileStream, updatePeerTile, describeTile, ConnStatus, toast } from './ui.js';

const ROOM_RE = /^[A-Za-z0-9_-]{1,64}$/;
const MEDIA_WAIT_MS = 8000; // join without media if the permission prompt is still open by then
const SPEAKING_LEVEL = 0.01; // audio level (0..1, linear; 0.01 ≈ -40 dBov) above which someone counts as speaking
const SPEAKING_HOLD_MS = 1000; // …for this long after the last loud moment (speech has pauses)
const BOARD_CLOSED_QUIET_MS = 30000; // after closing the board, others' activity reopens it only after this
const FULL_RETRY_S = [2, 3, 5, 8, 10]; // room full: seconds between tries (then every 10 s)
const params = new URLSearchParams(location.search);

const ADJECTIVES = ['amber', 'brisk', 'calm', 'clever', 'cosmic', 'eager', 'gentle', 'golden', 'happy', 'lucky', 'mellow', 'nimble', 'quiet', 'rapid', 'sunny', 'swift', 'tidy', 'vivid', 'witty', 'zesty'];
const ANIMALS = ['badger', 'beaver', 'falcon', 'fox', 'heron', 'koala', 'lynx', 'marten', 'narwhal', 'otter', 'owl', 'panda', 'puffin', 'quokka', 'raven', 'seal', 'tapir', 'walrus', 'wombat', 'yak'];
const pick = (a) => a[Math.floor(Math.random() * a.length)];
const generateRoom = () => `${pick(ADJECTIVES)}-${pick(ANIMALS)}-${Math.floor(100 + Math.random() * 900)}`;
const generateName = () => {
  const a = pick(ADJECTIVES), b = pick(ANIMALS);
  return `${a[0].toUpperCase()}${a.slice(1)} ${b[0].toUpperCase()}${b.slice(1)}`;
};

/** "Team standup!" → "Team-standup": what the server accepts, from what a person typed. */
export function normalizeRoom(text) {
  return String(text ?? '').normalize('NFKD').replace(/[\u0300-\u036f]/g, '')
    .trim().replace(/[^A-Za-z0-9_-]+/g, '-').replace(/-{2,}/g, '-').replace(/^-+|-+$/g, '').slice(0, 64).replace(/-+$/, '');
}

function savedName() {
  try { return localStorage.getItem('icebreaker.name') || ''; } catch { return ''; }
}
function saveName(name) {
  try { localStorage.setItem('icebreaker.name', name); } catch { /* private mode */ }
}
function savedSetting(key, fallback) {
  try { return localStorage.getItem(`icebreaker.${key}`) ?? fallback; } catch { return fallback; }
}
function saveSetting(key, value) {
  try { localStorage.setItem(`icebreaker.${key}`, value); } catch { /* private mode */ }
}

function roomUrl(room, extra = {}) {
  const u = new URL(location.pathname, location.origin);
  u.searchParams.set('room', room);
  for (const [k, v] of Object.entries(extra)) if (v) u.searchParams.set(k, v);
  return u.toString();
}

/** How to give this site the camera back, for the browser in use. */
function unblockHelp() {
  const ua = navigator.userAgent;
  if (/iPhone|iPad|iPod/.test(ua)) return 'On iPhone or iPad: open Settings › Safari › Camera and Microphone, choose Allow (or “Ask”), then reload this page.';
  if (/Android/.test(ua) && /Firefox/.test(ua)) return 'In Firefox for Android: tap the lock beside the address, allow Camera and Microphone, then reload this page.';
  if (/Android/.test(ua)) return 'In Chrome for Android: tap the icon left of the address, then Permissions, allow Camera and Microphone, then reload this page.';
  if (/Firefox\//.test(ua)) return 'In Firefox: click the crossed-out camera icon left of the address, remove “Blocked temporarily” or “Blocked”, then reload this page.';
  if (/Edg\//.test(ua)) return 'In Edge: click the lock left of the address, set Camera and Microphone to Allow, then reload this page.';
  if (/Chrome\/|Chromium\//.test(ua)) return 'In Chrome: click the camera icon at the right of the address bar (or the icon left of the address), choose “Always allow”, then reload this page.';
  if (/Safari\//.test(ua)) return 'In Safari: choose Safari › Settings for this website…, set Camera and Microphone to Allow, then reload this page.';
  return 'Open your browser’s site settings for this page (the icon left of the address), allow the camera and microphone, then reload.';
}

// Shared by the pre-join screen and the call: the local devices.
const mediaListeners = new Set();
const media = new Media({ onChange: (what) => { for (const f of mediaListeners) f(what); }, onNotice: (t, k) => toast(t, k, 4500) });

/** Keep <select data-kind> elements under `root` in step with the devices. */
function bindDeviceSelects(root) {
  const selects = [...root.querySelectorAll('select[data-kind]')];
  const NAMES = { videoinput: 'Camera', audioinput: 'Microphone', audiooutput: 'Speaker' };
  for (const sel of selects) {
    sel.addEventListener('change', async () => {
      sel.dataset.busy = '1';
      sel.disabled = true;
      await media.useDevice(sel.dataset.kind, sel.value);
      delete sel.dataset.busy;
      render();
    });
  }
  const canPickSpeaker = 'setSinkId' in HTMLMediaElement.prototype;
  const render = () => {
    for (const sel of selects) {
      const kind = sel.dataset.kind;
      const list = media.devices.filter((d) => d.kind === kind && d.deviceId);
      const opts = list.map((d, i) => {
        const o = document.createElement('option');
        o.value = d.deviceId;
        o.textContent = d.label || `${NAMES[kind]} ${i + 1}`;
        return o;
      });
      if (!opts.length) {
        const o = document.createElement('option');
        o.value = '';
        o.textContent = media.status === 'denied' ? 'Blocked by the browser' : media.status === 'pending' ? 'Asking…' : 'None found';
        opts.push(o);
      }
      const current = media.currentDevice(kind);
      const same = opts.length === sel.options.length && opts.every((o, i) => o.value === sel.options[i].value && o.textContent === sel.options[i].textContent);
      if (!same) sel.replaceChildren(...opts);
      if (list.some((d) => d.deviceId === current)) sel.value = current;
      if (!sel.dataset.busy) sel.disabled = !list.length;
    }
    const hasOutputs = media.devices.some((d) => d.kind === 'audiooutput' && d.deviceId);
    for (const el of root.querySelectorAll('.speaker-only')) el.hidden = !canPickSpeaker || !hasOutputs;
  };
  mediaListeners.add((what) => { if (what !== 'toggles') render(); });
  render();
  return render;
}

function setToggle(b, on, iconName, label, disabled, text) {
  b.setAttribute('aria-pressed', String(on));
  const visible = b.querySelector('.ctl-label');
  if (visible && text) visible.textContent = text; // part of the accessible name, as WCAG 2.5.3 wants
  b.setAttribute('aria-label', label);
  b.title = label + (b.getAttribute('aria-keyshortcuts') ? ` (${b.getAttribute('aria-keyshortcuts')})` : '');
  b.disabled = !!disabled;
  b.querySelector('[data-icon]').dataset.icon = iconName;
  renderIcons(b);
}

function renderMediaToggles(micBtn, camBtn) {
  setToggle(micBtn, media.micOn, media.micOn ? 'mic' : 'mic-off', media.micOn ? 'Mute microphone' : 'Unmute microphone', false, media.micOn ? 'Mute' : 'Unmute');
  setToggle(camBtn, media.camOn, media.camOn ? 'cam' : 'cam-off', media.camOn ? 'Turn camera off' : 'Turn camera on');
}

// Without a track (refused, absent, or ?media=0) the buttons ask for the device again.
async function toggleDevice(kind) {
  if (kind === 'audio' ? media.audio : media.camera) {
    if (kind === 'audio') media.setMic(!media.micOn); else media.setCamera(!media.camOn);
    return;
  }
  if (kind === 'audio') media.want.mic = true; else media.want.cam = true;
  if (!(await media.acquire({ audio: kind === 'audio', video: kind === 'video' }))) {
    const what = kind === 'audio' ? 'microphone' : 'camera';
    toast(media.status === 'denied' || /NotAllowed/.test(media.error ?? '')
      ? `The browser blocks the ${what} for this site. ${unblockHelp()}`
      : `No ${what} available`, 'warn', 7000);
  }
}

renderIcons();
route();

function route() {
  const raw = params.get('room');
  if (raw == null || raw === '') { showLanding(''); return; }
  const room = normalizeRoom(raw);
  if (!ROOM_RE.test(room)) { showLanding(`“${raw}” cannot be a room name: use letters, digits, - or _.`); return; }
  if (room !== raw) {
    const u = new URL(location.href);
    u.searchParams.set('room', room);
    history.replaceState(null, '', u);
  }
  const name = params.get('name');
  if (name != null && name.trim()) startCall(room, name.trim().slice(0, 40));
  else showPrejoin(room);
}

// ---- Landing

function showLanding(error) {
  $('#landing').hidden = false;
  const roomInput = $('#room-input'), hint = $('#room-hint');
  roomInput.value = generateRoom();
  const defaultHint = hint.textContent;
  const showHint = () => {
    const n = normalizeRoom(roomInput.value);
    hint.textContent = n && n !== roomInput.value.trim() ? `The room will be called “${n}”.` : defaultHint;
  };
  roomInput.addEventListener('input', showHint);
  if (error) { $('#landing-error').textContent = error; $('#landing-error').hidden = false; }
  $('#room-generate').onclick = () => { roomInput.value = generateRoom(); showHint(); roomInput.focus(); };
  $('#join-form').onsubmit = (e) => {
    e.preventDefault();
    const r = normalizeRoom(roomInput.value);
    if (!ROOM_RE.test(r)) {
      $('#landing-error').textContent = 'Type a room name: letters, digits, - or _.';
      $('#landing-error').hidden = false;
      roomInput.focus();
      return;
    }
    location.assign(roomUrl(r, { relay: $('#relay-input').checked ? '1' : '' }));
  };
}

// ---- Pre-join

function showPrejoin(room) {
  document.title = `Join ${room} · Icebreaker`;
  const screen = $('#prejoin');
  screen.hidden = false;
  $('#prejoin-room').textContent = room;
  const nameInput = $('#pj-name');
  nameInput.value = savedName() || generateName();
  const tile = $('#prejoin-tile');
  const video = tile.querySelector('video');
  const note = $('#pj-preview-note');
  const help = $('#pj-help');
  const renderPreview = () => {
    tile.querySelector('.avatar span').textContent = initials(nameInput.value || '?');
    const cam = media.camera;
    const stream = cam ? new MediaStream([cam]) : null;
    if ((video.srcObject?.getVideoTracks()[0] ?? null) !== cam) { video.srcObject = stream; if (stream) video.play().catch(() => {}); }
    tile.classList.toggle('has-video', !!cam && media.camOn);
    renderMediaToggles($('#pj-mic'), $('#pj-cam'));
    const msg = {
      pending: 'Asking for your camera and microphone…',
      denied: 'Camera and microphone are blocked. You can still join to watch, listen and chat.',
      'no-devices': 'No camera or microphone found. You can still join to watch, listen and chat.',
      unavailable: 'Camera and microphone need HTTPS (or localhost). You can still join to watch, listen and chat.',
      off: 'Camera and microphone are off.',
    }[media.status] ?? (media.camOn ? '' : media.camera ? 'Your camera is off' : 'No camera');
    note.textContent = msg;
    note.hidden = !msg;
    help.hidden = media.status !== 'denied';
    if (media.status === 'denied' && !help.firstChild) {
      const p = document.createElement('p');
      p.textContent = unblockHelp();
      const retry = document.createElement('button');
      retry.type = 'button';
      retry.className = 'btn ghost';
      retry.textContent = 'Try again';
      retry.onclick = async () => { help.replaceChildren(); await media.acquire(); renderPreview(); };
      help.append(p, retry);
    }
  };
  mediaListeners.add(renderPreview);
  nameInput.addEventListener('input', renderPreview);
  bindDeviceSelects($('#pj-devices'));
  $('#pj-mic').onclick = () => toggleDevice('audio');
  $('#pj-cam').onclick = () => toggleDevice('video');
  renderPreview();
  if (params.get('media') === '0') media.skip(); else media.acquire();
  $('#prejoin-form').onsubmit = (e) => {
    e.preventDefault();
    const name = nameInput.value.trim().slice(0, 40) || generateName();
    saveName(name);
    mediaListeners.delete(renderPreview);
    video.srcObject = null;
    screen.hidden = true;
    startCall(room, name, { mediaReady: true });
  };
  nameInput.focus();
  nameInput.select();
}

// ---- The call

async function startCall(room, name, { mediaReady = false } = {}) {
  if (!savedName()) saveName(name);
  const relayParam = params.get('relay');
  const relay = !relayParam || relayParam === '0' ? false : ['udp', 'tcp', 'tls'].includes(relayParam) ? relayParam : 'any';

  document.title = `${room} · Icebreaker`;
  const call = $('#call');
  call.hidden = false;
  $('#room-name').textContent = room;
  $('#call-title').textContent = `Call in ${room}`;
  const grid = new TileGrid($('#tiles'));
  const conn = new ConnStatus($('#conn'));
  const tiles = new Map(); // peer id -> tile element
  const selfTile = createTile({ id: 'self', name, self: true });
  $('#tiles').prepend(selfTile);

  // Media -----------------------------------------------------------------
  const selfStream = new MediaStream();
  let sentState = null; // the last state we announced on `media`
  let selfSpeaking = false;
  function renderSelf() {
    const { audio, video } = media.tracks;
    for (const t of selfStream.getTracks()) if (t !== audio && t !== video) selfStream.removeTrack(t);
    if (video && !selfStream.getTracks().includes(video)) selfStream.addTrack(video);
    selfTile.classList.toggle('screen', media.sharing);
    setTileStream(selfTile, selfStream, { videoOn: media.sharing || media.camOn });
    describeTile(selfTile, { ...media.state, speaking: selfSpeaking });
    renderMediaToggles($('#btn-mic'), $('#btn-cam'));
    setToggle($('#btn-screen'), media.sharing, 'screen', media.sharing ? 'Stop sharing your screen' : 'Share your screen', false, media.sharing ? 'Stop sharing' : 'Share');
    $('#btn-screen').hidden = !media.canShare;
    renderMediaBanner();
  }
  function renderMediaBanner() {
    const banner = $('#media-banner');
    if (banner.dataset.dismissed === media.status) return;
    const msg = {
      denied: 'Camera and microphone are blocked. You can still watch, listen and chat.',
      'no-devices': 'No camera or microphone found. You can still watch, listen and chat.',
      unavailable: 'Camera and microphone need HTTPS (or localhost). You can still watch, listen and chat.',
    }[media.status];
    banner.hidden = !msg;
    if (!msg || banner.dataset.shown === media.status) return;
    banner.dataset.shown = media.status;
    const text = document.createElement('span');
    text.textContent = msg;
    const parts = [text];
    if (media.status === 'denied') {
      const how = document.createElement('button');
      how.type = 'button';
      how.className = 'linkish';
      how.textContent = 'How to allow them';
      how.setAttribute('aria-expanded', 'false');
      const help = document.createElement('span');
      help.className = 'banner-help';
      help.hidden = true;
      help.textContent = unblockHelp();
      how.onclick = () => { help.hidden = !help.hidden; how.setAttribute('aria-expanded', String(!help.hidden)); };
      parts.push(' ', how, help);
    }
    const close = document.createElement('button');
    close.type = 'button';
    close.className = 'banner-close';
    close.setAttribute('aria-label', 'Dismiss');
    close.innerHTML = '<span data-icon="close"></span>';
    close.onclick = () => { banner.hidden = true; banner.dataset.dismissed = media.status; grid.layout(); };
    parts.push(close);
    banner.replaceChildren(...parts);
    renderIcons(banner);
  }
  /** Tell everyone what we send, when it changed. */
  function announce() {
    const s = media.state;
    if (sentState && sentState.audio === s.audio && sentState.video === s.video && sentState.screen === s.screen) return;
    sentState = s;
    peers?.broadcast('media', { from: name, ...s, ts: Date.now() });
  }
  mediaListeners.add((what) => {
    if (what === 'devices') { for (const p of peers?.peers.values() ?? []) renderPeer(p); return; }
    renderSelf();
    peers?.updateTracks();
    announce();
  });
  $('#btn-mic').onclick = () => toggleDevice('audio');
  $('#btn-cam').onclick = () => toggleDevice('video');
  $('#btn-screen').onclick = async () => {
    try { if (media.sharing) media.stopShare(); else await media.startShare(); }
    catch (e) { if (e.name !== 'NotAllowedError') toast(`Screen share failed: ${e.message}`, 'error'); }
  };

  // The connection banner: plain words for what signaling is doing.
  const banners = [];
  let rejoinNote = null; // {text, until}: shown while rejoining after a refused resume
  function connBanner(text, kind = 'info') {
    const el = $('#conn-banner');
    if (!text) { if (!el.hidden) { el.hidden = true; grid.layout(); } return; }
    if (el.textContent !== text) { el.textContent = text; banners.push(text); }
    el.dataset.kind = kind;
    if (el.hidden) { el.hidden = false; grid.layout(); }
  }
  function renderConnBanner() {
    const st = signaling.state;
    const inCall = [...peers.peers.values()].some((p) => p.pc.connectionState === 'connected');
    const down = ['reconnecting', 'resuming', 'offline', 'connecting', 'joining'].includes(st);
    if (rejoinNote) {
      const settled = st === 'joined' && [...peers.peers.values()].every((p) => p.pc.connectionState === 'connected');
      if (settled && performance.now() > rejoinNote.until) { rejoinNote = null; connBanner(''); toast('You are back in the call', 'ok'); }
      else {
        connBanner(rejoinNote.text, 'warn');
        clearTimeout(rejoinNote.timer);
        rejoinNote.timer = setTimeout(renderConnBanner, 500); // look again (the call may be back by then)
      }
    } else if (down && signaling.counters.joins > 0) {
      if (st === 'offline') connBanner('You are offline — waiting for the network', 'warn');
      else connBanner(inCall ? 'Reconnecting to the server — your call continues' : 'Reconnecting to the server…', 'warn');
    } else if (down && signaling.counters.drops > 1) {
      connBanner('Cannot reach the server — trying again…', 'warn'); // never got in yet
    } else connBanner('');
  }

  // Signaling, peers, chat, pointers, board --------------------------------
  const wsUrl = `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}/ws`;
  let peers = null;
  const signaling = new Signaling({
    url: wsUrl, room, meta: { name },
    onMessage: (m) => handle(m),
    onState: (state, detail) => {
      const others = peers ? peers.peers.size : 0;
      conn.show(state, detail, state === 'joined' ? `${others + 1} in room` : '');
      if (state === 'joined' && detail.resumed) { toast('Reconnected to the server — call kept', 'ok'); peers.healAfterResume(); }
      if (state === 'failed') {
        if (detail.code === 'room-full') showFull();
        else connBanner(`Cannot join: ${detail.message ?? detail.code}`, 'error');
      }
      if (state === 'joined' && !$('#full').hidden) leaveFull();
      if (peers) renderConnBanner();
    },
    onRejoin: ({ downMs, sawOffline }) => {
      // The server no longer knew us: it restarted (a short outage), or we were away too long.
      const away = sawOffline || downMs > 25000;
      rejoinNote = { text: away ? 'You were offline too long — rejoining' : 'Server restarted — rejoining', until: performance.now() + 2500 };
      peers.closeAll();
      renderConnBanner();
    },
  });
  peers = new PeerManager({
    signaling, media, relay,
    onPeer: (peer) => { renderPeer(peer); if (rejoinNote || $('#conn-banner').textContent) renderConnBanner(); },
    onGone: (peer) => {
      pointers.remove(peer.id);
      if (grid.pinned === tiles.get(peer.id)) grid.pinned = null;
      tiles.get(peer.id)?.remove();
      tiles.delete(peer.id);
      relayout();
      refreshCount();
    },
    onOpen: (peer, label) => {
      if (label === 'media') peers.sendTo(peer, 'media', { from: name, ...media.state, ts: Date.now() });
      if (label === 'board') board.hello((msg) => peers.sendTo(peer, 'board', msg));
    },
    onData: (peer, label, msg) => {
      if (label === 'chat') chat.receive(peer, msg);
      else if (label === 'pointer') { pointers.receive(peer, msg); boardActivity(); }
      else if (label === 'board') board.receive(peer, msg);
      else if (label === 'media') {
        if (typeof msg.audio !== 'boolean' || typeof msg.video !== 'boolean') return;
        const ts = Number.isFinite(msg.ts) ? msg.ts : 0;
        if (peer.mediaState && ts && ts < peer.mediaState.ts) return;
        peer.mediaState = { audio: msg.audio, video: msg.video, screen: msg.screen === true, ts };
        renderPeer(peer);
        relayout();
      }
    },
  });
  const chat = new Chat({
    list: $('#chat-list'), form: $('#chat-form'), name,
    broadcast: (msg) => peers.broadcast('chat', msg),
    onUnread: () => {
      if (call.classList.contains('show-chat')) return;
      const u = $('#unread');
      u.hidden = false;
      u.textContent = String(Number(u.textContent || 0) + 1);
      $('#btn-chat').setAttribute('aria-label', `Open chat (${u.textContent} unread)`);
    },
  });
  const pointers = new Pointers({ surface: $('#board-surface'), name, broadcast: (msg) => peers.broadcast('pointer', msg) });
  const board = new Board({
    surface: $('#board-surface'), canvas: $('#board .board-canvas'), name,
    broadcast: (msg) => peers.broadcast('board', msg),
    onActivity: (who, what) => {
      if (what === 'clear') toast(`${who} cleared the board`);
      boardActivity();
    },
  });
  $('#board-clear').onclick = () => board.clear();

  function refreshCount() {
    if (signaling.state === 'joined') conn.show('joined', {}, `${peers.peers.size + 1} in room`);
  }

  /** What a peer sends, as far as we know: its `media` state, else what its tracks say. */
  function remoteView(peer) {
    const s = peer.mediaState;
    const live = (t) => !!t && t.readyState === 'live' && !t.muted;
    const video = live(peer.stream.getVideoTracks()[0]);
    if (!s) return { audio: live(peer.stream.getAudioTracks()[0]), video, screen: false };
    return { audio: s.audio, video: (s.video || s.screen) && video, screen: s.screen };
  }

  function renderPeer(peer) {
    if (peer.closed) return;
    let tile = tiles.get(peer.id);
    if (!tile) {
      tile = createTile({ id: peer.id, name: peer.name });
      tiles.set(peer.id, tile);
      $('#board').before(tile);
      bindTileActions(tile);
      relayout();
    }
    const view = remoteView(peer);
    setTileStream(tile, peer.stream, { videoOn: view.video, sinkId: media.speakerId });
    const state = peer.pc.connectionState;
    describeTile(tile, { ...view, speaking: peer.speaking, connection: state === 'connected' ? '' : (state === 'failed' ? 'connection failed' : 'connecting') });
    updatePeerTile(tile, peer);
  }

  // Speaking: each receiver computes it from the remote audio level (RTP header extension,
  // RTCRtpReceiver.getSynchronizationSources), our own from the microphone.
  let activeSpeaker = null; // tile
  setInterval(() => {
    const now = performance.now();
    for (const peer of peers.peers.values()) {
      let level = 0;
      for (const r of peer.pc.getReceivers()) {
        if (r.track?.kind !== 'audio') continue;
        for (const s of r.getSynchronizationSources?.() ?? []) {
          const age = Math.min(Math.abs(Date.now() - s.timestamp), Math.abs(performance.timeOrigin + now - s.timestamp), Math.abs(now - s.timestamp));
          if (age < 1000 && s.audioLevel != null) level = Math.max(level, s.audioLevel);
        }
      }
      peer.level = level;
      if (level > SPEAKING_LEVEL) peer.lastLoud = now;
      const speaking = now - peer.lastLoud < SPEAKING_HOLD_MS && remoteView(peer).audio;
      if (speaking !== !!peer.speaking) {
        peer.speaking = speaking;
        renderPeer(peer);
        if (speaking) {
          const tile = tiles.get(peer.id);
          const current = [...peers.peers.values()].find((p) => tiles.get(p.id) === activeSpeaker);
          if (tile && (!current || !current.speaking)) { activeSpeaker = tile; relayout(); }
        }
      }
    }
    const loud = media.localLevel() > SPEAKING_LEVEL;
    if (loud) selfTile.lastLoud = now;
    const speaking = media.micOn && now - (selfTile.lastLoud ?? -Infinity) < SPEAKING_HOLD_MS;
    if (speaking !== selfSpeaking) { selfSpeaking = speaking; describeTile(selfTile, { ...media.state, speaking }); }
  }, 50);

  // Layout: grid or speaker view, pin, fullscreen, the board ----------------
  let layoutPref = savedSetting('layout', 'grid');
  function relayout() {
    const visible = (t) => t && t.isConnected && !t.hidden;
    const presenting = [...tiles.values()].find((t) => t.classList.contains('presenting'));
    grid.mode = visible(grid.pinned) ? 'speaker' : layoutPref;
    grid.main = [grid.pinned, presenting, !$('#board').hidden && $('#board'), activeSpeaker].find(visible) ?? null;
    grid.layout();
    const speaker = grid.mode === 'speaker';
    const lb = $('#btn-layout');
    lb.setAttribute('aria-pressed', String(layoutPref === 'speaker'));
    const label = layoutPref === 'speaker' ? 'Grid view' : 'Speaker view';
    lb.setAttribute('aria-label', `Switch to ${label.toLowerCase()}`);
    lb.querySelector('.layout-text').textContent = label;
    lb.querySelector('[data-icon]').dataset.icon = layoutPref === 'speaker' ? 'grid' : 'speaker-view';
    renderIcons(lb);
    for (const r of document.querySelectorAll('input[name=layout]')) r.checked = r.value === layoutPref;
    for (const t of tiles.values()) {
      const pin = t.querySelector('.tile-pin');
      const pinned = grid.pinned === t;
      pin.setAttribute('aria-pressed', String(pinned));
      pin.setAttribute('aria-label', `${pinned ? 'Unpin' : 'Pin'} ${t.dataset.name}`);
    }
    call.dataset.layout = speaker ? 'speaker' : 'grid';
  }
  function setLayout(mode) { layoutPref = mode; saveSetting('layout', mode); grid.pinned = null; relayout(); }
  $('#btn-layout').onclick = () => setLayout(layoutPref === 'speaker' ? 'grid' : 'speaker');
  for (const r of document.querySelectorAll('input[name=layout]')) r.onchange = () => setLayout(r.value);
  function bindTileActions(tile) {
    tile.querySelector('.tile-pin').onclick = () => { grid.pinned = grid.pinned === tile ? null : tile; relayout(); };
    tile.querySelector('.tile-full').onclick = () => {
      if (document.fullscreenElement === tile) document.exitFullscreen();
      else tile.requestFullscreen?.().catch((e) => toast(`Full screen is not available: ${e.message}`, 'warn'));
    };
    tile.addEventListener('dblclick', () => tile.querySelector('.tile-full').click());
  }
  document.addEventListener('fullscreenchange', () => {
    for (const t of tiles.values()) {
      const full = document.fullscreenElement === t;
      t.querySelector('.tile-full').setAttribute('aria-label', `${full ? 'Exit full screen' : `Show ${t.dataset.name} full screen`}`);
    }
  });

  let boardClosedAt = -Infinity;
  function showBoard(open, { byUser = false } = {}) {
    const el = $('#board');
    if (!open && byUser) boardClosedAt = performance.now();
    if (el.hidden === !open) return;
    el.hidden = !open;
    const b = $('#btn-board');
    b.setAttribute('aria-pressed', String(open));
    b.setAttribute('aria-label', open ? 'Close the shared board' : 'Open the shared board');
    relayout();
    requestAnimationFrame(() => board.redraw());
  }
  /** Someone else used the board: show it (unless we closed it a moment ago). */
  function boardActivity() {
    if ($('#board').hidden && performance.now() - boardClosedAt > BOARD_CLOSED_QUIET_MS) {
      showBoard(true);
    }
  }
  $('#btn-board').onclick = () => showBoard($('#board').hidden, { byUser: true });

  async function handle(m) {
    switch (m.type) {
      case 'joined':
        if (needMedia) {
          // Back from the full-room screen: camera and microphone again, before offering.
          const kinds = needMedia;
          needMedia = null;
          await Promise.race([media.acquire(kinds), new Promise((r) => setTimeout(r, 4000))]);
        }
        chat.notice(signaling.counters.joins > 1 ? `Rejoined ${room}` : `You joined ${room}`);
        for (const p of m.peers) peers.add(p, true); // we are the newcomer: we offer
        refreshCount();
        break;
      case 'peer-joined': {
        const peer = peers.add(m, false); // they offer
        chat.notice(`${peer.name} joined`);
        toast(`${peer.name} joined`);
        refreshCount();
        break;
      }
      case 'peer-left': {
        const peer = peers.peers.get(m.id);
        signaling.counters.peerLeft++;
        if (peer) {
          const lost = m.reason === 'timeout';
          chat.notice(`${peer.name} left${lost ? ' (connection lost)' : ''}`);
          toast(lost ? `${peer.name} lost the connection` : `${peer.name} left`);
          peers.remove(m.id);
        }
        break;
      }
      case 'signal':
        await peers.handleSignal(m.from, m.data);
        break;
      case 'error':
        console.warn(`server error ${m.code}: ${m.message}`);
        if (m.code === 'rate-limited') toast('Slow down: the server is rate-limiting messages', 'warn');
        break;
      default: // resumed (missed messages follow), pong
    }
  }

  startStats(peers, (peer) => { const t = tiles.get(peer.id); if (t) updatePeerTile(t, peer); });

  // The room is full: wait with camera and microphone off, try again with backoff.
  let needMedia = null; // {audio, video}: what to ask for again once in
  let fullTimer = null, fullTries = 0;
  function showFull() {
    if ($('#full').hidden) {
      if (media.audio || media.camera) needMedia = { audio: !!media.audio, video: !!media.camera };
      media.stop();
      call.hidden = true;
      $('#full').hidden = false;
      $('#full-room').textContent = room;
      document.title = `${room} is full · Icebreaker`;
      $('#full-retry').onclick = () => { fullTries = 0; retryFull(); };
      $('#full-retry').focus();
    }
    const wait = FULL_RETRY_S[Math.min(fullTries, FULL_RETRY_S.length - 1)];
    fullTries++;
    const at = Date.now() + wait * 1000;
    clearInterval(fullTimer);
    const tick = () => {
      const s = Math.max(0, Math.ceil((at - Date.now()) / 1000));
      $('#full-status').textContent = s > 0 ? `Still full. Trying again in ${s} s…` : 'Trying again…';
      if (s <= 0) retryFull();
    };
    tick();
    fullTimer = setInterval(tick, 500);
  }
  function retryFull() {
    clearInterval(fullTimer);
    $('#full-status').textContent = 'Trying again…';
    signaling.retry();
  }
  function leaveFull() {
    clearInterval(fullTimer);
    fullTries = 0;
    $('#full').hidden = true;
    call.hidden = false;
    document.title = `${room} · Icebreaker`;
    toast(`A seat freed up — you are in ${room}`, 'ok');
    requestAnimationFrame(() => relayout());
  }

  // Controls ----------------------------------------------------------------
  function openSide(which) { // 'chat' | 'settings' | null
    const was = call.classList.contains('show-chat') ? 'chat' : call.classList.contains('show-settings') ? 'settings' : null;
    call.classList.toggle('show-chat', which === 'chat');
    call.classList.toggle('show-settings', which === 'settings');
    $('#btn-chat').setAttribute('aria-pressed', String(which === 'chat'));
    $('#btn-settings').setAttribute('aria-pressed', String(which === 'settings'));
    $('#btn-settings').setAttribute('aria-label', which === 'settings' ? 'Close settings' : 'Open settings');
    if (which === 'chat') {
      $('#unread').hidden = true;
      $('#unread').textContent = '';
      $('#chat-input').focus();
    }
    $('#btn-chat').setAttribute('aria-label', which === 'chat' ? 'Close chat' : 'Open chat');
    if (which === 'settings') $('#settings-close').focus();
    if (!which && was) $(`#btn-${was}`).focus();
    requestAnimationFrame(() => relayout());
  }
  $('#btn-chat').onclick = () => openSide(call.classList.contains('show-chat') ? null : 'chat');
  $('#chat-close').onclick = () => openSide(null);
  $('#btn-settings').onclick = () => openSide(call.classList.contains('show-settings') ? null : 'settings');
  $('#settings-close').onclick = () => openSide(null);
  bindDeviceSelects($('#set-devices'));
  media.refreshDevices();
  function setStats(on) {
    call.classList.toggle('show-stats', on);
    $('#btn-stats').setAttribute('aria-pressed', String(on));
    $('#btn-stats').setAttribute('aria-label', on ? 'Hide stats' : 'Show stats');
    $('#set-stats').checked = on;
    for (const p of peers.peers.values()) renderPeer(p);
  }
  $('#btn-stats').onclick = () => setStats(!call.classList.contains('show-stats'));
  $('#set-stats').onchange = (e) => setStats(e.target.checked);
  addEventListener('keydown', (e) => {
    if (call.hidden || e.ctrlKey || e.metaKey || e.altKey) return;
    const typing = e.target.closest?.('input, textarea, select, [contenteditable]');
    if (e.key === 'Escape') {
      if (document.fullscreenElement) return; // the browser leaves full screen
      if (call.classList.contains('show-chat') || call.classList.contains('show-settings')) { e.preventDefault(); openSide(null); }
      return;
    }
    if (typing || e.repeat) return;
    if (e.key === 'm' || e.key === 'M') { e.preventDefault(); $('#btn-mic').click(); }
    else if (e.key === 'v' || e.key === 'V') { e.preventDefault(); $('#btn-cam').click(); }
  });
  $('#copy-link').onclick = async () => {
    const url = roomUrl(room);
    try { await navigator.clipboard.writeText(url); toast('Link copied'); }
    catch { prompt('Share this link:', url); }
  };
  $('#audio-unlock').onclick = unlockAudio;
  function unlockAudio() {
    document.body.classList.remove('needs-audio-unlock');
    for (const a of document.querySelectorAll('.tile audio')) a.play().catch(() => {});
  }
  addEventListener('pointerdown', unlockAudio, { once: true });
  $('#btn-leave').onclick = () => {
    clearInterval(fullTimer);
    signaling.leave();
    peers.closeAll();
    media.stop();
    call.hidden = true;
    $('#left').hidden = false;
    $('#left-text').textContent = `You were in ${room} as ${name}.`;
    $('#rejoin').href = location.href;
  };

  // Test hook (see the header of this file).
  window.icebreaker = {
    get state() { return signaling.state; },
    get id() { return signaling.id; },
    room, name,
    get media() { return media.status; },
    counters: signaling.counters,
    peers: () => [...peers.peers.values()].map((p) => ({
      id: p.id, name: p.name, serial: p.serial, connectionState: p.pc.connectionState,
      candidateType: p.stats.candidateType ?? null, protocol: p.stats.protocol ?? null, rttMs: p.stats.rttMs ?? null,
      framesDecoded: p.stats.framesDecoded ?? 0, audioPacketsReceived: p.stats.audioPacketsReceived ?? 0,
      collisions: p.collisions, mediaState: p.mediaState, level: p.level, speaking: !!p.speaking,
    })),
    localTracks: () => [media.audio, media.camera, media.screen].filter(Boolean).map((t) => ({
      kind: t.kind, label: t.label, deviceId: t.getSettings().deviceId ?? null, enabled: t.enabled, readyState: t.readyState,
    })),
    chatLog: chat.log,
    get pointers() { return pointers.positions; },
    board: () => board.summary(),
    banners,
    sendChat: (text) => chat.send(text),
    showBoard: () => showBoard(true, { byUser: true }),
    dropSocket: () => signaling.drop(),
    endTrack: (kind) => { const t = kind === 'audio' ? media.audio : media.camera; t?.dispatchEvent(new Event('ended')); return !!t; },
  };

  renderSelf();
  relayout();
  // Go: ask for camera/microphone (joining anyway if the prompt stays open), then join.
  conn.show('connecting');
  if (!mediaReady) {
    const acquired = params.get('media') === '0' ? media.skip() : media.acquire();
    await Promise.race([acquired, new Promise((r) => setTimeout(r, MEDIA_WAIT_MS))]);
  }
  signaling.start();
}
