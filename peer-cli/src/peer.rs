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
    /// What the receiver's RTCP reports say about this track.
    pub sent: Arc<SendStats>,
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
    /// Packets lost (RFC 3550 A.3: expected from the sequence numbers less received;
    /// negative with duplicates).
    pub lost: std::sync::atomic::AtomicI64,
    /// Interarrival jitter (RFC 3550 A.8), in microseconds.
    pub jitter_us: AtomicU64,
}

/// What RTCP receiver reports say of one track we send.
#[derive(Debug, Default)]
pub struct SendStats {
    /// The latest round trip from a report (RFC 3550 §6.4.1: arrival − LSR − DLSR), µs.
    pub rtt_us: AtomicU64,
    /// Reports that carried a round trip.
    pub rtt_samples: AtomicU64,
    /// Cumulative packets lost, as the receiver last reported.
    pub remote_lost: AtomicU64,
}

/// Loss and jitter of one RTP stream as it arrives (RFC 3550 A.1, A.3, A.8).
struct Reception {
    clock_rate: f64,
    base_seq: u32,
    max_seq: u16,
    cycles: u32,
    received: u64,
    /// Previous relative transit time, in RTP timestamp units.
    transit: Option<f64>,
    jitter: f64,
}

impl Reception {
    fn new(clock_rate: u32) -> Self {
        Reception {
            clock_rate: clock_rate as f64,
            base_seq: 0,
            max_seq: 0,
            cycles: 0,
            received: 0,
            transit: None,
            jitter: 0.0,
        }
    }

    /// One packet: its sequence number and RTP timestamp, arrived `arrival` after a fixed
    /// origin. Returns (lost, jitter in µs) so far.
    fn on_packet(&mut self, seq: u16, ts: u32, arrival: Duration) -> (i64, u64) {
        if self.received == 0 {
            self.base_seq = seq as u32;
            self.max_seq = seq;
        } else {
            let delta = seq.wrapping_sub(self.max_seq);
            if delta < 0x8000 {
                if seq < self.max_seq {
                    self.cycles += 1 << 16; // wrapped forwards
                }
                self.max_seq = seq;
            } // else: late or duplicate, counted as received only
        }
        self.received += 1;
        let arrival = arrival.as_secs_f64() * self.clock_rate;
        let transit = arrival - ts as f64;
        if let Some(prev) = self.transit {
            let d = (transit - prev).abs();
            // A timestamp jump (a new talk spurt or a source restart) is not jitter.
            if d < self.clock_rate {
                self.jitter += (d - self.jitter) / 16.0;
            }
        }
        self.transit = Some(transit);
        let expected = (self.cycles + self.max_seq as u32) as i64 - self.base_seq as i64 + 1;
        (
            expected - self.received as i64,
            (self.jitter / self.clock_rate * 1e6) as u64,
        )
    }
}

/// The middle 32 bits of the NTP time now, as RTCP's LSR field carries them.
fn ntp_middle_now() -> u32 {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = d.as_secs() + 2_208_988_800; // 1900 → 1970
    let frac = ((d.subsec_nanos() as u64) << 32) / 1_000_000_000;
    ((secs << 16) | (frac >> 16)) as u32
}

/// The round trip a reception report says (RFC 3550 §6.4.1), if it has one.
fn report_rtt(now_mid: u32, lsr: u32, dlsr: u32) -> Option<Duration> {
    if lsr == 0 {
        return None; // no sender report seen yet
    }
    let rtt = now_mid.wrapping_sub(lsr).wrapping_sub(dlsr);
    // More than a minute is a report from before a clock step, not a round trip.
    (rtt < 60 << 16).then(|| Duration::from_micros(rtt as u64 * 1_000_000 / 65_536))
}

/// Marks inbound RTCP receiver/sender reports for the application: webrtc-rs stops inbound
/// RTCP inside its interceptor chain by default, and its stats leave the round trip at 0,
/// so [`watch_reports`] reads the reports on our sending tracks and works it out.
#[derive(Default)]
struct DeliverReports {
    read: std::collections::VecDeque<rtc::interceptor::TaggedPacket>,
    write: std::collections::VecDeque<rtc::interceptor::TaggedPacket>,
}

impl rtc::sansio::Protocol<rtc::interceptor::TaggedPacket, rtc::interceptor::TaggedPacket, ()>
    for DeliverReports
{
    type Rout = rtc::interceptor::TaggedPacket;
    type Wout = rtc::interceptor::TaggedPacket;
    type Eout = ();
    type Error = rtc::shared::error::Error;
    type Time = Instant;

    fn handle_read(&mut self, mut msg: rtc::interceptor::TaggedPacket) -> Result<(), Self::Error> {
        use rtc::rtcp::receiver_report::ReceiverReport;
        if let rtc::interceptor::Packet::Rtcp(packets) = &msg.message.packet {
            if packets
                .iter()
                .any(|p| p.as_any().downcast_ref::<ReceiverReport>().is_some())
            {
                msg.message
                    .add(rtc::interceptor::Attribute::DeliverToApplication);
            }
        }
        self.read.push_back(msg);
        Ok(())
    }
    fn poll_read(&mut self) -> Option<Self::Rout> {
        self.read.pop_front()
    }
    fn handle_write(&mut self, msg: rtc::interceptor::TaggedPacket) -> Result<(), Self::Error> {
        self.write.push_back(msg);
        Ok(())
    }
    fn poll_write(&mut self) -> Option<Self::Wout> {
        self.write.pop_front()
    }
    fn handle_timeout(&mut self, _now: Instant) -> Result<(), Self::Error> {
        Ok(())
    }
    fn poll_timeout(&mut self) -> Option<Self::Time> {
        None
    }
}

impl rtc::interceptor::Interceptor for DeliverReports {
    fn bind_local_stream(&mut self, _: &rtc::interceptor::StreamInfo) {}
    fn unbind_local_stream(&mut self, _: &rtc::interceptor::StreamInfo) {}
    fn bind_remote_stream(&mut self, _: &rtc::interceptor::StreamInfo) {}
    fn unbind_remote_stream(&mut self, _: &rtc::interceptor::StreamInfo) {}
}

/// Reads the RTCP that reaches one of our sending tracks while its connection lives,
/// keeping what the receiver reports about it in `m.sent`.
async fn watch_reports(m: LocalMedia, remote: Weak<Remote>) {
    use rtc::rtcp::receiver_report::ReceiverReport;
    use webrtc::media_stream::track_local::TrackLocalEvent;
    let track = m.as_track();
    while remote.strong_count() > 0 {
        // webrtc-rs's poll holds the track's event lock while it waits, and its driver
        // takes that lock to unbind the track: never wait long, or closing would hang. An
        // unbound track (before negotiation) answers None at once.
        let packets = match tokio::time::timeout(Duration::from_millis(200), track.poll()).await {
            Ok(Some(TrackLocalEvent::OnRtcpPacket(p))) => p,
            Ok(_) => {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
            Err(_) => continue,
        };
        let now = ntp_middle_now();
        for p in &packets {
            let Some(rr) = p.as_any().downcast_ref::<ReceiverReport>() else {
                continue;
            };
            for r in rr.reports.iter().filter(|r| r.ssrc == m.ssrc) {
                m.sent
                    .remote_lost
                    .store(r.total_lost as u64, Ordering::Relaxed);
                if let Some(rtt) = report_rtt(now, r.last_sender_report, r.delay) {
                    m.sent
                        .rtt_us
                        .store(rtt.as_micros() as u64, Ordering::Relaxed);
                    m.sent.rtt_samples.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }
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
    /// Our DTLS role as `a=setup` names it (`active`: client, `passive`: server), fixed
    /// by the first offer/answer exchange; later answers must keep it (RFC 8842 §5.5).
    setup: Option<&'static str>,
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
    /// True while our ICE gathering is complete, false while it runs (gates
    /// [`nudge_driver`]).
    gathered: Arc<AtomicBool>,
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
///
/// Only while our gathering is complete (`gathered`): the driver keeps the configuration
/// as pending and applies it when the next gathering starts (a renegotiation), and
/// webrtc 0.21.1's TURN relayer treats it as a new configuration, tearing its clients
/// down and allocating again on the same 5-tuple, unless every allocation is already
/// established (then it only re-signs them). A teardown while an Allocate is in flight
/// gets 437 (Allocation Mismatch, RFC 8656 §7.2) from the server, which already made the
/// allocation, and the connection is left without a relay candidate: relay-only, that
/// was 2–6 of 20 `load --media` peers timing out in setup.
async fn nudge_driver(
    pc: Weak<dyn PeerConnection>,
    up: Arc<AtomicBool>,
    gathered: Arc<AtomicBool>,
    every: Duration,
) {
    if every.is_zero() {
        return;
    }
    let started = tokio::time::Instant::now();
    while !up.load(Ordering::Acquire) && started.elapsed() < NUDGE_FOR {
        if !gathered.load(Ordering::Acquire) {
            tokio::time::sleep(every).await;
            continue;
        }
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
        self.gathered
            .store(s == RTCIceGatheringState::Complete, Ordering::Release);
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
                    self.gathered.clone(),
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
            let mut reception = Reception::new(if kind.contains("video") {
                90_000
            } else {
                48_000
            });
            let origin = Instant::now();
            while let Some(ev) = t.poll().await {
                if let TrackRemoteEvent::OnRtpPacket(mut p) = ev {
                    let (lost, jitter) = reception.on_packet(
                        p.header.sequence_number,
                        p.header.timestamp,
                        origin.elapsed(),
                    );
                    stats.lost.store(lost, Ordering::Relaxed);
                    stats.jitter_us.store(jitter, Ordering::Relaxed);
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
            gathered: Arc::new(AtomicBool::new(false)),
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
        let mut reg = Registry::new();
        if !tracks.is_empty() {
            // Above every default interceptor: the reports still feed their stats.
            reg = reg.with(
                rtc::interceptor::Slot::from(14_000),
                DeliverReports::default(),
            );
        }
        let reg = register_default_interceptors(reg, &mut me)?;
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
        for (m, _) in &r.media {
            tokio::spawn(watch_reports(m.clone(), Arc::downgrade(&r)));
        }
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
        if !is_offer && neg.setup.is_none() {
            // They answered our first offer: we take the role their answer leaves us.
            neg.setup = match sdp_setup(&sdp.sdp) {
                Some("active") => Some("passive"),
                Some("passive") => Some("active"),
                _ => None,
            };
        }
        if is_offer {
            let answer = self.pc.create_answer(None).await?;
            if neg.setup.is_none() {
                neg.setup = match sdp_setup(&answer.sdp) {
                    Some("passive") => Some("passive"),
                    Some(_) => Some("active"),
                    None => None,
                };
            }
            // webrtc-rs only takes back the answer exactly as it made it ("new sdp does
            // not match previous answer"), so the role is fixed on the wire, not locally.
            self.pc.set_local_description(answer).await?;
            if let Some(d) = self.pc.local_description().await {
                let sdp = match neg.setup {
                    Some(role) => with_setup(&d.sdp, role),
                    None => d.sdp,
                };
                self.sig
                    .signal(&self.id, &description(SdpType::Answer, sdp))
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

/// The `a=setup` value (RFC 4145) of the first media section that has one.
fn sdp_setup(sdp: &str) -> Option<&str> {
    sdp.lines()
        .find_map(|l| l.trim_end().strip_prefix("a=setup:"))
        .map(str::trim)
}

/// `sdp` with every `a=setup` line saying `role`. webrtc-rs 0.21 answers every offer with
/// its configured answering role (`active`), also a re-offer after the first exchange made
/// us the DTLS server (we offered, the browser answered `active`). RFC 8842 §5.5 has a
/// later answer keep the role in force, and Chromium refuses one that does not ("Failed to
/// set remote answer sdp: ... DTLS role"), so a browser could never add a track (a screen
/// share) towards us. The association itself is not renegotiated, so fixing the line is
/// all it takes; drop this once webrtc-rs answers with the negotiated role.
fn with_setup(sdp: &str, role: &str) -> String {
    let mut out = String::with_capacity(sdp.len());
    for line in sdp.split_inclusive('\n') {
        let body = line.trim_end_matches(['\r', '\n']);
        if body.starts_with("a=setup:") {
            out.push_str("a=setup:");
            out.push_str(role);
            out.push_str(&line[body.len()..]);
        } else {
            out.push_str(line);
        }
    }
    out
}

fn description(kind: SdpType, sdp: String) -> SignalData {
    SignalData::Description(SessionDescription { kind, sdp })
}

#[cfg(test)]
mod tests {
    use super::*;

    const ANSWER: &str = "v=0\r\no=- 1 2 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n\
        m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=setup:active\r\na=mid:0\r\n\
        m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\na=setup:active\r\na=mid:1\r\n";

    #[test]
    fn reception_counts_loss_across_a_wrap_and_jitter() {
        let mut r = Reception::new(90_000);
        let frame = Duration::from_millis(40);
        let mut last = (0, 0);
        // 65530 … 65535, 0 … 9 with 2 and 5 missing; 3600 ticks (40 ms) apart, on time.
        for (i, seq) in (65530u16..=65535).chain(0..10).enumerate() {
            if seq == 2 || seq == 5 {
                continue;
            }
            last = r.on_packet(seq, i as u32 * 3600, frame * i as u32);
        }
        assert_eq!(last, (2, 0));
        // A duplicate counts as received (RFC 3550 A.3: loss may even go negative), and a
        // late packet does not move the highest sequence number.
        let (lost, _) = r.on_packet(3, 3600 * 9, frame * 9);
        assert_eq!(lost, 1);
        // Arriving 10 ms late: jitter moves 1/16 of the way to 900 ticks (10 ms).
        let (_, jitter) = r.on_packet(10, 3600 * 16, frame * 16 + Duration::from_millis(10));
        assert!((620..=630).contains(&jitter), "{jitter} µs");
    }

    #[test]
    fn round_trip_from_a_reception_report() {
        // LSR 1.0 s, held 0.25 s (DLSR), arrives at 1.5 s: 250 ms.
        let rtt = report_rtt(3 << 15, 1 << 16, 1 << 14).unwrap();
        assert_eq!(rtt, Duration::from_millis(250));
        assert_eq!(report_rtt(3 << 15, 0, 0), None, "no SR seen yet");
        // Across the wrap of the 32-bit field.
        let rtt = report_rtt(10, u32::MAX - 100, 0).unwrap();
        assert_eq!(rtt, Duration::from_micros(111 * 1_000_000 / 65_536));
        assert_eq!(report_rtt(0, 5 << 16, 0), None, "from before a clock step");
    }

    #[test]
    fn the_answer_keeps_the_dtls_role_in_force() {
        assert_eq!(sdp_setup(ANSWER), Some("active"));
        let fixed = with_setup(ANSWER, "passive");
        assert_eq!(fixed.matches("a=setup:passive\r\n").count(), 2, "{fixed}");
        assert!(!fixed.contains("a=setup:active"));
        // Nothing else changes, CRLF included.
        assert_eq!(fixed.replace("passive", "active"), ANSWER);
        assert_eq!(with_setup(ANSWER, "active"), ANSWER);
        // LF-only SDP and one without the attribute.
        assert_eq!(
            with_setup("a=setup:active\nx\n", "passive"),
            "a=setup:passive\nx\n"
        );
        assert_eq!(sdp_setup("v=0\r\n"), None);
    }
}
