//! `media`: sends VP8 video and Opus audio (the embedded samples, looped, or IVF/Ogg files)
//! to every peer and reports what arrives per remote track. With `--echo` it sends each
//! received track back instead.

use std::collections::HashMap;
use std::io::Cursor;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rtc::media::io::ivf_reader::IVFReader;
use rtc::media::io::ogg_reader::OggReader;
use rtc::media::Sample;
use rtc::media_stream::MediaStreamTrack;
use rtc::peer_connection::configuration::media_engine::{MIME_TYPE_OPUS, MIME_TYPE_VP8};
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodec, RTCRtpCodingParameters, RTCRtpEncodingParameters, RtpCodecKind,
};
use serde_json::json;
use webrtc::media_stream::track_local::static_rtp::TrackLocalStaticRTP;
use webrtc::media_stream::track_local::static_sample::TrackLocalStaticSample;

use crate::output::Out;
use crate::peer::{LocalMedia, PeerEvent, TrackStats};
use crate::room::{event_json, Event, Options, Room, TrackFactory};

/// 4 s of VP8 test pattern (320×240, 15 fps, a key frame every second) and Opus tone;
/// see media/README.md for how they were made.
const SAMPLE_IVF: &[u8] = include_bytes!("../media/sample.ivf");
const SAMPLE_OGG: &[u8] = include_bytes!("../media/sample.ogg");

/// The `media` subcommand's flags, as clap parses them; [`MediaFlags::load`] reads the
/// files they name.
#[derive(Debug, Clone, clap::Args)]
pub struct MediaFlags {
    /// IVF (VP8) file to send instead of the embedded test pattern.
    #[arg(long)]
    pub video: Option<std::path::PathBuf>,
    /// Ogg (Opus) file to send instead of the embedded tone.
    #[arg(long)]
    pub audio: Option<std::path::PathBuf>,
    /// Send no video track.
    #[arg(long)]
    pub no_video: bool,
    /// Send no audio track.
    #[arg(long)]
    pub no_audio: bool,
    /// Send each received track back instead of our own media.
    #[arg(long)]
    pub echo: bool,
    /// How long to run once connected.
    #[arg(long, default_value = "5s", value_parser = crate::parse_duration)]
    pub duration: Duration,
    /// Succeed only if each remote video track delivered at least N frames.
    #[arg(long, default_value_t = 1)]
    pub expect_frames: u64,
}

impl MediaFlags {
    /// Reads the media files (or takes the embedded samples); `timeout` is the global one.
    pub fn load(self, timeout: Option<Duration>) -> anyhow::Result<MediaArgs> {
        let read = |p: Option<std::path::PathBuf>, def: fn() -> Vec<u8>| match p {
            Some(p) => {
                std::fs::read(&p).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", p.display()))
            }
            None => Ok(def()),
        };
        let video = match self.no_video {
            true => None,
            false => Some(read(self.video, MediaArgs::default_video)?),
        };
        let audio = match self.no_audio {
            true => None,
            false => Some(read(self.audio, MediaArgs::default_audio)?),
        };
        Ok(MediaArgs {
            video,
            audio,
            echo: self.echo,
            duration: self.duration,
            expect_frames: self.expect_frames,
            timeout,
        })
    }
}

/// Options of the `media` subcommand, files read.
pub struct MediaArgs {
    /// IVF (VP8) bytes to send, looped; `None`: no video track.
    pub video: Option<Vec<u8>>,
    /// Ogg (Opus) bytes to send, looped; `None`: no audio track.
    pub audio: Option<Vec<u8>>,
    /// Send each received track back instead of our own media.
    pub echo: bool,
    /// How long to run once the first connection is up.
    pub duration: Duration,
    /// Succeed only if every remote video track delivered at least this many frames.
    pub expect_frames: u64,
    /// The global --timeout; give up after this long (default an hour).
    pub timeout: Option<Duration>,
}

impl MediaArgs {
    /// The embedded VP8 test pattern.
    pub fn default_video() -> Vec<u8> {
        SAMPLE_IVF.to_vec()
    }
    /// The embedded Opus tone.
    pub fn default_audio() -> Vec<u8> {
        SAMPLE_OGG.to_vec()
    }
}

fn codec(kind: RtpCodecKind) -> RTCRtpCodec {
    match kind {
        RtpCodecKind::Video => RTCRtpCodec {
            mime_type: MIME_TYPE_VP8.into(),
            clock_rate: 90000,
            channels: 0,
            sdp_fmtp_line: String::new(),
            rtcp_feedback: vec![],
        },
        _ => RTCRtpCodec {
            mime_type: MIME_TYPE_OPUS.into(),
            clock_rate: 48000,
            channels: 2,
            sdp_fmtp_line: "minptime=10;useinbandfec=1".into(),
            rtcp_feedback: vec![],
        },
    }
}

fn stream_track(kind: RtpCodecKind, ssrc: u32, name: &str) -> MediaStreamTrack {
    let k = if kind == RtpCodecKind::Video {
        "video"
    } else {
        "audio"
    };
    MediaStreamTrack::new(
        format!("{name}-stream"),
        format!("{name}-{k}"),
        format!("{name} {k}"),
        kind,
        vec![RTCRtpEncodingParameters {
            rtp_coding_parameters: RTCRtpCodingParameters {
                ssrc: Some(ssrc),
                ..Default::default()
            },
            codec: codec(kind),
            ..Default::default()
        }],
    )
}

/// Builds fresh tracks for each new connection.
pub(crate) fn factory(video: bool, audio: bool, echo: bool, name: String) -> TrackFactory {
    Arc::new(move || {
        let mut v = Vec::new();
        for (on, kind, k) in [
            (video, RtpCodecKind::Video, "video"),
            (audio, RtpCodecKind::Audio, "audio"),
        ] {
            if !on {
                continue;
            }
            let ssrc: u32 = rand::random();
            let t = stream_track(kind, ssrc, &name);
            let m = if echo {
                LocalMedia {
                    kind: k,
                    ssrc,
                    sample: None,
                    rtp: Some(Arc::new(TrackLocalStaticRTP::new(t))),
                    sent: Default::default(),
                }
            } else {
                match TrackLocalStaticSample::new(Instant::now(), t) {
                    Ok(s) => LocalMedia {
                        kind: k,
                        ssrc,
                        sample: Some(Arc::new(s)),
                        rtp: None,
                        sent: Default::default(),
                    },
                    Err(_) => continue,
                }
            };
            v.push(m);
        }
        v
    })
}

/// Writes one sample; false when the peer is gone. A failed write alone is not that: the
/// track is not bound yet right after negotiation.
async fn write(
    track: &TrackLocalStaticSample,
    ssrc: u32,
    pt: u8,
    sender: &dyn webrtc::rtp_transceiver::RtpSender,
    sample: &Sample,
) -> bool {
    track
        .sample_writer(ssrc, pt)
        .write_sample(sample)
        .await
        .is_ok()
        || sender.get_parameters().await.is_ok()
}

/// Writes samples to one track until the connection goes away, looping the file.
async fn play(
    m: LocalMedia,
    sender: Arc<dyn webrtc::rtp_transceiver::RtpSender>,
    bytes: Arc<Vec<u8>>,
) {
    let Some(track) = m.sample.clone() else {
        return;
    };
    // The payload type exists once negotiation finished.
    let mut pt = None;
    for _ in 0..100 {
        pt = sender
            .get_parameters()
            .await
            .ok()
            .and_then(|p| p.rtp_parameters.codecs.first().map(|c| c.payload_type));
        if pt.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let Some(pt) = pt else { return };
    if m.kind == "video" {
        loop {
            let Ok((mut ivf, header)) = IVFReader::new(Cursor::new(bytes.as_slice())) else {
                return;
            };
            let frame_time = Duration::from_millis(
                (1000 * header.timebase_numerator as u64
                    / header.timebase_denominator.max(1) as u64)
                    .max(1),
            );
            let mut tick = tokio::time::interval(frame_time);
            while let Ok((frame, _)) = ivf.parse_next_frame() {
                tick.tick().await;
                let sample = Sample {
                    data: frame.freeze(),
                    duration: frame_time,
                    ..Sample::new(Instant::now())
                };
                if !write(&track, m.ssrc, pt, &*sender, &sample).await {
                    return;
                }
            }
        }
    } else {
        loop {
            let Ok((mut ogg, _)) = OggReader::new(Cursor::new(bytes.as_slice()), true) else {
                return;
            };
            let mut tick = tokio::time::interval(Duration::from_millis(20));
            let mut last = 0u64;
            while let Ok((page, h)) = ogg.parse_next_page() {
                let samples = h.granule_position.saturating_sub(last);
                last = h.granule_position;
                if samples == 0 {
                    continue; // header pages
                }
                tick.tick().await;
                let sample = Sample {
                    data: page.freeze(),
                    duration: Duration::from_micros(samples * 1_000_000 / 48_000),
                    ..Sample::new(Instant::now())
                };
                if !write(&track, m.ssrc, pt, &*sender, &sample).await {
                    return;
                }
            }
        }
    }
}

/// Starts sending our sample tracks to a peer that just connected: `video` and `audio`
/// are the files to loop (`None`: that kind is not sent).
pub(crate) async fn play_to(
    room: &Room,
    peer: &str,
    video: &Option<Arc<Vec<u8>>>,
    audio: &Option<Arc<Vec<u8>>>,
) {
    let remote = room.remotes.lock().await.get(peer).cloned();
    let Some(r) = remote else { return };
    for (m, sender) in &r.media {
        let bytes = if m.kind == "video" { video } else { audio };
        if let (Some(b), Some(_)) = (bytes, &m.sample) {
            tokio::spawn(play(m.clone(), sender.clone(), b.clone()));
        }
    }
}

/// Sends media to every peer and reports the received tracks each second and at the
/// end; true when some track arrived (and each video track had `expect_frames` frames).
pub async fn run(opts: Options, args: MediaArgs, out: Out) -> anyhow::Result<bool> {
    let (video, audio) = (args.video.clone(), args.audio.clone());
    let tracks = factory(
        video.is_some(),
        audio.is_some(),
        args.echo,
        opts.name.clone(),
    );
    let mut room = Room::join(&opts, Some(tracks)).await?;
    let video = video.map(Arc::new);
    let audio = audio.map(Arc::new);
    let mut received: HashMap<(String, String), Arc<TrackStats>> = HashMap::new();
    let mut started: Option<Instant> = None;
    let mut report_tick = tokio::time::interval(Duration::from_secs(1));
    let deadline = tokio::time::Instant::now() + args.timeout.unwrap_or(Duration::from_secs(3600));
    let snapshot = |received: &HashMap<(String, String), Arc<TrackStats>>| {
        received
            .iter()
            .map(|((peer, kind), s)| {
                json!({"peer": peer, "kind": kind, "packets": s.packets.load(Ordering::Relaxed),
                       "frames": s.frames.load(Ordering::Relaxed), "bytes": s.bytes.load(Ordering::Relaxed)})
            })
            .collect::<Vec<_>>()
    };
    loop {
        if started.is_some_and(|s| s.elapsed() >= args.duration) {
            break;
        }
        tokio::select! {
            ev = room.events.recv() => {
                let Some(ev) = ev else { break };
                match &ev {
                    Event::Peer(PeerEvent::Connected { peer, .. }) => {
                        started.get_or_insert_with(Instant::now);
                        play_to(&room, peer, &video, &audio).await;
                    }
                    Event::Peer(PeerEvent::Track { peer, kind, stats }) => {
                        received.insert((peer.clone(), kind.clone()), stats.clone());
                    }
                    Event::SignalingFailed(_) => {
                        out.event(&event_json(&ev), Some(format!("{ev:?}")));
                        break;
                    }
                    _ => {}
                }
                out.event(&event_json(&ev), Some(format!("* {}", event_json(&ev))));
            }
            _ = report_tick.tick() => {
                if !received.is_empty() {
                    out.event(&json!({"event": "media", "tracks": snapshot(&received)}), Some(format!("{}", json!(snapshot(&received)))));
                }
            }
            _ = tokio::time::sleep_until(deadline) => break,
        }
    }
    let tracks = snapshot(&received);
    let videos: Vec<&serde_json::Value> = tracks
        .iter()
        .filter(|t| t["kind"].as_str().is_some_and(|k| k.contains("video")))
        .collect();
    let ok = !tracks.is_empty()
        && (args.expect_frames == 0
            || (!videos.is_empty()
                && videos
                    .iter()
                    .all(|t| t["frames"].as_u64().unwrap_or(0) >= args.expect_frames)));
    out.event(
        &json!({"event": "media-report", "ok": ok, "echo": args.echo, "tracks": tracks}),
        Some(format!(
            "media report ({}): {}",
            if ok { "ok" } else { "not ok" },
            json!(tracks)
        )),
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    room.close().await;
    Ok(ok)
}
