//! The Grafana dashboard (deploy/grafana/icebreaker.json) cannot rot: every metric its
//! queries name exists in `icebreaker`'s `/metrics` (bundled relay on, Redis bus on) after
//! a short real load — two headless peers chatting relay-only.

use std::time::Duration;

use icebreaker_tests::{
    free_tcp_port, http_get, peer_cmd, repo_dir, start_icebreaker, Proc, Redis,
};

/// Every `icebreaker_…` name in the dashboard's query expressions.
fn queried_metrics() -> Vec<String> {
    let text = std::fs::read_to_string(repo_dir().join("deploy/grafana/icebreaker.json"))
        .expect("deploy/grafana/icebreaker.json");
    let json: serde_json::Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    let mut exprs = Vec::new();
    fn walk(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(m) => {
                if let Some(t) = m.get("targets").and_then(|t| t.as_array()) {
                    for e in t.iter().filter_map(|t| t["expr"].as_str()) {
                        out.push(e.to_string());
                    }
                }
                m.values().for_each(|x| walk(x, out));
            }
            serde_json::Value::Array(a) => a.iter().for_each(|x| walk(x, out)),
            _ => {}
        }
    }
    walk(&json, &mut exprs);
    assert!(exprs.len() >= 10, "the dashboard has queries: {exprs:?}");
    let mut names: Vec<String> = exprs
        .iter()
        .flat_map(|e| {
            e.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .filter(|w| w.starts_with("icebreaker_"))
                .map(String::from)
                .collect::<Vec<_>>()
        })
        .collect();
    names.sort();
    names.dedup();
    names
}

/// Registered under `name`: a sample of it, or its `# TYPE` line (a labelled counter that
/// has not counted yet shows only the family, without `_total` / `_bucket`).
fn exposed(metrics: &str, name: &str) -> bool {
    let family = name
        .strip_suffix("_total")
        .or_else(|| name.strip_suffix("_bucket"))
        .or_else(|| name.strip_suffix("_count"))
        .or_else(|| name.strip_suffix("_sum"))
        .unwrap_or(name);
    metrics.lines().any(|l| {
        l.split(['{', ' ']).next() == Some(name)
            || l.strip_prefix("# TYPE ")
                .and_then(|r| r.split(' ').next())
                .is_some_and(|f| f == family || f == name)
    })
}

#[test]
fn every_metric_the_dashboard_queries_exists() {
    let redis = Redis::start(free_tcp_port());
    let url = redis.url();
    let ib = start_icebreaker(&["--redis", &url, "--node-id", "dash"]);
    let chat = |name: &str| {
        Proc::start(
            name,
            peer_cmd(
                &ib,
                "dash",
                name,
                &["--relay-only"],
                &["chat", "--send", "hello", "--expect", "1"],
            ),
        )
    };
    let mut a = chat("alice");
    a.wait_line("\"joined\"", Duration::from_secs(10))
        .expect("alice joined");
    let mut b = chat("bob");
    for p in [&mut a, &mut b] {
        let st = p.wait(Duration::from_secs(45)).expect("peer exits");
        assert!(st.success(), "{} failed:\n{}", p.name, p.output());
    }
    let (_, metrics) = http_get(ib.http, "/metrics");
    let missing: Vec<String> = queried_metrics()
        .into_iter()
        .filter(|n| !exposed(&metrics, n))
        .collect();
    assert!(
        missing.is_empty(),
        "the dashboard queries metrics /metrics does not have: {missing:?}"
    );
}
