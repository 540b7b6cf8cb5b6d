//! A Redis-compatible key-value store replicated through the Raft log: the server side of the
//! key space in [`crate::kv`].
//!
//! - [`resp`] is the wire codec (RESP2/RESP3, inline commands, Redis's size limits);
//! - [`replicate`] gets ops into the log (group commit) and keeps reads linearizable;
//! - [`server`] is the per-connection protocol handling.
//!
//! The ops, the key space and the replies live in [`crate::kv`] (below `cluster/`, which
//! carries and applies them).

pub mod replicate;
pub mod resp;
pub mod server;

pub use crate::sizes::{DEFAULT_MAX_REQUEST_SIZE, MAX_ENTRY_BYTES, MAX_REQUEST_SIZE};

/// Groups are joined into one log entry only up to this many bytes of ops (a single larger
/// group makes an entry of its own), so that many large pipelined writes never add up to an
/// entry that cannot replicate within openraft's append timeout.
pub const ENTRY_TARGET_BYTES: usize = 1024 * 1024;
