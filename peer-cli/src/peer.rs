//! One WebRTC connection to one remote peer, negotiated with the W3C "perfect
//! negotiation" pattern over protocol v1 signals: the newcomer offers and creates the data
//! channels; on an offer collision the polite side rolls back and the impolite side
//! ignores the incoming offer. Trickle ICE both ways, `{"candidate":null}` at the end.

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, Instant};

use crate::room::now_ms;
use icebreaker_protocol::channel::MEDIA_CHANNEL;
use icebreaker_protocol::{
    IceCandidate, IceServer, MediaState, SdpType, SessionDescription, SignalData,
};
use rtc::ice::mdns::MulticastDnsMode;
use tokio::sync::{mpsc, Mutex};
use tracing::{debug, warn};
use webrtc::data_channel::{DataChannel, DataChannelEvent, RTCDataChannelInit};
use webrtc::media_stream::track_remote::{TrackRemote, TrackRemoteEvent};
use webrtc::peer_connection::{
    register_default_interceptors, MediaEngine, PeerConnection, PeerConnectionBuilder,
    PeerConnectionEventHandler, RTCConfigurationBuilder, RTCIceCandidateInit,
    RTCIceConnectionState, RTCIceGatheringState, RTCIceServer, RTCIceTransportPolicy,
    RTCPeerConnectionIceEvent, RTCPeerConnectionState, RTCSessionDescription, Registry,
    SettingEngineBuilder, StatsSelector,
};

use crate::signaling::SigSender;

/// What happens on the connection to one remote peer.
#[derive(Clone)]
pub enum PeerEvent {
    /// The peer connection reached `connected`.
    Connected {
        /// The remote peer's id.
        peer: String,
        /// Our candidate type in the selected pair (host, srflx, prflx, relay).
        local: String,
        /// The remote candidate type in the selected pair.
        remote: String,
        /// The selected pair's transport (udp, tcp).
        protocol: String,
    },
    /// A data channel opened, ours or the peer's.
    ChannelOpen {
        /// The remote peer's id.
        peer: String,
        /// The channel's label (`chat`, `pointer`).
        label: String,
        /// The channel, for sending.
        dc: Arc<dyn DataChannel>,
    },
    /// A data channel message arrived.
    Message {
        /// The remote peer's id.
        peer: String,
        /// The label of the channel it came on.
        label: String,
        /// The message as text (invalid UTF-8 replaced).
        text: String,
    },
    /// A step of connection setup was reached (for `load`'s per-phase times).
    Phase {
        /// The remote peer's id.
        peer: String,
        /// Which step.
        phase: Phase,
    },
    /// The peer connection reached `failed`.
    Failed {
        /// The remote peer's id.
        peer: String,
    },
    /// The peer sent a media track.
    Track {
        /// The remote peer's id.
        peer: String,
        /// The track's kind, lowercase (`video`, `audio`).
        kind: String,
        /// Counters of what arrives on it, updated as packets come.
        stats: Arc<TrackStats>,
    },
}

/// The steps of a connection's setup, in the order they usually complete.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Phase {
    /// Our candidates are all gathered (host at once; relay after the TURN allocation).
    Gathered,
    /// ICE found a working pair (`iceConnectionState` connected).
    IceConnected,
    /// DTLS is done too (`connectionState` connected).
    Connected,
}

impl Phase {
    /// The name used in reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Gathered => "gathered",
            Phase::IceConnected => "ice_connected",
            Phase::Connected => "dtls_connected",
        }
    }
}

/// A local track added to every connection: from samples (files), or RTP forwarded from
/// what we receive (`media --echo`).
#[derive(Clone)]
pub struct LocalMedia {
    /// `video` or `audio`.
    pub kind: &'static str,
    /// The SSRC our RTP on this track carries.
    pub ssrc: u32,
    /// The track written from samples (files); set unless echoing.
    pub sample:
        Option<Arc<webrtc::media_stream::track_local::static_sample::TrackLocalStaticSample>>,
    /// The track received RTP is forwarded to (`media --echo`).
    pub rtp: Option<Arc<webrtc::media_stream::track_local::static_rtp::TrackLocalStaticRTP>>,
}

impl LocalMedia {
    fn as_track(&self) -> Arc<dyn webrtc::media_stream::track_local::TrackLocal> {
        match (&self.sample, &self.rtp) {
            (Some(s), _) => s.clone(),
            (None, Some(r)) => r.clone(),
            (None, None) => unreachable!("a LocalMedia has a track"),
        }
    }
}

impl std::fmt::Debug for PeerEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PeerEvent::Connected {
                peer,
                local,
                remote,
                protocol,
            } => write!(f, "connected {peer} {local}/{remote} {protocol}"),
            PeerEvent::ChannelOpen { peer, label, .. } => {
                write!(f, "channel {label} open with {peer}")
            }
            PeerEvent::Message { peer, label, text } => {
                write!(f, "{label} message from {peer}: {text}")
            }
            PeerEvent::Phase { peer, phase } => write!(f, "{} with {peer}", phase.as_str()),
            PeerEvent::Failed { peer } => write!(f, "connection to {peer} failed"),
            PeerEvent::Track { peer, kind, .. } => write!(f, "{kind} track from {peer}"),
        }
    }
}

/// Counters of one received track (packets; frames = RTP marker bits for video).
#[derive(Debug, Default)]
pub struct TrackStats {
    /// RTP packets received.
    pub packets: AtomicU64,
    /// Frames received: marker bits for video, every packet for audio.
    pub frames: AtomicU64,
    /// RTP payload bytes received.
    pub bytes: AtomicU64,
}

/// ICE timing of the peer connections (webrtc-rs inherits pion's: checks every 200 ms and
/// minimum waits before a pair of each candidate type may be nominated, which made a
/// loopback connection take 0.6-1.5 s and a relay-only one over 2 s). Every value is a
/// flag of the CLI; the defaults are chosen to stay right across the internet.
#[derive(Debug, Clone, Copy)]
pub struct IceTiming {
    /// Between connectivity checks: RFC 8445 §14.2's Ta of 50 ms (what browsers use),
    /// not 200 ms; a check is one small STUN request, so this costs nothing on a real
    /// network and saves three check rounds on every connection.
    pub check_interval: Duration,
    /// Before a server-reflexive pair may be nominated: a host pair (same LAN) gets this
    /// long to win. Short, since a working pair is what the user waits for.
    pub srflx_wait: Duration,
    /// Before a peer-reflexive pair may be nominated. With trickle ICE the remote host
    /// candidate often shows up as peer-reflexive first (its check arrives before its
    /// signal), so pion's 1 s wait delayed exactly the pair that was best.
    pub prflx_wait: Duration,
    /// Before a relay pair may be nominated when direct candidates exist (a relay costs
    /// the operator bandwidth and adds latency, so direct pairs get this head start).
    /// Relay-only connections never wait: no better pair can come.
    pub relay_wait: Duration,
    /// How often [`nudge_driver`] wakes webrtc-rs's driver during setup (zero: never).
    pub nudge: Duration,
}

impl Default for IceTiming {
    fn default() -> Self {
        IceTiming {
            check_interval: Duration::from_millis(50),
            srflx_wait: Duration::from_millis(100),
            prflx_wait: Duration::from_millis(100),
            relay_wait: Duration::from_millis(500),
            nudge: NUDGE_EVERY,
        }
    }
}

/// What every peer connection in a session is built with.
#[derive(Clone)]
pub struct Setup {
    /// STUN/TURN servers from `joined`, less the TCP and TLS TURN URLs.
    pub ice_servers: Vec<RTCIceServer>,
    /// Gather relay candidates only (iceTransportPolicy "relay").
    pub relay_only: bool,
    /// Local address the WebRTC UDP sockets bind on.
    pub bind: IpAddr,
    /// ICE check pacing and nomination waits.
    pub ice: IceTiming,
    /// What we send, announced on each peer's `media` channel when it opens.
    pub media_state: MediaState,
}

impl Setup {
    /// `ice_servers` from `joined`; webrtc-rs relays over UDP only, so TCP/TLS TURN URLs
    /// are left out (it would skip them anyway).
    pub fn from_joined(
        ice: &[IceServer],
        relay_only: bool,
        bind: IpAddr,
        timing: IceTiming,
    ) -> Setup {
        let servers = ice
            .iter()
            .map(|s| RTCIceServer {
                urls: s
                    .urls
                    .iter()
                    .filter(|x| !x.contains("transport=tcp") && !x.starts_with("turns:"))
                    .cloned()
                    .collect(),
                username: s.username.clone().unwrap_or_default(),
                credential: s.credential.clone().unwrap_or_default(),
            })
            .filter(|s| !s.urls.is_empty())
            .collect();
        Setup {
            ice_servers: servers,
            relay_only,
            bind,
            ice: timing,
            media_state: MediaState::default(),
        }
    }
}

/// The connection to one remote peer and its negotiation state.
pub struct Remote {
    /// The remote peer's id.
    pub id: String,
    /// Whether we are the polite side towards it (perfect negotiation).
    pub polite: bool,
    /// The WebRTC peer connection.
    pub pc: Arc<dyn PeerConnection>,
    /// Our tracks on this connection and their senders.
    pub media: Vec<(LocalMedia, Arc<dyn webrtc::rtp_transceiver::RtpSender>)>,
    sig: SigSender,
    /// Serializes description handling and offers (the JS event loop's role in the
    /// W3C pattern).
    op: Mutex<Neg>,
    /// A first offer/answer exchange completed.
    settled: std::sync::atomic::AtomicBool,
}

#[derive(Default)]
struct Neg {
    ignore_offer: bool,
    pending: Vec<RTCIceCandidateInit>,
    renegotiate: bool,
}

struct Handler {
    peer: String,
    events: mpsc::Sender<PeerEvent>,
    remote: Arc<OnceLock<Weak<Remote>>>,
    /// Local candidates, then `None` for end-of-candidates, in gathering order: one task
    /// sends them, so the end marker can never overtake the last candidate. Unbounded
    /// because a connection gathers a handful of candidates at most.
    candidates: mpsc::UnboundedSender<Option<RTCIceCandidateInit>>,
    /// Our [`MediaState`] for the peer's `media` channel, as sent.
    media_hello: Arc<str>,
    /// Set once a data channel of this connection is open (ends [`nudge_driver`]).
    channel_up: Arc<AtomicBool>,
    /// [`IceTiming::nudge`].
    nudge: Duration,
}

/// How often (by default), and for how long at most, [`nudge_driver`] wakes webrtc-rs's
/// driver between ICE starting its checks and the first data channel opening: 2 ms is
/// well under one round trip on any real path, and setup past 5 s has failed anyway.
const NUDGE_EVERY: Duration = Duration::from_millis(2);
const NUDGE_FOR: Duration = Duration::from_secs(5);

/// Works around webrtc 0.21.1's driver loop with rtc 0.21.1's SCTP handler: the handler
/// defers every transmit to its `poll_write`, but the driver calls `poll_writes` only at
/// the top of its loop, before `poll_events`. Packets that events queue, the client INIT
/// when DTLS completes and the DCEP opens when the association is up, therefore wait
/// for the next timer, 200 ms each (measured: channel open 412 ms after join on
/// loopback, ICE and DTLS done at 10 ms). Any call that sends the driver an event makes
/// it loop again and flush; `set_configuration` with the configuration it already has
/// changes nothing (its ICE servers apply at the next gathering, and they are the same).
/// So until a channel opens we send that every few milliseconds: a few hundred calls at
/// most, only during setup. Remove once the driver polls writes after events.
async fn nudge_driver(pc: Weak<dyn PeerConnection>, up: Arc<AtomicBool>, every: Duration) {
    if every.is_zero() {
        return;
    }
    let started = tokio::time::Instant::now();
    while !up.load(Ordering::Acquire) && started.elapsed() < NUDGE_FOR {
        let Some(pc) = pc.upgrade() else { return };
        // Err once the connection is closed.
        let cfg = pc.get_configuration().await;
        if pc.set_configuration(cfg).await.is_err() {
            return;
        }
        drop(pc);
        tokio::time::sleep(every).await;
    }
}

impl Handler {
    /// Reports a setup step; dropped if the consumer is behind (timings are best effort,
    /// the connection never waits for them).
    fn phase(&self, phase: Phase) {
        let _ = self.events.try_send(PeerEvent::Phase {
            peer: self.peer.clone(),
            phase,
        });
    }
}

fn first_attr(sdp: &str, key: &str) -> Option<String> {
    sdp.lines()
        .find_map(|l| l.strip_prefix(key).map(|v| v.trim().to_string()))
}

#[async_trait::async_trait]
impl PeerConnectionEventHandler for Handler {
    async fn on_negotiation_needed(&self) {
        // The first offer follows the room convention (the newcomer sends it explicitly);
        // only later changes renegotiate from here.
        if let Some(r) = self.remote.get().and_then(Weak::upgrade) {
            if r.settled.load(Ordering::Acquire) {
                tokio::spawn(async move { r.negotiate().await });
            }
        }
    }

    async fn on_ice_candidate(&self, e: RTCPeerConnectionIceEvent) {
        if let Ok(init) = e.candidate.to_json() {
            let _ = self.candidates.send(Some(init));
        }
    }

    async fn on_ice_gathering_state_change(&self, s: RTCIceGatheringState) {
        if s == RTCIceGatheringState::Complete {
            let _ = self.candidates.send(None);
            self.phase(Phase::Gathered);
        }
    }

    async fn on_ice_connection_state_change(&self, s: RTCIceConnectionState) {
        // ICE checks, DTLS and SCTP run from here until a channel opens; see nudge_driver.
        if s == RTCIceConnectionState::Checking {
            if let Some(r) = self.remote.get().and_then(Weak::upgrade) {
                tokio::spawn(nudge_driver(
                    Arc::downgrade(&r.pc),
                    self.channel_up.clone(),
                    self.nudge,
                ));
            }
        }
        if s == RTCIceConnectionState::Connected {
            self.phase(Phase::IceConnected);
        }
    }

    async fn on_connection_state_change(&self, s: RTCPeerConnectionState) {
        debug!(peer = %self.peer, state = %s, "connection state");
        let (events, peer, remote) = (self.events.clone(), self.peer.clone(), self.remote.clone());
        match s {
            RTCPeerConnectionState::Connected => {
                self.phase(Phase::Connected);
                tokio::spawn(async move {
                    let (local, remote_t, protocol) = match remote.get().and_then(Weak::upgrade) {
                        Some(r) => r.selected_pair().await,
                        None => Default::default(),
                    };
                    let _ = events
                        .send(PeerEvent::Connected {
                            peer,
                            local,
                            remote: remote_t,
                            protocol,
                        })
                        .await;
                });
            }
            RTCPeerConnectionState::Failed => {
                tokio::spawn(async move {
                    let _ = events.send(PeerEvent::Failed { peer }).await;
                });
            }
            _ => {}
        }
    }

    async fn on_data_channel(&self, dc: Arc<dyn DataChannel>) {
        self.channel_up.store(true, Ordering::Release);
        tokio::spawn(pump_channel(
            self.peer.clone(),
            dc,
            self.events.clone(),
            true,
            self.media_hello.clone(),
            self.channel_up.clone(),
        ));
    }

    async fn on_track(&self, t: Arc<dyn TrackRemote>) {
        let (peer, events, remote) = (self.peer.clone(), self.events.clone(), self.remote.clone());
        tokio::spawn(async move {
            let kind = format!("{}", t.kind().await).to_lowercase();
            let stats = Arc::new(TrackStats::default());
            let _ = events
                .send(PeerEvent::Track {
                    peer,
                    kind: kind.clone(),
                    stats: stats.clone(),
                })
                .await;
            // Echo: forward what arrives on our RTP track of the same kind, re-stamped
            // with our SSRC and negotiated payload type.
            let echo = remote.get().and_then(Weak::upgrade).and_then(|r| {
                r.media
                    .iter()
                    .find(|(m, _)| m.rtp.is_some() && kind.contains(m.kind))
                    .map(|(m, s)| (m.clone(), s.clone()))
            });
            let mut echo_pt = None;
            while let Some(ev) = t.poll().await {
                if let TrackRemoteEvent::OnRtpPacket(mut p) = ev {
                    stats.packets.fetch_add(1, Ordering::Relaxed);
                    stats
                        .bytes
                        .fetch_add(p.payload.len() as u64, Ordering::Relaxed);
                    if p.header.marker || kind.contains("audio") {
                        stats.frames.fetch_add(1, Ordering::Relaxed);
                    }
                    if let Some((m, sender)) = &echo {
                        if echo_pt.is_none() {
                            echo_pt = sender.get_parameters().await.ok().and_then(|p| {
                                p.rtp_parameters.codecs.first().map(|c| c.payload_type)
                            });
                        }
                        if let (Some(pt), Some(rtp)) = (echo_pt, &m.rtp) {
                            p.header.ssrc = m.ssrc;
                            p.header.payload_type = pt;
                            use webrtc::media_stream::track_local::TrackLocal;
                            let _ = rtp.write_rtp(p).await;
                        }
                    }
                }
            }
        });
    }
}

/// Reads one data channel's events; `open` says it is already open (remote-created
/// channels are announced at their open). On the `media` channel our state (`hello`) goes
/// out first, as the browser client's does.
async fn pump_channel(
    peer: String,
    dc: Arc<dyn DataChannel>,
    events: mpsc::Sender<PeerEvent>,
    mut open: bool,
    hello: Arc<str>,
    up: Arc<AtomicBool>,
) {
    let label = dc.label().await.unwrap_or_default();
    let is_media = label == MEDIA_CHANNEL;
    if open && is_media {
        let _ = dc.send_text(&hello).await;
    }
    if open {
        let _ = events
            .send(PeerEvent::ChannelOpen {
                peer: peer.clone(),
                label: label.clone(),
                dc: dc.clone(),
            })
            .await;
    }
    while let Some(ev) = dc.poll().await {
        match ev {
            DataChannelEvent::OnOpen if !open => {
                open = true;
                up.store(true, Ordering::Release);
                if is_media {
                    let _ = dc.send_text(&hello).await;
                }
                let _ = events
                    .send(PeerEvent::ChannelOpen {
                        peer: peer.clone(),
                        label: label.clone(),
                        dc: dc.clone(),
                    })
                    .await;
            }
            DataChannelEvent::OnMessage(m) => {
                let text = String::from_utf8_lossy(&m.data).to_string();
                let _ = events
                    .send(PeerEvent::Message {
                        peer: peer.clone(),
                        label: label.clone(),
                        text,
                    })
                    .await;
            }
            DataChannelEvent::OnClose => break,
            _ => {}
        }
    }
}

impl Remote {
    /// Creates the connection to `peer`. The newcomer (`!polite`) also creates the `chat`
    /// (ordered, reliable), `pointer` (unordered, no retransmits) and `media` (ordered,
    /// reliable: our [`MediaState`]) channels.
    pub async fn new(
        peer: &str,
        polite: bool,
        setup: &Setup,
        sig: SigSender,
        events: mpsc::Sender<PeerEvent>,
        tracks: Vec<LocalMedia>,
    ) -> anyhow::Result<Arc<Remote>> {
        let slot: Arc<OnceLock<Weak<Remote>>> = Arc::new(OnceLock::new());
        let (cand_tx, mut cand_rx) = mpsc::unbounded_channel::<Option<RTCIceCandidateInit>>();
        {
            let (sig, peer, slot) = (sig.clone(), peer.to_string(), slot.clone());
            tokio::spawn(async move {
                while let Some(c) = cand_rx.recv().await {
                    let Some(mut init) = c else {
                        sig.signal(&peer, &SignalData::Candidate(None)).await;
                        continue;
                    };
                    // webrtc-rs leaves sdpMid empty; browsers and aiortc match by mid.
                    if let Some(r) = slot.get().and_then(Weak::upgrade) {
                        if let Some(local) = r.pc.local_description().await {
                            init.sdp_mid = first_attr(&local.sdp, "a=mid:").or(init.sdp_mid);
                            init.username_fragment = first_attr(&local.sdp, "a=ice-ufrag:");
                        }
                    }
                    let c = IceCandidate {
                        candidate: init.candidate,
                        sdp_mid: init.sdp_mid,
                        sdp_m_line_index: init.sdp_mline_index,
                        username_fragment: init.username_fragment,
                    };
                    sig.signal(&peer, &SignalData::Candidate(Some(c))).await;
                }
            });
        }
        let media_hello: Arc<str> = MediaState {
            ts: now_ms(),
            ..setup.media_state.clone()
        }
        .to_json()
        .into();
        let channel_up = Arc::new(AtomicBool::new(false));
        let handler = Arc::new(Handler {
            peer: peer.into(),
            events: events.clone(),
            remote: slot.clone(),
            candidates: cand_tx,
            media_hello: media_hello.clone(),
            channel_up: channel_up.clone(),
            nudge: setup.ice.nudge,
        });
        let cfg = RTCConfigurationBuilder::new()
            .with_ice_servers(setup.ice_servers.clone())
            .with_ice_transport_policy(if setup.relay_only {
                RTCIceTransportPolicy::Relay
            } else {
                RTCIceTransportPolicy::All
            })
            .build();
        // mDNS needs a multicast interface; a loopback-only host has none.
        // `Some(ZERO)`, not `None`: in rtc 0.21 `None` means the default wait.
        let t = setup.ice;
        let relay_wait = if setup.relay_only {
            Duration::ZERO
        } else {
            t.relay_wait
        };
        let se = SettingEngineBuilder::new()
            .with_multicast_dns_mode(MulticastDnsMode::Disabled)
            // A pair is given up after this many unanswered checks: keep pion's 1.4 s
            // (7 × 200 ms) whatever the interval, so a slow path is not dropped early.
            .with_ice_connection_attempts(
                Some(t.check_interval),
                Some((1400 / t.check_interval.as_millis().max(1)).clamp(7, 200) as u16),
            )
            .with_host_acceptance_min_wait(Some(Duration::ZERO))
            .with_srflx_acceptance_min_wait(Some(t.srflx_wait))
            .with_prflx_acceptance_min_wait(Some(t.prflx_wait))
            .with_relay_acceptance_min_wait(Some(relay_wait))
            .build();
        let mut me = MediaEngine::default();
        me.register_default_codecs()?;
        let reg = register_default_interceptors(Registry::new(), &mut me)?;
        let pc = PeerConnectionBuilder::new()
            .with_configuration(cfg)
            .with_setting_engine(se)
            .with_media_engine(me)
            .with_interceptor_registry(reg)
            .with_handler(handler)
            .with_udp_addrs(vec![format!("{}:0", setup.bind)])
            .build()
            .await?;
        let pc: Arc<dyn PeerConnection> = Arc::new(pc);
        let mut media = Vec::new();
        for t in tracks {
            let sender = pc.add_track(t.as_track()).await?;
            media.push((t, sender));
        }
        let r = Arc::new(Remote {
            media,
            id: peer.into(),
            polite,
            pc,
            sig,
            op: Mutex::new(Neg::default()),
            settled: std::sync::atomic::AtomicBool::new(false),
        });
        let _ = slot.set(Arc::downgrade(&r));
        if !polite {
            let chat = r.pc.create_data_channel("chat", None).await?;
            tokio::spawn(pump_channel(
                peer.into(),
                chat,
                events.clone(),
                false,
                media_hello.clone(),
                channel_up.clone(),
            ));
            let init = RTCDataChannelInit {
                ordered: false,
                max_retransmits: Some(0),
                ..Default::default()
            };
            let pointer = r.pc.create_data_channel("pointer", Some(init)).await?;
            tokio::spawn(pump_channel(
                peer.into(),
                pointer,
                events.clone(),
                false,
                media_hello.clone(),
                channel_up.clone(),
            ));
            let media = r.pc.create_data_channel(MEDIA_CHANNEL, None).await?;
            tokio::spawn(pump_channel(
                peer.into(),
                media,
                events.clone(),
                false,
                media_hello.clone(),
                channel_up.clone(),
            ));
            let r2 = r.clone();
            tokio::spawn(async move { r2.negotiate().await });
        }
        Ok(r)
    }

    async fn stable(&self) -> bool {
        self.pc.pending_local_description().await.is_none()
            && self.pc.pending_remote_description().await.is_none()
    }

    /// Makes and sends an offer when the signaling state is stable; otherwise remembers
    /// to do so once it is.
    pub async fn negotiate(&self) {
        let mut neg = self.op.lock().await;
        if !self.stable().await {
            neg.renegotiate = true;
            return;
        }
        neg.renegotiate = false;
        let result = async {
            let offer = self.pc.create_offer(None).await?;
            self.pc.set_local_description(offer).await?;
            anyhow::Ok(self.pc.local_description().await)
        }
        .await;
        match result {
            Ok(Some(d)) => {
                self.sig
                    .signal(&self.id, &description(SdpType::Offer, d.sdp))
                    .await
            }
            Ok(None) => {}
            Err(e) => warn!(peer = %self.id, error = %e, "offer failed"),
        }
    }

    /// Handles a signal from this peer: a description or a candidate.
    pub async fn on_signal(self: &Arc<Self>, data: &SignalData) {
        match data {
            SignalData::Description(sdp) => {
                if let Err(e) = self.on_description(sdp).await {
                    warn!(peer = %self.id, error = %e, "description failed");
                }
            }
            SignalData::Candidate(c) => self.on_candidate(c.as_ref()).await,
        }
    }

    async fn on_candidate(self: &Arc<Self>, c: Option<&IceCandidate>) {
        {
            let Some(c) = c.filter(|c| !c.candidate.is_empty()) else {
                return; // end of candidates
            };
            let init = RTCIceCandidateInit {
                candidate: c.candidate.clone(),
                sdp_mid: c.sdp_mid.clone(),
                sdp_mline_index: c.sdp_m_line_index,
                username_fragment: c.username_fragment.clone(),
                ..Default::default()
            };
            let mut neg = self.op.lock().await;
            if self.pc.remote_description().await.is_none() {
                neg.pending.push(init);
            } else if let Err(e) = self.pc.add_ice_candidate(init).await {
                if !neg.ignore_offer {
                    debug!(peer = %self.id, error = %e, "candidate refused");
                }
            }
        }
    }

    async fn on_description(self: &Arc<Self>, sdp: &SessionDescription) -> anyhow::Result<()> {
        let text = sdp.sdp.clone();
        let mut neg = self.op.lock().await;
        let desc = match sdp.kind {
            SdpType::Offer => RTCSessionDescription::offer(text)?,
            SdpType::Answer => RTCSessionDescription::answer(text)?,
            SdpType::Pranswer => RTCSessionDescription::pranswer(text)?,
            SdpType::Rollback => RTCSessionDescription::rollback(None)?,
        };
        let is_offer = sdp.kind == SdpType::Offer;
        let collision = is_offer && self.pc.pending_local_description().await.is_some();
        neg.ignore_offer = !self.polite && collision;
        if neg.ignore_offer {
            debug!(peer = %self.id, "offer collision: impolite side ignores the offer");
            return Ok(());
        }
        if collision {
            // webrtc-rs has no implicit rollback: undo our offer explicitly.
            self.pc
                .set_local_description(RTCSessionDescription::rollback(None)?)
                .await?;
            neg.renegotiate = true;
        }
        self.pc.set_remote_description(desc).await?;
        for c in neg.pending.drain(..) {
            let _ = self.pc.add_ice_candidate(c).await;
        }
        if is_offer {
            let answer = self.pc.create_answer(None).await?;
            self.pc.set_local_description(answer).await?;
            if let Some(d) = self.pc.local_description().await {
                self.sig
                    .signal(&self.id, &description(SdpType::Answer, d.sdp))
                    .await;
            }
        }
        self.settled.store(true, Ordering::Release);
        if neg.renegotiate {
            let r = self.clone();
            tokio::spawn(async move { r.negotiate().await });
        }
        Ok(())
    }

    /// Candidate types of the selected pair (host/srflx/prflx/relay) and its protocol.
    /// The transport's selected-pair id is used when set; otherwise the nominated pair,
    /// else the one that carried the most bytes.
    pub async fn selected_pair(&self) -> (String, String, String) {
        use webrtc::peer_connection::RTCStatsReportEntry as E;
        for _ in 0..20 {
            let r = self.pc.get_stats(Instant::now(), StatsSelector::None).await;
            let by_id = r
                .transport()
                .and_then(|t| match r.get(&t.selected_candidate_pair_id) {
                    Some(E::IceCandidatePair(p)) => Some(p),
                    _ => None,
                });
            let pair = by_id.or_else(|| {
                let succeeded =
                    |p: &&rtc::statistics::stats::ice_candidate_pair::RTCIceCandidatePairStats| {
                        format!("{:?}", p.state) == "Succeeded"
                    };
                r.candidate_pairs()
                    .filter(|p| p.nominated || succeeded(p) || p.bytes_sent + p.bytes_received > 0)
                    .max_by_key(|p| (p.nominated, succeeded(p), p.bytes_sent + p.bytes_received))
            });
            if let Some(p) = pair {
                // rtc 0.21 names candidate entries with a type prefix the pair's ids lack.
                let find =
                    |prefix: &str, id: &str| r.get(id).or_else(|| r.get(&format!("{prefix}{id}")));
                let local = match find("RTCLocalIceCandidate_", &p.local_candidate_id) {
                    Some(E::LocalCandidate(c)) => Some((
                        format!("{}", c.candidate_type).to_lowercase(),
                        c.protocol.to_lowercase(),
                    )),
                    _ => None,
                };
                let remote = match find("RTCRemoteIceCandidate_", &p.remote_candidate_id) {
                    Some(E::RemoteCandidate(c)) => format!("{}", c.candidate_type).to_lowercase(),
                    _ => String::new(),
                };
                if let Some((lt, proto)) = local {
                    return (lt, remote, proto);
                }
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        Default::default()
    }

    /// Closes the peer connection.
    pub async fn close(&self) {
        let _ = self.pc.close().await;
    }
}

fn description(kind: SdpType, sdp: String) -> SignalData {
    SignalData::Description(SessionDescription { kind, sdp })
}
