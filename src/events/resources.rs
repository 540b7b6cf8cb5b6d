//! The alarms about a node's readiness besides its log: its data disk and its memory, judged
//! from the figures each node measured with its own thresholds
//! ([`crate::cluster::resources::Resources`]): `disk-low:NODE` (warning) below
//! `disk-low-warning`, `disk-critical:NODE` (critical) while the node refuses store writes
//! (below `min-free-disk`), `memory-high:NODE` (warning) above `memory-warning`.

use std::collections::{BTreeMap, BTreeSet};

use crate::cluster::resources::human_bytes;
use crate::status::Status;

/// The disk and memory alarms of the nodes in `status` that are heard (`reachable`): a node
/// not heard is its own alarm, and its last figures may be old.
pub fn alarms(status: &Status, reachable: &BTreeSet<&str>) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for n in &status.nodes {
        if !reachable.contains(n.id.as_str()) {
            continue;
        }
        let Some(r) = &n.resources else { continue };
        let free = r.disk_free_bytes.map_or_else(|| "?".to_string(), human_bytes);
        let of = r
            .disk_total_bytes
            .map(|t| format!(" of {}", human_bytes(t)))
            .unwrap_or_default();
        if r.disk_low {
            out.insert(
                format!("disk-low:{}", n.id),
                format!(
                    "{free} free{of} on the data disk of {}, below node.disk-low-warning ({}); store writes are refused below node.min-free-disk ({})",
                    n.id,
                    human_bytes(r.disk_low_warning),
                    human_bytes(r.min_free_disk)
                ),
            );
        }
        if r.writes_refused {
            out.insert(
                format!("disk-critical:{}", n.id),
                format!(
                    "{free} free{of} on the data disk of {}, below node.min-free-disk ({}): it refuses store writes until space is freed",
                    n.id,
                    human_bytes(r.min_free_disk)
                ),
            );
        }
        if r.memory_high {
            let rss = r
                .resident_memory_bytes
                .map_or_else(|| "?".to_string(), human_bytes);
            out.insert(
                format!("memory-high:{}", n.id),
                format!(
                    "{} uses {rss} of resident memory, above node.memory-warning ({})",
                    n.id,
                    human_bytes(r.memory_warning)
                ),
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::resources::Resources;
    use crate::config::NodeKind;
    use crate::status::NodeStatus;

    fn node(id: &str, resources: Option<Resources>) -> NodeStatus {
        NodeStatus {
            id: id.into(),
            kind: NodeKind::Data,
            priority: 100,
            role: "standby".into(),
            healthy: true,
            in_sync: true,
            lag: 0,
            reachable: true,
            last_heard_ms_ago: Some(10),
            maintenance: false,
            drain: false,
            version: String::new(),
            admin: String::new(),
            service: None,
            store: None,
            checks: Vec::new(),
            paths: Vec::new(),
            cert_not_after_unix: None,
            raft: "voter".into(),
            site: None,
            lost_log: false,
            resources,
            backup: None,
        }
    }

    fn status(nodes: Vec<NodeStatus>) -> Status {
        Status {
            epoch: 1,
            active: Some("a".into()),
            leader: Some("a".into()),
            term: 1,
            view_from: "a".into(),
            stale: false,
            waiting: None,
            switchover: None,
            commit_index: 1,
            nodes,
            transport: String::new(),
            membership_drift: Vec::new(),
            membership_warnings: Vec::new(),
            config_shared: BTreeMap::new(),
        }
    }

    #[test]
    fn disk_and_memory_alarms_follow_each_nodes_own_judgement() {
        let mib = 1024 * 1024;
        let fine = Resources {
            disk_free_bytes: Some(500 * mib),
            disk_total_bytes: Some(1000 * mib),
            min_free_disk: 64 * mib,
            disk_low_warning: 128 * mib,
            ..Resources::default()
        };
        let low = Resources {
            disk_free_bytes: Some(100 * mib),
            disk_low: true,
            ..fine.clone()
        };
        let full = Resources {
            disk_free_bytes: Some(10 * mib),
            disk_low: true,
            writes_refused: true,
            ..fine.clone()
        };
        let fat = Resources {
            resident_memory_bytes: Some(900 * mib),
            memory_warning: 512 * mib,
            memory_high: true,
            ..fine.clone()
        };
        let s = status(vec![
            node("a", Some(fine)),
            node("b", Some(low)),
            node("c", Some(full)),
            node("d", Some(fat)),
            node("e", None),
        ]);
        let all: BTreeSet<&str> = ["a", "b", "c", "d", "e"].into_iter().collect();
        let out = alarms(&s, &all);
        let keys: Vec<&str> = out.keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            ["disk-critical:c", "disk-low:b", "disk-low:c", "memory-high:d"],
            "{out:?}"
        );
        let detail = &out["disk-low:b"];
        assert!(
            detail.contains("100.0 MiB free of 1000.0 MiB") && detail.contains("node.disk-low-warning"),
            "{detail}"
        );
        assert!(out["disk-critical:c"].contains("node.min-free-disk"), "{out:?}");
        assert!(out["memory-high:d"].contains("900.0 MiB"), "{out:?}");
        assert_eq!(super::super::alarms::severity_of("disk-critical:c"), "critical");
        assert_eq!(super::super::alarms::severity_of("disk-low:b"), "warning");
        assert_eq!(super::super::alarms::severity_of("memory-high:d"), "warning");
        // A node not heard: its old figures raise nothing.
        let heard: BTreeSet<&str> = ["a"].into_iter().collect();
        assert!(alarms(&s, &heard).is_empty());
    }
}
