//! One task per pair: both connections of a pair live in the same task, so a delivery seen on
//! the receiver refills the sender's window without any cross-task wake-up, and every batch
//! of frames for one socket goes out in one write (feed, feed, …, flush).

use std::pin::Pin;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant as StdInstant};

use futures_util::{SinkExt, StreamExt};
use serde_json::value::RawValue;
use tokio::sync::oneshot;
use tokio::time::{Instant, Interval, MissedTickBehavior, Sleep};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use crate::proto::{dispatch, mark_dead, parse_sig, take_text, Conn, Ev, Template};
use crate::{fail, now_us, sh};

/// Paced mode: at most this many frames per stream per write (a late sender catches up in
/// several writes, reading in between).
const PACED_BATCH: u64 = 256;
/// Reads handled in a row before the sender gets a turn anyway.
const MAX_READS_IN_ROW: u32 = 64;

#[derive(Clone, Copy, Debug)]
pub enum Kind {
    /// Window mode (rate 0): at most `inflight` undelivered messages per stream, for `duration`.
    Max { inflight: u64, duration: Duration },
    /// Message n of a stream is due at t0 + (n + phase) / r seconds; `total` per stream.
    Paced { r: f64, total: u64 },
}

pub struct StreamCfg {
    /// sender is the pair's second connection (b → a)
    pub from_b: bool,
    pub template: Template,
    /// staggers senders across the schedule period: stream index / number of streams
    pub phase: f64,
}

pub struct Start {
    pub t0: StdInstant,
    pub kind: Kind,
    pub drain: Duration,
    pub streams: Vec<StreamCfg>,
}

#[derive(Default)]
pub struct PairStats {
    pub sent: u64,
    pub delivered: u64,
    pub order_violations: u64,
    pub gaps: u64,
    /// one-way latency samples, µs
    pub lat_us: Vec<u32>,
    /// paced: how late each send left, µs
    pub lag_us: Vec<u32>,
    pub send_end: Option<StdInstant>,
    pub last_delivery: Option<StdInstant>,
}

struct Stream {
    /// 0 = a, 1 = b
    from: usize,
    template: Template,
    phase: f64,
    /// next counter to send (= sent so far)
    n: u64,
    delivered: u64,
    last_recv: i64,
}

enum Phase {
    Sending,
    Draining(StdInstant),
    /// waiting for the start signal, or done: only reading and heartbeats
    Idle,
}

struct Pair {
    a: Conn,
    b: Conn,
    streams: Vec<Stream>,
    /// stream received by connection 0 / 1
    recv: [Option<usize>; 2],
    kind: Kind,
    t0: StdInstant,
    drain: Duration,
    phase: Phase,
    stats: PairStats,
    lat_cap: usize,
    unreported_sent: u64,
    unreported_delivered: u64,
    hb: Interval,
    hb_on: bool,
}

/// Heartbeats on each connection every --heartbeat-s (PeerJS closes silent clients after
/// 90 s); a disabled one never fires.
pub fn heartbeat_interval() -> Interval {
    let s = sh().cfg.heartbeat_s;
    let period = if s > 0 {
        Duration::from_secs(s)
    } else {
        Duration::from_secs(86_400 * 365)
    };
    let mut iv = tokio::time::interval_at(Instant::now() + period, period);
    iv.set_missed_tick_behavior(MissedTickBehavior::Delay);
    iv
}

fn due(el: f64, r: f64, phase: f64, total: u64) -> u64 {
    let d = (el * r - phase).floor() + 1.0;
    if d <= 0.0 {
        0
    } else {
        (d as u64).min(total)
    }
}

/// The pair's task: holds both connections until the process exits. Reports its figures on
/// `stats_tx` once its streams are drained (or the drain time is over).
pub async fn run_pair(
    a: Conn,
    b: Conn,
    mut start_rx: oneshot::Receiver<Start>,
    stats_tx: oneshot::Sender<PairStats>,
    lat_cap: usize,
) {
    let hb_on = sh().cfg.heartbeat_s > 0;
    let mut p = Pair {
        a,
        b,
        streams: Vec::new(),
        recv: [None, None],
        kind: Kind::Max {
            inflight: 0,
            duration: Duration::ZERO,
        },
        t0: StdInstant::now(),
        drain: Duration::ZERO,
        phase: Phase::Idle,
        stats: PairStats::default(),
        lat_cap,
        unreported_sent: 0,
        unreported_delivered: 0,
        hb: heartbeat_interval(),
        hb_on,
    };
    // Until every pair is set up: keep reading (answers server pings) and beating.
    let start = loop {
        tokio::select! {
            biased;
            r = &mut start_rx => break r.ok(),
            m = p.a.ws.next(), if p.a.st.alive => p.on_item(0, m),
            m = p.b.ws.next(), if p.b.st.alive => p.on_item(1, m),
            _ = p.hb.tick(), if p.hb_on => p.heartbeat().await,
        }
    };
    match start {
        Some(start) => {
            p.begin(start);
            p.run(Some(stats_tx)).await;
        }
        // setup failed elsewhere: no measurement, just hold the connections
        None => p.run(None).await,
    }
}

impl Pair {
    fn begin(&mut self, start: Start) {
        self.t0 = start.t0;
        self.kind = start.kind;
        self.drain = start.drain;
        for (si, sc) in start.streams.into_iter().enumerate() {
            let from = usize::from(sc.from_b);
            self.recv[1 - from] = Some(si);
            self.streams.push(Stream {
                from,
                template: sc.template,
                phase: sc.phase,
                n: 0,
                delivered: 0,
                last_recv: -1,
            });
        }
        self.phase = Phase::Sending;
    }

    fn alive(&self, which: usize) -> bool {
        if which == 0 {
            self.a.st.alive
        } else {
            self.b.st.alive
        }
    }

    fn sending_over(&self, now: StdInstant) -> bool {
        match self.kind {
            Kind::Max { duration, .. } => now >= self.t0 + duration,
            Kind::Paced { total, .. } => self.streams.iter().all(|s| s.n >= total),
        }
    }

    fn all_delivered(&self) -> bool {
        self.streams.iter().all(|s| s.delivered >= s.n)
    }

    fn can_send(&self, now: StdInstant) -> bool {
        match self.kind {
            Kind::Max { inflight, .. } => self
                .streams
                .iter()
                .any(|s| self.alive(s.from) && s.n.saturating_sub(s.delivered) < inflight),
            Kind::Paced { r, total } => {
                let el = now.saturating_duration_since(self.t0).as_secs_f64();
                self.streams
                    .iter()
                    .any(|s| s.n < total && due(el, r, s.phase, total) > s.n)
            }
        }
    }

    /// When the sender next has something to do while sending.
    fn next_wake(&self) -> Option<StdInstant> {
        match self.kind {
            Kind::Max { duration, .. } => Some(self.t0 + duration),
            Kind::Paced { r, total } => self
                .streams
                .iter()
                .filter(|s| s.n < total)
                .map(|s| {
                    self.t0
                        + Duration::from_secs_f64((s.n as f64 + s.phase) / r)
                        + Duration::from_micros(1)
                })
                .min(),
        }
    }

    fn flush_counters(&mut self) {
        if self.unreported_sent > 0 {
            sh().sent.fetch_add(self.unreported_sent, Relaxed);
            self.unreported_sent = 0;
        }
        if self.unreported_delivered > 0 {
            sh().delivered.fetch_add(self.unreported_delivered, Relaxed);
            self.unreported_delivered = 0;
        }
    }

    fn report(&mut self, stats_tx: &mut Option<oneshot::Sender<PairStats>>) {
        self.flush_counters();
        if let Some(tx) = stats_tx.take() {
            let _ = tx.send(std::mem::take(&mut self.stats));
        }
    }

    async fn run(&mut self, mut stats_tx: Option<oneshot::Sender<PairStats>>) {
        let mut wake: Pin<Box<Sleep>> = Box::pin(tokio::time::sleep_until(Instant::now()));
        let mut wake_at: Option<StdInstant> = None;
        let mut reads_in_row: u32 = 0;
        loop {
            let now = StdInstant::now();
            if let Phase::Sending = self.phase {
                if self.sending_over(now) {
                    self.stats.send_end = Some(now);
                    self.phase = Phase::Draining(now + self.drain);
                }
            }
            if let Phase::Draining(deadline) = self.phase {
                if self.all_delivered() || now >= deadline {
                    self.report(&mut stats_tx);
                    self.phase = Phase::Idle;
                }
            }
            let sending = matches!(self.phase, Phase::Sending);
            if sending && reads_in_row >= MAX_READS_IN_ROW {
                reads_in_row = 0;
                self.send_step().await;
                continue;
            }
            let can_send = sending && self.can_send(now);
            let target = match self.phase {
                Phase::Sending if !can_send => self.next_wake(),
                Phase::Draining(deadline) => Some(deadline),
                _ => None,
            };
            match target {
                Some(t) => {
                    if wake_at != Some(t) {
                        wake.as_mut().reset(Instant::from_std(t));
                        wake_at = Some(t);
                    }
                }
                None => wake_at = None,
            }
            let wake_on = wake_at.is_some();
            // Reads first: everything already received is handled before the sender refills,
            // so refills for many deliveries leave in one write.
            tokio::select! {
                biased;
                m = self.a.ws.next(), if self.a.st.alive => {
                    reads_in_row += 1;
                    self.on_item(0, m);
                }
                m = self.b.ws.next(), if self.b.st.alive => {
                    reads_in_row += 1;
                    self.on_item(1, m);
                }
                _ = std::future::ready(()), if can_send => {
                    reads_in_row = 0;
                    self.send_step().await;
                }
                _ = &mut wake, if wake_on => {
                    wake_at = None;
                }
                _ = self.hb.tick(), if self.hb_on => {
                    self.heartbeat().await;
                }
                else => {
                    // both connections gone and nothing left to wait for
                    self.report(&mut stats_tx);
                    return;
                }
            }
        }
    }

    /// Sends what the window (max) or the schedule (paced) allows: one feed per frame, one
    /// flush per socket.
    async fn send_step(&mut self) {
        let now = StdInstant::now();
        let el = now.saturating_duration_since(self.t0).as_secs_f64();
        let mut dirty = [false, false];
        for si in 0..self.streams.len() {
            let quota = {
                let s = &self.streams[si];
                match self.kind {
                    Kind::Max { inflight, .. } => {
                        if self.alive(s.from) {
                            inflight.saturating_sub(s.n.saturating_sub(s.delivered))
                        } else {
                            0
                        }
                    }
                    Kind::Paced { r, total } => due(el, r, s.phase, total)
                        .saturating_sub(s.n)
                        .min(PACED_BATCH),
                }
            };
            for _ in 0..quota {
                let s = &mut self.streams[si];
                let c = if s.from == 0 {
                    &mut self.a
                } else {
                    &mut self.b
                };
                if let Kind::Paced { r, .. } = self.kind {
                    if self.stats.lag_us.len() < self.lat_cap {
                        let lag_us = (el - (s.n as f64 + s.phase) / r) * 1e6;
                        self.stats
                            .lag_us
                            .push(lag_us.clamp(0.0, u32::MAX as f64) as u32);
                    }
                }
                // A send on a closed connection counts as sent (and then as lost), as in load.mjs.
                if c.st.alive {
                    let msg = Message::text(s.template.frame(now_us(), s.n));
                    match c.ws.feed(msg).await {
                        Ok(()) => dirty[s.from] = true,
                        Err(e) => mark_dead(&mut c.st, Some(&e)),
                    }
                }
                s.n += 1;
                self.stats.sent += 1;
                self.unreported_sent += 1;
            }
        }
        for (i, d) in dirty.into_iter().enumerate() {
            let c = if i == 0 { &mut self.a } else { &mut self.b };
            if d && c.st.alive {
                if let Err(e) = c.ws.flush().await {
                    mark_dead(&mut c.st, Some(&e));
                }
            }
        }
        self.flush_counters();
    }

    async fn heartbeat(&mut self) {
        let text = sh().cfg.target.heartbeat();
        for c in [&mut self.a, &mut self.b] {
            if c.st.alive {
                if let Err(e) = c.ws.send(Message::text(text.as_str())).await {
                    mark_dead(&mut c.st, Some(&e));
                }
            }
        }
    }

    fn on_item(&mut self, which: usize, item: Option<Result<Message, WsError>>) {
        let target = sh().cfg.target;
        let c = if which == 0 { &mut self.a } else { &mut self.b };
        let Some(text) = take_text(&mut c.st, item) else {
            return;
        };
        if let Ev::Signal(data) = dispatch(target, &mut c.st, text.as_str()) {
            self.on_signal(which, data);
        }
    }

    /// Each receiving connection has exactly one incoming stream, so per-stream order is per
    /// connection.
    fn on_signal(&mut self, which: usize, data: Option<&RawValue>) {
        // A connection that is no stream's receiver ignores signals, as in load.mjs.
        let Some(si) = self.recv[which] else { return };
        let now = StdInstant::now();
        let Some((n, t_us)) = parse_sig(data) else {
            fail("bad_payload");
            return;
        };
        let lat_us = now_us().saturating_sub(t_us);
        let s = &mut self.streams[si];
        let n = n as i64;
        if n <= s.last_recv {
            self.stats.order_violations += 1;
        } else {
            if n != s.last_recv + 1 {
                self.stats.gaps += 1;
            }
            s.last_recv = n;
        }
        s.delivered += 1;
        self.stats.delivered += 1;
        self.unreported_delivered += 1;
        self.stats.last_delivery = Some(now);
        if self.stats.lat_us.len() < self.lat_cap {
            self.stats.lat_us.push(lat_us.min(u32::MAX as u64) as u32);
        }
    }
}
