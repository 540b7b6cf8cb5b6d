//! Builds the status model from a running node: its replicated state, Raft progress, what
//! the transport hears, its checks and certificates.

use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use futures::FutureExt;

use super::{CheckStatusJson, NodeStatus, Status, StatusSource, SwitchoverStatus};
use crate::cluster::rpc::{Request, Response as RpcResponse};
use crate::config::NodeKind;
use crate::node::shared::Node;

/// This node's own view, as JSON.
pub fn local_status(node: &Node) -> Result<String, String> {
    serde_json::to_string(&build_status(node)).map_err(|e| e.to_string())
}

pub fn build_status(node: &Node) -> Status {
    let cfg = &node.config;
    let info = node.cluster.info();
    let me = node.cluster.me().to_string();
    let local_probes = node.health.as_ref().map(|h| h.snapshot()).unwrap_or_default();
    let (active, epoch, promotion, switchover, records, backups) = node.cluster.sm.read(|d| {
        (
            d.state.active.clone(),
            d.state.epoch,
            d.state.promotion.clone(),
            d.state.switchover.clone(),
            d.state.nodes.clone(),
            d.backup.reports.clone(),
        )
    });
    let now = Instant::now();
    let members = node.cluster.members();
    let lost = node.cluster.reverts.get();
    let nodes = members
        .iter()
        .map(|m| {
            let rec = records.get(&m.id).cloned().unwrap_or_default();
            let role = if m.kind == NodeKind::Witness {
                "witness"
            } else if active.as_deref() == Some(m.id.as_str()) {
                if promotion.as_ref().is_some_and(|p| p.node == m.id) {
                    "promoting"
                } else {
                    "active"
                }
            } else {
                "standby"
            };
            let (last_heard, paths) = if m.id == me {
                (Some(now), Vec::new())
            } else {
                (
                    node.cluster.transport.last_heard(&m.id),
                    node.cluster.transport.paths(&m.id),
                )
            };
            let matched = if m.id == me {
                info.last_log_index
            } else {
                info.matched.get(&m.id).copied().unwrap_or(0)
            };
            let lag = if info.is_leader {
                info.last_log_index.saturating_sub(matched)
            } else {
                0
            };
            let reachable = last_heard.is_some_and(|t| cfg.timing.is_heard(t, now));
            // A node nobody hears is shown as such, whatever it last reported.
            let role = if reachable { role } else { "unreachable" };
            NodeStatus {
                id: m.id.clone(),
                kind: m.kind,
                priority: m.priority,
                role: role.to_string(),
                // A witness runs no service and no checks: its health is its own liveness, so
                // `standin_node_healthy` of a live witness is 1 (a plain alert on 0 means down).
                healthy: reachable && (m.kind == NodeKind::Witness || rec.healthy),
                in_sync: if info.is_leader {
                    reachable && lag <= cfg.timing.max_lag
                } else {
                    reachable
                },
                lag,
                reachable,
                last_heard_ms_ago: last_heard.map(|t| now.duration_since(t).as_millis() as u64),
                maintenance: rec.maintenance,
                drain: rec.drain,
                version: rec.version.clone(),
                admin: m.admin.to_string(),
                service: m.service_address.map(|a| a.to_string()),
                store: m.store_address.map(|a| a.to_string()),
                checks: rec
                    .checks
                    .iter()
                    .map(|(name, c)| {
                        let probes = (m.id == node.cluster.me())
                            .then(|| local_probes.iter().find(|p| &p.name == name))
                            .flatten();
                        CheckStatusJson {
                            name: name.clone(),
                            healthy: c.healthy,
                            detail: c.detail.clone(),
                            since_unix_ms: c.since_unix_ms,
                            recent: probes.map(|p| p.recent.clone()).unwrap_or_default(),
                            latency_ms: probes.and_then(|p| p.last_latency_ms),
                        }
                    })
                    .collect(),
                paths,
                cert_not_after_unix: if m.id == me {
                    node.tls.as_ref().map(|t| t.not_after())
                } else {
                    node.cluster.transport.peer_cert_not_after(&m.id)
                },
                raft: node.cluster.raft_role(&m.id).to_string(),
                site: m.site.clone(),
                lost_log: lost.contains_key(&m.id),
                resources: if m.id == me {
                    node.cluster.space.own().map(|mut r| {
                        r.store_used_memory_bytes = node
                            .config
                            .store
                            .is_some()
                            .then(|| node.cluster.sm.read(|d| d.kv.used_memory() as u64));
                        r
                    })
                } else {
                    node.cluster.space.peer(&m.id)
                },
                backup: backups.get(&m.id).map(|r| super::NodeBackup {
                    last_success_unix_ms: r.last_success_unix_ms,
                    size_bytes: r.last_size_bytes,
                    path: r.last_path.clone(),
                    failures_total: r.failures_total,
                    last_error: r.last_error.clone(),
                }),
            }
        })
        .collect();
    let waiting = node
        .coordinator
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .waiting
        .clone();
    Status {
        epoch,
        active,
        leader: info.leader.clone(),
        term: info.term,
        view_from: me,
        // Current only if this node knows a leader and hears a quorum: a follower that does is
        // at most a few milliseconds behind (what `/v1/watch` streams); a leader cut off from
        // the quorum (openraft 0.9 does not step down by itself) does not speak for the
        // cluster.
        stale: {
            let leader_heard = info.leader.as_deref().is_some_and(|l| {
                l == node.cluster.me()
                    || node
                        .cluster
                        .transport
                        .last_heard(l)
                        .is_some_and(|t| cfg.timing.is_heard(t, Instant::now()))
            });
            !leader_heard || nodes_heard(node) * 2 <= node.cluster.voters().len()
        },
        waiting,
        switchover: switchover.map(|s| SwitchoverStatus {
            target: s.target,
            cause: s.cause,
            requested_unix_ms: s.requested_unix_ms,
        }),
        commit_index: info.committed,
        nodes,
        transport: if node.tls.is_some() {
            "mutual-tls"
        } else {
            "insecure"
        }
        .to_string(),
        membership_drift: crate::cluster::members::drift(&cfg.members, &members),
        membership_warnings: crate::cluster::members::even_voters(node.cluster.voters().len())
            .into_iter()
            .collect(),
        config_shared: node.live.get().shared_digests(),
    }
}

/// Voters heard within the failure timeout, this node included.
fn nodes_heard(node: &Node) -> usize {
    let me = node.cluster.me();
    node.cluster
        .voters()
        .iter()
        .filter(|m| {
            m.id == me
                || node
                    .cluster
                    .transport
                    .last_heard(&m.id)
                    .is_some_and(|t| node.config.timing.is_heard(t, Instant::now()))
        })
        .count()
}

/// The cluster's view: from the leader if it can be reached, else our own (stale).
pub async fn cluster_status(node: &Node) -> Status {
    let info = node.cluster.info();
    if let Some(leader) = info.leader.filter(|l| l != node.cluster.me()) {
        if let Ok(RpcResponse::Json(s)) = node
            .cluster
            .transport
            .call(&leader, &Request::Status, Duration::from_millis(500))
            .await
        {
            if let Ok(status) = serde_json::from_str::<Status>(&s) {
                return status;
            }
        }
    }
    build_status(node)
}

impl StatusSource for Node {
    fn cluster_status(&self) -> BoxFuture<'_, Status> {
        async move { cluster_status(self).await }.boxed()
    }

    fn own_status(&self) -> Status {
        build_status(self)
    }
}
