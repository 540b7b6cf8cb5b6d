//! What version of standin this is: recorded in the cluster state for each node, shown in
//! `status` and the store's `INFO`, `standin --version` and the `standin_build_info` metric.

/// The version recorded in the cluster state for this node.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The git commit this binary was built from (see `build.rs`; `unknown` outside a checkout).
pub const COMMIT: &str = env!("STANDIN_COMMIT");

/// The layout of the data directory (the redb tables and the encoding of what they hold),
/// recorded in it on first start. A node refuses a directory of a newer format and migrates
/// an older one (there is none yet: 1 is the first recorded format, and a directory from
/// before the record has the same layout). Raise it with any change to the tables or to the
/// encoding of log entries, snapshots or state, and add the migration.
pub const DATA_FORMAT: u32 = 1;

/// `standin --version`: the version, the commit and the data format (a test keeps the literal
/// here equal to [`DATA_FORMAT`]).
pub const LONG_VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("STANDIN_COMMIT"),
    "; data format 1)"
);

#[cfg(test)]
mod tests {
    #[test]
    fn the_long_version_names_the_data_format() {
        assert!(super::LONG_VERSION.ends_with(&format!("; data format {})", super::DATA_FORMAT)));
    }
}
