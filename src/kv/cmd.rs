//! Client commands as replicated operations ([`Op`]).
//!
//! [`parse`](super::families::parse) turns the argument vector of one command into an [`Op`], doing every check Redis
//! does before touching the keyspace (arity, option syntax, integer/float arguments), with
//! Redis 7's exact error texts; each command family ([`super::families`]) parses its own
//! commands. What is left to [`Db::apply`](super::db::Db::apply) are the checks that depend
//! on stored data (WRONGTYPE, overflow of a stored counter, ...).
//!
//! An [`Op`] is what goes through the Raft log, so it must not depend on the proposer's clock
//! once proposed: [`Op::resolve_times`] turns relative expiry times into absolute ones before
//! proposing, and every replica then applies the same absolute time.
//!
//! Several commands with the same semantics share one variant (documented on each variant):
//! INCR/DECR/INCRBY/DECRBY are [`Op::IncrBy`], DEL/UNLINK are [`Op::Del`], LPUSH/RPUSH are
//! [`Op::Push`], LPOP/RPOP are [`Op::Pop`]. Everything else has its own variant, also where only
//! an error text differs (SETEX vs PSETEX name themselves in `invalid expire time` errors).

use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// When a key written by SET-like commands expires.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Expire {
    /// No expiry given.
    None,
    /// Relative, in milliseconds from now, as the client sent it (EX/PX converted to ms);
    /// resolved by the leader before proposing ([`Op::resolve_times`]).
    RelativeMs(i64),
    /// Absolute Unix time in milliseconds.
    AbsoluteMs(i64),
}

/// SET's NX/XX condition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SetCond {
    /// Set unconditionally.
    Always,
    /// Only if the key does not exist.
    Nx,
    /// Only if the key exists.
    Xx,
}

/// EXPIRE's NX/XX/GT/LT condition (Redis 7).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExpireCond {
    /// Set unconditionally.
    Always,
    /// Only if the key has no expiry.
    Nx,
    /// Only if the key has an expiry.
    Xx,
    /// Only if the new expiry is later than the current one (no expiry counts as infinite).
    Gt,
    /// Only if the new expiry is earlier than the current one (no expiry counts as infinite).
    Lt,
    /// XX and LT together: only if the key has an expiry and the new one is earlier. (XX with GT
    /// is plain [`ExpireCond::Gt`], which already fails on a key without expiry.)
    XxLt,
}

/// One data command, validated, ready to be proposed to the log (writes) or run locally (reads).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Op {
    /// GET key
    Get { key: Bytes },
    /// SET key value [NX|XX] [GET] [EX|PX|EXAT|PXAT t|KEEPTTL]
    Set {
        key: Bytes,
        value: Bytes,
        expire: Expire,
        cond: SetCond,
        get: bool,
        keep_ttl: bool,
    },
    /// SETNX key value
    SetNx { key: Bytes, value: Bytes },
    /// SETEX key seconds value (expire already in ms)
    SetEx {
        key: Bytes,
        value: Bytes,
        expire: Expire,
    },
    /// PSETEX key milliseconds value
    PSetEx {
        key: Bytes,
        value: Bytes,
        expire: Expire,
    },
    /// GETSET key value
    GetSet { key: Bytes, value: Bytes },
    /// GETDEL key
    GetDel { key: Bytes },
    /// MGET key [key ...]
    MGet { keys: Vec<Bytes> },
    /// MSET key value [key value ...]
    MSet { pairs: Vec<(Bytes, Bytes)> },
    /// MSETNX key value [key value ...]
    MSetNx { pairs: Vec<(Bytes, Bytes)> },
    /// APPEND key value
    Append { key: Bytes, value: Bytes },
    /// STRLEN key
    StrLen { key: Bytes },
    /// INCR, DECR, INCRBY, DECRBY (the sign is folded into `delta`).
    IncrBy { key: Bytes, delta: i64 },
    /// INCRBYFLOAT key increment
    IncrByFloat { key: Bytes, delta: f64 },
    /// DEL and UNLINK (UNLINK frees lazily in Redis; here both free at once).
    Del { keys: Vec<Bytes> },
    /// EXISTS key [key ...] (a key named twice counts twice).
    Exists { keys: Vec<Bytes> },
    /// EXPIRE key seconds [NX|XX|GT|LT] (time already in ms)
    Expire {
        key: Bytes,
        at: Expire,
        cond: ExpireCond,
    },
    /// PEXPIRE key milliseconds [NX|XX|GT|LT]
    PExpire {
        key: Bytes,
        at: Expire,
        cond: ExpireCond,
    },
    /// EXPIREAT key unix-seconds [NX|XX|GT|LT] (time already in ms)
    ExpireAt {
        key: Bytes,
        at: Expire,
        cond: ExpireCond,
    },
    /// PEXPIREAT key unix-ms [NX|XX|GT|LT]
    PExpireAt {
        key: Bytes,
        at: Expire,
        cond: ExpireCond,
    },
    /// PERSIST key
    Persist { key: Bytes },
    /// TTL key
    Ttl { key: Bytes },
    /// PTTL key
    PTtl { key: Bytes },
    /// EXPIRETIME key
    ExpireTime { key: Bytes },
    /// PEXPIRETIME key
    PExpireTime { key: Bytes },
    /// TYPE key
    Type { key: Bytes },
    /// KEYS pattern
    Keys { pattern: Bytes },
    /// SCAN cursor [MATCH pattern] [COUNT count] [TYPE type]
    Scan {
        cursor: u64,
        pattern: Option<Bytes>,
        count: usize,
        kind: Option<Bytes>,
    },
    /// RENAME key newkey
    Rename { key: Bytes, new_key: Bytes },
    /// RENAMENX key newkey
    RenameNx { key: Bytes, new_key: Bytes },
    /// DBSIZE
    DbSize,
    /// FLUSHDB [ASYNC|SYNC]
    FlushDb,
    /// HSET key field value [field value ...]
    HSet { key: Bytes, pairs: Vec<(Bytes, Bytes)> },
    /// HMSET key field value [field value ...] (replies OK instead of a count)
    HMSet { key: Bytes, pairs: Vec<(Bytes, Bytes)> },
    /// HSETNX key field value
    HSetNx { key: Bytes, field: Bytes, value: Bytes },
    /// HGET key field
    HGet { key: Bytes, field: Bytes },
    /// HMGET key field [field ...]
    HMGet { key: Bytes, fields: Vec<Bytes> },
    /// HGETALL key
    HGetAll { key: Bytes },
    /// HKEYS key
    HKeys { key: Bytes },
    /// HVALS key
    HVals { key: Bytes },
    /// HDEL key field [field ...]
    HDel { key: Bytes, fields: Vec<Bytes> },
    /// HEXISTS key field
    HExists { key: Bytes, field: Bytes },
    /// HINCRBY key field increment
    HIncrBy { key: Bytes, field: Bytes, delta: i64 },
    /// HLEN key
    HLen { key: Bytes },
    /// HSTRLEN key field
    HStrLen { key: Bytes, field: Bytes },
    /// LPUSH (`left`) and RPUSH key element [element ...]
    Push {
        key: Bytes,
        values: Vec<Bytes>,
        left: bool,
    },
    /// LPOP (`left`) and RPOP key [count]
    Pop {
        key: Bytes,
        count: Option<usize>,
        left: bool,
    },
    /// LRANGE key start stop
    LRange { key: Bytes, start: i64, stop: i64 },
    /// LINDEX key index
    LIndex { key: Bytes, index: i64 },
    /// LLEN key
    LLen { key: Bytes },
    /// SADD key member [member ...]
    SAdd { key: Bytes, members: Vec<Bytes> },
    /// SREM key member [member ...]
    SRem { key: Bytes, members: Vec<Bytes> },
    /// SMEMBERS key
    SMembers { key: Bytes },
    /// SISMEMBER key member
    SIsMember { key: Bytes, member: Bytes },
    /// SCARD key
    SCard { key: Bytes },
    /// Active expiry, proposed by the leader: delete these keys if they are expired at `now`.
    /// Replies with the number of keys deleted.
    DelExpired { keys: Vec<Bytes> },
}

/// The outcome of [`parse`](super::families::parse) for a well-formed command.
#[derive(Debug, Clone, PartialEq)]
pub enum Parsed {
    /// A data command.
    Data(Op),
    /// Not a data command: the server handles it (PING, HELLO, MULTI, INFO, unknown, ...).
    NotData,
}

impl Op {
    /// True if the op may change the keyspace (it must go through the log).
    pub fn is_write(&self) -> bool {
        use Op::*;
        match self {
            Get { .. } | MGet { .. } | StrLen { .. } | Exists { .. } | Ttl { .. } | PTtl { .. } => false,
            ExpireTime { .. } | PExpireTime { .. } | Type { .. } | Keys { .. } | Scan { .. } => false,
            DbSize | HGet { .. } | HMGet { .. } | HGetAll { .. } | HKeys { .. } | HVals { .. } => false,
            HExists { .. } | HLen { .. } | HStrLen { .. } | LRange { .. } | LIndex { .. } => false,
            LLen { .. } | SMembers { .. } | SIsMember { .. } | SCard { .. } => false,
            Set { .. } | SetNx { .. } | SetEx { .. } | PSetEx { .. } | GetSet { .. } | GetDel { .. } => true,
            MSet { .. } | MSetNx { .. } | Append { .. } | IncrBy { .. } | IncrByFloat { .. } => true,
            Del { .. } | Expire { .. } | PExpire { .. } | ExpireAt { .. } | PExpireAt { .. } => true,
            Persist { .. } | Rename { .. } | RenameNx { .. } | FlushDb | HSet { .. } | HMSet { .. } => true,
            HSetNx { .. } | HDel { .. } | HIncrBy { .. } | Push { .. } | Pop { .. } | SAdd { .. } => true,
            SRem { .. } | DelExpired { .. } => true,
        }
    }

    /// Keys the op touches (for future sharding/metrics, and for lazy expiry on write).
    /// KEYS, SCAN, DBSIZE and FLUSHDB touch the whole keyspace and list none.
    pub fn keys(&self) -> Vec<&[u8]> {
        use Op::*;
        match self {
            Get { key }
            | Set { key, .. }
            | SetNx { key, .. }
            | SetEx { key, .. }
            | PSetEx { key, .. }
            | GetSet { key, .. }
            | GetDel { key }
            | Append { key, .. }
            | StrLen { key }
            | IncrBy { key, .. }
            | IncrByFloat { key, .. }
            | Expire { key, .. }
            | PExpire { key, .. }
            | ExpireAt { key, .. }
            | PExpireAt { key, .. }
            | Persist { key }
            | Ttl { key }
            | PTtl { key }
            | ExpireTime { key }
            | PExpireTime { key }
            | Type { key }
            | HSet { key, .. }
            | HMSet { key, .. }
            | HSetNx { key, .. }
            | HGet { key, .. }
            | HMGet { key, .. }
            | HGetAll { key }
            | HKeys { key }
            | HVals { key }
            | HDel { key, .. }
            | HExists { key, .. }
            | HIncrBy { key, .. }
            | HLen { key }
            | HStrLen { key, .. }
            | Push { key, .. }
            | Pop { key, .. }
            | LRange { key, .. }
            | LIndex { key, .. }
            | LLen { key }
            | SAdd { key, .. }
            | SRem { key, .. }
            | SMembers { key }
            | SIsMember { key, .. }
            | SCard { key } => vec![key.as_ref()],
            Rename { key, new_key } | RenameNx { key, new_key } => vec![key.as_ref(), new_key.as_ref()],
            MGet { keys } | Del { keys } | Exists { keys } | DelExpired { keys } => {
                keys.iter().map(|k| k.as_ref()).collect()
            }
            MSet { pairs } | MSetNx { pairs } => pairs.iter().map(|(k, _)| k.as_ref()).collect(),
            Keys { .. } | Scan { .. } | DbSize | FlushDb => Vec::new(),
        }
    }

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

    /// Turn relative expiry times into absolute ones using the proposer's clock, so replicas
    /// apply the same absolute time (EX/PX/SETEX/PSETEX/EXPIRE/PEXPIRE → `AbsoluteMs`).
    ///
    /// A time that would overflow stays relative: `apply` then resolves it against the entry's
    /// time, overflows the same way on every replica and replies `invalid expire time`.
    pub fn resolve_times(&mut self, now_ms: i64) {
        let slot = match self {
            Op::Set { expire, .. } | Op::SetEx { expire, .. } | Op::PSetEx { expire, .. } => expire,
            Op::Expire { at, .. } | Op::PExpire { at, .. } => at,
            _ => return,
        };
        if let Expire::RelativeMs(ms) = *slot {
            if let Some(abs) = ms.checked_add(now_ms) {
                *slot = Expire::AbsoluteMs(abs);
            }
        }
    }
}

pub use super::num::{format_f64, parse_f64, parse_i64};
