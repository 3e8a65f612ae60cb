//! `icebreaker-relay`: the standalone STUN/TURN server.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use axum::{extract::State, http::header, response::IntoResponse, routing::get, Router};
use clap::Parser;
use icebreaker_relay::metrics::RelayMetrics;
use icebreaker_relay::RelayArgs;
use icebreaker_service as service;
use prometheus_client::registry::Registry;
use tracing::info;

#[derive(Parser, Debug)]
#[command(
    name = "icebreaker-relay",
    version,
    about = "STUN/TURN relay (RFC 8489, 8656)"
)]
struct Cli {
    /// TOML config file; its keys are the long flag names.
    #[arg(long, env = "ICEBREAKER_RELAY_CONFIG")]
    config: Option<PathBuf>,
    /// Print the effective configuration (secrets masked) and exit.
    #[arg(long)]
    print_config: bool,
    /// Log filter (tracing EnvFilter syntax), e.g. `info` or `icebreaker_relay=debug`.
    #[arg(long, env = "ICEBREAKER_RELAY_LOG", default_value = "info")]
    log: String,
    #[command(flatten)]
    relay: RelayArgs,
}

const NAME: &str = "icebreaker-relay";

fn main() -> ExitCode {
    let cli = Cli::parse();
    let layered = match service::config::load(
        cli.relay.clone(),
        cli.config.as_deref(),
        RelayArgs::layer_over,
    ) {
        Ok(a) => a,
        Err(e) => return service::config_error(NAME, &e),
    };
    if cli.print_config {
        return print_config(layered);
    }
    let config = match layered.resolve() {
        Ok(c) => c,
        Err(e) => return service::config_error(NAME, &e),
    };
    if let Err(code) = service::init_logging(NAME, &cli.log) {
        return code;
    }
    let source = Source {
        args: cli.relay.clone(),
        file: cli.config.clone(),
    };
    match serve(config, source) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{NAME}: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `--print-config`: the effective settings as a commented config file (every key with
/// its `--help` text, unset ones commented out, secrets masked). A configuration that
/// lacks only credentials still prints, as a template to fill in, with a header saying
/// so: that is how the packaged `/etc/icebreaker/relay.toml` is made.
fn print_config(layered: RelayArgs) -> ExitCode {
    use clap::CommandFactory;
    let no_credentials = layered.users.is_empty() && layered.auth_secrets.is_empty();
    let (config, note) = match layered.clone().resolve() {
        Ok(c) => (c, None),
        Err(e) if no_credentials => {
            // Resolve with a placeholder secret for the defaults, then print none.
            let mut with = layered;
            with.auth_secrets = vec!["placeholder".into()];
            match with.resolve() {
                Ok(mut c) => {
                    c.turn.auth_secrets.clear();
                    (c, Some(e))
                }
                Err(e) => return service::config_error(NAME, &e),
            }
        }
        Err(e) => return service::config_error(NAME, &e),
    };
    let keys = service::config::setting_keys(&Cli::command());
    print!(
        "# icebreaker-relay configuration (icebreaker-relay --config FILE); flags and\n\
         # ICEBREAKER_RELAY_* variables override it. Printed by `icebreaker-relay\n\
         # --print-config`: unset keys are commented out.\n"
    );
    if let Some(e) = note {
        eprintln!("{NAME}: printing a template: {e}");
        print!("#\n# Not ready to start: {e}\n");
    }
    print!(
        "\n{}",
        service::config::commented_toml(&config.to_masked_toml(), &keys)
    );
    ExitCode::SUCCESS
}

/// Where the configuration came from, read again on SIGHUP.
struct Source {
    args: RelayArgs,
    file: Option<PathBuf>,
}

/// SIGHUP: resolves the configuration again; the TURN core takes what it can change
/// (`Shared::reload`), the rest is reported as needing a restart. A bad file changes
/// nothing and says why in one line.
fn reload(
    handle: &icebreaker_relay::RelayHandle,
    started: &icebreaker_relay::RelayConfig,
    src: &Source,
    metrics: &RelayMetrics,
) {
    let new = service::config::load(src.args.clone(), src.file.as_deref(), RelayArgs::layer_over)
        .and_then(RelayArgs::resolve);
    let new = match new {
        Ok(c) => c,
        Err(e) => {
            metrics.config_reload_errors.inc();
            tracing::warn!(error = %e, "SIGHUP: the new configuration is not valid; still running the previous one");
            return;
        }
    };
    let mut need_restart = handle.shared.reload(new.turn.clone());
    macro_rules! fixed {
        ($($f:ident => $k:literal),*) => {$(
            if format!("{:?}", started.$f) != format!("{:?}", new.$f) {
                need_restart.push($k);
            }
        )*};
    }
    // The certificate files are read again (same paths); a bad pair keeps the old one.
    if let Some(c) = &handle.certificates {
        cert_reloaded(metrics, c.reload(), "SIGHUP");
    }
    fixed!(listen => "listen", tls_listen => "tls-listen", cert => "cert", key => "key",
           max_tcp_connections => "max-tcp-connections",
           max_tcp_frame => "max-tcp-frame", tcp_buffer_limit => "tcp-buffer-limit",
           threads => "threads", metrics_listen => "metrics-listen");
    // The load balancers trusted to send a PROXY header: from the next connection on.
    handle.set_proxy_from(new.proxy_from.clone());
    metrics.config_reloads.inc();
    info!(
        "SIGHUP: configuration reloaded (credentials, peer policy, quotas, lifetimes, bandwidth, trusted proxies)"
    );
    if !need_restart.is_empty() {
        tracing::warn!(keys = ?need_restart, "SIGHUP: these keys changed but take effect only after a restart; kept as they were");
    }
}

/// Counts and logs a certificate reload.
fn cert_reloaded(metrics: &RelayMetrics, r: Result<(), service::tls::TlsError>, why: &str) {
    let result = service::tls::report_reload(r, "", why);
    metrics
        .tls_cert_reloads
        .get_or_create(&icebreaker_relay::metrics::ResultLabel { result })
        .inc();
}

fn serve(config: icebreaker_relay::RelayConfig, source: Source) -> anyhow::Result<()> {
    let started = config.clone();
    let nofile = service::raise_nofile_limit();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    info!(open_files = nofile, "open-files limit");
    // Install the SIGTERM handler before announcing readiness.
    let mut stop = rt.block_on(async { service::Stop::install() })?;
    let metrics = RelayMetrics::default();
    let mut registry = Registry::default();
    metrics.register(&mut registry);
    let metrics_listen = config.metrics_listen;
    let listen = config.listen.clone();
    let handle =
        icebreaker_relay::run(config, metrics.clone()).context("cannot bind the relay's ports")?;
    info!(addrs = ?handle.local_addrs, shards = handle.shards, "relay listening (UDP+TCP)");
    if !handle.tls_addrs.is_empty() {
        info!(addrs = ?handle.tls_addrs, "relay listening (TURN over TLS)");
    }
    rt.block_on(async {
        if let Some(c) = handle.certificates.clone() {
            let m = metrics.clone();
            tokio::spawn(c.watch(std::time::Duration::from_secs(2), move |r| {
                cert_reloaded(&m, r, "certificate files changed")
            }));
        }
        if let Some(addr) = metrics_listen {
            let rss = prometheus_client::metrics::gauge::Gauge::default();
            registry.register(
                "process_resident_memory_bytes",
                "Resident memory of this process",
                rss.clone(),
            );
            let app = Router::new()
                .route("/metrics", get(metrics_handler))
                .route("/healthz", get(healthz))
                .with_state(Arc::new(Http {
                    registry,
                    shared: handle.shared.clone(),
                    metrics: metrics.clone(),
                    rss,
                }));
            let l = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot bind metrics-listen {addr}"))?;
            let addr = l.local_addr()?;
            info!(%addr, "metrics on /metrics, health on /healthz");
            tokio::spawn(async move { axum::serve(l, app).await });
        }
        while stop.next().await == service::Signal::Reload {
            reload(&handle, &started, &source, &metrics);
        }
        handle.drain(&mut stop, started.drain_timeout).await;
        anyhow::Ok(())
    })?;
    info!(?listen, "shutting down");
    handle.shutdown();
    Ok(())
}

/// What the metrics listener serves from.
struct Http {
    registry: Registry,
    shared: Arc<icebreaker_relay::server::Shared>,
    metrics: RelayMetrics,
    rss: prometheus_client::metrics::gauge::Gauge,
}

async fn healthz(State(h): State<Arc<Http>>) -> impl IntoResponse {
    if h.shared.is_draining() {
        (axum::http::StatusCode::SERVICE_UNAVAILABLE, "draining\n")
    } else {
        (axum::http::StatusCode::OK, "ok\n")
    }
}

async fn metrics_handler(State(h): State<Arc<Http>>) -> impl IntoResponse {
    h.metrics.ports_free.set(h.shared.free_ports() as i64);
    h.rss.set(service::resident_memory_bytes() as i64);
    let mut out = String::new();
    let _ = prometheus_client::encoding::text::encode(&mut out, &h.registry);
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        out,
    )
}
