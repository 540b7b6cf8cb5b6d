//! `standin bench upgrade` (BENCHMARKS.md §5, issue 15): what changing a running node costs
//! its clients. A local cluster (data nodes a and b and a witness, the store on, the demo
//! service) under a steady load — a client probing every data node's service every 10 ms (the
//! answer of the active one counts) and a store writer (one `SET` at a time on one connection,
//! reconnected once when the server closed it, as redis clients do, to the store of the node
//! the probe last saw active) — while the active node is changed again and again:
//!
//! 1. hot restarts of its daemon (`POST /v1/restart`; each waits until `/v1/daemon` shows one
//!    more hot restart and the node is healthy and in sync again);
//! 2. reloads (`POST /v1/reload`, what SIGHUP does), each of a file that changes a setting
//!    that applies live (`[events] retention`, alternating), so every reload applies something;
//! 3. the baseline: a plain stop-and-start of the active node's daemon, as `systemctl restart`
//!    does (SIGTERM, wait for the exit, start again): a switchover each time;
//! 4. HAProxy's own reloads, with the same probe through it in front of the active node's
//!    service: `haproxy -sf OLDPID` (a new process, the old one finishing), and master-worker
//!    mode (`-W`, SIGUSR2 to the master, which is what `systemctl reload haproxy` does).
//!
//! Per phase: operations, requests and failed requests (service, store), the longest gap
//! between two successful answers, and failovers (promotions in the replicated event history;
//! the client's count of active-node changes is in the JSON). Nothing is asserted: the figures are
//! printed (table or `--json`). Everything started is killed and the scratch directory removed
//! when the run ends, fails or is interrupted (guards dropped).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use comfy_table::{presets::UTF8_FULL_CONDENSED, Table};
use hyper::Method;
use nix::sys::signal::Signal;
use serde::Serialize;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio_util::sync::CancellationToken;

use super::{free_ports, print_json, progress, Scratch, Spawned};
use crate::api::client::request;
use crate::lab::harness::{is_ready, probe_service, HarnessError, LocalCluster, Spec};
use crate::node::shared::DaemonInfo;

fn err(m: impl Into<String>) -> HarnessError {
    HarnessError(m.into())
}

/// The client's pause between two probes (and the writer's between two writes is half that).
const PROBE_INTERVAL: Duration = Duration::from_millis(10);
/// How long one probe or one store reply may take before it counts as failed.
const REQUEST_TIMEOUT: Duration = Duration::from_millis(500);
/// Load before the first and after the last operation of a phase.
const SETTLE: Duration = Duration::from_millis(300);
/// The pause between two operations once the previous one is complete.
const BETWEEN: Duration = Duration::from_millis(50);
/// Upper bound on any wait for a node, a process or the cluster.
const WAIT: Duration = Duration::from_secs(30);

/// What `standin bench upgrade` runs.
#[derive(Debug, Clone)]
pub struct UpgradeOptions {
    /// Hot restarts of the active node's daemon.
    pub restarts: usize,
    /// Reloads of the active node, and HAProxy reloads of each kind.
    pub reloads: usize,
    /// Stop-and-start restarts of the active node's daemon (the baseline).
    pub stop_starts: usize,
    pub json: bool,
}

/// What one kind of client saw during a phase.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Traffic {
    pub requests: u64,
    pub failed: u64,
    /// The longest time between two successful answers (the phase's start and end count as
    /// answers), in milliseconds.
    pub max_interruption_ms: f64,
}

/// One row of the table: one kind of change, repeated.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// `hot-restart`, `reload`, `stop-start`, `haproxy-sf`, `haproxy-master-worker`.
    pub phase: String,
    /// What was done, for people.
    pub name: String,
    pub operations: usize,
    /// The service probes.
    pub service: Traffic,
    /// The store writes (`None` for the HAProxy rows: no store behind HAProxy).
    pub store: Option<Traffic>,
    /// Promotions in the replicated event history over the phase (`None` for HAProxy).
    pub failovers: Option<u64>,
    /// Times the node answering as active changed, as the client saw it.
    pub active_changes: u64,
    /// Store writes that needed the one reconnect.
    pub reconnects: u64,
    /// Each operation, from asking to done (back healthy, or the new process serving): median
    /// and maximum, in milliseconds.
    pub op_p50_ms: Option<f64>,
    pub op_max_ms: Option<f64>,
    /// Why the row was not measured, if it was not.
    pub skipped: Option<String>,
}

impl Row {
    fn new(phase: &str, name: &str) -> Row {
        Row {
            phase: phase.into(),
            name: name.into(),
            operations: 0,
            service: Traffic::default(),
            store: None,
            failovers: None,
            active_changes: 0,
            reconnects: 0,
            op_p50_ms: None,
            op_max_ms: None,
            skipped: None,
        }
    }

    fn skipped(phase: &str, name: &str, why: String) -> Row {
        Row {
            skipped: Some(why),
            ..Row::new(phase, name)
        }
    }
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub rows: Vec<Row>,
    pub probe_interval_ms: u64,
    pub command: String,
}

/// Counts requests and failures and the longest gap between successes.
pub(crate) struct Meter {
    requests: u64,
    failed: u64,
    last_ok: Instant,
    max_gap: Duration,
}

impl Meter {
    pub(crate) fn new() -> Meter {
        Meter {
            requests: 0,
            failed: 0,
            last_ok: Instant::now(),
            max_gap: Duration::ZERO,
        }
    }

    pub(crate) fn ok(&mut self) {
        let now = Instant::now();
        self.requests += 1;
        self.max_gap = self.max_gap.max(now.duration_since(self.last_ok));
        self.last_ok = now;
    }

    pub(crate) fn fail(&mut self) {
        self.requests += 1;
        self.failed += 1;
    }

    pub(crate) fn traffic(&self) -> Traffic {
        // A phase that ends failing counts its last gap up to the end.
        let gap = self.max_gap.max(self.last_ok.elapsed());
        Traffic {
            requests: self.requests,
            failed: self.failed,
            max_interruption_ms: gap.as_secs_f64() * 1000.0,
        }
    }
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The clients of one phase: the service probe and, with stores, the store writer.
struct Load {
    service: Arc<Mutex<Meter>>,
    store: Option<Arc<Mutex<Meter>>>,
    active_changes: Arc<AtomicU64>,
    reconnects: Arc<AtomicU64>,
    cancel: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    /// Probes `services` (all at once, every [`PROBE_INTERVAL`]; a round succeeds when one
    /// answers as active) and, if `stores` is not empty, writes to the store of the node last
    /// seen active.
    fn start(services: Vec<SocketAddr>, stores: BTreeMap<String, SocketAddr>) -> Load {
        let cancel = CancellationToken::new();
        let service = Arc::new(Mutex::new(Meter::new()));
        let active_changes = Arc::new(AtomicU64::new(0));
        let reconnects = Arc::new(AtomicU64::new(0));
        let active: Arc<Mutex<Option<String>>> = Arc::new(Mutex::new(None));
        let mut tasks = Vec::new();
        {
            let (meter, changes, active, cancel) = (
                service.clone(),
                active_changes.clone(),
                active.clone(),
                cancel.clone(),
            );
            tasks.push(tokio::spawn(async move {
                while !cancel.is_cancelled() {
                    let probes = services.iter().map(|s| probe_service(*s, REQUEST_TIMEOUT));
                    let answered = futures::future::join_all(probes)
                        .await
                        .into_iter()
                        .flatten()
                        .next();
                    match answered {
                        Some((node, _)) => {
                            lock(&meter).ok();
                            let mut a = lock(&active);
                            if a.as_ref().is_some_and(|a| *a != node) {
                                changes.fetch_add(1, Ordering::SeqCst);
                            }
                            *a = Some(node);
                        }
                        None => lock(&meter).fail(),
                    }
                    tokio::select! {
                        _ = cancel.cancelled() => {}
                        _ = tokio::time::sleep(PROBE_INTERVAL) => {}
                    }
                }
            }));
        }
        let store = if stores.is_empty() {
            None
        } else {
            let meter = Arc::new(Mutex::new(Meter::new()));
            let (m, reconnects, cancel) = (meter.clone(), reconnects.clone(), cancel.clone());
            tasks.push(tokio::spawn(write_loop(stores, active, m, reconnects, cancel)));
            Some(meter)
        };
        Load {
            service,
            store,
            active_changes,
            reconnects,
            cancel,
            tasks,
        }
    }

    /// Starts counting afresh (the clients keep running).
    fn reset(&self) {
        *lock(&self.service) = Meter::new();
        if let Some(s) = &self.store {
            *lock(s) = Meter::new();
        }
        self.active_changes.store(0, Ordering::SeqCst);
        self.reconnects.store(0, Ordering::SeqCst);
    }

    /// Stops the clients; what they saw.
    async fn stop(self) -> (Traffic, Option<Traffic>, u64, u64) {
        self.cancel.cancel();
        for t in self.tasks {
            let _ = t.await;
        }
        (
            lock(&self.service).traffic(),
            self.store.as_ref().map(|s| lock(s).traffic()),
            self.active_changes.load(Ordering::SeqCst),
            self.reconnects.load(Ordering::SeqCst),
        )
    }
}

type Conn = (
    BufReader<tokio::net::tcp::OwnedReadHalf>,
    tokio::net::tcp::OwnedWriteHalf,
);

/// One `SET` on `conn` (connecting to `addr` first if there is none); `true` on `+OK`.
async fn set_once(conn: &mut Option<Conn>, addr: SocketAddr, req: &[u8]) -> bool {
    if conn.is_none() {
        match tokio::time::timeout(REQUEST_TIMEOUT, tokio::net::TcpStream::connect(addr)).await {
            Ok(Ok(s)) => {
                let _ = s.set_nodelay(true);
                let (r, w) = s.into_split();
                *conn = Some((BufReader::new(r), w));
            }
            _ => return false,
        }
    }
    let Some((r, w)) = conn.as_mut() else {
        return false;
    };
    let mut line = String::new();
    let ok = w.write_all(req).await.is_ok()
        && tokio::time::timeout(REQUEST_TIMEOUT, r.read_line(&mut line))
            .await
            .is_ok_and(|n| n.is_ok_and(|n| n > 0))
        && line.starts_with("+OK");
    if !ok {
        *conn = None;
    }
    ok
}

/// The store writer: `SET bench:N N` one at a time; a write that fails is tried once more on
/// a new connection (to the store of the node last seen active) before it counts as failed.
async fn write_loop(
    stores: BTreeMap<String, SocketAddr>,
    active: Arc<Mutex<Option<String>>>,
    meter: Arc<Mutex<Meter>>,
    reconnects: Arc<AtomicU64>,
    cancel: CancellationToken,
) {
    let target = || {
        let a = lock(&active).clone();
        a.and_then(|a| stores.get(&a).copied())
            .or_else(|| stores.values().next().copied())
    };
    let mut conn: Option<Conn> = None;
    let mut addr = target();
    let mut i = 0u64;
    while !cancel.is_cancelled() {
        i += 1;
        let key = format!("bench:{i}");
        let value = i.to_string();
        let req = format!(
            "*3\r\n$3\r\nSET\r\n${}\r\n{key}\r\n${}\r\n{value}\r\n",
            key.len(),
            value.len()
        );
        let mut done = false;
        for attempt in 0..2 {
            if conn.is_none() {
                addr = target();
            }
            let Some(a) = addr else { break };
            if set_once(&mut conn, a, req.as_bytes()).await {
                if attempt > 0 {
                    reconnects.fetch_add(1, Ordering::SeqCst);
                }
                done = true;
                break;
            }
        }
        if done {
            lock(&meter).ok();
        } else {
            lock(&meter).fail();
        }
        tokio::select! {
            _ = cancel.cancelled() => {}
            _ = tokio::time::sleep(PROBE_INTERVAL / 2) => {}
        }
    }
}

/// The median and maximum of `ms`.
pub(crate) fn op_stats(ms: &[f64]) -> (Option<f64>, Option<f64>) {
    let mut v = ms.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let p50 = match v.len() {
        0 => None,
        n if n % 2 == 1 => Some(v[n / 2]),
        n => Some((v[n / 2 - 1] + v[n / 2]) / 2.0),
    };
    (p50, v.last().copied())
}

/// `GET /v1/daemon` of the admin API at `admin`.
async fn daemon_info(admin: &str) -> Result<DaemonInfo, HarnessError> {
    let r = request(admin, Method::GET, "/v1/daemon", None, Duration::from_secs(2))
        .await
        .map_err(|e| err(format!("GET /v1/daemon: {e}")))?;
    if r.status != 200 {
        return Err(err(format!("GET /v1/daemon: HTTP {}: {}", r.status, r.body)));
    }
    serde_json::from_str(&r.body).map_err(|e| err(format!("GET /v1/daemon: {e}")))
}

/// The active node of a ready cluster, and the epoch.
async fn active(cluster: &LocalCluster) -> Result<(String, u64), HarnessError> {
    let s = cluster.wait_ready(WAIT).await?;
    let a = s.active.clone().ok_or_else(|| err("no active node"))?;
    Ok((a, s.epoch))
}

/// Promotions in the replicated event history: the most any data node has (every promotion
/// is there; a node that just came back may still be catching up, and the status of a moment
/// may lag behind one).
async fn promotions(cluster: &LocalCluster) -> Option<usize> {
    let mut most = None;
    for n in cluster.nodes.iter().filter(|n| !n.witness) {
        if let Some(events) = cluster.events(&n.id).await {
            let count = events
                .iter()
                .filter(|e| e.kind == crate::cluster::state::EventKind::Promoting)
                .count();
            most = most.max(Some(count));
        }
    }
    most
}

/// Failovers over a phase: promotions in the history from `before` to now, or, without the
/// history, the epoch's change in the settled cluster's status.
async fn failovers(cluster: &LocalCluster, before: (Option<usize>, u64)) -> Result<u64, HarnessError> {
    let s = cluster.wait_settled(WAIT).await?;
    Ok(match (before.0, promotions(cluster).await) {
        (Some(a), Some(b)) => b.saturating_sub(a) as u64,
        _ => s.epoch.saturating_sub(before.1),
    })
}

/// Waits until `id` is healthy and in sync in a ready cluster.
async fn wait_back(cluster: &LocalCluster, id: &str, what: &str) -> Result<(), HarnessError> {
    cluster
        .wait_for(WAIT, what, |s| {
            is_ready(s) && s.nodes.iter().any(|n| n.id == id && n.healthy && n.in_sync)
        })
        .await
        .map(|_| ())
}

/// One hot restart of `id`'s daemon: asked, the new program answering with one more hot
/// restart in the same pid, and the node healthy and in sync again.
async fn hot_restart(cluster: &LocalCluster, id: &str) -> Result<(), HarnessError> {
    let admin = cluster
        .node(id)
        .map(|n| n.admin.to_string())
        .ok_or_else(|| err(format!("no node {id}")))?;
    let before = daemon_info(&admin).await?;
    let r = request(&admin, Method::POST, "/v1/restart", None, Duration::from_secs(10))
        .await
        .map_err(|e| err(format!("POST /v1/restart: {e}")))?;
    if r.status != 202 {
        return Err(err(format!(
            "hot restart of {id} refused: HTTP {}: {}",
            r.status, r.body
        )));
    }
    let deadline = Instant::now() + WAIT;
    loop {
        if let Ok(d) = daemon_info(&admin).await {
            if d.program_started_unix_ms != before.program_started_unix_ms {
                if d.hot_restarts != before.hot_restarts + 1 || d.pid != before.pid {
                    return Err(err(format!(
                        "the hot restart of {id} did not happen: {}",
                        d.last_restart_failure.as_deref().unwrap_or("no reason given")
                    )));
                }
                break;
            }
        }
        if Instant::now() >= deadline {
            return Err(err(format!("no new program of {id} answered within {WAIT:?}")));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    wait_back(cluster, id, "the hot-restarted node healthy and in sync").await
}

/// One reload of `id`: its file rewritten with `[events] retention` changed (a setting that
/// applies live), then `POST /v1/reload`, which must report it applied.
async fn reload(cluster: &LocalCluster, id: &str, original: &str, i: usize) -> Result<(), HarnessError> {
    let node = cluster.node(id).ok_or_else(|| err(format!("no node {id}")))?;
    let text = format!("{original}\n[events]\nretention = {}\n", 2001 + i % 2);
    std::fs::write(&node.config, text).map_err(|e| err(format!("{}: {e}", node.config.display())))?;
    let r = request(
        &node.admin.to_string(),
        Method::POST,
        "/v1/reload",
        None,
        Duration::from_secs(10),
    )
    .await
    .map_err(|e| err(format!("POST /v1/reload: {e}")))?;
    let report: Option<crate::config::reload::ReloadReport> = serde_json::from_str(&r.body).ok();
    match report {
        Some(rep) if r.status == 200 && rep.outcome == crate::config::reload::ReloadOutcome::Applied => {
            Ok(())
        }
        _ => Err(err(format!("reload of {id}: HTTP {}: {}", r.status, r.body))),
    }
}

/// One `systemctl restart`-style restart of the active node `id` (at `epoch`): SIGTERM, wait
/// for the daemon to exit, start it again, wait until another node is active at a later epoch
/// and `id` is back as a healthy standby in sync (a status of the moment may still show the
/// old active while the promotion is in progress).
async fn stop_start(cluster: &mut LocalCluster, id: &str, epoch: u64) -> Result<(), HarnessError> {
    cluster.signal_daemon(id, Signal::SIGTERM)?;
    if cluster.wait_exit(id, WAIT).await.is_none() {
        return Err(err(format!("{id} did not exit within {WAIT:?} of SIGTERM")));
    }
    cluster.start(id)?;
    cluster
        .wait_for(
            WAIT,
            "another node active and the restarted one a healthy standby",
            |s| {
                is_ready(s)
                    && s.epoch > epoch
                    && s.active.as_deref() != Some(id)
                    && s.nodes
                        .iter()
                        .any(|n| n.id == id && n.role == "standby" && n.healthy && n.in_sync)
            },
        )
        .await?;
    remember_services(cluster).await;
    Ok(())
}

/// Asks every data node for its lease, so the cluster's guard knows every service process
/// (and kills them when dropped).
pub(crate) async fn remember_services(cluster: &LocalCluster) {
    for n in cluster.nodes.iter().filter(|n| !n.witness) {
        let _ = cluster.lease(&n.id).await;
    }
}

/// Every data node's service address and store address (by node id).
fn addresses(cluster: &LocalCluster) -> (Vec<SocketAddr>, BTreeMap<String, SocketAddr>) {
    let services = cluster.nodes.iter().filter_map(|n| n.service).collect();
    let stores = cluster
        .nodes
        .iter()
        .filter_map(|n| n.store.map(|s| (n.id.clone(), s)))
        .collect();
    (services, stores)
}

/// Which standin phase a row measures.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    HotRestart,
    Reload,
    StopStart,
}

impl Phase {
    fn id(self) -> &'static str {
        match self {
            Phase::HotRestart => "hot-restart",
            Phase::Reload => "reload",
            Phase::StopStart => "stop-start",
        }
    }

    fn name(self) -> &'static str {
        match self {
            Phase::HotRestart => "standin hot restart (POST /v1/restart)",
            Phase::Reload => "standin reload (POST /v1/reload)",
            Phase::StopStart => "standin stop + start (systemctl restart)",
        }
    }
}

/// Runs `n` operations of `phase` on the active node under load.
async fn run_phase(cluster: &mut LocalCluster, phase: Phase, n: usize) -> Result<Row, HarnessError> {
    let mut row = Row::new(phase.id(), phase.name());
    if n == 0 {
        row.skipped = Some("0 operations asked".into());
        return Ok(row);
    }
    eprintln!("bench upgrade: {n} × {}", phase.name());
    let (first, epoch0) = active(cluster).await?;
    let before = (promotions(cluster).await, epoch0);
    let original = cluster
        .node(&first)
        .map(|nd| std::fs::read_to_string(&nd.config))
        .transpose()
        .map_err(|e| err(format!("the config of {first}: {e}")))?
        .unwrap_or_default();
    let (services, stores) = addresses(cluster);
    let load = Load::start(services, stores);
    tokio::time::sleep(SETTLE).await;
    load.reset();
    let bar = progress(n, phase.name());
    let mut took = Vec::new();
    for i in 0..n {
        let (id, epoch) = active(cluster).await?;
        let t0 = Instant::now();
        match phase {
            Phase::HotRestart => hot_restart(cluster, &id).await?,
            Phase::Reload => reload(cluster, &first, &original, i).await?,
            Phase::StopStart => stop_start(cluster, &id, epoch).await?,
        }
        took.push(t0.elapsed().as_secs_f64() * 1000.0);
        bar.inc(1);
        tokio::time::sleep(BETWEEN).await;
    }
    tokio::time::sleep(SETTLE).await;
    bar.finish_and_clear();
    let (service, store, changes, reconnects) = load.stop().await;
    row.operations = n;
    row.service = service;
    row.store = store;
    row.failovers = Some(failovers(cluster, before).await?);
    row.active_changes = changes;
    row.reconnects = reconnects;
    (row.op_p50_ms, row.op_max_ms) = op_stats(&took);
    Ok(row)
}

/// Whether `name` is an executable on `PATH`.
fn on_path(name: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(name).is_file()))
        .unwrap_or(false)
}

/// Writes HAProxy's configuration: one thread, one `mode tcp` listener on `listen` in front of
/// `backend`.
fn haproxy_config(dir: &Path, listen: SocketAddr, backend: SocketAddr) -> Result<PathBuf, HarnessError> {
    let config = format!(
        "# generated by standin bench upgrade\n\
         global\n    nbthread 1\n    maxconn 4096\n\n\
         defaults\n    timeout connect 5s\n    timeout client 30s\n    timeout server 30s\n\n\
         listen service\n    mode tcp\n    bind {listen}\n    server backend {backend}\n"
    );
    let path = dir.join("haproxy.cfg");
    std::fs::write(&path, config).map_err(|e| err(format!("{}: {e}", path.display())))?;
    Ok(path)
}

/// The pids of `parent`'s children (from `/proc/*/stat`).
fn children_of(parent: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()))
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                // "pid (comm) state ppid ...": the comm may hold spaces, so read after its ')'.
                .and_then(|s| s.rsplit_once(')').map(|(_, rest)| rest.to_string()))
                .and_then(|rest| rest.split_whitespace().nth(1)?.parse::<u32>().ok())
                == Some(parent)
        })
        .collect()
}

/// Waits (at most [`WAIT`]) until the probe gets an answer through `addr`.
async fn wait_serving(addr: SocketAddr, log: &Path) -> Result<(), HarnessError> {
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline {
        if probe_service(addr, REQUEST_TIMEOUT).await.is_some() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(super::proxy::with_log(
        err(format!("no answer through haproxy at {addr} within {WAIT:?}")),
        log,
    ))
}

/// How HAProxy is reloaded.
#[derive(Clone, Copy, PartialEq, Eq)]
enum HaproxyReload {
    /// `haproxy -f CFG -sf OLDPID`: a new process binds, the old one stops listening and ends.
    SoftFinish,
    /// `haproxy -W`: SIGUSR2 to the master, which re-executes itself and starts a new worker
    /// (what the Debian unit's `systemctl reload haproxy` does).
    MasterWorker,
}

impl HaproxyReload {
    fn id(self) -> &'static str {
        match self {
            HaproxyReload::SoftFinish => "haproxy-sf",
            HaproxyReload::MasterWorker => "haproxy-master-worker",
        }
    }

    fn name(self) -> &'static str {
        match self {
            HaproxyReload::SoftFinish => "HAProxy reload (haproxy -sf OLDPID)",
            HaproxyReload::MasterWorker => "HAProxy reload (-W master-worker, SIGUSR2)",
        }
    }
}

/// `n` HAProxy reloads of kind `how` with the probe going through HAProxy to `backend`.
async fn run_haproxy(
    dir: &Path,
    backend: SocketAddr,
    how: HaproxyReload,
    n: usize,
) -> Result<Row, HarnessError> {
    let mut row = Row::new(how.id(), how.name());
    if n == 0 {
        row.skipped = Some("0 operations asked".into());
        return Ok(row);
    }
    if !on_path("haproxy") {
        row.skipped = Some("haproxy is not installed (Debian: apt-get install haproxy)".into());
        return Ok(row);
    }
    eprintln!("bench upgrade: {n} × {}", how.name());
    let dir = dir.join(how.id());
    std::fs::create_dir_all(&dir).map_err(|e| err(format!("{}: {e}", dir.display())))?;
    let listen = SocketAddr::from(([127, 0, 0, 1], free_ports(1)?[0]));
    let config = haproxy_config(&dir, listen, backend)?;
    let log = dir.join("haproxy.log");
    let start = |extra: &[String]| {
        let mut cmd = Command::new("haproxy");
        // -db: in the foreground, so the process we hold is HAProxy (or its master) itself.
        cmd.arg("-db");
        if how == HaproxyReload::MasterWorker {
            cmd.arg("-W");
        }
        cmd.arg("-f").arg(&config).args(extra);
        Spawned::start(&mut cmd, &log, "haproxy")
    };
    let mut current = start(&[])?;
    wait_serving(listen, &log).await?;
    let load = Load::start(vec![listen], BTreeMap::new());
    tokio::time::sleep(SETTLE).await;
    load.reset();
    let bar = progress(n, how.name());
    let mut took = Vec::new();
    for _ in 0..n {
        let t0 = Instant::now();
        match how {
            HaproxyReload::SoftFinish => {
                let mut next = start(&["-sf".to_string(), current.pid().to_string()])?;
                // The new process tells the old one to finish once it listens itself.
                let deadline = Instant::now() + WAIT;
                while !current.exited() {
                    if next.exited() {
                        return Err(super::proxy::with_log(err("the new haproxy exited"), &log));
                    }
                    if Instant::now() >= deadline {
                        return Err(err(format!("the old haproxy did not finish within {WAIT:?}")));
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                std::mem::swap(&mut current, &mut next);
                // `next` (the old process, ended) is reaped here.
            }
            HaproxyReload::MasterWorker => {
                let master = current.pid();
                let old = children_of(master);
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(master as i32), Signal::SIGUSR2)
                    .map_err(|e| err(format!("SIGUSR2 to haproxy's master: {e}")))?;
                // Done when a new worker runs and the old ones have finished.
                let deadline = Instant::now() + WAIT;
                loop {
                    let now = children_of(master);
                    if now.iter().any(|p| !old.contains(p)) && !now.iter().any(|p| old.contains(p)) {
                        break;
                    }
                    if current.exited() {
                        return Err(super::proxy::with_log(err("haproxy's master exited"), &log));
                    }
                    if Instant::now() >= deadline {
                        return Err(err(format!("haproxy's master did not reload within {WAIT:?}")));
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        }
        took.push(t0.elapsed().as_secs_f64() * 1000.0);
        bar.inc(1);
        tokio::time::sleep(BETWEEN).await;
    }
    tokio::time::sleep(SETTLE).await;
    bar.finish_and_clear();
    let (service, _, changes, _) = load.stop().await;
    drop(current);
    row.operations = n;
    row.service = service;
    row.active_changes = changes;
    (row.op_p50_ms, row.op_max_ms) = op_stats(&took);
    Ok(row)
}

/// Runs the upgrade benchmark and prints the table (or JSON).
pub async fn run(o: UpgradeOptions) -> Result<(), HarnessError> {
    let scratch = Scratch::new("standin-bench-upgrade")?;
    let binary = std::env::current_exe().map_err(|e| err(e.to_string()))?;
    let spec = Spec::new(&scratch.path().join("cluster"), &binary);
    eprintln!("bench upgrade: starting a local cluster (a, b, witness; store and demo service)");
    let (mut cluster, _) = LocalCluster::launch(spec).await?;
    remember_services(&cluster).await;
    let _ = cluster.wait_settled(WAIT).await?;

    let first = run_phase(&mut cluster, Phase::HotRestart, o.restarts).await?;
    // `STANDIN_BENCH_KEEP_LOGS=DIR`: the nodes' logs of the hot restart phase are copied there.
    if let Some(to) = std::env::var_os("STANDIN_BENCH_KEEP_LOGS") {
        let to = std::path::PathBuf::from(to);
        let _ = std::fs::create_dir_all(&to);
        for n in &cluster.nodes {
            let log = scratch.path().join("cluster").join(format!("{}.log", n.id));
            let _ = std::fs::copy(&log, to.join(format!("{}.log", n.id)));
        }
    }
    let mut rows = vec![
        first,
        run_phase(&mut cluster, Phase::Reload, o.reloads).await?,
        run_phase(&mut cluster, Phase::StopStart, o.stop_starts).await?,
    ];
    // HAProxy in front of the active node's service, the cluster left alone meanwhile.
    let (id, _) = active(&cluster).await?;
    let backend = cluster
        .node(&id)
        .and_then(|n| n.service)
        .ok_or_else(|| err("the active node has no service address"))?;
    for how in [HaproxyReload::SoftFinish, HaproxyReload::MasterWorker] {
        match run_haproxy(scratch.path(), backend, how, o.reloads).await {
            Ok(row) => rows.push(row),
            Err(e) => rows.push(Row::skipped(how.id(), how.name(), e.0)),
        }
    }
    drop(cluster);
    drop(scratch);

    let report = Report {
        rows,
        probe_interval_ms: PROBE_INTERVAL.as_millis() as u64,
        command: format!(
            "standin bench upgrade --restarts {} --reloads {} --stop-starts {}",
            o.restarts, o.reloads, o.stop_starts
        ),
    };
    if o.json {
        return print_json(&report);
    }
    print!("{}", render(&report));
    Ok(())
}

/// The table and the lines under it, as printed without `--json`.
fn render(report: &Report) -> String {
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED);
    t.set_header(vec![
        "change",
        "operations",
        "requests (service / store)",
        "failed (service / store)",
        "max interruption ms (service / store)",
        "failovers",
    ]);
    for r in &report.rows {
        if let Some(why) = &r.skipped {
            t.add_row(vec![r.name.clone(), format!("not run: {why}")]);
            continue;
        }
        let pair = |a: String, b: Option<String>| match b {
            Some(b) => format!("{a} / {b}"),
            None => a,
        };
        t.add_row(vec![
            r.name.clone(),
            r.operations.to_string(),
            pair(
                r.service.requests.to_string(),
                r.store.map(|s| s.requests.to_string()),
            ),
            pair(
                r.service.failed.to_string(),
                r.store.map(|s| s.failed.to_string()),
            ),
            pair(
                format!("{:.0}", r.service.max_interruption_ms),
                r.store.map(|s| format!("{:.0}", s.max_interruption_ms)),
            ),
            r.failovers.map(|f| f.to_string()).unwrap_or_else(|| "-".into()),
        ]);
    }
    format!(
        "{t}\n{}\n\
         load: a client probing every data node's service every {} ms (a new connection each; a \
         round succeeds when the active node answers) and a store writer (SET, one connection, \
         one reconnect allowed on a closed connection, to the node last seen active); HAProxy \
         rows: the same probe through HAProxy (nbthread 1, mode tcp) to the active node's service\n\
         max interruption = longest time between two successful answers; failovers = promotions \
         in the replicated event history over the phase\n\
         target (issue 15) for the hot restart: 0 failed, < 50 ms max interruption, 0 failovers\n",
        report.command, report.probe_interval_ms
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_meter_counts_failures_and_the_longest_gap() {
        let mut m = Meter::new();
        m.ok();
        m.fail();
        m.fail();
        std::thread::sleep(Duration::from_millis(30));
        m.ok();
        let t = m.traffic();
        assert_eq!((t.requests, t.failed), (4, 2));
        assert!(t.max_interruption_ms >= 30.0, "{t:?}");
    }

    #[test]
    fn op_stats_median_and_max() {
        assert_eq!(op_stats(&[]), (None, None));
        assert_eq!(op_stats(&[3.0, 1.0, 2.0]), (Some(2.0), Some(3.0)));
        assert_eq!(op_stats(&[4.0, 1.0]), (Some(2.5), Some(4.0)));
    }

    #[test]
    fn the_table_shows_every_row_and_why_one_was_skipped() {
        let mut hot = Row::new("hot-restart", "standin hot restart (POST /v1/restart)");
        hot.operations = 20;
        hot.service = Traffic {
            requests: 1234,
            failed: 0,
            max_interruption_ms: 17.4,
        };
        hot.store = Some(Traffic {
            requests: 567,
            failed: 1,
            max_interruption_ms: 80.6,
        });
        hot.failovers = Some(0);
        let report = Report {
            rows: vec![
                hot,
                Row::skipped("haproxy-sf", "HAProxy reload", "haproxy is not installed".into()),
            ],
            probe_interval_ms: 10,
            command: "standin bench upgrade".into(),
        };
        let text = render(&report);
        assert!(text.contains("1234 / 567"), "{text}");
        assert!(text.contains("0 / 1"), "{text}");
        assert!(text.contains("17 / 81"), "{text}");
        assert!(text.contains("not run: haproxy is not installed"), "{text}");
    }

    #[test]
    fn children_of_finds_a_child() {
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .expect("sleep");
        let found = children_of(std::process::id()).contains(&child.id());
        let _ = child.kill();
        let _ = child.wait();
        assert!(found);
    }
}
