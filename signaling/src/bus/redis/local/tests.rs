//! The ordering core on its own: a fake clock (`Instant::now()` plus offsets), outboxes
//! that record what they are sent, and Redis played by hand (pub/sub arrivals are
//! [`Local::receive`], outbox-stream reads are [`Local::fetched`]).

use super::*;

use std::time::Duration;

use crate::room::test_support::{boxed, TestBox};

const GRACE: Duration = Duration::from_secs(30);
const TOKEN: &str = "tok";

fn local(replay_limit: usize) -> Local {
    Local::new(
        HubConfig {
            room_capacity: 16,
            resume_grace: GRACE,
            replay_limit,
            replay_bytes: 1 << 20,
            shard: 0,
        },
        Metrics::default(),
    )
}

/// A signal as pub/sub or the outbox list carries it; `data.i` repeats the seq so a
/// frame pushed under the wrong seq shows.
fn signal(seq: u64) -> Bytes {
    Bytes::from(format!(
        "{{\"type\":\"signal\",\"from\":\"x\",\"data\":{{\"i\":{seq}}},\"seq\":{seq}}}"
    ))
}

fn signals(seqs: impl IntoIterator<Item = u64>) -> Vec<Frame> {
    seqs.into_iter().map(|s| (s, signal(s))).collect()
}

fn joined() -> Bytes {
    Bytes::from_static(b"{\"type\":\"joined\",\"id\":\"a\",\"seq\":1}")
}

fn resumed(last_seq: u64) -> Bytes {
    Bytes::from(format!(
        "{{\"type\":\"resumed\",\"id\":\"a\",\"seq\":{last_seq}}}"
    ))
}

/// What the connection got since the last call, as `(type, seq)`; every frame must
/// carry the seq it was pushed with.
fn take(out: &TestBox) -> Vec<(String, u64)> {
    std::mem::take(&mut *out.frames.lock().unwrap())
        .into_iter()
        .map(|(seq, json)| {
            let v: serde_json::Value = serde_json::from_slice(&json).unwrap();
            assert_eq!(v["seq"].as_u64(), Some(seq), "pushed with its own seq");
            if v["type"] == "signal" {
                assert_eq!(v["data"]["i"].as_u64(), Some(seq), "the payload of {seq}");
            }
            (v["type"].as_str().unwrap().to_string(), seq)
        })
        .collect()
}

/// Only the seqs of `take`, for connections that get signals only.
fn take_seqs(out: &TestBox) -> Vec<u64> {
    take(out).into_iter().map(|(_, s)| s).collect()
}

fn detached(out: &TestBox) -> Vec<Detach> {
    out.detached.lock().unwrap().clone()
}

fn sig(seqs: impl IntoIterator<Item = u64>) -> Vec<(String, u64)> {
    seqs.into_iter()
        .map(|s| ("signal".to_string(), s))
        .collect()
}

/// A peer that joined room `r` through this node, its `joined` already taken.
fn join(l: &mut Local, now: Instant, id: &str, limit: usize) -> (PeerId, Attached, Arc<TestBox>) {
    let id: PeerId = id.into();
    let out = boxed(limit);
    let att = l.reserve(id.clone(), 1, out.clone());
    let got = l.activate_joined(now, &id, "r".into(), TOKEN.into(), None, joined());
    assert_eq!(got, Some(Received::Delivered));
    assert_eq!(take(&out), vec![("joined".to_string(), 1)]);
    (id, att, out)
}

/// What arrives while the join's Redis step runs waits, and follows `joined` in order.
#[test]
fn arrivals_before_activation_follow_joined_in_order() {
    let now = Instant::now();
    let mut l = local(64);
    let out = boxed(0);
    l.reserve("a".into(), 1, out.clone());
    assert_eq!(l.receive(now, "a", 2, signal(2)), Received::Held);
    assert_eq!(l.receive(now, "a", 3, signal(3)), Received::Held);
    assert!(take(&out).is_empty(), "nothing before joined");
    assert_eq!(l.room_of("a"), None, "not ready yet");
    let got = l.activate_joined(now, "a", "r".into(), TOKEN.into(), None, joined());
    assert_eq!(got, Some(Received::Delivered));
    let mut want = vec![("joined".to_string(), 1)];
    want.extend(sig([2, 3]));
    assert_eq!(take(&out), want);
    assert_eq!(l.room_of("a").as_deref(), Some("r"));
    let mut touched = Vec::new();
    l.take_touched(&mut touched);
    assert_eq!(
        touched.len(),
        1,
        "one flush per connection, however many frames"
    );
}

/// In-order arrivals go out once each; a seq already delivered or already waiting is
/// dropped (pub/sub and fetches overlap).
#[test]
fn in_order_once_and_duplicates_dropped() {
    let now = Instant::now();
    let mut l = local(64);
    let (id, _, out) = join(&mut l, now, "a", 0);
    for s in 2..=4 {
        assert_eq!(l.receive(now, &id, s, signal(s)), Received::Delivered);
    }
    assert_eq!(l.receive(now, &id, 3, signal(3)), Received::Duplicate);
    assert_eq!(l.receive(now, &id, 1, signal(1)), Received::Duplicate);
    assert_eq!(take_seqs(&out), vec![2, 3, 4]);
    // 6 waits behind the gap at 5; its second copy is a duplicate too.
    assert_eq!(
        l.receive(now, &id, 6, signal(6)),
        Received::Fetch { from: 5, to: 5 }
    );
    assert_eq!(l.receive(now, &id, 6, signal(6)), Received::Duplicate);
    assert_eq!(
        l.fetched(now, &id, signals([5]), Some(5)),
        Received::Delivered
    );
    assert_eq!(take_seqs(&out), vec![5, 6]);
    assert!(detached(&out).is_empty());
}

/// A gap is asked for once; what arrives behind it waits, and the fetch fills it in
/// order.
#[test]
fn gap_is_fetched_once_and_filled_in_order() {
    let now = Instant::now();
    let mut l = local(64);
    let (id, _, out) = join(&mut l, now, "a", 0);
    assert_eq!(l.receive(now, &id, 2, signal(2)), Received::Delivered);
    assert_eq!(
        l.receive(now, &id, 5, signal(5)),
        Received::Fetch { from: 3, to: 4 }
    );
    assert_eq!(
        l.receive(now, &id, 6, signal(6)),
        Received::Held,
        "no second fetch"
    );
    assert_eq!(take_seqs(&out), vec![2]);
    assert_eq!(
        l.fetched(now, &id, signals([3, 4]), Some(4)),
        Received::Delivered
    );
    assert_eq!(take_seqs(&out), vec![3, 4, 5, 6]);
    assert_eq!(l.receive(now, &id, 7, signal(7)), Received::Delivered);
    assert_eq!(take_seqs(&out), vec![7]);
    assert!(detached(&out).is_empty());
}

/// A gap the outbox list cannot fill is lost: the client is cut off, delivery goes
/// on after the gap, and a resume from before the gap fails instead of skipping it.
#[test]
fn unfillable_gap_cuts_off_and_resume_before_it_fails() {
    let now = Instant::now();
    let mut l = local(64);
    let (id, _, out) = join(&mut l, now, "a", 0);
    assert_eq!(l.receive(now, &id, 2, signal(2)), Received::Delivered);
    assert_eq!(
        l.receive(now, &id, 5, signal(5)),
        Received::Fetch { from: 3, to: 4 }
    );
    assert_eq!(l.fetched(now, &id, vec![], Some(4)), Received::Delivered);
    assert_eq!(detached(&out), vec![Detach::TooSlow]);
    assert_eq!(take_seqs(&out), vec![2], "nothing after the cut");
    // Delivery goes on (into the buffer) after the lost range.
    assert_eq!(l.receive(now, &id, 6, signal(6)), Received::Delivered);
    assert_eq!(
        l.expired(now + GRACE),
        vec![id.clone()],
        "detached since the loss"
    );
    for last in [2, 3] {
        let e = l.check_resume(&id, TOKEN, last).unwrap_err();
        assert_eq!(e.code, ErrorCode::ResumeFailed, "last_seq {last}");
    }
    // From the end of the lost range on, everything is buffered: the resume works.
    assert_eq!(l.check_resume(&id, TOKEN, 4).as_deref(), Ok("r"));
    let new = boxed(0);
    l.resume(&id, 4, resumed(4), new.clone()).unwrap();
    let mut want = vec![("resumed".to_string(), 4)];
    want.extend(sig([5, 6]));
    assert_eq!(take(&new), want);
    assert_eq!(detached(&out), vec![Detach::TooSlow], "detached once");
}

/// A resume on the node that carries the peer: the token and `last_seq` are checked,
/// the new connection gets `resumed` and exactly what follows `last_seq`, and the old
/// one learns it was replaced.
#[test]
fn local_resume_checks_and_replays_exactly_the_rest() {
    let now = Instant::now();
    let mut l = local(64);
    let (id, att, out) = join(&mut l, now, "a", 0);
    for s in 2..=5 {
        l.receive(now, &id, s, signal(s));
    }
    take(&out);
    let e = l.check_resume(&id, "bad", 3).unwrap_err();
    assert_eq!(
        (e.code, e.message.as_str()),
        (ErrorCode::ResumeFailed, UNKNOWN)
    );
    let e = l.check_resume("nobody", TOKEN, 3).unwrap_err();
    assert_eq!(
        (e.code, e.message.as_str()),
        (ErrorCode::ResumeFailed, UNKNOWN)
    );
    let e = l.check_resume(&id, TOKEN, 6).unwrap_err();
    assert_eq!(e.code, ErrorCode::ResumeFailed, "ahead of what was sent");
    assert_eq!(l.check_resume(&id, TOKEN, 3).as_deref(), Ok("r"));
    let new = boxed(0);
    let att2 = l.resume(&id, 3, resumed(3), new.clone()).unwrap();
    assert_ne!(att2.conn, att.conn);
    let mut want = vec![("resumed".to_string(), 3)];
    want.extend(sig([4, 5]));
    assert_eq!(take(&new), want);
    assert_eq!(detached(&out), vec![Detach::Replaced]);
    assert!(take(&out).is_empty());
    assert!(detached(&new).is_empty());
    // Live traffic now goes to the new connection only.
    assert_eq!(l.receive(now, &id, 6, signal(6)), Received::Delivered);
    assert_eq!(take_seqs(&new), vec![6]);
    assert!(take(&out).is_empty());
}

/// Acknowledged messages leave the buffer, so a resume that would need them fails;
/// an acknowledgement from a replaced connection trims nothing.
#[test]
fn ack_trims_what_a_resume_can_replay() {
    let now = Instant::now();
    let mut l = local(64);
    let (id, old, _) = join(&mut l, now, "a", 0);
    for s in 2..=5 {
        l.receive(now, &id, s, signal(s));
    }
    let new = boxed(0);
    let att = l.resume(&id, 5, resumed(5), new.clone()).unwrap();
    assert_eq!(l.ack(&id, old.conn, 4, AckBy::Client), None, "stale conn");
    assert_eq!(l.check_resume(&id, TOKEN, 2).as_deref(), Ok("r"));
    assert_eq!(l.ack(&id, att.conn, 4, AckBy::Client), Some(4));
    for last in [2, 3] {
        let e = l.check_resume(&id, TOKEN, last).unwrap_err();
        assert_eq!(e.code, ErrorCode::ResumeFailed, "last_seq {last}");
    }
    assert_eq!(l.check_resume(&id, TOKEN, 4).as_deref(), Ok("r"));
    // Past what was sent counts only up to what was sent.
    assert_eq!(l.ack(&id, att.conn, 99, AckBy::Client), Some(5));
    // The client acknowledges by itself now: pongs no longer trim.
    l.receive(now, &id, 6, signal(6));
    assert_eq!(l.ack(&id, att.conn, 6, AckBy::Transport), None);
    assert_eq!(l.check_resume(&id, TOKEN, 5).as_deref(), Ok("r"));
}

/// A resume onto this node: `resumed` first, then the fetch of what follows `last_seq`
/// merged with what arrives live meanwhile, each once and in order.
#[test]
fn resume_fetch_merges_with_live_arrivals() {
    let now = Instant::now();
    let mut l = local(64);
    let out = boxed(0);
    l.reserve("a".into(), 7, out.clone());
    assert_eq!(
        l.receive(now, "a", 7, signal(7)),
        Received::Duplicate,
        "has it"
    );
    assert_eq!(l.receive(now, "a", 10, signal(10)), Received::Held);
    l.activate_resumed("a", "r".into(), TOKEN.into(), None, resumed(7));
    assert_eq!(take(&out), vec![("resumed".to_string(), 7)]);
    assert_eq!(
        l.receive(now, "a", 11, signal(11)),
        Received::Held,
        "fetch runs"
    );
    assert!(take(&out).is_empty());
    // The fetch overlaps with what arrived live (10).
    assert_eq!(
        l.fetched(now, "a", signals([8, 9, 10]), None),
        Received::Delivered
    );
    assert_eq!(take_seqs(&out), vec![8, 9, 10, 11]);
    assert!(detached(&out).is_empty());
    assert_eq!(l.check_resume("a", TOKEN, 7).as_deref(), Ok("r"));
}

/// A resume fetch that does not start right after `last_seq` means messages are gone:
/// the connection is cut off so that its next resume fails cleanly.
#[test]
fn resume_fetch_that_does_not_follow_on_cuts_off() {
    let now = Instant::now();
    let mut l = local(64);
    let out = boxed(0);
    l.reserve("a".into(), 7, out.clone());
    l.activate_resumed("a", "r".into(), TOKEN.into(), None, resumed(7));
    assert_eq!(take(&out), vec![("resumed".to_string(), 7)]);
    l.fetched(now, "a", signals([9]), None);
    assert_eq!(detached(&out), vec![Detach::TooSlow]);
    assert!(
        take(&out).is_empty(),
        "9 is not handed over across the hole"
    );
    let e = l.check_resume("a", TOKEN, 7).unwrap_err();
    assert_eq!(e.code, ErrorCode::ResumeFailed);
}

/// Another node resumed the peer: the connection here closes as replaced and the peer
/// is forgotten (its room too, once empty).
#[test]
fn take_over_closes_and_forgets() {
    let now = Instant::now();
    let mut l = local(64);
    let (a, _, out) = join(&mut l, now, "a", 0);
    let (b, _, _) = join(&mut l, now, "b", 0);
    assert_eq!(l.counts(), (1, 2));
    assert_eq!(l.roommates(&b), vec![a.clone()]);
    assert!(l.take_over(&a));
    assert_eq!(detached(&out), vec![Detach::Replaced]);
    assert_eq!(l.receive(now, &a, 2, signal(2)), Received::Unknown);
    assert_eq!(l.fetched(now, &a, signals([2]), Some(2)), Received::Unknown);
    assert!(take(&out).is_empty());
    assert!(!l.knows(&a));
    assert_eq!(l.counts(), (1, 1));
    assert!(l.roommates(&b).is_empty());
    assert!(!l.take_over(&a), "once");
    assert!(l.take_over(&b));
    assert_eq!(l.counts(), (0, 0));
}

/// A detached peer is listed for removal once its grace has passed, not before; a
/// stale connection's detach and a resume both leave it alone.
#[test]
fn detached_peer_expires_after_the_grace() {
    let t0 = Instant::now();
    let mut l = local(64);
    let (id, att, _) = join(&mut l, t0, "a", 0);
    l.detach(t0, &id, att.conn + 100);
    assert!(l.expired(t0 + 2 * GRACE).is_empty(), "stale conn ignored");
    let t1 = t0 + Duration::from_secs(1);
    l.detach(t1, &id, att.conn);
    assert!(l.expired(t1).is_empty());
    assert!(l.expired(t1 + GRACE - Duration::from_millis(1)).is_empty());
    assert_eq!(l.expired(t1 + GRACE), vec![id.clone()]);
    l.resume(&id, 1, resumed(1), boxed(0)).unwrap();
    assert!(
        l.expired(t1 + 2 * GRACE).is_empty(),
        "resumed: attached again"
    );
}

/// With Redis away this node numbers messages itself, after what it delivered; what it
/// re-registers later carries that seq and the unacknowledged frames (not `joined`).
#[test]
fn deliver_local_numbers_on_and_registrations_report_it() {
    let now = Instant::now();
    let mut l = local(64);
    let out = boxed(0);
    l.reserve("a".into(), 1, out.clone());
    let meta = RawValue::from_string("{\"n\":1}".into()).unwrap();
    l.activate_joined(now, "a", "r".into(), TOKEN.into(), Some(meta), joined());
    let (b, _, _) = join(&mut l, now, "b", 0);
    l.reserve("c".into(), 1, boxed(0));
    assert_eq!(l.receive(now, "a", 2, signal(2)), Received::Delivered);
    take(&out);
    let data = RawValue::from_string("{\"i\":3}".into()).unwrap();
    let mut asked = None;
    assert!(l.deliver_local(now, "a", |seq| {
        asked = Some(seq);
        ServerMessage::Signal {
            from: "b".into(),
            data: &data,
            seq,
        }
    }));
    assert_eq!(asked, Some(3));
    let got = std::mem::take(&mut *out.frames.lock().unwrap());
    assert_eq!(got.len(), 1);
    let v: serde_json::Value = serde_json::from_slice(&got[0].1).unwrap();
    assert_eq!(
        (
            got[0].0,
            v["type"].as_str(),
            v["from"].as_str(),
            v["seq"].as_u64()
        ),
        (3, Some("signal"), Some("b"), Some(3))
    );
    let build = |seq| ServerMessage::Signal {
        from: "b".into(),
        data: &data,
        seq,
    };
    assert!(!l.deliver_local(now, "nobody", build), "unknown");
    assert!(!l.deliver_local(now, "c", build), "not ready");
    let regs = l.registrations();
    assert_eq!(regs.len(), 2, "ready peers only");
    let a = regs.iter().find(|r| &*r.id == "a").unwrap();
    assert_eq!(
        (&*a.room, &*a.token, a.meta.as_str(), a.seq),
        ("r", TOKEN, "{\"n\":1}", 3)
    );
    let frames: Vec<u64> = a.frames.iter().map(|(s, _)| *s).collect();
    assert_eq!(frames, vec![2, 3], "joined excluded");
    assert_eq!(a.frames[1].1, got[0].1);
    let rb = regs.iter().find(|r| r.id == b).unwrap();
    assert_eq!((rb.meta.as_str(), rb.seq, rb.frames.len()), ("", 1, 0));
    // After an acknowledgement only the rest is re-registered.
    let conn = l.resume("a", 3, resumed(3), boxed(0)).unwrap().conn;
    l.ack("a", conn, 2, AckBy::Client);
    let regs = l.registrations();
    let a = regs.iter().find(|r| &*r.id == "a").unwrap();
    assert_eq!(
        a.frames.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
        vec![3]
    );
}

/// A client that does not read is cut off as too slow once its connection refuses a
/// live message; the message is still kept, so a resume gets it.
#[test]
fn slow_consumer_is_cut_off_and_can_resume() {
    let now = Instant::now();
    let mut l = local(64);
    // `joined` was taken already: the connection holds 2 and 3, then refuses 4.
    let (id, _, out) = join(&mut l, now, "a", 2);
    for s in 2..=3 {
        assert_eq!(l.receive(now, &id, s, signal(s)), Received::Delivered);
    }
    assert!(detached(&out).is_empty());
    assert_eq!(l.receive(now, &id, 4, signal(4)), Received::Delivered);
    assert_eq!(detached(&out), vec![Detach::TooSlow]);
    assert_eq!(l.receive(now, &id, 5, signal(5)), Received::Delivered);
    assert_eq!(detached(&out), vec![Detach::TooSlow], "cut off once");
    assert_eq!(take_seqs(&out), vec![2, 3], "nothing after the refusal");
    assert_eq!(l.expired(now + GRACE), vec![id.clone()]);
    assert_eq!(l.check_resume(&id, TOKEN, 3).as_deref(), Ok("r"));
    let new = boxed(0);
    l.resume(&id, 3, resumed(3), new.clone()).unwrap();
    let mut want = vec![("resumed".to_string(), 3)];
    want.extend(sig([4, 5]));
    assert_eq!(take(&new), want);
}

/// More than `replay_limit` messages held behind a gap: the core gives up on the gap
/// (the client is cut off, the gap counts as lost) and goes on after it at once; the
/// fetch's late answer is dropped as old.
#[test]
fn too_much_held_behind_a_gap_gives_it_up() {
    let now = Instant::now();
    let mut l = local(4);
    let (id, _, out) = join(&mut l, now, "a", 0);
    assert_eq!(l.receive(now, &id, 2, signal(2)), Received::Delivered);
    assert_eq!(
        l.receive(now, &id, 5, signal(5)),
        Received::Fetch { from: 3, to: 4 }
    );
    for s in 6..=8 {
        assert_eq!(l.receive(now, &id, s, signal(s)), Received::Held);
    }
    assert!(detached(&out).is_empty(), "four held: still waiting");
    // The fifth: the gap is given up and what was held goes on (into the buffer).
    assert_eq!(l.receive(now, &id, 9, signal(9)), Received::Delivered);
    assert_eq!(detached(&out), vec![Detach::TooSlow]);
    assert_eq!(
        l.check_resume(&id, TOKEN, 2).unwrap_err().code,
        ErrorCode::ResumeFailed
    );
    // The late answer's 3 and 4 come after the loss: dropped; the rest follows.
    assert_eq!(
        l.fetched(now, &id, signals([3, 4]), Some(4)),
        Received::Delivered
    );
    assert_eq!(
        take_seqs(&out),
        vec![2],
        "cut off: nothing more on this connection"
    );
    assert_eq!(l.registrations()[0].seq, 9);
    // The buffer (limit 4) holds 6..=9, so a resume from 5 gets exactly those.
    let new = boxed(0);
    assert_eq!(l.check_resume(&id, TOKEN, 5).as_deref(), Ok("r"));
    l.resume(&id, 5, resumed(5), new.clone()).unwrap();
    let mut want = vec![("resumed".to_string(), 5)];
    want.extend(sig(6..=9));
    assert_eq!(take(&new), want);
}

/// Once a gap is given up while its fetch is under way, what arrives later is not held
/// without bound: the core goes on after the loss.
#[test]
fn held_messages_stay_bounded_while_the_fetch_is_in_flight() {
    let now = Instant::now();
    let mut l = local(4);
    let (id, _, _) = join(&mut l, now, "a", 0);
    l.receive(now, &id, 2, signal(2));
    assert_eq!(
        l.receive(now, &id, 5, signal(5)),
        Received::Fetch { from: 3, to: 4 }
    );
    for s in 6..=40 {
        l.receive(now, &id, s, signal(s));
    }
    let held = l.peers[&id].pending.len();
    assert!(held <= 4, "{held} messages held with replay_limit 4");
}
