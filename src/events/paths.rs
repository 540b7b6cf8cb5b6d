//! Reports this node's heartbeat paths into the replicated state: each tick, every path whose
//! state differs from what the cluster last recorded for it is written (one entry for all of
//! them). Comparing with the replicated state, not a local memory, makes a lost write harmless:
//! it is simply made again.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::clock::unix_ms;
use crate::cluster::state::{Change, Command};
use crate::cluster::Cluster;
use crate::config::Config;

/// Records this node's path changes each heartbeat until `cancel` fires.
pub async fn run(cluster: Cluster, config: Arc<Config>, cancel: CancellationToken) {
    let me = cluster.me().to_string();
    let started = Instant::now();
    // Paths need a moment to connect: "down" is only reported after that.
    let grace = config.timing.settle_grace();
    let mut tick = tokio::time::interval(config.timing.path_watch_tick());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let recorded = cluster.sm.read(|d| {
            d.state
                .nodes
                .get(&me)
                .map(|r| r.paths.clone())
                .unwrap_or_default()
        });
        let at = unix_ms();
        let mut changes: Vec<Change> = Vec::new();
        // The peers of the live membership (a member added at run time too).
        let peers = cluster.transport.peer_ids();
        for peer in &peers {
            for p in cluster.transport.paths(peer) {
                if !p.up && started.elapsed() < grace {
                    continue;
                }
                let key = format!("{peer} {}", p.address);
                if recorded.get(&key) != Some(&p.up) {
                    changes.push(Change::Path {
                        node: me.clone(),
                        peer: peer.clone(),
                        address: p.address.clone(),
                        up: p.up,
                        at,
                    });
                }
            }
        }
        if changes.is_empty() {
            continue;
        }
        let cmd = Command::batch(changes);
        // Best effort: without a reachable leader this fails and the next tick tries again.
        match tokio::time::timeout(Duration::from_secs(1), cluster.write(cmd)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::debug!(error = %e, "could not record a path change yet"),
            Err(_) => tracing::debug!("recording a path change timed out"),
        }
    }
}
