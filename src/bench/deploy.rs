//! `standin bench deploy` (issue 17): what a rolling deploy of the managed service costs its
//! clients, beside the way keepalived + HAProxy users do it. N deploys alternate a good
//! version (`DEMO_VERSION=k`) and a broken one (`DEMO_BROKEN=1` on top of the current version:
//! its health check fails, so it must be rolled back), under a client probing the floating
//! address every 10 ms on a new connection each time.
//!
//! 1. **standin**: a local cluster (data nodes a and b, witness w, mutual TLS, the demo
//!    service; no store) with a `standin proxy` in front: one `http` failover listener (one
//!    event loop, `queue-timeout = "3s"` as in tests/deploy.rs). The probe is `GET /`, which
//!    succeeds on a 200 from the active node (`role=active`). Each deploy is
//!    `POST /v1/deploy` (strategy failover, step timeout 20 s, watch 1 s), followed on
//!    `GET /v1/deploy` every 50 ms until it has ended (its id, and for a broken version its
//!    rollback, in the history and nothing under way). Switchovers are the epoch's increase
//!    in `GET /v1/status` over each deploy.
//! 2. **HAProxy + a script**: HAProxy (one thread, `mode http`, `retries 3`,
//!    `option redispatch`) with one backend of two servers, each a `standin demo-service`
//!    process started by the benchmark, checked with `option httpchk GET /health`, `inter
//!    100ms fall 2 rise 1`, `timeout check 300ms` (standin's checks in the local cluster). The
//!    demo service's `/` needs a daemon's lease, so the probe here is `GET /echo`, which the
//!    same program answers 200 in any role: same process, same HTTP stack, same health
//!    endpoint (`DEMO_BROKEN=1` fails it the same way), only the role test is left out.
//!    (`standin bench-backend` cannot report a version nor fail its health, so it is not used.)
//!    The script, per server and per deploy, on the runtime API (stats socket, admin level):
//!    `set server be/sN state drain`, wait until the server has no current session (at most
//!    2 s), SIGTERM the process and wait for its exit, `set server be/sN health down` (so that
//!    the UP it waits for comes from a check of the new process), start it with the new
//!    environment, wait until `show servers state` says UP (at most 2 s: the script's watch); if
//!    it never does, the servers this deploy changed go back to the old environment the same way
//!    (the failing one first) and the script stops; else `set server be/sN state ready` and the
//!    next server.
//!
//! The two sides differ where a reader should know it: standin runs one active node behind
//! a failover listener (each good deploy moves the role once) and watches every updated node
//! healthy for 1 s before the next step; HAProxy balances over both servers (one keeps serving
//! while the other restarts) and the script goes on as soon as the check says UP.
//!
//! Per side: deploys good / broken and how each ended, requests, failed requests, the longest
//! gap between two successful answers, each deploy's time (median and max for good ones,
//! median for rollbacks), switchovers; per deploy in `--json`. Nothing is asserted.
//! Everything started is killed and the scratch directory removed when the run ends, fails or
//! is interrupted (guards dropped; the command runs under [`super::until_interrupted`]).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use comfy_table::{presets::UTF8_FULL_CONDENSED, Table};
use hyper::Method;
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use super::proxy::{on_path, with_log, Protocol, StandinProxy};
use super::upgrade::{lock, op_stats, remember_services, Meter, Traffic};
use super::{free_ports, print_json, progress, Scratch, Spawned};
use crate::api::client::request;
use crate::api::{DeployRequest, DeployView};
use crate::cluster::change::{DeployKind, ServiceOverlay, Strategy};
use crate::lab::harness::{is_ready, parse_active, HarnessError, LocalCluster, Spec};

fn err(m: impl Into<String>) -> HarnessError {
    HarnessError(m.into())
}

/// The client's pause between two probes.
const PROBE_INTERVAL: Duration = Duration::from_millis(10);
/// How long one probe may take before it counts as failed: above the proxy's queue timeout,
/// so a request held during a switchover is a gap, not a failure.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Load before the first deploy of a side and after the last.
const SETTLE: Duration = Duration::from_millis(500);
/// The pause between two deploys once the cluster (or HAProxy's backend) is steady again.
const BETWEEN: Duration = Duration::from_millis(500);
/// Upper bound on waiting for the cluster, a process or HAProxy.
const WAIT: Duration = Duration::from_secs(30);
/// Upper bound on one deploy, from the request to its end (rollback included).
const DEPLOY_WAIT: Duration = Duration::from_secs(240);
/// How often the deploy is looked at while it runs.
const POLL: Duration = Duration::from_millis(50);
/// standin's deploy settings.
const STEP_TIMEOUT: Duration = Duration::from_secs(20);
const WATCH: Duration = Duration::from_secs(1);
/// The script: how long a drained server's sessions get, and how long a restarted server
/// gets to come UP before the script rolls back.
const DRAIN_MAX: Duration = Duration::from_secs(2);
const UP_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a stopped server gets to exit after SIGTERM before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// Failed probes kept (with when and why) for the JSON.
const FAILURE_SAMPLES: usize = 50;
/// The proxy listener's settings (as tests/deploy.rs).
const LISTENER_SETTINGS: &str = "queue-timeout = \"3s\"\n";

/// What `standin bench deploy` runs.
#[derive(Debug, Clone)]
pub struct DeployOptions {
    /// Deploys per side, alternating good and broken (good first).
    pub deploys: usize,
    pub json: bool,
}

/// A good version or a broken one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    Good,
    Broken,
}

/// The service's environment a version sets: `DEMO_VERSION`, and `DEMO_BROKEN=1` or not.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Env {
    version: u64,
    broken: bool,
}

/// The `i`th deploy (from 0) after `current`: even ones a good new version, odd ones the
/// current version broken.
fn nth(i: usize, current: &Env) -> (Kind, Env) {
    if i.is_multiple_of(2) {
        (
            Kind::Good,
            Env {
                version: current.version + 1,
                broken: false,
            },
        )
    } else {
        (
            Kind::Broken,
            Env {
                version: current.version,
                broken: true,
            },
        )
    }
}

/// One deploy as measured.
#[derive(Debug, Clone, Serialize)]
pub struct DeployRun {
    pub kind: Kind,
    /// The `DEMO_VERSION` going out.
    pub version: u64,
    /// standin's deploy id (the rollback's is the next one).
    pub id: Option<u64>,
    /// How it ended: `deployed`, `rolled back ...`, or what went wrong.
    pub outcome: String,
    /// A good version deployed, a broken one rolled back.
    pub as_expected: bool,
    /// From the request to the end (rollback included), in milliseconds.
    pub ms: f64,
    /// What the probe saw from the request to the end.
    pub traffic: Traffic,
    /// The epoch's increase over the deploy (`None` for HAProxy).
    pub switchovers: Option<u64>,
}

/// What one side's figures come to.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Summary {
    pub good: usize,
    pub broken: usize,
    pub deployed: usize,
    pub rolled_back: usize,
    /// Deploys that did not end as expected.
    pub unexpected: usize,
    /// Failed requests during deploys (the side's total is in `traffic`).
    pub failed_during_deploys: u64,
    pub max_interruption_during_deploys_ms: f64,
    pub good_p50_ms: Option<f64>,
    pub good_max_ms: Option<f64>,
    pub rollback_p50_ms: Option<f64>,
    pub rollback_max_ms: Option<f64>,
    pub switchovers: Option<u64>,
}

/// One side of the comparison.
#[derive(Debug, Clone, Serialize)]
pub struct Side {
    /// `standin` or `haproxy-script`.
    pub side: String,
    pub name: String,
    pub deploys: Vec<DeployRun>,
    /// The probe over the whole side, from before the first deploy to after the last.
    pub traffic: Traffic,
    pub summary: Summary,
    /// The first failed probes: milliseconds since the side's probe began, and why.
    pub failures: Vec<String>,
    /// Why the side stopped early or was not run.
    pub error: Option<String>,
}

impl Side {
    fn new(side: &str, name: &str) -> Side {
        Side {
            side: side.into(),
            name: name.into(),
            deploys: Vec::new(),
            traffic: Traffic::default(),
            summary: Summary::default(),
            failures: Vec::new(),
            error: None,
        }
    }

    fn summarize(&mut self) {
        let d = &self.deploys;
        let ms = |k: Kind| -> Vec<f64> { d.iter().filter(|r| r.kind == k).map(|r| r.ms).collect() };
        let (good_p50_ms, good_max_ms) = op_stats(&ms(Kind::Good));
        let (rollback_p50_ms, rollback_max_ms) = op_stats(&ms(Kind::Broken));
        let switchovers = d
            .iter()
            .map(|r| r.switchovers)
            .try_fold(0u64, |acc, s| s.map(|s| acc + s))
            .filter(|_| !d.is_empty());
        self.summary = Summary {
            good: d.iter().filter(|r| r.kind == Kind::Good).count(),
            broken: d.iter().filter(|r| r.kind == Kind::Broken).count(),
            deployed: d.iter().filter(|r| r.kind == Kind::Good && r.as_expected).count(),
            rolled_back: d
                .iter()
                .filter(|r| r.kind == Kind::Broken && r.as_expected)
                .count(),
            unexpected: d.iter().filter(|r| !r.as_expected).count(),
            failed_during_deploys: d.iter().map(|r| r.traffic.failed).sum(),
            max_interruption_during_deploys_ms: d
                .iter()
                .map(|r| r.traffic.max_interruption_ms)
                .fold(0.0, f64::max),
            good_p50_ms,
            good_max_ms,
            rollback_p50_ms,
            rollback_max_ms,
            switchovers,
        };
    }
}

/// standin's figure divided by HAProxy's.
#[derive(Debug, Clone, Serialize)]
pub struct Ratios {
    pub good_deploy_p50: Option<f64>,
    pub rollback_p50: Option<f64>,
    pub max_interruption: Option<f64>,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub command: String,
    pub sides: Vec<Side>,
    pub ratios: Option<Ratios>,
    pub probe_interval_ms: u64,
    pub step_timeout_ms: u64,
    pub watch_ms: u64,
    pub script_up_timeout_ms: u64,
    pub script_drain_max_ms: u64,
}

/// The client: one request at a time to `addr`, every [`PROBE_INTERVAL`], a new connection
/// each, counted over the whole side and over the deploy under way.
struct Probe {
    total: Arc<Mutex<Meter>>,
    current: Arc<Mutex<Meter>>,
    failures: Arc<Mutex<Vec<String>>>,
    cancel: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Probe {
    /// `GET path`; success is a 200, and with `active` one that says `role=active`.
    fn start(addr: SocketAddr, path: &'static str, active: bool) -> Probe {
        let total = Arc::new(Mutex::new(Meter::new()));
        let current = Arc::new(Mutex::new(Meter::new()));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let cancel = CancellationToken::new();
        let (t, c, f, stop) = (total.clone(), current.clone(), failures.clone(), cancel.clone());
        let task = tokio::spawn(async move {
            let began = Instant::now();
            let addr = addr.to_string();
            while !stop.is_cancelled() {
                let sent = Instant::now();
                let r = tokio::select! {
                    _ = stop.cancelled() => return,
                    r = request(&addr, Method::GET, path, None, REQUEST_TIMEOUT) => r,
                };
                let failure = match r {
                    Ok(r) if r.status == 200 && (!active || parse_active(&r.body).is_some()) => None,
                    Ok(r) => Some(format!("HTTP {}: {}", r.status, r.body.trim())),
                    Err(e) => Some(e.to_string()),
                };
                match failure {
                    None => {
                        lock(&t).ok();
                        lock(&c).ok();
                    }
                    Some(mut why) => {
                        lock(&t).fail();
                        lock(&c).fail();
                        let mut f = lock(&f);
                        if f.len() < FAILURE_SAMPLES {
                            let at = sent.duration_since(began).as_millis();
                            why.truncate(200);
                            f.push(format!("{at} ms: {why}"));
                        }
                    }
                }
                tokio::select! {
                    _ = stop.cancelled() => {}
                    _ = tokio::time::sleep(PROBE_INTERVAL) => {}
                }
            }
        });
        Probe {
            total,
            current,
            failures,
            cancel,
            task,
        }
    }

    /// Starts counting afresh: the whole side (`total`) or one deploy.
    fn reset(&self, total: bool) {
        if total {
            *lock(&self.total) = Meter::new();
            lock(&self.failures).clear();
        }
        *lock(&self.current) = Meter::new();
    }

    /// What the probe saw since the last reset of the current deploy.
    fn current(&self) -> Traffic {
        lock(&self.current).traffic()
    }

    async fn stop(self) -> (Traffic, Vec<String>) {
        self.cancel.cancel();
        let _ = self.task.await;
        let total = lock(&self.total).traffic();
        let failures = std::mem::take(&mut *lock(&self.failures));
        (total, failures)
    }
}

// ---------------------------------------------------------------------------------------
// standin

/// `GET /v1/deploy` from the first node that answers.
async fn deploy_view(cluster: &LocalCluster) -> Result<DeployView, HarnessError> {
    let mut last = String::from("no node");
    for n in &cluster.nodes {
        match request(
            &n.admin.to_string(),
            Method::GET,
            "/v1/deploy",
            None,
            Duration::from_secs(2),
        )
        .await
        {
            Ok(r) if r.status == 200 => match serde_json::from_str(&r.body) {
                Ok(v) => return Ok(v),
                Err(e) => last = format!("{}: {e}", n.id),
            },
            Ok(r) => last = format!("{}: HTTP {}: {}", n.id, r.status, r.body.trim()),
            Err(e) => last = format!("{}: {e}", n.id),
        }
    }
    Err(err(format!("GET /v1/deploy: {last}")))
}

/// `POST /v1/deploy`; the deploy's id. A 503 (an election) or a 409 (a failover under way)
/// is asked again for a while.
async fn start_deploy(cluster: &LocalCluster, req: &DeployRequest) -> Result<u64, HarnessError> {
    let body = serde_json::to_string(req).map_err(|e| err(e.to_string()))?;
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut last = String::new();
    while Instant::now() < deadline {
        for n in cluster.nodes.iter().filter(|n| !n.witness) {
            let r = match request(
                &n.admin.to_string(),
                Method::POST,
                "/v1/deploy",
                Some(body.clone()),
                Duration::from_secs(10),
            )
            .await
            {
                Ok(r) => r,
                Err(e) => {
                    last = format!("{}: {e}", n.id);
                    continue;
                }
            };
            match r.status {
                200 => {
                    let plan: crate::api::DeployPlan = serde_json::from_str(&r.body)
                        .map_err(|e| err(format!("POST /v1/deploy: {e}: {}", r.body)))?;
                    return plan
                        .deploy
                        .ok_or_else(|| err(format!("POST /v1/deploy: no deploy started: {}", r.body)));
                }
                409 | 503 => last = format!("HTTP {}: {}", r.status, r.body.trim()),
                s => return Err(err(format!("POST /v1/deploy: HTTP {s}: {}", r.body.trim()))),
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Err(err(format!("POST /v1/deploy refused for 10 s: {last}")))
}

/// Follows deploy `id` (and the rollback that reverses it) until it has ended; its outcome:
/// `(deployed, rolled back, outcome)`.
async fn wait_deploy_end(cluster: &LocalCluster, id: u64) -> Result<(bool, bool, String), HarnessError> {
    let deadline = Instant::now() + DEPLOY_WAIT;
    let mut following = id;
    let mut last = None;
    while Instant::now() < deadline {
        if let Ok(v) = deploy_view(cluster).await {
            match &v.deploy {
                Some(d) if d.id == following || d.reverses == Some(following) => following = d.id,
                _ => {
                    if let Some(pos) = v.history.iter().position(|r| r.id == id) {
                        let first = &v.history[pos];
                        if first.ok && first.kind == DeployKind::Deploy {
                            return Ok((true, false, first.outcome.clone()));
                        }
                        // The rollback that reversed it: the next rollback in the history.
                        let rollback = v.history[pos + 1..]
                            .iter()
                            .find(|r| r.kind == DeployKind::Rollback && r.id > id);
                        let rollback_done = rollback.is_some() || v.deploy.is_none();
                        if rollback_done {
                            return Ok(match rollback {
                                Some(r) => (false, r.ok, r.outcome.clone()),
                                None => (false, false, first.outcome.clone()),
                            });
                        }
                    }
                }
            }
            last = Some(v);
        }
        tokio::time::sleep(POLL).await;
    }
    Err(err(format!(
        "deploy {id} did not end within {DEPLOY_WAIT:?}; last view: {}",
        last.map(|v| serde_json::to_string(&v).unwrap_or_default())
            .unwrap_or_else(|| "none".into())
    )))
}

/// Waits until the cluster is steady: ready, the active node leading, no deploy under way,
/// every data node on the current version and healthy. The epoch then.
async fn wait_steady(cluster: &LocalCluster) -> Result<u64, HarnessError> {
    let s = cluster
        .wait_for(WAIT, "a ready cluster with the active node leading", |s| {
            is_ready(s) && s.leader.is_some() && s.leader == s.active
        })
        .await?;
    let deadline = Instant::now() + WAIT;
    loop {
        let v = deploy_view(cluster).await?;
        if v.deploy.is_none()
            && v.nodes
                .iter()
                .all(|n| n.running == v.current && n.desired == v.current && n.healthy)
        {
            return Ok(s.epoch);
        }
        if Instant::now() >= deadline {
            return Err(err(format!(
                "the nodes did not settle on version {} within {WAIT:?}: {:?}",
                v.current, v.nodes
            )));
        }
        tokio::time::sleep(POLL).await;
    }
}

/// The tails of the nodes' and the proxy's logs, for an error.
fn logs(dir: &Path, e: HarnessError) -> HarnessError {
    ["a", "b", "w", "proxy"]
        .iter()
        .fold(e, |e, n| with_log(e, &dir.join(format!("{n}.log"))))
}

/// The standin side: a local cluster, a proxy in front, `n` deploys under the probe.
async fn run_standin(dir: &Path, binary: &Path, n: usize, side: &mut Side) -> Result<(), HarnessError> {
    let mut spec = Spec::new(&dir.join("cluster"), binary);
    spec.store = false;
    eprintln!(
        "bench deploy: starting a local cluster (a, b, witness; TLS, demo service) and a standin proxy"
    );
    let (cluster, _) = LocalCluster::launch(spec).await?;
    remember_services(&cluster).await;
    let epoch0 = wait_steady(&cluster).await?;
    let admins: Vec<SocketAddr> = cluster.nodes.iter().map(|n| n.admin).collect();
    let proxy = StandinProxy::start_with(
        binary,
        dir,
        &admins,
        &[("http", Protocol::Http)],
        LISTENER_SETTINGS,
    )?;
    let listen = proxy
        .listener("http")
        .ok_or_else(|| err("the proxy has no listener"))?;
    // The listener follows the active node (its control API says so), and answers.
    let active = cluster.status().await.and_then(|s| s.active);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let following = proxy.status().await.is_some_and(|s| {
            s.listeners
                .iter()
                .any(|l| l.name == "http" && l.active.is_some() && l.active == active)
        });
        if following {
            break;
        }
        if Instant::now() >= deadline {
            return Err(with_log(
                err(format!(
                    "the proxy does not follow the active node {active:?} within 15 s"
                )),
                &dir.join("proxy.log"),
            ));
        }
        tokio::time::sleep(POLL).await;
    }
    super::wait_active_via(listen, Duration::from_secs(15))
        .await
        .map_err(|e| with_log(e, &dir.join("proxy.log")))?;

    let probe = Probe::start(listen, "/", true);
    tokio::time::sleep(SETTLE).await;
    probe.reset(true);
    let bar = progress(n, "standin deploys");
    let mut current = Env {
        version: 1,
        broken: false,
    };
    let mut epoch = epoch0;
    let result = async {
        for i in 0..n {
            let (kind, env) = nth(i, &current);
            let mut changes = ServiceOverlay::default();
            match kind {
                Kind::Good => {
                    changes.env.insert("DEMO_VERSION".into(), env.version.to_string());
                }
                Kind::Broken => {
                    changes.env.insert("DEMO_BROKEN".into(), "1".into());
                }
            }
            let req = DeployRequest {
                changes,
                label: Some(match kind {
                    Kind::Good => format!("bench {i}: version {}", env.version),
                    Kind::Broken => format!("bench {i}: version {} broken", env.version),
                }),
                strategy: Strategy::Failover,
                step_timeout_ms: Some(STEP_TIMEOUT.as_millis() as u64),
                watch_ms: Some(WATCH.as_millis() as u64),
                by: Some("standin bench deploy".into()),
                ..DeployRequest::default()
            };
            let t0 = Instant::now();
            probe.reset(false);
            let id = start_deploy(&cluster, &req).await?;
            let (deployed, rolled_back, outcome) = wait_deploy_end(&cluster, id).await?;
            let ms = t0.elapsed().as_secs_f64() * 1000.0;
            let traffic = probe.current();
            remember_services(&cluster).await;
            let after = wait_steady(&cluster).await?;
            if deployed {
                current = env.clone();
            }
            side.deploys.push(DeployRun {
                kind,
                version: env.version,
                id: Some(id),
                as_expected: match kind {
                    Kind::Good => deployed,
                    Kind::Broken => rolled_back,
                },
                outcome,
                ms,
                traffic,
                switchovers: Some(after.saturating_sub(epoch)),
            });
            epoch = after;
            bar.inc(1);
            tokio::time::sleep(BETWEEN).await;
        }
        Ok::<(), HarnessError>(())
    }
    .await;
    bar.finish_and_clear();
    tokio::time::sleep(SETTLE).await;
    let (traffic, failures) = probe.stop().await;
    side.traffic = traffic;
    side.failures = failures;
    remember_services(&cluster).await;
    drop(proxy);
    drop(cluster);
    result.map_err(|e| logs(&dir.join("cluster"), with_log(e, &dir.join("proxy.log"))))
}

// ---------------------------------------------------------------------------------------
// HAProxy + script

/// One command on HAProxy's runtime API (the stats socket); its answer.
async fn haproxy_cmd(sock: &Path, cmd: &str) -> Result<String, HarnessError> {
    let talk = async {
        let mut s = tokio::net::UnixStream::connect(sock).await?;
        s.write_all(format!("{cmd}\n").as_bytes()).await?;
        let mut out = String::new();
        s.read_to_string(&mut out).await?;
        Ok::<String, std::io::Error>(out)
    };
    match tokio::time::timeout(Duration::from_secs(2), talk).await {
        Ok(Ok(out)) => Ok(out),
        Ok(Err(e)) => Err(err(format!("haproxy runtime API `{cmd}`: {e}"))),
        Err(_) => Err(err(format!("haproxy runtime API `{cmd}`: no answer within 2 s"))),
    }
}

/// A command that answers nothing when it worked (`set server ...`).
async fn haproxy_set(sock: &Path, cmd: &str) -> Result<(), HarnessError> {
    let out = haproxy_cmd(sock, cmd).await?;
    if out.trim().is_empty() {
        Ok(())
    } else {
        Err(err(format!("haproxy runtime API `{cmd}`: {}", out.trim())))
    }
}

/// Rows of a table HAProxy prints with a `# name name ...` header line (`show servers
/// state`, space separated) or `# name,name,...` (`show stat`, CSV), as name → value maps.
fn parse_table(text: &str, sep: char) -> Vec<BTreeMap<String, String>> {
    let mut header: Vec<String> = Vec::new();
    let mut rows = Vec::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if let Some(h) = line.strip_prefix('#') {
            header = split(h.trim(), sep).map(str::to_string).collect();
            continue;
        }
        if header.is_empty() {
            // `show servers state` begins with its format version.
            continue;
        }
        let row: BTreeMap<String, String> = header
            .iter()
            .cloned()
            .zip(split(line, sep).map(str::to_string))
            .collect();
        rows.push(row);
    }
    rows
}

fn split(s: &str, sep: char) -> Box<dyn Iterator<Item = &str> + '_> {
    if sep == ' ' {
        Box::new(s.split_whitespace())
    } else {
        Box::new(s.split(sep))
    }
}

/// A server's operational state in `show servers state` (`srv_op_state`: 0 stopped,
/// 1 starting, 2 running, 3 stopping) and its check status code.
fn server_op_state(text: &str, backend: &str, server: &str) -> Option<(u8, String)> {
    parse_table(text, ' ')
        .into_iter()
        .find(|r| {
            r.get("be_name").map(String::as_str) == Some(backend)
                && r.get("srv_name").map(String::as_str) == Some(server)
        })
        .and_then(|r| {
            let op = r.get("srv_op_state")?.parse().ok()?;
            Some((op, r.get("srv_check_status").cloned().unwrap_or_default()))
        })
}

/// A server's current sessions in `show stat` (`scur`).
fn server_sessions(text: &str, backend: &str, server: &str) -> Option<u64> {
    parse_table(text, ',')
        .into_iter()
        .find(|r| {
            r.get("pxname").map(String::as_str) == Some(backend)
                && r.get("svname").map(String::as_str) == Some(server)
        })
        .and_then(|r| r.get("scur")?.parse().ok())
}

const BACKEND: &str = "be";

/// HAProxy's configuration: one thread, the runtime API on `sock`, a frontend on `listen`
/// and one backend of `servers`, health checked like standin's checks.
fn haproxy_config(listen: SocketAddr, sock: &Path, servers: &[(String, SocketAddr)]) -> String {
    let mut text = format!(
        "# generated by standin bench deploy\n\
         global\n    nbthread 1\n    maxconn 4096\n    stats socket {} mode 600 level admin\n\n\
         defaults\n    mode http\n    timeout connect 1s\n    timeout client 30s\n    timeout server 30s\n    \
         timeout check 300ms\n    retries 3\n    option redispatch\n\n\
         frontend fe\n    bind {listen}\n    default_backend {BACKEND}\n\n\
         backend {BACKEND}\n    balance roundrobin\n    option httpchk GET /health\n    \
         default-server inter 100ms fall 2 rise 1\n",
        sock.display()
    );
    for (name, addr) in servers {
        text.push_str(&format!("    server {name} {addr} check\n"));
    }
    text
}

/// One backend server: a `standin demo-service` process and the environment it runs with.
struct Server {
    name: String,
    addr: SocketAddr,
    process: Option<Spawned>,
    env: Env,
}

/// What the servers run and how they are reached.
struct Backend {
    binary: PathBuf,
    dir: PathBuf,
    sock: PathBuf,
    /// The daemon address the demo services ask for a lease: nothing listens there (they
    /// answer `/echo` and `/health` without one).
    no_daemon: SocketAddr,
}

impl Backend {
    fn spawn(&self, server: &Server, env: &Env) -> Result<Spawned, HarnessError> {
        let mut cmd = Command::new(&self.binary);
        cmd.arg("demo-service")
            .arg("--listen")
            .arg(server.addr.to_string())
            .args(["--node", &server.name])
            .arg("--admin")
            .arg(self.no_daemon.to_string())
            .env_remove("DEMO_BROKEN")
            .env("DEMO_VERSION", env.version.to_string());
        if env.broken {
            cmd.env("DEMO_BROKEN", "1");
        }
        let log = self.dir.join(format!("{}.log", server.name));
        Spawned::start(&mut cmd, &log, &format!("demo-service {}", server.name))
    }

    /// Waits (at most `within`) until HAProxy says `server` is UP; `Ok(None)` if it is, else
    /// the last check status.
    async fn wait_up(&self, server: &mut Server, within: Duration) -> Result<Option<String>, HarnessError> {
        let deadline = Instant::now() + within;
        loop {
            let text = haproxy_cmd(&self.sock, &format!("show servers state {BACKEND}")).await?;
            let last = match server_op_state(&text, BACKEND, &server.name) {
                Some((2, _)) => return Ok(None),
                Some((op, check)) => format!("op state {op}, check status {check}"),
                None => format!("{} not in `show servers state`", server.name),
            };
            if server.process.as_mut().is_some_and(Spawned::exited) {
                return Ok(Some(format!("the process exited ({last})")));
            }
            if Instant::now() >= deadline {
                return Ok(Some(last));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The script's steps for one server: drain, wait for its sessions, stop, mark down,
    /// start with `env`, wait UP, ready. `Ok(None)` when it came UP (and is ready again),
    /// else why not (left drained).
    async fn update(&self, server: &mut Server, env: &Env) -> Result<Option<String>, HarnessError> {
        let name = server.name.clone();
        haproxy_set(&self.sock, &format!("set server {BACKEND}/{name} state drain")).await?;
        let deadline = Instant::now() + DRAIN_MAX;
        while Instant::now() < deadline {
            let stat = haproxy_cmd(&self.sock, "show stat").await?;
            if server_sessions(&stat, BACKEND, &name) == Some(0) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if let Some(mut p) = server.process.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(p.pid() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let deadline = Instant::now() + STOP_GRACE;
            while !p.exited() && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            // Killed here if it did not exit.
            drop(p);
        }
        haproxy_set(&self.sock, &format!("set server {BACKEND}/{name} health down")).await?;
        server.process = Some(self.spawn(server, env)?);
        server.env = env.clone();
        if let Some(why) = self.wait_up(server, UP_TIMEOUT).await? {
            return Ok(Some(format!("{name} not UP within {UP_TIMEOUT:?}: {why}")));
        }
        haproxy_set(&self.sock, &format!("set server {BACKEND}/{name} state ready")).await?;
        Ok(None)
    }

    /// The script's deploy of `env` over `servers`, in order; the outcome:
    /// `(deployed, rolled back, outcome)`.
    async fn deploy(&self, servers: &mut [Server], env: &Env) -> Result<(bool, bool, String), HarnessError> {
        let old = servers.first().map(|s| s.env.clone()).unwrap_or(Env {
            version: 1,
            broken: false,
        });
        for i in 0..servers.len() {
            let Some(why) = self.update(&mut servers[i], env).await? else {
                continue;
            };
            // Back: the failing server first, then those already changed, the last first.
            let mut failed_back = Vec::new();
            for j in std::iter::once(i).chain((0..i).rev()) {
                if let Some(e) = self.update(&mut servers[j], &old).await? {
                    failed_back.push(e);
                }
            }
            return Ok(if failed_back.is_empty() {
                (false, true, format!("rolled back: {why}"))
            } else {
                (
                    false,
                    false,
                    format!("rollback failed: {}; after: {why}", failed_back.join("; ")),
                )
            });
        }
        Ok((true, false, "deployed".into()))
    }
}

/// The HAProxy side: two demo services behind HAProxy, `n` deploys by the script.
async fn run_haproxy(dir: &Path, binary: &Path, n: usize, side: &mut Side) -> Result<(), HarnessError> {
    if !on_path("haproxy") {
        return Err(err("haproxy is not installed (Debian: apt-get install haproxy)"));
    }
    eprintln!("bench deploy: starting HAProxy in front of two demo services");
    let dir = dir.join("haproxy");
    std::fs::create_dir_all(&dir).map_err(|e| err(format!("{}: {e}", dir.display())))?;
    let ports = free_ports(4)?;
    let local = |p: u16| SocketAddr::from(([127, 0, 0, 1], p));
    let backend = Backend {
        binary: binary.to_path_buf(),
        dir: dir.clone(),
        sock: dir.join("haproxy.sock"),
        no_daemon: local(ports[3]),
    };
    let first = Env {
        version: 1,
        broken: false,
    };
    let mut servers: Vec<Server> = ["s1", "s2"]
        .iter()
        .zip(&ports[1..3])
        .map(|(name, port)| Server {
            name: name.to_string(),
            addr: local(*port),
            process: None,
            env: first.clone(),
        })
        .collect();
    for s in servers.iter_mut() {
        s.process = Some(backend.spawn(s, &first)?);
    }
    let listen = local(ports[0]);
    let named: Vec<(String, SocketAddr)> = servers.iter().map(|s| (s.name.clone(), s.addr)).collect();
    let config = dir.join("haproxy.cfg");
    std::fs::write(&config, haproxy_config(listen, &backend.sock, &named))
        .map_err(|e| err(format!("{}: {e}", config.display())))?;
    let log = dir.join("haproxy.log");
    // -db: in the foreground, so the process we hold is HAProxy itself.
    let _haproxy = Spawned::start(
        Command::new("haproxy").arg("-db").arg("-f").arg(&config),
        &log,
        "haproxy",
    )?;
    let deadline = Instant::now() + WAIT;
    while !backend.sock.exists() {
        if Instant::now() >= deadline {
            return Err(with_log(err("haproxy's runtime socket did not appear"), &log));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for s in servers.iter_mut() {
        if let Some(why) = backend.wait_up(s, WAIT).await? {
            return Err(with_log(err(format!("{} never came UP: {why}", s.name)), &log));
        }
    }

    let probe = Probe::start(listen, "/echo", false);
    tokio::time::sleep(SETTLE).await;
    probe.reset(true);
    let bar = progress(n, "haproxy+script deploys");
    let result = async {
        for i in 0..n {
            let current = servers[0].env.clone();
            let (kind, env) = nth(i, &current);
            let t0 = Instant::now();
            probe.reset(false);
            let (deployed, rolled_back, outcome) = backend.deploy(&mut servers, &env).await?;
            let ms = t0.elapsed().as_secs_f64() * 1000.0;
            side.deploys.push(DeployRun {
                kind,
                version: env.version,
                id: None,
                as_expected: match kind {
                    Kind::Good => deployed,
                    Kind::Broken => rolled_back,
                },
                outcome,
                ms,
                traffic: probe.current(),
                switchovers: None,
            });
            bar.inc(1);
            tokio::time::sleep(BETWEEN).await;
        }
        Ok::<(), HarnessError>(())
    }
    .await;
    bar.finish_and_clear();
    tokio::time::sleep(SETTLE).await;
    let (traffic, failures) = probe.stop().await;
    side.traffic = traffic;
    side.failures = failures;
    result.map_err(|e| with_log(e, &log))
}

// ---------------------------------------------------------------------------------------

/// Runs the deploy benchmark and prints the table (or JSON).
pub async fn run(o: DeployOptions) -> Result<(), HarnessError> {
    let scratch = Scratch::new("standin-bench-deploy")?;
    let binary = std::env::current_exe().map_err(|e| err(e.to_string()))?;
    let mut standin = Side::new("standin", "standin deploy (failover, behind standin proxy)");
    if let Err(e) = run_standin(scratch.path(), &binary, o.deploys, &mut standin).await {
        standin.error = Some(e.0);
    }
    standin.summarize();
    let mut haproxy = Side::new("haproxy-script", "HAProxy + drain/restart script");
    if let Err(e) = run_haproxy(scratch.path(), &binary, o.deploys, &mut haproxy).await {
        haproxy.error = Some(e.0);
    }
    haproxy.summarize();
    drop(scratch);

    let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    };
    let ratios = (!haproxy.deploys.is_empty() && !standin.deploys.is_empty()).then(|| Ratios {
        good_deploy_p50: ratio(standin.summary.good_p50_ms, haproxy.summary.good_p50_ms),
        rollback_p50: ratio(standin.summary.rollback_p50_ms, haproxy.summary.rollback_p50_ms),
        max_interruption: ratio(
            Some(standin.traffic.max_interruption_ms),
            Some(haproxy.traffic.max_interruption_ms),
        ),
    });
    let errors: Vec<String> = [&standin, &haproxy]
        .iter()
        .filter_map(|s| s.error.as_ref().map(|e| format!("{}: {e}", s.side)))
        .collect();
    let report = Report {
        command: format!("standin bench deploy --deploys {}", o.deploys),
        sides: vec![standin, haproxy],
        ratios,
        probe_interval_ms: PROBE_INTERVAL.as_millis() as u64,
        step_timeout_ms: STEP_TIMEOUT.as_millis() as u64,
        watch_ms: WATCH.as_millis() as u64,
        script_up_timeout_ms: UP_TIMEOUT.as_millis() as u64,
        script_drain_max_ms: DRAIN_MAX.as_millis() as u64,
    };
    if o.json {
        print_json(&report)?;
    } else {
        print!("{}", render(&report));
    }
    // The figures are out; a side that stopped early still makes the run fail.
    if errors.is_empty() {
        Ok(())
    } else {
        Err(err(errors.join("\n")))
    }
}

/// The table and the lines under it, as printed without `--json`.
fn render(report: &Report) -> String {
    let secs = |v: Option<f64>| {
        v.map(|ms| format!("{:.2} s", ms / 1000.0))
            .unwrap_or_else(|| "-".into())
    };
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED);
    t.set_header(vec![
        "side",
        "deploys good / broken",
        "deployed / rolled back",
        "requests",
        "failed (target 0)",
        "longest interruption (target < 100 ms)",
        "good deploy p50 / max",
        "rollback p50",
        "switchovers",
    ]);
    for s in &report.sides {
        let m = &s.summary;
        if s.deploys.is_empty() {
            let why = s.error.clone().unwrap_or_else(|| "no deploy".into());
            let first = why.lines().next().unwrap_or_default().to_string();
            t.add_row(vec![s.name.clone(), format!("not run: {first}")]);
            continue;
        }
        t.add_row(vec![
            s.name.clone(),
            format!("{} / {}", m.good, m.broken),
            format!("{} / {}", m.deployed, m.rolled_back),
            s.traffic.requests.to_string(),
            s.traffic.failed.to_string(),
            format!("{:.0} ms", s.traffic.max_interruption_ms),
            format!("{} / {}", secs(m.good_p50_ms), secs(m.good_max_ms)),
            secs(m.rollback_p50_ms),
            m.switchovers.map(|v| v.to_string()).unwrap_or_else(|| "-".into()),
        ]);
    }
    let mut out = format!("{t}\n{}\n", report.command);
    if let Some(r) = &report.ratios {
        let x = |v: Option<f64>| v.map(|v| format!("{v:.2}×")).unwrap_or_else(|| "-".into());
        out.push_str(&format!(
            "standin ÷ HAProxy+script: good deploy p50 {}, rollback p50 {}, longest interruption {}\n",
            x(r.good_deploy_p50),
            x(r.rollback_p50),
            x(r.max_interruption)
        ));
    }
    for s in &report.sides {
        if s.deploys.is_empty() {
            continue;
        }
        out.push_str(&format!(
            "{}: during deploys {} failed, longest interruption {:.0} ms{}\n",
            s.side,
            s.summary.failed_during_deploys,
            s.summary.max_interruption_during_deploys_ms,
            if s.summary.unexpected > 0 {
                format!(
                    "; {} deploy(s) did not end as expected (see --json)",
                    s.summary.unexpected
                )
            } else {
                String::new()
            }
        ));
    }
    out.push_str(&format!(
        "load: one client, GET every {} ms through the floating address, a new connection each \
         (standin: GET / through standin proxy's http failover listener, success = 200 from the \
         active node; HAProxy: GET /echo, success = 200); longest interruption = longest time \
         between two successful answers over the whole side\n\
         deploys alternate a good version (DEMO_VERSION=k) and a broken one (DEMO_BROKEN=1: /health \
         fails); standin: POST /v1/deploy, strategy failover, step timeout {} s, watch {} s; \
         script: drain, wait for no sessions (≤ {} s), SIGTERM, health down, start, wait UP \
         (≤ {} s, else roll back), ready, per server; HAProxy checks inter 100ms fall 2 rise 1\n\
         switchovers = epoch increases in /v1/status over the deploys\n",
        report.probe_interval_ms,
        report.step_timeout_ms / 1000,
        report.watch_ms / 1000,
        report.script_drain_max_ms / 1000,
        report.script_up_timeout_ms / 1000,
    ));
    for s in report.sides.iter().filter(|s| !s.failures.is_empty()) {
        let shown = s.failures.len().min(5);
        out.push_str(&format!(
            "{}: first failed requests (ms since its probe began): {}{}\n",
            s.side,
            s.failures[..shown].join(" | "),
            if s.failures.len() > shown {
                " | ... (see --json)"
            } else {
                ""
            }
        ));
    }
    for s in &report.sides {
        if let Some(e) = &s.error {
            let first = e.lines().next().unwrap_or_default();
            out.push_str(&format!("{} stopped early: {first}\n", s.side));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATE: &str = "1
# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_uweight srv_iweight srv_time_since_last_change srv_check_status srv_check_result srv_check_health srv_check_state srv_agent_state bk_f_forced_id srv_f_forced_id srv_fqdn srv_port srvrecord srv_use_ssl srv_check_port srv_check_addr srv_agent_addr srv_agent_port
3 be 1 s1 127.0.0.1 2 8 1 1 0 15 3 2 6 0 0 0 - 39101 - 0 0 - - 0
3 be 2 s2 127.0.0.1 0 0 1 1 1 17 2 0 6 0 0 0 - 39102 - 0 0 - - 0

";

    #[test]
    fn reads_the_servers_state() {
        assert_eq!(server_op_state(STATE, "be", "s1"), Some((2, "15".into())));
        assert_eq!(server_op_state(STATE, "be", "s2"), Some((0, "17".into())));
        assert_eq!(server_op_state(STATE, "be", "s3"), None);
        assert_eq!(server_op_state(STATE, "other", "s1"), None);
        assert_eq!(server_op_state("", "be", "s1"), None);
    }

    #[test]
    fn reads_current_sessions_from_show_stat() {
        let stat = "# pxname,svname,qcur,qmax,scur,smax,slim,stot,status\n\
                    fe,FRONTEND,,,3,5,9986,40,OPEN\n\
                    be,s1,0,0,2,4,,20,UP\n\
                    be,s2,0,0,0,1,,20,DRAIN\n\
                    be,BACKEND,0,0,2,4,999,40,UP\n";
        assert_eq!(server_sessions(stat, "be", "s1"), Some(2));
        assert_eq!(server_sessions(stat, "be", "s2"), Some(0));
        assert_eq!(server_sessions(stat, "be", "s9"), None);
    }

    #[test]
    fn deploys_alternate_good_and_broken_on_the_current_version() {
        let v1 = Env {
            version: 1,
            broken: false,
        };
        let (k, e) = nth(0, &v1);
        assert_eq!((k, e.version, e.broken), (Kind::Good, 2, false));
        let (k, e) = nth(1, &e);
        assert_eq!((k, e.version, e.broken), (Kind::Broken, 2, true));
    }

    #[test]
    fn the_summary_splits_good_deploys_from_rollbacks() {
        let run = |kind, ms, ok, failed, gap| DeployRun {
            kind,
            version: 2,
            id: None,
            outcome: String::new(),
            as_expected: ok,
            ms,
            traffic: Traffic {
                requests: 100,
                failed,
                max_interruption_ms: gap,
            },
            switchovers: Some(u64::from(kind == Kind::Good)),
        };
        let mut s = Side::new("standin", "standin");
        s.deploys = vec![
            run(Kind::Good, 3000.0, true, 0, 20.0),
            run(Kind::Broken, 2500.0, true, 1, 90.0),
            run(Kind::Good, 5000.0, false, 0, 15.0),
        ];
        s.summarize();
        let m = &s.summary;
        assert_eq!(
            (m.good, m.broken, m.deployed, m.rolled_back, m.unexpected),
            (2, 1, 1, 1, 1)
        );
        assert_eq!((m.good_p50_ms, m.good_max_ms), (Some(4000.0), Some(5000.0)));
        assert_eq!(m.rollback_p50_ms, Some(2500.0));
        assert_eq!(m.failed_during_deploys, 1);
        assert_eq!(m.max_interruption_during_deploys_ms, 90.0);
        assert_eq!(m.switchovers, Some(2));
        let text = render(&Report {
            command: "standin bench deploy".into(),
            sides: vec![s, Side::new("haproxy-script", "HAProxy")],
            ratios: None,
            probe_interval_ms: 10,
            step_timeout_ms: 20_000,
            watch_ms: 1000,
            script_up_timeout_ms: 2000,
            script_drain_max_ms: 2000,
        });
        assert!(
            text.contains("2 / 1") && text.contains("4.00 s / 5.00 s"),
            "{text}"
        );
        assert!(text.contains("not run: no deploy"), "{text}");
        assert!(!text.contains("first failed requests"), "{text}");
    }
}
