//! A peer in a room: follows signaling events, keeps one [`Remote`] per other peer, and
//! hands the subcommand one stream of [`Event`]s.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use icebreaker_protocol::channel::MEDIA_CHANNEL;
use icebreaker_protocol::MediaState;
use serde_json::{json, Value};
use tokio::sync::{mpsc, Mutex};
use tracing::warn;

use crate::peer::{LocalMedia, PeerEvent, Remote, Setup};
use crate::signaling::{self, JoinRequest, SigEvent, SigSender};

/// The global options every subcommand joins with.
#[derive(Debug, Clone)]
pub struct Options {
    /// The signaling server's WebSocket URL.
    pub server: String,
    /// The room to join.
    pub room: String,
    /// Our name, sent as `meta.name` and as the `from` of our messages.
    pub name: String,
    /// Relay-only ICE (iceTransportPolicy "relay").
    pub relay_only: bool,
    /// Join token (JWT) for servers that require one.
    pub token: Option<String>,
    /// Local address for the WebRTC sockets.
    pub bind: IpAddr,
    /// ICE check pacing and nomination waits.
    pub ice: crate::peer::IceTiming,
    /// What we send (audio, video, screen), announced to every peer on the `media`
    /// channel; `from` is filled in with `name`.
    pub media_state: icebreaker_protocol::MediaState,
}

/// What a subcommand sees of the room: signaling and every peer connection.
#[derive(Debug, Clone)]
pub enum Event {
    /// We joined.
    Joined {
        /// Our peer id.
        id: String,
        /// How many peers were there already.
        peers: usize,
    },
    /// Another peer joined.
    PeerJoined {
        /// Its id.
        peer: String,
    },
    /// A peer left; its connection is closed.
    PeerLeft {
        /// Its id.
        peer: String,
        /// The server's reason (`left`, `timeout`, `kicked`).
        reason: String,
    },
    /// Something happened on the connection to a peer.
    Peer(PeerEvent),
    /// The signaling socket dropped; the client is reconnecting.
    SignalingDropped,
    /// The signaling session resumed.
    SignalingResumed,
    /// The signaling session is over (resume refused or retries ran out).
    SignalingFailed(String),
    /// The server sent an error.
    ServerError {
        /// The protocol error code.
        code: String,
        /// The server's explanation.
        message: String,
    },
}

/// Builds the local tracks for each new connection (media subcommand); none for chat.
pub type TrackFactory = Arc<dyn Fn() -> Vec<LocalMedia> + Send + Sync>;

/// A joined room: its events, the signaling sender, and the connections by peer id.
pub struct Room {
    /// Every room and peer event, in one stream.
    pub events: mpsc::Receiver<Event>,
    /// Sends to the signaling server.
    pub sig: SigSender,
    /// The connection to each remote peer, by its id.
    pub remotes: Arc<Mutex<HashMap<String, Arc<Remote>>>>,
}

impl Room {
    /// Connects to the signaling server and joins `opts.room`, building `tracks` for each
    /// new connection; the newcomer offers to every peer already there.
    pub async fn join(opts: &Options, tracks: Option<TrackFactory>) -> anyhow::Result<Room> {
        let (sig, mut sig_events) = signaling::connect(JoinRequest {
            url: opts.server.clone(),
            room: opts.room.clone(),
            meta: json!({"name": opts.name}),
            token: opts.token.clone(),
        })
        .await?;
        let (tx, rx) = mpsc::channel::<Event>(4096);
        let (ptx, mut prx) = mpsc::channel::<PeerEvent>(4096);
        let remotes: Arc<Mutex<HashMap<String, Arc<Remote>>>> = Arc::default();
        // Peer events flow into the same stream as room events.
        {
            let tx = tx.clone();
            tokio::spawn(async move {
                while let Some(e) = prx.recv().await {
                    if tx.send(Event::Peer(e)).await.is_err() {
                        break;
                    }
                }
            });
        }
        let (opts2, sig2, remotes2) = (opts.clone(), sig.clone(), remotes.clone());
        tokio::spawn(async move {
            let mut setup: Option<Setup> = None;
            while let Some(ev) = sig_events.recv().await {
                let out = match ev {
                    SigEvent::Joined {
                        id,
                        peers,
                        ice_servers,
                    } => {
                        let mut s = Setup::from_joined(
                            &ice_servers,
                            opts2.relay_only,
                            opts2.bind,
                            opts2.ice,
                        );
                        s.media_state = icebreaker_protocol::MediaState {
                            from: opts2.name.clone(),
                            ..opts2.media_state.clone()
                        };
                        // We are the newcomer: we offer to everyone already here.
                        for p in &peers {
                            add_remote(&remotes2, p, &s, &sig2, &ptx, &tracks).await;
                        }
                        setup = Some(s);
                        Event::Joined {
                            id,
                            peers: peers.len(),
                        }
                    }
                    SigEvent::PeerJoined(p) => {
                        if let Some(s) = &setup {
                            add_remote(&remotes2, &p, s, &sig2, &ptx, &tracks).await;
                        }
                        Event::PeerJoined { peer: p.id }
                    }
                    SigEvent::PeerLeft { id, reason } => {
                        if let Some(r) = remotes2.lock().await.remove(&id) {
                            tokio::spawn(async move { r.close().await });
                        }
                        Event::PeerLeft { peer: id, reason }
                    }
                    SigEvent::Signal { from, data } => {
                        let r = remotes2.lock().await.get(&from).cloned();
                        if let Some(r) = r {
                            r.on_signal(&data).await;
                        }
                        continue;
                    }
                    SigEvent::Error { code, message } => Event::ServerError { code, message },
                    SigEvent::Disconnected => Event::SignalingDropped,
                    SigEvent::Resumed => Event::SignalingResumed,
                    SigEvent::Failed(m) => Event::SignalingFailed(m),
                };
                if tx.send(out).await.is_err() {
                    break;
                }
            }
        });
        Ok(Room {
            events: rx,
            sig,
            remotes,
        })
    }

    /// Leaves the room and closes every connection.
    pub async fn close(&self) {
        self.sig.leave().await;
        let all: Vec<Arc<Remote>> = self.remotes.lock().await.drain().map(|(_, r)| r).collect();
        for r in all {
            r.close().await;
        }
    }
}

/// Creates the connection to `p` with fresh local tracks and keeps it.
async fn add_remote(
    remotes: &Mutex<HashMap<String, Arc<Remote>>>,
    p: &crate::signaling::RemoteInfo,
    setup: &Setup,
    sig: &SigSender,
    events: &mpsc::Sender<PeerEvent>,
    tracks: &Option<TrackFactory>,
) {
    let media = tracks.as_ref().map(|f| f()).unwrap_or_default();
    match Remote::new(&p.id, p.polite, setup, sig.clone(), events.clone(), media).await {
        Ok(r) => {
            remotes.lock().await.insert(p.id.clone(), r);
        }
        Err(e) => warn!(peer = %p.id, error = %e, "cannot create connection"),
    }
}

/// The JSON form of an event for `--json` output (one object per line).
pub fn event_json(e: &Event) -> Value {
    match e {
        Event::Joined { id, peers } => json!({"event": "joined", "id": id, "peers": peers}),
        Event::PeerJoined { peer } => json!({"event": "peer-joined", "peer": peer}),
        Event::PeerLeft { peer, reason } => {
            json!({"event": "peer-left", "peer": peer, "reason": reason})
        }
        Event::Peer(PeerEvent::Connected {
            peer,
            local,
            remote,
            protocol,
        }) => {
            json!({"event": "connected", "peer": peer, "local": local, "remote": remote, "protocol": protocol})
        }
        Event::Peer(PeerEvent::ChannelOpen { peer, label, .. }) => {
            json!({"event": "channel-open", "peer": peer, "label": label})
        }
        Event::Peer(PeerEvent::Message { peer, label, text }) if label == MEDIA_CHANNEL => {
            match MediaState::parse(text) {
                Ok(m) => json!({"event": "media-state", "peer": peer, "from": m.from,
                    "audio": m.audio, "video": m.video, "screen": m.screen}),
                Err(e) => {
                    json!({"event": "bad-message", "peer": peer, "label": label, "error": e.to_string()})
                }
            }
        }
        Event::Peer(PeerEvent::Message { peer, label, text }) => {
            json!({"event": "message", "peer": peer, "label": label, "text": text})
        }
        Event::Peer(PeerEvent::Phase { peer, phase }) => {
            json!({"event": "phase", "peer": peer, "phase": phase.as_str()})
        }
        Event::Peer(PeerEvent::Failed { peer }) => {
            json!({"event": "connection-failed", "peer": peer})
        }
        Event::Peer(PeerEvent::Track { peer, kind, .. }) => {
            json!({"event": "track", "peer": peer, "kind": kind})
        }
        Event::SignalingDropped => json!({"event": "signaling-dropped"}),
        Event::SignalingResumed => json!({"event": "signaling-resumed"}),
        Event::SignalingFailed(m) => json!({"event": "signaling-failed", "message": m}),
        Event::ServerError { code, message } => {
            json!({"event": "server-error", "code": code, "message": message})
        }
    }
}

/// Wall-clock milliseconds since the Unix epoch (the `ts` of chat and pointer frames).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
