//! `standin bench failover` (BENCHMARKS.md §1): a local 3-node cluster at default settings, a
//! client probing the service every 10 ms, and a fault injected into the active node. Prints
//! p50/p99/max interruption per fault kind, false failovers and stale-primary observations.
//!
//! Interruption = from the fault (or, for a planned switchover, from the last answer of the
//! old active) to the first answer of the new active, as the client sees it. With
//! `--via proxy` the client asks one address, a failover listener of standin's proxy in front
//! of the cluster (the floating address), instead of every node's service.
//!
//! Also here: what every benchmark shares to clean up after itself (a scratch directory and
//! child processes removed or killed when dropped, and [`until_interrupted`], which drops
//! them on Ctrl-C too).

pub mod backend;
pub mod backup;
pub mod deploy;
pub mod disk;
pub mod join;
pub mod proxy;
pub mod store;
pub mod upgrade;
pub mod vip;

use std::fs::File;
use std::future::Future;
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use comfy_table::{presets::UTF8_FULL_CONDENSED, Table};
use nix::sys::signal::Signal;
use serde::Serialize;

use crate::lab::harness::{HarnessError, LocalCluster, Spec};
use crate::lab::probe::Prober;
use proxy::{Protocol, StandinProxy};

/// Runs a benchmark until it ends or SIGINT/SIGTERM arrives. On a signal the benchmark's
/// future is dropped, so its guards ([`Scratch`], [`Spawned`], the local cluster) remove and
/// kill what it started before the process exits.
pub async fn until_interrupted<T>(
    bench: impl Future<Output = Result<T, HarnessError>>,
) -> Result<T, HarnessError> {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt()))
    else {
        return Err(HarnessError("cannot install signal handlers".into()));
    };
    tokio::select! {
        r = bench => r,
        _ = int.recv() => Err(HarnessError("interrupted (SIGINT); everything started was stopped".into())),
        _ = term.recv() => Err(HarnessError("terminated (SIGTERM); everything started was stopped".into())),
    }
}

/// A scratch directory under the system's temp dir, removed when dropped.
pub struct Scratch(PathBuf);

impl Scratch {
    pub fn new(prefix: &str) -> Result<Scratch, HarnessError> {
        Scratch::new_in(&std::env::temp_dir(), prefix)
    }

    /// A scratch directory under `parent`.
    pub fn new_in(parent: &Path, prefix: &str) -> Result<Scratch, HarnessError> {
        let dir = parent.join(format!("{prefix}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(|e| HarnessError(format!("{}: {e}", dir.display())))?;
        Ok(Scratch(dir))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        // For looking into a run afterwards: its configs and logs stay where they were.
        if std::env::var_os("STANDIN_BENCH_KEEP").is_some() {
            eprintln!("kept {} (STANDIN_BENCH_KEEP is set)", self.0.display());
            return;
        }
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A child process in its own process group, killed (the whole group) and reaped when dropped.
pub struct Spawned(Child);

impl Spawned {
    /// Starts `cmd` with stdin closed, stdout discarded and stderr appended to `log`.
    pub fn start(cmd: &mut Command, log: &Path, what: &str) -> Result<Spawned, HarnessError> {
        let log = File::options()
            .create(true)
            .append(true)
            .open(log)
            .map_err(|e| HarnessError(format!("{}: {e}", log.display())))?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .process_group(0)
            .spawn()
            .map_err(|e| HarnessError(format!("cannot start {what}: {e}")))?;
        Ok(Spawned(child))
    }

    pub fn pid(&self) -> u32 {
        self.0.id()
    }

    /// Whether the process has exited (it is reaped if so).
    pub fn exited(&mut self) -> bool {
        matches!(self.0.try_wait(), Ok(Some(_)))
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(self.0.id() as i32), Signal::SIGKILL);
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `n` distinct free loopback ports (all held until all are chosen).
pub(crate) fn free_ports(n: usize) -> Result<Vec<u16>, HarnessError> {
    let held: Vec<std::net::TcpListener> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| HarnessError(e.to_string())))
        .collect::<Result<_, _>>()?;
    held.iter()
        .map(|l| Ok(l.local_addr().map_err(|e| HarnessError(e.to_string()))?.port()))
        .collect()
}

/// Where the failover benchmark's client sends its requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Via {
    /// To every node's service address at once; the answer from the active one counts.
    Nodes,
    /// To one address: a `tcp` failover listener of standin's proxy in front of the cluster.
    Proxy,
    /// To the virtual IP, from a client in its own network namespace (see [`vip`]).
    Vip,
}

impl Via {
    pub fn parse(s: &str) -> Result<Via, HarnessError> {
        match s {
            "nodes" => Ok(Via::Nodes),
            "proxy" => Ok(Via::Proxy),
            "vip" => Ok(Via::Vip),
            other => Err(HarnessError(format!(
                "unknown --via {other:?}: use nodes, proxy or vip"
            ))),
        }
    }
}

/// The timings standin runs with in a failover benchmark.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Profile {
    /// The defaults: heartbeat 100 ms, failure timeout 500 ms, lease 400 ms.
    Default,
    /// heartbeat 20 ms, failure timeout 100 ms, lease 80 ms.
    Fast,
}

impl Profile {
    pub fn parse(s: &str) -> Result<Profile, HarnessError> {
        match s {
            "default" => Ok(Profile::Default),
            "fast" => Ok(Profile::Fast),
            other => Err(HarnessError(format!(
                "unknown --profile {other:?}: use default or fast"
            ))),
        }
    }

    /// The `[timing]` section for every node's config ("" for the defaults).
    pub fn toml(self) -> &'static str {
        match self {
            Profile::Default => "",
            Profile::Fast => {
                "\n[timing]\nheartbeat-interval = \"20ms\"\nfailure-timeout = \"100ms\"\nlease = \"80ms\"\n"
            }
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Profile::Default => "defaults: heartbeat 100 ms, failure timeout 500 ms, lease 400 ms",
            Profile::Fast => "fast: heartbeat 20 ms, failure timeout 100 ms, lease 80 ms",
        }
    }
}

/// What `standin bench failover` runs.
#[derive(Debug, Clone)]
pub struct FailoverOptions {
    pub trials: usize,
    /// Comma separated fault names.
    pub faults: String,
    /// Keep one core busy throughout.
    pub cpu_hog: bool,
    pub via: Via,
    /// With `Via::Vip`: run keepalived's rows too.
    pub keepalived: bool,
    pub profile: Profile,
    pub json: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Fault {
    NodeKilled,
    ServiceKilled,
    NodeFrozen,
    /// Every cluster path of the node cut (loopback: its relays; VIP lab: its switch port).
    NodeIsolated,
    Switchover,
}

impl Fault {
    pub fn parse(s: &str) -> Result<Fault, HarnessError> {
        Ok(match s.trim() {
            "node-killed" => Fault::NodeKilled,
            "service-killed" => Fault::ServiceKilled,
            "node-frozen" => Fault::NodeFrozen,
            "node-isolated" => Fault::NodeIsolated,
            "switchover" => Fault::Switchover,
            other => {
                return Err(HarnessError(format!(
                    "unknown fault {other:?}: use node-killed, service-killed, node-frozen, node-isolated, switchover"
                )))
            }
        })
    }
    fn name(self) -> &'static str {
        match self {
            Fault::NodeKilled => "node killed (kill -9 daemon + service)",
            Fault::ServiceKilled => "service killed (kill -9 service only)",
            Fault::NodeFrozen => "node frozen (SIGSTOP daemon)",
            Fault::NodeIsolated => "node isolated (every path cut)",
            Fault::Switchover => "planned switchover",
        }
    }
}

/// The interruptions of a series of trials, as the client measured them.
#[derive(Debug, Serialize)]
pub struct Interruptions {
    pub trials: usize,
    /// Trials in which the client saw no move within the time allowed.
    pub failed: usize,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub max_ms: Option<f64>,
    /// Every measured interruption, in trial order.
    pub samples_ms: Vec<f64>,
}

impl Interruptions {
    pub fn new(trials: usize, failed: usize, samples_ms: Vec<f64>) -> Interruptions {
        let mut sorted = samples_ms.clone();
        sorted.sort_by(|a, b| a.total_cmp(b));
        Interruptions {
            trials,
            failed,
            p50_ms: percentile(&sorted, 50.0),
            p99_ms: percentile(&sorted, 99.0),
            max_ms: sorted.last().copied(),
            samples_ms,
        }
    }

    /// Table cells: trials, failed, p50, p99, max.
    fn cells(&self) -> [String; 5] {
        let ms = |v: Option<f64>| v.map(|x| format!("{x:.0} ms")).unwrap_or_else(|| "-".into());
        [
            self.trials.to_string(),
            self.failed.to_string(),
            ms(self.p50_ms),
            ms(self.p99_ms),
            ms(self.max_ms),
        ]
    }
}

/// Prints a benchmark's results as pretty JSON (`--json`).
pub(crate) fn print_json<T: Serialize + ?Sized>(results: &T) -> Result<(), HarnessError> {
    let text = serde_json::to_string_pretty(results).map_err(|e| HarnessError(e.to_string()))?;
    println!("{text}");
    Ok(())
}

/// The progress bar every benchmark shows on a terminal (hidden when stderr is not one).
pub(crate) fn progress(len: usize, msg: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(len as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar.set_message(msg.to_string());
    bar
}

#[derive(Debug, Serialize)]
pub struct FaultResult {
    pub fault: Fault,
    /// Where the client sent its requests.
    pub via: Via,
    #[serde(flatten)]
    pub interruptions: Interruptions,
    /// Failovers nobody caused: promotions in the replicated history beyond one at bootstrap
    /// and one per trial (every promotion is there, so this is the authoritative count).
    pub false_failovers: usize,
    /// Two status reads 300 ms apart before a fault that disagreed on the epoch. Not a failover
    /// by itself: a read may come from a view that is a moment behind.
    pub quiet_window_epoch_changes: usize,
    /// Answers from an older epoch after a newer one had been seen (must be 0).
    pub stale_primary_answers: usize,
}

fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * (sorted.len() as f64 - 1.0)).round() as usize;
    sorted.get(rank.min(sorted.len() - 1)).copied()
}

/// Runs the failover benchmark and prints its results.
pub async fn failover(o: FailoverOptions) -> Result<(), HarnessError> {
    let FailoverOptions {
        trials,
        cpu_hog,
        via,
        keepalived,
        profile,
        json,
        ..
    } = o;
    let faults: Vec<Fault> = o.faults.split(',').map(Fault::parse).collect::<Result<_, _>>()?;
    let scratch = Scratch::new("standin-bench")?;
    // A busy loop in its own process group, killed when the run ends (even on error).
    let _hog = if cpu_hog {
        Some(Spawned::start(
            Command::new("sh").args(["-c", "while :; do :; done"]),
            &scratch.path().join("hog.log"),
            "the CPU hog",
        )?)
    } else {
        None
    };
    if via == Via::Vip {
        return tokio::task::spawn_blocking(move || vip::failover(trials, faults, keepalived, profile, json))
            .await
            .map_err(|e| HarnessError(format!("the benchmark thread: {e}")))?;
    }
    let binary = std::env::current_exe().map_err(|e| HarnessError(e.to_string()))?;
    let mut results = Vec::new();
    for fault in faults {
        let dir = scratch.path().join(format!("{fault:?}"));
        let mut spec = Spec::new(&dir, &binary);
        spec.extra_toml.push_str(profile.toml());
        // Relays on every path between every pair, so that one node can be cut off.
        spec.partitionable = fault == Fault::NodeIsolated;
        let mut cluster = LocalCluster::create(spec).await?;
        cluster.start_all()?;
        cluster.wait_ready(Duration::from_secs(30)).await?;
        // The client's addresses: every node's service, or the proxy's one listener.
        let (targets, _proxy): (Vec<SocketAddr>, Option<StandinProxy>) = match via {
            // (`Via::Vip` ran on its own thread and returned above.)
            Via::Nodes | Via::Vip => (cluster.nodes.iter().filter_map(|n| n.service).collect(), None),
            Via::Proxy => {
                let admins: Vec<SocketAddr> = cluster.nodes.iter().map(|n| n.admin).collect();
                let p = StandinProxy::start(&binary, &dir, &admins, &[("service", Protocol::Tcp)])?;
                let listen = p
                    .listener("service")
                    .ok_or_else(|| HarnessError("the proxy has no listener".into()))?;
                wait_active_via(listen, Duration::from_secs(15))
                    .await
                    .map_err(|e| proxy::with_log(e, &dir.join("proxy.log")))?;
                (vec![listen], Some(p))
            }
        };
        let r = run_fault(&mut cluster, fault, trials, targets, via).await;
        drop(cluster);
        results.push(r?);
    }
    if json {
        print_json(&results)?;
        return Ok(());
    }
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED);
    t.set_header(vec![
        "fault",
        "trials",
        "failed",
        "p50",
        "p99",
        "max",
        "false failovers",
        "stale answers",
    ]);
    for r in &results {
        let mut row = vec![r.fault.name().to_string()];
        row.extend(r.interruptions.cells());
        row.extend([r.false_failovers.to_string(), r.stale_primary_answers.to_string()]);
        t.add_row(row);
    }
    println!("{t}");
    match via {
        Via::Nodes => println!("client probes every node's service every 10 ms"),
        Via::Proxy => println!(
            "client probes every 10 ms through a standin proxy failover listener (tcp) in front of the cluster, \
             a new connection per request"
        ),
        Via::Vip => {}
    }
    println!("interruption = fault (or last answer of the old active) -> first answer of the new active");
    println!(
        "false failovers = promotions in the replicated history beyond one at bootstrap and one per trial"
    );
    for r in results.iter().filter(|r| r.quiet_window_epoch_changes > 0) {
        println!(
            "{}: {} time(s) two status reads 300 ms apart before a fault disagreed on the epoch \
             (with no extra promotion in the history: a view a moment behind)",
            r.fault.name(),
            r.quiet_window_epoch_changes
        );
    }
    println!("standin timings: {}", profile.name());
    if cpu_hog {
        println!("one core saturated by a busy process throughout");
    }
    Ok(())
}

/// Waits until a request through `addr` is answered by an active node.
pub(crate) async fn wait_active_via(addr: SocketAddr, timeout: Duration) -> Result<(), HarnessError> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if crate::lab::harness::probe_service(addr, Duration::from_millis(500))
            .await
            .is_some()
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(HarnessError(format!(
        "no answer from an active node through the proxy at {addr} within {timeout:?}"
    )))
}

/// `POST /v1/switchover` to the admin API at `api`; a 503 (a leader election in progress,
/// e.g. leadership moving to the active node after the previous trial) is retried briefly.
pub(crate) async fn request_switchover(api: &str) -> Result<(), HarnessError> {
    let mut attempts = 0;
    loop {
        let r = crate::api::client::request(
            api,
            hyper::Method::POST,
            "/v1/switchover",
            Some("{}".into()),
            Duration::from_secs(5),
        )
        .await
        .map_err(|e| HarnessError(e.to_string()))?;
        attempts += 1;
        if r.status == 200 {
            return Ok(());
        }
        if r.status != 503 || attempts > 50 {
            return Err(HarnessError(format!("switchover refused: {}", r.body)));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Failovers nobody caused. Every promotion is in the replicated history: one at bootstrap,
/// one per trial that moved the active node (`moved`); any more is a failover nobody caused
/// (or a failed promotion that had to be repeated). Without the whole history (unreadable, or
/// trimmed by retention) the status reads are all there is: `fallback`, their disagreements.
pub(crate) fn extra_promotions(
    events: Option<Vec<crate::cluster::state::Event>>,
    moved: usize,
    fallback: usize,
) -> usize {
    match events {
        Some(events) if events.first().is_some_and(|e| e.seq == 0) => {
            let promotions = events
                .iter()
                .filter(|e| e.kind == crate::cluster::state::EventKind::Promoting)
                .count();
            promotions.saturating_sub(1 + moved)
        }
        _ => fallback,
    }
}

async fn run_fault(
    cluster: &mut LocalCluster,
    fault: Fault,
    trials: usize,
    targets: Vec<SocketAddr>,
    via: Via,
) -> Result<FaultResult, HarnessError> {
    let prober = Prober::start(targets, Duration::from_millis(10));
    let mut samples = Vec::new();
    let mut failed = 0;
    let mut quiet_window = 0;
    let bar = progress(trials, fault.name());
    for _ in 0..trials {
        bar.inc(1);
        // Steady state first: watch for epoch changes nobody caused.
        let before = cluster.wait_ready(Duration::from_secs(30)).await?;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let steady = cluster.wait_ready(Duration::from_secs(30)).await?;
        if steady.epoch != before.epoch {
            quiet_window += 1;
        }
        let old = steady
            .active
            .clone()
            .ok_or_else(|| HarnessError("no active node".into()))?;
        let old_epoch = steady.epoch;
        let t0 = Instant::now();
        match fault {
            Fault::NodeKilled => cluster.kill(&old).await?,
            Fault::ServiceKilled => {
                let pid = cluster
                    .lease(&old)
                    .await
                    .and_then(|l| l.service_pid)
                    .ok_or_else(|| HarnessError(format!("no service pid for {old}")))?;
                nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pid as i32), Signal::SIGKILL)
                    .map_err(|e| HarnessError(format!("kill service: {e}")))?;
            }
            Fault::NodeFrozen => cluster.signal_daemon(&old, Signal::SIGSTOP)?,
            Fault::NodeIsolated => cluster.partition(&old),
            Fault::Switchover => {
                let api = cluster
                    .node(&old)
                    .map(|n| n.admin.to_string())
                    .unwrap_or_default();
                request_switchover(&api).await?;
            }
        }
        let got = prober
            .wait_new_epoch(old_epoch, t0, Duration::from_secs(10))
            .await;
        match got {
            Some(d) => samples.push(d.as_secs_f64() * 1000.0),
            None => failed += 1,
        }
        // Recover: the old node comes back as a standby.
        match fault {
            Fault::NodeKilled => cluster.start(&old)?,
            Fault::NodeFrozen => cluster.signal_daemon(&old, Signal::SIGCONT)?,
            Fault::NodeIsolated => cluster.heal(),
            Fault::ServiceKilled | Fault::Switchover => {}
        }
        cluster
            .wait_for(
                Duration::from_secs(30),
                "the old active back as a healthy standby",
                |s| {
                    s.epoch > old_epoch
                        && s.nodes
                            .iter()
                            .any(|n| n.id == old && n.role == "standby" && n.healthy && n.in_sync)
                },
            )
            .await?;
    }
    bar.finish_and_clear();
    let data_node = cluster.nodes.iter().find(|n| !n.witness).map(|n| n.id.clone());
    let events = match data_node {
        Some(id) => cluster.events(&id).await,
        None => None,
    };
    let extra_promotions = extra_promotions(events, samples.len(), quiet_window);
    let stale = prober.stale_answers();
    prober.stop().await;
    Ok(FaultResult {
        fault,
        via,
        interruptions: Interruptions::new(trials, failed, samples),
        false_failovers: extra_promotions,
        quiet_window_epoch_changes: quiet_window,
        stale_primary_answers: stale,
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::Profile;
    use crate::config::Config;

    use crate::config::tests::MINIMAL;

    /// What `standin bench failover --profile` writes into every node's config is valid and
    /// says what the profile's name says; the default profile writes nothing.
    #[test]
    fn the_benchmark_timing_profiles_are_valid_configs() {
        let ms = Duration::from_millis;
        assert_eq!(Profile::Default.toml(), "");
        let c = Config::parse(&format!("{MINIMAL}{}", Profile::Fast.toml())).expect("valid");
        assert_eq!(
            (
                c.timing.heartbeat_interval,
                c.timing.failure_timeout,
                c.timing.lease
            ),
            (ms(20), ms(100), ms(80))
        );
    }
}
