//! Prometheus metrics at `GET /metrics` (OpenMetrics text), one registry per node.
//!
//! Two kinds: *live* metrics updated where things happen (store operations and their latency),
//! kept in the node's [`NodeMetrics`]; and *state* metrics read at scrape time from what the
//! node already knows (the replicated state and its counters, Raft progress, heartbeat paths,
//! local checks, the lease), so they can never drift from `standin status`.

use std::time::Instant;

use prometheus_client::encoding::text::{encode_eof, encode_registry};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::metrics::{l, Labels};

/// The whole exposition: the node's live metrics, then the state read now.
pub fn render(node: &super::AdminContext) -> Result<String, std::fmt::Error> {
    let mut out = String::new();
    node.metrics.encode(&mut out)?;
    encode_registry(&mut out, &state_registry(node))?;
    encode_eof(&mut out)?;
    Ok(out)
}

fn gauge_family(reg: &mut Registry, name: &str, help: &str) -> Family<Labels, Gauge> {
    let f = Family::<Labels, Gauge>::default();
    reg.register(name, help, f.clone());
    f
}

fn fgauge_family(
    reg: &mut Registry,
    name: &str,
    help: &str,
    unit: Option<prometheus_client::registry::Unit>,
) -> Family<Labels, Gauge<f64, std::sync::atomic::AtomicU64>> {
    let f = Family::<Labels, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
    match unit {
        Some(u) => reg.register_with_unit(name, help, u, f.clone()),
        None => reg.register(name, help, f.clone()),
    }
    f
}

/// Metrics read from the node's current knowledge, in a registry built for this scrape.
fn state_registry(node: &super::AdminContext) -> Registry {
    use prometheus_client::registry::Unit;
    let mut reg = Registry::with_prefix("standin");
    let status = node.status.own_status();
    let info = node.cluster.info();
    let me = node.cluster.me().to_string();

    let up = gauge_family(
        &mut reg,
        "node_info",
        "1 per cluster member, with its kind and version",
    );
    let role = gauge_family(
        &mut reg,
        "node_role",
        "1 for each node's current role (active, promoting, standby, witness, unreachable)",
    );
    let healthy = gauge_family(
        &mut reg,
        "node_healthy",
        "1 if the node and all its checks are healthy",
    );
    let in_sync = gauge_family(
        &mut reg,
        "node_in_sync",
        "1 if the node's Raft log is within max-lag",
    );
    let lag = gauge_family(
        &mut reg,
        "node_lag_entries",
        "Raft log entries the node is behind the leader",
    );
    let reachable = gauge_family(
        &mut reg,
        "node_reachable",
        "1 if heard on some path within the failure timeout",
    );
    let maintenance = gauge_family(&mut reg, "node_maintenance", "1 if the node is in maintenance");
    let drain = gauge_family(
        &mut reg,
        "node_drain",
        "1 if the node is drained from load balancing",
    );
    for n in &status.nodes {
        let id = n.id.as_str();
        up.get_or_create(&l(&[
            ("node", id),
            ("kind", &n.kind.to_string()),
            ("version", &n.version),
        ]))
        .set(1);
        role.get_or_create(&l(&[("node", id), ("role", &n.role)])).set(1);
        healthy
            .get_or_create(&l(&[("node", id)]))
            .set(i64::from(n.healthy));
        in_sync
            .get_or_create(&l(&[("node", id)]))
            .set(i64::from(n.in_sync));
        lag.get_or_create(&l(&[("node", id)])).set(n.lag as i64);
        reachable
            .get_or_create(&l(&[("node", id)]))
            .set(i64::from(n.reachable));
        maintenance
            .get_or_create(&l(&[("node", id)]))
            .set(i64::from(n.maintenance));
        drain.get_or_create(&l(&[("node", id)])).set(i64::from(n.drain));
    }

    resource_gauges(&mut reg, &status);
    // The alarms raised now (the replicated set: the same on every node).
    let alarm = gauge_family(
        &mut reg,
        "alarm",
        "1 for each alarm raised now, by key (disk-low:a, no-in-sync-standby, ...)",
    );
    for key in node
        .cluster
        .sm
        .read(|d| d.state.alarms.keys().cloned().collect::<Vec<_>>())
    {
        alarm.get_or_create(&l(&[("alarm", &key)])).set(1);
    }

    let cluster = gauge_family(&mut reg, "cluster", "Cluster-wide figures from this node's view");
    cluster
        .get_or_create(&l(&[("figure", "epoch")]))
        .set(status.epoch as i64);
    cluster
        .get_or_create(&l(&[("figure", "has_active")]))
        .set(i64::from(status.active.is_some()));
    cluster
        .get_or_create(&l(&[("figure", "stale_view")]))
        .set(i64::from(status.stale));
    let raft = gauge_family(&mut reg, "raft", "This node's Raft figures");
    raft.get_or_create(&l(&[("figure", "term")]))
        .set(info.term as i64);
    raft.get_or_create(&l(&[("figure", "is_leader")]))
        .set(i64::from(info.is_leader));
    raft.get_or_create(&l(&[("figure", "last_log_index")]))
        .set(info.last_log_index as i64);
    raft.get_or_create(&l(&[("figure", "applied_index")]))
        .set(info.last_applied as i64);
    raft.get_or_create(&l(&[("figure", "committed_index")]))
        .set(info.committed as i64);

    // Heartbeat paths from this node to each peer.
    let path_up = gauge_family(&mut reg, "path_up", "1 if the heartbeat path to a peer is up");
    let path_rtt = fgauge_family(
        &mut reg,
        "path_rtt",
        "Smoothed heartbeat round trip",
        Some(Unit::Seconds),
    );
    let path_loss = fgauge_family(
        &mut reg,
        "path_loss_ratio",
        "Share of recent heartbeats unanswered",
        None,
    );
    for n in &status.nodes {
        for p in &n.paths {
            let labels = l(&[("peer", &n.id), ("address", &p.address)]);
            path_up.get_or_create(&labels).set(i64::from(p.up));
            if let Some(rtt) = p.rtt_ms {
                path_rtt.get_or_create(&labels).set(rtt / 1000.0);
            }
            path_loss.get_or_create(&labels).set(p.loss);
        }
    }

    // Every node's checks as reported to the cluster (the supervised process is "process").
    let ok = gauge_family(
        &mut reg,
        "check_healthy",
        "1 if the check passes (after rise/fall)",
    );
    for n in &status.nodes {
        for c in &n.checks {
            ok.get_or_create(&l(&[("node", &n.id), ("check", &c.name)]))
                .set(i64::from(c.healthy));
        }
    }
    // This node's own probes.
    if let Some(h) = &node.health {
        let latency = fgauge_family(
            &mut reg,
            "check_latency",
            "Latency of the check's last probe",
            Some(Unit::Seconds),
        );
        let recent = fgauge_family(
            &mut reg,
            "check_recent_success_ratio",
            "Share of the check's recent probes that passed",
            None,
        );
        for c in h.snapshot() {
            let labels = l(&[("node", &me), ("check", &c.name)]);
            if let Some(ms) = c.last_latency_ms {
                latency.get_or_create(&labels).set(ms / 1000.0);
            }
            if !c.recent.is_empty() {
                let passed = c.recent.iter().filter(|ok| **ok).count();
                recent
                    .get_or_create(&labels)
                    .set(passed as f64 / c.recent.len() as f64);
            }
        }
    }

    // What this node is doing, and for how long it may still act.
    let local = *node.local.borrow();
    let acting = gauge_family(
        &mut reg,
        "acting",
        "1 for what this node itself is doing right now",
    );
    let doing = match local.acting {
        crate::node::shared::Acting::Active => "active",
        crate::node::shared::Acting::Promoting => "promoting",
        crate::node::shared::Acting::Standby => "standby",
    };
    acting
        .get_or_create(&l(&[("node", &me), ("acting", doing)]))
        .set(1);
    let lease = fgauge_family(
        &mut reg,
        "lease_remaining",
        "Time left on this node's lease while it acts as active (0 otherwise)",
        Some(Unit::Seconds),
    );
    let left = local
        .lease_until
        .map_or(0.0, |u| u.saturating_duration_since(Instant::now()).as_secs_f64());
    lease.get_or_create(&l(&[("node", &me)])).set(left);

    // TLS: certificates' time to expiry (this node's own, and each peer's as last shown in a
    // handshake), whether the transport runs without TLS, and refused peers.
    let expiry = fgauge_family(
        &mut reg,
        "tls_cert_expiry",
        "Seconds until the node's TLS certificate expires (negative: expired)",
        Some(Unit::Seconds),
    );
    let now = crate::tls::unix_now();
    for n in &status.nodes {
        if let Some(t) = n.cert_not_after_unix {
            expiry.get_or_create(&l(&[("node", &n.id)])).set((t - now) as f64);
        }
    }
    let insecure = gauge_family(
        &mut reg,
        "tls_insecure",
        "1 if this node talks to its peers without TLS ([tls] insecure = true)",
    );
    insecure
        .get_or_create(&Vec::new())
        .set(i64::from(node.tls.is_none()));
    reg.register_collector(Box::new(RefusedCollector(node.cluster.transport.refusals())));

    // Replicated counters (they survive restarts and are the same on every node).
    let stats = node.cluster.sm.read(|d| d.state.stats.clone());
    reg.register_collector(Box::new(StatsCollector(stats)));
    node.cluster
        .sm
        .read(|d| super::backup::register_metrics(&mut reg, &d.backup, crate::clock::unix_ms()));
    reg
}

/// Each node's data disk and memory, as it measured them (this node's own, and on the leader
/// what each member last reported: see `cluster::resources`).
fn resource_gauges(reg: &mut Registry, status: &crate::status::Status) {
    let free = gauge_family(
        reg,
        "data_disk_free_bytes",
        "Bytes free to the daemon on the file system of the node's data directory",
    );
    let total = gauge_family(
        reg,
        "data_disk_total_bytes",
        "Size of the file system of the node's data directory",
    );
    let dir = gauge_family(
        reg,
        "data_dir_bytes",
        "Bytes the node's data directory (the redb files) takes on disk",
    );
    let growth = gauge_family(
        reg,
        "data_dir_growth_bytes_per_hour",
        "Growth of the node's data directory over the last hour, in bytes per hour",
    );
    let rss = gauge_family(
        reg,
        "process_resident_memory_bytes",
        "Resident memory of the node's standin daemon (VmRSS)",
    );
    let store = gauge_family(
        reg,
        "store_used_memory_bytes",
        "Bytes of keys and values in the node's store (what maxmemory counts)",
    );
    let refused = gauge_family(
        reg,
        "store_writes_refused_disk_low",
        "1 while the node refuses store writes because its data disk has less free space than \
         node.min-free-disk",
    );
    let low = gauge_family(
        reg,
        "data_disk_low",
        "1 while the node's data disk has less free space than node.disk-low-warning",
    );
    let clamp = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
    for n in &status.nodes {
        let Some(r) = &n.resources else { continue };
        let labels = l(&[("node", &n.id)]);
        if let Some(v) = r.disk_free_bytes {
            free.get_or_create(&labels).set(clamp(v));
        }
        if let Some(v) = r.disk_total_bytes {
            total.get_or_create(&labels).set(clamp(v));
        }
        if let Some(v) = r.data_dir_bytes {
            dir.get_or_create(&labels).set(clamp(v));
        }
        if let Some(v) = r.data_dir_growth_bytes_per_hour {
            growth.get_or_create(&labels).set(v);
        }
        if let Some(v) = r.resident_memory_bytes {
            rss.get_or_create(&labels).set(clamp(v));
        }
        if let Some(v) = r.store_used_memory_bytes {
            store.get_or_create(&labels).set(clamp(v));
        }
        refused.get_or_create(&labels).set(i64::from(r.writes_refused));
        low.get_or_create(&labels).set(i64::from(r.disk_low));
    }
}

/// Inbound peer connections and frames refused by this node, by reason.
#[derive(Debug)]
struct RefusedCollector(Vec<(crate::cluster::transport::Refusal, u64)>);

impl prometheus_client::collector::Collector for RefusedCollector {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::DescriptorEncoder<'_>,
    ) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeMetric;
        let mut refused = encoder.encode_descriptor(
            "peer_refused",
            "Peer connections or frames refused: handshake (no or a foreign or expired \
             certificate, or not TLS), not-member (a certificate for an id that is not a member), \
             wrong-id (a frame claiming another member than its certificate names)",
            None,
            prometheus_client::metrics::MetricType::Counter,
        )?;
        for (reason, n) in &self.0 {
            ConstCounter::new(*n).encode(refused.encode_family(&l(&[("reason", reason.label())]))?)?;
        }
        Ok(())
    }
}

/// Exports the replicated [`crate::cluster::state::Stats`] as counters.
#[derive(Debug)]
struct StatsCollector(crate::cluster::state::Stats);

impl prometheus_client::collector::Collector for StatsCollector {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::DescriptorEncoder<'_>,
    ) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeMetric;
        let mut events = encoder.encode_descriptor(
            "events",
            "Cluster events since the cluster was created, by kind and cause (promoted = a \
             failover or switchover that completed; its cause says which)",
            None,
            prometheus_client::metrics::MetricType::Counter,
        )?;
        for (key, n) in &self.0.events {
            let (kind, cause) = key.split_once('/').unwrap_or((key.as_str(), ""));
            let labels = l(&[("kind", kind), ("cause", cause)]);
            ConstCounter::new(*n).encode(events.encode_family(&labels)?)?;
        }
        let mut hooks = encoder.encode_descriptor(
            "hook_runs",
            "Hook runs since the cluster was created, by hook and outcome",
            None,
            prometheus_client::metrics::MetricType::Counter,
        )?;
        for (key, n) in &self.0.hooks {
            let (hook, outcome) = key.split_once('/').unwrap_or((key.as_str(), ""));
            let labels = l(&[("hook", hook), ("outcome", outcome)]);
            ConstCounter::new(*n).encode(hooks.encode_family(&labels)?)?;
        }
        Ok(())
    }
}
