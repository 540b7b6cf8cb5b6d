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
