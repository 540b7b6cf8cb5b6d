//! Hot restart of the node daemon (`standin restart`, `POST /v1/restart`, SIGUSR2): the
//! program is replaced in place by the binary now on disk, with no failover, no epoch change
//! and the service left running (see [`crate::handover`] for what travels across).
//!
//! ```text
//!   request -> preflight of the new binary (config, node id, formats)   fail: keep running, say why
//!           -> Raft leadership moved to another voter, a fresh lease    (bounded waits)
//!           -> role, lease, reporter, coordinator, servers stopped; service and VIP keeper frozen
//!           -> Raft stopped (log closed) -> execve(new binary, same pid)
//!   new program: listeners, service, keeper, role and lease taken over; NodeResumed committed
//!           start fails before taking over -> execve(previous program) with the same document
//! ```

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::shared::{Acting, Node};

/// How long the new binary gets to pass its preflight.
const PREFLIGHT_TIMEOUT: Duration = Duration::from_secs(10);

/// Most bytes read from the preflight's output.
const PREFLIGHT_OUTPUT: usize = 16 * 1024;

/// What `standin preflight` prints (one JSON line) when the binary can take over this node.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Preflight {
    pub version: String,
    pub commit: String,
    pub data_format: u32,
    pub handover_format: u32,
    pub node: String,
    /// The addresses the configuration file asks to listen on (admin, cluster paths, store):
    /// they must be the running ones, since the sockets are handed over as they are.
    #[serde(default)]
    pub listen: Vec<String>,
    /// The peer protocol versions the new program speaks (oldest, newest): it must share one
    /// with this program, which the other members speak too during a rolling restart.
    #[serde(default)]
    pub protocol: (u32, u32),
}

/// The addresses a node listens on, in hand-over order: admin, every cluster path, the store.
pub fn listen_addresses(cfg: &crate::config::Config) -> Vec<String> {
    let me = cfg.me();
    let mut out = vec![me.admin.to_string()];
    out.extend(
        cfg.node
            .listen
            .as_ref()
            .unwrap_or(&me.addresses)
            .iter()
            .map(|a| a.to_string()),
    );
    out.extend(cfg.store.as_ref().map(|s| s.listen.to_string()));
    out
}

/// `standin preflight --config FILE --node ID --data-format N`, run by the daemon with the
/// binary that is about to replace it: can this program take over node `node`, whose data
/// directory has format `data_format`, with this configuration?
pub fn preflight(config: &Path, node: &str, data_format: u32) -> Result<Preflight, String> {
    let cfg = crate::config::Config::load(config).map_err(|e| e.to_string())?;
    if cfg.node.id != node {
        return Err(format!(
            "{} is the configuration of node {}, not of {node}",
            config.display(),
            cfg.node.id
        ));
    }
    // The certificates load as the new program will load them (files readable, key matching,
    // the certificate naming this member).
    if let Some(files) = cfg.tls.files() {
        crate::tls::Tls::load(files, Some(node)).map_err(|e| e.to_string())?;
    }
    if data_format > crate::version::DATA_FORMAT {
        return Err(format!(
            "the data directory has format {data_format}, newer than this binary's {}",
            crate::version::DATA_FORMAT
        ));
    }
    Ok(Preflight {
        version: crate::version::VERSION.into(),
        commit: crate::version::COMMIT.into(),
        data_format: crate::version::DATA_FORMAT,
        handover_format: crate::handover::FORMAT,
        node: node.into(),
        listen: listen_addresses(&cfg),
        protocol: (crate::version::PROTOCOL_MIN, crate::version::PROTOCOL),
    })
}

/// Runs `binary preflight` for this node: the new program must start, read the configuration
/// file, accept the data format and speak our handover format. Bounded in time and output.
pub async fn run_preflight(
    binary: &Path,
    config_path: &Path,
    running: &crate::config::Config,
) -> Result<Preflight, String> {
    let node = running.node.id.as_str();
    let mut cmd = tokio::process::Command::new(binary);
    cmd.arg("preflight")
        .arg("--config")
        .arg(config_path)
        .arg("--node")
        .arg(node)
        .arg("--data-format")
        .arg(crate::version::DATA_FORMAT.to_string())
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    let out = match tokio::time::timeout(PREFLIGHT_TIMEOUT, cmd.output()).await {
        Err(_) => {
            return Err(format!(
                "{} preflight did not finish within {PREFLIGHT_TIMEOUT:?}",
                binary.display()
            ))
        }
        Ok(Err(e)) => return Err(format!("cannot run {}: {e}", binary.display())),
        Ok(Ok(out)) => out,
    };
    let text = |b: &[u8]| {
        String::from_utf8_lossy(&b[..b.len().min(PREFLIGHT_OUTPUT)])
            .trim()
            .to_string()
    };
    if !out.status.success() {
        let err = text(&out.stderr);
        return Err(format!(
            "{} refused to take over ({}): {}",
            binary.display(),
            out.status,
            if err.is_empty() { "no message".into() } else { err }
        ));
    }
    let stdout = text(&out.stdout);
    let p: Preflight = serde_json::from_str(stdout.lines().last().unwrap_or("")).map_err(|e| {
        format!(
            "{} preflight answered something unreadable ({e}): {stdout}",
            binary.display()
        )
    })?;
    if p.handover_format != crate::handover::FORMAT || p.node != node {
        return Err(format!(
            "{} speaks handover format {} for node {}, this daemon {} for {node}",
            binary.display(),
            p.handover_format,
            p.node,
            crate::handover::FORMAT
        ));
    }
    let (lo, hi) = p.protocol;
    if hi < crate::version::PROTOCOL_MIN || lo > crate::version::PROTOCOL {
        return Err(format!(
            "{} speaks peer protocol {lo}..{hi}, this program {}..{}: no version in common with the cluster",
            binary.display(),
            crate::version::PROTOCOL_MIN,
            crate::version::PROTOCOL
        ));
    }
    let want = listen_addresses(running);
    if p.listen != want {
        return Err(format!(
            "the configuration file now listens on {} instead of {}: an address change needs a full restart",
            p.listen.join(", "),
            want.join(", ")
        ));
    }
    Ok(p)
}

/// Before the hand-over: if this node leads Raft, asks another voter to take over leadership
/// and waits (bounded) until one has, then until the lease (if this node holds one) has been
/// renewed by the new leader. The new program then starts as a follower under a stable
/// leader, with a fresh lease, instead of leaving the cluster leaderless for an election.
pub async fn prepare(node: &Arc<Node>) {
    let me = node.cluster.me().to_string();
    let timing = node.config.timing.clone();
    let bound = timing.coordination_retry();
    if node.cluster.info().leader.as_deref() == Some(me.as_str()) {
        // openraft's voters refuse a candidate for a leader lease (the longest election
        // timeout) after their last vote change: moving leadership right after an election
        // would leave the cluster leaderless until that runs out, and the lease with it (seen
        // under load: 'lease expired: demoting'). Wait until the term has been stable for
        // twice that, and for a lease renewal just before asking, so the whole transfer runs
        // on a fresh lease. Both waits are bounded.
        let settle = Duration::from_millis(timing.raft_ms().2.saturating_mul(2));
        let stop = crate::config::later(Instant::now(), bound);
        let mut seen = (node.cluster.info().term, node.cluster.info().leader);
        let mut since = Instant::now();
        while Instant::now() < stop {
            let i = node.cluster.info();
            if (i.term, i.leader.clone()) != seen {
                seen = (i.term, i.leader);
                since = Instant::now();
            } else if since.elapsed() >= settle {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        wait_renewal(node, timing.lease).await;
        let candidates: Vec<String> = node
            .cluster
            .voters()
            .iter()
            .filter(|m| m.id != me && m.kind == crate::config::NodeKind::Data)
            .map(|m| m.id.clone())
            .collect();
        let deadline = crate::config::later(Instant::now(), bound);
        'moved: for to in candidates.iter().cycle().take(candidates.len() * 3) {
            tracing::info!(to = %to, "hot restart: moving raft leadership away first");
            if let Err(e) = node.cluster.transfer_leadership(to, timing.failure_timeout).await {
                tracing::debug!(to = %to, error = %e, "leadership transfer did not complete");
            }
            let wait = crate::config::later(Instant::now(), timing.failure_timeout);
            while Instant::now() < wait.min(deadline) {
                if node.cluster.info().leader.as_deref().is_some_and(|l| l != me) {
                    break 'moved;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            if Instant::now() >= deadline {
                break;
            }
        }
        match node.cluster.info().leader {
            Some(l) if l != me => tracing::info!(leader = %l, "hot restart: raft leadership moved"),
            _ => tracing::warn!("hot restart: raft leadership did not move; the others elect a leader while this node restarts"),
        }
    }
    if node.local.borrow().acting == Acting::Active {
        let renewed = wait_renewal(node, timing.lease).await;
        // A lease-aware service (one that asks `/v1/lease`) should hold that fresh lease too
        // before the admin API pauses: it then acts through the hand-over on it. Bounded by a
        // few of its polling rounds; a service that never asks is not waited for.
        let told = |node: &Node| {
            node.handed_out
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .map(|(u, _)| u)
        };
        if let (Some(fresh), Some(_)) = (renewed, told(node)) {
            let wait = crate::config::later(
                Instant::now(),
                timing.heartbeat_interval.max(Duration::from_millis(100)),
            );
            let margin = timing.lease_margin();
            while Instant::now() < wait {
                if told(node).is_some_and(|u| u + margin >= fresh) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
    }
}

/// While this node acts as active: waits (at most `within`) for its lease to be renewed and
/// returns the new end; `None` if it was not (or the node is not active).
async fn wait_renewal(node: &Arc<Node>, within: Duration) -> Option<Instant> {
    if node.local.borrow().acting != Acting::Active {
        return None;
    }
    let before = node.lease.borrow().map(|l| l.until);
    let deadline = crate::config::later(Instant::now(), within);
    while Instant::now() < deadline {
        let now = node.lease.borrow().map(|l| l.until);
        if now.is_some() && now != before {
            return now;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    None
}
