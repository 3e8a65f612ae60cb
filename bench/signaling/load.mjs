#!/usr/bin/env node
// load.mjs — signaling-only load client for Icebreaker signaling (protocol v1) and the PeerJS
// server, so both can be driven by the same client in the same run and reported as a ratio.
//
//   node load.mjs idle       --target ours|peerjs --url URL --connections N [--hold-s 5]
//   node load.mjs throughput --target ours|peerjs --url URL --pairs P --rate MSGS_PER_S
//                            --duration-s D [--size 500] [--inflight 8] [--bidir]
//   node load.mjs report RESULTS.jsonl        (Markdown table from run.sh's results)
//
// URL: ours   ws://127.0.0.1:PORT/ws
//      peerjs ws://127.0.0.1:PORT        (/peerjs?key=..&id=..&token=.. is appended)
// Common: [--pid PID|auto] [--concurrency 500] [--timeout-s S] [--heartbeat-s 25]
//         [--per-source 20000] [--open-timeout-s 15] [--deflate] [--key peerjs] [--quiet]
//
// Output: progress on stderr, ONE JSON line on stdout. Exit 0 = clean run; 1 = the run
// finished but something failed (connection/handshake failures, server error messages,
// unexpected closes, lost messages, order or seq violations: see "failures"); 2 = usage or
// environment error (no JSON line). Every run is bounded: counts are capped and a watchdog
// ends the process after --timeout-s. Only loopback targets are accepted.
//
// Server-side figures come from /proc of the server process (same machine): RSS from
// /proc/PID/status (VmRSS), CPU from /proc/PID/stat (utime+stime, all threads, CLK_TCK=100).
// Without --pid, the process listening on the URL's port is found through /proc/net/tcp*.
import { parseArgs } from 'node:util';
import { readFileSync, readdirSync, readlinkSync, writeSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { performance } from 'node:perf_hooks';
import WebSocket from 'ws';

const CLK_TCK = 100;
const LIMITS = { connections: 200_000, pairs: 20_000, rate: 1_000_000, durationS: 600, holdS: 600 };

// ---------------------------------------------------------------------------------------------
// arguments

function usage(msg) {
  if (msg) console.error(`load.mjs: ${msg}`);
  console.error('usage: node load.mjs idle|throughput --target ours|peerjs --url ws://127.0.0.1:PORT[/ws] ... | report FILE');
  console.error('       (see the header of load.mjs or README.md for all options)');
  process.exit(2);
}

let parsed;
try {
  parsed = parseArgs({
    allowPositionals: true,
    options: {
      target: { type: 'string' },
      url: { type: 'string' },
      pid: { type: 'string', default: 'auto' },
      connections: { type: 'string' },
      'hold-s': { type: 'string', default: '5' },
      pairs: { type: 'string' },
      rate: { type: 'string' },
      'duration-s': { type: 'string' },
      size: { type: 'string', default: '500' },
      inflight: { type: 'string', default: '8' },
      'drain-s': { type: 'string', default: '5' },
      bidir: { type: 'boolean', default: false },
      concurrency: { type: 'string', default: '500' },
      'timeout-s': { type: 'string' },
      'heartbeat-s': { type: 'string', default: '25' },
      'per-source': { type: 'string', default: '20000' },
      'open-timeout-s': { type: 'string', default: '15' },
      deflate: { type: 'boolean', default: false },
      key: { type: 'string', default: 'peerjs' },
      label: { type: 'string' },
      quiet: { type: 'boolean', default: false },
      help: { type: 'boolean', short: 'h' },
    },
  });
} catch (e) {
  usage(e.message);
}
const A = parsed.values;
const mode = parsed.positionals[0];
if (A.help || !mode) usage();

function num(name, { def, min = 0, max = Infinity, int = true } = {}) {
  const raw = A[name] ?? def;
  if (raw === undefined) usage(`--${name} is required for ${mode}`);
  const v = Number(raw);
  if (!Number.isFinite(v) || (int && !Number.isInteger(v)) || v < min || v > max)
    usage(`--${name} must be ${int ? 'an integer' : 'a number'} in [${min}, ${max}], got ${raw}`);
  return v;
}

const log = A.quiet ? () => {} : (...m) => console.error(`[load ${mode} ${A.target ?? ''}]`, ...m);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// ---------------------------------------------------------------------------------------------
// /proc helpers: the server runs on this machine, so its own accounting is the ground truth.

function procRssKib(pid) {
  if (!pid) return null;
  try {
    const s = readFileSync(`/proc/${pid}/status`, 'utf8');
    const rss = /^VmRSS:\s+(\d+) kB/m.exec(s);
    const hwm = /^VmHWM:\s+(\d+) kB/m.exec(s);
    return { rss: rss ? Number(rss[1]) : null, hwm: hwm ? Number(hwm[1]) : null };
  } catch {
    return null;
  }
}

function procCpuTicks(pid) {
  if (!pid) return null;
  try {
    const s = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // comm (field 2) may contain spaces and parentheses: split after the last ')'.
    const rest = s.slice(s.lastIndexOf(')') + 2).split(' ');
    return Number(rest[11]) + Number(rest[12]); // utime + stime (fields 14, 15)
  } catch {
    return null;
  }
}

function openFilesLimit() {
  try {
    const m = /^Max open files\s+(\d+|unlimited)/m.exec(readFileSync('/proc/self/limits', 'utf8'));
    return m[1] === 'unlimited' ? Infinity : Number(m[1]);
  } catch {
    return Infinity;
  }
}

/** pid of the process with a listening TCP socket on `port` (this network namespace). */
function findListenerPid(port) {
  const inodes = new Set();
  for (const f of ['/proc/net/tcp', '/proc/net/tcp6']) {
    let text;
    try {
      text = readFileSync(f, 'utf8');
    } catch {
      continue;
    }
    for (const line of text.split('\n').slice(1)) {
      const c = line.trim().split(/\s+/);
      if (c.length > 9 && c[3] === '0A' && parseInt(c[1].split(':')[1], 16) === port) inodes.add(c[9]);
    }
  }
  if (inodes.size === 0) return null;
  for (const pid of readdirSync('/proc')) {
    if (!/^\d+$/.test(pid) || Number(pid) === process.pid) continue;
    let fds;
    try {
      fds = readdirSync(`/proc/${pid}/fd`);
    } catch {
      continue;
    }
    for (const fd of fds) {
      try {
        const m = /^socket:\[(\d+)\]$/.exec(readlinkSync(`/proc/${pid}/fd/${fd}`));
        if (m && inodes.has(m[1])) return Number(pid);
      } catch {
        /* fd closed meanwhile */
      }
    }
  }
  return null;
}

// ---------------------------------------------------------------------------------------------
// statistics

function percentiles(values, qs) {
  const a = Float64Array.from(values).sort();
  const out = {};
  for (const [name, q] of qs) out[name] = a.length ? round3(a[Math.min(a.length - 1, Math.max(0, Math.ceil(q * a.length) - 1))]) : null;
  return out;
}
const round3 = (x) => (x === null || x === undefined || !Number.isFinite(x) ? null : Math.round(x * 1000) / 1000);
const median = (xs) => {
  const a = xs.filter((x) => typeof x === 'number' && Number.isFinite(x)).sort((p, q) => p - q);
  return a.length ? (a.length % 2 ? a[(a.length - 1) / 2] : (a[a.length / 2 - 1] + a[a.length / 2]) / 2) : null;
};

// ---------------------------------------------------------------------------------------------
// report mode: no network at all, so it is handled before any target checks.

if (mode === 'report') {
  report(parsed.positionals[1] ?? usage('report needs a results file'));
  process.exit(0);
}

/**
 * run.sh appends one line per load: {"server","load","rep","rc","r":<load.mjs JSON or null>}.
 * Prints medians over repetitions for each server, and ours/PeerJS ratios.
 */
function report(file) {
  const rows = readFileSync(file, 'utf8').split('\n').filter((l) => l.trim()).map((l) => JSON.parse(l));
  const servers = ['peerjs', 'ours'].filter((s) => rows.some((r) => r.server === s));
  const pick = (server, load, field) => median(rows.filter((r) => r.server === server && r.load === load && r.r).map((r) => r.r[field]));
  const cols = [
    // [header, load, field, decimals]
    ['idle KiB/conn', 'idle', 'kib_per_conn', 2],
    ['open conn/s', 'idle', 'open_rate_per_s', 0],
    ['µs CPU/conn', 'idle', 'us_cpu_per_conn', 1],
    ['paced msg/s', 'paced', 'achieved_msgs_per_s', 0],
    ['paced lost', 'paced', 'lost', 0],
    ['paced p50 ms', 'paced', 'latency_ms_p50', 3],
    ['paced p99 ms', 'paced', 'latency_ms_p99', 3],
    ['paced µs CPU/msg', 'paced', 'us_cpu_per_msg', 1],
    ['paced server CPU %', 'paced', 'server_cpu_pct', 0],
    ['max msg/s', 'max', 'achieved_msgs_per_s', 0],
    ['max p99 ms', 'max', 'latency_ms_p99', 3],
    ['max µs CPU/msg', 'max', 'us_cpu_per_msg', 1],
    ['max server CPU %', 'max', 'server_cpu_pct', 0],
  ];
  const fmt = (v, d) => (v === null ? '–' : v.toFixed(d));
  const lines = [];
  lines.push(`| server | ${cols.map((c) => c[0]).join(' | ')} |`);
  lines.push(`|---|${cols.map(() => '---:').join('|')}|`);
  const vals = {};
  for (const s of servers) {
    vals[s] = cols.map(([, load, field]) => pick(s, load, field));
    lines.push(`| ${s === 'ours' ? 'Icebreaker' : 'PeerJS 1.0.2'} | ${vals[s].map((v, i) => fmt(v, cols[i][3])).join(' | ')} |`);
  }
  if (vals.ours && vals.peerjs) {
    const ratio = vals.ours.map((v, i) => (v !== null && vals.peerjs[i] ? `${(v / vals.peerjs[i]).toFixed(2)}×` : '–'));
    lines.push(`| ours / PeerJS | ${ratio.join(' | ')} |`);
  }
  const reps = new Set(rows.map((r) => r.rep)).size;
  lines.push('');
  lines.push(`Medians of ${reps} repetition(s). Lower is better except open conn/s and msg/s. ` +
    'CPU figures are the server process\'s own (utime+stime) per connection opened / message delivered.');
  const failed = rows.filter((r) => r.rc !== 0);
  for (const f of failed)
    lines.push(`- ${f.server} ${f.load} rep ${f.rep}: exit ${f.rc}${f.r ? ` failures ${JSON.stringify(f.r.failures)}` : ' (no result)'}`);
  console.log(lines.join('\n'));
}

// ---------------------------------------------------------------------------------------------
// target and common setup

if (mode !== 'idle' && mode !== 'throughput') usage(`unknown mode ${mode}`);
if (A.target !== 'ours' && A.target !== 'peerjs') usage('--target must be ours or peerjs');
if (!A.url) usage('--url is required');

let url;
try {
  url = new URL(A.url);
} catch {
  usage(`bad --url ${A.url}`);
}
if (url.protocol !== 'ws:') usage('--url must be ws://');
// Load goes to this machine only: 127.0.0.0/8 or ::1.
const host = url.hostname === 'localhost' ? '127.0.0.1' : url.hostname.replace(/^\[|\]$/g, '');
const v4loop = /^127\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})$/.exec(host);
if (!(host === '::1' || (v4loop && v4loop.slice(1).every((o) => Number(o) <= 255)))) usage(`refusing non-loopback target ${url.hostname}`);
url.hostname = host.includes(':') ? `[${host}]` : host;
const port = Number(url.port || 80);

const concurrency = num('concurrency', { min: 1, max: 5000 });
const heartbeatS = num('heartbeat-s', { min: 0, max: 3600 });
const perSource = num('per-source', { min: 100, max: 28_000 });
const openTimeoutMs = num('open-timeout-s', { min: 1, max: 300 }) * 1000;
const runId = randomBytes(6).toString('base64url').replace(/[^A-Za-z0-9]/g, 'x');

let serverPid = null;
if (A.pid === 'auto') {
  serverPid = findListenerPid(port);
  if (!serverPid) log(`no process found listening on port ${port}: server figures will be null`);
} else {
  serverPid = num('pid', { min: 1 });
  if (!procCpuTicks(serverPid)) usage(`no such process ${serverPid}`);
}

const failures = {};
const fail = (kind, n = 1) => {
  failures[kind] = (failures[kind] ?? 0) + n;
};

/**
 * Source address for connection k. Linux gives one source IP ~28k ephemeral ports towards a
 * given destination, so connections past --per-source are bound to 127.0.0.2, .3, …: all of
 * 127.0.0.0/8 is local. ::1 has no such range, so IPv6 targets are capped at --per-source.
 */
function sourceAddress(k) {
  const s = Math.floor(k / perSource);
  if (s === 0) return undefined;
  if (host === '::1') throw new Error('IPv6 loopback cannot spread source addresses');
  return `127.0.0.${1 + s}`;
}

// ---------------------------------------------------------------------------------------------
// protocol adapters: everything that differs between the two servers.

const PAD_CHAR = 'x'; // needs no JSON escaping, so frames can be built by concatenation

const protocols = {
  // Icebreaker signaling v1: join a room, learn peer ids from joined/peer-joined, route by id.
  ours: {
    url: () => url.href,
    onOpen(c) {
      c.ws.send(JSON.stringify({ type: 'join', room: c.room }));
    },
    onMessage(c, msg) {
      // Every server message carries a per-connection sequence number (used for resume).
      if (typeof msg.seq !== 'number') fail('seq_missing');
      else if (msg.seq <= c.lastSeq) fail('seq_not_increasing');
      else c.lastSeq = msg.seq;
      switch (msg.type) {
        case 'signal':
          return c.onSignal?.(msg.data, msg.from);
        case 'joined':
          c.id = msg.id;
          for (const p of msg.peers ?? []) c.addPeer(p.id);
          return c.ready();
        case 'peer-joined':
          return c.addPeer(msg.id);
        case 'peer-left':
          return fail(`peer_left_${msg.reason}`);
        case 'pong':
          return;
        case 'error':
          fail(`server_error_${msg.code}`); // rate-limited shows up here as server_error_rate-limited
          return c.state === 'opening' ? c.reject(new Error(`server error ${msg.code}: ${msg.message}`)) : undefined;
        default:
          return fail('unknown_message_type');
      }
    },
    /** frame = prefix + t + '","n":' + n + '}}' */
    signalPrefix: (to, pad) => `{"type":"signal","to":${JSON.stringify(to)},"data":{"sdp":{"type":"offer","sdp":"${pad}"},"t":"`,
    heartbeat: '{"type":"ping"}',
  },

  // PeerJS server: ids are chosen by the client and passed in the URL; OPEN confirms it.
  peerjs: {
    url(c) {
      const u = new URL(url.href);
      if (!u.pathname.endsWith('/peerjs')) u.pathname = `${u.pathname.replace(/\/$/, '')}/peerjs`;
      u.search = new URLSearchParams({ key: A.key, id: c.id, token: c.token }).toString();
      return u.href;
    },
    onOpen() {},
    onMessage(c, msg) {
      switch (msg.type) {
        case 'OFFER':
        case 'ANSWER':
        case 'CANDIDATE':
          return c.onSignal?.(msg.payload, msg.src);
        case 'OPEN':
          return c.ready();
        case 'ERROR':
        case 'ID-TAKEN':
          fail(`server_error_${msg.type === 'ERROR' ? msg.payload?.msg ?? 'ERROR' : 'ID-TAKEN'}`);
          return c.state === 'opening' ? c.reject(new Error(`server error: ${JSON.stringify(msg.payload)}`)) : undefined;
        case 'EXPIRE': // the server gave up on a queued message: the destination was unknown
        case 'LEAVE':
          return fail(`server_${msg.type}`);
        default:
          return fail('unknown_message_type');
      }
    },
    signalPrefix: (to, pad) => `{"type":"OFFER","dst":${JSON.stringify(to)},"payload":{"sdp":{"type":"offer","sdp":"${pad}"},"t":"`,
    // PeerJS drops clients that send no HEARTBEAT for alive_timeout (90 s), whatever else they send.
    heartbeat: '{"type":"HEARTBEAT"}',
  },
};
const P = protocols[A.target];

// ---------------------------------------------------------------------------------------------
// connections

const conns = [];
let closing = false;

class Conn {
  /** k: index (source address, naming); room: ours' room name; id: PeerJS' client-chosen id */
  constructor(k, { room, id } = {}) {
    this.k = k;
    this.room = room;
    this.id = id ?? null;
    this.token = randomBytes(6).toString('hex');
    this.peers = [];
    this.lastSeq = 0;
    this.lastBeat = 0;
    this.state = 'new';
    this.onSignal = null;
    this.peerWaiters = [];
    conns.push(this);
  }

  /** Resolves once the server confirmed membership (ours: joined; PeerJS: OPEN). */
  open() {
    this.state = 'opening';
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => this.reject(new Error('open timeout')), openTimeoutMs);
      this.ready = () => {
        clearTimeout(timer);
        this.state = 'open';
        this.lastBeat = Date.now();
        resolve(this);
      };
      this.reject = (err) => {
        clearTimeout(timer);
        if (this.state !== 'opening') return;
        this.state = 'failed';
        this.ws?.terminate();
        reject(err);
      };
      const opts = { perMessageDeflate: A.deflate, handshakeTimeout: openTimeoutMs };
      const src = sourceAddress(this.k);
      if (src) opts.localAddress = src;
      const ws = (this.ws = new WebSocket(P.url(this), opts));
      ws.on('open', () => P.onOpen(this));
      ws.on('message', (data, isBinary) => {
        if (isBinary) return fail('binary_frame');
        let msg;
        try {
          msg = JSON.parse(data.toString());
        } catch {
          return fail('bad_json_from_server');
        }
        P.onMessage(this, msg);
      });
      ws.on('unexpected-response', (_req, res) => this.reject(new Error(`HTTP ${res.statusCode}`)));
      // After a failed open ws may still report the aborted handshake: counted once, as open_failed.
      ws.on('error', (err) => {
        if (this.state === 'opening') this.reject(err);
        else if (this.state === 'open' && !closing) fail(`socket_error_${err.code ?? 'other'}`);
      });
      ws.on('close', (code) => {
        if (this.state === 'opening') this.reject(new Error(`closed during open (${code})`));
        else if (this.state === 'open' && !closing) fail('unexpected_close');
        this.state = 'closed';
      });
    });
  }

  addPeer(id) {
    if (typeof id !== 'string') return fail('bad_peer_id');
    this.peers.push(id);
    for (const w of this.peerWaiters.splice(0)) w(id);
  }

  /** The first peer id this connection learns (ours: from joined.peers or peer-joined). */
  firstPeer() {
    if (this.peers.length) return Promise.resolve(this.peers[0]);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error('peer never joined')), openTimeoutMs);
      this.peerWaiters.push((id) => {
        clearTimeout(timer);
        resolve(id);
      });
    });
  }
}

/** Keeps `concurrency` handshakes in flight; stops starting new ones after too many failures. */
async function openAll(n, make) {
  const maxFailures = Math.max(20, Math.ceil(n / 100));
  let next = 0;
  let failed = 0;
  let opened = 0;
  let lastErr = null;
  const t0 = performance.now();
  const progress = setInterval(() => log(`opened ${opened}/${n} (${Math.round(opened / ((performance.now() - t0) / 1000))}/s), failed ${failed}`), 1000);
  const worker = async () => {
    while (next < n && failed < maxFailures) {
      const i = next++;
      try {
        await make(i);
        opened++;
      } catch (e) {
        failed++;
        lastErr = e;
        fail(`open_failed_${e.code ?? e.message.replace(/[^A-Za-z0-9]+/g, '_').slice(0, 40)}`);
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(concurrency, n) }, worker));
  clearInterval(progress);
  if (failed) log(`${failed} opens failed, last: ${lastErr?.message}`);
  return { opened, failed };
}

/** Keeps long runs alive (PeerJS closes silent clients after 90 s), each connection on its own clock. */
function startHeartbeats() {
  if (!heartbeatS) return () => {};
  const t = setInterval(() => {
    const now = Date.now();
    for (const c of conns) {
      if (c.state === 'open' && now - c.lastBeat >= heartbeatS * 1000) {
        c.lastBeat = now;
        c.ws.send(P.heartbeat);
      }
    }
  }, 1000);
  return () => clearInterval(t);
}

function checkFdLimit(needed) {
  const lim = openFilesLimit();
  if (needed + 64 > lim) usage(`need ~${needed + 64} file descriptors, limit is ${lim}: raise it with ulimit -n (run.sh does)`);
}

function finish(result) {
  closing = true;
  const ok = Object.keys(failures).length === 0;
  const line = JSON.stringify({
    tool: 'icebreaker-signaling-load',
    mode,
    target: A.target,
    label: A.label ?? null,
    url: url.href,
    server_pid: serverPid,
    // permessage-deflate is only offered with --deflate; this shows whether a server took it.
    ws_extensions: conns.find((c) => c.state === 'open')?.ws.extensions ?? null,
    ...result,
    ok,
    failures,
  });
  writeSync(1, `${line}\n`);
  for (const c of conns) c.ws?.terminate();
  process.exit(ok ? 0 : 1);
}

// Watchdog: the run ends by itself even if the server stops answering.
function watchdog(seconds, partial) {
  setTimeout(() => {
    log(`timeout after ${seconds} s`);
    fail('timeout');
    finish(partial());
  }, seconds * 1000).unref();
}
for (const sig of ['SIGINT', 'SIGTERM']) process.on(sig, () => process.exit(130));

// ---------------------------------------------------------------------------------------------
// idle: memory and CPU cost of N joined, silent connections

async function idle() {
  const n = num('connections', { min: 1, max: LIMITS.connections });
  const holdS = num('hold-s', { min: 0, max: LIMITS.holdS, int: false });
  if (host === '::1' && n > perSource) usage(`::1 targets are limited to --per-source (${perSource}) connections`);
  checkFdLimit(n);
  const timeoutS = num('timeout-s', { def: String(Math.ceil(60 + n / 200 + holdS)), min: 1, max: 7200 });
  const result = { conns: 0, requested: n };
  watchdog(timeoutS, () => result);

  const rss0 = procRssKib(serverPid);
  const cpu0 = procCpuTicks(serverPid);
  const t0 = performance.now();
  const stopBeats = startHeartbeats();
  const { opened } = await openAll(n, (k) =>
    A.target === 'ours'
      ? new Conn(k, { room: `idle-${runId}-${k >> 1}` }).open() // rooms of two members
      : new Conn(k, { id: `idle-${runId}-${k}` }).open(),
  );
  const openS = (performance.now() - t0) / 1000;
  const cpu1 = procCpuTicks(serverPid);
  result.conns = opened;
  result.open_s = round3(openS);
  result.open_rate_per_s = Math.round(opened / openS);
  result.us_cpu_per_conn = cpu0 !== null && cpu1 !== null && opened ? round3(((cpu1 - cpu0) * 1e6) / CLK_TCK / opened) : null;
  log(`${opened} open in ${openS.toFixed(2)} s; holding ${holdS} s`);

  // Settle: let the server finish per-connection work and the allocator quiet down.
  await sleep(holdS * 1000);
  stopBeats();
  const rss1 = procRssKib(serverPid);
  const cpu2 = procCpuTicks(serverPid);
  const still = conns.filter((c) => c.state === 'open').length;
  if (still !== opened) fail('closed_while_idle', opened - still);
  Object.assign(result, {
    conns_open_at_end: still,
    rss_before_kib: rss0?.rss ?? null,
    rss_after_kib: rss1?.rss ?? null,
    rss_peak_kib: rss1?.hwm ?? null,
    kib_per_conn: rss0 && rss1 && opened ? round3((rss1.rss - rss0.rss) / opened) : null,
    hold_s: holdS,
    // What N silent connections cost the server per second (timers, keepalive sweeps).
    server_cpu_pct_hold: cpu1 !== null && cpu2 !== null && holdS > 0 ? round3(((cpu2 - cpu1) / CLK_TCK / holdS) * 100) : null,
    concurrency,
  });
  finish(result);
}

// ---------------------------------------------------------------------------------------------
// throughput: signals between pair members, measured at the receiver in the same process

async function throughput() {
  const pairs = num('pairs', { min: 1, max: LIMITS.pairs });
  const rate = num('rate', { min: 0, max: LIMITS.rate });
  const durationS = num('duration-s', { min: 0.1, max: LIMITS.durationS, int: false });
  const size = num('size', { min: 64, max: 65536 });
  const inflight = num('inflight', { min: 1, max: 10_000 });
  const drainS = num('drain-s', { min: 0, max: 120, int: false });
  checkFdLimit(2 * pairs);
  const timeoutS = num('timeout-s', { def: String(Math.ceil(60 + pairs / 100 + durationS + drainS)), min: 1, max: 7200 });
  const result = { pairs, streams: 0, rate_target: rate, duration_s: durationS, size };
  watchdog(timeoutS, () => result);

  // Pair up. Ours: the second member learns the first from "joined", the first learns the
  // second from "peer-joined". PeerJS: ids are ours to choose, so each side knows the other.
  const pairConns = new Array(pairs);
  const { failed } = await openAll(pairs, async (i) => {
    if (A.target === 'ours') {
      const room = `tp-${runId}-${i}`;
      const a = await new Conn(2 * i, { room }).open();
      const b = await new Conn(2 * i + 1, { room }).open();
      pairConns[i] = { a, b, aTo: await a.firstPeer(), bTo: await b.firstPeer() };
      if (pairConns[i].aTo !== b.id || pairConns[i].bTo !== a.id) throw new Error('pair ids mismatch');
    } else {
      const a = new Conn(2 * i, { id: `tp-${runId}-${i}-a` });
      const b = new Conn(2 * i + 1, { id: `tp-${runId}-${i}-b` });
      await Promise.all([a.open(), b.open()]);
      pairConns[i] = { a, b, aTo: b.id, bTo: a.id };
    }
  });
  if (failed) {
    log('pair setup failed; not measuring');
    return finish(result);
  }
  const stopBeats = startHeartbeats();

  // One stream per direction in use. Padding sizes the whole frame to ~size bytes.
  const streams = [];
  for (const p of pairConns) {
    streams.push({ from: p.a, to: p.b, dst: p.aTo });
    if (A.bidir) streams.push({ from: p.b, to: p.a, dst: p.bTo });
  }
  const S = streams.length;
  const hrLen = process.hrtime.bigint().toString().length;
  let frameBytes = 0;
  const latencies = [];
  const sendLags = [];
  const MAX_SAMPLES = 20_000_000;
  let sent = 0;
  let delivered = 0;
  let orderViolations = 0;
  let gaps = 0;
  let lastDeliveryMs = 0;
  let sending = true;

  for (const [i, s] of streams.entries()) {
    const base = P.signalPrefix(s.dst, '').length + hrLen + '","n":0}}'.length;
    s.prefix = P.signalPrefix(s.dst, PAD_CHAR.repeat(Math.max(0, size - base)));
    frameBytes = s.prefix.length + hrLen + '","n":0}}'.length;
    s.n = 0; // next counter to send
    s.lastRecv = -1;
    s.inflight = 0;
    s.phase = i / S; // staggers senders across the schedule period
    // Each receiver connection has exactly one incoming stream, so per-stream order is per connection.
    s.to.onSignal = (data) => {
      const now = process.hrtime.bigint();
      const n = data?.n;
      if (typeof n !== 'number' || typeof data.t !== 'string') return fail('bad_payload');
      if (n <= s.lastRecv) orderViolations++;
      else {
        if (n !== s.lastRecv + 1) gaps++;
        s.lastRecv = n;
      }
      delivered++;
      lastDeliveryMs = performance.now();
      if (latencies.length < MAX_SAMPLES) latencies.push(Number(now - BigInt(data.t)) / 1e6);
      if (rate === 0) {
        s.inflight--;
        pump(s);
      }
    };
  }
  result.streams = S;
  result.frame_bytes = frameBytes;

  const sendOne = (s) => {
    s.from.ws.send(`${s.prefix}${process.hrtime.bigint()}","n":${s.n++}}}`);
    sent++;
  };
  // Window mode (rate 0): at most `inflight` undelivered messages per stream.
  const pump = (s) => {
    while (sending && s.inflight < inflight) {
      s.inflight++;
      sendOne(s);
    }
  };

  const cpu0 = procCpuTicks(serverPid);
  const cu0 = process.cpuUsage();
  const t0 = performance.now();
  const progress = setInterval(() => log(`sent ${sent} delivered ${delivered}`), 1000);

  if (rate === 0) {
    for (const s of streams) pump(s);
    await sleep(durationS * 1000);
    sending = false;
  } else {
    // Paced: message n of a stream is due at (n + phase) / perStreamRate seconds. A 1 ms timer
    // sends whatever is due; lateness is recorded so a saturated client shows up as send lag.
    const r = rate / S;
    const total = Math.round(r * durationS);
    await new Promise((resolve) => {
      const tick = () => {
        const el = (performance.now() - t0) / 1000;
        let done = true;
        for (const s of streams) {
          const due = Math.min(total, Math.max(0, Math.floor(el * r - s.phase) + 1));
          while (s.n < due) {
            if (sendLags.length < MAX_SAMPLES) sendLags.push((el - (s.n + s.phase) / r) * 1000);
            sendOne(s);
          }
          if (s.n < total) done = false;
        }
        if (done) resolve();
        else setTimeout(tick, 1);
      };
      tick();
    });
    sending = false;
  }
  const sendEndMs = performance.now();

  // Drain: wait for what is still in flight, up to drain-s.
  while (delivered < sent && performance.now() - sendEndMs < drainS * 1000) await sleep(5);
  clearInterval(progress);
  stopBeats();
  const cpu1 = procCpuTicks(serverPid);
  const cu1 = process.cpuUsage(cu0);
  const windowS = (Math.max(lastDeliveryMs, sendEndMs) - t0) / 1000;
  const lost = sent - delivered;
  if (lost > 0) fail('lost', lost);
  if (orderViolations) fail('order_violations', orderViolations);

  const lat = percentiles(latencies, [['p50', 0.5], ['p90', 0.9], ['p99', 0.99], ['max', 1]]);
  const lag = percentiles(sendLags, [['p99', 0.99], ['max', 1]]);
  const serverS = cpu0 !== null && cpu1 !== null ? (cpu1 - cpu0) / CLK_TCK : null;
  Object.assign(result, {
    mode_detail: rate === 0 ? `window ${inflight} in flight per stream` : 'paced',
    inflight: rate === 0 ? inflight : null,
    sent,
    delivered,
    lost,
    order_violations: orderViolations,
    gaps,
    achieved_msgs_per_s: Math.round(delivered / windowS),
    send_s: round3((sendEndMs - t0) / 1000),
    window_s: round3(windowS),
    latency_ms_p50: lat.p50,
    latency_ms_p90: lat.p90,
    latency_ms_p99: lat.p99,
    latency_ms_max: lat.max,
    send_lag_ms_p99: rate === 0 ? null : lag.p99,
    send_lag_ms_max: rate === 0 ? null : lag.max,
    server_cpu_s: round3(serverS),
    server_cpu_pct: serverS === null ? null : Math.round((serverS / windowS) * 100),
    us_cpu_per_msg: serverS === null || !delivered ? null : round3((serverS * 1e6) / delivered),
    client_cpu_pct: Math.round(((cu1.user + cu1.system) / 1e6 / windowS) * 100),
  });
  finish(result);
}

try {
  await (mode === 'idle' ? idle() : throughput());
} catch (e) {
  console.error(`load.mjs: ${e.stack ?? e}`);
  fail('exception');
  finish({});
}
