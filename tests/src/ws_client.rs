//! A protocol v1 client over tokio-tungstenite for the e2e suites (signaling, cluster,
//! proxies): JSON in and out, and a check of every seq it is sent.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::client::Request;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// The client's socket.
pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// One WebSocket connection speaking protocol v1.
pub struct WsClient {
    /// The socket, for tests that send what a well-behaved client would not.
    pub ws: Ws,
    /// Highest seq seen (what a client reports in `resume`).
    pub last_seq: u64,
    /// Its peer id and resume token, from `joined`.
    pub id: String,
    pub token: String,
    /// Every numbered message must follow the last by exactly one (no seq lost or
    /// repeated) and `resumed` must echo the last; otherwise seqs need only increase.
    pub strict: bool,
}

impl WsClient {
    /// Connects to `url`; panics if it cannot.
    pub async fn connect(url: &str) -> WsClient {
        Self::connect_with(url, None)
            .await
            .unwrap_or_else(|e| panic!("connect {url}: {e}"))
    }

    /// Connects to `url` with an `Origin` header when given.
    pub async fn connect_with(url: &str, origin: Option<&str>) -> Result<WsClient, String> {
        let mut req = url.into_client_request().map_err(|e| e.to_string())?;
        if let Some(o) = origin {
            req.headers_mut().insert("origin", o.parse().unwrap());
        }
        let (ws, _) = tokio_tungstenite::connect_async(req)
            .await
            .map_err(|e| e.to_string())?;
        Ok(Self::with(ws))
    }

    /// The WebSocket handshake `req` on a TCP connection made by the caller (from a
    /// chosen source address, say); the refusal as tungstenite reports it (its HTTP status).
    pub async fn over(tcp: TcpStream, req: Request) -> Result<WsClient, WsError> {
        let (ws, _) = tokio_tungstenite::client_async(req, MaybeTlsStream::Plain(tcp)).await?;
        Ok(Self::with(ws))
    }

    fn with(ws: Ws) -> WsClient {
        WsClient {
            ws,
            last_seq: 0,
            id: String::new(),
            token: String::new(),
            strict: false,
        }
    }

    /// Checks seqs strictly from now on (see [`WsClient::strict`]).
    pub fn strict(mut self) -> WsClient {
        self.strict = true;
        self
    }

    pub async fn send(&mut self, v: Value) {
        self.ws
            .send(Message::Text(v.to_string().into()))
            .await
            .unwrap();
    }

    /// The next server message within `t` (pings are answered by tungstenite underneath);
    /// `None` when the connection closes or nothing comes.
    pub async fn try_recv(&mut self, t: Duration) -> Option<Value> {
        let deadline = tokio::time::Instant::now() + t;
        loop {
            let m = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .ok()??;
            match m {
                Ok(Message::Text(t)) => {
                    let v: Value = serde_json::from_str(&t).unwrap();
                    self.check_seq(&v);
                    return Some(v);
                }
                Ok(Message::Close(_)) | Err(_) => return None,
                Ok(_) => continue,
            }
        }
    }

    fn check_seq(&mut self, v: &Value) {
        let s = v["seq"].as_u64().unwrap_or(0);
        if v["type"] == "resumed" {
            if self.strict {
                assert_eq!(s, self.last_seq, "resumed echoes last_seq: {v}");
            }
        } else if s > 0 {
            if self.strict {
                assert_eq!(
                    s,
                    self.last_seq + 1,
                    "no seq lost or repeated: {s} after {}: {v}",
                    self.last_seq
                );
            } else {
                assert!(
                    s > self.last_seq,
                    "seq must increase: {s} after {}: {v}",
                    self.last_seq
                );
            }
            self.last_seq = s;
        }
    }

    /// The next server message; panics if none comes within 10 s.
    pub async fn recv(&mut self) -> Value {
        self.try_recv(Duration::from_secs(10))
            .await
            .expect("a message within 10 s")
    }

    /// The next message, which must be of type `t`.
    pub async fn expect(&mut self, t: &str) -> Value {
        let v = self.recv().await;
        assert_eq!(v["type"], t, "expected {t}, got {v}");
        v
    }

    /// Joins `room`; keeps the id and resume token.
    pub async fn join(&mut self, room: &str) -> Value {
        self.send(json!({"type": "join", "room": room})).await;
        let v = self.expect("joined").await;
        self.id = v["id"].as_str().unwrap().to_string();
        self.token = v["resume_token"].as_str().unwrap().to_string();
        v
    }

    /// Signal number `i` to `to`.
    pub async fn signal(&mut self, to: &str, i: usize) {
        self.send(json!({"type":"signal","to": to,"data":{"i": i}}))
            .await;
    }

    /// The next `n` signals must come from `from`, numbered `first..first+n`.
    pub async fn expect_signals(&mut self, from: &str, first: usize, n: usize) {
        for i in first..first + n {
            let v = self.expect("signal").await;
            assert_eq!(
                (v["from"].as_str(), v["data"]["i"].as_u64()),
                (Some(from), Some(i as u64)),
                "{v}"
            );
        }
    }

    /// The next message must be an error with a message; its code.
    pub async fn error_code(&mut self) -> String {
        let v = self.expect("error").await;
        assert!(v["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
        v["code"].as_str().unwrap().to_string()
    }
}
