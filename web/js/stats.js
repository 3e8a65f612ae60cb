// stats.js — per-peer connection statistics from RTCPeerConnection.getStats(), once a second:
// the selected candidate pair (host/srflx/prflx/relay, UDP/TCP), round-trip time, incoming and
// outgoing media bitrates, decoded video frames and received audio packets.

const EVERY_MS = 1000;

/** Summarize one getStats() report. `prev` is the previous summary (for bitrates). */
export function summarize(report, prev) {
  let pair = null;
  report.forEach((s) => {
    if (s.type === 'transport' && s.selectedCandidatePairId) pair = report.get(s.selectedCandidatePairId) ?? pair;
  });
  if (!pair) report.forEach((s) => { if (!pair && s.type === 'candidate-pair' && s.nominated && s.state === 'succeeded') pair = s; });
  const local = pair && report.get(pair.localCandidateId);
  const remote = pair && report.get(pair.remoteCandidateId);

  let bytesIn = 0, bytesOut = 0, framesDecoded = 0, audioPacketsReceived = 0, width = 0, height = 0, fps = 0;
  report.forEach((s) => {
    if (s.type === 'inbound-rtp') {
      bytesIn += s.bytesReceived ?? 0;
      if (s.kind === 'video') {
        framesDecoded += s.framesDecoded ?? 0;
        width = s.frameWidth ?? width; height = s.frameHeight ?? height; fps = s.framesPerSecond ?? fps;
      }
      if (s.kind === 'audio') audioPacketsReceived += s.packetsReceived ?? 0;
    } else if (s.type === 'outbound-rtp') {
      bytesOut += s.bytesSent ?? 0;
    }
  });
  const now = performance.now();
  const secs = prev?.at ? (now - prev.at) / 1000 : 0;
  const rate = (bytes, before) => (secs > 0 && before != null ? Math.max(0, ((bytes - before) * 8) / secs) : null);
  return {
    at: now,
    // For a relay candidate, the protocol that matters is the one to the TURN server.
    candidateType: local?.candidateType ?? null,
    remoteCandidateType: remote?.candidateType ?? null,
    protocol: local ? (local.relayProtocol ?? local.protocol ?? null)?.toUpperCase() : null,
    rttMs: pair?.currentRoundTripTime != null ? Math.round(pair.currentRoundTripTime * 1000) : null,
    bytesIn, bytesOut,
    inBps: rate(bytesIn, prev?.bytesIn),
    outBps: rate(bytesOut, prev?.bytesOut),
    framesDecoded, audioPacketsReceived,
    video: width ? `${width}×${height}${fps ? ` @ ${Math.round(fps)} fps` : ''}` : null,
  };
}

/** Poll every peer's stats; `onUpdate(peer)` after each peer's summary is refreshed. */
export function startStats(peerManager, onUpdate) {
  let busy = false;
  const tick = async () => {
    if (busy) return;
    busy = true;
    try {
      await Promise.all([...peerManager.peers.values()].map(async (peer) => {
        if (peer.closed || peer.pc.connectionState === 'closed') return;
        const report = await peer.pc.getStats();
        if (peer.closed) return;
        peer.stats = summarize(report, peer.stats);
        onUpdate(peer);
      }));
    } catch (e) {
      console.warn('stats:', e);
    } finally {
      busy = false;
    }
  };
  const timer = setInterval(tick, EVERY_MS);
  tick();
  return () => clearInterval(timer);
}

export function formatBps(bps) {
  if (bps == null) return '–';
  if (bps >= 1e6) return `${(bps / 1e6).toFixed(1)} Mb/s`;
  if (bps >= 1e3) return `${Math.round(bps / 1e3)} kb/s`;
  return `${Math.round(bps)} b/s`;
}
