//! The node's live metrics: counters and histograms updated where things happen (store
//! operations, their latency, group commit, refused AUTHs), in one registry per node (no
//! global). The API's `/metrics` writes them first, then the state it reads at scrape time
//! (`api::metrics`).

use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

pub type Labels = Vec<(&'static str, String)>;

/// The node's live metrics and the registry that holds them.
#[derive(Debug)]
pub struct NodeMetrics {
    registry: Registry,
    store_ops: Family<Labels, Counter>,
    store_latency: Family<Labels, Histogram>,
    entry_groups: Histogram,
    auth_failures: Counter,
}

/// What a store request was, for the metrics.
#[derive(Debug, Clone, Copy)]
pub enum StoreKind {
    Write,
    Read,
    /// A local read a `READONLY` connection asked for.
    StaleRead,
}

impl StoreKind {
    fn label(self) -> &'static str {
        match self {
            StoreKind::Write => "write",
            StoreKind::Read => "read",
            StoreKind::StaleRead => "stale-read",
        }
    }
}

impl Default for NodeMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl NodeMetrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("standin");
        let store_ops = Family::<Labels, Counter>::default();
        registry.register(
            "store_ops",
            "Store operations served by this node, by kind and outcome",
            store_ops.clone(),
        );
        let store_latency = Family::<Labels, Histogram>::new_with_constructor(|| {
            // 100 µs .. ~13 s.
            Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
                0.0001, 2.0, 18,
            ))
        });
        registry.register_with_unit(
            "store_request_latency",
            "Latency of one pipelined group of store operations, from parsing to reply",
            prometheus_client::registry::Unit::Seconds,
            store_latency.clone(),
        );
        // 1 .. 1024: MAX_GROUPS_PER_ENTRY.
        let entry_groups = Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
            1.0, 2.0, 11,
        ));
        registry.register(
            "store_entry_groups",
            "Client groups (pipelines, transactions) carried by each store log entry this node \
             proposed as leader: group commit at work",
            entry_groups.clone(),
        );
        registry.register(
            "build",
            "The standin build this node runs (always 1; its labels say which)",
            prometheus_client::metrics::info::Info::new(vec![
                ("version", crate::version::VERSION.to_string()),
                ("commit", crate::version::COMMIT.to_string()),
            ]),
        );
        let auth_failures = Counter::default();
        registry.register(
            "store_auth_failures",
            "Store AUTH (and HELLO AUTH) attempts refused for a wrong password",
            auth_failures.clone(),
        );
        NodeMetrics {
            registry,
            store_ops,
            store_latency,
            entry_groups,
            auth_failures,
        }
    }

    /// Records one store log entry proposed with `groups` client groups in it.
    pub fn store_entry(&self, groups: usize) {
        self.entry_groups.observe(groups as f64);
    }

    /// Records one store AUTH refused for a wrong password.
    pub fn store_auth_failed(&self) {
        self.auth_failures.inc();
    }

    /// Records one group of `ops` store operations that took `took`.
    pub fn store_done(&self, kind: StoreKind, ops: usize, ok: bool, took: Duration) {
        let outcome = if ok { "ok" } else { "error" };
        self.store_ops
            .get_or_create(&vec![
                ("kind", kind.label().to_string()),
                ("outcome", outcome.to_string()),
            ])
            .inc_by(ops as u64);
        self.store_latency
            .get_or_create(&vec![("kind", kind.label().to_string())])
            .observe(took.as_secs_f64());
    }

    /// Writes the live metrics (the exposition's first part; the API adds the state read at
    /// scrape time).
    pub fn encode(&self, out: &mut String) -> std::fmt::Result {
        prometheus_client::encoding::text::encode_registry(out, &self.registry)
    }
}

/// A label set from name/value pairs.
pub fn l(pairs: &[(&'static str, &str)]) -> Labels {
    pairs.iter().map(|(k, v)| (*k, v.to_string())).collect()
}
