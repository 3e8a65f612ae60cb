#!/usr/bin/env node
// web-client.mjs — end-to-end tests of the Icebreaker web client (web/) in real Chromium,
// against a running `icebreaker` server.
//
//   node web-client.mjs --base http://127.0.0.1:8080 [--base2 URL] [--scenario NAME[,NAME…]|all] [--screenshots DIR]
//                       [--peer PATH/icebreaker-peer] [--timeout-ms 90000] [--verbose]
//
// Scenarios (each runs in fresh browser profiles, in its own room, bounded by --timeout-ms):
//   two       two pages: each decodes the other's video and receives its audio packets,
//             chat both ways (typed into the chat box), pointer moves on one page's board
//             show up at the same normalized place (±0.05) on the other's, both ways
//   relay     the same with ?relay=1: the selected candidate pair is relay on both pages;
//             then two more pages with ?relay=tcp: relay reached over TCP, media and chat flow
//   three     three pages form a full mesh (2 connected peers each, video decoded from both);
//             one clicks Leave and its tile disappears on the other two
//   resume    window.icebreaker.dropSocket() on one page: it resumes (same peer id, same
//             RTCPeerConnection, never disconnected), no peer-left on the other page, chat after
//   cut       the same, but the WebSocket's TCP connection is really reset (the page is served
//             through a TCP proxy in this script that kills it): the browser sees close 1006,
//             the server sees a reset without a close frame
//   expire    the same cut, but new connections are refused for longer than the server's
//             --resume-grace: the other page gets peer-left (timeout), the resume is refused,
//             and the page joins afresh (new id) and is back in a call with the other page
//   nomedia   one page with media, one whose camera/mic permission is refused and one with no
//             devices at all: both join receive-only, decode the first page's video, and chat
//             and pointers work between all three; asking again for the refused camera says so
//   peer      (with --peer PATH/icebreaker-peer) a page and the headless peer: `chat` joining
//             after the page (it offers) and `pointer` joining before it (the page offers);
//             chat and pointer positions both ways; if that binary has `media`, VP8/Opus both
//             ways in both offer directions (page decodes its video, it counts the page's frames)
//   tls       (with an https:// --base) two pages served over HTTPS with the server's own
//             certificate, signaling over wss, media relay-only through the turns: URL the
//             server hands out for its one TLS port (&relay=tls): selected pair relay/TLS
//             on both, video decoded, chat both ways
//   share     two pages join with &media=0, then both start a screen share at the same moment
//             (offers cross: perfect negotiation's glare handling); each decodes the other's
//             screen; then one turns its microphone on (renegotiation) and the other gets audio
// `all` (the default) runs every scenario (`peer` only when --peer is given). With --screenshots DIR, `two` and `three` save
// DIR/screenshot-2.png and DIR/screenshot-3.png (1280×720) and `two` also
// DIR/screenshot-phone.png (390×844).
//
// Prints one JSON line per scenario on stdout ({"scenario", "ok", measured values…,
// "error"}); exits 0 only if every scenario passed. Diagnostics go to stderr.
import fs from 'node:fs';
import net from 'node:net';
import { spawn } from 'node:child_process';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { chromium } from 'playwright-core';

const { values: opt } = parseArgs({
  options: {
    base: { type: 'string' },
    base2: { type: 'string' }, // `two`: the second page from another server (a cluster node)
    scenario: { type: 'string', default: 'all' },
    screenshots: { type: 'string' },
    'timeout-ms': { type: 'string', default: '90000' },
    chromium: { type: 'string', default: process.env.CHROMIUM ?? '/usr/bin/chromium' },
    peer: { type: 'string' }, // path to icebreaker-peer: enables the `peer` scenario
    verbose: { type: 'boolean', default: false },
  },
});
const SCENARIOS = ['two', 'relay', 'three', 'resume', 'cut', 'expire', 'nomedia', 'share', 'peer', 'unavailable', 'tls'];
// `unavailable` needs a harness that stops and restarts Redis (tests/e2e/cluster.rs): never in `all`.
const wanted = opt.scenario === 'all' ? SCENARIOS.filter((s) => (s !== 'peer' || opt.peer) && s !== 'unavailable' && s !== 'tls') : opt.scenario.split(',');
const timeoutMs = Number(opt['timeout-ms']);
if (!opt.base || !(timeoutMs > 0) || wanted.some((s) => !SCENARIOS.includes(s))) {
  console.log(JSON.stringify({ ok: false, error: `usage: node web-client.mjs --base http://HOST:PORT [--scenario ${SCENARIOS.join('|')}|all] [--screenshots DIR] [--timeout-ms N]` }));
  process.exit(2);
}
const BASE = opt.base.replace(/\/+$/, '');
const BASE2 = (opt.base2 ?? opt.base).replace(/\/+$/, '');

// Same switches as turn-relay.mjs (see there): Chromium honours only the last
// --disable-features, so ours re-lists Playwright's defaults.
const DISABLED_FEATURES = [
  'WebRtcHideLocalIpsWithMdns',
  'OptimizationHints', 'NetworkTimeServiceQuerying', 'MediaRouter', 'AimEnabled', 'PreconnectToSearch',
];
const BASE_ARGS = [
  '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync',
  '--allow-loopback-in-peer-connection',
  // Pages of one browser share the renderer's timers; keep hidden/occluded ones running.
  '--disable-background-timer-throttling', '--disable-renderer-backgrounding', '--disable-backgrounding-occluded-windows',
  `--disable-features=${DISABLED_FEATURES.join(',')}`,
];
// A server with a test certificate: Chromium checks it for the page, wss and turns: alike.
if (opt.base.startsWith('https:')) BASE_ARGS.push('--ignore-certificate-errors');
const MEDIA = {
  fake: ['--use-fake-device-for-media-stream', '--use-fake-ui-for-media-stream'], // test pattern + beep, auto-granted
  refused: ['--use-fake-device-for-media-stream'], // devices exist, the permission prompt is dismissed: NotAllowedError
  none: [], // no devices at all: NotFoundError
};

// With --screenshots, each participant's fake camera plays a generated clip (a soft
// silhouette on a coloured wall) instead of Chromium's green test pattern, so the
// screenshots look like a call. Written once per run as Y4M, which Chromium loops.
const CLIPS = {
  alice: { top: [64, 120, 170], bottom: [22, 52, 84], person: [14, 26, 40], skin: [236, 190, 160] },
  bob: { top: [196, 132, 82], bottom: [108, 60, 40], person: [44, 30, 30], skin: [200, 150, 120] },
  carol: { top: [128, 98, 186], bottom: [56, 40, 98], person: [30, 22, 48], skin: [240, 205, 180] },
};
let clipDir = null;
function clipFor(name) {
  if (!opt.screenshots || !CLIPS[name]) return [];
  clipDir ??= fs.mkdtempSync(path.join(os.tmpdir(), 'icebreaker-clips-'));
  const file = path.join(clipDir, `${name}.y4m`);
  if (!fs.existsSync(file)) fs.writeFileSync(file, makeClip(CLIPS[name]));
  return [`--use-file-for-fake-video-capture=${file}`];
}
function makeClip({ top, bottom, person, skin }, W = 640, H = 360, frames = 30) {
  const yuv = ([r, g, b]) => [0.299 * r + 0.587 * g + 0.114 * b, 128 - 0.1687 * r - 0.3313 * g + 0.5 * b, 128 + 0.5 * r - 0.4187 * g - 0.0813 * b];
  const mix = (a, b, t) => a.map((v, i) => v + (b[i] - v) * t);
  const parts = [Buffer.from(`YUV4MPEG2 W${W} H${H} F15:1 Ip A1:1 C420jpeg\n`)];
  for (let f = 0; f < frames; f++) {
    const bob = Math.sin((f / frames) * 2 * Math.PI) * 4; // a gentle nod
    const Y = Buffer.alloc(W * H), U = Buffer.alloc((W / 2) * (H / 2)), V = Buffer.alloc((W / 2) * (H / 2));
    for (let y = 0; y < H; y++) {
      for (let x = 0; x < W; x++) {
        let c = mix(top, bottom, y / H);
        const vignette = Math.hypot((x - W / 2) / W, (y - H / 2) / H);
        c = mix(c, [0, 0, 0], Math.min(0.5, vignette * 0.6));
        const edge = (d) => Math.min(1, Math.max(0, (1 - d) * 30)); // 1 inside, soft rim
        const head = edge(Math.hypot((x - W / 2) / 62, (y - (H * 0.42 + bob)) / 74));
        const body = edge(Math.hypot((x - W / 2) / 170, (y - (H + 40)) / 150));
        if (head) c = mix(c, mix(skin, [60, 40, 30], Math.max(0, (x - W / 2 + 20) / 260)), head);
        if (body) c = mix(c, person, body * 0.92);
        const [yy, uu, vv] = yuv(c);
        Y[y * W + x] = yy;
        if (!(x & 1) && !(y & 1)) { U[(y / 2) * (W / 2) + x / 2] = uu; V[(y / 2) * (W / 2) + x / 2] = vv; }
      }
    }
    parts.push(Buffer.from('FRAME\n'), Y, U, V);
  }
  return Buffer.concat(parts);
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const log = (...a) => console.error(...a);

// ---- A scenario: its own deadline, browsers, room; always prints one JSON line.

class Scenario {
  constructor(name) {
    this.name = name;
    this.deadline = Date.now() + timeoutMs;
    this.room = `${name}-${Date.now().toString(36).slice(-5)}${Math.floor(Math.random() * 100)}`;
    this.contexts = [];
    this.children = [];
    this.profiles = [];
    this.result = { scenario: name, ok: false };
    this.pageErrors = [];
    this.stage = 'start';
  }

  report(json) {
    if (this.reported) return;
    this.reported = true;
    console.log(JSON.stringify(json));
  }

  remaining() { return Math.max(1, this.deadline - Date.now()); }

  /** A browser with a fresh profile; `clip` names a generated camera clip (with --screenshots). */
  async launch(media = 'fake', { clip = null, viewport = { width: 1280, height: 720 } } = {}) {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'icebreaker-web-'));
    this.profiles.push(dir);
    const extra = media === 'fake' && clip ? clipFor(clip) : [];
    const ctx = await chromium.launchPersistentContext(dir, {
      executablePath: opt.chromium, headless: true, args: [...BASE_ARGS, ...MEDIA[media], ...extra], viewport, timeout: this.remaining(),
    });
    this.contexts.push(ctx);
    return ctx;
  }

  /** Open the client as `name` in this scenario's room. */
  async open(ctx, name, { query = '', base = BASE } = {}) {
    const page = ctx.pages().find((p) => p.url() === 'about:blank') ?? await ctx.newPage();
    page.on('console', (m) => { if (opt.verbose || m.type() === 'error') log(`[${this.name}/${name}] ${m.type()}: ${m.text()}`); });
    page.on('pageerror', (e) => { this.pageErrors.push(`${name}: ${e.message}`); log(`[${this.name}/${name}] page error: ${e.message}`); });
    await page.goto(`${base}/?room=${this.room}&name=${encodeURIComponent(name)}${query}`, { timeout: this.remaining() });
    page.who = name;
    return page;
  }

  /** Wait until fn(arg) is truthy in the page; returns its value. */
  async until(page, what, fn, arg, ms = this.remaining()) {
    this.stage = `${page.who}: ${what}`;
    const handle = await page.waitForFunction(fn, arg, { polling: 100, timeout: Math.min(ms, this.remaining()) });
    return handle.jsonValue();
  }

  async run(body) {
    const t0 = Date.now();
    try {
      await body(this);
      if (this.pageErrors.length) throw new Error(`uncaught page errors: ${this.pageErrors.join('; ')}`);
      this.result.ok = true;
    } catch (e) {
      this.result.ok = false;
      this.result.error = `${String(e.message ?? e).split('\n')[0]} (stage: ${this.stage})`;
    }
    this.result.ms = Date.now() - t0;
    this.report(this.result);
    for (const c of this.children) if (c.exitCode === null) c.kill();
    await Promise.race([Promise.all(this.contexts.map((c) => c.close().catch(() => {}))), sleep(8000)]);
    for (const d of this.profiles) fs.rmSync(d, { recursive: true, force: true });
    return this.result.ok;
  }
}

// ---- Steps shared by the scenarios

const peersOf = (page) => page.evaluate(() => window.icebreaker.peers());

/** Wait until the page has exactly `n` peers, all connected; returns their ids. */
async function connected(sc, page, n) {
  const peers = await sc.until(page, `${n} connected peer(s)`, (n) => {
    const ps = window.icebreaker?.peers() ?? [];
    return ps.length === n && ps.every((p) => p.connectionState === 'connected') && ps;
  }, n);
  return peers.map((p) => p.id);
}

/** Wait until every peer's decoded frames (and audio packets, if wanted) grow; returns them. */
async function mediaFlows(sc, page, { audio = true, from = null } = {}) {
  const before = Object.fromEntries((await peersOf(page)).map((p) => [p.id, p]));
  await sleep(1200);
  return sc.until(page, 'video decoded and audio received', ({ before, audio, from }) => {
    const ps = window.icebreaker.peers().filter((p) => !from || from.includes(p.name));
    const grown = ps.every((p) => {
      const b = before[p.id] ?? { framesDecoded: 0, audioPacketsReceived: 0 };
      return p.framesDecoded > b.framesDecoded && p.framesDecoded >= 10 &&
        (!audio || (p.audioPacketsReceived > b.audioPacketsReceived && p.audioPacketsReceived >= 10));
    });
    return ps.length && grown && ps.map((p) => ({ from: p.name, framesDecoded: p.framesDecoded, audioPacketsReceived: p.audioPacketsReceived, candidateType: p.candidateType, protocol: p.protocol }));
  }, { before, audio, from });
}

/** Type a chat message into the UI of `from`; wait for it in the log and the DOM of each `to`. */
async function chat(sc, from, tos, text) {
  if (!(await from.isVisible('#chat-input'))) await from.click('#btn-chat'); // chat starts closed
  await from.fill('#chat-input', text);
  await from.press('#chat-input', 'Enter');
  const t0 = Date.now();
  for (const to of tos) {
    await sc.until(to, `chat "${text}" from ${from.who}`, ({ text, who }) =>
      window.icebreaker.chatLog.some((m) => m.text === text && m.from === who && !m.self) &&
      [...document.querySelectorAll('#chat-list .msg-text')].some((e) => e.textContent === text), { text, who: from.who });
  }
  if ((await from.inputValue('#chat-input')) !== '') throw new Error('chat input not cleared after sending');
  return Date.now() - t0;
}

/**
 * Move the mouse over `from`'s shared board to the normalized point (x, y); wait until each
 * `to` knows that position (±tol) and has drawn the pointer there (its tip, relative to its own
 * board). Returns the positions seen.
 */
async function pointer(sc, from, tos, x, y, tol = 0.05) {
  await from.evaluate(() => window.icebreaker.showBoard()); // the board starts closed
  const box = await from.locator('#board-surface').boundingBox();
  if (!box) throw new Error(`${from.who}: shared board not visible`);
  await from.mouse.move(box.x + box.width * (1 - x), box.y + box.height * (1 - y));
  await from.mouse.move(box.x + box.width * x, box.y + box.height * y, { steps: 12 });
  const seen = {};
  for (const to of tos) {
    const check = ({ who, x, y, tol }) => {
      const p = window.icebreaker.pointers[who];
      const el = document.querySelector(`#board-surface .pointer[data-name="${CSS.escape(who)}"]`);
      if (!p || !el) return false;
      const b = document.querySelector('#board-surface').getBoundingClientRect();
      const r = el.getBoundingClientRect(); // the element's origin is the arrow's tip
      const drawn = { x: (r.left - b.left) / b.width, y: (r.top - b.top) / b.height };
      const near = (q) => Math.abs(q.x - x) <= tol && Math.abs(q.y - y) <= tol;
      const settled = Math.abs(drawn.x - p.x) < 0.01 && Math.abs(drawn.y - p.y) < 0.01; // done gliding
      const round = (v) => Math.round(v * 1000) / 1000;
      return near(p) && near(drawn) && settled && { state: { x: round(p.x), y: round(p.y) }, drawn: { x: round(drawn.x), y: round(drawn.y) } };
    };
    const arg = { who: from.who, x, y, tol };
    await sc.until(to, `pointer of ${from.who} at (${x}, ${y})`, check, arg);
    // Report where it came to rest (the check above may catch the last moves in flight).
    await sleep(400);
    seen[to.who] = await sc.until(to, `pointer of ${from.who} resting at (${x}, ${y})`, check, arg);
  }
  return seen;
}

async function screenshot(page, file) {
  if (!opt.screenshots) return null;
  fs.mkdirSync(opt.screenshots, { recursive: true });
  const out = path.join(opt.screenshots, file);
  await page.mouse.move(0, 0); // no hover effects
  await page.evaluate(() => document.activeElement?.blur()); // no focus ring
  await sleep(600); // let tiles settle (fade-ins, stats refresh)
  await page.screenshot({ path: out });
  return out;
}

// ---- Scenarios

async function twoPages(sc, { relay }) {
  const query = relay ? '&relay=1' : '';
  sc.stage = 'opening pages';
  // One browser per participant, as in real life.
  const a = await sc.open(await sc.launch('fake', { clip: 'alice' }), 'alice', { query });
  const b = await sc.open(await sc.launch('fake', { clip: 'bob' }), 'bob', { query, base: relay ? BASE : BASE2 });
  await connected(sc, a, 1);
  await connected(sc, b, 1);
  const r = sc.result;
  r.alice_receives = (await mediaFlows(sc, a))[0];
  r.bob_receives = (await mediaFlows(sc, b))[0];
  r.chat_ms = { alice_to_bob: await chat(sc, a, [b], 'hello from alice — ça va?'), bob_to_alice: await chat(sc, b, [a], 'hi alice, bob here') };
  r.pointer_alice_on_bob = { sent: { x: 0.3, y: 0.7 }, ...(await pointer(sc, a, [b], 0.3, 0.7)).bob };
  r.pointer_bob_on_alice = { sent: { x: 0.82, y: 0.21 }, ...(await pointer(sc, b, [a], 0.82, 0.21)).alice };
  if (relay) {
    for (const [who, got] of [['alice', r.alice_receives], ['bob', r.bob_receives]]) {
      const p = (await peersOf(who === 'alice' ? a : b))[0];
      got.candidateType = p.candidateType;
      got.protocol = p.protocol;
      if (p.candidateType !== 'relay') throw new Error(`${who}: selected candidate is ${p.candidateType}, not relay`);
    }
    // ?relay=tcp: only the TURN/TCP URL is used, so the relay is reached over TCP.
    sc.room += '-tcp';
    const c = await sc.open(await sc.launch(), 'carol', { query: '&relay=tcp' });
    const d = await sc.open(await sc.launch(), 'dave', { query: '&relay=tcp' });
    await connected(sc, c, 1);
    await connected(sc, d, 1);
    r.relay_tcp = { carol_receives: (await mediaFlows(sc, c))[0], dave_receives: (await mediaFlows(sc, d))[0] };
    for (const [who, got] of Object.entries(r.relay_tcp)) {
      if (got.candidateType !== 'relay' || got.protocol !== 'TCP') throw new Error(`${who}: selected candidate is ${got.candidateType}/${got.protocol}, not relay/TCP`);
    }
    r.relay_tcp.chat_ms = await chat(sc, c, [d], 'over TURN/TCP');
  }
  if (!relay) {
    await b.click('#btn-stats');
    await sleep(1200);
    r.screenshot = await screenshot(b, 'screenshot-2.png');
    if (opt.screenshots) {
      await b.click('#chat-close');
      await b.setViewportSize({ width: 390, height: 844 });
      await sleep(500);
      r.screenshot_phone = await screenshot(b, 'screenshot-phone.png');
    }
  }
}

async function threePages(sc) {
  const names = ['alice', 'bob', 'carol'];
  const pages = [];
  for (const n of names) pages.push(await sc.open(await sc.launch('fake', { clip: n }), n));
  const r = sc.result;
  r.mesh = {};
  for (const p of pages) {
    await connected(sc, p, 2);
    r.mesh[p.who] = await mediaFlows(sc, p);
  }
  const [a, b, c] = pages;
  await chat(sc, b, [a, c], 'Morning! Can everyone see the board?');
  await chat(sc, c, [a, b], 'Yes, and your pointers too');
  await chat(sc, a, [b, c], 'Great, three of us in a mesh');
  await pointer(sc, b, [a, c], 0.25, 0.35);
  await pointer(sc, c, [a, b], 0.7, 0.6);
  r.screenshot = await screenshot(a, 'screenshot-3.png');
  // carol leaves with the Leave button; her tile goes away on the others.
  const carolId = await c.evaluate(() => window.icebreaker.id);
  const t0 = Date.now();
  await c.click('#btn-leave');
  await sc.until(c, 'the "left" screen', () => !document.querySelector('#left').hidden && window.icebreaker.state === 'left');
  for (const p of [a, b]) {
    await sc.until(p, 'carol\'s tile removed', (id) => !document.querySelector(`.tile[data-peer="${id}"]`) &&
      !window.icebreaker.peers().some((q) => q.id === id) && document.querySelectorAll('.tile[data-peer]:not(.board)').length === 2, carolId);
  }
  r.leave_ms = Date.now() - t0;
  r.after_leave = { alice: (await peersOf(a)).map((p) => p.name), bob: (await peersOf(b)).map((p) => p.name) };
  await connected(sc, a, 1); // alice and bob are still in a call
}

/** Shared by `resume` and `cut`: `dropIt(page)` loses alice's signaling socket. */
async function resumeTest(sc, { viaProxy, dropIt }) {
  const ctx = await sc.launch();
  const a = await sc.open(ctx, 'alice', viaProxy ? { base: viaProxy } : {});
  const b = await sc.open(ctx, 'bob');
  const [bobId] = await connected(sc, a, 1);
  const [aliceId] = await connected(sc, b, 1);
  await mediaFlows(sc, a, { audio: false });
  const before = {
    aliceSerial: (await peersOf(a))[0].serial,
    bobSerial: (await peersOf(b))[0].serial,
  };
  // Watch both pages' view of the call while the socket is gone.
  const watch = (page) => page.evaluate(() => {
    window.__watch = { states: [], pcStates: new Set() };
    const t = setInterval(() => {
      const w = window.__watch;
      const s = window.icebreaker.state;
      if (w.states.at(-1) !== s) w.states.push(s);
      for (const p of window.icebreaker.peers()) w.pcStates.add(p.connectionState);
      if (w.stop) clearInterval(t);
    }, 50);
  });
  await watch(a);
  await watch(b);
  const t0 = Date.now();
  sc.stage = 'dropping the socket';
  await dropIt(a);
  await sc.until(a, 'resumed', () => window.icebreaker.counters.resumes >= 1 && window.icebreaker.state === 'joined');
  const r = sc.result;
  r.resume_ms = Date.now() - t0;
  await sleep(1500); // anything that would tear the call down has had time to happen
  const collect = (page) => page.evaluate(() => {
    window.__watch.stop = true;
    const { states, pcStates } = window.__watch;
    return { states, pcStates: [...pcStates], id: window.icebreaker.id, counters: { ...window.icebreaker.counters }, peers: window.icebreaker.peers() };
  });
  const wa = await collect(a), wb = await collect(b);
  r.alice = { states: wa.states, pc_states: wa.pcStates, counters: wa.counters };
  r.bob = { pc_states: wb.pcStates, counters: wb.counters };
  const fail = (m) => { throw new Error(m); };
  if (wa.id !== aliceId) fail(`alice has a new peer id (${wa.id}, was ${aliceId}): she joined afresh instead of resuming`);
  if (wa.counters.joins !== 1 || wa.counters.resumeFailures) fail(`alice joined ${wa.counters.joins} times, ${wa.counters.resumeFailures} failed resumes`);
  if (!wa.states.includes('reconnecting')) fail(`alice never showed the lost connection: ${wa.states}`);
  if (wa.peers.length !== 1 || wa.peers[0].id !== bobId || wa.peers[0].serial !== before.aliceSerial) fail(`alice's peer connection was replaced: ${JSON.stringify(wa.peers)}`);
  if (wb.peers.length !== 1 || wb.peers[0].id !== aliceId || wb.peers[0].serial !== before.bobSerial) fail(`bob's peer connection was replaced: ${JSON.stringify(wb.peers)}`);
  if (wb.counters.peerLeft !== 0) fail('bob saw peer-left');
  for (const [who, w] of [['alice', wa], ['bob', wb]]) {
    if (w.pcStates.some((s) => s !== 'connected')) fail(`${who}'s peer connection left "connected": ${w.pcStates}`);
  }
  r.chat_ms_after = { alice_to_bob: await chat(sc, a, [b], 'still here after the drop'), bob_to_alice: await chat(sc, b, [a], 'welcome back') };
  r.media_after = (await mediaFlows(sc, a))[0];
  // Signaling still works end to end after the resume: a third page joins and meshes with both.
  const c = await sc.open(ctx, 'carol');
  await connected(sc, c, 2);
  await connected(sc, a, 2);
  r.late_joiner_connected = true;
}

/** A TCP proxy in front of the server whose WebSocket connections can be reset on demand. */
async function startProxy(target) {
  const { hostname, port } = new URL(target);
  const ws = new Set();
  const proxy = { blocked: false };
  const server = net.createServer((client) => {
    if (proxy.blocked) { client.resetAndDestroy(); return; } // "the network is down"
    const upstream = net.connect(Number(port), hostname);
    const pair = { client, upstream };
    client.once('data', (first) => { if (first.toString('latin1').startsWith('GET /ws')) ws.add(pair); });
    client.pipe(upstream).pipe(client);
    const done = () => { ws.delete(pair); client.destroy(); upstream.destroy(); };
    client.on('error', done).on('close', done);
    upstream.on('error', done).on('close', done);
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  return Object.assign(proxy, {
    url: `http://127.0.0.1:${server.address().port}`,
    /** Reset every proxied WebSocket (TCP RST both ways, no close frames). */
    cut() {
      const n = ws.size;
      for (const { client, upstream } of ws) { client.resetAndDestroy(); upstream.resetAndDestroy(); }
      ws.clear();
      return n;
    },
    close() { server.close(); },
  });
}

async function noMedia(sc) {
  const ctxA = await sc.launch('fake');
  const ctxB = await sc.launch('refused');
  const ctxC = await sc.launch('none');
  const a = await sc.open(ctxA, 'alice');
  const b = await sc.open(ctxB, 'bob');
  const c = await sc.open(ctxC, 'carol');
  for (const p of [a, b, c]) await connected(sc, p, 2);
  const r = sc.result;
  r.media = {};
  for (const p of [a, b, c]) r.media[p.who] = await p.evaluate(() => window.icebreaker.media);
  if (r.media.alice !== 'ok' || r.media.bob !== 'denied' || r.media.carol !== 'no-devices') throw new Error(`unexpected media status ${JSON.stringify(r.media)}`);
  r.banner = await b.locator('#media-banner').textContent();
  r.bob_receives = await mediaFlows(sc, b, { from: ['alice'] });
  r.carol_receives = await mediaFlows(sc, c, { from: ['alice'] });
  // alice gets nothing from either: their tiles show avatars.
  r.alice_avatar_tiles = await sc.until(a, 'avatar tiles for bob and carol', () => {
    const tiles = [...document.querySelectorAll('.tile[data-peer]:not(.self):not(.board)')];
    return tiles.length === 2 && tiles.every((t) => !t.classList.contains('has-video')) && tiles.map((t) => t.dataset.name);
  });
  r.controls_off = await b.evaluate(() => ['#btn-mic', '#btn-cam'].every((s) => document.querySelector(s).getAttribute('aria-pressed') === 'false'));
  if (!r.controls_off) throw new Error('mic/camera buttons should show "off" without devices');
  // Asking again for the refused camera: still refused, said so, nothing breaks.
  await b.click('#btn-cam');
  r.retry_toast = await sc.until(b, 'a toast about the blocked camera', () => [...document.querySelectorAll('.toast')].map((t) => t.textContent).find((t) => /camera/.test(t)));
  await chat(sc, b, [a, c], 'no camera, but I can type');
  await chat(sc, c, [a, b], 'no devices here either');
  await chat(sc, a, [b, c], 'I can see nobody but hear you all (in text)');
  await pointer(sc, c, [a, b], 0.5, 0.5);
  await pointer(sc, b, [c], 0.1, 0.9);
}

/**
 * The network stays down longer than the server's --resume-grace: the other page gets
 * peer-left (timeout), the resume is refused, and the page joins afresh (new id) and calls
 * the other page again by itself.
 */
async function expire(sc) {
  const proxy = await startProxy(BASE);
  try {
    const ctx = await sc.launch();
    const a = await sc.open(ctx, 'alice', { base: proxy.url });
    const b = await sc.open(ctx, 'bob');
    await connected(sc, a, 1);
    const [oldId] = await connected(sc, b, 1);
    const r = sc.result;
    const t0 = Date.now();
    proxy.blocked = true;
    r.sockets_reset = proxy.cut();
    await sc.until(b, 'peer-left for alice after the resume grace', () => window.icebreaker.counters.peerLeft === 1 &&
      window.icebreaker.peers().length === 0 && document.querySelectorAll('.tile[data-peer]:not(.self):not(.board)').length === 0);
    r.grace_ms = Date.now() - t0;
    r.alice_while_down = await a.evaluate(() => ({ state: window.icebreaker.state, status: document.querySelector('#conn').textContent }));
    if (r.alice_while_down.state !== 'reconnecting') throw new Error(`alice's state while the network is down: ${r.alice_while_down.state}`);
    proxy.blocked = false;
    await sc.until(a, 'rejoined after a refused resume', () => window.icebreaker.counters.resumeFailures === 1 &&
      window.icebreaker.counters.joins === 2 && window.icebreaker.state === 'joined');
    r.back_ms = Date.now() - t0;
    const newId = await a.evaluate(() => window.icebreaker.id);
    if (newId === oldId) throw new Error('alice kept her id after a refused resume');
    const [bobSees] = await connected(sc, b, 1);
    if (bobSees !== newId) throw new Error(`bob's peer is ${bobSees}, not alice's new id ${newId}`);
    await connected(sc, a, 1);
    r.alice_receives = (await mediaFlows(sc, a))[0];
    r.chat_ms = { alice_to_bob: await chat(sc, a, [b], 'back after a long outage'), bob_to_alice: await chat(sc, b, [a], 'hello again') };
  } finally { proxy.close(); }
}

/**
 * Renegotiation and glare: two pages join with ?media=0 (nothing to send: recvonly
 * transceivers), then both start a screen share at the same moment, so both offer at once
 * and perfect negotiation must sort it out; each decodes the other's screen. Then one turns
 * on its microphone (another renegotiation) and the other receives audio.
 */
async function share(sc) {
  const ctx = await sc.launch();
  const a = await sc.open(ctx, 'alice', { query: '&media=0' });
  const b = await sc.open(ctx, 'bob', { query: '&media=0' });
  await connected(sc, a, 1);
  await connected(sc, b, 1);
  const r = sc.result;
  r.media = { alice: await a.evaluate(() => window.icebreaker.media), bob: await b.evaluate(() => window.icebreaker.media) };
  // Both click at the same wall-clock instant (same machine, same clock) so the offers cross.
  const at = Date.now() + 300;
  await Promise.all([a, b].map((p) => p.evaluate((at) => { setTimeout(() => document.querySelector('#btn-screen').click(), at - Date.now()); }, at)));
  for (const p of [a, b]) {
    await sc.until(p, 'sharing', () => document.querySelector('#btn-screen').getAttribute('aria-pressed') === 'true');
  }
  r.alice_receives = (await mediaFlows(sc, a, { audio: false }))[0];
  r.bob_receives = (await mediaFlows(sc, b, { audio: false }))[0];
  r.collisions = { alice: (await peersOf(a))[0].collisions, bob: (await peersOf(b))[0].collisions };
  await a.click('#btn-mic');
  r.alice_media_after_mic = await sc.until(a, 'microphone on', () => window.icebreaker.media === 'audio-only' && window.icebreaker.media);
  r.bob_hears = await sc.until(b, 'audio from alice', () => {
    const p = window.icebreaker.peers()[0];
    return p.audioPacketsReceived > 20 && p.audioPacketsReceived;
  });
  r.chat_ms = await chat(sc, a, [b], 'sharing works');
  for (const p of [a, b]) await connected(sc, p, 1);
}

/** Run `icebreaker-peer ARGS…` to completion; resolves to {code, events} (its --json lines). */
function runPeer(sc, args) {
  const ws = `${BASE.replace(/^http/, 'ws')}/ws`;
  const child = spawn(opt.peer, ['--server', ws, '--room', sc.room, '--json', '--timeout', '40s', ...args], { stdio: ['pipe', 'pipe', 'pipe'] });
  sc.children.push(child);
  const events = [];
  let buf = '';
  child.stdout.on('data', (d) => {
    buf += d;
    for (let i; (i = buf.indexOf('\n')) >= 0; buf = buf.slice(i + 1)) {
      try { events.push(JSON.parse(buf.slice(0, i))); } catch { /* not JSON */ }
    }
  });
  child.stderr.on('data', (d) => { if (opt.verbose) process.stderr.write(`[peer] ${d}`); });
  return new Promise((resolve) => child.on('exit', (code) => resolve({ code, events })));
}

async function withPeer(sc) {
  const a = await sc.open(await sc.launch(), 'alice');
  const r = sc.result;
  // 1. chat: the headless peer joins after the page, so it is the newcomer and offers.
  await sc.until(a, 'joined', () => window.icebreaker.state === 'joined');
  const chatRun = runPeer(sc, ['--name', 'robo', 'chat', '--send', 'hello from the headless peer', '--expect', '1']);
  await connected(sc, a, 1);
  await sc.until(a, 'chat from robo', () => window.icebreaker.chatLog.some((m) => m.from === 'robo' && m.text === 'hello from the headless peer'));
  await a.evaluate(() => window.icebreaker.sendChat('hello robo, from the browser'));
  const chatDone = await chatRun;
  const got = chatDone.events.find((e) => e.event === 'chat');
  r.chat = { peer_exit: chatDone.code, peer_received: got && { from: got.from, text: got.text } };
  if (chatDone.code !== 0 || got?.text !== 'hello robo, from the browser' || got?.from !== 'alice') throw new Error(`headless peer chat: ${JSON.stringify(chatDone.events)}`);
  await sc.until(a, 'robo gone', () => window.icebreaker.peers().length === 0);
  // 2. pointer: the headless peer is in the room first; a second page joins and offers.
  const pointerRun = runPeer(sc, ['--name', 'robo2', 'pointer', '--duration', '6s', '--expect', '20']);
  const b = await sc.open(await sc.launch(), 'bob', { base: BASE });
  await sc.until(b, 'connected to robo2', () => window.icebreaker.peers().some((p) => p.name === 'robo2' && p.connectionState === 'connected'));
  await b.evaluate(() => window.icebreaker.showBoard());
  const box = await b.locator('#board-surface').boundingBox();
  const moves = (async () => {
    for (let i = 0; i < 120; i++) {
      await b.mouse.move(box.x + box.width * (0.1 + (0.8 * i) / 120), box.y + box.height * 0.5);
      await sleep(25);
    }
  })();
  r.pointer_from_peer = await sc.until(b, 'pointer of robo2', () => {
    const p = window.icebreaker.pointers.robo2;
    return p && p.x >= 0 && p.x <= 1 && p.y >= 0 && p.y <= 1 && p;
  });
  await moves;
  const pointerDone = await pointerRun;
  const report = pointerDone.events.find((e) => e.event === 'pointer-report');
  r.pointer_report = report;
  if (pointerDone.code !== 0 || !report?.ok) throw new Error(`headless peer pointer: exit ${pointerDone.code}, ${JSON.stringify(report)}`);

  // 3. media (when this icebreaker-peer has the `media` subcommand): VP8 + Opus both ways,
  // once with the headless peer as the newcomer (it offers) and once with the page as the
  // newcomer (it offers). The page decodes the peer's video; the peer counts the page's frames.
  const help = await new Promise((resolve) => {
    const c = spawn(opt.peer, ['--help'], { stdio: ['ignore', 'pipe', 'ignore'] });
    let out = '';
    c.stdout.on('data', (d) => { out += d; });
    c.on('exit', () => resolve(out));
    c.on('error', () => resolve(''));
  });
  if (!/^\s+media\b/m.test(help)) { r.media = 'skipped: this icebreaker-peer has no `media` subcommand'; return; }
  r.media = {};
  const baseRoom = sc.room;
  for (const order of ['peer-offers', 'page-offers']) {
    sc.room = `${baseRoom}-${order}`;
    const name = `robo-${order}`;
    let page, run;
    if (order === 'peer-offers') {
      page = await sc.open(await sc.launch(), `page-${order}`);
      await sc.until(page, 'joined', () => window.icebreaker.state === 'joined');
      run = runPeer(sc, ['--name', name, 'media', '--duration', '8s', '--expect-frames', '10']);
    } else {
      run = runPeer(sc, ['--name', name, 'media', '--duration', '8s', '--expect-frames', '10']);
      await sleep(1500); // in the room first
      page = await sc.open(await sc.launch(), `page-${order}`);
    }
    const decoded = await sc.until(page, `video from ${name}`, (name) => {
      const p = window.icebreaker.peers().find((q) => q.name === name);
      return p && p.connectionState === 'connected' && p.framesDecoded >= 10 && p.audioPacketsReceived >= 10 &&
        { framesDecoded: p.framesDecoded, audioPacketsReceived: p.audioPacketsReceived };
    }, name);
    const done = await run;
    const report = done.events.find((e) => e.event === 'media-report');
    r.media[order] = { page_decoded: decoded, peer_report: report?.tracks ?? null };
    if (done.code !== 0 || !report?.ok) throw new Error(`headless peer media (${order}): exit ${done.code}, ${JSON.stringify(report)}`);
  }
}

/**
 * `unavailable`: the harness has stopped Redis, so --base (a cluster node) answers `join` with
 * `unavailable`. The page must not give up: it shows that it is reconnecting and retries on new
 * sockets by itself. Once it has been refused at least twice this prints `redis-may-return` on
 * stderr; the harness brings Redis back, the page gets in without help, and a page on --base2
 * (the other node) calls it.
 */
async function unavailableRetry(sc) {
  const a = await sc.open(await sc.launch(), 'alice');
  const refused = await sc.until(a, 'refused with unavailable, twice, and still trying', () => {
    const ib = window.icebreaker;
    return ib && ib.counters.drops >= 2 && ib.counters.joins === 0 && ['reconnecting', 'connecting', 'joining'].includes(ib.state) &&
      { drops: ib.counters.drops, state: ib.state };
  }, null);
  sc.result.refused = refused;
  log('redis-may-return');
  sc.result.joined_after_ms = await (async () => {
    const t0 = Date.now();
    await sc.until(a, 'joined once Redis is back', () => window.icebreaker.state === 'joined' && window.icebreaker.counters.joins === 1, null);
    return Date.now() - t0;
  })();
  const b = await sc.open(await sc.launch(), 'bob', { base: BASE2 });
  await connected(sc, a, 1);
  await connected(sc, b, 1);
  sc.result.chat_ms = await chat(sc, b, [a], 'bob on the other node');
}

// ---- Main

const runs = {
  two: (sc) => twoPages(sc, { relay: false }),
  relay: (sc) => twoPages(sc, { relay: true }),
  three: threePages,
  resume: (sc) => resumeTest(sc, { dropIt: (page) => page.evaluate(() => window.icebreaker.dropSocket()) }),
  cut: async (sc) => {
    const proxy = await startProxy(BASE);
    try {
      await resumeTest(sc, {
        viaProxy: proxy.url,
        dropIt: async () => { sc.result.sockets_reset = proxy.cut(); if (!sc.result.sockets_reset) throw new Error('no WebSocket through the proxy'); },
      });
    } finally { proxy.close(); }
  },
  nomedia: noMedia,
  share,
  expire,
  peer: (sc) => { if (!opt.peer) throw new Error('the peer scenario needs --peer PATH'); return withPeer(sc); },
  unavailable: unavailableRetry,
  tls: tlsPages,
};

/** The `tls` scenario: HTTPS page, wss signaling, media relay-only over TURN/TLS. */
async function tlsPages(sc) {
  if (!BASE.startsWith('https:')) throw new Error('the tls scenario needs an https:// --base');
  const a = await sc.open(await sc.launch(), 'alice', { query: '&relay=tls' });
  const b = await sc.open(await sc.launch(), 'bob', { query: '&relay=tls' });
  const r = sc.result;
  r.secure = await a.evaluate(() => ({ secureContext: window.isSecureContext, protocol: location.protocol }));
  if (!r.secure.secureContext) throw new Error('the HTTPS page is not a secure context');
  await connected(sc, a, 1);
  await connected(sc, b, 1);
  r.alice_receives = (await mediaFlows(sc, a))[0];
  r.bob_receives = (await mediaFlows(sc, b))[0];
  for (const [who, got] of [['alice', r.alice_receives], ['bob', r.bob_receives]]) {
    if (got.candidateType !== 'relay' || got.protocol !== 'TLS') throw new Error(`${who}: selected candidate is ${got.candidateType}/${got.protocol}, not relay/TLS`);
  }
  r.chat_ms = { alice_to_bob: await chat(sc, a, [b], 'over wss and TURN/TLS'), bob_to_alice: await chat(sc, b, [a], 'one port for all') };
}

let allOk = true;
process.on('exit', () => { if (clipDir) fs.rmSync(clipDir, { recursive: true, force: true }); });
for (const name of wanted) {
  const sc = new Scenario(name);
  // The scenario's own deadline, enforced even if a Playwright call hangs.
  const ok = await Promise.race([
    sc.run(runs[name]),
    sleep(timeoutMs + 20000).then(() => { sc.report({ scenario: name, ok: false, error: `hung past ${timeoutMs} ms (stage: ${sc.stage})` }); return false; }),
  ]);
  allOk &&= ok;
}
process.exit(allOk ? 0 : 1);
