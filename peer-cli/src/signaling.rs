//! Protocol v1 client: joins a room, turns server messages into [`SigEvent`]s, sends
//! signals, and resumes by itself after a dropped socket (same id, missed messages
//! replayed), with backoff and jitter.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use icebreaker_protocol::{
    ClientMessage, ErrorCode, IceServer, PeerInfo, ServerMessage, SignalData,
};
use serde_json::value::RawValue;
use serde_json::Value;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tracing::{debug, warn};

/// A remote peer as the server announced it.
#[derive(Debug, Clone)]
pub struct RemoteInfo {
    /// Its peer id.
    pub id: String,
    /// Its `meta` from its join (null if none).
    pub meta: Value,
    /// Whether *we* are the polite side towards this peer.
    pub polite: bool,
}

/// What the signaling session reports, server messages first.
#[derive(Debug, Clone)]
pub enum SigEvent {
    /// `joined`: we are in the room.
    Joined {
        /// Our peer id.
        id: String,
        /// The peers already there (we are the impolite side towards each).
        peers: Vec<RemoteInfo>,
        /// STUN/TURN servers and credentials for our connections.
        ice_servers: Vec<IceServer>,
    },
    /// `peer-joined`: a peer joined after us.
    PeerJoined(RemoteInfo),
    /// `peer-left`: a peer left the room.
    PeerLeft {
        /// Its id.
        id: String,
        /// The server's reason (`left`, `timeout`, `kicked`).
        reason: String,
    },
    /// `signal`: data from another peer.
    Signal {
        /// The sender's id.
        from: String,
        /// A description or a candidate.
        data: SignalData,
    },
    /// `error`: the server refused something (resume failures end the session instead).
    Error {
        /// The protocol error code.
        code: String,
        /// The server's explanation.
        message: String,
    },
    /// The socket dropped; the client is reconnecting.
    Disconnected,
    /// The session resumed; sends queued meanwhile have gone out.
    Resumed,
    /// Resume was refused or retries ran out: the session is over.
    Failed(String),
}

/// Sends to the signaling session's task; cheap to clone.
#[derive(Clone)]
pub struct SigSender {
    tx: mpsc::Sender<Cmd>,
}

enum Cmd {
    Send(String),
    /// Test hook: drop the TCP connection without a close frame.
    Drop,
    Leave,
}

impl SigSender {
    /// Sends `data` to peer `to` (queued while reconnecting).
    pub async fn signal(&self, to: &str, data: &SignalData) {
        let data = data.to_raw();
        let msg = ClientMessage::Signal {
            to: to.into(),
            data: &data,
        };
        let _ = self.tx.send(Cmd::Send(msg.to_text())).await;
    }

    /// Test hook: cuts the TCP connection without a close frame; the session resumes.
    pub async fn drop_connection(&self) {
        let _ = self.tx.send(Cmd::Drop).await;
    }

    /// Sends `leave`, closes the socket and ends the session.
    pub async fn leave(&self) {
        let _ = self.tx.send(Cmd::Leave).await;
    }
}

/// What [`connect`] joins with.
pub struct JoinRequest {
    /// The signaling server's WebSocket URL.
    pub url: String,
    /// The room to join.
    pub room: String,
    /// Our `meta`, shown to the other peers.
    pub meta: Value,
    /// Join token (JWT) for servers that require one.
    pub token: Option<String>,
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Connects and joins; events arrive on the returned receiver until the session ends.
pub async fn connect(req: JoinRequest) -> anyhow::Result<(SigSender, mpsc::Receiver<SigEvent>)> {
    let (ws, _) = crate::tls::ws_connect(&req.url)
        .await
        .map_err(|e| anyhow::anyhow!("cannot reach the signaling server at {}: {e}", req.url))?;
    let (ev_tx, ev_rx) = mpsc::channel(1024);
    let (cmd_tx, cmd_rx) = mpsc::channel(1024);
    tokio::spawn(run(req, ws, ev_tx, cmd_rx));
    Ok((SigSender { tx: cmd_tx }, ev_rx))
}

struct Session {
    id: Option<String>,
    token: Option<String>,
    last_seq: u64,
    /// A resume was sent and not answered yet.
    resuming: bool,
}

async fn run(
    req: JoinRequest,
    mut ws: Ws,
    ev: mpsc::Sender<SigEvent>,
    mut cmds: mpsc::Receiver<Cmd>,
) {
    let meta = serde_json::value::to_raw_value(&req.meta).ok();
    let join = ClientMessage::Join {
        room: req.room.as_str().into(),
        token: req.token.as_deref().map(Into::into),
        meta: meta.as_deref(),
    };
    if ws.send(Message::Text(join.to_text().into())).await.is_err() {
        let _ = ev
            .send(SigEvent::Failed("could not send join".into()))
            .await;
        return;
    }
    let mut s = Session {
        id: None,
        token: None,
        last_seq: 0,
        resuming: false,
    };
    // Messages queued while reconnecting (bounded: the channel itself).
    let mut pending: Vec<String> = Vec::new();
    // `unavailable` (a cluster node lost Redis for a moment, docs/protocol.md): the join or
    // resume is tried again after a backoff, a few times, then given up.
    let mut unavailable_tries = 0u32;
    loop {
        let dropped = pump(&mut ws, &mut s, &ev, &mut cmds, &mut pending).await;
        match dropped {
            Pumped::Closed => return,
            Pumped::Dropped => unavailable_tries = 0,
            Pumped::Unavailable(message) => {
                unavailable_tries += 1;
                if unavailable_tries > UNAVAILABLE_TRIES {
                    let _ = ev
                        .send(SigEvent::Failed(format!(
                            "the signaling server stayed unavailable: {message}"
                        )))
                        .await;
                    return;
                }
                let wait = backoff(unavailable_tries);
                warn!(%message, retry_in = ?wait, "signaling server unavailable; trying again");
                tokio::time::sleep(wait).await;
                if s.id.is_none() {
                    if ws.send(Message::Text(join.to_text().into())).await.is_ok() {
                        continue;
                    }
                } else {
                    // The resume was refused: a new connection resumes again below (the
                    // balancer may pick a node that is whole).
                    let _ = ws.close(None).await;
                }
            }
        }
        let (Some(id), Some(token)) = (s.id.clone(), s.token.clone()) else {
            let _ = ev
                .send(SigEvent::Failed("connection lost before joining".into()))
                .await;
            return;
        };
        let _ = ev.send(SigEvent::Disconnected).await;
        // Reconnect with exponential backoff and jitter, then resume.
        let mut delay = Duration::from_millis(100);
        let mut resumed = false;
        for _attempt in 0..10 {
            let jitter =
                Duration::from_millis(rand::random::<u64>() % (delay.as_millis() as u64 / 2 + 1));
            tokio::time::sleep(delay + jitter).await;
            delay = (delay * 2).min(Duration::from_secs(5));
            match crate::tls::ws_connect(&req.url).await {
                Ok((mut nws, _)) => {
                    let msg = ClientMessage::Resume {
                        id: id.as_str().into(),
                        token: token.as_str().into(),
                        last_seq: s.last_seq,
                    };
                    if nws.send(Message::Text(msg.to_text().into())).await.is_ok() {
                        ws = nws;
                        s.resuming = true;
                        resumed = true;
                        break;
                    }
                }
                Err(e) => debug!(error = %e, "reconnect failed"),
            }
        }
        if !resumed {
            let _ = ev
                .send(SigEvent::Failed(
                    "could not reconnect to the signaling server".into(),
                ))
                .await;
            return;
        }
    }
}

enum Pumped {
    /// We left or the receiver went away: stop.
    Closed,
    /// The socket broke: reconnect and resume.
    Dropped,
    /// Our join or resume got `unavailable`: wait, then try it again.
    Unavailable(String),
}

/// How often a join or resume refused with `unavailable` is tried again.
const UNAVAILABLE_TRIES: u32 = 8;

/// 200 ms, doubling up to 5 s, with up to 50 % jitter: retries from many peers spread out.
fn backoff(attempt: u32) -> Duration {
    let base = Duration::from_millis(200 * (1u64 << attempt.min(5).saturating_sub(1)))
        .min(Duration::from_secs(5));
    base + Duration::from_millis(rand::random::<u64>() % (base.as_millis() as u64 / 2 + 1))
}

async fn pump(
    ws: &mut Ws,
    s: &mut Session,
    ev: &mpsc::Sender<SigEvent>,
    cmds: &mut mpsc::Receiver<Cmd>,
    pending: &mut Vec<String>,
) -> Pumped {
    // Flush what was queued while disconnected once the resume is confirmed.
    // What we have handed to the application is acknowledged with `last_seq` in a ping
    // (docs/protocol.md): every ACK_EVERY messages and every few seconds, so the server's
    // replay buffer holds only what we have not processed.
    const ACK_EVERY: u64 = 32;
    let mut acked = s.last_seq;
    let mut ack_timer = tokio::time::interval(std::time::Duration::from_secs(5));
    loop {
        if s.last_seq >= acked + ACK_EVERY {
            acked = s.last_seq;
            if ws.send(ack(acked)).await.is_err() {
                return Pumped::Dropped;
            }
        }
        tokio::select! {
            _ = ack_timer.tick() => {
                if s.last_seq > acked && s.id.is_some() {
                    acked = s.last_seq;
                    if ws.send(ack(acked)).await.is_err() {
                        return Pumped::Dropped;
                    }
                }
            }
            m = ws.next() => {
                let text = match m {
                    Some(Ok(Message::Text(t))) => t,
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return Pumped::Dropped,
                    Some(Ok(_)) => continue,
                };
                let msg = match ServerMessage::parse(&text) {
                    Ok(m) => m,
                    Err(e) => {
                        warn!(error = %e, "unreadable server message");
                        continue;
                    }
                };
                let seq = msg.seq();
                if !matches!(msg, ServerMessage::Resumed { .. }) && seq > 0 {
                    if seq <= s.last_seq {
                        continue; // already seen (replayed twice)
                    }
                    s.last_seq = seq;
                }
                let event = match msg {
                    ServerMessage::Joined { id, peers, ice_servers, resume_token, .. } => {
                        s.id = Some(id.to_string());
                        s.token = Some(resume_token.into_owned());
                        let ice_servers = IceServer::list(ice_servers).unwrap_or_else(|e| {
                            warn!(error = %e, "ignoring ice_servers");
                            Vec::new()
                        });
                        SigEvent::Joined {
                            id: id.into_owned(),
                            peers: peers.iter().map(remote).collect(),
                            ice_servers,
                        }
                    }
                    ServerMessage::PeerJoined { id, meta, polite, .. } => {
                        SigEvent::PeerJoined(remote(&PeerInfo { id, meta, polite }))
                    }
                    ServerMessage::PeerLeft { id, reason, .. } => SigEvent::PeerLeft {
                        id: id.into_owned(),
                        reason: reason.as_str().into(),
                    },
                    ServerMessage::Signal { from, data, .. } => match SignalData::parse(data) {
                        Some(data) => SigEvent::Signal { from: from.into_owned(), data },
                        None => {
                            warn!(%from, "signal data this peer does not understand");
                            continue;
                        }
                    },
                    ServerMessage::Resumed { .. } => {
                        s.resuming = false;
                        for p in pending.drain(..) {
                            if ws.send(Message::Text(p.into())).await.is_err() {
                                return Pumped::Dropped;
                            }
                        }
                        SigEvent::Resumed
                    }
                    ServerMessage::Error { code: ErrorCode::Unavailable, message, .. }
                        if s.id.is_none() || s.resuming =>
                    {
                        return Pumped::Unavailable(message.into_owned());
                    }
                    ServerMessage::Error { code: ErrorCode::ResumeFailed, message, .. } => {
                        let _ = ev.send(SigEvent::Failed(format!("resume failed: {message}"))).await;
                        return Pumped::Closed;
                    }
                    ServerMessage::Error { code, message, .. } => SigEvent::Error {
                        code: code.as_str().into(),
                        message: message.into_owned(),
                    },
                    ServerMessage::Pong { .. } => continue,
                };
                if ev.send(event).await.is_err() {
                    return Pumped::Closed;
                }
            }
            c = cmds.recv() => match c {
                None => return Pumped::Closed,
                Some(Cmd::Send(text)) => {
                    if ws.send(Message::Text(text.clone().into())).await.is_err() {
                        pending.push(text);
                        return Pumped::Dropped;
                    }
                }
                Some(Cmd::Leave) => {
                    let _ = ws.send(Message::Text(ClientMessage::Leave.to_text().into())).await;
                    let _ = ws.close(None).await;
                    return Pumped::Closed;
                }
                Some(Cmd::Drop) => {
                    // Abrupt: shut the TCP stream down with no close frame, like a network drop.
                    let tcp = match ws.get_mut() {
                        tokio_tungstenite::MaybeTlsStream::Plain(tcp) => Some(&*tcp),
                        tokio_tungstenite::MaybeTlsStream::Rustls(tls) => Some(tls.get_ref().0),
                        _ => None,
                    };
                    if let Some(tcp) = tcp {
                        let _ = socket2::SockRef::from(tcp).shutdown(std::net::Shutdown::Both);
                    }
                    return Pumped::Dropped;
                }
            }
        }
    }
}

/// A `ping` acknowledging everything up to `seq` (docs/protocol.md).
fn ack(seq: u64) -> Message {
    Message::Text(
        ClientMessage::Ping {
            last_seq: Some(seq),
        }
        .to_text()
        .into(),
    )
}

/// Opaque JSON from the server (meta, signal data) as a value for the application.
fn json_value(raw: Option<&RawValue>) -> Value {
    raw.and_then(|r| serde_json::from_str(r.get()).ok())
        .unwrap_or(Value::Null)
}

fn remote(p: &PeerInfo<'_>) -> RemoteInfo {
    RemoteInfo {
        id: p.id.to_string(),
        meta: json_value(p.meta),
        polite: p.polite,
    }
}
