//! What version of standin this is: recorded in the cluster state for each node, shown in
//! `status` and the store's `INFO`, `standin --version` and the `standin_build_info` metric.

/// The version recorded in the cluster state for this node.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The git commit this binary was built from (see `build.rs`; `unknown` outside a checkout).
pub const COMMIT: &str = env!("STANDIN_COMMIT");

/// `standin --version`: the version and the commit.
pub const LONG_VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("STANDIN_COMMIT"),
    ")"
);
