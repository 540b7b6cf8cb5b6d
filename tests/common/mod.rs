//! Helpers shared by the multi-process tests. Each test file uses some of them, so the
//! others are dead code in that file's build.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use hyper::Method;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use standin::address::proxy::status::{ListenerStatus, ProxyStatus};
use standin::api::client::request;
use standin::lab::harness::LocalCluster;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The `standin` binary under test.
pub fn binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_standin"))
}

/// A free loopback address: binds port 0 and releases it. Another process may take the port
/// before the test binds it, which on loopback in a test run does not happen in practice.
pub fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind port 0")
        .local_addr()
        .expect("local address")
}

/// The port of [`free_addr`].
pub fn free_port() -> u16 {
    free_addr().port()
}

/// Sends `partial_head` (a request head that never ends) to the HTTP listener at `addr` and
/// asserts the server cuts the connection off (after its header-read timeout), with a 408 or
/// by closing it.
pub async fn assert_slow_head_cut_off(addr: SocketAddr, partial_head: &[u8]) {
    let mut slow = tokio::net::TcpStream::connect(addr).await.expect("connect");
    slow.write_all(partial_head).await.expect("write");
    let mut buf = [0u8; 512];
    // A generous bound only so that a regression fails instead of hanging.
    let n = tokio::time::timeout(Duration::from_secs(20), slow.read(&mut buf))
        .await
        .expect("the slow client was disconnected")
        .unwrap_or(0);
    let answer = String::from_utf8_lossy(&buf[..n]);
    assert!(n == 0 || answer.starts_with("HTTP/1.1 408"), "{answer}");
}

/// One parsed sample: name, sorted labels, value.
pub type Sample = (String, Vec<(String, String)>, f64);

/// Scrapes `/metrics` on `admin` and parses the OpenMetrics text into
/// `(name, sorted labels, value)`; fails on any line that is not a comment or a sample.
pub async fn scrape(admin: &str) -> Vec<Sample> {
    let r = standin::api::client::request(
        admin,
        hyper::Method::GET,
        "/metrics",
        None,
        Duration::from_secs(5),
    )
    .await
    .expect("scrape");
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body.ends_with("# EOF\n"), "OpenMetrics ends with # EOF");
    let mut out = Vec::new();
    for line in r.body.lines().filter(|l| !l.starts_with('#') && !l.is_empty()) {
        let (head, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("bad sample line: {line}"));
        let value: f64 = value.parse().unwrap_or_else(|_| panic!("bad value in: {line}"));
        let (name, labels) = match head.split_once('{') {
            Some((n, rest)) => {
                let inner = rest
                    .strip_suffix('}')
                    .unwrap_or_else(|| panic!("bad labels: {line}"));
                let mut labels: Vec<(String, String)> = inner
                    .split(',')
                    .filter(|kv| !kv.is_empty())
                    .map(|kv| {
                        let (k, v) = kv
                            .split_once('=')
                            .unwrap_or_else(|| panic!("bad label {kv} in {line}"));
                        (k.to_string(), v.trim_matches('"').to_string())
                    })
                    .collect();
                labels.sort();
                (n.to_string(), labels)
            }
            None => (head.to_string(), Vec::new()),
        };
        out.push((name, labels, value));
    }
    out
}

pub fn sample(m: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    m.iter()
        .find(|(n, l, _)| {
            n == name
                && labels
                    .iter()
                    .all(|(k, v)| l.iter().any(|(lk, lv)| lk == k && lv == v))
        })
        .map(|(_, _, v)| *v)
}

/// A cluster connection to member `target` of a local TLS cluster, authenticated with the
/// certificate of member `as_id` (from the harness's `certs` directory): what a member, or
/// whoever holds its key, can send.
pub async fn peer_conn(
    cluster: &standin::lab::harness::LocalCluster,
    target: &str,
    as_id: &str,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let certs = cluster.certs_dir().expect("a TLS cluster");
    let addr = cluster.node(target).expect("target node").paths[0];
    let tls = standin::tls::Tls::load(
        standin::tls::TlsFiles {
            ca: Some(certs.join("ca.pem")),
            cert: certs.join(format!("{as_id}.pem")),
            key: certs.join(format!("{as_id}.key")),
            keys: ["ca", "cert", "key"],
        },
        None,
    )
    .expect("load member certificate");
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connect cluster port");
    tls.peer_connector(target)
        .expect("connector")
        .connect(standin::tls::peer_server_name(), tcp)
        .await
        .expect("TLS handshake as a member")
}

/// Creates `path` (it must not exist) with mode 0600 and writes `text`: a key or a secret file
/// as `check_private` wants it.
pub fn write_private(path: &std::path::Path, text: &str) {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .expect("create private file");
    f.write_all(text.as_bytes()).expect("write private file");
}

/// Reads one answer frame of the peer protocol (a 4-byte big-endian length, then the frame),
/// or `None` if the connection closed, the bytes do not decode, or nothing came `within`.
pub async fn read_answer(
    conn: &mut (impl tokio::io::AsyncRead + Unpin),
    within: Duration,
) -> Option<standin::cluster::rpc::Frame<standin::cluster::rpc::Response>> {
    let read = async {
        let mut len = [0u8; 4];
        conn.read_exact(&mut len).await.ok()?;
        let mut buf = vec![0u8; u32::from_be_bytes(len) as usize];
        conn.read_exact(&mut buf).await.ok()?;
        postcard::from_bytes(&buf).ok()
    };
    tokio::time::timeout(within, read).await.ok().flatten()
}

/// `GET /v1/status` from the admin API at `api` with `access` (token, CA for HTTPS), or `None`
/// if it cannot be had within 2 s.
pub async fn status_with(
    api: &str,
    access: &standin::api::client::Access,
) -> Option<standin::status::Status> {
    let r = standin::api::client::request_with(
        api,
        hyper::Method::GET,
        "/v1/status",
        None,
        Duration::from_secs(2),
        access,
    )
    .await
    .ok()?;
    serde_json::from_str(&r.body).ok()
}

/// A `standin proxy` process; killed on drop.
pub struct ProxyProc {
    pub child: std::process::Child,
    pub admin: SocketAddr,
    pub log: PathBuf,
}

impl ProxyProc {
    pub fn start(dir: &Path, cluster: &LocalCluster, listeners_toml: &str) -> ProxyProc {
        let admin = free_addr();
        let apis: Vec<String> = cluster.nodes.iter().map(|n| format!("\"{}\"", n.admin)).collect();
        let text = format!(
            "[proxy]\ncluster = [{}]\nadmin = \"{admin}\"\n{listeners_toml}\n",
            apis.join(", ")
        );
        let config = dir.join("proxy.toml");
        std::fs::write(&config, text).expect("write proxy config");
        let log = dir.join("proxy.log");
        let child = Command::new(binary())
            .args(["proxy", "--config"])
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log"))
            .env("STANDIN_LOG", "info,standin::address=debug")
            .process_group(0)
            .spawn()
            .expect("start the proxy");
        ProxyProc { child, admin, log }
    }

    pub async fn status(&self) -> Option<ProxyStatus> {
        let r = request(
            &self.admin.to_string(),
            Method::GET,
            "/v1/proxy",
            None,
            Duration::from_secs(2),
        )
        .await
        .ok()?;
        serde_json::from_str(&r.body).ok()
    }

    pub async fn listener(&self, name: &str) -> ListenerStatus {
        let s = self.status().await.expect("proxy status");
        s.listeners
            .into_iter()
            .find(|l| l.name == name)
            .unwrap_or_else(|| panic!("no listener {name}"))
    }

    pub async fn addr(&self, name: &str) -> SocketAddr {
        self.listener(name).await.address.parse().expect("address")
    }

    /// Waits until every listener forwards to `active` (failover) or has backends (balance).
    pub async fn wait_following(&self, active: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let mut last = None;
        while Instant::now() < deadline {
            if let Some(s) = self.status().await {
                let ok = !s.listeners.is_empty()
                    && s.listeners.iter().all(|l| match l.settings.mode {
                        standin::address::proxy::config::Mode::Failover => {
                            l.active.as_deref() == Some(active)
                        }
                        standin::address::proxy::config::Mode::Balance => {
                            l.upstreams.iter().filter(|u| u.cluster_ok).count() >= 2
                        }
                    });
                if ok {
                    return;
                }
                last = Some(s);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "proxy not following {active} after {timeout:?}: {last:?}\n{}",
            std::fs::read_to_string(&self.log).unwrap_or_default()
        );
    }

    pub async fn put(&self, name: &str, body: serde_json::Value) -> (u16, String) {
        let r = request(
            &self.admin.to_string(),
            Method::PUT,
            &format!("/v1/proxy/listeners/{name}"),
            Some(body.to_string()),
            Duration::from_secs(5),
        )
        .await
        .expect("PUT");
        (r.status, r.body)
    }
}

impl Drop for ProxyProc {
    fn drop(&mut self) {
        let _ = killpg(Pid::from_raw(self.child.id() as i32), Signal::SIGKILL);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
