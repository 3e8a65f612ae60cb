// stats.js — per-peer connection statistics from RTCPeerConnection.getStats(), once a second:
// the selected candidate pair (host/srflx/prflx/relay, UDP/TCP), round-trip time, incoming and
// outgoing media bitrates, packet loss and jitter since the last summary, decoded video
// frames, received audio packets and the incoming audio level.

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
  let packets = 0, lost = 0, jitter = null, audioLevel = null, audioBytes = 0;
  report.forEach((s) => {
    if (s.type === 'inbound-rtp') {
      bytesIn += s.bytesReceived ?? 0;
      packets += s.packetsReceived ?? 0;
      lost += Math.max(0, s.packetsLost ?? 0);
      if (s.jitter != null) jitter = Math.max(jitter ?? 0, s.jitter);
      if (s.kind === 'video') {
        framesDecoded += s.framesDecoded ?? 0;
        width = s.frameWidth ?? width; height = s.frameHeight ?? height; fps = s.framesPerSecond ?? fps;
      }
      if (s.kind === 'audio') {
        audioPacketsReceived += s.packetsReceived ?? 0;
        audioBytes += s.bytesReceived ?? 0;
        if (s.audioLevel != null) audioLevel = s.audioLevel;
      }
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
    packets, lost, audioBytes,
    // Loss over the last interval: lost / (lost + received) of the packets since then.
    lossPct: prev?.packets != null && packets + lost > prev.packets + prev.lost
      ? (100 * Math.max(0, lost - prev.lost)) / (packets + lost - prev.packets - prev.lost) : null,
    jitterMs: jitter != null ? Math.round(jitter * 1000) : null,
    video: width ? `${width}×${height}${fps ? ` @ ${Math.round(fps)} fps` : ''}` : null,
    audio: audioPacketsReceived
      ? `${formatBps(rate(audioBytes, prev?.audioBytes))}${audioLevel != null ? ` · level ${Math.round(audioLevel * 100)}` : ''}`
      : null,
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
