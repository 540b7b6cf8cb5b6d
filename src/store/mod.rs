//! A Redis-compatible key-value store replicated through the Raft log.
//!
//! - [`resp`] is the wire codec (RESP2/RESP3, inline commands, Redis's size limits);
//! - [`cmd`] parses client commands into [`cmd::Op`]s (what is proposed to the log);
//! - [`db`] holds the keyspace and applies ops deterministically at the log entry's time;
//! - [`reply`] is the protocol-independent answer, encoded by the wire codec;
//! - [`glob`] is Redis's glob matcher (KEYS, SCAN MATCH);
//! - [`replicate`] gets ops into the log (group commit) and keeps reads linearizable;
//! - [`server`] is the per-connection protocol handling.
//!
//! The Redis 7 semantics and error texts are the reference; where this store differs
//! (SCAN cursor meaning, `f64` instead of `long double` in INCRBYFLOAT) the item says so.

pub mod cmd;
pub mod db;
pub mod glob;
pub mod replicate;
pub mod reply;
pub mod resp;
pub mod server;

#[cfg(test)]
mod tests;

use cmd::Op;
use db::Db;
use replicate::GroupKind;
use reply::Reply;

pub use crate::sizes::{DEFAULT_MAX_REQUEST_SIZE, MAX_ENTRY_BYTES, MAX_REQUEST_SIZE};

/// Groups are joined into one log entry only up to this many bytes of ops (a single larger
/// group makes an entry of its own), so that many large pipelined writes never add up to an
/// entry that cannot replicate within openraft's append timeout.
pub const ENTRY_TARGET_BYTES: usize = 1024 * 1024;

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

impl Op {
    /// Whether the op can add data (refused with OOM above `maxmemory`, like Redis's
    /// `denyoom` commands).
    pub fn may_grow(&self) -> bool {
        self.is_write()
            && !matches!(
                self,
                Op::Del { .. }
                    | Op::GetDel { .. }
                    | Op::Pop { .. }
                    | Op::HDel { .. }
                    | Op::SRem { .. }
                    | Op::Persist { .. }
                    | Op::FlushDb
                    | Op::DelExpired { .. }
            )
    }
}
