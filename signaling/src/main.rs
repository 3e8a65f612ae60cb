//! `icebreaker`: signaling + bundled TURN relay + web client, one command, no config.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use icebreaker_service as service;
use icebreaker_signaling::bus::memory::MemoryBus;
use icebreaker_signaling::bus::redis::RedisBus;
use icebreaker_signaling::bus::Bus;
use icebreaker_signaling::config::{SignalingArgs, SignalingConfig};
use icebreaker_signaling::http::AppState;
use icebreaker_signaling::limits::PerIp;
use icebreaker_signaling::metrics::Metrics;
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::info;

#[derive(Parser, Debug)]
#[command(
    name = "icebreaker",
    version,
    about = "WebRTC signaling, TURN relay and web client"
)]
struct Cli {
    /// TOML config file; its keys are the long flag names.
    #[arg(long, env = "ICEBREAKER_CONFIG")]
    config: Option<PathBuf>,
    /// Print the effective configuration as a commented TOML file (every key, secrets
    /// masked) and exit.
    #[arg(long)]
    print_config: bool,
    /// Log filter (tracing EnvFilter syntax), e.g. `info` or `icebreaker_signaling=debug`.
    #[arg(long, env = "ICEBREAKER_LOG", default_value = "info")]
    log: String,
    #[command(flatten)]
    args: SignalingArgs,
}

const NAME: &str = "icebreaker";

fn main() -> ExitCode {
    let cli = Cli::parse();
    let layered = match service::config::load(
        cli.args.clone(),
        cli.config.as_deref(),
        SignalingArgs::layer_over,
    ) {
        Ok(a) => a,
        Err(e) => return service::config_error(NAME, &e),
    };
    let cfg = match layered.clone().resolve() {
        Ok(c) => c,
        Err(e) => return service::config_error(NAME, &e),
    };
    if cli.print_config {
        print!("{}", print_config(&layered, &cfg));
        return ExitCode::SUCCESS;
    }
    if let Err(code) = service::init_logging(NAME, &cli.log) {
        return code;
    }
    info!(
        open_files = service::raise_nofile_limit(),
        "open-files limit"
    );
    // This thread serves one share of the connections (and signals, timers); the other
    // `--threads` - 1 run their own single-threaded runtimes (see `serve`).
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("{NAME}: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let source = Source {
        args: cli.args.clone(),
        file: cli.config.clone(),
    };
    match rt.block_on(serve(cfg, source)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{NAME}: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `--print-config`: the effective settings as a config file, each key with its `--help`
/// text, the unset ones commented out.
fn print_config(
    args: &SignalingArgs,
    cfg: &icebreaker_signaling::config::SignalingConfig,
) -> String {
    use clap::CommandFactory;
    let keys = service::config::setting_keys(&Cli::command());
    format!(
        "# icebreaker configuration (icebreaker --config FILE); flags and ICEBREAKER_* variables\n\
         # override it. Printed by `icebreaker --print-config`: unset keys are commented out.\n\n{}",
        service::config::commented_toml(&args.to_masked_toml(cfg), &keys)
    )
}

/// Where the configuration came from, read again on SIGHUP: the flags and environment as
/// parsed at start, and the file.
struct Source {
    args: SignalingArgs,
    file: Option<std::path::PathBuf>,
}

/// Counts and logs a certificate reload (`what`: which listener, `why`: what asked).
fn cert_reloaded(metrics: &Metrics, r: Result<(), service::tls::TlsError>, what: &str, why: &str) {
    let result = service::tls::report_reload(r, &format!("{what} "), why);
    metrics
        .tls_cert_reloads
        .get_or_create(&icebreaker_signaling::metrics::ResultLabel { result })
        .inc();
}

/// The certificates this process serves: the listener's, and the bundled relay's own
/// TLS port's (the same files, read by each).
fn certificates<'a>(
    state: &'a AppState,
    relay: Option<&'a icebreaker_relay::RelayHandle>,
) -> impl Iterator<Item = (&'static str, &'a Arc<service::tls::Certificates>)> {
    let own = state.tls.as_ref().map(|t| ("listener", &t.certificates));
    let relay = relay
        .and_then(|r| r.certificates.as_ref())
        .map(|c| ("relay-tls-listen", c));
    own.into_iter().chain(relay)
}

/// SIGHUP: resolves the configuration again and swaps it in (see
/// `SignalingConfig::reload`); a bad file changes nothing and says why in one line. The
/// certificates are read again too.
fn reload(
    state: &AppState,
    relay: Option<&icebreaker_relay::RelayHandle>,
    started: &SignalingConfig,
    src: &Source,
) {
    for (what, c) in certificates(state, relay) {
        cert_reloaded(&state.metrics, c.reload(), what, "SIGHUP");
    }
    let layered = service::config::load(
        src.args.clone(),
        src.file.as_deref(),
        SignalingArgs::layer_over,
    );
    let new = match layered.and_then(|l| l.clone().resolve().map(|c| (l, c))) {
        Ok(v) => v,
        Err(e) => {
            state.metrics.config_reload_errors.inc();
            tracing::warn!(error = %e, "SIGHUP: the new configuration is not valid; still running the previous one");
            return;
        }
    };
    let mut r = state.cfg().reload(started, new.1, &new.0);
    if let (Some(turn), Some((shared, m))) = (r.relay_turn.take(), &state.relay) {
        r.need_restart.extend(shared.reload(turn));
        m.config_reloads.inc();
    }
    state.cfg.store(Arc::new(r.config));
    state.metrics.config_reloads.inc();
    info!(changed = ?r.changed, "SIGHUP: configuration reloaded");
    if !r.need_restart.is_empty() {
        tracing::warn!(keys = ?r.need_restart, "SIGHUP: these keys changed but take effect only after a restart; kept as they were");
    }
}

async fn serve(mut cfg: SignalingConfig, source: Source) -> anyhow::Result<()> {
    let started = cfg.clone();
    // Install the SIGTERM handler before announcing readiness, so an early SIGTERM is
    // a graceful stop rather than the default kill.
    let mut stop = service::Stop::install().context("SIGTERM handler")?;
    let mut registry = Registry::default();
    let metrics = Metrics::default();
    metrics.register(&mut registry);
    let mut relay_metrics = None;
    let relay = match &cfg.relay {
        Some(rc) => {
            let rm = icebreaker_relay::metrics::RelayMetrics::default();
            rm.register(&mut registry);
            relay_metrics = Some(rm.clone());
            let h = icebreaker_relay::run(rc.clone(), rm)
                .with_context(|| format!("cannot start the bundled relay on {:?}", rc.listen))?;
            Some(h)
        }
        None => None,
    };
    // Advertise the ports actually bound (port 0 in tests picks a free one).
    if let (Some(rc), Some(h)) = (cfg.relay.as_mut(), relay.as_ref()) {
        rc.listen = h.local_addrs.clone();
        rc.tls_listen = h.tls_addrs.clone();
    }
    let hub = cfg.hub();
    // Rooms spread over a few hubs per serving thread: two threads rarely want the same
    // lock, and with one thread the locks are uncontended anyway.
    let shards = (cfg.threads * 4).clamp(1, 64);
    let bus: Arc<dyn Bus> = match &cfg.redis {
        Some(url) => Arc::new(
            RedisBus::connect(url, &cfg.node_id, hub, metrics.clone())
                .await
                .with_context(|| format!("cannot reach Redis at {url}"))?,
        ),
        None => Arc::new(MemoryBus::new(hub, shards, metrics.clone())),
    };
    let listeners = service::reuse_tcp_listeners(cfg.listen, cfg.threads)
        .with_context(|| format!("cannot listen on {}", cfg.listen))?;
    let http_addr = listeners[0].local_addr()?;
    let relay_addrs: Vec<SocketAddr> = relay
        .as_ref()
        .map(|r| r.local_addrs.clone())
        .unwrap_or_default();
    let per_ip = PerIp::new(cfg.join_rate, cfg.join_burst);
    let tls = match &cfg.tls {
        Some((cert, key)) => {
            let c = service::tls::Certificates::load(cert, key).context("tls-cert/tls-key")?;
            Some(icebreaker_signaling::http::Tls::new(
                c,
                relay.as_ref().map(|r| r.handoff.clone()),
            ))
        }
        None => None,
    };
    let scheme = if tls.is_some() { "https" } else { "http" };
    let state = Arc::new(AppState {
        tls,
        relay: relay
            .as_ref()
            .zip(relay_metrics)
            .map(|(h, m)| (h.shared.clone(), m)),
        cfg: arc_swap::ArcSwap::from_pointee(cfg),
        bus: bus.clone(),
        metrics,
        registry,
        per_ip,
        shutdown: CancellationToken::new(),
        tasks: TaskTracker::new(),
    });
    // Resume-grace expiry (and forgetting idle client IPs) runs on a short tick.
    let ticker = {
        let bus = bus.clone();
        let per_ip = state.per_ip.clone();
        tokio::spawn(async move {
            let mut t = tokio::time::interval(Duration::from_millis(250));
            loop {
                t.tick().await;
                let now = Instant::now();
                bus.tick(now).await;
                per_ip.sweep(now);
            }
        })
    };
    for (what, c) in certificates(&state, relay.as_ref()) {
        let metrics = state.metrics.clone();
        tokio::spawn(c.clone().watch(Duration::from_secs(2), move |r| {
            cert_reloaded(&metrics, r, what, "certificate files changed")
        }));
    }
    let relay_tls = relay
        .as_ref()
        .map(|r| r.tls_addrs.clone())
        .unwrap_or_default();
    info!(http = %http_addr, relay = ?relay_addrs, ?relay_tls, tls = state.tls.is_some(), "icebreaker listening; open {scheme}://{http_addr}/");
    // One single-threaded runtime per thread, each accepting on its own listener: a
    // connection lives on one thread, and a message to a peer on another thread is
    // written into its socket directly, so threads hand nothing to each other.
    let mut listeners = listeners.into_iter();
    let first = tokio::net::TcpListener::from_std(listeners.next().context("no listener")?)?;
    let mut shards = Vec::new();
    for (i, l) in listeners.enumerate() {
        let state = state.clone();
        let t = std::thread::Builder::new()
            .name(format!("icebreaker-{}", i + 1))
            .spawn(move || -> anyhow::Result<()> {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                rt.block_on(async move {
                    let l = tokio::net::TcpListener::from_std(l)?;
                    icebreaker_signaling::http::serve(l, state.clone()).await;
                    // Keep running this thread's connections until they have closed.
                    let _ = tokio::time::timeout(Duration::from_secs(10), state.tasks.wait()).await;
                    Ok(())
                })
            })
            .context("cannot start a serving thread")?;
        shards.push(t);
    }
    let server = tokio::spawn(icebreaker_signaling::http::serve(first, state.clone()));
    while stop.next().await == service::Signal::Reload {
        reload(&state, relay.as_ref(), &started, &source);
    }
    info!("shutting down");
    // The bundled relay refuses new allocations from now on; existing calls keep relaying
    // below while the signaling side closes.
    if let Some(r) = &relay {
        r.shared.drain();
    }
    // Stop accepting; HTTP connections finish their request, WebSockets close with 1001.
    state.shutdown.cancel();
    let _ = server.await;
    state.tasks.close();
    // Graceful, but bounded: a connection that never finishes must not keep us alive.
    if tokio::time::timeout(Duration::from_secs(10), state.tasks.wait())
        .await
        .is_err()
    {
        tracing::warn!("connections still open after 10 s; stopping anyway");
    }
    ticker.abort();
    for t in shards {
        let _ = tokio::task::spawn_blocking(move || t.join()).await;
    }
    if let Some(r) = &relay {
        r.drain(&mut stop, state.cfg().drain_timeout).await;
    }
    if let Some(r) = relay {
        tokio::task::spawn_blocking(move || r.shutdown()).await?;
    }
    Ok(())
}
