// peers.js — one RTCPeerConnection per remote peer, negotiated with W3C "perfect
// negotiation" using the roles the server assigns (docs/protocol.md, "Perfect negotiation"):
// the newcomer (polite:false) creates the data channels and one audio and one video
// transceiver, and offers; the peer already in the room (polite:true) answers, sending its
// own tracks on the transceivers the offer created. Either side may renegotiate later
// (e.g. starting a screen share without a camera); collisions resolve by politeness.
// ICE is trickled: one `signal` per candidate and {"candidate":null} at the end.
//
// Data channels (docs/protocol.md, "Application data channels"): `chat`, `pointer`,
// `media` (what each side sends: mic/camera/screen, announced on open and on every change)
// and `board` (drawing strokes). A peer that opens only some of them (an older client, a
// headless test peer) is fine: what is missing is simply not shown.

const KINDS = ['audio', 'video'];

export class PeerManager {
  /**
   * @param {object} o
   * @param {import('./signaling.js').Signaling} o.signaling
   * @param {import('./media.js').Media} o.media
   * @param {false|'any'|'udp'|'tcp'|'tls'} o.relay  force iceTransportPolicy "relay" (and a TURN transport)
   * @param {(peer: Peer) => void} o.onPeer     a peer was added or changed (state, tracks, channels)
   * @param {(peer: Peer) => void} o.onGone     a peer was removed
   * @param {(peer: Peer, label: string, msg: object) => void} o.onData  a data channel message
   * @param {(peer: Peer, label: string) => void} [o.onOpen]  a data channel opened
   */
  constructor({ signaling, media, relay, onPeer, onGone, onData, onOpen }) {
    Object.assign(this, { signaling, media, relay, onPeer, onGone, onData, onOpen });
    this.peers = new Map();
    this.serial = 0;
  }

  config() {
    let iceServers = this.signaling.iceServers;
    if (this.relay === 'udp' || this.relay === 'tcp' || this.relay === 'tls') {
      // Keep only TURN URLs of the wanted transport (TURN/TCP: the relay reached over TCP;
      // TLS: only turns: URLs, the relay reached over TLS, as from a network that lets
      // nothing but TLS out).
      const wanted = (u) => this.relay === 'tls'
        ? u.startsWith('turns:')
        : /^turn:/.test(u) && (u.includes(`transport=${this.relay}`) || (this.relay === 'udp' && !u.includes('transport=')));
      iceServers = iceServers
        .map((s) => ({ ...s, urls: [].concat(s.urls).filter(wanted) }))
        .filter((s) => s.urls.length);
    }
    return { iceServers, iceTransportPolicy: this.relay ? 'relay' : 'all' };
  }

  /** A peer to talk to: from `joined` (we are the newcomer) or `peer-joined` (they are). */
  add({ id, meta, polite }, newcomer) {
    this.remove(id); // a stale entry (should not happen) must not leak its connection
    const pc = new RTCPeerConnection(this.config());
    const peer = new Peer(id, meta?.name || `guest-${id.slice(0, 4)}`, polite, pc, ++this.serial);
    this.peers.set(id, peer);
    const send = (data) => this.signaling.signal(id, data);

    pc.onicecandidate = ({ candidate }) => {
      if (candidate && !candidate.candidate) return; // legacy empty "end of generation" marker
      send({ candidate: candidate ? candidate.toJSON() : null });
    };
    pc.onnegotiationneeded = async () => {
      if (peer.refusedAnswers >= 2) return; // the remote keeps rejecting our offers: stop asking
      try {
        peer.makingOffer = true;
        await pc.setLocalDescription();
        send({ sdp: pc.localDescription.toJSON() });
      } catch (e) {
        console.warn(`offer to ${peer.name} failed:`, e);
      } finally {
        peer.makingOffer = false;
      }
    };
    pc.ontrack = ({ track }) => {
      if (!peer.stream.getTracks().includes(track)) peer.stream.addTrack(track);
      track.onmute = track.onunmute = () => this.onPeer(peer);
      this.onPeer(peer);
    };
    pc.ondatachannel = ({ channel }) => this.#useChannel(peer, channel);
    pc.onconnectionstatechange = () => {
      if (pc.connectionState === 'connected') peer.everConnected = true;
      this.onPeer(peer);
    };
    pc.oniceconnectionstatechange = () => {
      if (pc.iceConnectionState === 'failed') pc.restartIce(); // new network path, same call
      this.onPeer(peer);
    };

    if (newcomer) {
      // Fixed shape: audio, video (sending what we have, else receive-only), then data.
      const tracks = this.media.tracks;
      for (const kind of KINDS) {
        peer.tx[kind] = pc.addTransceiver(tracks[kind] ?? kind, { direction: tracks[kind] ? 'sendrecv' : 'recvonly' });
      }
      this.#useChannel(peer, pc.createDataChannel('chat'));
      this.#useChannel(peer, pc.createDataChannel('pointer', { ordered: false, maxRetransmits: 0 }));
      this.#useChannel(peer, pc.createDataChannel('media'));
      this.#useChannel(peer, pc.createDataChannel('board'));
    }
    this.onPeer(peer);
    return peer;
  }

  remove(id) {
    const peer = this.peers.get(id);
    if (!peer) return;
    this.peers.delete(id);
    peer.closed = true;
    // close() fires no state events on the connection, but its channels do fire `close`.
    for (const ch of Object.values(peer.channels)) ch.onmessage = ch.onopen = ch.onclose = null;
    peer.pc.ontrack = peer.pc.ondatachannel = peer.pc.onconnectionstatechange = peer.pc.oniceconnectionstatechange = null;
    peer.pc.close();
    this.onGone(peer);
  }

  closeAll() { for (const id of [...this.peers.keys()]) this.remove(id); }

  /** A `signal` from the server: an SDP or a trickled candidate. */
  async handleSignal(from, data) {
    const peer = this.peers.get(from);
    if (!peer || !data || typeof data !== 'object') return;
    const { pc } = peer;
    if (data.sdp) {
      const desc = data.sdp;
      const collision = desc.type === 'offer' && (peer.makingOffer || pc.signalingState !== 'stable');
      if (collision) peer.collisions++;
      peer.ignoreOffer = !peer.polite && collision;
      if (peer.ignoreOffer) return; // impolite: our offer wins
      if (desc.type === 'answer' && pc.signalingState === 'stable') return; // stale (e.g. after a resume)
      try {
        await pc.setRemoteDescription(desc); // polite + collision: implicit rollback
      } catch (e) {
        if (peer.closed) return; // removed while we waited
        if (desc.type !== 'answer') throw e;
        // An answer we cannot apply (e.g. a DTLS role that contradicts the first negotiation):
        // go back to the last working state instead of staying stuck in have-local-offer.
        peer.refusedAnswers++;
        console.warn(`answer from ${peer.name} refused, rolling back:`, e.message);
        await pc.setLocalDescription({ type: 'rollback' });
        return;
      }
      if (desc.type === 'answer') peer.refusedAnswers = 0;
      if (desc.type === 'offer') {
        this.#adoptTransceivers(peer);
        await this.#applyTracks(peer);
        await pc.setLocalDescription();
        this.signaling.signal(from, { sdp: pc.localDescription.toJSON() });
      }
    } else if ('candidate' in data) {
      try {
        await pc.addIceCandidate(data.candidate ?? undefined); // undefined/null: end of candidates
      } catch (e) {
        if (!peer.ignoreOffer) console.warn(`candidate from ${peer.name}:`, e.message);
      }
    }
  }

  /** Send the current local tracks (after a toggle, device change or screen share) to everyone. */
  async updateTracks() {
    await Promise.all([...this.peers.values()].map((p) => this.#applyTracks(p).catch((e) => console.warn(e))));
  }

  /** Send one JSON message on one peer's channel, if it is open. */
  sendTo(peer, label, msg) {
    const ch = peer.channels[label];
    if (ch?.readyState !== 'open') return false;
    ch.send(JSON.stringify(msg));
    return true;
  }

  /** Send one JSON message on a data channel of every peer whose channel is open. */
  broadcast(label, msg) {
    const text = JSON.stringify(msg);
    let sent = 0;
    for (const peer of this.peers.values()) {
      const ch = peer.channels[label];
      if (ch?.readyState !== 'open') continue;
      if (label === 'pointer' && ch.bufferedAmount > 16384) continue; // stale positions are useless
      ch.send(text);
      sent++;
    }
    return sent;
  }

  /**
   * After a signaling resume: what we sent on the dead socket may be lost, so a negotiation
   * still waiting for its answer a little later is rolled back and redone with an ICE restart.
   */
  healAfterResume(delayMs = 3000) {
    // Only the connections of the resumed session: one made since (a rejoin after a server
    // restart within the delay) may be in its first offer, and rolling that back while the
    // other side answers it puts the two out of step (a suspect for CI's one failed
    // `restart` scenario: "order of m-lines in subsequent offer doesn't match").
    const resumed = new Set(this.peers.values());
    setTimeout(async () => {
      for (const peer of resumed) {
        const { pc } = peer;
        if (peer.closed || this.peers.get(peer.id) !== peer) continue;
        const stuck = pc.signalingState === 'have-local-offer';
        const broken = ['failed', 'disconnected'].includes(pc.iceConnectionState);
        if (!stuck && !broken) continue;
        console.info(`renegotiating with ${peer.name} after resume`);
        try {
          if (stuck) await pc.setLocalDescription({ type: 'rollback' });
          pc.restartIce();
        } catch (e) { console.warn(e); }
      }
    }, delayMs);
  }

  // The answering side sends on the transceivers the remote offer created (first of each kind).
  #adoptTransceivers(peer) {
    for (const kind of KINDS) {
      if (peer.tx[kind] && !peer.tx[kind].stopped) continue;
      peer.tx[kind] = peer.pc.getTransceivers().find((t) => t.mid !== null && !t.stopped && t.receiver.track.kind === kind) ?? null;
    }
  }

  async #applyTracks(peer) {
    if (peer.closed) return;
    const tracks = this.media.tracks;
    for (const kind of KINDS) {
      const track = tracks[kind];
      const tx = peer.tx[kind];
      if (!tx) {
        // The newcomer offered no m-section of this kind (a data-only peer such as
        // `icebreaker-peer chat`): it asked for no camera or microphone, but a screen share
        // is shown to everyone, so add one for it, which renegotiates (onnegotiationneeded).
        // An icebreaker-peer answers that re-offer keeping the DTLS role in force.
        if (track && kind === 'video' && this.media.sharing) peer.tx[kind] = peer.pc.addTransceiver(track, { direction: 'sendrecv' });
        continue;
      }
      if (tx.sender.track !== track) await tx.sender.replaceTrack(track);
      if (track && (tx.direction === 'recvonly' || tx.direction === 'inactive')) tx.direction = 'sendrecv';
    }
  }

  #useChannel(peer, ch) {
    peer.channels[ch.label] = ch;
    ch.onopen = () => { if (!peer.closed) { this.onOpen?.(peer, ch.label); this.onPeer(peer); } };
    ch.onclose = () => { if (!peer.closed) this.onPeer(peer); };
    if (ch.readyState === 'open') queueMicrotask(() => ch.onopen?.());
    ch.onmessage = ({ data }) => {
      let msg;
      try { msg = JSON.parse(data); } catch { return; }
      if (msg && typeof msg === 'object') this.onData(peer, ch.label, msg);
    };
    this.onPeer(peer);
  }
}

export class Peer {
  constructor(id, name, polite, pc, serial) {
    this.id = id;
    this.name = name;
    this.polite = polite;
    this.pc = pc;
    this.serial = serial; // increases with every RTCPeerConnection this page creates
    this.makingOffer = false;
    this.ignoreOffer = false;
    this.refusedAnswers = 0; // consecutive answers setRemoteDescription rejected
    this.collisions = 0; // offers that crossed ours (perfect negotiation resolved them)
    this.everConnected = false;
    this.closed = false;
    this.tx = { audio: null, video: null }; // our RTCRtpTransceiver per kind
    this.channels = {}; // label -> RTCDataChannel
    this.stream = new MediaStream(); // what the peer sends us
    this.stats = {}; // filled by stats.js
    this.mediaState = null; // {audio, video, screen, ts} from its `media` channel (null: never sent)
    this.level = 0; // its audio level, 0..1 (from RTCRtpReceiver.getSynchronizationSources)
    this.lastLoud = -Infinity; // performance.now() when it was last louder than the speaking threshold
  }
}
