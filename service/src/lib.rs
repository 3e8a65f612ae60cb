//! What every Icebreaker server binary (`icebreaker`, `icebreaker-relay`) does at start, in
//! one place: configuration layered from flags, environment and a TOML file ([`config`]),
//! logging ([`init_logging`]), the stop signal ([`Stop`]), the SO_REUSEPORT sockets the
//! serving threads share ([`reuse_socket`]) and the PROXY protocol header that L4 load
//! balancers put in front of a connection ([`proxy`]).

#![warn(missing_docs, unreachable_pub)]

pub mod config;
pub mod proxy;
pub mod tls;

use std::net::SocketAddr;
use std::process::ExitCode;

use socket2::{Domain, Protocol, Socket, Type};

pub use config::{parse_duration, ConfigError};

/// Logs to stderr with `filter` (tracing's EnvFilter syntax), colored on a terminal.
/// A bad filter is a configuration error (exit code 2).
pub fn init_logging(binary: &str, filter: &str) -> Result<(), ExitCode> {
    let filter = tracing_subscriber::EnvFilter::try_new(filter).map_err(|e| {
        eprintln!("{binary}: invalid `log`: {e}");
        ExitCode::from(2)
    })?;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    Ok(())
}

/// Prints a configuration error the way every binary does and gives exit code 2.
pub fn config_error(binary: &str, e: &ConfigError) -> ExitCode {
    eprintln!("{binary}: {e}");
    ExitCode::from(2)
}

/// The request to stop: SIGTERM (systemd, docker, the tests) or Ctrl-C. Created before the
/// server announces readiness, so an early SIGTERM is a graceful stop rather than the
/// default kill. Needs a tokio runtime.
///
/// It also takes SIGHUP (`systemctl reload`), whose default action would kill the
/// process: [`Stop::next`] returns it as [`Signal::Reload`] and the server reloads.
pub struct Stop {
    term: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Stop {
    /// Installs the SIGTERM and SIGHUP handlers.
    pub fn install() -> std::io::Result<Stop> {
        use tokio::signal::unix::{signal, SignalKind};
        let term = signal(SignalKind::terminate())?;
        let hup = signal(SignalKind::hangup())?;
        Ok(Stop { term, hup })
    }

    /// The next request: stop (SIGTERM, Ctrl-C) or reload (SIGHUP).
    pub async fn next(&mut self) -> Signal {
        tokio::select! {
            _ = self.term.recv() => Signal::Stop,
            _ = tokio::signal::ctrl_c() => Signal::Stop,
            _ = self.hup.recv() => Signal::Reload,
        }
    }
}

/// `n` TCP listeners on one address in an SO_REUSEPORT group (one per serving thread or
/// relay shard; the kernel spreads new connections over them). With port 0 the first
/// picks the port and the others join it.
pub fn reuse_tcp_listeners(
    addr: SocketAddr,
    n: usize,
) -> std::io::Result<Vec<std::net::TcpListener>> {
    let mut out: Vec<std::net::TcpListener> = Vec::with_capacity(n.max(1));
    for _ in 0..n.max(1) {
        let at = match out.first() {
            Some(l) => l.local_addr()?,
            None => addr,
        };
        let s = reuse_socket(at, Type::STREAM, Protocol::TCP)?;
        s.bind(&at.into())?;
        s.listen(1024)?;
        out.push(s.into());
    }
    Ok(out)
}

/// Raises the soft open-files limit to the hard one: a relay holds a socket per
/// allocation and a signaling server one per client, so the usual soft 1024 is far too
/// low, while the hard limit is what the operator (or systemd's `LimitNOFILE`) allows.
/// Returns the limit now in force.
pub fn raise_nofile_limit() -> u64 {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid pointer to an rlimit.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) != 0 {
            return 0;
        }
        if r.rlim_cur < r.rlim_max {
            let want = libc::rlimit {
                rlim_cur: r.rlim_max,
                rlim_max: r.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &want) == 0 {
                return want.rlim_cur;
            }
        }
    }
    r.rlim_cur
}

/// This process's resident memory in bytes (`/proc/self/statm`), for the `/metrics` of
/// both binaries; 0 where it cannot be read.
pub fn resident_memory_bytes() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let page = match unsafe { libc::sysconf(libc::_SC_PAGESIZE) } {
        n if n > 0 => n as u64,
        _ => 4096,
    };
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * page)
}

/// Gives freed heap memory back to the kernel (glibc's `malloc_trim`): after many
/// allocations or connections end, the allocator otherwise keeps the peak's pages.
pub fn trim_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim has no preconditions.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// What [`Stop::next`] was asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// SIGTERM or Ctrl-C.
    Stop,
    /// SIGHUP (`systemctl reload`).
    Reload,
}

/// A non-blocking socket for `addr` that joins an SO_REUSEPORT group (IPv6 sockets are
/// v6-only): one per serving thread or relay shard, and the kernel spreads clients over
/// them.
pub fn reuse_socket(addr: SocketAddr, ty: Type, proto: Protocol) -> std::io::Result<Socket> {
    let s = Socket::new(Domain::for_address(addr), ty, Some(proto))?;
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    s.set_nonblocking(true)?;
    Ok(s)
}
