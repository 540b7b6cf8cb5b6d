//! Hot restart of node daemons (`standin restart`, SIGUSR2): the program is replaced in place
//! while the service keeps running and clients keep being served. Real processes on loopback,
//! the daemons running from a copy of the binary that the tests replace.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use standin::lab::harness::{probe_service, LocalCluster, Spec};
use standin::node::shared::DaemonInfo;
use standin::status::Status;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

mod common;
use common::binary;

/// Tests here start clusters of their own; one at a time keeps the 2-core machine honest.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A copy of the standin binary in `dir`, which a test may replace.
fn own_binary(dir: &Path) -> PathBuf {
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).expect("bin dir");
    let path = bin.join("standin");
    std::fs::copy(binary(), &path).expect("copy binary");
    path
}

/// Replaces `path` atomically with `content` (what a package manager does: a new inode).
fn replace(path: &Path, content: &[u8]) {
    use std::os::unix::fs::PermissionsExt;
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, content).expect("write");
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    std::fs::rename(&tmp, path).expect("rename");
}

async fn daemon(admin: SocketAddr) -> DaemonInfo {
    let r = standin::api::client::request(
        &admin.to_string(),
        hyper::Method::GET,
        "/v1/daemon",
        None,
        Duration::from_secs(2),
    )
    .await
    .expect("GET /v1/daemon");
    serde_json::from_str(&r.body).expect("daemon json")
}

/// The pid of the supervised service, from the node's process check ("running (pid N)").
fn service_pid(s: &Status, node: &str) -> Option<u32> {
    let n = s.nodes.iter().find(|n| n.id == node)?;
    let c = n.checks.iter().find(|c| c.name == "process")?;
    c.detail.split("pid ").nth(1)?.trim_end_matches(')').parse().ok()
}

/// What the clients saw while a test ran.
#[derive(Default)]
struct Seen {
    service_ok: AtomicU64,
    service_failed: AtomicU64,
    /// Epochs other than the first one seen.
    other_epoch: AtomicU64,
    writes_ok: AtomicU64,
    /// Writes that failed even after one reconnect (a redis client's retry on a closed
    /// connection).
    writes_failed: AtomicU64,
    /// Writes that needed that reconnect.
    reconnects: AtomicU64,
    /// The longest time between two successful service answers (ms).
    max_gap_ms: AtomicU64,
}

/// Probes the demo service every 10 ms and writes to the store (SET, one connection that is
/// reconnected once if the server closed it) until `stop`.
fn start_clients(
    service: SocketAddr,
    store: SocketAddr,
    epoch: u64,
    seen: Arc<Seen>,
    stop: Arc<AtomicBool>,
) -> (tokio::task::JoinHandle<()>, tokio::task::JoinHandle<Vec<u64>>) {
    let probe = {
        let (seen, stop) = (seen.clone(), stop.clone());
        tokio::spawn(async move {
            let mut last_ok = Instant::now();
            while !stop.load(Ordering::SeqCst) {
                match probe_service(service, Duration::from_millis(500)).await {
                    Some((_, e)) => {
                        if e != epoch {
                            seen.other_epoch.fetch_add(1, Ordering::SeqCst);
                        }
                        seen.service_ok.fetch_add(1, Ordering::SeqCst);
                        let gap = last_ok.elapsed().as_millis() as u64;
                        seen.max_gap_ms.fetch_max(gap, Ordering::SeqCst);
                        last_ok = Instant::now();
                    }
                    None => {
                        seen.service_failed.fetch_add(1, Ordering::SeqCst);
                    }
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    let writer = tokio::spawn(async move {
        let mut acked = Vec::new();
        let mut conn: Option<(
            BufReader<tokio::net::tcp::OwnedReadHalf>,
            tokio::net::tcp::OwnedWriteHalf,
        )> = None;
        let mut i = 0u64;
        while !stop.load(Ordering::SeqCst) {
            i += 1;
            let key = format!("hr:{i}");
            let req = format!(
                "*3\r\n$3\r\nSET\r\n${}\r\n{key}\r\n${}\r\n{i}\r\n",
                key.len(),
                i.to_string().len()
            );
            let mut done = false;
            for attempt in 0..2 {
                if conn.is_none() {
                    match tokio::net::TcpStream::connect(store).await {
                        Ok(s) => {
                            let (r, w) = s.into_split();
                            conn = Some((BufReader::new(r), w));
                        }
                        Err(_) => continue,
                    }
                }
                let Some((r, w)) = conn.as_mut() else { continue };
                let mut line = String::new();
                let ok = w.write_all(req.as_bytes()).await.is_ok()
                    && tokio::time::timeout(Duration::from_secs(3), r.read_line(&mut line))
                        .await
                        .is_ok_and(|n| n.is_ok_and(|n| n > 0));
                if ok && line.starts_with("+OK") {
                    done = true;
                    if attempt > 0 {
                        seen.reconnects.fetch_add(1, Ordering::SeqCst);
                    }
                    break;
                }
                conn = None;
            }
            if done {
                seen.writes_ok.fetch_add(1, Ordering::SeqCst);
                acked.push(i);
            } else {
                seen.writes_failed.fetch_add(1, Ordering::SeqCst);
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        acked
    });
    (probe, writer)
}

async fn get(store: SocketAddr, key: &str) -> Option<String> {
    let mut s = tokio::net::TcpStream::connect(store).await.ok()?;
    let req = format!("*2\r\n$3\r\nGET\r\n${}\r\n{key}\r\n", key.len());
    s.write_all(req.as_bytes()).await.ok()?;
    let mut r = BufReader::new(s);
    let mut head = String::new();
    r.read_line(&mut head).await.ok()?;
    if !head.starts_with('$') || head.starts_with("$-1") {
        return None;
    }
    let mut value = String::new();
    r.read_line(&mut value).await.ok()?;
    Some(value.trim_end().to_string())
}

/// Runs `standin restart` without blocking the test's runtime (the clients keep running).
async fn restart_cmd(bin: &Path, admin: SocketAddr, node: Option<&str>) -> std::process::Output {
    let mut cmd = tokio::process::Command::new(bin);
    cmd.args(["restart", "--api", &admin.to_string(), "--json", "--wait", "20s"]);
    if let Some(n) = node {
        cmd.args(["--node", n]);
    }
    cmd.output().await.expect("run standin restart")
}

/// The active node's daemon is hot-restarted while a client probes its service every 10 ms
/// and another writes to its store: no failed probe, no failed write (one reconnect allowed,
/// as redis clients do on a closed connection), the same epoch, the same service process,
/// the same daemon pid with one more hot restart, every acknowledged write still there, and
/// a `hot-restart` event instead of a failover.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hot_restart_of_the_active_node_keeps_its_service_role_and_store() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let bin = own_binary(dir.path());
    let spec = Spec::new(dir.path(), &bin);
    let (c, s) = LocalCluster::launch(spec).await.expect("cluster ready");
    let active = s.active.clone().expect("an active node");
    let node = c.node(&active).expect("node");
    let (admin, service, store) = (
        node.admin,
        node.service.expect("service"),
        node.store.expect("store"),
    );
    let daemon_pid = node.pid().expect("pid");
    let service_before = service_pid(&s, &active).expect("service pid");
    let before = daemon(admin).await;
    assert_eq!(before.pid, daemon_pid);
    assert_eq!(before.hot_restarts, 0);

    let seen = Arc::new(Seen::default());
    let stop = Arc::new(AtomicBool::new(false));
    let (probe, writer) = start_clients(service, store, s.epoch, seen.clone(), stop.clone());
    tokio::time::sleep(Duration::from_millis(500)).await;

    let started = Instant::now();
    let out = restart_cmd(&bin, admin, Some(&active)).await;
    let took = started.elapsed();
    assert!(
        out.status.success(),
        "standin restart failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    tokio::time::sleep(Duration::from_millis(700)).await;
    stop.store(true, Ordering::SeqCst);
    probe.await.expect("probe");
    let acked = writer.await.expect("writer");

    let after = daemon(admin).await;
    assert_eq!(
        after.pid, daemon_pid,
        "same pid: the program was replaced in place"
    );
    assert_eq!(after.hot_restarts, 1);
    assert!(after.program_started_unix_ms > before.program_started_unix_ms);
    assert_eq!(after.last_restart_failure, None);
    let s2: Status = c.status().await.expect("status");
    assert_eq!(
        s2.active.as_deref(),
        Some(active.as_str()),
        "the same active node"
    );
    assert_eq!(s2.epoch, s.epoch, "no failover, no epoch change");
    assert_eq!(
        service_pid(&s2, &active),
        Some(service_before),
        "the service was not restarted"
    );

    let _ = std::fs::copy(dir.path().join(format!("{active}.log")), "/tmp/hr-active.log");
    let ok = seen.service_ok.load(Ordering::SeqCst);
    let failed = seen.service_failed.load(Ordering::SeqCst);
    let writes = seen.writes_ok.load(Ordering::SeqCst);
    let write_failures = seen.writes_failed.load(Ordering::SeqCst);
    eprintln!(
        "hot restart of the active node: command {took:?}; service probes {ok} ok / {failed} failed, max gap {} ms; \
         store writes {writes} ok / {write_failures} failed ({} needed a reconnect)",
        seen.max_gap_ms.load(Ordering::SeqCst),
        seen.reconnects.load(Ordering::SeqCst)
    );
    assert_eq!(failed, 0, "a service probe failed during the hot restart");
    assert_eq!(
        seen.other_epoch.load(Ordering::SeqCst),
        0,
        "the service answered at another epoch"
    );
    assert_eq!(write_failures, 0, "a store write failed during the hot restart");
    assert!(
        ok > 50 && writes > 50,
        "the clients ran: {ok} probes, {writes} writes"
    );
    for i in acked.iter().step_by(7).chain(acked.last()) {
        assert_eq!(
            get(store, &format!("hr:{i}")).await.as_deref(),
            Some(i.to_string().as_str()),
            "acknowledged write {i} lost"
        );
    }
    let events = c.events(&active).await.expect("events");
    let kinds: Vec<String> = events.iter().map(|e| e.kind.to_string()).collect();
    assert!(
        kinds.iter().any(|k| k == "hot-restart"),
        "no hot-restart event: {kinds:?}"
    );
    assert!(
        !events.iter().any(|e| e.epoch > s.epoch),
        "an event at a later epoch: {kinds:?}"
    );
}

/// A hot restart whose new binary cannot take over changes nothing: a binary that fails its
/// preflight is refused (the old program keeps serving, the command exits 1 saying why); the
/// node then restarts fine once a good binary is back, and `standin restart` goes through every
/// node, the active one last, with no failover — under a store write load (no failed write, no
/// acknowledged write lost) while a sampler asks both data nodes' services every 10 ms and
/// never finds two answering active.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_new_binary_keeps_the_old_program_and_a_rolling_restart_goes_through() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let bin = own_binary(dir.path());
    let spec = Spec::new(dir.path(), &bin);
    let (c, s) = LocalCluster::launch(spec).await.expect("cluster ready");
    let active = s.active.clone().expect("an active node");
    let admin = c.node(&active).expect("node").admin;
    let good = std::fs::read(&bin).expect("read binary");

    replace(&bin, b"#!/bin/sh\necho 'this build is broken' >&2\nexit 3\n");
    let out = restart_cmd(&binary(), admin, Some(&active)).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("this build is broken"),
        "the reason is shown: {stderr}"
    );
    let d = daemon(admin).await;
    assert_eq!(d.hot_restarts, 0);
    assert!(
        d.last_restart_failure
            .as_deref()
            .is_some_and(|f| f.contains("broken")),
        "{d:?}"
    );
    assert!(
        probe_service(c.node(&active).unwrap().service.unwrap(), Duration::from_secs(1))
            .await
            .is_some()
    );

    replace(&bin, &good);
    let node = c.node(&active).expect("node");
    let seen = Arc::new(Seen::default());
    let stop = Arc::new(AtomicBool::new(false));
    let (probe, writer) = start_clients(
        node.service.expect("service"),
        node.store.expect("store"),
        s.epoch,
        seen.clone(),
        stop.clone(),
    );
    let services: Vec<SocketAddr> = c.nodes.iter().filter_map(|n| n.service).collect();
    let two_actives = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut both = 0u32;
            while !stop.load(Ordering::SeqCst) {
                let answers = futures::future::join_all(
                    services
                        .iter()
                        .map(|a| probe_service(*a, Duration::from_millis(300))),
                )
                .await;
                if answers.iter().filter(|a| a.is_some()).count() > 1 {
                    both += 1;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            both
        })
    };
    let out = restart_cmd(&binary(), admin, None).await;
    eprintln!("standin restart: {}", String::from_utf8_lossy(&out.stderr));
    stop.store(true, Ordering::SeqCst);
    probe.await.expect("probe");
    let acked = writer.await.expect("writer");
    assert_eq!(
        two_actives.await.expect("sampler"),
        0,
        "two services answered active at once"
    );
    assert!(
        out.status.success(),
        "rolling restart failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let reports: Vec<standin::cli::client::RestartReport> =
        serde_json::from_slice(&out.stdout).expect("restart --json");
    let order: Vec<&str> = reports.iter().map(|r| r.node.as_str()).collect();
    assert_eq!(order.len(), 3, "{order:?}");
    assert_eq!(order[0], "w", "the witness first: {order:?}");
    assert_eq!(order[2], active, "the active node last: {order:?}");
    for r in &reports {
        assert!(r.ok, "{r:?}");
        assert_eq!(r.hot_restarts, Some(1), "{r:?}");
    }
    let s2: Status = c.status().await.expect("status");
    assert_eq!(s2.active.as_deref(), Some(active.as_str()));
    assert_eq!(s2.epoch, s.epoch, "no failover");
    let store = c.node(&active).and_then(|n| n.store).expect("store");
    eprintln!(
        "rolling hot restart: service probes {} ok / {} failed (max gap {} ms); writes {} ok / {} failed ({} reconnects)",
        seen.service_ok.load(Ordering::SeqCst),
        seen.service_failed.load(Ordering::SeqCst),
        seen.max_gap_ms.load(Ordering::SeqCst),
        seen.writes_ok.load(Ordering::SeqCst),
        seen.writes_failed.load(Ordering::SeqCst),
        seen.reconnects.load(Ordering::SeqCst)
    );
    assert_eq!(
        seen.writes_failed.load(Ordering::SeqCst),
        0,
        "a store write failed"
    );
    assert_eq!(
        seen.service_failed.load(Ordering::SeqCst),
        0,
        "a service probe failed"
    );
    for i in &acked {
        assert_eq!(
            get(store, &format!("hr:{i}")).await.as_deref(),
            Some(i.to_string().as_str()),
            "acknowledged write {i} lost"
        );
    }
}

/// Kills a process by pid when dropped (the proxy that took over is not the test's child).
struct KillOnDrop(Vec<u32>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        for pid in &self.0 {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(*pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

async fn proxy_process(admin: SocketAddr) -> Option<standin::address::proxy::status::ProxyProcess> {
    let r = standin::api::client::request(
        &admin.to_string(),
        hyper::Method::GET,
        "/v1/proxy",
        None,
        Duration::from_secs(1),
    )
    .await
    .ok()?;
    let s: standin::address::proxy::status::ProxyStatus = serde_json::from_str(&r.body).ok()?;
    s.process
}

/// One HTTP/1.1 request on an open connection; the answer's body.
async fn http_on(conn: &mut BufReader<tokio::net::TcpStream>) -> Option<String> {
    use tokio::io::AsyncReadExt;
    conn.get_mut()
        .write_all(b"GET / HTTP/1.1\r\nHost: test\r\n\r\n")
        .await
        .ok()?;
    let mut len = 0usize;
    loop {
        let mut line = String::new();
        if conn.read_line(&mut line).await.ok()? == 0 {
            return None;
        }
        if line == "\r\n" {
            break;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            len = v.trim().parse().ok()?;
        }
    }
    let mut body = vec![0u8; len];
    conn.read_exact(&mut body).await.ok()?;
    Some(String::from_utf8_lossy(&body).into_owned())
}

/// `standin proxy` hot-restarts on SIGUSR2 the way HAProxy reloads: a new process takes the
/// listening sockets and serves; the old one stops accepting, keeps serving the connections it
/// has (a keep-alive connection opened before still gets answers), and exits once they end.
/// A client connecting every 10 ms through the proxy meanwhile sees no failure. Before that, a
/// hot restart with a configuration the new process refuses leaves the old one serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxy_hot_restarts_without_refusing_or_cutting_a_connection() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let bin = own_binary(dir.path());
    let mut spec = Spec::new(dir.path(), &bin);
    spec.store = false;
    let (c, _s) = LocalCluster::launch(spec).await.expect("cluster ready");
    let admin = common::free_addr();
    let listen = common::free_addr();
    let apis: Vec<String> = c.nodes.iter().map(|n| format!("\"{}\"", n.admin)).collect();
    let config = dir.path().join("proxy.toml");
    std::fs::write(
        &config,
        format!(
            "[proxy]\ncluster = [{}]\nadmin = \"{admin}\"\n\n[[proxy.listener]]\nname = \"web\"\nlisten = \"{listen}\"\n\
             target = \"service\"\nmode = \"failover\"\nprotocol = \"tcp\"\n",
            apis.join(", ")
        ),
    )
    .expect("proxy config");
    let log = dir.path().join("proxy.log");
    let mut old = std::process::Command::new(&bin)
        .args(["proxy", "--config"])
        .arg(&config)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log"))
        .spawn()
        .expect("start the proxy");
    let mut guard = KillOnDrop(vec![old.id()]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while probe_service(listen, Duration::from_millis(300)).await.is_none() {
        assert!(
            Instant::now() < deadline,
            "the proxy did not serve: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let before = proxy_process(admin).await.expect("proxy status");
    assert_eq!(before.pid, old.id());

    // A configuration the new process cannot use: it exits, the old one keeps serving.
    let good = std::fs::read_to_string(&config).expect("config");
    std::fs::write(
        &config,
        good.replace("mode = \"failover\"", "mode = \"sideways\""),
    )
    .expect("write");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(old.id() as i32),
        nix::sys::signal::Signal::SIGUSR2,
    )
    .expect("usr2");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("proxy hot restart failed")
    {
        assert!(
            Instant::now() < deadline,
            "no failure logged: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        proxy_process(admin).await.map(|p| p.pid),
        Some(old.id()),
        "the old process still answers"
    );
    assert!(
        probe_service(listen, Duration::from_millis(500)).await.is_some(),
        "and still serves"
    );
    std::fs::write(&config, good).expect("restore");

    // A keep-alive connection through the old process.
    let mut kept = BufReader::new(tokio::net::TcpStream::connect(listen).await.expect("connect"));
    assert!(http_on(&mut kept).await.is_some(), "the kept connection answers");

    let failed = Arc::new(AtomicU64::new(0));
    let ok = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let probe = {
        let (failed, ok, stop) = (failed.clone(), ok.clone(), stop.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                match probe_service(listen, Duration::from_millis(500)).await {
                    Some(_) => ok.fetch_add(1, Ordering::SeqCst),
                    None => failed.fetch_add(1, Ordering::SeqCst),
                };
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(old.id() as i32),
        nix::sys::signal::Signal::SIGUSR2,
    )
    .expect("usr2");
    let deadline = Instant::now() + Duration::from_secs(15);
    let after = loop {
        if let Some(p) = proxy_process(admin).await {
            if p.pid != before.pid {
                break p;
            }
        }
        assert!(
            Instant::now() < deadline,
            "no new proxy process: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    guard.0.push(after.pid);
    assert_eq!(after.hot_restarts, 1);
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The old process still serves the connection it had, then exits once it is closed.
    assert!(
        old.try_wait().expect("try_wait").is_none(),
        "the old process left its connection"
    );
    assert!(
        http_on(&mut kept).await.is_some(),
        "the kept connection still answers after the hand-over"
    );
    drop(kept);
    let deadline = Instant::now() + Duration::from_secs(5);
    let status = loop {
        if let Some(s) = old.try_wait().expect("try_wait") {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "the old proxy process did not exit after its last connection"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(status.success(), "old proxy exit: {status}");
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, Ordering::SeqCst);
    probe.await.expect("probe");
    let (ok, failed) = (ok.load(Ordering::SeqCst), failed.load(Ordering::SeqCst));
    eprintln!("proxy hot restart: {ok} connections ok, {failed} failed");
    assert_eq!(
        failed, 0,
        "a connection through the proxy failed during its hot restart"
    );
    assert!(ok > 20, "the client ran: {ok}");
    drop(guard);
}
