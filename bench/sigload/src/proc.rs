//! /proc helpers: the server runs on this machine, so its own accounting is the ground truth.
//! Same sources and arithmetic as load.mjs.

use std::collections::HashSet;
use std::fs;

/// Kernel clock ticks per second for utime/stime (what load.mjs assumes too).
pub const CLK_TCK: f64 = 100.0;

pub struct Rss {
    pub rss: Option<u64>,
    pub hwm: Option<u64>,
}

/// VmRSS and VmHWM (KiB) from /proc/PID/status, summed over `pids` (a cluster's nodes
/// and Redis); None if there are none or one is gone.
pub fn rss_kib(pids: &[u32]) -> Option<Rss> {
    let mut sum = Rss {
        rss: Some(0),
        hwm: Some(0),
    };
    if pids.is_empty() {
        return None;
    }
    for pid in pids {
        let s = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let add = |a: Option<u64>, b: Option<u64>| Some(a? + b?);
        sum.rss = add(sum.rss, status_kib(&s, "VmRSS:"));
        sum.hwm = add(sum.hwm, status_kib(&s, "VmHWM:"));
    }
    Some(sum)
}

fn status_kib(status: &str, name: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(name))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// utime + stime (fields 14 and 15, all threads) of a /proc/.../stat file, in ticks.
fn stat_ticks(path: &str) -> Option<u64> {
    let s = fs::read_to_string(path).ok()?;
    // comm (field 2) may contain spaces and parentheses: split after the last ')'.
    let rest = s.get(s.rfind(')')? + 2..)?;
    let f: Vec<&str> = rest.split(' ').collect();
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    Some(utime + stime)
}

pub fn cpu_ticks(pid: Option<u32>) -> Option<u64> {
    stat_ticks(&format!("/proc/{}/stat", pid?))
}

/// CPU ticks summed over `pids`; None if there are none or one is gone.
pub fn cpu_ticks_all(pids: &[u32]) -> Option<u64> {
    if pids.is_empty() {
        return None;
    }
    pids.iter().map(|&p| cpu_ticks(Some(p))).sum()
}

pub fn self_cpu_ticks() -> Option<u64> {
    stat_ticks("/proc/self/stat")
}

/// Soft limit on open files; None = unlimited or unknown.
pub fn open_files_limit() -> Option<u64> {
    let s = fs::read_to_string("/proc/self/limits").ok()?;
    let line = s.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// pid of the process with a listening TCP socket on `port` (this network namespace).
pub fn find_listener_pid(port: u16) -> Option<u32> {
    let mut inodes: HashSet<String> = HashSet::new();
    for f in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = fs::read_to_string(f) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let c: Vec<&str> = line.split_whitespace().collect();
            if c.len() > 9 && c[3] == "0A" {
                let p = c[1]
                    .rsplit(':')
                    .next()
                    .and_then(|h| u16::from_str_radix(h, 16).ok());
                if p == Some(port) {
                    inodes.insert(c[9].to_string());
                }
            }
        }
    }
    if inodes.is_empty() {
        return None;
    }
    let me = std::process::id();
    for entry in fs::read_dir("/proc").ok()?.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            let Ok(link) = fs::read_link(fd.path()) else {
                continue;
            }; // fd closed meanwhile
            let Some(link) = link.to_str() else { continue };
            if let Some(ino) = link
                .strip_prefix("socket:[")
                .and_then(|r| r.strip_suffix(']'))
            {
                if inodes.contains(ino) {
                    return Some(pid);
                }
            }
        }
    }
    None
}
