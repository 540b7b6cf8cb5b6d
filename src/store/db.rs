//! The keyspace: values, expiry, and the execution of every [`Op`].
//!
//! [`Db`] is the replicated state machine of the store. Every replica applies the same ops at
//! the same times (`now_ms` is the log entry's time, never a clock read) and must end in the
//! same state with the same replies, so:
//! - all containers are ordered (`BTreeMap`/`BTreeSet`): iteration order, hence reply order
//!   (KEYS, HGETALL, SMEMBERS, SCAN), depends only on the contents;
//! - an expired key counts as absent for every command; writes delete the expired keys they
//!   touch, reads leave them in place (they are reclaimed by writes or by the leader's active
//!   expiry, [`Op::DelExpired`]), so a read never changes state and can run on any replica;
//! - the used-memory estimate is updated incrementally by the same code on every replica.
//!
//! # SCAN cursors
//! Every key gets a sequence number when it is created (a counter in the `Db`, so the same on
//! every replica; overwriting a key keeps its number, RENAME gives the new name a new one).
//! SCAN walks keys in sequence order and the cursor is the sequence number to resume from, as
//! a decimal string (0 = start, and the final reply's cursor is 0). A key that exists for the
//! whole scan has a fixed number, so it is returned exactly once, whatever else is created,
//! deleted or expired meanwhile; keys created during the scan get higher numbers and may or
//! may not be seen. COUNT is the number of keys visited per call (before MATCH/TYPE filtering),
//! like Redis. Unlike Redis's bucket cursors, a scan over a keyspace that keeps creating new
//! keys faster than the client scans does not terminate.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::ops::Bound;

use bytes::Bytes;
use serde::{Deserialize, Serialize, Serializer};

use super::cmd::{format_f64, parse_f64, parse_i64, Expire, ExpireCond, Op, SetCond};
use super::glob;
use super::reply::{self, Reply};

/// Estimated fixed cost of a key: map node, entry struct, scan-order index node.
const ENTRY_OVERHEAD: usize = 96;
/// Estimated cost of an expiry (the expiry index node).
const EXPIRE_OVERHEAD: usize = 48;
/// Estimated fixed cost of one hash field (map node and two `Bytes` handles).
const HASH_FIELD_OVERHEAD: usize = 64;
/// Estimated fixed cost of one list element (a `Bytes` handle in the deque).
const LIST_ITEM_OVERHEAD: usize = 32;
/// Estimated fixed cost of one set member (set node and a `Bytes` handle).
const SET_MEMBER_OVERHEAD: usize = 48;
/// Largest string APPEND may build: Redis uses `proto-max-bulk-len`, the largest request
/// here, so a value can always be read back through a follower (its reply travels in one
/// peer frame). A constant, not the configured `max-request-size`: applying must give the
/// same result on every node.
const MAX_STRING_LEN: usize = super::MAX_REQUEST_SIZE as usize;

/// A stored value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Value {
    /// A string (also integers and floats, as their decimal text).
    Str(Bytes),
    /// A hash: field → value, in field order.
    Hash(BTreeMap<Bytes, Bytes>),
    /// A list.
    List(VecDeque<Bytes>),
    /// A set, in member order.
    Set(BTreeSet<Bytes>),
}

impl Value {
    /// The name TYPE replies with.
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::Str(_) => "string",
            Value::Hash(_) => "hash",
            Value::List(_) => "list",
            Value::Set(_) => "set",
        }
    }

    /// Estimated bytes for the contents (the key's own overhead excluded).
    fn mem(&self) -> usize {
        match self {
            Value::Str(s) => s.len(),
            Value::Hash(h) => h
                .iter()
                .map(|(f, v)| HASH_FIELD_OVERHEAD + f.len() + v.len())
                .sum(),
            Value::List(l) => l.iter().map(|v| LIST_ITEM_OVERHEAD + v.len()).sum(),
            Value::Set(s) => s.iter().map(|m| SET_MEMBER_OVERHEAD + m.len()).sum(),
        }
    }
}

/// One key's value with its expiry and scan position.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Entry {
    value: Value,
    /// Absolute Unix ms; the key is expired once `now > expire_at` (as Redis's `keyIsExpired`).
    expire_at: Option<i64>,
    /// Creation sequence number: the SCAN order (see the module docs).
    seq: u64,
}

/// Estimated bytes a key costs in total.
fn entry_mem(key: &[u8], value: &Value, has_expire: bool) -> usize {
    ENTRY_OVERHEAD + key.len() + value.mem() + if has_expire { EXPIRE_OVERHEAD } else { 0 }
}

/// True if an expiry time has passed at `now` (the key is alive during its last millisecond).
fn is_expired(expire_at: Option<i64>, now: i64) -> bool {
    matches!(expire_at, Some(t) if now > t)
}

/// The keyspace of one database.
///
/// Serialized (snapshots) as the sequence counter and the list of entries; the indexes and
/// the memory estimate are rebuilt on deserialization.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(from = "Snapshot")]
pub struct Db {
    entries: BTreeMap<Bytes, Entry>,
    /// (expire_at, key) for every key with an expiry: active expiry takes the oldest first.
    expires: BTreeSet<(i64, Bytes)>,
    /// seq → key: the SCAN order.
    order: BTreeMap<u64, Bytes>,
    /// The last sequence number given to a key (0 = none yet, so the first key gets 1 and
    /// cursor 0 means "from the start").
    last_seq: u64,
    /// Incrementally maintained [`Db::used_memory`].
    used: usize,
}

/// The serialized form of a [`Db`].
#[derive(Deserialize)]
struct Snapshot {
    last_seq: u64,
    entries: Vec<(Bytes, Entry)>,
}

impl From<Snapshot> for Db {
    fn from(snap: Snapshot) -> Db {
        let mut db = Db {
            last_seq: snap.last_seq,
            ..Db::default()
        };
        for (key, entry) in snap.entries {
            db.used += entry_mem(&key, &entry.value, entry.expire_at.is_some());
            if let Some(t) = entry.expire_at {
                db.expires.insert((t, key.clone()));
            }
            db.order.insert(entry.seq, key.clone());
            db.entries.insert(key, entry);
        }
        db
    }
}

impl Serialize for Db {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;

        /// Serializes the entries as a sequence of pairs without copying the map.
        struct Entries<'a>(&'a BTreeMap<Bytes, Entry>);
        impl Serialize for Entries<'_> {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_seq(self.0.iter())
            }
        }

        let mut st = s.serialize_struct("Db", 2)?;
        st.serialize_field("last_seq", &self.last_seq)?;
        st.serialize_field("entries", &Entries(&self.entries))?;
        st.end()
    }
}

/// Internal result: `Err` carries an error reply, so command code can use `?`.
type Res = Result<Reply, Reply>;

fn wrong_type<T>() -> Result<T, Reply> {
    Err(Reply::wrong_type())
}

fn int(n: usize) -> Reply {
    Reply::Int(i64::try_from(n).unwrap_or(i64::MAX))
}

fn bulks<'a>(items: impl Iterator<Item = &'a Bytes>) -> Vec<Reply> {
    items.map(|b| Reply::Bulk(b.clone())).collect()
}

impl Db {
    /// An empty keyspace.
    pub fn new() -> Db {
        Db::default()
    }

    /// Applies any op (read or write) at time `now_ms` (the log entry's time). Expired keys
    /// count as absent; writes remove expired keys they touch. Deterministic.
    pub fn apply(&mut self, op: &Op, now_ms: i64) -> Reply {
        if !op.is_write() {
            return self.read(op, now_ms);
        }
        if let Op::DelExpired { keys } = op {
            let mut n = 0;
            for key in keys {
                if self.purge_if_expired(key, now_ms) {
                    n += 1;
                }
            }
            return int(n);
        }
        for key in op.keys() {
            self.purge_if_expired(key, now_ms);
        }
        self.write(op, now_ms).unwrap_or_else(|e| e)
    }

    /// Runs a read-only op without mutating (local reads). For a write op returns an error
    /// reply.
    pub fn read(&self, op: &Op, now_ms: i64) -> Reply {
        self.read_op(op, now_ms).unwrap_or_else(|e| e)
    }

    /// Number of stored keys, including expired ones not yet reclaimed (DBSIZE excludes them).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True if no key is stored.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Approximate bytes used by keys and values (for maxmemory / OOM). An estimate from the
    /// data sizes plus fixed per-key and per-element overheads, not allocator truth; it is
    /// deterministic, so every replica reports the same number.
    pub fn used_memory(&self) -> usize {
        self.used
    }

    /// Up to `limit` keys expired at `now_ms`, oldest first (for active expiry).
    pub fn expired_keys(&self, now_ms: i64, limit: usize) -> Vec<Bytes> {
        self.expires
            .iter()
            .take_while(|(t, _)| now_ms > *t)
            .take(limit)
            .map(|(_, k)| k.clone())
            .collect()
    }

    /// Number of keys with an expiry set (expired ones not yet reclaimed included).
    pub fn expires_count(&self) -> usize {
        self.expires.len()
    }

    /// The live value at `key`, if any (for inspection and tests).
    pub fn value(&self, key: &[u8], now_ms: i64) -> Option<&Value> {
        self.live(key, now_ms).map(|e| &e.value)
    }

    // ---- storage primitives: the only code that touches the indexes and the estimate ----

    fn live(&self, key: &[u8], now: i64) -> Option<&Entry> {
        self.entries.get(key).filter(|e| !is_expired(e.expire_at, now))
    }

    /// Deletes `key` if it is stored and expired at `now`; true if it did.
    fn purge_if_expired(&mut self, key: &[u8], now: i64) -> bool {
        if self
            .entries
            .get(key)
            .is_some_and(|e| is_expired(e.expire_at, now))
        {
            self.remove(key);
            true
        } else {
            false
        }
    }

    /// Removes `key` with its index entries.
    fn remove(&mut self, key: &[u8]) -> Option<Entry> {
        let (key, entry) = self.entries.remove_entry(key)?;
        if let Some(t) = entry.expire_at {
            self.expires.remove(&(t, key.clone()));
        }
        self.order.remove(&entry.seq);
        self.used = self
            .used
            .saturating_sub(entry_mem(&key, &entry.value, entry.expire_at.is_some()));
        Some(entry)
    }

    /// Stores `value` at `key`, replacing any previous value and expiry. An existing key keeps
    /// its scan position (it has been present all along); a new key goes last.
    fn put(&mut self, key: &Bytes, value: Value, expire_at: Option<i64>) {
        // Overwrite in place: the key keeps its scan position and its index entries.
        if let Some(entry) = self.entries.get_mut(key.as_ref()) {
            let old = entry_mem(key, &entry.value, entry.expire_at.is_some());
            if entry.expire_at != expire_at {
                if let Some(t) = entry.expire_at {
                    self.expires.remove(&(t, key.clone()));
                }
                if let Some(t) = expire_at {
                    self.expires.insert((t, key.clone()));
                }
                entry.expire_at = expire_at;
            }
            entry.value = value;
            let new = entry_mem(key, &entry.value, expire_at.is_some());
            self.used = self.used.saturating_sub(old) + new;
            return;
        }
        // A new key goes last.
        self.last_seq += 1;
        let seq = self.last_seq;
        self.used += entry_mem(key, &value, expire_at.is_some());
        if let Some(t) = expire_at {
            self.expires.insert((t, key.clone()));
        }
        self.order.insert(seq, key.clone());
        self.entries.insert(
            key.clone(),
            Entry {
                value,
                expire_at,
                seq,
            },
        );
    }

    /// Changes the expiry of a stored key.
    fn set_expire(&mut self, key: &Bytes, at: Option<i64>) {
        let Some(entry) = self.entries.get_mut(key.as_ref()) else {
            return;
        };
        let old = std::mem::replace(&mut entry.expire_at, at);
        if let Some(t) = old {
            self.expires.remove(&(t, key.clone()));
            self.used = self.used.saturating_sub(EXPIRE_OVERHEAD);
        }
        if let Some(t) = at {
            self.expires.insert((t, key.clone()));
            self.used += EXPIRE_OVERHEAD;
        }
    }

    /// Applies a memory delta measured while a collection was borrowed.
    fn account(&mut self, added: usize, removed: usize) {
        self.used = (self.used + added).saturating_sub(removed);
    }

    /// Deletes `key` if it holds an empty collection (Redis never keeps empty ones).
    fn drop_if_empty(&mut self, key: &[u8]) {
        let empty = match self.entries.get(key).map(|e| &e.value) {
            Some(Value::Hash(h)) => h.is_empty(),
            Some(Value::List(l)) => l.is_empty(),
            Some(Value::Set(s)) => s.is_empty(),
            _ => false,
        };
        if empty {
            self.remove(key);
        }
    }

    // ---- typed access ----

    fn get_str(&self, key: &[u8], now: i64) -> Result<Option<&Bytes>, Reply> {
        match self.live(key, now).map(|e| &e.value) {
            None => Ok(None),
            Some(Value::Str(s)) => Ok(Some(s)),
            Some(_) => wrong_type(),
        }
    }

    fn get_hash(&self, key: &[u8], now: i64) -> Result<Option<&BTreeMap<Bytes, Bytes>>, Reply> {
        match self.live(key, now).map(|e| &e.value) {
            None => Ok(None),
            Some(Value::Hash(h)) => Ok(Some(h)),
            Some(_) => wrong_type(),
        }
    }

    fn get_list(&self, key: &[u8], now: i64) -> Result<Option<&VecDeque<Bytes>>, Reply> {
        match self.live(key, now).map(|e| &e.value) {
            None => Ok(None),
            Some(Value::List(l)) => Ok(Some(l)),
            Some(_) => wrong_type(),
        }
    }

    fn get_set(&self, key: &[u8], now: i64) -> Result<Option<&BTreeSet<Bytes>>, Reply> {
        match self.live(key, now).map(|e| &e.value) {
            None => Ok(None),
            Some(Value::Set(s)) => Ok(Some(s)),
            Some(_) => wrong_type(),
        }
    }

    /// Checks that `key` is absent or holds the same type as `empty`, and creates it as
    /// `empty` if absent and `create`. Callers then borrow the value mutably.
    fn prepare(&mut self, key: &Bytes, empty: Value, create: bool) -> Result<bool, Reply> {
        match self.entries.get(key.as_ref()) {
            Some(e) if std::mem::discriminant(&e.value) != std::mem::discriminant(&empty) => wrong_type(),
            Some(_) => Ok(true),
            None if create => {
                self.put(key, empty, None);
                Ok(true)
            }
            None => Ok(false),
        }
    }

    fn hash_mut(&mut self, key: &Bytes, create: bool) -> Result<Option<&mut BTreeMap<Bytes, Bytes>>, Reply> {
        if !self.prepare(key, Value::Hash(BTreeMap::new()), create)? {
            return Ok(None);
        }
        match self.entries.get_mut(key.as_ref()).map(|e| &mut e.value) {
            Some(Value::Hash(h)) => Ok(Some(h)),
            _ => Ok(None),
        }
    }

    fn list_mut(&mut self, key: &Bytes, create: bool) -> Result<Option<&mut VecDeque<Bytes>>, Reply> {
        if !self.prepare(key, Value::List(VecDeque::new()), create)? {
            return Ok(None);
        }
        match self.entries.get_mut(key.as_ref()).map(|e| &mut e.value) {
            Some(Value::List(l)) => Ok(Some(l)),
            _ => Ok(None),
        }
    }

    fn set_mut(&mut self, key: &Bytes, create: bool) -> Result<Option<&mut BTreeSet<Bytes>>, Reply> {
        if !self.prepare(key, Value::Set(BTreeSet::new()), create)? {
            return Ok(None);
        }
        match self.entries.get_mut(key.as_ref()).map(|e| &mut e.value) {
            Some(Value::Set(s)) => Ok(Some(s)),
            _ => Ok(None),
        }
    }

    /// Resolves an expire argument to an absolute time; a relative one that overflows is the
    /// `invalid expire time` error of `cmd`.
    fn resolve(at: Expire, now: i64, cmd: &str) -> Result<Option<i64>, Reply> {
        match at {
            Expire::None => Ok(None),
            Expire::AbsoluteMs(t) => Ok(Some(t)),
            Expire::RelativeMs(ms) => ms
                .checked_add(now)
                .map(Some)
                .ok_or_else(|| Reply::invalid_expire(cmd)),
        }
    }

    // ---- reads ----

    fn read_op(&self, op: &Op, now: i64) -> Res {
        Ok(match op {
            Op::Get { key } => self
                .get_str(key, now)?
                .map_or(Reply::Nil, |v| Reply::Bulk(v.clone())),
            Op::MGet { keys } => Reply::Array(
                keys.iter()
                    .map(|k| match self.get_str(k, now) {
                        Ok(Some(v)) => Reply::Bulk(v.clone()),
                        _ => Reply::Nil,
                    })
                    .collect(),
            ),
            Op::StrLen { key } => int(self.get_str(key, now)?.map_or(0, |v| v.len())),
            Op::Exists { keys } => int(keys.iter().filter(|k| self.live(k, now).is_some()).count()),
            Op::Ttl { key } => self.ttl(key, now, false, false),
            Op::PTtl { key } => self.ttl(key, now, true, false),
            Op::ExpireTime { key } => self.ttl(key, now, false, true),
            Op::PExpireTime { key } => self.ttl(key, now, true, true),
            Op::Type { key } => Reply::Simple(
                self.live(key, now)
                    .map_or("none", |e| e.value.type_name())
                    .to_owned(),
            ),
            Op::Keys { pattern } => self.keys(pattern, now),
            Op::Scan {
                cursor,
                pattern,
                count,
                kind,
            } => self.scan(*cursor, pattern.as_deref(), *count, kind, now),
            Op::DbSize => {
                // Stored keys minus those expired but not yet reclaimed (few, with active expiry).
                let expired = self.expires.range(..(now, Bytes::new())).count();
                int(self.entries.len().saturating_sub(expired))
            }
            Op::HGet { key, field } => self
                .get_hash(key, now)?
                .and_then(|h| h.get(field))
                .map_or(Reply::Nil, |v| Reply::Bulk(v.clone())),
            Op::HMGet { key, fields } => {
                let h = self.get_hash(key, now)?;
                Reply::Array(
                    fields
                        .iter()
                        .map(|f| {
                            h.and_then(|h| h.get(f))
                                .map_or(Reply::Nil, |v| Reply::Bulk(v.clone()))
                        })
                        .collect(),
                )
            }
            Op::HGetAll { key } => Reply::Map(
                self.get_hash(key, now)?
                    .into_iter()
                    .flatten()
                    .map(|(f, v)| (Reply::Bulk(f.clone()), Reply::Bulk(v.clone())))
                    .collect(),
            ),
            Op::HKeys { key } => {
                Reply::Array(bulks(self.get_hash(key, now)?.into_iter().flat_map(|h| h.keys())))
            }
            Op::HVals { key } => Reply::Array(bulks(
                self.get_hash(key, now)?.into_iter().flat_map(|h| h.values()),
            )),
            Op::HExists { key, field } => Reply::Int(i64::from(
                self.get_hash(key, now)?.is_some_and(|h| h.contains_key(field)),
            )),
            Op::HLen { key } => int(self.get_hash(key, now)?.map_or(0, |h| h.len())),
            Op::HStrLen { key, field } => int(self
                .get_hash(key, now)?
                .and_then(|h| h.get(field))
                .map_or(0, |v| v.len())),
            Op::LRange { key, start, stop } => {
                let Some(list) = self.get_list(key, now)? else {
                    return Ok(Reply::Array(Vec::new()));
                };
                Reply::Array(match list_range(list.len(), *start, *stop) {
                    Some((from, to)) => bulks(list.range(from..=to)),
                    None => Vec::new(),
                })
            }
            Op::LIndex { key, index } => {
                let Some(list) = self.get_list(key, now)? else {
                    return Ok(Reply::Nil);
                };
                let len = i64::try_from(list.len()).unwrap_or(i64::MAX);
                let i = if *index < 0 {
                    len.saturating_add(*index)
                } else {
                    *index
                };
                usize::try_from(i)
                    .ok()
                    .and_then(|i| list.get(i))
                    .map_or(Reply::Nil, |v| Reply::Bulk(v.clone()))
            }
            Op::LLen { key } => int(self.get_list(key, now)?.map_or(0, |l| l.len())),
            Op::SMembers { key } => Reply::Set(bulks(self.get_set(key, now)?.into_iter().flatten())),
            Op::SIsMember { key, member } => Reply::Int(i64::from(
                self.get_set(key, now)?.is_some_and(|s| s.contains(member)),
            )),
            Op::SCard { key } => int(self.get_set(key, now)?.map_or(0, |s| s.len())),
            _ => return Err(Reply::error("ERR write command on the read-only path")),
        })
    }

    /// TTL/PTTL (relative) and EXPIRETIME/PEXPIRETIME (`absolute`): -2 missing, -1 no expiry;
    /// seconds are rounded to the nearest, as Redis does.
    fn ttl(&self, key: &[u8], now: i64, ms: bool, absolute: bool) -> Reply {
        let Some(entry) = self.live(key, now) else {
            return Reply::Int(-2);
        };
        let Some(at) = entry.expire_at else {
            return Reply::Int(-1);
        };
        let t = if absolute { at } else { at.saturating_sub(now) }.max(0);
        Reply::Int(if ms { t } else { t.saturating_add(500) / 1000 })
    }

    /// KEYS: matching live keys, sorted. Only the range sharing the pattern's literal prefix
    /// is visited.
    fn keys(&self, pattern: &[u8], now: i64) -> Reply {
        let prefix = glob::literal_prefix(pattern);
        let all = pattern == b"*";
        let out = self
            .entries
            .range::<[u8], _>((Bound::Included(prefix), Bound::Unbounded))
            .take_while(|(k, _)| k.starts_with(prefix))
            .filter(|(k, e)| !is_expired(e.expire_at, now) && (all || glob::matches(pattern, k)))
            .map(|(k, _)| Reply::Bulk(k.clone()))
            .collect();
        Reply::Array(out)
    }

    /// SCAN: see the module docs for the cursor.
    fn scan(
        &self,
        cursor: u64,
        pattern: Option<&[u8]>,
        count: usize,
        kind: &Option<Bytes>,
        now: i64,
    ) -> Reply {
        let mut out = Vec::new();
        let mut next = 0u64;
        for (visited, (&seq, key)) in self.order.range(cursor..).enumerate() {
            if visited == count {
                next = seq;
                break;
            }
            let Some(entry) = self.entries.get(key) else {
                continue;
            };
            if is_expired(entry.expire_at, now)
                || pattern.is_some_and(|p| !glob::matches(p, key))
                || kind
                    .as_ref()
                    .is_some_and(|t| !t.eq_ignore_ascii_case(entry.value.type_name().as_bytes()))
            {
                continue;
            }
            out.push(Reply::Bulk(key.clone()));
        }
        Reply::Array(vec![
            Reply::Bulk(Bytes::from(next.to_string())),
            Reply::Array(out),
        ])
    }

    // ---- writes (expired keys the op touches were already purged) ----

    fn write(&mut self, op: &Op, now: i64) -> Res {
        match op {
            Op::Set {
                key,
                value,
                expire,
                cond,
                get,
                keep_ttl,
            } => self.set(key, value, *expire, *cond, *get, *keep_ttl, "set", now),
            Op::SetNx { key, value } => {
                let r = self.set(key, value, Expire::None, SetCond::Nx, false, false, "setnx", now)?;
                Ok(Reply::Int(i64::from(r == Reply::Ok)))
            }
            Op::SetEx { key, value, expire } => {
                self.set(key, value, *expire, SetCond::Always, false, false, "setex", now)
            }
            Op::PSetEx { key, value, expire } => {
                self.set(key, value, *expire, SetCond::Always, false, false, "psetex", now)
            }
            Op::GetSet { key, value } => {
                let old = self.get_str(key, now)?.cloned();
                self.put(key, Value::Str(value.clone()), None);
                Ok(old.map_or(Reply::Nil, Reply::Bulk))
            }
            Op::GetDel { key } => {
                let old = self.get_str(key, now)?.cloned();
                if old.is_some() {
                    self.remove(key);
                }
                Ok(old.map_or(Reply::Nil, Reply::Bulk))
            }
            Op::MSet { pairs } => {
                for (k, v) in pairs {
                    self.put(k, Value::Str(v.clone()), None);
                }
                Ok(Reply::Ok)
            }
            Op::MSetNx { pairs } => {
                if pairs.iter().any(|(k, _)| self.entries.contains_key(k)) {
                    return Ok(Reply::Int(0));
                }
                for (k, v) in pairs {
                    self.put(k, Value::Str(v.clone()), None);
                }
                Ok(Reply::Int(1))
            }
            Op::Append { key, value } => {
                let old = self.get_str(key, now)?;
                let len = old.map_or(0, |o| o.len()) + value.len();
                if len > MAX_STRING_LEN {
                    return Err(Reply::error(reply::STRING_TOO_LONG));
                }
                let mut new = Vec::with_capacity(len);
                new.extend_from_slice(old.map_or(&[][..], |o| o.as_ref()));
                new.extend_from_slice(value);
                self.put_keep_ttl(key, Value::Str(Bytes::from(new)));
                Ok(int(len))
            }
            Op::IncrBy { key, delta } => {
                let old = match self.get_str(key, now)? {
                    None => 0,
                    Some(s) => parse_i64(s).ok_or_else(|| Reply::error(reply::NOT_INTEGER))?,
                };
                let new = old
                    .checked_add(*delta)
                    .ok_or_else(|| Reply::error(reply::OVERFLOW))?;
                self.put_keep_ttl(key, Value::Str(Bytes::from(new.to_string())));
                Ok(Reply::Int(new))
            }
            Op::IncrByFloat { key, delta } => {
                let old = match self.get_str(key, now)? {
                    None => 0.0,
                    Some(s) => parse_f64(s).ok_or_else(|| Reply::error(reply::NOT_FLOAT))?,
                };
                let new = old + delta;
                if !new.is_finite() {
                    return Err(Reply::error(reply::NAN_OR_INF));
                }
                let text = Bytes::from(format_f64(new));
                self.put_keep_ttl(key, Value::Str(text.clone()));
                Ok(Reply::Bulk(text))
            }
            Op::Del { keys } => Ok(int(keys.iter().filter(|k| self.remove(k).is_some()).count())),
            Op::Expire { key, at, cond } => self.expire(key, *at, *cond, "expire", now),
            Op::PExpire { key, at, cond } => self.expire(key, *at, *cond, "pexpire", now),
            Op::ExpireAt { key, at, cond } => self.expire(key, *at, *cond, "expireat", now),
            Op::PExpireAt { key, at, cond } => self.expire(key, *at, *cond, "pexpireat", now),
            Op::Persist { key } => {
                if self.entries.get(key).is_some_and(|e| e.expire_at.is_some()) {
                    self.set_expire(key, None);
                    Ok(Reply::Int(1))
                } else {
                    Ok(Reply::Int(0))
                }
            }
            Op::Rename { key, new_key } => self.rename(key, new_key, false),
            Op::RenameNx { key, new_key } => self.rename(key, new_key, true),
            Op::FlushDb => {
                // Sequence numbers are never reused, so a cursor taken before the flush still
                // covers every key created after it.
                *self = Db {
                    last_seq: self.last_seq,
                    ..Db::default()
                };
                Ok(Reply::Ok)
            }
            Op::HSet { key, pairs } => self.hset(key, pairs).map(int),
            Op::HMSet { key, pairs } => self.hset(key, pairs).map(|_| Reply::Ok),
            Op::HSetNx { key, field, value } => {
                let Some(h) = self.hash_mut(key, true)? else {
                    return Ok(Reply::Int(0));
                };
                if h.contains_key(field) {
                    return Ok(Reply::Int(0));
                }
                h.insert(field.clone(), value.clone());
                self.account(HASH_FIELD_OVERHEAD + field.len() + value.len(), 0);
                Ok(Reply::Int(1))
            }
            Op::HDel { key, fields } => {
                let Some(h) = self.hash_mut(key, false)? else {
                    return Ok(Reply::Int(0));
                };
                let (mut n, mut freed) = (0, 0);
                for f in fields {
                    if let Some(v) = h.remove(f) {
                        n += 1;
                        freed += HASH_FIELD_OVERHEAD + f.len() + v.len();
                    }
                }
                self.account(0, freed);
                self.drop_if_empty(key);
                Ok(int(n))
            }
            Op::HIncrBy { key, field, delta } => {
                let Some(h) = self.hash_mut(key, true)? else {
                    return Ok(Reply::Nil);
                };
                let old = match h.get(field) {
                    None => None,
                    Some(v) => Some(parse_i64(v).ok_or_else(|| Reply::error(reply::HASH_NOT_INTEGER))?),
                };
                let new = old
                    .unwrap_or(0)
                    .checked_add(*delta)
                    .ok_or_else(|| Reply::error(reply::OVERFLOW))?;
                let text = Bytes::from(new.to_string());
                let added = text.len()
                    + if old.is_none() {
                        HASH_FIELD_OVERHEAD + field.len()
                    } else {
                        0
                    };
                let removed = h.insert(field.clone(), text).map_or(0, |v| v.len());
                self.account(added, removed);
                Ok(Reply::Int(new))
            }
            Op::Push { key, values, left } => {
                let Some(l) = self.list_mut(key, true)? else {
                    return Ok(Reply::Int(0));
                };
                let mut added = 0;
                for v in values {
                    added += LIST_ITEM_OVERHEAD + v.len();
                    if *left {
                        l.push_front(v.clone());
                    } else {
                        l.push_back(v.clone());
                    }
                }
                let len = l.len();
                self.account(added, 0);
                // Only a hand-built op can push nothing; never keep the empty list it created.
                self.drop_if_empty(key);
                Ok(int(len))
            }
            Op::Pop { key, count, left } => self.pop(key, *count, *left),
            Op::SAdd { key, members } => {
                let Some(s) = self.set_mut(key, true)? else {
                    return Ok(Reply::Int(0));
                };
                let (mut n, mut added) = (0, 0);
                for m in members {
                    if s.insert(m.clone()) {
                        n += 1;
                        added += SET_MEMBER_OVERHEAD + m.len();
                    }
                }
                self.account(added, 0);
                self.drop_if_empty(key);
                Ok(int(n))
            }
            Op::SRem { key, members } => {
                let Some(s) = self.set_mut(key, false)? else {
                    return Ok(Reply::Int(0));
                };
                let (mut n, mut freed) = (0, 0);
                for m in members {
                    if s.remove(m) {
                        n += 1;
                        freed += SET_MEMBER_OVERHEAD + m.len();
                    }
                }
                self.account(0, freed);
                self.drop_if_empty(key);
                Ok(int(n))
            }
            // Reads and DelExpired never get here (see `apply`).
            _ => self.read_op(op, now),
        }
    }

    /// Replaces the value of `key`, keeping its expiry (INCR, APPEND, ... do not reset TTLs).
    fn put_keep_ttl(&mut self, key: &Bytes, value: Value) {
        let ttl = self.entries.get(key.as_ref()).and_then(|e| e.expire_at);
        self.put(key, value, ttl);
    }

    /// SET and its variants, as Redis's `setGenericCommand`.
    #[allow(clippy::too_many_arguments)]
    fn set(
        &mut self,
        key: &Bytes,
        value: &Bytes,
        expire: Expire,
        cond: SetCond,
        get: bool,
        keep_ttl: bool,
        cmd: &str,
        now: i64,
    ) -> Res {
        let at = Self::resolve(expire, now, cmd)?;
        // With GET the old value is the reply, even when NX/XX then blocks the write.
        let old = if get {
            Some(self.get_str(key, now)?.cloned())
        } else {
            None
        };
        let found = self.entries.contains_key(key);
        let blocked = match cond {
            SetCond::Always => false,
            SetCond::Nx => found,
            SetCond::Xx => !found,
        };
        let reply = match old {
            Some(v) => v.map_or(Reply::Nil, Reply::Bulk),
            None if blocked => Reply::Nil,
            None => Reply::Ok,
        };
        if blocked {
            return Ok(reply);
        }
        match at {
            // An expiry already in the past (EXAT/PXAT) leaves no key behind.
            Some(t) if t <= now => {
                self.remove(key);
            }
            _ if keep_ttl => self.put_keep_ttl(key, Value::Str(value.clone())),
            _ => self.put(key, Value::Str(value.clone()), at),
        }
        Ok(reply)
    }

    /// EXPIRE family, as Redis's `expireGenericCommand`.
    fn expire(&mut self, key: &Bytes, at: Expire, cond: ExpireCond, cmd: &str, now: i64) -> Res {
        let Some(when) = Self::resolve(at, now, cmd)? else {
            return Err(Reply::error(reply::SYNTAX));
        };
        let Some(entry) = self.entries.get(key.as_ref()) else {
            return Ok(Reply::Int(0));
        };
        let current = entry.expire_at;
        let pass = match cond {
            ExpireCond::Always => true,
            ExpireCond::Nx => current.is_none(),
            ExpireCond::Xx => current.is_some(),
            // No expiry counts as infinite: never less than a new time, always greater.
            ExpireCond::Gt => current.is_some_and(|c| when > c),
            ExpireCond::Lt => current.is_none_or(|c| when < c),
            ExpireCond::XxLt => current.is_some_and(|c| when < c),
        };
        if !pass {
            return Ok(Reply::Int(0));
        }
        if when <= now {
            self.remove(key);
        } else {
            self.set_expire(key, Some(when));
        }
        Ok(Reply::Int(1))
    }

    /// RENAME / RENAMENX: the value moves with its expiry; the destination's old value and
    /// expiry are dropped.
    fn rename(&mut self, key: &Bytes, new_key: &Bytes, nx: bool) -> Res {
        if !self.entries.contains_key(key) {
            return Err(Reply::error(reply::NO_SUCH_KEY));
        }
        let done = if nx { Reply::Int(1) } else { Reply::Ok };
        if key == new_key {
            return Ok(if nx { Reply::Int(0) } else { done });
        }
        if nx && self.entries.contains_key(new_key) {
            return Ok(Reply::Int(0));
        }
        if let Some(entry) = self.remove(key) {
            self.put(new_key, entry.value, entry.expire_at);
        }
        Ok(done)
    }

    fn hset(&mut self, key: &Bytes, pairs: &[(Bytes, Bytes)]) -> Result<usize, Reply> {
        let Some(h) = self.hash_mut(key, true)? else {
            return Ok(0);
        };
        let (mut new, mut added, mut removed) = (0, 0, 0);
        for (f, v) in pairs {
            added += v.len();
            match h.insert(f.clone(), v.clone()) {
                Some(old) => removed += old.len(),
                None => {
                    new += 1;
                    added += HASH_FIELD_OVERHEAD + f.len();
                }
            }
        }
        self.account(added, removed);
        self.drop_if_empty(key);
        Ok(new)
    }

    /// LPOP/RPOP, as Redis's `popGenericCommand`: without a count one element or nil; with a
    /// count an array (null array if the key is missing, empty array for count 0).
    fn pop(&mut self, key: &Bytes, count: Option<usize>, left: bool) -> Res {
        let Some(l) = self.list_mut(key, false)? else {
            return Ok(if count.is_some() {
                Reply::NilArray
            } else {
                Reply::Nil
            });
        };
        let n = count.unwrap_or(1).min(l.len());
        let mut out = Vec::with_capacity(n);
        let mut freed = 0;
        for _ in 0..n {
            let v = if left { l.pop_front() } else { l.pop_back() };
            if let Some(v) = v {
                freed += LIST_ITEM_OVERHEAD + v.len();
                out.push(Reply::Bulk(v));
            }
        }
        self.account(0, freed);
        self.drop_if_empty(key);
        Ok(match count {
            Some(_) => Reply::Array(out),
            None => out.pop().unwrap_or(Reply::Nil),
        })
    }

    /// Checks the indexes and the memory estimate against the entries (tests only).
    #[cfg(test)]
    pub(crate) fn check_invariants(&self) {
        let mut used = 0;
        for (k, e) in &self.entries {
            used += entry_mem(k, &e.value, e.expire_at.is_some());
            assert_eq!(self.order.get(&e.seq), Some(k), "order index for {k:?}");
            if let Some(t) = e.expire_at {
                assert!(self.expires.contains(&(t, k.clone())), "expiry index for {k:?}");
            }
            assert!(e.seq <= self.last_seq);
            let empty = match &e.value {
                Value::Str(_) => false,
                Value::Hash(h) => h.is_empty(),
                Value::List(l) => l.is_empty(),
                Value::Set(s) => s.is_empty(),
            };
            assert!(!empty, "empty collection kept at {k:?}");
        }
        assert_eq!(self.order.len(), self.entries.len());
        assert_eq!(
            self.expires.len(),
            self.entries.values().filter(|e| e.expire_at.is_some()).count()
        );
        assert_eq!(self.used, used, "memory estimate drifted");
    }
}

/// LRANGE's index normalisation: negative indexes count from the end, out-of-range ones are
/// clamped; `None` for an empty range.
fn list_range(len: usize, start: i64, stop: i64) -> Option<(usize, usize)> {
    let len = i64::try_from(len).ok()?;
    let start = if start < 0 {
        len.saturating_add(start)
    } else {
        start
    }
    .max(0);
    let stop = if stop < 0 { len.saturating_add(stop) } else { stop };
    if start > stop || start >= len {
        return None;
    }
    let stop = stop.min(len - 1);
    Some((usize::try_from(start).ok()?, usize::try_from(stop).ok()?))
}
