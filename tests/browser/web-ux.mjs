#!/usr/bin/env node
// web-ux.mjs — what a person sees in the Icebreaker web client (web/), checked in real
// Chromium: media state on tiles, plain-language connection states, the full-room screen,
// pre-join, accessibility (axe-core) and the shared drawing board.
//
//   node web-ux.mjs --base http://127.0.0.1:8080 [--scenario NAME[,NAME…]|all] [--peer PATH/icebreaker-peer]
//                   [--server-cmd '["/abs/icebreaker","--web-dir","/abs/web"]'] [--screenshots DIR]
//                   [--timeout-ms 120000] [--verbose]
//
// Scenarios (each in fresh browser profiles, in its own room, bounded by --timeout-ms):
//   state     two, then three pages: a mute and a camera turned off show on the others' tiles
//             within 1 s (mic-off icon, avatar instead of video, tile aria-label), also for a
//             page joining later; the speaking highlight follows Chromium's fake audio (it
//             beeps) and goes away on the others when that page mutes, comes back on unmute;
//             the M and V keyboard shortcuts
//   full      a room of capacity 2 (its own server with --room-capacity 2 when --server-cmd is
//             given, else --base must have been started with it): the third page gets the
//             full-room screen with its camera off, and gets in by itself once a seat frees up
//   restart   (needs --server-cmd) its own server, pages through a TCP proxy: first the server
//             is unreachable for 2 s (within the resume grace): "Reconnecting to the server —
//             your call continues", the RTCPeerConnection stays connected and is kept; then
//             the server is stopped (SIGTERM) and a fresh one started on the same port (rooms
//             live in memory, so it has forgotten everyone): "Reconnecting…" while it is down
//             (media keeps flowing), then "Server restarted — rejoining", and the call is back
//   prejoin   the landing form turns "team standup …" into a valid room name; the pre-join
//             screen: name, second fake camera and microphone chosen, joining muted; the call
//             uses exactly those devices, the other page sees the name and the mute; the
//             settings panel switches the camera during the call; Escape closes it; name and
//             devices are remembered by the next visit
//   a11y      axe-core (WCAG 2.2 A/AA rules) on the landing, pre-join and call screens (with
//             chat and settings open too): no serious or critical violations
//   board     a stroke drawn on one page appears on the other (whose board opens by itself),
//             a page joining later gets it too; Clear clears every page
//   peer      (with --peer PATH/icebreaker-peer, if its `media` has --no-audio) the headless
//             peer sends video without audio: its tile shows the mic-off icon and its video
//   share     (with --peer) a page that joined without media starts a screen share towards an
//             icebreaker-peer that joined after it without video (so the peer offered, and
//             the page's share adds an m-section: a re-offer the peer must answer keeping
//             its DTLS role); the peer receives the new video track and its frames
//   shots     (with --screenshots DIR) DIR/screenshot-2.png, screenshot-3.png (1280×720),
//             screenshot-phone.png (390×844), screenshot-phone-landscape.png (844×390) and
//             screenshot-prejoin.png (1280×720)
// `all` (the default) runs every scenario that its options allow (restart needs --server-cmd,
// peer and share --peer, shots --screenshots).
//
// --server-cmd is a JSON array: the icebreaker binary and flags (absolute paths; no --listen:
// this script picks a free port on 127.0.0.1, and adds --relay-listen 127.0.0.1:0 and
// --drain-timeout 0s unless given). `restart` sets --resume-grace 15s on its server, `full`
// --room-capacity 2 on its own.
//
// Prints one JSON line per scenario on stdout ({"scenario", "ok", measured values…, "error"});
// exits 0 only if every scenario passed. Diagnostics go to stderr.
import fs from 'node:fs';
import net from 'node:net';
import { spawn } from 'node:child_process';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { chromium } from 'playwright-core';

const { values: opt } = parseArgs({
  options: {
    base: { type: 'string' },
    scenario: { type: 'string', default: 'all' },
    screenshots: { type: 'string' },
    'server-cmd': { type: 'string' },
    'timeout-ms': { type: 'string', default: '120000' },
    chromium: { type: 'string', default: process.env.CHROMIUM ?? '/usr/bin/chromium' },
    peer: { type: 'string' },
    verbose: { type: 'boolean', default: false },
  },
});
const SCENARIOS = ['state', 'full', 'restart', 'prejoin', 'a11y', 'board', 'peer', 'share', 'shots'];
const wanted = opt.scenario === 'all'
  ? SCENARIOS.filter((s) => (s !== 'restart' || opt['server-cmd']) && (!['peer', 'share'].includes(s) || opt.peer) && (s !== 'shots' || opt.screenshots))
  : opt.scenario.split(',');
const timeoutMs = Number(opt['timeout-ms']);
let SERVER_CMD = null;
try { if (opt['server-cmd']) SERVER_CMD = JSON.parse(opt['server-cmd']); } catch { SERVER_CMD = 'bad'; }
if (!opt.base || !(timeoutMs > 0) || wanted.some((s) => !SCENARIOS.includes(s)) ||
    (SERVER_CMD && (!Array.isArray(SERVER_CMD) || !SERVER_CMD.length || SERVER_CMD.some((a) => typeof a !== 'string')))) {
  console.log(JSON.stringify({ ok: false, error: `usage: node web-ux.mjs --base http://HOST:PORT [--scenario ${SCENARIOS.join('|')}|all] [--server-cmd JSON-ARGV] [--peer PATH] [--screenshots DIR] [--timeout-ms N]` }));
  process.exit(2);
}
const BASE = opt.base.replace(/\/+$/, '');
const HERE = path.dirname(fileURLToPath(import.meta.url));
const AXE = path.join(HERE, 'node_modules', 'axe-core', 'axe.min.js');

// The same Chromium switches as web-client.mjs (see there).
const DISABLED_FEATURES = [
  'WebRtcHideLocalIpsWithMdns',
  'OptimizationHints', 'NetworkTimeServiceQuerying', 'MediaRouter', 'AimEnabled', 'PreconnectToSearch',
];
const BASE_ARGS = [
  '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync',
  '--allow-loopback-in-peer-connection',
  '--disable-background-timer-throttling', '--disable-renderer-backgrounding', '--disable-backgrounding-occluded-windows',
  `--disable-features=${DISABLED_FEATURES.join(',')}`,
];
const MEDIA = {
  fake: ['--use-fake-device-for-media-stream', '--use-fake-ui-for-media-stream'], // test pattern + beep, auto-granted
  // Three fake cameras: fake_device_1 is a Y16 depth camera, which WebRTC cannot send; 0 and 2 can.
  fake3: ['--use-fake-device-for-media-stream=device-count=3', '--use-fake-ui-for-media-stream'],
};

// With --screenshots, generated camera clips (a soft silhouette on a coloured wall), as in
// web-client.mjs, so the screenshots look like a call.
const CLIPS = {
  alice: { top: [64, 120, 170], bottom: [22, 52, 84], person: [14, 26, 40], skin: [236, 190, 160] },
  bob: { top: [196, 132, 82], bottom: [108, 60, 40], person: [44, 30, 30], skin: [200, 150, 120] },
  carol: { top: [128, 98, 186], bottom: [56, 40, 98], person: [30, 22, 48], skin: [240, 205, 180] },
  dana: { top: [70, 150, 120], bottom: [20, 70, 60], person: [20, 36, 32], skin: [226, 180, 150] },
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
    const bob = Math.sin((f / frames) * 2 * Math.PI) * 4;
    const Y = Buffer.alloc(W * H), U = Buffer.alloc((W / 2) * (H / 2)), V = Buffer.alloc((W / 2) * (H / 2));
    for (let y = 0; y < H; y++) {
      for (let x = 0; x < W; x++) {
        let c = mix(top, bottom, y / H);
        const vignette = Math.hypot((x - W / 2) / W, (y - H / 2) / H);
        c = mix(c, [0, 0, 0], Math.min(0.5, vignette * 0.6));
        const edge = (d) => Math.min(1, Math.max(0, (1 - d) * 30));
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

const SERVERS = new Set(); // servers this script started: killed when it exits, whatever happens
process.on('exit', () => { for (const c of SERVERS) c.kill('SIGKILL'); });
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const log = (...a) => console.error(...a);

// ---- A scenario: its own deadline, browsers, room, servers; always prints one JSON line.

class Scenario {
  constructor(name) {
    this.name = name;
    this.deadline = Date.now() + timeoutMs;
    this.room = `${name}-${Date.now().toString(36).slice(-5)}${Math.floor(Math.random() * 100)}`;
    this.base = BASE;
    this.contexts = [];
    this.children = [];
    this.closers = [];
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

  async launch(media = 'fake', { clip = null, viewport = { width: 1280, height: 720 } } = {}) {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'icebreaker-ux-'));
    this.profiles.push(dir);
    const ctx = await chromium.launchPersistentContext(dir, {
      executablePath: opt.chromium, headless: true, args: [...BASE_ARGS, ...MEDIA[media], ...(clip ? clipFor(clip) : [])], viewport, timeout: this.remaining(),
    });
    this.contexts.push(ctx);
    return ctx;
  }

  /** Open a URL (relative to this scenario's server) in a page of `ctx`. */
  async goto(ctx, who, rel, { base = this.base, fresh = false } = {}) {
    const page = (!fresh && ctx.pages().find((p) => p.url() === 'about:blank')) || await ctx.newPage();
    page.on('console', (m) => { if (opt.verbose || m.type() === 'error') log(`[${this.name}/${who}] ${m.type()}: ${m.text()}`); });
    page.on('pageerror', (e) => { this.pageErrors.push(`${who}: ${e.message}`); log(`[${this.name}/${who}] page error: ${e.message}`); });
    await page.goto(`${base}${rel}`, { timeout: this.remaining() });
    page.who = who;
    return page;
  }

  /** Open the client as `name` in this scenario's room, joining at once (&name= skips pre-join). */
  open(ctx, name, { query = '', base } = {}) {
    return this.goto(ctx, name, `/?room=${this.room}&name=${encodeURIComponent(name)}${query}`, { base });
  }

  async until(page, what, fn, arg, ms = this.remaining()) {
    this.stage = `${page.who}: ${what}`;
    const handle = await page.waitForFunction(fn, arg, { polling: 50, timeout: Math.min(ms, this.remaining()) });
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
    await Promise.race([Promise.all(this.contexts.map((c) => c.close().catch(() => {}))), sleep(8000)]);
    for (const f of this.closers) { try { f(); } catch { /* best effort */ } }
    for (const c of this.children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
    for (const d of this.profiles) fs.rmSync(d, { recursive: true, force: true });
    return this.result.ok;
  }
}

const fail = (m) => { throw new Error(m); };

// ---- Servers of our own (--server-cmd) and a TCP proxy

function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.on('error', reject);
    s.listen(0, '127.0.0.1', () => { const { port } = s.address(); s.close(() => resolve(port)); });
  });
}

function setFlag(argv, flag, value) {
  const i = argv.indexOf(flag);
  if (i >= 0) argv.splice(i, 2, flag, value);
  else {
    const j = argv.findIndex((a) => a.startsWith(`${flag}=`));
    if (j >= 0) argv.splice(j, 1, flag, value); else argv.push(flag, value);
  }
}

/** Start `--server-cmd` on 127.0.0.1:port with flags set; resolves once /healthz answers. */
async function startServer(sc, flags = {}, port = null) {
  if (!SERVER_CMD) fail(`the ${sc.name} scenario needs --server-cmd`);
  port ??= await freePort();
  const argv = SERVER_CMD.slice(1);
  setFlag(argv, '--listen', `127.0.0.1:${port}`);
  if (!argv.some((a) => a.startsWith('--relay-listen') || a === '--no-relay')) argv.push('--relay-listen', '127.0.0.1:0');
  if (!argv.some((a) => a.startsWith('--drain-timeout'))) argv.push('--drain-timeout', '0s');
  for (const [k, v] of Object.entries(flags)) setFlag(argv, k, v);
  const child = spawn(SERVER_CMD[0], argv, { stdio: ['ignore', 'pipe', 'pipe'] });
  sc.children.push(child);
  SERVERS.add(child);
  child.once('exit', () => SERVERS.delete(child));
  const tail = [];
  const keep = (d) => { tail.push(String(d)); if (tail.length > 20) tail.shift(); if (opt.verbose) process.stderr.write(`[server ${port}] ${d}`); };
  child.stdout.on('data', keep);
  child.stderr.on('data', keep);
  const url = `http://127.0.0.1:${port}`;
  const t0 = Date.now();
  for (;;) {
    if (child.exitCode !== null) fail(`server exited (${child.exitCode}): ${tail.join('').slice(-400)}`);
    try { if ((await fetch(`${url}/healthz`)).ok) break; } catch { /* not yet */ }
    if (Date.now() - t0 > 15000) fail('server did not answer /healthz within 15 s');
    await sleep(100);
  }
  return {
    url, port, child,
    /** SIGTERM, and SIGKILL if it has not exited within 5 s. */
    async stop() {
      if (child.exitCode !== null || child.signalCode !== null) return;
      const exited = new Promise((r) => child.once('exit', r));
      child.kill('SIGTERM');
      if (await Promise.race([exited.then(() => true), sleep(5000).then(() => false)])) return;
      child.kill('SIGKILL');
      await exited;
    },
  };
}

/** A TCP proxy to 127.0.0.1:port whose connections can be refused and reset on demand. */
async function startProxy(sc, port) {
  const conns = new Set();
  const proxy = { blocked: false };
  const server = net.createServer((client) => {
    if (proxy.blocked) { client.resetAndDestroy(); return; }
    const upstream = net.connect(port, '127.0.0.1');
    const pair = { client, upstream };
    conns.add(pair);
    client.pipe(upstream).pipe(client);
    const done = () => { conns.delete(pair); client.destroy(); upstream.destroy(); };
    client.on('error', done).on('close', done);
    upstream.on('error', done).on('close', done);
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  sc.closers.push(() => server.close());
  return Object.assign(proxy, {
    url: `http://127.0.0.1:${server.address().port}`,
    cut() {
      const n = conns.size;
      for (const { client, upstream } of conns) { client.resetAndDestroy(); upstream.resetAndDestroy(); }
      conns.clear();
      return n;
    },
  });
}

// ---- Steps shared by the scenarios

const peersOf = (page) => page.evaluate(() => window.icebreaker.peers());

async function connected(sc, page, n) {
  const peers = await sc.until(page, `${n} connected peer(s)`, (n) => {
    const ps = window.icebreaker?.peers() ?? [];
    return ps.length === n && ps.every((p) => p.connectionState === 'connected') && ps;
  }, n);
  return peers.map((p) => p.id);
}

/** Wait until the video decoded from each peer (named in `from`, default all) grows. */
async function videoFlows(sc, page, { from = null, min = 5 } = {}) {
  const before = Object.fromEntries((await peersOf(page)).map((p) => [p.name, p.framesDecoded]));
  return sc.until(page, 'video decoded', ({ before, from, min }) => {
    const ps = window.icebreaker.peers().filter((p) => !from || from.includes(p.name));
    return ps.length && ps.every((p) => p.framesDecoded >= (before[p.name] ?? 0) + min) &&
      Object.fromEntries(ps.map((p) => [p.name, p.framesDecoded]));
  }, { before, from, min });
}

/** What `page` shows on the tile of `who`. */
function tileOf(page, who) {
  return page.evaluate((who) => {
    const t = document.querySelector(`.tile[data-name="${CSS.escape(who)}"]:not(.self)`);
    if (!t) return null;
    const avatar = t.querySelector('.avatar');
    return {
      micOff: !t.querySelector('.mic-off').hidden,
      videoOff: t.classList.contains('video-off'),
      hasVideo: t.classList.contains('has-video'),
      avatarShown: getComputedStyle(avatar).display !== 'none',
      speaking: t.classList.contains('speaking'),
      label: t.getAttribute('aria-label'),
    };
  }, who);
}

/** Wait until `page`'s tile of `who` satisfies `want` (a subset of tileOf's fields). */
async function tileIs(sc, page, who, want, ms) {
  const t0 = Date.now();
  const got = await sc.until(page, `tile of ${who} ${JSON.stringify(want)}`, ({ who, want }) => {
    const t = document.querySelector(`.tile[data-name="${CSS.escape(who)}"]:not(.self)`);
    if (!t) return false;
    const now = {
      micOff: !t.querySelector('.mic-off').hidden,
      videoOff: t.classList.contains('video-off'),
      hasVideo: t.classList.contains('has-video'),
      avatarShown: getComputedStyle(t.querySelector('.avatar')).display !== 'none',
      speaking: t.classList.contains('speaking'),
    };
    return Object.entries(want).every(([k, v]) => now[k] === v) && { ...now, label: t.getAttribute('aria-label') };
  }, { who, want }, ms).catch(async (e) => {
    throw new Error(`${e.message.split('\n')[0]} — the tile: ${JSON.stringify(await tileOf(page, who).catch(() => null))}`);
  });
  return { ms: Date.now() - t0, ...got };
}

async function chat(sc, from, tos, text) {
  if (!(await from.isVisible('#chat-input'))) await from.click('#btn-chat');
  await from.fill('#chat-input', text);
  await from.press('#chat-input', 'Enter');
  for (const to of tos) {
    await sc.until(to, `chat "${text}" from ${from.who}`, ({ text, who }) =>
      window.icebreaker.chatLog.some((m) => m.text === text && m.from === who && !m.self), { text, who: from.who });
  }
}

/** Drag on `page`'s board along `points` (normalized). */
async function draw(page, points) {
  const box = await page.locator('#board-surface').boundingBox();
  if (!box) fail(`${page.who}: board not visible`);
  const at = ([x, y]) => [box.x + box.width * x, box.y + box.height * y];
  await page.mouse.move(...at(points[0]));
  await page.mouse.down();
  for (const p of points.slice(1)) await page.mouse.move(...at(p), { steps: 4 });
  await page.mouse.up();
}

async function axeCheck(sc, page, label) {
  sc.stage = `${page.who}: axe on ${label}`;
  if (!(await page.evaluate(() => !!window.axe))) await page.addScriptTag({ path: AXE });
  // Contrast is judged on the settled page: a toast caught halfway through its fade has
  // no meaningful contrast. Under reduced motion (which the client honours) nothing fades.
  await page.emulateMedia({ reducedMotion: 'reduce' });
  const res = await page.evaluate(async () => {
    await Promise.all(document.getAnimations().map((a) => a.finished.catch(() => {})));
    const r = await window.axe.run(document, { runOnly: { type: 'tag', values: ['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa', 'wcag22aa', 'best-practice'] }, resultTypes: ['violations'] });
    return r.violations.map((v) => ({ id: v.id, impact: v.impact, help: v.help, nodes: v.nodes.slice(0, 4).map((n) => `${n.target.join(' ')}: ${n.failureSummary?.split('\n').slice(1, 2).join(' ').trim()}`) }));
  });
  await page.emulateMedia({ reducedMotion: null });
  const bad = res.filter((v) => v.impact === 'serious' || v.impact === 'critical');
  return { label, violations: res.length, minor: res.filter((v) => !bad.includes(v)).map((v) => `${v.id} (${v.impact})`), bad };
}

async function screenshot(page, file) {
  if (!opt.screenshots) return null;
  fs.mkdirSync(opt.screenshots, { recursive: true });
  const out = path.join(opt.screenshots, file);
  await page.mouse.move(0, 0);
  await page.evaluate(() => document.activeElement?.blur());
  await page.waitForFunction(() => !document.querySelector('.toast'), null, { timeout: 6000 }).catch(() => {}); // "bob joined" gone
  await sleep(700);
  await page.screenshot({ path: out });
  return out;
}

// ---- Scenarios

async function stateScenario(sc) {
  const a = await sc.open(await sc.launch(), 'alice');
  const b = await sc.open(await sc.launch(), 'bob');
  await connected(sc, a, 1);
  await connected(sc, b, 1);
  const r = sc.result;
  r.state_received = await sc.until(b, 'alice\'s media state', () => window.icebreaker.peers()[0]?.mediaState);
  if (!r.state_received.audio || !r.state_received.video) fail(`alice announced ${JSON.stringify(r.state_received)}`);
  await videoFlows(sc, b);
  // Everyone beeps (Chromium's fake microphone): the highlight is on.
  r.bob_sees_alice_speaking = await tileIs(sc, b, 'alice', { speaking: true, micOff: false, hasVideo: true }, 8000);
  r.alice_sees_bob_speaking = await tileIs(sc, a, 'bob', { speaking: true }, 8000);
  // The highlight holds while the audio goes on (the fake microphone beeps twice a second).
  r.speaking_steady = await b.evaluate(async () => {
    let on = 0;
    for (let i = 0; i < 20; i++) {
      if (document.querySelector('.tile[data-name="alice"]:not(.self)').classList.contains('speaking')) on++;
      await new Promise((res) => setTimeout(res, 100));
    }
    return on / 20;
  });
  if (r.speaking_steady < 0.9) fail(`alice's highlight flickers: on ${r.speaking_steady * 100} % of the time`);

  // Mute with the button: mic-off on bob's tile of alice within 1 s, no highlight.
  await a.click('#btn-mic');
  r.mute = await tileIs(sc, b, 'alice', { micOff: true, speaking: false }, 1000);
  r.mute_button = await a.evaluate(() => ({ pressed: document.querySelector('#btn-mic').getAttribute('aria-pressed'), label: document.querySelector('#btn-mic').getAttribute('aria-label') }));
  if (r.mute_button.pressed !== 'false' || r.mute_button.label !== 'Unmute microphone') fail(`mic button after muting: ${JSON.stringify(r.mute_button)}`);
  if (!/microphone off/.test(r.mute.label)) fail(`tile label without the mute: ${r.mute.label}`);
  // Camera off with the V shortcut: avatar instead of (black) video within 1 s.
  await a.locator('body').press('v');
  r.camera_off = await tileIs(sc, b, 'alice', { videoOff: true, hasVideo: false, avatarShown: true }, 1000);
  if (!/camera off/.test(r.camera_off.label)) fail(`tile label without the camera: ${r.camera_off.label}`);
  // Still muted: stays un-highlighted while the fake audio keeps beeping for a while.
  await sleep(1500);
  if ((await tileOf(b, 'alice')).speaking) fail('alice is highlighted while muted');

  // A third page joining later gets the state when its channel opens.
  const c = await sc.open(await sc.launch(), 'carol');
  await connected(sc, c, 2);
  r.carol_sees_alice = await tileIs(sc, c, 'alice', { micOff: true, videoOff: true, avatarShown: true, speaking: false }, 5000);
  r.carol_sees_bob_speaking = await tileIs(sc, c, 'bob', { speaking: true, micOff: false }, 8000);
  await connected(sc, a, 2);
  r.alice_sees_carol_speaking = await tileIs(sc, a, 'carol', { speaking: true }, 8000);

  // bob mutes with M: the highlight goes away on alice and carol.
  await b.locator('body').press('m');
  r.bob_muted_on_alice = await tileIs(sc, a, 'bob', { micOff: true, speaking: false }, 1000);
  r.bob_muted_on_carol = await tileIs(sc, c, 'bob', { micOff: true, speaking: false }, 1000);
  // alice unmutes and turns her camera back on: highlight and video return everywhere.
  await a.click('#btn-mic');
  await a.click('#btn-cam');
  r.unmute_on_carol = await tileIs(sc, c, 'alice', { micOff: false, videoOff: false }, 1000);
  r.alice_speaking_again = await tileIs(sc, c, 'alice', { speaking: true, hasVideo: true }, 8000);
  await tileIs(sc, b, 'alice', { micOff: false, speaking: true, hasVideo: true }, 8000);

  // Layout on carol's page: her own video small in a corner; pinning alice makes hers the
  // big tile (speaker view); unpinning goes back to the grid. Technical labels only with Stats.
  const layout = () => c.evaluate(() => ({
    pip: document.querySelector('#tiles .tile.self').classList.contains('pip'),
    mode: document.querySelector('#call').dataset.layout,
    main: document.querySelector('#tiles .tile.main')?.dataset.name ?? null,
    badges_shown: [...document.querySelectorAll('.tile-badge')].filter((x) => x.offsetParent).length,
  }));
  r.layout_grid = await layout();
  if (!r.layout_grid.pip || r.layout_grid.mode !== 'grid' || r.layout_grid.badges_shown) fail(`carol's layout: ${JSON.stringify(r.layout_grid)}`);
  await c.hover('.tile[data-name="alice"]');
  await c.click('.tile[data-name="alice"] .tile-pin');
  r.layout_pinned = await layout();
  if (r.layout_pinned.mode !== 'speaker' || r.layout_pinned.main !== 'alice') fail(`after pinning alice: ${JSON.stringify(r.layout_pinned)}`);
  await c.click('.tile[data-name="alice"] .tile-pin');
  if ((await layout()).mode !== 'grid') fail('unpinning did not return to the grid');
  await c.click('#btn-stats');
  r.stats_rows = await sc.until(c, 'stats on the tiles', () => {
    const dl = document.querySelector('.tile[data-name="alice"] .tile-stats');
    const rows = [...dl.querySelectorAll('dt')].map((x) => x.textContent);
    const badge = document.querySelector('.tile[data-name="alice"] .tile-badge');
    return badge.offsetParent && ['Loss', 'Jitter', 'In', 'Audio'].every((k) => rows.includes(k)) && Object.fromEntries([...dl.querySelectorAll('dt')].map((x) => [x.textContent, x.nextElementSibling.textContent]));
  }, null, 5000);
}

async function fullScenario(sc) {
  const r = sc.result;
  if (SERVER_CMD) sc.base = (await startServer(sc, { '--room-capacity': '2' })).url;
  r.server = SERVER_CMD ? 'own (--room-capacity 2)' : sc.base;
  const a = await sc.open(await sc.launch(), 'alice');
  const b = await sc.open(await sc.launch(), 'bob');
  await connected(sc, a, 1);
  await connected(sc, b, 1);
  const c = await sc.open(await sc.launch(), 'carol');
  r.full_screen = await sc.until(c, 'the full-room screen', () => !document.querySelector('#full').hidden &&
    document.querySelector('#call').hidden && document.querySelector('#full-title').textContent);
  r.camera_while_waiting = await sc.until(c, 'camera and microphone off', () => window.icebreaker.localTracks().every((t) => t.readyState === 'ended') && window.icebreaker.localTracks(), null, 3000);
  r.status = await c.locator('#full-status').textContent();
  r.a11y_full = await axeCheck(sc, c, 'full-room screen');
  if (r.a11y_full.bad.length) fail(`axe on the full-room screen: ${JSON.stringify(r.a11y_full.bad)}`);
  await c.click('#full-retry'); // still full: it says so and keeps waiting
  await sc.until(c, 'refused again after Retry', () => window.icebreaker.state === 'failed' && !document.querySelector('#full').hidden && /Still full/.test(document.querySelector('#full-status').textContent));
  await sleep(1000);
  // bob leaves: carol gets in by herself, camera back on, in a call with alice.
  const t0 = Date.now();
  await b.click('#btn-leave');
  r.leave_toast = await sc.until(a, 'a toast that bob left', () => [...document.querySelectorAll('.toast')].map((t) => t.textContent).find((t) => t === 'bob left'), null, 5000);
  await sc.until(c, 'in the call by itself', () => window.icebreaker.state === 'joined' && document.querySelector('#full').hidden && !document.querySelector('#call').hidden);
  r.entered_after_ms = Date.now() - t0;
  await connected(sc, c, 1);
  r.camera_after = await sc.until(c, 'camera live again', () => {
    const t = window.icebreaker.localTracks();
    return t.some((x) => x.kind === 'video' && x.readyState === 'live') && t.some((x) => x.kind === 'audio' && x.readyState === 'live') && t.map((x) => `${x.kind}:${x.readyState}`);
  });
  r.alice_sees_carol = await videoFlows(sc, a, { from: ['carol'] });
}

async function restartScenario(sc) {
  const r = sc.result;
  const flags = { '--resume-grace': '15s' };
  let server = await startServer(sc, flags);
  const proxy = await startProxy(sc, server.port);
  const a = await sc.open(await sc.launch(), 'alice', { base: proxy.url });
  const b = await sc.open(await sc.launch(), 'bob', { base: proxy.url });
  await connected(sc, a, 1);
  await connected(sc, b, 1);
  await videoFlows(sc, a);
  const serial = (await peersOf(a))[0].serial;
  const watch = (page) => page.evaluate(() => {
    window.__pcStates = new Set();
    window.__watchTimer = setInterval(() => { for (const p of window.icebreaker.peers()) window.__pcStates.add(p.connectionState); }, 50);
  });
  const collect = (page) => page.evaluate(() => { clearInterval(window.__watchTimer); return [...window.__pcStates]; });

  // 1. The server is unreachable for 2 s, well within the resume grace. alice's window is
  // 360 px wide meanwhile: the banner must fit.
  await a.setViewportSize({ width: 360, height: 740 });
  await watch(a);
  proxy.blocked = true;
  r.sockets_reset = proxy.cut();
  r.banner_while_unreachable = await sc.until(a, 'the reconnecting banner', () => {
    const el = document.querySelector('#conn-banner');
    return !el.hidden && el.textContent === 'Reconnecting to the server — your call continues' && el.textContent;
  }, null, 5000);
  r.banner_fits_360 = await a.evaluate(() => {
    const el = document.querySelector('#conn-banner');
    const rect = el.getBoundingClientRect();
    return { page_width: document.documentElement.scrollWidth, banner: [Math.round(rect.left), Math.round(rect.right)], lines: Math.round(rect.height / parseFloat(getComputedStyle(el).lineHeight || 20)) };
  });
  if (r.banner_fits_360.page_width > 360 || r.banner_fits_360.banner[0] < 0 || r.banner_fits_360.banner[1] > 360) fail(`the banner does not fit 360 px: ${JSON.stringify(r.banner_fits_360)}`);
  r.shot_360 = await screenshot(a, 'reconnecting-360.png');
  await sleep(2000);
  proxy.blocked = false;
  await sc.until(a, 'resumed', () => window.icebreaker.counters.resumes >= 1 && window.icebreaker.state === 'joined');
  await sc.until(a, 'banner gone after the resume', () => document.querySelector('#conn-banner').hidden, null, 3000);
  await a.setViewportSize({ width: 1280, height: 720 });
  r.within_grace = { pc_states: await collect(a), counters: await a.evaluate(() => ({ ...window.icebreaker.counters })) };
  if (r.within_grace.pc_states.some((s) => s !== 'connected')) fail(`the call was disturbed: ${r.within_grace.pc_states}`);
  if ((await peersOf(a))[0].serial !== serial) fail('the RTCPeerConnection was replaced after a resume');

  // 2. The server stops and a fresh one starts on the same port: it knows nobody.
  await watch(a);
  const t0 = Date.now();
  await server.stop();
  r.banner_while_down = await sc.until(a, 'the reconnecting banner while the server is down', () => {
    const el = document.querySelector('#conn-banner');
    return !el.hidden && el.textContent === 'Reconnecting to the server — your call continues' && el.textContent;
  }, null, 5000);
  r.media_while_down = await videoFlows(sc, a, { min: 10 });
  r.pc_while_down = await collect(a);
  if (r.pc_while_down.some((s) => s !== 'connected')) fail(`the call broke while the server was down: ${r.pc_while_down}`);
  await sleep(1000);
  server = await startServer(sc, flags, server.port);
  r.down_ms = Date.now() - t0;
  r.banner_after_restart = await sc.until(a, '"Server restarted — rejoining"', () => window.icebreaker.banners.includes('Server restarted — rejoining') && window.icebreaker.banners.at(-1));
  await sc.until(a, 'rejoined', () => window.icebreaker.counters.resumeFailures === 1 && window.icebreaker.counters.joins === 2 && window.icebreaker.state === 'joined');
  await sc.until(b, 'rejoined', () => window.icebreaker.counters.joins === 2 && window.icebreaker.state === 'joined');
  await connected(sc, a, 1);
  await connected(sc, b, 1);
  r.back_ms = Date.now() - t0;
  r.media_after = await videoFlows(sc, a);
  await sc.until(a, 'banner gone once the call is back', () => document.querySelector('#conn-banner').hidden, null, 8000);
  r.banners = await a.evaluate(() => window.icebreaker.banners);
  if (r.banners.some((t) => /expired|offline/i.test(t))) fail(`misleading banner: ${r.banners}`);
  await chat(sc, a, [b], 'back after the restart');
}

async function prejoinScenario(sc) {
  const r = sc.result;
  const ctx = await sc.launch('fake3');
  // The landing form: a room name typed with a space is made valid, not refused.
  const land = await sc.goto(ctx, 'dana', '/');
  const typed = `team standup ${sc.room.slice(-6)}`;
  await land.fill('#room-input', typed);
  r.room_hint = await land.locator('#room-hint').textContent();
  await land.click('#join-form button[type=submit]');
  await land.waitForURL(/room=/, { timeout: sc.remaining() });
  const room = new URL(land.url()).searchParams.get('room');
  r.room = { typed, became: room };
  if (room !== typed.replace(/ /g, '-')) fail(`room "${typed}" became "${room}"`);
  sc.room = room;
  const p = land;
  await sc.until(p, 'pre-join with the cameras listed', () => !document.querySelector('#prejoin').hidden &&
    document.querySelector('#pj-cam-select').options.length >= 3 && document.querySelector('#pj-mic-select').options.length >= 2 &&
    document.querySelector('#prejoin-tile').classList.contains('has-video'));
  r.prejoin_room = await p.locator('#prejoin-room').textContent();
  const devices = await p.evaluate(async () => (await navigator.mediaDevices.enumerateDevices()).map((d) => ({ kind: d.kind, id: d.deviceId, label: d.label })));
  const cams = devices.filter((d) => d.kind === 'videoinput');
  const mics = devices.filter((d) => d.kind === 'audioinput' && d.id !== 'default' && d.id !== 'communications');
  if (cams.length < 3 || mics.length < 2) fail(`fake devices: ${JSON.stringify(devices)}`);
  const cam = cams[2], mic = mics[1]; // not the defaults (the first of each)
  await p.fill('#pj-name', 'Dana Scully');
  await p.selectOption('#pj-cam-select', cam.id);
  await p.selectOption('#pj-mic-select', mic.id);
  await p.click('#pj-mic'); // join muted
  r.pj_mic = await p.evaluate(() => ({ pressed: document.querySelector('#pj-mic').getAttribute('aria-pressed'), label: document.querySelector('#pj-mic').getAttribute('aria-label') }));
  if (r.pj_mic.pressed !== 'false') fail('pre-join mic toggle did not switch off');
  await sc.until(p, 'preview from the chosen camera', (id) => document.querySelector('#prejoin-tile video').srcObject?.getVideoTracks()[0]?.getSettings().deviceId === id, cam.id, 5000);
  await p.click('#pj-join');
  await sc.until(p, 'joined', () => window.icebreaker?.state === 'joined');
  const tracks = await p.evaluate(() => window.icebreaker.localTracks());
  r.in_call = { name: await p.evaluate(() => window.icebreaker.name), tracks: tracks.map((t) => ({ kind: t.kind, label: t.label, enabled: t.enabled })) };
  const v = tracks.find((t) => t.kind === 'video'), au = tracks.find((t) => t.kind === 'audio');
  if (r.in_call.name !== 'Dana Scully') fail(`joined as ${r.in_call.name}`);
  if (v?.deviceId !== cam.id) fail(`camera in the call is ${v?.label}, not ${cam.label}`);
  if (au?.deviceId !== mic.id) fail(`microphone in the call is ${au?.label}, not ${mic.label}`);
  if (au.enabled) fail('joined with the microphone on although muted in pre-join');

  // The others see the chosen name, muted, with video.
  const b = await sc.open(await sc.launch(), 'bob');
  await connected(sc, b, 1);
  await connected(sc, p, 1);
  r.bob_sees = await tileIs(sc, b, 'Dana Scully', { micOff: true, videoOff: false, hasVideo: true }, 8000);
  await videoFlows(sc, b);

  // Settings during the call: switch back to the first camera; bob keeps getting video.
  await p.click('#btn-settings');
  await sc.until(p, 'settings open', () => getComputedStyle(document.querySelector('#settings')).display !== 'none');
  r.settings_camera = await p.inputValue('#set-cam-select');
  if (r.settings_camera !== cam.id) fail('settings do not show the camera in use');
  await p.selectOption('#set-cam-select', cams[0].id);
  await sc.until(p, 'first camera in use', (id) => window.icebreaker.localTracks().some((t) => t.kind === 'video' && t.deviceId === id && t.readyState === 'live'), cams[0].id, 5000);
  r.after_switch = await videoFlows(sc, b, { min: 10 });
  // The camera goes away (unplugged): the page falls back to another one and says so.
  await p.evaluate(() => window.icebreaker.endTrack('video'));
  r.unplugged = await sc.until(p, 'fallback camera after the device ended', () => {
    const t = window.icebreaker.localTracks().find((x) => x.kind === 'video' && x.readyState === 'live');
    const toast = [...document.querySelectorAll('.toast')].map((x) => x.textContent).find((x) => /Camera disconnected/.test(x));
    return t && toast && { now: t.label, toast };
  }, null, 8000);
  await videoFlows(sc, b, { min: 10 });
  await p.keyboard.press('Escape');
  await sc.until(p, 'Escape closed settings', () => getComputedStyle(document.querySelector('#settings')).display === 'none' && document.activeElement?.id === 'btn-settings', null, 2000);

  // The next visit remembers the name and the devices.
  const again = await sc.goto(ctx, 'dana-again', `/?room=${sc.room}-2`, { fresh: true });
  r.remembered = await sc.until(again, 'pre-join remembers', ({ cam, mic }) => {
    const n = document.querySelector('#pj-name').value;
    const c = document.querySelector('#pj-cam-select').value, m = document.querySelector('#pj-mic-select').value;
    return n === 'Dana Scully' && c === cam && m === mic && { name: n, camera: c.slice(0, 8), microphone: m.slice(0, 8) };
  }, { cam: cams[0].id, mic: mic.id }, 8000).catch(async (e) => {
    const seen = await again.evaluate(() => ({ name: document.querySelector('#pj-name').value, camera: document.querySelector('#pj-cam-select').selectedOptions[0]?.textContent, microphone: document.querySelector('#pj-mic-select').selectedOptions[0]?.textContent }));
    throw new Error(`${e.message.split('\n')[0]}; the next visit shows ${JSON.stringify(seen)}`);
  });
}

async function a11yScenario(sc) {
  const r = sc.result;
  r.pages = [];
  const check = async (page, label) => {
    const res = await axeCheck(sc, page, label);
    r.pages.push({ label, violations: res.violations, serious_or_critical: res.bad.length, minor: res.minor });
    if (res.bad.length) fail(`axe on ${label}: ${JSON.stringify(res.bad)}`);
  };
  const ctx = await sc.launch();
  const land = await sc.goto(ctx, 'alice', '/');
  await land.waitForSelector('#landing:not([hidden])');
  await check(land, 'landing');
  const pre = await sc.goto(ctx, 'alice', `/?room=${sc.room}`, { fresh: true });
  await sc.until(pre, 'pre-join preview', () => document.querySelector('#prejoin-tile').classList.contains('has-video'));
  await check(pre, 'pre-join');
  await pre.fill('#pj-name', 'alice');
  await pre.click('#pj-join');
  const b = await sc.open(await sc.launch(), 'bob');
  await connected(sc, pre, 1);
  await connected(sc, b, 1);
  await videoFlows(sc, pre);
  pre.who = 'alice';
  await check(pre, 'call');
  await chat(sc, b, [pre], 'see https://example.org/a?b=1, it works');
  await pre.click('#btn-chat');
  await pre.click('#btn-board');
  await check(pre, 'call with chat and board');
  await pre.click('#btn-settings');
  await pre.click('#btn-stats');
  await sleep(1200);
  await check(pre, 'call with settings and stats');
  // Chat links are real links, built as DOM nodes.
  r.chat_link = await pre.evaluate(() => {
    const a = [...document.querySelectorAll('#chat-list .msg-text a')].at(-1);
    return a && { href: a.href, text: a.textContent, rel: a.rel, target: a.target };
  });
  if (r.chat_link?.href !== 'https://example.org/a?b=1' || !/noopener/.test(r.chat_link.rel)) fail(`chat link: ${JSON.stringify(r.chat_link)}`);
  // Keyboard: buttons in a sane order, M toggles the microphone with its name.
  r.tab_order = await pre.evaluate(() => [...document.querySelectorAll('.controls button')].filter((x) => x.offsetParent).map((x) => x.getAttribute('aria-label')));
  await pre.click('#settings-close');
  await pre.setViewportSize({ width: 390, height: 844 });
  await sleep(500);
  await check(pre, 'call on a phone (390×844)');
  await pre.setViewportSize({ width: 1280, height: 720 });
  await pre.locator('body').press('m');
  r.mic_after_m = await pre.evaluate(() => document.querySelector('#btn-mic').getAttribute('aria-label'));
  if (r.mic_after_m !== 'Unmute microphone') fail(`after M the mic button says "${r.mic_after_m}"`);
}

async function boardScenario(sc) {
  const r = sc.result;
  const a = await sc.open(await sc.launch(), 'alice');
  const b = await sc.open(await sc.launch(), 'bob');
  await connected(sc, a, 1);
  await connected(sc, b, 1);
  r.board_hidden_at_start = await b.evaluate(() => document.querySelector('#board').hidden);
  if (!r.board_hidden_at_start) fail('the board is shown before anyone uses it');
  await a.click('#btn-board');
  const stroke = [[0.2, 0.3], [0.35, 0.5], [0.5, 0.35], [0.7, 0.6], [0.8, 0.4]];
  await draw(a, stroke);
  // The stroke arrives in pieces as it is drawn: wait for the piece that ends where the
  // pointer stopped (a stroke that never gets there times out here).
  const end = stroke.at(-1);
  r.bob_board = await sc.until(b, 'alice\'s stroke, to its end', (end) => {
    const s = window.icebreaker.board();
    const mine = s.strokes.filter((x) => x.from === 'alice');
    const last = mine.at(-1)?.last;
    const done = last && Math.abs(last[0] - end[0]) < 0.03 && Math.abs(last[1] - end[1]) < 0.03;
    return !document.querySelector('#board').hidden && done && s.inked > 50 && { strokes: mine.length, points: mine.reduce((n, x) => n + x.points, 0), first: mine[0].first, last, inked: s.inked };
  }, end);
  const near = (p, q) => Math.abs(p[0] - q[0]) < 0.03 && Math.abs(p[1] - q[1]) < 0.03;
  if (!near(r.bob_board.first, stroke[0])) fail(`stroke starts elsewhere: ${JSON.stringify(r.bob_board)}`);
  // bob draws too; a page joining later gets both strokes.
  await draw(b, [[0.1, 0.8], [0.3, 0.9], [0.5, 0.8]]);
  await sc.until(a, 'bob\'s stroke', () => window.icebreaker.board().strokes.some((s) => s.from === 'bob'));
  const c = await sc.open(await sc.launch(), 'carol');
  await connected(sc, c, 2);
  r.late_joiner = await sc.until(c, 'the board as it is', () => {
    const s = window.icebreaker.board();
    return !document.querySelector('#board').hidden && s.strokes.some((x) => x.from === 'alice') && s.strokes.some((x) => x.from === 'bob') && s.inked > 50 && { strokes: s.strokes.length, inked: s.inked };
  });
  // Clear on bob's page clears everyone's.
  await b.click('#board-clear');
  for (const p of [a, b, c]) {
    await sc.until(p, 'board cleared', () => { const s = window.icebreaker.board(); return s.strokes.length === 0 && s.inked === 0; }, null, 3000);
  }
  r.cleared = true;
}

async function peerScenario(sc) {
  if (!opt.peer) fail('the peer scenario needs --peer PATH');
  const help = await new Promise((resolve) => {
    const c = spawn(opt.peer, ['media', '--help'], { stdio: ['ignore', 'pipe', 'ignore'] });
    let out = '';
    c.stdout.on('data', (d) => { out += d; });
    c.on('exit', () => resolve(out));
    c.on('error', () => resolve(''));
  });
  if (!/--no-audio\b/.test(help)) { sc.result.skipped = 'this icebreaker-peer has no `media --no-audio`'; return; }
  const a = await sc.open(await sc.launch(), 'alice');
  await sc.until(a, 'joined', () => window.icebreaker.state === 'joined');
  const { events, done } = spawnPeer(sc, ['--timeout', '40s', '--name', 'robo', 'media', '--no-audio', '--duration', '10s', '--expect-frames', '10']);
  await connected(sc, a, 1);
  sc.result.state = await sc.until(a, 'robo\'s media state', () => window.icebreaker.peers()[0]?.mediaState);
  sc.result.tile = await tileIs(sc, a, 'robo', { micOff: true, hasVideo: true, speaking: false }, 15000);
  sc.result.peer_exit = await done;
  sc.result.peer_saw = events.find((e) => e.event === 'media-state') ?? null;
  if (sc.result.peer_exit !== 0) fail(`icebreaker-peer exited with ${sc.result.peer_exit}`);
  if (sc.result.peer_saw && (sc.result.peer_saw.from !== 'alice' || !sc.result.peer_saw.audio || !sc.result.peer_saw.video)) fail(`the headless peer saw alice's state as ${JSON.stringify(sc.result.peer_saw)}`);
}

/** Spawn `icebreaker-peer ARGS…` with --json; its parsed stdout lines land in `events`. */
function spawnPeer(sc, args) {
  const ws = `${BASE.replace(/^http/, 'ws')}/ws`;
  const child = spawn(opt.peer, ['--server', ws, '--room', sc.room, '--json', ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  sc.children.push(child);
  const events = [];
  let buf = '';
  child.stdout.on('data', (d) => {
    buf += d;
    for (let i; (i = buf.indexOf('\n')) >= 0; buf = buf.slice(i + 1)) { try { events.push(JSON.parse(buf.slice(0, i))); } catch { /* not JSON */ } }
  });
  child.stderr.on('data', (d) => { if (opt.verbose) process.stderr.write(`[peer] ${d}`); });
  const done = new Promise((resolve) => child.on('exit', (code) => resolve(code)));
  return { events, done };
}

async function shareScenario(sc) {
  if (!opt.peer) fail('the share scenario needs --peer PATH');
  const r = sc.result;
  // No camera or microphone: the only video this page will ever send is the screen.
  const a = await sc.open(await sc.launch(), 'alice', { query: '&media=0' });
  await sc.until(a, 'joined', () => window.icebreaker.state === 'joined');
  // The peer joins second, so it is the newcomer and offers (audio and data, no video):
  // it becomes the DTLS server when the page answers `a=setup:active`.
  const robo = spawnPeer(sc, ['--timeout', '60s', '--name', 'robo', 'media', '--no-video', '--duration', '25s', '--expect-frames', '15']);
  await connected(sc, a, 1);
  await sleep(1000);
  r.video_before_share = robo.events.filter((e) => e.event === 'track' && /video/.test(e.kind)).length;
  if (r.video_before_share) fail('the headless peer got video before the share started');
  sc.stage = 'alice: share the screen';
  await a.click('#btn-screen');
  r.sharing = await sc.until(a, 'sharing', () => window.icebreaker.localTracks().find((t) => t.kind === 'video' && t.readyState === 'live')?.label ?? null);
  const t0 = Date.now();
  sc.stage = 'robo: a video track arrives';
  while (!robo.events.some((e) => e.event === 'track' && /video/.test(e.kind))) {
    if (Date.now() - t0 > 15000) fail(`no video track at the headless peer 15 s after the share began (page log: ${JSON.stringify(await a.evaluate(() => window.icebreaker.peers()))})`);
    await sleep(100);
  }
  r.track_after_ms = Date.now() - t0;
  // The page applied the peer's answer to its re-offer (a refused one rolls back to stable
  // with the share unsent): the connection stays up and its signaling state is stable.
  r.page_peer = await a.evaluate(() => window.icebreaker.peers()[0]);
  if (r.page_peer?.connectionState !== 'connected') fail(`the call dropped: ${JSON.stringify(r.page_peer)}`);
  sc.stage = 'robo: media report';
  r.peer_exit = await robo.done;
  const report = robo.events.find((e) => e.event === 'media-report');
  r.peer_video = report?.tracks?.find((t) => /video/.test(t.kind)) ?? null;
  if (r.peer_exit !== 0) fail(`icebreaker-peer exited with ${r.peer_exit}: ${JSON.stringify(report)}`);
  if (!(r.peer_video?.frames >= 15)) fail(`the headless peer's video: ${JSON.stringify(r.peer_video)}`);
}

async function shotsScenario(sc) {
  if (!opt.screenshots) fail('the shots scenario needs --screenshots DIR');
  const r = sc.result;
  const names = ['alice', 'bob', 'carol'];
  const ctxs = {};
  for (const n of names) ctxs[n] = await sc.launch('fake', { clip: n });
  const a = await sc.open(ctxs.alice, 'alice');
  const b = await sc.open(ctxs.bob, 'bob');
  await connected(sc, a, 1);
  await connected(sc, b, 1);
  await videoFlows(sc, b);
  await chat(sc, a, [b], 'Morning! Did the build go green?');
  await chat(sc, b, [a], 'Yes, and the tiles now show who is muted');
  await tileIs(sc, b, 'alice', { hasVideo: true }, 8000);
  r.screenshot_2 = await screenshot(b, 'screenshot-2.png');
  await b.click('#chat-close');
  await b.setViewportSize({ width: 390, height: 844 });
  await sleep(800);
  r.screenshot_phone = await screenshot(b, 'screenshot-phone.png');
  await b.setViewportSize({ width: 844, height: 390 });
  await sleep(800);
  r.screenshot_phone_landscape = await screenshot(b, 'screenshot-phone-landscape.png');
  await b.setViewportSize({ width: 1280, height: 720 });
  const c = await sc.open(ctxs.carol, 'carol');
  for (const p of [a, b, c]) await connected(sc, p, 2);
  await videoFlows(sc, a);
  await c.click('#btn-mic'); // one of them muted, to show the icon
  await b.click('#btn-board');
  await draw(b, [[0.15, 0.55], [0.25, 0.35], [0.38, 0.6], [0.5, 0.4], [0.62, 0.62], [0.75, 0.38]]);
  await draw(b, [[0.2, 0.78], [0.7, 0.78]]);
  await sc.until(a, 'the board open with bob\'s drawing', () => !document.querySelector('#board').hidden && window.icebreaker.board().strokes.length >= 2);
  const box = await c.locator('#board-surface').boundingBox().catch(() => null);
  if (box) await c.mouse.move(box.x + box.width * 0.8, box.y + box.height * 0.3, { steps: 8 });
  await tileIs(sc, a, 'carol', { micOff: true, hasVideo: true }, 5000);
  r.screenshot_3 = await screenshot(a, 'screenshot-3.png');
  // The pre-join screen of someone about to join.
  const d = await sc.goto(await sc.launch('fake', { clip: 'dana' }), 'dana', `/?room=${sc.room}`);
  await sc.until(d, 'pre-join preview', () => document.querySelector('#prejoin-tile').classList.contains('has-video'));
  await d.fill('#pj-name', 'Dana');
  // The generated clip's device label is its file path: say what it is instead.
  await d.evaluate(() => { for (const o of document.querySelectorAll('#pj-cam-select option')) if (o.textContent.endsWith('.y4m')) o.textContent = 'Camera (test clip)'; });
  r.screenshot_prejoin = await screenshot(d, 'screenshot-prejoin.png');
}

// ---- Main

const runs = {
  state: stateScenario,
  full: fullScenario,
  restart: restartScenario,
  prejoin: prejoinScenario,
  a11y: a11yScenario,
  board: boardScenario,
  peer: peerScenario,
  share: shareScenario,
  shots: shotsScenario,
};

let allOk = true;
process.on('exit', () => { if (clipDir) fs.rmSync(clipDir, { recursive: true, force: true }); });
for (const name of wanted) {
  const sc = new Scenario(name);
  const ok = await Promise.race([
    sc.run(runs[name]),
    sleep(timeoutMs + 20000).then(() => { sc.report({ scenario: name, ok: false, error: `hung past ${timeoutMs} ms (stage: ${sc.stage})` }); return false; }),
  ]);
  allOk &&= ok;
}
process.exit(allOk ? 0 : 1);
