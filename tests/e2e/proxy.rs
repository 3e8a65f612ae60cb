//! `icebreaker` behind Debian's nginx, running the site we ship (deploy/nginx/icebreaker.conf)
//! on a free port: the web client and `/ws` through it, resume through it, and the per-IP
//! limits counting clients (from `X-Forwarded-For`, trusted only from nginx's address) and
//! not nginx, while a client cannot forge its address. And the same limits behind Debian's
//! HAProxy in TCP mode, which names each client in a PROXY protocol header instead.

use std::net::{IpAddr, SocketAddr};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Error as WsError;

use icebreaker_tests::haproxy::Haproxy;
use icebreaker_tests::ws_client::WsClient;
use icebreaker_tests::{
    free_tcp_port, http_get, metric, repo_dir, require, start_icebreaker, Icebreaker, Proc,
};

/// nginx connects to icebreaker from here (`proxy_bind`), and only this is trusted: the
/// test clients on other loopback addresses are "the internet".
const NGINX_SIDE: &str = "127.0.0.2";

struct Nginx {
    _proc: Proc,
    addr: SocketAddr,
    dir: std::path::PathBuf,
}

impl Nginx {
    /// The shipped site with its two local facts replaced (where it listens, where
    /// icebreaker is), inside a minimal main config that keeps every file in a temp dir.
    fn start(ib: &Icebreaker) -> Nginx {
        require("nginx", "nginx");
        let port = free_tcp_port();
        let dir = std::env::temp_dir().join(format!("ib-nginx-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let site = std::fs::read_to_string(repo_dir().join("deploy/nginx/icebreaker.conf"))
            .expect("deploy/nginx/icebreaker.conf");
        let replaced = site
            .replace(
                "    listen 80;\n",
                &format!("    listen 127.0.0.1:{port};\n"),
            )
            .replace("    listen [::]:80;\n", "")
            .replace("server 127.0.0.1:8080;", &format!("server {};", ib.http));
        assert_ne!(
            replaced, site,
            "the site's listen/upstream lines changed shape"
        );
        std::fs::write(dir.join("site.conf"), replaced).unwrap();
        let d = dir.display();
        let main = format!(
            "daemon off;\nmaster_process off;\nworker_processes 1;\npid {d}/nginx.pid;\n\
             error_log stderr notice;\nevents {{ worker_connections 256; }}\n\
             http {{\n  access_log off;\n  proxy_bind {NGINX_SIDE};\n\
             client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n\
             fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
             include {d}/site.conf;\n}}\n"
        );
        std::fs::write(dir.join("nginx.conf"), main).unwrap();
        let mut cmd = Command::new("nginx");
        cmd.args(["-p", dir.to_str().unwrap(), "-c", "nginx.conf"]);
        let proc = Proc::start("nginx", cmd);
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let t0 = Instant::now();
        while std::net::TcpStream::connect(addr).is_err() || http_get(addr, "/healthz").0 != 200 {
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "nginx did not start:\n{}",
                proc.output()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Nginx {
            _proc: proc,
            addr,
            dir,
        }
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Opens `/ws` through nginx from source address `from`, optionally claiming to be
/// someone else with our own `X-Forwarded-For`.
async fn ws_from(via: SocketAddr, from: &str, forged: Option<&str>) -> Result<WsClient, WsError> {
    let tcp = tcp_from(via, from).await;
    let mut req = format!("ws://{via}/ws").into_client_request().unwrap();
    req.headers_mut()
        .insert("origin", format!("http://{via}").parse().unwrap());
    if let Some(f) = forged {
        req.headers_mut()
            .insert("x-forwarded-for", f.parse().unwrap());
    }
    WsClient::over(tcp, req).await
}

/// A TCP connection to `to` from source address `from`.
async fn tcp_from(to: SocketAddr, from: &str) -> TcpStream {
    let sock = TcpSocket::new_v4().unwrap();
    sock.bind(SocketAddr::new(from.parse::<IpAddr>().unwrap(), 0))
        .unwrap();
    sock.connect(to).await.unwrap()
}

fn refused_429(r: Result<WsClient, WsError>) -> bool {
    matches!(r, Err(WsError::Http(resp)) if resp.status() == 429)
}

#[test]
fn behind_nginx_the_client_resumes_and_limits_count_clients_not_the_proxy() {
    let ib = start_icebreaker(&[
        "--no-relay",
        "--max-connections-per-ip",
        "2",
        "--trusted-proxy",
        &format!("{NGINX_SIDE}/32"),
        "--resume-grace",
        "10s",
    ]);
    let nginx = Nginx::start(&ib);
    // The web client, through the proxy.
    let (status, body) = http_get(nginx.addr, "/");
    assert_eq!(status, 200);
    assert!(
        body.contains("<html") || body.contains("<!doctype"),
        "{body:.200}"
    );
    assert_eq!(
        http_get(nginx.addr, "/metrics").0,
        404,
        "metrics stay private"
    );

    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            // Two clients from 127.0.0.3 fill its quota; a third from there is refused.
            let mut a = ws_from(nginx.addr, "127.0.0.3", None).await.unwrap();
            let mut b = ws_from(nginx.addr, "127.0.0.3", None).await.unwrap();
            assert!(
                refused_429(ws_from(nginx.addr, "127.0.0.3", None).await),
                "a third connection from one client address is refused"
            );
            // Another client behind the same proxy has its own quota (if nginx's address
            // were counted, every one of these would be refused now).
            let mut c = ws_from(nginx.addr, "127.0.0.4", None).await.unwrap();
            // Claiming another address in our own X-Forwarded-For does not help: nginx
            // appends the real one, and that is what counts.
            let _d = ws_from(nginx.addr, "127.0.0.4", Some("198.51.100.7"))
                .await
                .unwrap();
            assert!(
                refused_429(ws_from(nginx.addr, "127.0.0.4", Some("198.51.100.8")).await),
                "a forged X-Forwarded-For is not believed"
            );

            // Signaling through the proxy, then a drop and a resume through it.
            a.send(json!({"type":"join","room":"proxied"})).await;
            let ja = a.expect("joined").await;
            let (aid, token) = (
                ja["id"].as_str().unwrap().to_string(),
                ja["resume_token"].as_str().unwrap().to_string(),
            );
            c.send(json!({"type":"join","room":"proxied"})).await;
            let cid = c.expect("joined").await["id"].as_str().unwrap().to_string();
            let pj = a.expect("peer-joined").await;
            let last_seq = pj["seq"].as_u64().unwrap();
            // The network drops a: no close frame, the TCP connection just goes.
            drop(a);
            for i in 0..3 {
                c.send(json!({"type":"signal","to": aid,"data":{"i": i}}))
                    .await;
            }
            // b makes room in 127.0.0.3's quota (a's detached peer still counts).
            b.ws.close(None).await.unwrap();
            drop(b);
            tokio::time::sleep(Duration::from_millis(300)).await;
            let mut a2 = ws_from(nginx.addr, "127.0.0.3", None).await.unwrap();
            a2.send(json!({"type":"resume","id": aid,"token": token,"last_seq": last_seq}))
                .await;
            a2.expect("resumed").await;
            for i in 0..3 {
                let s = a2.expect("signal").await;
                assert_eq!(
                    (s["from"].as_str(), s["data"]["i"].as_u64()),
                    (Some(&*cid), Some(i))
                );
            }
            // And live again both ways.
            a2.send(json!({"type":"signal","to": cid,"data":{"back": true}}))
                .await;
            assert_eq!(c.expect("signal").await["data"]["back"], true);
        });
    let m = http_get(ib.http, "/metrics").1;
    assert!(
        metric(
            &m,
            "icebreaker_refused_connections_total",
            &["code=\"per-ip-limit\""]
        ) >= 2.0,
        "refusals counted"
    );
}

/// HAProxy connects to icebreaker from here (`source`) and only this is trusted.
const LB_SIDE: &str = "127.0.0.5";

/// Writes `bytes` on a fresh connection to `to` from `from` and returns what comes back
/// before the server closes (or 5 s pass).
async fn raw_exchange(to: SocketAddr, from: &str, bytes: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tcp_from(to, from).await;
    s.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[test]
fn behind_haproxy_the_proxy_protocol_names_each_client_for_the_per_ip_limits() {
    let ib = start_icebreaker(&[
        "--no-relay",
        "--max-connections-per-ip",
        "2",
        "--proxy-protocol",
        "--trusted-proxy",
        &format!("{LB_SIDE}/32"),
    ]);
    // Health checks carry the header too (`check-send-proxy`): the node is only up in
    // HAProxy's eyes, and `start_with` only returns, if they are understood.
    let lb = Haproxy::start_with(
        &[&ib],
        &format!("send-proxy-v2 check-send-proxy source {LB_SIDE}"),
    );
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            // Two clients from 127.0.0.3 fill its quota; a third from there is refused.
            let mut a = ws_from(lb.addr, "127.0.0.3", None).await.unwrap();
            let _b = ws_from(lb.addr, "127.0.0.3", None).await.unwrap();
            assert!(
                refused_429(ws_from(lb.addr, "127.0.0.3", None).await),
                "a third connection from one client address is refused"
            );
            // Another client behind the same balancer has its own quota (were the
            // balancer's address counted, this would be refused too).
            let mut c = ws_from(lb.addr, "127.0.0.4", None).await.unwrap();
            a.send(json!({"type":"join","room":"l4"})).await;
            a.expect("joined").await;
            c.send(json!({"type":"join","room":"l4"})).await;
            let cid = c.expect("joined").await["id"].as_str().unwrap().to_string();
            a.expect("peer-joined").await;
            a.send(json!({"type":"signal","to": cid,"data":{"via":"haproxy"}})).await;
            assert_eq!(c.expect("signal").await["data"]["via"], "haproxy");

            // A client that writes its own PROXY header straight to the node is not
            // believed: from an untrusted address the header is just a bad request.
            let forged = raw_exchange(
                ib.http,
                "127.0.0.6",
                b"PROXY TCP4 198.51.100.1 127.0.0.1 1000 80\r\nGET /healthz HTTP/1.1\r\nHost: x\r\n\r\n",
            )
            .await;
            assert!(
                forged.starts_with("HTTP/1.1 400"),
                "a forged PROXY header is a bad request: {forged:?}"
            );
            // From the balancer's address, a connection without the header is cut off
            // (it would otherwise count as every client at once).
            let bare = raw_exchange(
                ib.http,
                LB_SIDE,
                b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n",
            )
            .await;
            assert_eq!(bare, "", "no answer without a PROXY header");
        });
    let m = http_get(ib.http, "/metrics").1;
    let headers = |r: &str| {
        metric(
            &m,
            "icebreaker_proxy_headers_total",
            &[&format!("result=\"{r}\"")],
        )
    };
    assert!(headers("client") >= 4.0, "clients named: {m}");
    assert!(headers("invalid") >= 1.0, "the bare connection counted");
    assert!(
        metric(
            &m,
            "icebreaker_refused_connections_total",
            &["code=\"per-ip-limit\""]
        ) >= 1.0,
        "the third connection from 127.0.0.3 refused"
    );
}
