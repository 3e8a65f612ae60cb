// signaling.js — client for Icebreaker signaling protocol v1 (docs/protocol.md).
//
// One Signaling object is one peer in one room. It joins, tracks `seq`, and when the
// WebSocket drops it reconnects with exponential backoff plus jitter and sends `resume`
// (the server replays what we missed; our RTCPeerConnections are untouched). If the resume
// is refused it tells the app (`rejoin`) and joins afresh with a new id.
//
// Messages are handed to `onMessage` strictly one at a time, in seq order: the handler may
// be async (applying an SDP) and the next message waits for it.
//
// States (`state`, reported through `onState(state, detail)`):
//   connecting   opening the first WebSocket
//   joining      socket open, `join` sent
//   joined       in the room (after `joined` or `resumed`)
//   reconnecting socket lost; detail.retryInMs / detail.attempt say when the next try is
//   resuming     new socket open, `resume` sent
//   offline      the browser reports no network; retrying as soon as it comes back
//   left         we left on purpose
//   failed       the server refused us (room-full, unauthorized, bad room name); after
//                room-full the app may call retry() to try again (a seat may have freed up)
// A join or resume answered `unavailable` (a cluster node without Redis) is retried like a
// lost socket: `reconnecting`, then a new socket.
//
// onRejoin({downMs, sawOffline}) says how long signaling was down before the refused resume
// and whether the browser reported being offline meanwhile, so the app can tell a server
// restart (short outage, the server forgot us) from a long absence.

const BACKOFF_BASE_MS = 500;
const BACKOFF_CAP_MS = 8000; // several tries fit in the server's 30 s resume grace
const CONNECT_TIMEOUT_MS = 8000; // a socket that has not opened by then is abandoned
const PING_EVERY_MS = 10000; // app-level liveness check (browsers cannot see WS pings)
const PONG_TIMEOUT_MS = 6000; // no message at all for this long after a ping = dead socket
const ACK_EVERY = 32; // messages processed between acknowledgements (ping with last_seq)

export class Signaling {
  constructor({ url, room, meta, onMessage, onState, onRejoin }) {
    Object.assign(this, { url, room, meta, onMessage, onState, onRejoin });
    this.ws = null;
    this.state = 'idle';
    this.id = null; // our peer id while joined (kept across resumes)
    this.resumeToken = null;
    this.lastSeq = 0; // highest non-zero seq received (and queued for processing)
    this.ackedSeq = 0; // the last seq acknowledged to the server (ping with last_seq)
    this.iceServers = [];
    this.outbox = []; // messages sent while not joined; flushed after joined/resumed
    this.chain = Promise.resolve(); // serializes onMessage
    this.attempt = 0; // consecutive failed connection attempts
    this.retryTimer = null;
    this.counters = { joins: 0, resumes: 0, resumeFailures: 0, drops: 0, peerLeft: 0 }; // peerLeft: counted by the app
    this.lastHeard = 0;
    this.pingTimer = null;
    this.downSince = null; // performance.now() when the joined socket was lost
    this.sawOffline = false;
    // Between attempts, say "offline" honestly and retry as soon as the network is back.
    addEventListener('online', () => { if (this.#wantsSocket() && !this.ws) this.#connectNow(); });
    addEventListener('offline', () => { if (this.#wantsSocket() && !this.ws) { this.sawOffline = true; this.#setState('offline'); } });
  }

  /** Open the socket and join the room. */
  start() {
    this.#setState('connecting');
    this.#open();
  }

  /** Send a client message; while not joined it waits in the outbox (signals only). */
  send(msg) {
    if (this.state === 'joined' && this.ws?.readyState === WebSocket.OPEN) this.#raw(msg);
    else this.outbox.push(msg);
  }

  signal(to, data) { this.send({ type: 'signal', to, data }); }

  /** After `failed` (e.g. room-full): open a new socket and try to join again. */
  retry() {
    if (this.state !== 'failed') return;
    this.attempt = 0;
    this.#setState('connecting');
    this.#open();
  }

  /** Leave on purpose: `leave`, then a clean close (a close frame alone would also be a leave). */
  leave() {
    const ws = this.ws;
    this.#setState('left');
    this.#stopTimers();
    this.ws = null;
    if (ws?.readyState === WebSocket.OPEN) {
      if (this.id) ws.send(JSON.stringify({ type: 'leave' }));
      ws.close(1000, 'leave');
    } else ws?.close();
    this.id = null;
  }

  /**
   * Test hook: lose the socket as a network cut would. The socket is abandoned, not
   * closed: a close frame reaching the server would count as `leave`. The server closes
   * it (1008) once our new socket has resumed.
   */
  drop() { if (this.ws) this.#lost(this.ws, 'dropped by test hook'); }

  // ---- internals

  #wantsSocket() { return this.state !== 'left' && this.state !== 'failed' && this.state !== 'idle'; }

  #setState(state, detail = {}) {
    this.state = state;
    this.onState?.(state, detail);
  }

  #raw(msg) { this.ws.send(JSON.stringify(msg)); }

  #open() {
    clearTimeout(this.retryTimer);
    this.retryTimer = null;
    let ws;
    try { ws = new WebSocket(this.url); } catch (e) { console.warn('WebSocket:', e); this.#scheduleRetry(); return; }
    this.ws = ws;
    const openTimer = setTimeout(() => this.#lost(ws, 'connect timeout'), CONNECT_TIMEOUT_MS);
    ws.onopen = () => {
      clearTimeout(openTimer);
      this.lastHeard = performance.now();
      if (this.id) {
        this.#setState('resuming');
        this.#raw({ type: 'resume', id: this.id, token: this.resumeToken, last_seq: this.lastSeq });
      } else {
        this.#join();
      }
      this.#startPings(ws);
    };
    ws.onmessage = (e) => {
      this.lastHeard = performance.now();
      let m;
      try { m = JSON.parse(e.data); } catch { console.warn('bad JSON from server'); return; }
      this.#receive(m);
    };
    ws.onclose = (e) => { clearTimeout(openTimer); this.#lost(ws, `closed ${e.code}`); };
    ws.onerror = () => {}; // always followed by close
  }

  #join() {
    this.#setState('joining');
    this.lastSeq = 0;
    this.ackedSeq = 0;
    this.#raw({ type: 'join', room: this.room, meta: this.meta });
  }

  #receive(m) {
    if (m.type === 'resumed') {
      this.attempt = 0;
      this.downSince = null;
      this.sawOffline = false;
      this.counters.resumes++;
      this.#setState('joined', { resumed: true });
      this.#flush();
      this.#enqueue(m);
      return;
    }
    if (m.seq) {
      if (m.seq <= this.lastSeq && m.type !== 'joined') return; // already seen (replay overlap)
      this.lastSeq = m.seq;
      // Say what we have processed (docs/protocol.md, ping): the server then keeps only
      // the rest for a resume, even if this tab freezes with its socket still open.
      if (this.lastSeq - (this.ackedSeq ?? 0) >= ACK_EVERY) this.#ack();
    }
    if (m.type === 'joined') {
      this.attempt = 0;
      this.counters.joins++;
      this.id = m.id;
      this.resumeToken = m.resume_token;
      this.iceServers = m.ice_servers ?? [];
      // Processed before the flush so peer connections exist for queued signals' replies.
      this.#enqueue(m);
      this.#setState('joined', { resumed: false });
      this.#flush();
      return;
    }
    if (m.type === 'error') {
      if (m.code === 'resume-failed') {
        this.counters.resumeFailures++;
        const outage = { downMs: this.downSince != null ? performance.now() - this.downSince : 0, sawOffline: this.sawOffline };
        this.downSince = null;
        this.sawOffline = false;
        this.id = null;
        this.outbox = []; // addressed to peers of the old session
        // The app closes every peer connection (in order with the messages before this).
        this.chain = this.chain.then(() => this.onRejoin?.(outage)).catch((e) => console.error(e));
        this.#join();
        return;
      }
      if (m.code === 'unavailable' && (this.state === 'joining' || this.state === 'resuming')) {
        // A cluster node lost its store (Redis) for a moment (docs/protocol.md): try again
        // after the usual backoff on a new socket; the balancer may pick a node that is whole.
        const ws = this.ws;
        this.#lost(ws, 'server unavailable');
        ws?.close();
        return;
      }
      if (['room-full', 'unauthorized'].includes(m.code) || (m.code === 'bad-message' && this.state === 'joining')) {
        this.#setState('failed', { code: m.code, message: m.message });
        this.#stopTimers();
        const ws = this.ws;
        this.ws = null;
        ws?.close();
      }
    }
    this.#enqueue(m);
  }

  #enqueue(m) {
    this.chain = this.chain
      .then(() => this.onMessage(m))
      .catch((e) => console.error(`handling ${m.type}:`, e));
  }

  #flush() {
    const pending = this.outbox.splice(0);
    for (const m of pending) this.#raw(m);
  }

  #lost(ws, why) {
    if (ws !== this.ws) return; // an abandoned socket closing late
    ws.onopen = ws.onmessage = ws.onclose = null;
    if (ws.readyState === WebSocket.CONNECTING) ws.close(); // no close frame: never opened
    this.ws = null;
    this.#stopTimers();
    if (!this.#wantsSocket()) return;
    this.counters.drops++;
    if (this.id && this.downSince == null) this.downSince = performance.now();
    console.info(`signaling socket lost (${why})`);
    this.#scheduleRetry();
  }

  #scheduleRetry() {
    // Exponential backoff with jitter: 50–100 % of min(cap, base·2^attempt).
    const ceiling = Math.min(BACKOFF_CAP_MS, BACKOFF_BASE_MS * 2 ** this.attempt);
    const delay = Math.round(ceiling * (0.5 + Math.random() / 2));
    this.attempt++;
    const retryAt = Date.now() + delay;
    if (navigator.onLine === false) { this.sawOffline = true; this.#setState('offline', { attempt: this.attempt }); }
    else this.#setState('reconnecting', { attempt: this.attempt, retryAt, retryInMs: delay, willResume: !!this.id });
    clearTimeout(this.retryTimer);
    this.retryTimer = setTimeout(() => this.#open(), delay);
  }

  #connectNow() { this.attempt = 0; this.#open(); }

  #startPings(ws) {
    clearInterval(this.pingTimer);
    this.pingTimer = setInterval(() => {
      if (ws !== this.ws || ws.readyState !== WebSocket.OPEN) return;
      const sentAt = performance.now();
      this.#ack();
      setTimeout(() => {
        if (ws === this.ws && this.lastHeard < sentAt) this.#lost(ws, 'no pong');
      }, PONG_TIMEOUT_MS);
    }, PING_EVERY_MS);
  }

  #stopTimers() { clearInterval(this.pingTimer); this.pingTimer = null; }

  /** An application ping that acknowledges everything processed so far. */
  #ack() {
    if (!this.ws || this.ws.readyState !== WebSocket.OPEN) return;
    this.ackedSeq = this.lastSeq;
    this.ws.send(JSON.stringify(this.lastSeq ? { type: 'ping', last_seq: this.lastSeq } : { type: 'ping' }));
  }
}
