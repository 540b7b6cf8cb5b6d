//! What a command answers, independent of the wire protocol.
//!
//! [`Reply`] is produced by [`Db::apply`](super::db::Db::apply) on every replica, so it is part of
//! the replicated state machine's output: it must be serializable (the leader may ship the reply
//! of an applied entry back to the proposer) and comparable (determinism tests). The RESP codec
//! maps it to RESP2 or RESP3 frames; e.g. [`Reply::Map`] becomes a flat array in RESP2.
//!
//! The error texts of Redis 7 are kept here as constants so that every command uses the exact
//! same wording (clients and test suites match on them).

use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// `WRONGTYPE` error: the key holds a value of another type.
pub const WRONGTYPE: &str = "WRONGTYPE Operation against a key holding the wrong kind of value";
/// An argument or a stored value is not a valid 64-bit signed integer.
pub const NOT_INTEGER: &str = "ERR value is not an integer or out of range";
/// Generic syntax error (unknown option, bad option combination).
pub const SYNTAX: &str = "ERR syntax error";
/// INCR/DECR family: the result would not fit in an `i64`.
pub const OVERFLOW: &str = "ERR increment or decrement would overflow";
/// DECRBY with `i64::MIN` (its negation does not fit).
pub const DECR_OVERFLOW: &str = "ERR decrement would overflow";
/// An argument or a stored value is not a valid float.
pub const NOT_FLOAT: &str = "ERR value is not a valid float";
/// INCRBYFLOAT result is not finite.
pub const NAN_OR_INF: &str = "ERR increment would produce NaN or Infinity";
/// RENAME of a missing key.
pub const NO_SUCH_KEY: &str = "ERR no such key";
/// HINCRBY on a field whose value is not an integer.
pub const HASH_NOT_INTEGER: &str = "ERR hash value is not an integer";
/// A count argument (LPOP/RPOP) is negative or not a number.
pub const NOT_POSITIVE: &str = "ERR value is out of range, must be positive";
/// SCAN cursor is not an unsigned integer.
pub const INVALID_CURSOR: &str = "ERR invalid cursor";
/// APPEND would create a string larger than 512 MB (Redis's `proto-max-bulk-len`).
pub const STRING_TOO_LONG: &str = "ERR string exceeds maximum allowed size (proto-max-bulk-len)";

/// The answer to one command, before wire encoding.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Reply {
    /// `+OK`.
    Ok,
    /// A status line other than OK (e.g. TYPE's `string`).
    Simple(String),
    /// An error line; the text includes its code prefix (`ERR ...`, `WRONGTYPE ...`).
    Error(String),
    /// An integer.
    Int(i64),
    /// A binary-safe string.
    Bulk(Bytes),
    /// The null bulk string (`$-1` in RESP2, `_` in RESP3): a missing value.
    Nil,
    /// The null array (`*-1` in RESP2, `_` in RESP3): e.g. LPOP with a count on a missing key.
    NilArray,
    /// An array of replies.
    Array(Vec<Reply>),
    /// A double (RESP3); RESP2 encodes it as a bulk string.
    Double(f64),
    /// A map (RESP3); RESP2 encodes it as a flat array of alternating keys and values.
    Map(Vec<(Reply, Reply)>),
    /// A set (RESP3); RESP2 encodes it as an array.
    Set(Vec<Reply>),
}

impl Reply {
    /// An error reply with the given full text (including its `ERR`/`WRONGTYPE` prefix).
    pub fn error(text: impl Into<String>) -> Reply {
        Reply::Error(text.into())
    }

    /// `ERR wrong number of arguments for '<cmd>' command`, with the name lowercased as Redis
    /// prints the command's canonical name rather than what the client typed.
    pub fn wrong_arity(cmd: &str) -> Reply {
        Reply::Error(format!(
            "ERR wrong number of arguments for '{}' command",
            cmd.to_ascii_lowercase()
        ))
    }

    /// `ERR invalid expire time in '<cmd>' command`.
    pub fn invalid_expire(cmd: &str) -> Reply {
        Reply::Error(format!("ERR invalid expire time in '{cmd}' command"))
    }

    /// A bulk string reply.
    pub fn bulk(data: impl Into<Bytes>) -> Reply {
        Reply::Bulk(data.into())
    }

    /// The WRONGTYPE error.
    pub fn wrong_type() -> Reply {
        Reply::Error(WRONGTYPE.to_owned())
    }

    /// True for [`Reply::Error`].
    pub fn is_error(&self) -> bool {
        matches!(self, Reply::Error(_))
    }
}
