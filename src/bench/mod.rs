//! `standin bench failover` (BENCHMARKS.md §1): a local 3-node cluster at default settings, a
//! client probing the service every 10 ms, and a fault injected into the active node. Prints
//! p50/p99/max interruption per fault kind, false failovers and stale-primary observations.
//!
//! Interruption = from the fault (or, for a planned switchover, from the last answer of the
//! old active) to the first answer of the new active, as the client sees it.

pub mod probe;
pub mod store;

use std::os::unix::process::CommandExt;
use std::time::{Duration, Instant};

use comfy_table::{presets::UTF8_FULL_CONDENSED, Table};
use nix::sys::signal::Signal;
use serde::Serialize;

use crate::demo::harness::{HarnessError, LocalCluster, Spec};
use probe::Prober;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Fault {
    NodeKilled,
    ServiceKilled,
    NodeFrozen,
    Switchover,
}

impl Fault {
    fn parse(s: &str) -> Result<Fault, HarnessError> {
        Ok(match s.trim() {
            "node-killed" => Fault::NodeKilled,
            "service-killed" => Fault::ServiceKilled,
            "node-frozen" => Fault::NodeFrozen,
            "switchover" => Fault::Switchover,
            other => {
                return Err(HarnessError(format!(
                    "unknown fault {other:?}: use node-killed, service-killed, node-frozen, switchover"
                )))
            }
        })
    }
    fn name(self) -> &'static str {
        match self {
            Fault::NodeKilled => "node killed (kill -9 daemon + service)",
            Fault::ServiceKilled => "service killed (kill -9 service only)",
            Fault::NodeFrozen => "node frozen (SIGSTOP daemon)",
            Fault::Switchover => "planned switchover",
        }
    }
}

#[derive(Debug, Serialize)]
pub struct FaultResult {
    pub fault: Fault,
    pub trials: usize,
    pub failed: usize,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub max_ms: Option<f64>,
    /// Epoch changes while no fault was being injected.
    pub false_failovers: usize,
    /// Answers from an older epoch after a newer one had been seen (must be 0).
    pub stale_primary_answers: usize,
    pub samples_ms: Vec<f64>,
}

fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * (sorted.len() as f64 - 1.0)).round() as usize;
    sorted.get(rank.min(sorted.len() - 1)).copied()
}

/// Runs the failover benchmark and prints its results.
pub async fn failover(trials: usize, faults: &str, cpu_hog: bool, json: bool) -> Result<(), HarnessError> {
    let faults: Vec<Fault> = faults.split(',').map(Fault::parse).collect::<Result<_, _>>()?;
    // A busy loop in its own process group, killed when the run ends (even on error).
    let hog = if cpu_hog {
        let child = std::process::Command::new("sh")
            .args(["-c", "while :; do :; done"])
            .process_group(0)
            .spawn()
            .map_err(|e| HarnessError(format!("cannot start the CPU hog: {e}")))?;
        Some(KillOnDrop(child))
    } else {
        None
    };
    let dir = std::env::temp_dir().join(format!("standin-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let binary = std::env::current_exe().map_err(|e| HarnessError(e.to_string()))?;
    let mut results = Vec::new();
    for fault in faults {
        let spec = Spec::new(&dir.join(format!("{fault:?}")), &binary);
        let mut cluster = LocalCluster::create(spec).await?;
        cluster.start_all()?;
        cluster.wait_ready(Duration::from_secs(30)).await?;
        let r = run_fault(&mut cluster, fault, trials).await;
        drop(cluster);
        results.push(r?);
    }
    let _ = std::fs::remove_dir_all(&dir);
    drop(hog);
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&results).map_err(|e| HarnessError(e.to_string()))?
        );
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
    let ms = |v: Option<f64>| v.map(|x| format!("{x:.0} ms")).unwrap_or_else(|| "-".into());
    for r in &results {
        t.add_row(vec![
            r.fault.name().to_string(),
            r.trials.to_string(),
            r.failed.to_string(),
            ms(r.p50_ms),
            ms(r.p99_ms),
            ms(r.max_ms),
            r.false_failovers.to_string(),
            r.stale_primary_answers.to_string(),
        ]);
    }
    println!("{t}");
    println!("client probes every 10 ms; interruption = fault (or last answer of the old active) -> first answer of the new active");
    if cpu_hog {
        println!("one core saturated by a busy process throughout");
    }
    Ok(())
}

struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn run_fault(
    cluster: &mut LocalCluster,
    fault: Fault,
    trials: usize,
) -> Result<FaultResult, HarnessError> {
    let services: Vec<_> = cluster.nodes.iter().filter_map(|n| n.service).collect();
    let prober = Prober::start(services, Duration::from_millis(10));
    let mut samples = Vec::new();
    let mut failed = 0;
    let mut false_failovers = 0;
    let bar = indicatif::ProgressBar::new(trials as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar.set_message(fault.name());
    for _ in 0..trials {
        bar.inc(1);
        // Steady state first: watch for epoch changes nobody caused.
        let before = cluster.wait_ready(Duration::from_secs(30)).await?;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let steady = cluster.wait_ready(Duration::from_secs(30)).await?;
        if steady.epoch != before.epoch {
            false_failovers += 1;
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
            Fault::Switchover => {
                let api = cluster
                    .node(&old)
                    .map(|n| n.admin.to_string())
                    .unwrap_or_default();
                // 503: a leader election is in progress (leadership moving to the active node
                // after the previous trial); retry briefly.
                let mut attempts = 0;
                let r = loop {
                    let r = crate::api::client::request(
                        &api,
                        hyper::Method::POST,
                        "/v1/switchover",
                        Some("{}".into()),
                        Duration::from_secs(5),
                    )
                    .await
                    .map_err(|e| HarnessError(e.to_string()))?;
                    attempts += 1;
                    if r.status != 503 || attempts > 50 {
                        break r;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                };
                if r.status != 200 {
                    return Err(HarnessError(format!("switchover refused: {}", r.body)));
                }
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
    // Every promotion is in the replicated history: one at bootstrap, one per trial. Any more
    // is a failover nobody caused (or a failed promotion that had to be repeated).
    let data_node = cluster.nodes.iter().find(|n| !n.witness).map(|n| n.id.clone());
    if let Some(events) = match data_node {
        Some(id) => cluster.events(&id).await,
        None => None,
    } {
        let promotions = events
            .iter()
            .filter(|e| e.kind == crate::cluster::state::EventKind::Promoting)
            .count();
        let expected = 1 + samples.len();
        false_failovers = false_failovers.max(promotions.saturating_sub(expected));
    }
    let stale = prober.stale_answers();
    prober.stop().await;
    let mut sorted = samples.clone();
    sorted.sort_by(|a, b| a.total_cmp(b));
    Ok(FaultResult {
        fault,
        trials,
        failed,
        p50_ms: percentile(&sorted, 50.0),
        p99_ms: percentile(&sorted, 99.0),
        max_ms: sorted.last().copied(),
        false_failovers,
        stale_primary_answers: stale,
        samples_ms: samples,
    })
}
