#!/usr/bin/env node
// turn-relay.mjs — prove that a TURN server relays real Chromium WebRTC traffic.
//
//   node turn-relay.mjs --url 'turn:127.0.0.1:3478?transport=udp' --username U --credential P [--timeout-ms 30000]
//                       [--ignore-certificate-errors]   (turns: with a test certificate)
//
// Two RTCPeerConnections in one page, both `iceTransportPolicy: "relay"` with only the given
// TURN server, so the sole way they can reach each other is through two allocations on it.
// Passes when a data channel carries messages both ways, the fake camera's video is decoded on
// the far side, and the selected candidate pair is relay <-> relay on both ends.
// Prints exactly one JSON line on stdout; exits 0 only on success. Diagnostics go to stderr
// (--verbose forwards the page's console).
import fs from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { chromium } from 'playwright-core';

const { values: opt } = parseArgs({
  options: {
    url: { type: 'string' },
    username: { type: 'string' },
    credential: { type: 'string' },
    'timeout-ms': { type: 'string', default: '30000' },
    chromium: { type: 'string', default: process.env.CHROMIUM ?? '/usr/bin/chromium' },
    verbose: { type: 'boolean', default: false },
    // Chromium checks a turns: server's certificate like a web server's; a test's
    // self-signed certificate needs this (the Rust tests check the chain themselves).
    'ignore-certificate-errors': { type: 'boolean', default: false },
  },
});
const timeoutMs = Number(opt['timeout-ms']);

// The result keeps whatever was reached, so a failure or timeout still says how far it got.
const result = {
  ok: false, connect_ms: null, framesDecoded: 0, dc_messages: { pc1_to_pc2: 0, pc2_to_pc1: 0 },
  local_type: null, remote_type: null, relay_protocol: null, error: null,
};
if (!opt.url || opt.username === undefined || opt.credential === undefined || !(timeoutMs > 0)) {
  result.error = 'usage: node turn-relay.mjs --url TURN_URL --username U --credential P [--timeout-ms N]';
  console.log(JSON.stringify(result));
  process.exit(2);
}

// ---- In-page test. Serialized into the HTML below, so it must not use anything from this module.
function pageMain() {
  const MESSAGES = 5; // per direction, on a reliable ordered channel: all must arrive, in order
  const progress = (window.progress = {
    stage: 'loaded', connect_ms: null, framesDecoded: 0,
    dc_messages: { pc1_to_pc2: 0, pc2_to_pc1: 0 }, ice_errors: [],
  });

  window.runTurnTest = async ({ url, username, credential }) => {
    const config = { iceTransportPolicy: 'relay', iceServers: [{ urls: url, username, credential }] };
    const pc1 = new RTCPeerConnection(config);
    const pc2 = new RTCPeerConnection(config);
    // Any hard failure (ICE failed, nothing gathered, addIceCandidate error) rejects this; every
    // wait below races against it so the test fails fast instead of sitting until the timeout.
    let fail;
    const failed = new Promise((_, reject) => { fail = reject; });
    failed.catch(() => {}); // a failure before anyone awaits it is not an "uncaught" page error
    const until = (p) => Promise.race([p, failed]);

    wire(pc1, pc2, 'pc1');
    wire(pc2, pc1, 'pc2');
    function wire(from, to, name) {
      // Trickle candidates straight across, but only once `to` has its remote description:
      // addIceCandidate before setRemoteDescription throws.
      let remoteSet;
      to.remoteReady = new Promise((r) => { remoteSet = r; });
      to.markRemoteSet = remoteSet;
      let gathered = 0;
      from.addEventListener('icecandidate', ({ candidate }) => {
        if (!candidate) return;
        gathered++;
        to.remoteReady.then(() => to.addIceCandidate(candidate)).catch(fail);
      });
      // 401/403/timeouts from the TURN server land here; keep them for the error message.
      from.addEventListener('icecandidateerror', (e) => {
        const text = `${name}: ${e.errorCode} ${e.errorText} (${e.url})`;
        if (!progress.ice_errors.includes(text)) progress.ice_errors.push(text);
      });
      // Relay-only: if gathering ends with no candidate, no connection can ever form.
      from.addEventListener('icegatheringstatechange', () => {
        if (from.iceGatheringState === 'complete' && gathered === 0) {
          fail(new Error(`${name} gathered no relay candidate`));
        }
      });
      from.addEventListener('connectionstatechange', () => {
        if (from.connectionState === 'failed') fail(new Error(`${name} connection failed`));
      });
    }
    const connected = (pc) => new Promise((resolve) => {
      const check = () => pc.connectionState === 'connected' && resolve(performance.now());
      pc.addEventListener('connectionstatechange', check);
      check();
    });

    // Data channel: pc1 sends numbered pings once open; pc2 answers each ping on the same channel.
    // pc2 only ever replies to data it has received: twice in a few hundred runs, messages pc2
    // sent from inside its 'datachannel' event (readyState already 'open') never reached pc1.
    const receiveAll = (ch, prefix, key, onEach = () => {}) => new Promise((resolve) => {
      ch.addEventListener('message', ({ data }) => {
        const n = progress.dc_messages[key];
        if (data !== `${prefix} ${n}`) return; // ordered + reliable: a gap stalls the count
        progress.dc_messages[key]++;
        onEach(n);
        if (n + 1 === MESSAGES) resolve();
      });
    });
    const dc1 = pc1.createDataChannel('icebreaker-e2e');
    const toPc1 = receiveAll(dc1, 'reply', 'pc2_to_pc1');
    dc1.addEventListener('open', () => {
      for (let i = 0; i < MESSAGES; i++) dc1.send(`ping ${i}`);
    }, { once: true });
    const toPc2 = new Promise((resolve) => pc2.addEventListener('datachannel', ({ channel }) => {
      // Listen synchronously in the event, before any message event can be dispatched.
      receiveAll(channel, 'ping', 'pc1_to_pc2', (i) => channel.send(`reply ${i}`)).then(resolve);
    }));

    // Video: Chromium's fake camera (test pattern), rendered into a <video> so it gets decoded.
    progress.stage = 'getUserMedia';
    const camera = await navigator.mediaDevices.getUserMedia({ video: true });
    for (const track of camera.getTracks()) pc1.addTrack(track, camera);
    pc2.addEventListener('track', ({ track, streams }) => {
      const video = document.getElementById('remote');
      video.srcObject = streams[0] ?? new MediaStream([track]);
      video.play().catch(() => {}); // muted autoplay is allowed; decoding is checked via stats
    });

    try {
      progress.stage = 'negotiating';
      const t0 = performance.now();
      await pc1.setLocalDescription(); // implicit createOffer
      await pc2.setRemoteDescription(pc1.localDescription);
      pc2.markRemoteSet();
      await pc2.setLocalDescription(); // implicit createAnswer
      await pc1.setRemoteDescription(pc2.localDescription);
      pc1.markRemoteSet();

      progress.stage = 'connecting';
      const [t1] = await until(Promise.all([connected(pc1), connected(pc2)]));
      progress.connect_ms = Math.round(t1 - t0);

      progress.stage = 'data channel';
      await until(Promise.all([toPc1, toPc2]));

      progress.stage = 'video';
      while (progress.framesDecoded === 0) {
        await until(new Promise((r) => setTimeout(r, 100)));
        (await pc2.getStats()).forEach((s) => {
          if (s.type === 'inbound-rtp' && s.kind === 'video') progress.framesDecoded = s.framesDecoded ?? 0;
        });
      }

      progress.stage = 'selected pair';
      const [p1, p2] = [await selectedPair(pc1), await selectedPair(pc2)];
      const notRelay = [['pc1', p1], ['pc2', p2]].filter(([, p]) => p?.local_type !== 'relay' || p?.remote_type !== 'relay');
      if (notRelay.length) throw new Error(`selected pair is not relay<->relay: ${JSON.stringify({ pc1: p1, pc2: p2 })}`);
      progress.stage = 'done';
      const { connect_ms, framesDecoded, dc_messages } = progress;
      return { ok: true, connect_ms, framesDecoded, dc_messages, ...p1 };
    } finally {
      camera.getTracks().forEach((t) => t.stop());
      pc1.close();
      pc2.close();
    }
  };

  // The pair ICE is using: the transport's selectedCandidatePairId, else a nominated succeeded pair.
  async function selectedPair(pc) {
    const stats = await pc.getStats();
    let pair;
    stats.forEach((s) => { if (s.type === 'transport' && s.selectedCandidatePairId) pair = stats.get(s.selectedCandidatePairId); });
    stats.forEach((s) => { if (!pair && s.type === 'candidate-pair' && s.nominated && s.state === 'succeeded') pair = s; });
    if (!pair) return null;
    const local = stats.get(pair.localCandidateId);
    const remote = stats.get(pair.remoteCandidateId);
    return { local_type: local?.candidateType, remote_type: remote?.candidateType, relay_protocol: local?.relayProtocol ?? null };
  }
}

const PAGE = `<!doctype html><meta charset="utf-8"><title>icebreaker turn-relay</title>
<video id="remote" autoplay muted playsinline></video>
<script>(${pageMain})();</script>`;

// Chromium honours only the LAST --disable-features switch, and Playwright already passes its own
// list before ours, so ours replaces it (checked on chrome://version). WebRtcHideLocalIpsWithMdns
// off gives host candidates real IPs instead of .local names (moot under relay-only, but it keeps
// the flag set identical to the project's other browser tests); the rest re-lists the Playwright
// defaults that keep Chromium's startup off the network.
const DISABLED_FEATURES = [
  'WebRtcHideLocalIpsWithMdns',
  'OptimizationHints', 'NetworkTimeServiceQuerying', 'MediaRouter', 'AimEnabled', 'PreconnectToSearch',
];
const CHROMIUM_ARGS = [
  '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync',
  '--use-fake-device-for-media-stream', // test-pattern camera, no real device needed
  '--use-fake-ui-for-media-stream', // auto-grant getUserMedia, no permission prompt
  '--allow-loopback-in-peer-connection', // TURN server and relayed addresses are all 127.0.0.1
  `--disable-features=${DISABLED_FEATURES.join(',')}`,
];
if (opt['ignore-certificate-errors']) CHROMIUM_ARGS.push('--ignore-certificate-errors');

// ---- Run, always bounded by --timeout-ms.
const deadline = Date.now() + timeoutMs;
const remaining = () => Math.max(1, deadline - Date.now());
function withDeadline(promise, what, ms = remaining()) {
  promise.catch(() => {}); // if we stop waiting, its later rejection (browser closed) is expected
  let timer;
  const expired = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timeout after ${timeoutMs} ms while ${what}`)), ms);
  });
  return Promise.race([promise, expired]).finally(() => clearTimeout(timer));
}
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

const server = http.createServer((req, res) => {
  if (req.url !== '/') { res.writeHead(req.url === '/favicon.ico' ? 204 : 404).end(); return; }
  res.writeHead(200, { 'content-type': 'text/html; charset=utf-8' }).end(PAGE);
});
// A fresh profile per run: no state (permissions, caches) leaks between runs.
const profileDir = fs.mkdtempSync(path.join(os.tmpdir(), 'icebreaker-turn-relay-'));
let context;
let page;
try {
  await withDeadline(new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', resolve); // http://127.0.0.1 is a secure context: getUserMedia works
  }), 'starting the HTTP server');
  context = await withDeadline(chromium.launchPersistentContext(profileDir, {
    executablePath: opt.chromium, headless: true, args: CHROMIUM_ARGS, timeout: remaining(),
  }), 'launching Chromium');
  page = context.pages()[0] ?? await context.newPage();
  if (opt.verbose) page.on('console', (m) => console.error(`[page] ${m.text()}`));
  page.on('pageerror', (e) => console.error(`[page error] ${e.message}`));
  await page.goto(`http://127.0.0.1:${server.address().port}/`, { timeout: remaining() });
  const cfg = { url: opt.url, username: opt.username, credential: opt.credential };
  Object.assign(result, await withDeadline(page.evaluate((c) => window.runTurnTest(c), cfg), 'running the test'));
} catch (err) {
  // Pull whatever the page reached (stage, counters, TURN errors) into the report.
  const progress = page && await withDeadline(page.evaluate(() => window.progress), 'reading progress', 2000)
    .catch(() => null);
  const { stage, ice_errors: iceErrors = [], ...reached } = progress ?? {};
  Object.assign(result, reached);
  result.ok = false;
  // Playwright prefixes in-page errors with "page.evaluate: Error: "; keep just the reason.
  const message = (err.message ?? String(err)).split('\n')[0].replace(/^page\.evaluate: (Error: )?/, '');
  result.error = [message, stage && `stage: ${stage}`, iceErrors.length && `ICE errors: ${iceErrors.join('; ')}`]
    .filter(Boolean).join('; ');
}

console.log(JSON.stringify(result));
// Cleanup gets a short grace of its own; Playwright kills the browser on exit if close stalls.
await Promise.race([context?.close().catch(() => {}), sleep(5000)]);
server.closeAllConnections();
server.close();
fs.rmSync(profileDir, { recursive: true, force: true });
process.exit(result.ok ? 0 : 1);
