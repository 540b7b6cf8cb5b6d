//! What version of standin this is: recorded in the cluster state for each node, shown in
//! `status` and the store's `INFO`.

/// The version recorded in the cluster state for this node.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
