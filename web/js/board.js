// board.js — drawing on the shared board. Dragging on it (mouse button, pen or finger down)
// draws a stroke in the author's colour; the points go out on every peer's `board` channel
// (ordered, reliable) as {"from": name, "stroke": [[x, y], …], "color": "#rrggbb", "ts": ms},
// x/y normalized to the board like pointer positions. A long stroke is sent in pieces while it
// is drawn (each piece starts at the last point of the previous one), so others see it grow.
// "Clear board" sends {"from": name, "clear": true, "ts": ms} and clears every page.
// When a board channel opens, we send the strokes we drew ourselves (since the last clear),
// so someone joining later sees the board as it is.

import { colorFor } from './pointers.js';

const SEND_EVERY_MS = 50;
const MAX_POINTS = 2000; // per message
const COLOR_RE = /^#[0-9a-f]{3,8}$/i;

export class Board {
  /**
   * @param {object} o
   * @param {HTMLElement} o.surface  the board element (pointer events, size)
   * @param {HTMLCanvasElement} o.canvas
   * @param {string} o.name  our display name
   * @param {(msg: object) => number} o.broadcast  send to every open `board` channel
   * @param {(who: string, what: 'stroke'|'clear') => void} [o.onActivity]  someone drew or cleared
   */
  constructor({ surface, canvas, name, broadcast, onActivity = () => {} }) {
    Object.assign(this, { surface, canvas, name, broadcast, onActivity });
    this.color = colorFor(name);
    this.strokes = []; // {from, color, points, own}
    this.drawing = null; // the stroke being drawn: {points, sent}
    this.timer = null;
    surface.addEventListener('pointerdown', (e) => {
      if (e.button !== 0) return;
      e.preventDefault();
      surface.setPointerCapture?.(e.pointerId);
      const stroke = { from: name, color: this.color, points: [this.#point(e)], own: true };
      this.strokes.push(stroke);
      this.drawing = { stroke, sent: 0 };
      this.timer = setInterval(() => this.#flush(), SEND_EVERY_MS);
      this.#draw(stroke);
    });
    surface.addEventListener('pointermove', (e) => {
      if (!this.drawing) return;
      const pts = this.drawing.stroke.points;
      const p = this.#point(e);
      const q = pts.at(-1);
      if (Math.abs(p[0] - q[0]) + Math.abs(p[1] - q[1]) < 0.002) return;
      pts.push(p);
      this.#segment(this.drawing.stroke.color, q, p);
    });
    const end = () => {
      if (!this.drawing) return;
      clearInterval(this.timer);
      this.#flush(true);
      this.drawing = null;
    };
    surface.addEventListener('pointerup', end);
    surface.addEventListener('pointercancel', end);
    new ResizeObserver(() => this.redraw()).observe(surface);
  }

  /** A `board` message from a peer. */
  receive(peer, msg) {
    const from = typeof msg.from === 'string' && msg.from ? msg.from : peer.name;
    if (msg.clear === true) { this.#clearLocal(); this.onActivity(from, 'clear'); return; }
    if (!Array.isArray(msg.stroke)) return;
    const points = [];
    for (const p of msg.stroke.slice(0, MAX_POINTS)) {
      if (!Array.isArray(p)) continue;
      const x = Number(p[0]), y = Number(p[1]);
      if (Number.isFinite(x) && Number.isFinite(y)) points.push([clamp(x), clamp(y)]);
    }
    if (!points.length) return;
    const color = typeof msg.color === 'string' && COLOR_RE.test(msg.color) ? msg.color : colorFor(from);
    const stroke = { from, color, points, own: false };
    this.strokes.push(stroke);
    this.#draw(stroke);
    this.onActivity(from, 'stroke');
  }

  /** A peer's `board` channel opened: send it what we drew. */
  hello(send) {
    for (const s of this.strokes) {
      if (!s.own || s === this.drawing?.stroke) continue;
      send({ from: this.name, stroke: s.points, color: s.color, ts: Date.now() });
    }
  }

  /** Clear the board for everyone. */
  clear() {
    this.#clearLocal();
    this.broadcast({ from: this.name, clear: true, ts: Date.now() });
  }

  get isEmpty() { return this.strokes.length === 0; }

  /** For tests: the strokes, and how many canvas pixels have ink. */
  summary() {
    let inked = 0;
    const { width, height } = this.canvas;
    if (width && height) {
      const data = this.canvas.getContext('2d').getImageData(0, 0, width, height).data;
      for (let i = 3; i < data.length; i += 4) if (data[i]) inked++;
    }
    return { strokes: this.strokes.map((s) => ({ from: s.from, color: s.color, points: s.points.length, first: s.points[0], last: s.points.at(-1) })), inked };
  }

  redraw() {
    const r = this.surface.getBoundingClientRect();
    const dpr = devicePixelRatio || 1;
    const w = Math.round(r.width * dpr), h = Math.round(r.height * dpr);
    if (this.canvas.width !== w || this.canvas.height !== h) { this.canvas.width = w; this.canvas.height = h; }
    this.canvas.getContext('2d').clearRect(0, 0, w, h);
    for (const s of this.strokes) this.#draw(s);
  }

  #clearLocal() {
    this.strokes = this.drawing ? [this.drawing.stroke] : [];
    if (this.drawing) { this.drawing.stroke.points = this.drawing.stroke.points.slice(-1); this.drawing.sent = 0; }
    this.redraw();
  }

  #flush(final = false) {
    const d = this.drawing;
    if (!d) return;
    const pts = d.stroke.points;
    // Resend the last point sent so the pieces join up; a lone dot is sent once at the end.
    const from = Math.max(0, d.sent - 1);
    if (pts.length - from < 2 && !(final && d.sent === 0)) return;
    this.broadcast({ from: this.name, stroke: pts.slice(from), color: d.stroke.color, ts: Date.now() });
    d.sent = pts.length;
  }

  #point(e) {
    const r = this.surface.getBoundingClientRect();
    const round = (v) => Math.round(v * 10000) / 10000;
    return [round(clamp((e.clientX - r.left) / r.width)), round(clamp((e.clientY - r.top) / r.height))];
  }

  #ctx(color) {
    const ctx = this.canvas.getContext('2d');
    ctx.strokeStyle = ctx.fillStyle = color;
    ctx.lineWidth = 3 * (devicePixelRatio || 1);
    ctx.lineCap = ctx.lineJoin = 'round';
    return ctx;
  }

  #segment(color, a, b) {
    const { width: w, height: h } = this.canvas;
    const ctx = this.#ctx(color);
    ctx.beginPath();
    ctx.moveTo(a[0] * w, a[1] * h);
    ctx.lineTo(b[0] * w, b[1] * h);
    ctx.stroke();
  }

  #draw(s) {
    const { width: w, height: h } = this.canvas;
    if (!w || !h) return;
    const ctx = this.#ctx(s.color);
    const [p0, ...rest] = s.points;
    if (!rest.length) {
      ctx.beginPath();
      ctx.arc(p0[0] * w, p0[1] * h, ctx.lineWidth / 2, 0, 2 * Math.PI);
      ctx.fill();
      return;
    }
    ctx.beginPath();
    ctx.moveTo(p0[0] * w, p0[1] * h);
    for (const p of rest) ctx.lineTo(p[0] * w, p[1] * h);
    ctx.stroke();
  }
}

const clamp = (v) => Math.min(1, Math.max(0, v));
