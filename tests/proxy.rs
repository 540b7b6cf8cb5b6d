//! The front proxy over a real cluster on loopback: `standin node` processes (data nodes `a`,
//! `b`, witness `w`) with the demo service and the store, and a `standin proxy` process in
//! front of them. Listeners bind port 0 and are found through the proxy's control API.
//!
//! Tests run one at a time (they share two cores and measure interruptions).

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use hyper::Method;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use standin::address::proxy::status::ProxyStatus;
use standin::api::client::request;
use standin::lab::harness::{parse_active, LocalCluster, Spec};
use standin::status::Status;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

mod common;
use common::{assert_slow_head_cut_off, binary, free_addr, sample, scrape, ProxyProc};

struct Fixture {
    cluster: LocalCluster,
    dir: tempfile::TempDir,
}

impl Fixture {
    async fn start() -> Fixture {
        let dir = tempfile::tempdir().expect("tempdir");
        let spec = Spec::new(dir.path(), &binary());
        let mut cluster = LocalCluster::create(spec).await.expect("create cluster");
        cluster.start_all().expect("start");
        cluster
            .wait_ready(Duration::from_secs(30))
            .await
            .expect("cluster ready");
        Fixture { cluster, dir }
    }

    async fn status(&self) -> Status {
        self.cluster.status().await.expect("some node answers")
    }

    fn api(&self) -> String {
        self.cluster.nodes[0].admin.to_string()
    }

    async fn wait_active(&self, id: &str, timeout: Duration) -> Status {
        self.cluster
            .wait_for(timeout, "the expected active node", |s| {
                s.active.as_deref() == Some(id) && s.nodes.iter().any(|n| n.id == id && n.role == "active")
            })
            .await
            .expect("active")
    }
}

/// One HTTP request on a new connection: `(status, body)`.
async fn get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let r = request(&addr.to_string(), Method::GET, path, None, Duration::from_secs(3))
        .await
        .ok()?;
    Some((r.status, r.body))
}

/// A client keeping one TCP connection open and sending HTTP/1.1 requests on it.
struct KeepAlive {
    reader: BufReader<TcpStream>,
}

impl KeepAlive {
    async fn open(addr: SocketAddr) -> KeepAlive {
        let s = TcpStream::connect(addr).await.expect("connect");
        KeepAlive {
            reader: BufReader::new(s),
        }
    }

    /// `GET path`; the body, or None if the connection is closed.
    async fn get(&mut self, path: &str) -> Option<String> {
        let req = format!("GET {path} HTTP/1.1\r\nHost: proxy\r\n\r\n");
        self.reader.get_mut().write_all(req.as_bytes()).await.ok()?;
        let mut len = 0usize;
        let mut line = String::new();
        let mut first = true;
        loop {
            line.clear();
            if self.reader.read_line(&mut line).await.ok()? == 0 {
                return None;
            }
            if first && !line.starts_with("HTTP/1.1") {
                return None;
            }
            first = false;
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((k, v)) = l.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    len = v.trim().parse().ok()?;
                }
            }
        }
        let mut body = vec![0u8; len];
        self.reader.read_exact(&mut body).await.ok()?;
        Some(String::from_utf8_lossy(&body).into_owned())
    }

    /// Waits until the proxy closes the connection; how long that took.
    async fn wait_closed(&mut self, timeout: Duration) -> Option<Duration> {
        let start = Instant::now();
        let mut buf = [0u8; 256];
        loop {
            match tokio::time::timeout_at((start + timeout).into(), self.reader.get_mut().read(&mut buf))
                .await
            {
                Err(_) => return None,
                Ok(Ok(0)) | Ok(Err(_)) => return Some(start.elapsed()),
                Ok(Ok(_)) => continue,
            }
        }
    }
}

/// A Redis command in RESP over a new connection; the first reply line (bulk: its value).
async fn redis(addr: SocketAddr, args: &[&str]) -> Result<String, String> {
    let mut s = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let mut cmd = format!("*{}\r\n", args.len());
    for a in args {
        cmd.push_str(&format!("${}\r\n{a}\r\n", a.len()));
    }
    s.write_all(cmd.as_bytes()).await.map_err(|e| e.to_string())?;
    let mut r = BufReader::new(s);
    let mut line = String::new();
    tokio::time::timeout(Duration::from_secs(5), r.read_line(&mut line))
        .await
        .map_err(|_| "timeout".to_string())?
        .map_err(|e| e.to_string())?;
    if let Some(len) = line.strip_prefix('$') {
        let len: i64 = len.trim().parse().map_err(|_| line.clone())?;
        if len < 0 {
            return Ok("(nil)".into());
        }
        let mut v = String::new();
        r.read_line(&mut v).await.map_err(|e| e.to_string())?;
        return Ok(v.trim_end().to_string());
    }
    Ok(line.trim_end().to_string())
}

/// Retries a Redis command for up to `timeout` (a failover is in progress).
async fn redis_retry(addr: SocketAddr, args: &[&str], expect: &str, timeout: Duration) -> Duration {
    let start = Instant::now();
    loop {
        let r = redis(addr, args).await;
        if r.as_deref() == Ok(expect) {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < timeout,
            "{args:?} through the store floating address: {r:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

const FAILOVER_LISTENERS: &str = r#"
[[proxy.listener]]
name = "tcp"
listen = "127.0.0.1:0"
drain-timeout = "3s"
queue-timeout = "3s"
[[proxy.listener]]
name = "http"
listen = "127.0.0.1:0"
protocol = "http"
queue-timeout = "3s"
[[proxy.listener]]
name = "store"
listen = "127.0.0.1:0"
target = "store"
queue-timeout = "3s"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_the_active_fails_over_through_the_floating_address() {
    let _g = SERIAL.lock().await;
    let mut f = Fixture::start().await;
    let s = f.status().await;
    let old = s.active.clone().expect("active");
    let proxy = ProxyProc::start(f.dir.path(), &f.cluster, FAILOVER_LISTENERS);
    proxy.wait_following(&old, Duration::from_secs(10)).await;
    let (tcp, http, store) = (
        proxy.addr("tcp").await,
        proxy.addr("http").await,
        proxy.addr("store").await,
    );

    // The epoch reaches the backend, with the client's address.
    let (code, echo) = get(http, "/echo").await.expect("echo through the proxy");
    assert_eq!(code, 200, "{echo}");
    assert!(
        echo.contains(&format!("x-standin-epoch: {}\n", s.epoch)),
        "{echo}"
    );
    assert!(echo.contains("x-forwarded-for: 127.0.0.1\n"), "{echo}");

    // The store's floating address.
    assert_eq!(redis(store, &["SET", "before", "1"]).await.as_deref(), Ok("+OK"));
    assert_eq!(redis(store, &["GET", "before"]).await.as_deref(), Ok("1"));

    // A continuous request loop (a new connection per request) on both service listeners.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let run = |addr: SocketAddr| {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut log: Vec<(Instant, Option<(String, u64)>)> = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let r = get(addr, "/").await.and_then(|(_, body)| parse_active(&body));
                log.push((Instant::now(), r));
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            log
        })
    };
    let (tcp_loop, http_loop) = (run(tcp), run(http));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let killed_at = Instant::now();
    f.cluster.kill(&old).await.expect("kill -9");
    let after = f
        .cluster
        .wait_for(Duration::from_secs(15), "a new active node", |st| {
            st.epoch > s.epoch
                && st.active.as_deref().is_some_and(|a| a != old)
                && st
                    .nodes
                    .iter()
                    .any(|n| Some(&n.id) == st.active.as_ref() && n.role == "active")
        })
        .await
        .expect("failover");
    let new = after.active.clone().expect("new active");
    // Let the loops see the new node for a while.
    tokio::time::sleep(Duration::from_millis(700)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for (name, handle) in [("tcp", tcp_loop), ("http", http_loop)] {
        let log = handle.await.expect("loop");
        let last_old = log
            .iter()
            .rev()
            .find(|(t, r)| *t < killed_at && r.is_some())
            .map(|(t, _)| *t)
            .expect("answers before the kill");
        let first_new = log
            .iter()
            .find(|(t, r)| *t > killed_at && r.as_ref().is_some_and(|(n, e)| n == &new && *e == after.epoch))
            .map(|(t, _)| *t)
            .unwrap_or_else(|| panic!("{name}: no answer from the new active {new}"));
        // Once the new node answered, the old one never does again, and epochs never go back.
        let mut max_epoch = 0;
        for (t, r) in &log {
            if let Some((n, e)) = r {
                assert!(
                    *e >= max_epoch,
                    "{name}: epoch went back to {e} after {max_epoch}"
                );
                max_epoch = *e;
                if *t > first_new {
                    assert_eq!(n, &new, "{name}: the old node answered after it was replaced");
                }
            }
        }
        let failed_after = log.iter().filter(|(t, r)| *t > first_new && r.is_none()).count();
        assert_eq!(
            failed_after, 0,
            "{name}: requests failed after the new node answered"
        );
        println!(
            "{name}: gap {} ms from the last answer of {old} to the first of {new} (epoch {} -> {}), {} requests",
            first_new.duration_since(last_old).as_millis(),
            s.epoch,
            after.epoch,
            log.len()
        );
    }

    // The store through its floating address, after the failover: the old key survived.
    let took = redis_retry(store, &["GET", "before"], "1", Duration::from_secs(10)).await;
    assert_eq!(redis(store, &["SET", "after", "2"]).await.as_deref(), Ok("+OK"));
    assert_eq!(redis(store, &["GET", "after"]).await.as_deref(), Ok("2"));
    println!(
        "store: answered through the floating address {} ms after the new active was seen",
        took.as_millis()
    );
    let l = proxy.listener("http").await;
    assert_eq!(l.active.as_deref(), Some(new.as_str()));
    assert_eq!(l.epoch, after.epoch);
    // The proxy's Prometheus metrics count the same traffic.
    let m = scrape(&proxy.admin.to_string()).await;
    let value = |name: &str, labels: &[(&str, &str)]| -> f64 {
        sample(&m, name, labels).unwrap_or_else(|| panic!("no {name} {labels:?} in {m:?}"))
    };
    assert!(value("standin_proxy_connections_total", &[("listener", "tcp")]) >= 100.0);
    assert!(value("standin_proxy_requests_total", &[("listener", "http")]) >= 100.0);
    assert_eq!(value("standin_proxy_cluster_epoch", &[]), after.epoch as f64);
    assert_eq!(
        value(
            "standin_proxy_backend_up",
            &[("listener", "http"), ("node", new.as_str())]
        ),
        1.0
    );
    drop(proxy);
    let _ = &mut f;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn planned_switchover_drains_old_connections_and_listeners_change_at_runtime() {
    let _g = SERIAL.lock().await;
    let f = Fixture::start().await;
    let s = f.status().await;
    let old = s.active.clone().expect("active");
    let target = if old == "a" { "b" } else { "a" };
    let proxy = ProxyProc::start(f.dir.path(), &f.cluster, FAILOVER_LISTENERS);
    proxy.wait_following(&old, Duration::from_secs(10)).await;
    let tcp = proxy.addr("tcp").await;

    // Runtime change: move the listener to another port with an established connection.
    let mut long = KeepAlive::open(tcp).await;
    let body = long.get("/").await.expect("answer");
    assert_eq!(parse_active(&body).map(|a| a.0), Some(old.clone()), "{body}");
    let new_listen = free_addr();
    let (code, reply) = proxy
        .put(
            "tcp",
            serde_json::json!({"listen": new_listen.to_string(), "drain-timeout": "2s", "queue-timeout": "3s"}),
        )
        .await;
    assert_eq!(code, 200, "{reply}");
    assert_eq!(proxy.addr("tcp").await, new_listen);
    let body = long
        .get("/")
        .await
        .expect("the established connection survives the change");
    assert!(body.contains(&format!("node={old}")), "{body}");
    let (code, _) = get(new_listen, "/").await.expect("the new address serves");
    assert_eq!(code, 200);
    assert!(
        TcpStream::connect(tcp).await.is_err(),
        "the old address is closed"
    );
    // A bad change is refused, naming the key; nothing changes.
    let (code, reply) = proxy
        .put(
            "tcp",
            serde_json::json!({"listen": new_listen.to_string(), "queue-timeout": "0s"}),
        )
        .await;
    assert_eq!(code, 400, "{reply}");
    assert!(reply.contains("queue-timeout"), "{reply}");
    // A backend that does not answer in `request-timeout` gets the client a 504 at that time;
    // the next request is served.
    let http = proxy.addr("http").await;
    let (code, reply) = proxy
        .put(
            "http",
            serde_json::json!({"listen": http.to_string(), "protocol": "http", "request-timeout": "300ms"}),
        )
        .await;
    assert_eq!(code, 200, "{reply}");
    let asked = Instant::now();
    let (code, body) = get(http, "/delay/5000").await.expect("an answer from the proxy");
    let took = asked.elapsed();
    assert_eq!(code, 504, "{body}");
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_secs(3),
        "504 after {took:?}"
    );
    println!(
        "slow backend: 504 after {} ms (request-timeout 300ms)",
        took.as_millis()
    );
    let (code, body) = get(http, "/delay/10").await.expect("answer");
    assert_eq!(code, 200, "a quick answer within the timeout: {body}");
    // Deleting a listener keeps its open connections.
    let mut on_deleted = KeepAlive::open(http).await;
    assert!(on_deleted.get("/").await.is_some());
    let r = request(
        &proxy.admin.to_string(),
        Method::DELETE,
        "/v1/proxy/listeners/http",
        None,
        Duration::from_secs(2),
    )
    .await
    .expect("DELETE");
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(
        on_deleted.get("/").await.is_some(),
        "open connection survives DELETE"
    );
    assert!(TcpStream::connect(http).await.is_err(), "deleted listener closed");

    // Planned switchover: the long-lived connection to the old node stays usable for the
    // drain timeout while new connections go to the new node; then it is closed. A 503 with
    // `"retry":true` (leadership moving, e.g. to the active node soon after the start) is
    // retried, as a client of the API should.
    let mut attempts = 0;
    let r = loop {
        let r = request(
            &f.api(),
            Method::POST,
            "/v1/switchover",
            Some(serde_json::json!({"to": target}).to_string()),
            Duration::from_secs(5),
        )
        .await
        .expect("switchover");
        attempts += 1;
        if r.status != 503 || attempts >= 50 {
            break r;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(r.status, 200, "{}", r.body);
    f.wait_active(target, Duration::from_secs(15)).await;
    proxy.wait_following(target, Duration::from_secs(5)).await;
    let switched = Instant::now();
    let (code, body) = get(new_listen, "/").await.expect("new connection");
    assert_eq!(
        (code, parse_active(&body).map(|a| a.0)),
        (200, Some(target.to_string())),
        "{body}"
    );
    let body = long
        .get("/")
        .await
        .expect("old connection still usable while draining");
    assert!(body.contains(&format!("node={old}")), "{body}");
    let closed = long
        .wait_closed(Duration::from_secs(6))
        .await
        .expect("the drained connection is closed after the drain timeout");
    let total = switched.elapsed();
    println!(
        "drained connection closed {} ms after the proxy followed the switchover (drain-timeout 2s)",
        total.as_millis()
    );
    assert!(
        closed + Duration::from_millis(300) > Duration::from_millis(1000),
        "closed too early: {closed:?}"
    );
    assert!(total < Duration::from_secs(4), "closed too late: {total:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn balance_mode_spreads_ejects_a_dead_backend_and_honours_drain() {
    let _g = SERIAL.lock().await;
    let f = Fixture::start().await;
    let proxy = ProxyProc::start(
        f.dir.path(),
        &f.cluster,
        r#"
[[proxy.listener]]
name = "lb"
listen = "127.0.0.1:0"
protocol = "http"
mode = "balance"
retries = 1
[proxy.listener.health]
interval = "100ms"
timeout = "200ms"
rise = 2
fall = 1
path = "/health"
[proxy.listener.outlier]
consecutive-failures = 1
base-ejection = "2s"
max-ejection = "10s"
[[proxy.listener]]
name = "lbtcp"
listen = "127.0.0.1:0"
mode = "balance"
balance = "least-conn"
"#,
    );
    proxy.wait_following("-", Duration::from_secs(10)).await;
    let lb = proxy.addr("lb").await;
    let lbtcp = proxy.addr("lbtcp").await;
    let count = |bodies: &[String], node: &str| {
        bodies
            .iter()
            .filter(|b| b.starts_with(&format!("node={node} ")))
            .count()
    };
    let mut bodies = Vec::new();
    for _ in 0..100 {
        let (code, body) = get(lb, "/echo").await.expect("answer");
        assert_eq!(code, 200, "{body}");
        bodies.push(body);
    }
    let (a, b) = (count(&bodies, "a"), count(&bodies, "b"));
    println!("round robin over 100 requests: a {a}, b {b}");
    assert_eq!(a + b, 100);
    assert!((40..=60).contains(&a), "uneven: a {a}, b {b}");
    let mut tcp_bodies = Vec::new();
    for _ in 0..40 {
        tcp_bodies.push(get(lbtcp, "/echo").await.expect("answer").1);
    }
    let (a, b) = (count(&tcp_bodies, "a"), count(&tcp_bodies, "b"));
    println!("least-conn (tcp) over 40 connections: a {a}, b {b}");
    assert!(
        a >= 10 && b >= 10,
        "least-conn with equal load spreads: a {a}, b {b}"
    );

    // Kill b's service: requests keep succeeding (retried on a), b is taken out.
    let service = f
        .cluster
        .lease("b")
        .await
        .and_then(|l| l.service_pid)
        .expect("b's service");
    killpg(Pid::from_raw(service as i32), Signal::SIGKILL).expect("kill b's service");
    let killed = Instant::now();
    let mut failed = 0;
    for _ in 0..50 {
        match get(lb, "/echo").await {
            Some((200, _)) => {}
            other => {
                failed += 1;
                println!("failed: {other:?}");
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // A request that reached b just as it died (accepted, then reset) is not replayed: a
    // request that reached a backend may have been processed. Every later one succeeds.
    assert!(failed <= 1, "{failed} requests failed while b's service was down");
    let l = proxy.listener("lb").await;
    let ub = l.upstreams.iter().find(|u| u.node == "b").expect("b");
    // The daemon may restart the service before a request or check reaches it: report what
    // the proxy saw rather than require it.
    println!(
        "b while its service was down: failures {}, retries {}, check ok {}, cluster ok {}, ejected {:?}",
        ub.failures, l.retries, ub.check_ok, ub.cluster_ok, ub.ejected_ms
    );
    // b's service is restarted by its daemon: it gets requests again.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, body) = get(lb, "/echo").await.expect("answer");
        if body.starts_with("node=b ") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "b never came back: {:?}",
            proxy.listener("lb").await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!(
        "b back in rotation {} ms after its service was killed",
        killed.elapsed().as_millis()
    );

    // Drain b: no new requests reach it; then back.
    let out = Command::new(binary())
        .args(["drain", "b", "--api", &f.api()])
        .output()
        .expect("standin drain");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let deadline = Instant::now() + Duration::from_secs(5);
    while proxy
        .listener("lb")
        .await
        .upstreams
        .iter()
        .any(|u| u.node == "b" && u.cluster_ok)
    {
        assert!(Instant::now() < deadline, "the proxy did not see the drain");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for _ in 0..30 {
        let (code, body) = get(lb, "/echo").await.expect("answer");
        assert_eq!(code, 200);
        assert!(
            body.starts_with("node=a "),
            "a drained node got a request: {body}"
        );
    }
    let out = Command::new(binary())
        .args(["drain", "b", "--off", "--api", &f.api()])
        .output()
        .expect("standin drain --off");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, body) = get(lb, "/echo").await.expect("answer");
        if body.starts_with("node=b ") {
            break;
        }
        assert!(Instant::now() < deadline, "b never came back after drain --off");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A proxy run in this process with no reachable cluster (so no backend: requests that get
/// through get a 503 after the queue timeout), one HTTP listener and the control API, both
/// on port 0. Stopped when the guard drops.
async fn lone_proxy(header_read_timeout: &str) -> (SocketAddr, SocketAddr, tokio_util::sync::DropGuard) {
    use standin::address::proxy::{self, config::ProxyConfig};
    let dead = free_addr();
    let text = format!(
        "[proxy]\ncluster = [\"{dead}\"]\nadmin = \"127.0.0.1:0\"\n\
         [[proxy.listener]]\nname = \"web\"\nlisten = \"127.0.0.1:0\"\nprotocol = \"http\"\n\
         queue-timeout = \"50ms\"\nheader-read-timeout = \"{header_read_timeout}\"\n"
    );
    let cfg = ProxyConfig::parse(&text).expect("valid proxy config");
    let bound = proxy::Bound::bind(&cfg).await.expect("bind");
    let web = bound.listeners[0].local_addr().expect("addr");
    let admin = bound.admin.as_ref().expect("admin").local_addr().expect("addr");
    let cancel = tokio_util::sync::CancellationToken::new();
    tokio::spawn(proxy::run(cfg, bound, cancel.clone()));
    (web, admin, cancel.drop_guard())
}

/// Sends `raw` (then half-closes if `eof`: hyper then ends the connection as soon as it
/// answered or failed to parse) and reads until the proxy closes (bounded).
async fn raw_exchange(addr: SocketAddr, raw: &[u8], eof: bool) -> String {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let _ = s.write_all(raw).await;
    if eof {
        let _ = s.shutdown().await;
    }
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// Issue 12, finding 6: a client that sends a partial request head to an HTTP listener is
/// disconnected after the listener's header-read timeout (it held the connection forever),
/// an oversized head gets a 431, and an idle keep-alive connection is closed after the same
/// timeout. The listener keeps serving others throughout.
#[tokio::test]
async fn http_listener_cuts_off_slow_and_oversized_request_heads() {
    let (web, admin, _stop) = lone_proxy("300ms").await;
    // Slowloris.
    assert_slow_head_cut_off(web, b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: a").await;
    // A head larger than the limit.
    let big = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(standin::address::proxy::http::MAX_HEAD + 1)
    );
    let answer = raw_exchange(web, big.as_bytes(), false).await;
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer:?}");
    // Idle keep-alive: one answer, then the connection is closed after the timeout.
    let mut ka = TcpStream::connect(web).await.expect("connect");
    ka.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    let mut got = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(20), ka.read_to_end(&mut got)).await;
    assert!(closed.is_ok(), "an idle keep-alive connection stayed open");
    assert!(
        String::from_utf8_lossy(&got).starts_with("HTTP/1.1 503"),
        "{got:?}"
    );
    // The control API answers JSON errors (unknown path, bad method, bad body).
    let api = admin.to_string();
    let r = request(&api, Method::GET, "/v1/nowhere", None, Duration::from_secs(5))
        .await
        .expect("control API");
    assert_eq!(r.status, 404);
    let e: serde_json::Value = serde_json::from_str(&r.body).expect("JSON 404");
    assert_eq!(e["retry"], false, "{}", r.body);
    let r = request(
        &api,
        Method::PUT,
        "/v1/proxy/listeners/x",
        Some("{bad".into()),
        Duration::from_secs(5),
    )
    .await
    .expect("control API");
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(
        serde_json::from_str::<serde_json::Value>(&r.body).is_ok(),
        "{}",
        r.body
    );
}

/// Issue 12, fuzz-style: arbitrary and mutated request heads into an HTTP listener. Each gets
/// an HTTP answer or a close, never a crash, and the listener still answers a valid request
/// afterwards. Bounded: 150 inputs from a fixed seed.
#[tokio::test]
async fn http_listener_survives_arbitrary_request_heads() {
    use proptest::strategy::{Strategy, ValueTree};
    use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
    let (web, _admin, _stop) = lone_proxy("300ms").await;
    let valid = b"GET /path?q=1 HTTP/1.1\r\nHost: example\r\nContent-Length: 3\r\nX-Forwarded-For: 10.0.0.1\r\n\r\nabc".to_vec();
    let strategy = proptest::prop_oneof![
        proptest::collection::vec(proptest::prelude::any::<u8>(), 0..600),
        (
            proptest::prelude::any::<usize>(),
            proptest::prelude::any::<u8>(),
            0usize..3
        )
            .prop_map(move |(at, b, how)| {
                let mut v = valid.clone();
                let at = at % (v.len() + 1);
                match how {
                    0 => v.insert(at, b),
                    1 if at < v.len() => v[at] = b,
                    _ => v.truncate(at),
                }
                v
            }),
    ];
    let mut runner = TestRunner::new_with_rng(
        Config::default(),
        TestRng::from_seed(RngAlgorithm::ChaCha, &[7; 32]),
    );
    for _ in 0..150 {
        let input = strategy.new_tree(&mut runner).expect("input").current();
        let answer = raw_exchange(web, &input, true).await;
        assert!(
            answer.is_empty() || answer.starts_with("HTTP/1."),
            "{input:?} -> {answer:?}"
        );
    }
    let answer = raw_exchange(
        web,
        b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        false,
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer:?}");
}

/// Issue 13: the proxy's control API had no authentication: anyone could delete listeners or
/// rebind them to `0.0.0.0` or port 80. Now mutations need `[proxy] token` (401 without it,
/// nothing changes), a listener may be bound only to an unprivileged loopback address or one
/// `allow-bind` lists (403 otherwise), a foreign origin's mutation is a 403 and a non-JSON
/// body a 415; reads stay open.
#[tokio::test]
async fn the_control_api_refuses_unauthenticated_mutations_and_disallowed_binds() {
    use standin::address::proxy::{self, config::ProxyConfig};
    use standin::api::client::{request_with, Access};
    let token = "proxy-token-0123456789";
    let dead = free_addr();
    let text = format!(
        "[proxy]\ncluster = [\"{dead}\"]\nadmin = \"127.0.0.1:0\"\ntoken = \"{token}\"\n\
         allow-bind = [\"0.0.0.0:80\"]\n\
         [[proxy.listener]]\nname = \"web\"\nlisten = \"127.0.0.1:0\"\nprotocol = \"http\"\n"
    );
    let cfg = ProxyConfig::parse(&text).expect("valid proxy config");
    let bound = proxy::Bound::bind(&cfg).await.expect("bind");
    let admin = bound.admin.as_ref().expect("admin").local_addr().expect("addr");
    let cancel = tokio_util::sync::CancellationToken::new();
    let _stop = cancel.clone().drop_guard();
    tokio::spawn(proxy::run(cfg, bound, cancel));
    let api = admin.to_string();
    let with = Access {
        token: Some(token.into()),
        tls: None,
    };
    let without = Access::default();
    let call = |method: Method, path: &str, body: Option<serde_json::Value>, access: &Access| {
        let (api, path, access) = (api.clone(), path.to_string(), access.clone());
        async move {
            request_with(
                &api,
                method,
                &path,
                body.map(|b| b.to_string()),
                Duration::from_secs(5),
                &access,
            )
            .await
            .expect("the control API answers")
        }
    };
    let listeners = |s: &str| -> Vec<String> {
        let st: ProxyStatus = serde_json::from_str(s).expect("status JSON");
        st.listeners.into_iter().map(|l| l.name).collect()
    };
    let loopback = serde_json::json!({"listen": "127.0.0.1:0"});

    // Reads are open; mutations without the token (or with a wrong one) change nothing.
    let r = call(Method::GET, "/v1/proxy", None, &without).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(listeners(&r.body), ["web"]);
    let r = call(Method::DELETE, "/v1/proxy/listeners/web", None, &without).await;
    assert_eq!(r.status, 401, "{}", r.body);
    let r = call(
        Method::PUT,
        "/v1/proxy/listeners/new",
        Some(loopback.clone()),
        &without,
    )
    .await;
    assert_eq!(r.status, 401, "{}", r.body);
    let wrong = Access {
        token: Some("wrong-token-0123456789".into()),
        tls: None,
    };
    let r = call(Method::DELETE, "/v1/proxy/listeners/web", None, &wrong).await;
    assert_eq!(r.status, 401, "{}", r.body);
    let r = call(Method::GET, "/v1/proxy", None, &without).await;
    assert_eq!(listeners(&r.body), ["web"]);

    // With the token: binds beyond unprivileged loopback ones are refused unless listed.
    for listen in ["0.0.0.0:0", "0.0.0.0:8080", "127.0.0.1:80", "0.0.0.0:81"] {
        let r = call(
            Method::PUT,
            "/v1/proxy/listeners/web",
            Some(serde_json::json!({"listen": listen, "protocol": "http"})),
            &with,
        )
        .await;
        assert_eq!(r.status, 403, "{listen}: {}", r.body);
        assert!(r.body.contains("allow-bind"), "{}", r.body);
    }
    // Browser rules: a foreign origin may not act; a body must be JSON.
    let raw = |head: String, body: &str| {
        let req = format!(
            "{head}\r\nHost: {admin}\r\nAuthorization: Bearer {token}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        async move { raw_exchange(admin, req.as_bytes(), false).await }
    };
    let r = raw(
        "PUT /v1/proxy/listeners/x HTTP/1.1\r\nContent-Type: application/json\r\nOrigin: http://evil.example"
            .into(),
        r#"{"listen":"127.0.0.1:0"}"#,
    )
    .await;
    assert!(r.starts_with("HTTP/1.1 403"), "{r}");
    let r = raw(
        "PUT /v1/proxy/listeners/x HTTP/1.1\r\nContent-Type: text/plain".into(),
        r#"{"listen":"127.0.0.1:0"}"#,
    )
    .await;
    assert!(r.starts_with("HTTP/1.1 415"), "{r}");
    let r = call(Method::GET, "/v1/proxy", None, &without).await;
    assert_eq!(listeners(&r.body), ["web"]);
    // Allowed: an unprivileged loopback address, and deleting, with the token.
    let r = call(Method::PUT, "/v1/proxy/listeners/new", Some(loopback), &with).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let r = call(Method::DELETE, "/v1/proxy/listeners/web", None, &with).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let r = call(Method::GET, "/v1/proxy", None, &without).await;
    assert_eq!(listeners(&r.body), ["new"]);
}

/// Issue 13: the proxy sent no token, so it could not follow a cluster with
/// `[api] read-open = false`, and it spoke only plain HTTP. Now, against nodes with
/// `[api] tls = true`, a token and `read-open = false`: a proxy without `api-token` is
/// refused (401, shown as its last error, nothing followed); with `api-token` and `api-ca` it
/// follows the cluster over HTTPS and forwards to the active node.
#[tokio::test]
async fn the_proxy_follows_a_cluster_with_a_token_and_https() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let certs = dir.path().join("api-certs");
    let ca = standin::tls::init_ca(&certs.join("ca"), "test", Duration::from_secs(3600)).expect("CA");
    let cert = standin::tls::issue_files(
        &certs.join("ca"),
        &certs,
        "a",
        &["127.0.0.1".to_string()],
        Duration::from_secs(3600),
    )
    .expect("certificate");
    let token = "cluster-token-0123456789";
    let mut spec = Spec::new(dir.path(), &binary());
    spec.store = false;
    // The demo service asks its daemon's API over plain HTTP; this one needs no lease.
    spec.service = standin::lab::harness::ServiceKind::BenchBackend;
    spec.extra_toml = format!(
        "\n[api]\ntoken = \"{token}\"\nread-open = false\ntls = true\ntls-cert = \"{}\"\ntls-key = \"{}\"\n",
        cert.cert.display(),
        cert.key.display()
    );
    let mut cluster = LocalCluster::create(spec).await.expect("create");
    cluster.start_all().expect("start");
    let access = standin::api::client::Access::new(Some(token.into()), Some(&ca.cert)).expect("access");
    let api = cluster.nodes[0].admin.to_string();
    let status = || {
        let (api, access) = (api.clone(), access.clone());
        async move { common::status_with(&api, &access).await }
    };
    let ready = standin::lab::harness::wait_status(
        status,
        Duration::from_secs(30),
        "the cluster ready",
        standin::lab::harness::is_ready,
    )
    .await
    .expect("ready");
    let active = ready.active.clone().expect("active");
    let listener = "[[proxy.listener]]\nname = \"svc\"\nlisten = \"127.0.0.1:0\"\nprotocol = \"http\"\n";

    // Without the token: refused, and the proxy says why.
    let plain = dir.path().join("no-token");
    std::fs::create_dir_all(&plain).expect("mkdir");
    let refused = ProxyProc::start(
        &plain,
        &cluster,
        &format!("api-ca = \"{}\"\n{listener}", ca.cert.display()),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let last = loop {
        let s = refused.status().await;
        if let Some(e) = s.as_ref().and_then(|s| s.cluster.last_error.clone()) {
            break (e, s);
        }
        assert!(Instant::now() < deadline, "no error reported: {s:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(last.0.contains("401"), "{last:?}");
    let s = last.1.expect("status");
    assert!(!s.cluster.connected && s.cluster.epoch.is_none(), "{s:?}");
    drop(refused);

    // With the token and the CA: follows over HTTPS and forwards.
    let good = dir.path().join("token");
    std::fs::create_dir_all(&good).expect("mkdir");
    let proxy = ProxyProc::start(
        &good,
        &cluster,
        &format!(
            "api-token = \"{token}\"\napi-ca = \"{}\"\n{listener}",
            ca.cert.display()
        ),
    );
    proxy.wait_following(&active, Duration::from_secs(15)).await;
    let svc = proxy.addr("svc").await;
    let (code, _) = get(svc, "/").await.expect("an answer through the proxy");
    assert_eq!(code, 200);
    drop(proxy);
    drop(cluster);
}
