//! The key space: Redis commands as replicated operations, and the deterministic state
//! machine that applies them. Pure: no I/O, no clock reads, no tokio, and nothing of the
//! crate above it (only `sizes`), so `cluster/` can carry and apply ops without importing the
//! store's server side.
//!
//! - [`cmd`] is [`cmd::Op`], what is proposed to the log (its encoding is on disk and on the
//!   wire);
//! - [`families`] holds each Redis command family (strings, hashes, lists, sets, keys,
//!   expiry, server): its commands' parsing and their application to the key space, and the
//!   dispatch over them ([`parse`], [`Db::apply`](db::Db::apply));
//! - [`db`] is the key space itself: values, expiry, SCAN order and memory accounting;
//! - [`reply`] is the protocol-independent answer, encoded by the store's wire codec;
//! - [`args`] and [`num`] are the argument helpers and the number parsers and formatters
//!   (Redis's `string2ll` is the one integer parser, also the codec's);
//! - [`glob`] is Redis's glob matcher (KEYS, SCAN MATCH).
//!
//! A group of ops ([`GroupKind`]) is the unit the store proposes; [`apply_group`] is how the
//! Raft state machine applies one, and [`StoreError`] is why a group could not be served.
//!
//! The Redis 7 semantics and error texts are the reference; where this store differs
//! (SCAN cursor meaning, `f64` instead of `long double` in INCRBYFLOAT) the item says so.

pub mod args;
pub mod cmd;
pub mod db;
pub mod families;
pub mod glob;
pub mod num;
pub mod reply;

#[cfg(test)]
mod tests;

pub use families::parse;

use cmd::Op;
use db::Db;
use reply::Reply;

/// What a group of ops is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum GroupKind {
    /// Pipelined commands: one reply per op.
    Pipeline,
    /// MULTI/EXEC: one array reply.
    Exec,
}

/// Why a store request failed, with whether the client may retry safely.
#[derive(Debug, Clone, thiserror::Error, serde::Serialize, serde::Deserialize)]
pub enum StoreError {
    /// Nothing was proposed: safe to retry.
    #[error("no leader (election in progress or quorum lost)")]
    NoLeader,
    /// The write may or may not have been applied.
    #[error("write outcome unknown: {0}")]
    Unknown(String),
    #[error("{0}")]
    Refused(String),
}

impl StoreError {
    pub fn retryable(&self) -> bool {
        matches!(self, StoreError::NoLeader)
    }
}

/// The size of `ops` as they are encoded in a log entry or a forwarded write.
pub fn encoded_len(ops: &[Op]) -> usize {
    // Encoding into a byte counter cannot fail for these types; if it ever did, the group is
    // treated as too large rather than as free.
    postcard::experimental::serialized_size(ops).unwrap_or(usize::MAX)
}

/// Applies one group of a `Command::Store` log entry: a pipeline gives one reply per op, a
/// MULTI/EXEC block one array reply (all its ops applied at once, in order).
pub fn apply_group(kv: &mut Db, ops: &[Op], kind: GroupKind, now_ms: i64) -> Vec<Reply> {
    let replies = ops.iter().map(|op| kv.apply(op, now_ms));
    match kind {
        GroupKind::Pipeline => replies.collect(),
        GroupKind::Exec => vec![Reply::Array(replies.collect())],
    }
}
