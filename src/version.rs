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

/// The newest version of the peer protocol (the messages of `cluster::rpc` and their
/// encoding, the log entries they carry included) this build speaks. Each peer connection
/// negotiates the highest version both sides speak (TLS ALPN `standin/<v>`, or an in-band
/// hello without TLS; see `cluster::protocol`), so nodes of versions N and N+1 work together
/// during a rolling upgrade. Raise it with any change of an encoding on the wire, keep the
/// old encoding for connections that negotiate an older version, and raise
/// [`PROTOCOL_MIN`] only when a version is dropped.
pub const PROTOCOL: u32 = 1;

/// The oldest peer protocol version this build still speaks. A build from before negotiation
/// speaks 1 only.
pub const PROTOCOL_MIN: u32 = 1;

/// `standin --version`: the version, the commit, the data format and the peer protocol range
/// (a test keeps the literals here equal to [`DATA_FORMAT`], [`PROTOCOL_MIN`] and
/// [`PROTOCOL`]).
pub const LONG_VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("STANDIN_COMMIT"),
    "; data format 1; peer protocol 1..1)"
);

#[cfg(test)]
mod tests {
    #[test]
    fn the_long_version_names_the_data_format_and_protocols() {
        assert!(super::LONG_VERSION.ends_with(&format!(
            "; data format {}; peer protocol {}..{})",
            super::DATA_FORMAT,
            super::PROTOCOL_MIN,
            super::PROTOCOL
        )));
    }
}
