//! `icebreaker-peer`: headless WebRTC peer for chat, pointer sharing, media, load tests and
//! deployment checks.

use std::net::IpAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use icebreaker_peer::chat::ChatArgs;
use icebreaker_peer::load::LoadArgs;
use icebreaker_peer::media::MediaFlags;
use icebreaker_peer::output::Out;
use icebreaker_peer::parse_duration;
use icebreaker_peer::pointer::PointerArgs;
use icebreaker_peer::room::Options;

#[derive(Parser)]
#[command(
    name = "icebreaker-peer",
    version,
    about = "Headless WebRTC peer for Icebreaker"
)]
struct Cli {
    #[command(flatten)]
    common: Common,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Args, Clone)]
struct Common {
    /// Signaling endpoint.
    #[arg(
        long,
        global = true,
        env = "ICEBREAKER_PEER_SERVER",
        default_value = "ws://127.0.0.1:8080/ws"
    )]
    server: String,
    /// Room to join.
    #[arg(long, global = true, default_value = "lobby")]
    room: String,
    /// Name shown to others (meta.name and chat `from`).
    #[arg(long, global = true)]
    name: Option<String>,
    /// Relay-only ICE (iceTransportPolicy "relay").
    #[arg(long, global = true)]
    relay_only: bool,
    /// JWT for servers that require one.
    #[arg(long, global = true, env = "ICEBREAKER_PEER_TOKEN")]
    token: Option<String>,
    /// One JSON object per event on stdout.
    #[arg(long, global = true)]
    json: bool,
    /// Give up (exit 1) after this long, e.g. 30s.
    #[arg(long, global = true, value_parser = parse_duration)]
    timeout: Option<Duration>,
    /// Also trust the CA certificates in this PEM file for wss:// and turns: (beside the
    /// Web PKI roots): a private CA or a test certificate.
    #[arg(long, global = true, env = "ICEBREAKER_PEER_CA")]
    ca: Option<std::path::PathBuf>,
    /// Between ICE connectivity checks (RFC 8445's Ta).
    #[arg(long, global = true, value_parser = parse_duration, default_value = "50ms")]
    ice_check_interval: Duration,
    /// Head start of host pairs over server-reflexive ones before nomination.
    #[arg(long, global = true, value_parser = parse_duration, default_value = "100ms")]
    ice_srflx_wait: Duration,
    /// Wait before a peer-reflexive pair may be nominated.
    #[arg(long, global = true, value_parser = parse_duration, default_value = "100ms")]
    ice_prflx_wait: Duration,
    /// Head start of direct pairs over relay ones (none with --relay-only).
    #[arg(long, global = true, value_parser = parse_duration, default_value = "500ms")]
    ice_relay_wait: Duration,
    /// During setup, wake webrtc-rs's driver this often so packets that its events queue
    /// go out at once instead of at its next timer (0s: off; see `nudge_driver`).
    #[arg(long, global = true, value_parser = parse_duration, default_value = "2ms")]
    setup_nudge: Duration,
    /// Local address for WebRTC sockets (host candidates).
    #[arg(long, global = true, default_value = "0.0.0.0")]
    bind: IpAddr,
    /// Log filter for stderr (webrtc-rs is chatty at warn, so it logs errors only).
    #[arg(
        long,
        global = true,
        env = "ICEBREAKER_PEER_LOG",
        default_value = "icebreaker_peer=warn,error"
    )]
    log: String,
}

#[derive(Subcommand)]
enum Cmd {
    /// Text chat: stdin lines go to every peer; received messages print as `name: text`.
    Chat(ChatArgs),
    /// Send a synthetic pointer path and report what arrives.
    Pointer(PointerArgs),
    /// Start N peers in rooms of K through one server and report setup times and round trips.
    Load(LoadArgs),
    /// Send VP8 video and Opus audio (embedded samples or IVF/Ogg files) and count what arrives.
    Media(MediaFlags),
    /// Check a deployment: signaling, ICE servers, STUN, TURN (UDP/TCP), a relay-only data channel.
    Doctor,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter =
        tracing_subscriber::EnvFilter::try_new(&cli.common.log).unwrap_or_else(|_| "warn".into());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let c = cli.common.clone();
    if let Err(e) = icebreaker_peer::tls::init(c.ca.as_deref()) {
        eprintln!("icebreaker-peer: {e:#}");
        return ExitCode::from(2);
    }
    let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
    let name = c
        .name
        .clone()
        .unwrap_or_else(|| format!("peer-{}", rand::random::<u16>()));
    let opts = Options {
        server: c.server,
        room: c.room,
        name,
        relay_only: c.relay_only,
        token: c.token,
        bind: c.bind,
        ice: icebreaker_peer::peer::IceTiming {
            check_interval: c.ice_check_interval,
            srflx_wait: c.ice_srflx_wait,
            prflx_wait: c.ice_prflx_wait,
            relay_wait: c.ice_relay_wait,
            nudge: c.setup_nudge,
        },
        media_state: Default::default(),
    };
    let out = Out { json: c.json };
    let result = rt.block_on(async {
        let work = async {
            match cli.cmd {
                Cmd::Chat(args) => {
                    let args = ChatArgs {
                        timeout: c.timeout,
                        ..args
                    };
                    icebreaker_peer::chat::run(opts, args, out).await
                }
                Cmd::Load(args) => icebreaker_peer::load::run(opts, args, out).await,
                Cmd::Doctor => icebreaker_peer::doctor::run(opts, out).await,
                Cmd::Media(flags) => {
                    let args = flags.load(c.timeout)?;
                    // The others' tiles show what we send: --no-audio reads as muted.
                    let opts = Options {
                        media_state: icebreaker_protocol::MediaState {
                            audio: args.audio.is_some(),
                            video: args.video.is_some(),
                            ..Default::default()
                        },
                        ..opts
                    };
                    icebreaker_peer::media::run(opts, args, out).await
                }
                Cmd::Pointer(args) => {
                    let args = PointerArgs {
                        timeout: c.timeout,
                        ..args
                    };
                    icebreaker_peer::pointer::run(opts, args, out).await
                }
            }
        };
        // A hard stop a little after --timeout, in case teardown itself hangs.
        match c.timeout {
            Some(t) => tokio::time::timeout(t + Duration::from_secs(10), work)
                .await
                .unwrap_or_else(|_| Err(anyhow::anyhow!("timed out"))),
            None => work.await,
        }
    });
    rt.shutdown_timeout(Duration::from_secs(2));
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("icebreaker-peer: {e:#}");
            ExitCode::FAILURE
        }
    }
}
