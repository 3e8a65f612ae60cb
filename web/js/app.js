// app.js — wires the modules together.
//
// URL parameters:
//   ?room=NAME   join that room directly (no landing form); the link is shareable
//   &name=NAME   display name (else the one saved in this browser, else a generated one)
//   &media=0     join without asking for camera/microphone (the Mic/Camera buttons ask later)
//   &relay=1     force iceTransportPolicy "relay" (media only through the TURN relay);
//                relay=udp / relay=tcp / relay=tls also keep only that transport to the relay
//                (tls: the turns: URLs a server with a certificate hands out)
//
// Test hook (for automation; read-only unless noted):
//   window.icebreaker = {
//     state,            signaling state: connecting|joining|joined|reconnecting|resuming|offline|left|failed
//     id, room, name,   our peer id (kept across resumes), room, display name
//     media,            local media status: pending|ok|audio-only|video-only|denied|no-devices|unavailable|off
//     counters,         {joins, resumes, resumeFailures, drops, peerLeft} since the page loaded
//     peers(),          [{id, name, serial, connectionState, candidateType, protocol, rttMs,
//                         framesDecoded, audioPacketsReceived, collisions}] (stats refresh once a second;
//                         serial identifies the RTCPeerConnection: it changes if one is recreated)
//     chatLog,          [{from, text, ts, self}] every chat message sent or received
//     pointers,         {name: {x, y}} latest pointer position of each remote participant
//     sendChat(text),   send a chat message to everyone
//     dropSocket(),     abandon the signaling WebSocket as a network cut would (it then resumes)
//   }

import { Signaling } from './signaling.js';
import { Media } from './media.js';
import { PeerManager } from './peers.js';
import { Chat } from './chat.js';
import { Pointers } from './pointers.js';
import { startStats } from './stats.js';
import { $, renderIcons, TileGrid, createTile, setTileStream, updatePeerTile, ConnStatus, toast } from './ui.js';

const ROOM_RE = /^[A-Za-z0-9_-]{1,64}$/;
const MEDIA_WAIT_MS = 8000; // join without media if the permission prompt is still open by then
const params = new URLSearchParams(location.search);

const ADJECTIVES = ['amber', 'brisk', 'calm', 'clever', 'cosmic', 'eager', 'gentle', 'golden', 'happy', 'lucky', 'mellow', 'nimble', 'quiet', 'rapid', 'sunny', 'swift', 'tidy', 'vivid', 'witty', 'zesty'];
const ANIMALS = ['badger', 'beaver', 'falcon', 'fox', 'heron', 'koala', 'lynx', 'marten', 'narwhal', 'otter', 'owl', 'panda', 'puffin', 'quokka', 'raven', 'seal', 'tapir', 'walrus', 'wombat', 'yak'];
const pick = (a) => a[Math.floor(Math.random() * a.length)];
const generateRoom = () => `${pick(ADJECTIVES)}-${pick(ANIMALS)}-${Math.floor(100 + Math.random() * 900)}`;
const generateName = () => {
  const a = pick(ADJECTIVES), b = pick(ANIMALS);
  return `${a[0].toUpperCase()}${a.slice(1)} ${b[0].toUpperCase()}${b.slice(1)}`;
};

function savedName() {
  try { return localStorage.getItem('icebreaker.name') || ''; } catch { return ''; }
}
function saveName(name) {
  try { localStorage.setItem('icebreaker.name', name); } catch { /* private mode */ }
}

function roomUrl(room, extra = {}) {
  const u = new URL(location.pathname, location.origin);
  u.searchParams.set('room', room);
  for (const [k, v] of Object.entries(extra)) if (v) u.searchParams.set(k, v);
  return u.toString();
}

renderIcons();
const room = params.get('room');
if (room && ROOM_RE.test(room)) startCall(room);
else showLanding(room ? `“${room}” is not a valid room name: use 1–64 letters, digits, - or _.` : '');

// ---- Landing

function showLanding(error) {
  $('#landing').hidden = false;
  const roomInput = $('#room-input'), nameInput = $('#name-input');
  roomInput.value = generateRoom();
  nameInput.value = params.get('name') || savedName() || generateName();
  if (error) { $('#landing-error').textContent = error; $('#landing-error').hidden = false; }
  $('#room-generate').onclick = () => { roomInput.value = generateRoom(); roomInput.focus(); };
  $('#join-form').onsubmit = (e) => {
    e.preventDefault();
    const r = roomInput.value.trim();
    if (!ROOM_RE.test(r)) { roomInput.reportValidity(); return; }
    const name = nameInput.value.trim() || generateName();
    saveName(name);
    location.assign(roomUrl(r, { relay: $('#relay-input').checked ? '1' : '' }));
  };
}

// ---- The call

async function startCall(room) {
  const name = (params.get('name') || savedName() || generateName()).slice(0, 40);
  if (!savedName()) saveName(name);
  const relayParam = params.get('relay');
  const relay = !relayParam || relayParam === '0' ? false : ['udp', 'tcp', 'tls'].includes(relayParam) ? relayParam : 'any';

  document.title = `${room} · Icebreaker`;
  $('#call').hidden = false;
  $('#room-name').textContent = room;
  const grid = new TileGrid($('#tiles'));
  const conn = new ConnStatus($('#conn'));
  const tiles = new Map(); // peer id -> tile element
  const selfTile = createTile({ id: 'self', name, self: true });
  $('#tiles').prepend(selfTile);
  grid.layout();

  // Media -----------------------------------------------------------------
  const media = new Media({ onChange: () => { renderSelf(); peers?.updateTracks(); } });
  const selfStream = new MediaStream();
  function renderSelf() {
    const { audio, video } = media.tracks;
    for (const t of selfStream.getTracks()) if (t !== audio && t !== video) selfStream.removeTrack(t);
    if (video && !selfStream.getTracks().includes(video)) selfStream.addTrack(video);
    selfTile.classList.toggle('screen', media.sharing);
    selfTile.querySelector('.mic-off').hidden = media.micOn;
    setTileStream(selfTile, selfStream, { videoOn: media.sharing || media.camOn });
    setToggle('#btn-mic', media.micOn, media.micOn ? 'mic' : 'mic-off', media.micOn ? 'Mute microphone' : 'Turn microphone on');
    setToggle('#btn-cam', media.camOn, media.camOn ? 'cam' : 'cam-off', media.camOn ? 'Turn camera off' : 'Turn camera on');
    setToggle('#btn-screen', media.sharing, 'screen', media.sharing ? 'Stop sharing' : 'Share your screen', !media.canShare);
    const banner = $('#media-banner');
    if (banner.dataset.dismissed === media.status) return;
    const msg = {
      denied: 'Camera and microphone are blocked. You can still watch, listen and chat.',
      'no-devices': 'No camera or microphone found. You can still watch, listen and chat.',
      unavailable: 'Camera and microphone need HTTPS (or localhost). You can still watch, listen and chat.',
    }[media.status];
    banner.hidden = !msg;
    banner.textContent = msg ?? '';
  }
  function setToggle(sel, on, iconName, title, disabled) {
    const b = $(sel);
    b.setAttribute('aria-pressed', String(on));
    b.title = title;
    b.disabled = !!disabled;
    b.querySelector('[data-icon]').dataset.icon = iconName;
    renderIcons(b);
  }
  // Without a track (refused, absent, or ?media=0) the buttons ask for the device again.
  const askFor = async (kind) => {
    if (!(await media.acquire({ audio: kind === 'audio', video: kind === 'video' }))) {
      toast(media.status === 'denied' || /NotAllowed/.test(media.error ?? '')
        ? `The browser blocks the ${kind === 'audio' ? 'microphone' : 'camera'} for this site`
        : `No ${kind === 'audio' ? 'microphone' : 'camera'} available`, 'warn');
    }
  };
  $('#btn-mic').onclick = () => (media.audio ? media.setMic(!media.micOn) : askFor('audio'));
  $('#btn-cam').onclick = () => (media.camera ? media.setCamera(!media.camOn) : askFor('video'));
  $('#btn-screen').onclick = async () => {
    try { if (media.sharing) media.stopShare(); else await media.startShare(); }
    catch (e) { if (e.name !== 'NotAllowedError') toast(`Screen share failed: ${e.message}`, 'error'); }
  };

  // Signaling, peers, chat, pointers ---------------------------------------
  const wsUrl = `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}/ws`;
  let peers = null;
  const signaling = new Signaling({
    url: wsUrl, room, meta: { name },
    onMessage: (m) => handle(m),
    onState: (state, detail) => {
      const others = peers ? peers.peers.size : 0;
      conn.show(state, detail, state === 'joined' ? `${others + 1} in room` : '');
      if (state === 'joined' && detail.resumed) { toast('Signaling reconnected — call kept', 'ok'); peers.healAfterResume(); }
      if (state === 'failed') toast(detail.code === 'room-full' ? `${room} is full: try again later or pick another room` : `Cannot join: ${detail.message ?? detail.code}`, 'error');
    },
    onRejoin: () => {
      toast('Session expired while offline — rejoining the room', 'warn');
      peers.closeAll();
    },
  });
  peers = new PeerManager({
    signaling, media, relay,
    onPeer: (peer) => renderPeer(peer),
    onGone: (peer) => {
      pointers.remove(peer.id);
      tiles.get(peer.id)?.remove();
      tiles.delete(peer.id);
      grid.layout();
      refreshCount();
    },
    onData: (peer, label, msg) => {
      if (label === 'chat') chat.receive(peer, msg);
      else if (label === 'pointer') pointers.receive(peer, msg);
    },
  });
  const chat = new Chat({
    list: $('#chat-list'), form: $('#chat-form'), name,
    broadcast: (msg) => peers.broadcast('chat', msg),
    onUnread: () => {
      if ($('#call').classList.contains('show-chat') && getComputedStyle($('#side')).display !== 'none') return;
      const u = $('#unread');
      u.hidden = false;
      u.textContent = String(Number(u.textContent || 0) + 1);
    },
  });
  const pointers = new Pointers({ surface: $('#board-surface'), name, broadcast: (msg) => peers.broadcast('pointer', msg) });

  function refreshCount() {
    if (signaling.state === 'joined') conn.show('joined', {}, `${peers.peers.size + 1} in room`);
  }

  function renderPeer(peer) {
    if (peer.closed) return;
    let tile = tiles.get(peer.id);
    if (!tile) {
      tile = createTile({ id: peer.id, name: peer.name });
      tiles.set(peer.id, tile);
      $('#board').before(tile);
      grid.layout();
    }
    setTileStream(tile, peer.stream);
    updatePeerTile(tile, peer);
  }

  async function handle(m) {
    switch (m.type) {
      case 'joined':
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
          chat.notice(`${peer.name} left${m.reason === 'timeout' ? ' (connection lost)' : ''}`);
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

  // Controls ----------------------------------------------------------------
  const call = $('#call');
  const phone = matchMedia('(max-width: 760px)');
  if (phone.matches) call.classList.remove('show-chat');
  const syncChatButton = () => {
    const open = call.classList.contains('show-chat');
    $('#btn-chat').setAttribute('aria-pressed', String(open));
    if (open) { $('#unread').hidden = true; $('#unread').textContent = ''; }
    requestAnimationFrame(() => grid.layout());
  };
  syncChatButton();
  $('#btn-chat').onclick = () => { call.classList.toggle('show-chat'); syncChatButton(); if (call.classList.contains('show-chat')) $('#chat-input').focus(); };
  $('#chat-close').onclick = () => { call.classList.remove('show-chat'); syncChatButton(); };
  $('#btn-stats').onclick = () => {
    const on = call.classList.toggle('show-stats');
    $('#btn-stats').setAttribute('aria-pressed', String(on));
  };
  $('#copy-link').onclick = async () => {
    const url = roomUrl(room);
    try { await navigator.clipboard.writeText(url); toast('Link copied'); }
    catch { prompt('Share this link:', url); }
  };
  $('#audio-unlock').onclick = unlockAudio;
  $('#media-banner').onclick = (e) => { e.currentTarget.hidden = true; e.currentTarget.dataset.dismissed = media.status; grid.layout(); };
  function unlockAudio() {
    document.body.classList.remove('needs-audio-unlock');
    for (const a of document.querySelectorAll('.tile audio')) a.play().catch(() => {});
  }
  addEventListener('pointerdown', unlockAudio, { once: true });
  $('#btn-leave').onclick = () => {
    signaling.leave();
    peers.closeAll();
    media.stop();
    $('#call').hidden = true;
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
      collisions: p.collisions,
    })),
    chatLog: chat.log,
    get pointers() { return pointers.positions; },
    sendChat: (text) => chat.send(text),
    dropSocket: () => signaling.drop(),
  };

  // Go: ask for camera/microphone (joining anyway if the prompt stays open), then join.
  conn.show('connecting');
  const acquired = params.get('media') === '0' ? media.skip() : media.acquire();
  await Promise.race([acquired, new Promise((r) => setTimeout(r, MEDIA_WAIT_MS))]);
  signaling.start();
}
