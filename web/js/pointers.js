// pointers.js — the shared board. Moving the pointer over it sends
// {"from": name, "x": 0..1, "y": 0..1, "ts": ms} on every peer's `pointer` channel
// (unordered, no retransmits) at most 60 times a second; x/y are normalized to the board
// (0,0 top-left), so boards of any size agree. Each remote pointer is drawn with its owner's
// name and glides towards the latest position, so 60 Hz (or lossy, reordered) input
// still looks smooth.

const SEND_INTERVAL_MS = 1000 / 60;
const GLIDE_MS = 40; // time constant of the exponential glide towards the target
const IDLE_MS = 8000; // a pointer not heard from for this long fades

const PALETTE = ['#ff7b7b', '#ffb35c', '#f7d95c', '#7bdc8c', '#4fd1c5', '#63b3ff', '#a390ff', '#f08bd6', '#c2e36b', '#ff9b73', '#8fd3ff', '#d7a6ff'];

/** A stable color per name (same on every page). */
export function colorFor(name) {
  let h = 2166136261; // FNV-1a
  for (const c of String(name)) h = Math.imul(h ^ c.codePointAt(0), 16777619) >>> 0;
  return PALETTE[h % PALETTE.length];
}

export class Pointers {
  constructor({ surface, broadcast, name }) {
    Object.assign(this, { surface, broadcast, name });
    this.remote = new Map(); // peer id -> {name, x, y, cx, cy, ts, heard, el}
    this.pending = null; // our latest position, not sent yet
    this.lastSent = 0;
    this.sent = 0;
    const move = (e) => {
      const r = surface.getBoundingClientRect();
      if (!r.width || !r.height) return;
      const clamp = (v) => Math.min(1, Math.max(0, v));
      this.pending = { x: clamp((e.clientX - r.left) / r.width), y: clamp((e.clientY - r.top) / r.height) };
    };
    surface.addEventListener('pointermove', move);
    surface.addEventListener('pointerdown', move);
    this.#loop();
  }

  /** The latest position of each remote participant, by name (for tests and tools). */
  get positions() {
    const out = {};
    for (const p of this.remote.values()) out[p.name] = { x: p.x, y: p.y };
    return out;
  }

  receive(peer, msg) {
    const x = Number(msg.x), y = Number(msg.y);
    if (!Number.isFinite(x) || !Number.isFinite(y)) return;
    const ts = Number.isFinite(msg.ts) ? msg.ts : 0;
    let p = this.remote.get(peer.id);
    if (!p) {
      const el = document.createElement('div');
      el.className = 'pointer';
      el.dataset.peer = peer.id;
      el.innerHTML = '<svg viewBox="0 0 16 20" aria-hidden="true"><path d="M1 1l13 10-6 1-3 6z"/></svg><span class="pointer-name"></span>';
      p = { el, x, y, cx: x, cy: y, ts: -Infinity };
      this.remote.set(peer.id, p);
      this.surface.append(el);
      this.surface.classList.add('has-pointers');
    }
    // Unordered channel: an older position arriving late is dropped.
    if (ts && ts < p.ts) return;
    p.name = typeof msg.from === 'string' && msg.from ? msg.from : peer.name;
    p.el.dataset.name = p.name;
    p.el.style.setProperty('--c', colorFor(p.name));
    p.el.querySelector('.pointer-name').textContent = p.name;
    Object.assign(p, { x: Math.min(1, Math.max(0, x)), y: Math.min(1, Math.max(0, y)), ts, heard: performance.now() });
  }

  remove(peerId) {
    this.remote.get(peerId)?.el.remove();
    this.remote.delete(peerId);
    this.surface.classList.toggle('has-pointers', this.remote.size > 0);
  }

  #loop() {
    let prev = performance.now();
    const frame = (now) => {
      const dt = Math.min(100, now - prev);
      prev = now;
      if (this.pending && now - this.lastSent >= SEND_INTERVAL_MS - 1) {
        const { x, y } = this.pending;
        this.pending = null;
        this.lastSent = now;
        const round = (v) => Math.round(v * 10000) / 10000;
        if (this.broadcast({ from: this.name, x: round(x), y: round(y), ts: Date.now() })) this.sent++;
      }
      if (this.remote.size) {
        const w = this.surface.clientWidth, h = this.surface.clientHeight;
        const k = 1 - Math.exp(-dt / GLIDE_MS);
        for (const p of this.remote.values()) {
          p.cx += (p.x - p.cx) * k;
          p.cy += (p.y - p.cy) * k;
          if (Math.abs(p.x - p.cx) < 0.0005) p.cx = p.x;
          if (Math.abs(p.y - p.cy) < 0.0005) p.cy = p.y;
          p.el.style.transform = `translate(${(p.cx * w).toFixed(1)}px, ${(p.cy * h).toFixed(1)}px)`;
          p.el.classList.toggle('idle', now - p.heard > IDLE_MS);
        }
      }
      requestAnimationFrame(frame);
    };
    requestAnimationFrame(frame);
  }
}
