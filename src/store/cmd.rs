//! Parsing client commands into replicated operations ([`Op`]).
//!
//! [`parse`] turns the argument vector of one command into an [`Op`], doing every check Redis
//! does before touching the keyspace (arity, option syntax, integer/float arguments), with
//! Redis 7's exact error texts. What is left to [`Db::apply`](super::db::Db::apply) are the
//! checks that depend on stored data (WRONGTYPE, overflow of a stored counter, ...).
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

use super::reply::{self, Reply};

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

/// The outcome of [`parse`] for a well-formed command.
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

/// Parses one command. `args[0]` is the command name (any case).
///
/// Returns `Ok(Parsed::NotData)` for commands that are not data commands (including unknown
/// ones and an empty vector), and `Err(Reply::Error(..))` for a data command with a wrong
/// number of arguments or a syntax error.
pub fn parse(args: &[Bytes]) -> Result<Parsed, Reply> {
    let Some(name) = args.first() else {
        return Ok(Parsed::NotData);
    };
    // Command names are ASCII; anything longer than the longest name cannot be one of ours.
    if name.len() > 16 {
        return Ok(Parsed::NotData);
    }
    // Lowercased on the stack: this runs for every command.
    let mut lowered = [0u8; 16];
    let lowered = &mut lowered[..name.len()];
    lowered.copy_from_slice(name);
    lowered.make_ascii_lowercase();
    let Ok(name) = std::str::from_utf8(lowered) else {
        return Ok(Parsed::NotData);
    };
    let a = Args { name, args };
    let op = match name {
        "get" => {
            a.arity(2)?;
            Op::Get { key: a.key() }
        }
        "set" => {
            a.arity(-3)?;
            parse_set(&a)?
        }
        "setnx" => {
            a.arity(3)?;
            Op::SetNx {
                key: a.key(),
                value: a.at(2),
            }
        }
        "setex" | "psetex" => {
            a.arity(4)?;
            let seconds = name == "setex";
            let ms = relative_expire(&a.at(2), seconds, name)?;
            let (key, value) = (a.key(), a.at(3));
            let expire = Expire::RelativeMs(ms);
            if seconds {
                Op::SetEx { key, value, expire }
            } else {
                Op::PSetEx { key, value, expire }
            }
        }
        "getset" => {
            a.arity(3)?;
            Op::GetSet {
                key: a.key(),
                value: a.at(2),
            }
        }
        "getdel" => {
            a.arity(2)?;
            Op::GetDel { key: a.key() }
        }
        "mget" => {
            a.arity(-2)?;
            Op::MGet {
                keys: args[1..].to_vec(),
            }
        }
        "mset" | "msetnx" => {
            a.arity(-3)?;
            // Key-value pairs: an even number of arguments after the name.
            if args.len().is_multiple_of(2) {
                return Err(Reply::wrong_arity(name));
            }
            let pairs = pairs(&args[1..]);
            if name == "mset" {
                Op::MSet { pairs }
            } else {
                Op::MSetNx { pairs }
            }
        }
        "append" => {
            a.arity(3)?;
            Op::Append {
                key: a.key(),
                value: a.at(2),
            }
        }
        "strlen" => {
            a.arity(2)?;
            Op::StrLen { key: a.key() }
        }
        "incr" | "decr" => {
            a.arity(2)?;
            Op::IncrBy {
                key: a.key(),
                delta: if name == "incr" { 1 } else { -1 },
            }
        }
        "incrby" => {
            a.arity(3)?;
            Op::IncrBy {
                key: a.key(),
                delta: a.int(2)?,
            }
        }
        "decrby" => {
            a.arity(3)?;
            let by = a.int(2)?;
            let delta = by
                .checked_neg()
                .ok_or_else(|| Reply::error(reply::DECR_OVERFLOW))?;
            Op::IncrBy { key: a.key(), delta }
        }
        "incrbyfloat" => {
            a.arity(3)?;
            let delta = parse_f64(&args[2]).ok_or_else(|| Reply::error(reply::NOT_FLOAT))?;
            Op::IncrByFloat { key: a.key(), delta }
        }
        "del" | "unlink" => {
            a.arity(-2)?;
            Op::Del {
                keys: args[1..].to_vec(),
            }
        }
        "exists" => {
            a.arity(-2)?;
            Op::Exists {
                keys: args[1..].to_vec(),
            }
        }
        "expire" | "pexpire" | "expireat" | "pexpireat" => {
            a.arity(-3)?;
            parse_expire(&a)?
        }
        "persist" => {
            a.arity(2)?;
            Op::Persist { key: a.key() }
        }
        "ttl" => {
            a.arity(2)?;
            Op::Ttl { key: a.key() }
        }
        "pttl" => {
            a.arity(2)?;
            Op::PTtl { key: a.key() }
        }
        "expiretime" => {
            a.arity(2)?;
            Op::ExpireTime { key: a.key() }
        }
        "pexpiretime" => {
            a.arity(2)?;
            Op::PExpireTime { key: a.key() }
        }
        "type" => {
            a.arity(2)?;
            Op::Type { key: a.key() }
        }
        "keys" => {
            a.arity(2)?;
            Op::Keys { pattern: a.key() }
        }
        "scan" => {
            a.arity(-2)?;
            parse_scan(&a)?
        }
        "rename" => {
            a.arity(3)?;
            Op::Rename {
                key: a.key(),
                new_key: a.at(2),
            }
        }
        "renamenx" => {
            a.arity(3)?;
            Op::RenameNx {
                key: a.key(),
                new_key: a.at(2),
            }
        }
        "dbsize" => {
            a.arity(1)?;
            Op::DbSize
        }
        "flushdb" => {
            a.arity(-1)?;
            // FLUSHDB [ASYNC|SYNC]: both mean "now" here (the apply is one log entry anyway).
            match args.len() {
                1 => {}
                2 if eq_ic(&args[1], "async") || eq_ic(&args[1], "sync") => {}
                _ => return Err(Reply::error(reply::SYNTAX)),
            }
            Op::FlushDb
        }
        "hset" | "hmset" => {
            a.arity(-4)?;
            if args.len() % 2 == 1 {
                return Err(Reply::wrong_arity(name));
            }
            let pairs = pairs(&args[2..]);
            if name == "hset" {
                Op::HSet { key: a.key(), pairs }
            } else {
                Op::HMSet { key: a.key(), pairs }
            }
        }
        "hsetnx" => {
            a.arity(4)?;
            Op::HSetNx {
                key: a.key(),
                field: a.at(2),
                value: a.at(3),
            }
        }
        "hget" => {
            a.arity(3)?;
            Op::HGet {
                key: a.key(),
                field: a.at(2),
            }
        }
        "hmget" => {
            a.arity(-3)?;
            Op::HMGet {
                key: a.key(),
                fields: args[2..].to_vec(),
            }
        }
        "hgetall" => {
            a.arity(2)?;
            Op::HGetAll { key: a.key() }
        }
        "hkeys" => {
            a.arity(2)?;
            Op::HKeys { key: a.key() }
        }
        "hvals" => {
            a.arity(2)?;
            Op::HVals { key: a.key() }
        }
        "hdel" => {
            a.arity(-3)?;
            Op::HDel {
                key: a.key(),
                fields: args[2..].to_vec(),
            }
        }
        "hexists" => {
            a.arity(3)?;
            Op::HExists {
                key: a.key(),
                field: a.at(2),
            }
        }
        "hincrby" => {
            a.arity(4)?;
            Op::HIncrBy {
                key: a.key(),
                field: a.at(2),
                delta: a.int(3)?,
            }
        }
        "hlen" => {
            a.arity(2)?;
            Op::HLen { key: a.key() }
        }
        "hstrlen" => {
            a.arity(3)?;
            Op::HStrLen {
                key: a.key(),
                field: a.at(2),
            }
        }
        "lpush" | "rpush" => {
            a.arity(-3)?;
            Op::Push {
                key: a.key(),
                values: args[2..].to_vec(),
                left: name == "lpush",
            }
        }
        "lpop" | "rpop" => {
            a.arity(-2)?;
            if args.len() > 3 {
                return Err(Reply::wrong_arity(name));
            }
            let count = match args.get(2) {
                None => None,
                Some(c) => match parse_i64(c) {
                    Some(n) if n >= 0 => Some(usize::try_from(n).unwrap_or(usize::MAX)),
                    _ => return Err(Reply::error(reply::NOT_POSITIVE)),
                },
            };
            Op::Pop {
                key: a.key(),
                count,
                left: name == "lpop",
            }
        }
        "lrange" => {
            a.arity(4)?;
            Op::LRange {
                key: a.key(),
                start: a.int(2)?,
                stop: a.int(3)?,
            }
        }
        "lindex" => {
            a.arity(3)?;
            Op::LIndex {
                key: a.key(),
                index: a.int(2)?,
            }
        }
        "llen" => {
            a.arity(2)?;
            Op::LLen { key: a.key() }
        }
        "sadd" => {
            a.arity(-3)?;
            Op::SAdd {
                key: a.key(),
                members: args[2..].to_vec(),
            }
        }
        "srem" => {
            a.arity(-3)?;
            Op::SRem {
                key: a.key(),
                members: args[2..].to_vec(),
            }
        }
        "smembers" => {
            a.arity(2)?;
            Op::SMembers { key: a.key() }
        }
        "sismember" => {
            a.arity(3)?;
            Op::SIsMember {
                key: a.key(),
                member: a.at(2),
            }
        }
        "scard" => {
            a.arity(2)?;
            Op::SCard { key: a.key() }
        }
        _ => return Ok(Parsed::NotData),
    };
    Ok(Parsed::Data(op))
}

/// The arguments of one command with its lowercased name, for terse parsing code.
struct Args<'a> {
    name: &'a str,
    args: &'a [Bytes],
}

impl Args<'_> {
    /// Redis arity: `n > 0` exactly `n` arguments (name included), `n < 0` at least `-n`.
    fn arity(&self, n: i32) -> Result<(), Reply> {
        let len = self.args.len();
        let ok = if n >= 0 {
            len == n as usize
        } else {
            len >= n.unsigned_abs() as usize
        };
        if ok {
            Ok(())
        } else {
            Err(Reply::wrong_arity(self.name))
        }
    }

    /// Argument `i` (the caller checked the arity, so it exists).
    fn at(&self, i: usize) -> Bytes {
        self.args.get(i).cloned().unwrap_or_default()
    }

    fn key(&self) -> Bytes {
        self.at(1)
    }

    fn int(&self, i: usize) -> Result<i64, Reply> {
        parse_i64(&self.at(i)).ok_or_else(|| Reply::error(reply::NOT_INTEGER))
    }
}

fn pairs(flat: &[Bytes]) -> Vec<(Bytes, Bytes)> {
    flat.chunks_exact(2)
        .map(|c| (c[0].clone(), c[1].clone()))
        .collect()
}

/// Case-insensitive comparison of an argument with an ASCII keyword.
fn eq_ic(arg: &[u8], word: &str) -> bool {
    arg.eq_ignore_ascii_case(word.as_bytes())
}

/// SET key value [NX|XX] [GET] [EX s|PX ms|EXAT s|PXAT ms|KEEPTTL], following Redis's
/// `parseExtendedStringArgumentsOrReply`: options in any order, a repeated option is allowed
/// (the last time wins), conflicting ones are a syntax error.
fn parse_set(a: &Args<'_>) -> Result<Op, Reply> {
    #[derive(PartialEq, Clone, Copy)]
    enum Unit {
        Ex,
        Px,
        ExAt,
        PxAt,
    }
    let args = a.args;
    let mut cond = SetCond::Always;
    let mut get = false;
    let mut keep_ttl = false;
    let mut expire: Option<(Unit, &Bytes)> = None;
    let mut j = 3;
    while j < args.len() {
        let opt = &args[j];
        let next = args.get(j + 1);
        let unit = expire.map(|(u, _)| u);
        if eq_ic(opt, "nx") && cond != SetCond::Xx {
            cond = SetCond::Nx;
        } else if eq_ic(opt, "xx") && cond != SetCond::Nx {
            cond = SetCond::Xx;
        } else if eq_ic(opt, "get") {
            get = true;
        } else if eq_ic(opt, "keepttl") && unit.is_none() {
            keep_ttl = true;
        } else if let (Some(u), Some(next)) = (expire_unit(opt), next) {
            // Only the same unit may be repeated, and never together with KEEPTTL.
            let u = match u {
                0 => Unit::Ex,
                1 => Unit::Px,
                2 => Unit::ExAt,
                _ => Unit::PxAt,
            };
            if keep_ttl || unit.is_some_and(|prev| prev != u) {
                return Err(Reply::error(reply::SYNTAX));
            }
            expire = Some((u, next));
            j += 1;
        } else {
            return Err(Reply::error(reply::SYNTAX));
        }
        j += 1;
    }
    let expire = match expire {
        None => Expire::None,
        Some((Unit::Ex, t)) => Expire::RelativeMs(relative_expire(t, true, "set")?),
        Some((Unit::Px, t)) => Expire::RelativeMs(relative_expire(t, false, "set")?),
        Some((Unit::ExAt, t)) => Expire::AbsoluteMs(relative_expire(t, true, "set")?),
        Some((Unit::PxAt, t)) => Expire::AbsoluteMs(relative_expire(t, false, "set")?),
    };
    Ok(Op::Set {
        key: a.key(),
        value: a.at(2),
        expire,
        cond,
        get,
        keep_ttl,
    })
}

/// EX=0, PX=1, EXAT=2, PXAT=3.
fn expire_unit(opt: &[u8]) -> Option<u8> {
    ["ex", "px", "exat", "pxat"]
        .iter()
        .position(|w| eq_ic(opt, w))
        .map(|p| p as u8)
}

/// A SET-style expire argument (SET EX/PX/EXAT/PXAT, SETEX, PSETEX) in milliseconds: must be a
/// positive integer whose conversion to ms does not overflow (Redis's
/// `getExpireMillisecondsOrReply`). Despite the name, also used for the absolute EXAT/PXAT.
fn relative_expire(arg: &[u8], seconds: bool, cmd: &str) -> Result<i64, Reply> {
    let n = parse_i64(arg).ok_or_else(|| Reply::error(reply::NOT_INTEGER))?;
    if n <= 0 || (seconds && n > i64::MAX / 1000) {
        return Err(Reply::invalid_expire(cmd));
    }
    Ok(if seconds { n * 1000 } else { n })
}

/// EXPIRE/PEXPIRE/EXPIREAT/PEXPIREAT key time [NX|XX|GT|LT] (Redis's `expireGenericCommand`:
/// options first, then the time; negative times are allowed and delete the key).
fn parse_expire(a: &Args<'_>) -> Result<Op, Reply> {
    let (mut nx, mut xx, mut gt, mut lt) = (false, false, false, false);
    for opt in &a.args[3..] {
        if eq_ic(opt, "nx") {
            nx = true;
        } else if eq_ic(opt, "xx") {
            xx = true;
        } else if eq_ic(opt, "gt") {
            gt = true;
        } else if eq_ic(opt, "lt") {
            lt = true;
        } else {
            // Echoed cut to 128 bytes, as Redis prints arguments (`%.128s`).
            return Err(Reply::Error(format!(
                "ERR Unsupported option {}",
                String::from_utf8_lossy(opt.get(..128).unwrap_or(opt))
            )));
        }
    }
    if nx && (xx || gt || lt) {
        return Err(Reply::error(
            "ERR NX and XX, GT or LT options at the same time are not compatible",
        ));
    }
    if gt && lt {
        return Err(Reply::error(
            "ERR GT and LT options at the same time are not compatible",
        ));
    }
    let cond = if nx {
        ExpireCond::Nx
    } else if xx && lt {
        ExpireCond::XxLt
    } else if gt {
        ExpireCond::Gt
    } else if lt {
        ExpireCond::Lt
    } else if xx {
        ExpireCond::Xx
    } else {
        ExpireCond::Always
    };
    let seconds = a.name == "expire" || a.name == "expireat";
    let mut t = a.int(2)?;
    if seconds {
        t = t.checked_mul(1000).ok_or_else(|| Reply::invalid_expire(a.name))?;
    }
    let key = a.key();
    Ok(match a.name {
        "expire" => Op::Expire {
            key,
            at: Expire::RelativeMs(t),
            cond,
        },
        "pexpire" => Op::PExpire {
            key,
            at: Expire::RelativeMs(t),
            cond,
        },
        "expireat" => Op::ExpireAt {
            key,
            at: Expire::AbsoluteMs(t),
            cond,
        },
        _ => Op::PExpireAt {
            key,
            at: Expire::AbsoluteMs(t),
            cond,
        },
    })
}

/// SCAN cursor [MATCH pattern] [COUNT count] [TYPE type].
fn parse_scan(a: &Args<'_>) -> Result<Op, Reply> {
    let args = a.args;
    let cursor = parse_u64(&args[1]).ok_or_else(|| Reply::error(reply::INVALID_CURSOR))?;
    let mut pattern = None;
    let mut count = 10usize;
    let mut kind = None;
    let mut i = 2;
    while i < args.len() {
        let (opt, val) = match args.get(i + 1) {
            Some(v) => (&args[i], v),
            None => return Err(Reply::error(reply::SYNTAX)),
        };
        if eq_ic(opt, "count") {
            let n = parse_i64(val).ok_or_else(|| Reply::error(reply::NOT_INTEGER))?;
            if n < 1 {
                return Err(Reply::error(reply::SYNTAX));
            }
            count = usize::try_from(n).unwrap_or(usize::MAX);
        } else if eq_ic(opt, "match") {
            // "*" matches everything: skip the matcher, as Redis does.
            pattern = (val.as_ref() != b"*").then(|| val.clone());
        } else if eq_ic(opt, "type") {
            kind = Some(val.clone());
        } else {
            return Err(Reply::error(reply::SYNTAX));
        }
        i += 2;
    }
    Ok(Op::Scan {
        cursor,
        pattern,
        count,
        kind,
    })
}

pub use super::resp::parse_i64;

/// An unsigned cursor: decimal digits only (leading zeros allowed), fits in `u64`.
fn parse_u64(s: &[u8]) -> Option<u64> {
    if s.is_empty() || !s.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(s).ok()?.parse().ok()
}

/// A float argument or stored value as Redis's `getLongDoubleFromObject` accepts it: no
/// leading whitespace, nothing after the number, not NaN. `inf` is accepted (INCRBYFLOAT then
/// rejects an infinite result). Redis uses `long double`; this is `f64`.
pub fn parse_f64(s: &[u8]) -> Option<f64> {
    if s.is_empty() || s[0].is_ascii_whitespace() || s.len() > 5 * 1024 {
        return None;
    }
    let v: f64 = std::str::from_utf8(s).ok()?.parse().ok()?;
    (!v.is_nan()).then_some(v)
}

/// Formats an INCRBYFLOAT result like Redis's human `long double` format (`%.17Lf` with the
/// trailing zeros and dot removed, `-0` printed as `0`): plain decimal notation, never an
/// exponent, no trailing `.0` ("5000", "10.5", "3").
///
/// The digits are Rust's shortest representation that parses back to the same `f64`, cut to
/// 17 decimals like Redis when longer (so `1e-20` prints `0`). Redis computes in 80-bit
/// `long double`, this in `f64`: `0.1 + 0.2` prints `0.30000000000000004` here and `0.3` in
/// Redis; for the usual values ("10.5" + "0.1" = "10.6") both agree.
pub fn format_f64(v: f64) -> String {
    let mut s = format!("{v}");
    if s.find('.').is_some_and(|dot| s.len() - dot - 1 > 17) {
        let fixed = format!("{v:.17}");
        s = fixed.trim_end_matches('0').trim_end_matches('.').to_owned();
    }
    if s == "-0" {
        s = "0".to_owned();
    }
    s
}
