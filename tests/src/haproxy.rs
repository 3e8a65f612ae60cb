//! HAProxy (Debian's) in TCP mode in front of `icebreaker` nodes, started on a free port:
//! the cluster tests' load balancer, and the PROXY protocol test's.

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::{free_tcp_port, require, Icebreaker, Proc};

/// HAProxy in TCP mode, round robin over `nodes`, health-checked on `/healthz` (a node
/// that lost Redis answers 503 and gets no new clients).
pub struct Haproxy {
    _proc: Proc,
    /// Where clients connect.
    pub addr: SocketAddr,
    cfg: std::path::PathBuf,
    stats: std::path::PathBuf,
}

/// Health checks: a server needs `FALL` failed checks in a row to go down once it is
/// fully up (health `RISE + FALL - 1`).
const RISE: u32 = 1;
const FALL: u32 = 3;

impl Haproxy {
    /// Round robin over `nodes`.
    pub fn start(nodes: &[&Icebreaker]) -> Haproxy {
        Haproxy::start_with(nodes, "")
    }

    /// Round robin over `nodes`, with `server_opts` added to every `server` line (e.g.
    /// `send-proxy-v2 check-send-proxy source 127.0.0.5`).
    pub fn start_with(nodes: &[&Icebreaker], server_opts: &str) -> Haproxy {
        let servers: Vec<String> = nodes.iter().map(|n| n.http.to_string()).collect();
        Haproxy::start_servers(&servers, server_opts)
    }

    /// Round robin over `servers` (`ADDR` or `ADDR check port P` for a server whose
    /// `/healthz` is on another port), `server_opts` added to every `server` line.
    pub fn start_servers(servers: &[String], server_opts: &str) -> Haproxy {
        require("haproxy", "haproxy");
        let port = free_tcp_port();
        let tmp = std::env::temp_dir();
        let stats = tmp.join(format!("ib-haproxy-{}-{port}.sock", std::process::id()));
        // Health changes are logged (notice) so a failing test shows them.
        let mut cfg = format!(
            "global\n  maxconn 4096\n  log stderr format raw local0 notice\n  stats socket {}\n\
             defaults\n  mode tcp\n  log global\n  timeout connect 2s\n  timeout client 1h\n  timeout server 1h\n  timeout tunnel 1h\n  timeout check 2s\n  option redispatch\n  retries 3\n\
             frontend fe\n  bind 127.0.0.1:{port}\n  default_backend nodes\n\
             backend nodes\n  balance roundrobin\n  option httpchk GET /healthz\n  http-check expect status 200\n",
            stats.display()
        );
        for (i, server) in servers.iter().enumerate() {
            let (addr, check) = server.split_once(' ').unwrap_or((server, ""));
            cfg += &format!(
                "  server n{i} {addr} check {check} inter 300ms fall {FALL} rise {RISE} {server_opts}\n"
            );
        }
        let path = tmp.join(format!("ib-haproxy-{}-{port}.cfg", std::process::id()));
        std::fs::write(&path, cfg).unwrap();
        let mut cmd = Command::new("haproxy");
        cmd.args(["-db", "-f", path.to_str().unwrap()]);
        let proc = Proc::start("haproxy", cmd);
        let lb = Haproxy {
            _proc: proc,
            addr: format!("127.0.0.1:{port}").parse().unwrap(),
            cfg: path,
            stats,
        };
        // HAProxy starts a checked server one failed check away from down; the tests
        // count on round robin, so wait until every server has passed enough checks to
        // stay up through a slow one. (No probe connection: it would take a turn.)
        let t0 = Instant::now();
        loop {
            let health = lb.health();
            if health.len() == servers.len() && health.iter().all(|&h| h == RISE + FALL - 1) {
                break;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(15),
                "haproxy servers not fully up: {health:?}\n{}",
                lb._proc.output()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        lb
    }

    /// Each server's check health (`show servers state`), empty while HAProxy starts.
    pub fn health(&self) -> Vec<u32> {
        use std::io::{Read, Write};
        let Ok(mut s) = std::os::unix::net::UnixStream::connect(&self.stats) else {
            return Vec::new();
        };
        let mut out = String::new();
        if s.write_all(b"show servers state nodes\n").is_err()
            || s.read_to_string(&mut out).is_err()
        {
            return Vec::new();
        }
        // Columns: be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state
        // srv_uweight srv_iweight srv_time_since_last_change srv_check_status
        // srv_check_result srv_check_health …
        out.lines()
            .filter(|l| !l.starts_with('#') && l.split_whitespace().count() > 12)
            .filter_map(|l| l.split_whitespace().nth(12)?.parse().ok())
            .collect()
    }

    /// The WebSocket URL through the balancer.
    pub fn ws(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.cfg);
        let _ = std::fs::remove_file(&self.stats);
    }
}
