//! The keyspace: values, expiry and memory accounting, and the typed access the command
//! families ([`super::families`]) build every [`Op`](super::cmd::Op) on. [`Db::apply`] and [`Db::read`], which
//! hand each op to its family, are defined with the dispatch tables in `families/mod.rs`:
//! this file sits below the families.
//!
//! [`Db`] is the replicated state machine of the store. Every replica applies the same ops at
//! the same times (`now_ms` is the log entry's time, never a clock read) and must end in the
//! same state with the same replies, so:
//! - all containers are ordered (`BTreeMap`/`BTreeSet`): iteration order, hence reply order
//!   (KEYS, HGETALL, SMEMBERS, SCAN), depends only on the contents;
//! - an expired key counts as absent for every command; writes delete the expired keys they
//!   touch, reads leave them in place (they are reclaimed by writes or by the leader's active
//!   expiry, [`Op::DelExpired`](super::cmd::Op::DelExpired)), so a read never changes state and can run on any replica;
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

use bytes::Bytes;
use serde::{Deserialize, Serialize, Serializer};

use super::cmd::Expire;
use super::reply::Reply;

/// Estimated fixed cost of a key: map node, entry struct, scan-order index node.
pub(super) const ENTRY_OVERHEAD: usize = 96;
/// Estimated cost of an expiry (the expiry index node).
pub(super) const EXPIRE_OVERHEAD: usize = 48;
/// Estimated fixed cost of one hash field (map node and two `Bytes` handles).
pub(super) const HASH_FIELD_OVERHEAD: usize = 64;
/// Estimated fixed cost of one list element (a `Bytes` handle in the deque).
pub(super) const LIST_ITEM_OVERHEAD: usize = 32;
/// Estimated fixed cost of one set member (set node and a `Bytes` handle).
pub(super) const SET_MEMBER_OVERHEAD: usize = 48;
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
pub(super) struct Entry {
    pub(super) value: Value,
    /// Absolute Unix ms; the key is expired once `now > expire_at` (as Redis's `keyIsExpired`).
    pub(super) expire_at: Option<i64>,
    /// Creation sequence number: the SCAN order (see the module docs).
    seq: u64,
}

/// Estimated bytes a key costs in total.
fn entry_mem(key: &[u8], value: &Value, has_expire: bool) -> usize {
    ENTRY_OVERHEAD + key.len() + value.mem() + if has_expire { EXPIRE_OVERHEAD } else { 0 }
}

/// True if an expiry time has passed at `now` (the key is alive during its last millisecond).
pub(super) fn is_expired(expire_at: Option<i64>, now: i64) -> bool {
    matches!(expire_at, Some(t) if now > t)
}

/// The keyspace of one database.
///
/// Serialized (snapshots) as the sequence counter and the list of entries; the indexes and
/// the memory estimate are rebuilt on deserialization.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(from = "Snapshot")]
///
/// The families read the maps directly (KEYS and SCAN walk them); only the storage primitives
/// below change them, so the indexes and the memory estimate stay in step.
pub struct Db {
    pub(super) entries: BTreeMap<Bytes, Entry>,
    /// (expire_at, key) for every key with an expiry: active expiry takes the oldest first.
    expires: BTreeSet<(i64, Bytes)>,
    /// seq → key: the SCAN order.
    pub(super) order: BTreeMap<u64, Bytes>,
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
pub(super) type Res = Result<Reply, Reply>;

/// A family's answer for an op: `Ok(None)` if the op is not the family's.
pub(super) type Outcome = Result<Option<Reply>, Reply>;

pub(super) fn wrong_type<T>() -> Result<T, Reply> {
    Err(Reply::wrong_type())
}

pub(super) fn int(n: usize) -> Reply {
    Reply::Int(i64::try_from(n).unwrap_or(i64::MAX))
}

pub(super) fn bulks<'a>(items: impl Iterator<Item = &'a Bytes>) -> Vec<Reply> {
    items.map(|b| Reply::Bulk(b.clone())).collect()
}

impl Db {
    /// An empty keyspace.
    pub fn new() -> Db {
        Db::default()
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

    /// Every stored key with its value and expiry, in key order (expired keys not yet
    /// reclaimed included, with their expiry: a copy restores the same state). For backups.
    pub fn records(&self) -> impl Iterator<Item = (&Bytes, &Value, Option<i64>)> + '_ {
        self.entries.iter().map(|(k, e)| (k, &e.value, e.expire_at))
    }

    /// Stores `key` as a backup holds it (restore). An empty collection is not stored (the
    /// store never keeps one); a key already there is replaced.
    pub fn restore_record(&mut self, key: Bytes, value: Value, expire_at: Option<i64>) {
        let empty = match &value {
            Value::Str(_) => false,
            Value::Hash(h) => h.is_empty(),
            Value::List(l) => l.is_empty(),
            Value::Set(s) => s.is_empty(),
        };
        if !empty {
            self.put(&key, value, expire_at);
        }
    }

    // ---- storage primitives: the only code that touches the indexes and the estimate ----

    pub(super) fn live(&self, key: &[u8], now: i64) -> Option<&Entry> {
        self.entries.get(key).filter(|e| !is_expired(e.expire_at, now))
    }

    /// Active expiry ([`Op::DelExpired`](super::cmd::Op::DelExpired)): deletes those of `keys` that are expired at `now`;
    /// how many it deleted.
    pub(super) fn purge_expired(&mut self, keys: &[Bytes], now: i64) -> usize {
        keys.iter().filter(|k| self.purge_if_expired(k, now)).count()
    }

    /// Deletes `key` if it is stored and expired at `now`; true if it did.
    pub(super) fn purge_if_expired(&mut self, key: &[u8], now: i64) -> bool {
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
    pub(super) fn remove(&mut self, key: &[u8]) -> Option<Entry> {
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
    pub(super) fn put(&mut self, key: &Bytes, value: Value, expire_at: Option<i64>) {
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

    /// Replaces the value of `key`, keeping its expiry (INCR, APPEND, ... do not reset TTLs).
    pub(super) fn put_keep_ttl(&mut self, key: &Bytes, value: Value) {
        let ttl = self.entries.get(key.as_ref()).and_then(|e| e.expire_at);
        self.put(key, value, ttl);
    }

    /// True if `key` is stored (the caller purged it first if it was expired).
    pub(super) fn is_stored(&self, key: &[u8]) -> bool {
        self.entries.contains_key(key)
    }

    /// The expiry of a stored key (the caller purged it first if it was expired).
    pub(super) fn expire_at(&self, key: &[u8]) -> Option<i64> {
        self.entries.get(key).and_then(|e| e.expire_at)
    }

    /// Stored keys minus those expired but not yet reclaimed (few, with active expiry): DBSIZE.
    pub(super) fn live_len(&self, now: i64) -> usize {
        let expired = self.expires.range(..(now, Bytes::new())).count();
        self.entries.len().saturating_sub(expired)
    }

    /// Empties the key space (FLUSHDB).
    pub(super) fn flush(&mut self) {
        // Sequence numbers are never reused, so a cursor taken before the flush still covers
        // every key created after it.
        *self = Db {
            last_seq: self.last_seq,
            ..Db::default()
        };
    }

    /// Changes the expiry of a stored key.
    pub(super) fn set_expire(&mut self, key: &Bytes, at: Option<i64>) {
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
    pub(super) fn account(&mut self, added: usize, removed: usize) {
        self.used = (self.used + added).saturating_sub(removed);
    }

    /// Deletes `key` if it holds an empty collection (Redis never keeps empty ones).
    pub(super) fn drop_if_empty(&mut self, key: &[u8]) {
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

    pub(super) fn get_str(&self, key: &[u8], now: i64) -> Result<Option<&Bytes>, Reply> {
        match self.live(key, now).map(|e| &e.value) {
            None => Ok(None),
            Some(Value::Str(s)) => Ok(Some(s)),
            Some(_) => wrong_type(),
        }
    }

    pub(super) fn get_hash(&self, key: &[u8], now: i64) -> Result<Option<&BTreeMap<Bytes, Bytes>>, Reply> {
        match self.live(key, now).map(|e| &e.value) {
            None => Ok(None),
            Some(Value::Hash(h)) => Ok(Some(h)),
            Some(_) => wrong_type(),
        }
    }

    pub(super) fn get_list(&self, key: &[u8], now: i64) -> Result<Option<&VecDeque<Bytes>>, Reply> {
        match self.live(key, now).map(|e| &e.value) {
            None => Ok(None),
            Some(Value::List(l)) => Ok(Some(l)),
            Some(_) => wrong_type(),
        }
    }

    pub(super) fn get_set(&self, key: &[u8], now: i64) -> Result<Option<&BTreeSet<Bytes>>, Reply> {
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

    pub(super) fn hash_mut(
        &mut self,
        key: &Bytes,
        create: bool,
    ) -> Result<Option<&mut BTreeMap<Bytes, Bytes>>, Reply> {
        if !self.prepare(key, Value::Hash(BTreeMap::new()), create)? {
            return Ok(None);
        }
        match self.entries.get_mut(key.as_ref()).map(|e| &mut e.value) {
            Some(Value::Hash(h)) => Ok(Some(h)),
            _ => Ok(None),
        }
    }

    pub(super) fn list_mut(
        &mut self,
        key: &Bytes,
        create: bool,
    ) -> Result<Option<&mut VecDeque<Bytes>>, Reply> {
        if !self.prepare(key, Value::List(VecDeque::new()), create)? {
            return Ok(None);
        }
        match self.entries.get_mut(key.as_ref()).map(|e| &mut e.value) {
            Some(Value::List(l)) => Ok(Some(l)),
            _ => Ok(None),
        }
    }

    pub(super) fn set_mut(
        &mut self,
        key: &Bytes,
        create: bool,
    ) -> Result<Option<&mut BTreeSet<Bytes>>, Reply> {
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
    pub(super) fn resolve(at: Expire, now: i64, cmd: &str) -> Result<Option<i64>, Reply> {
        match at {
            Expire::None => Ok(None),
            Expire::AbsoluteMs(t) => Ok(Some(t)),
            Expire::RelativeMs(ms) => ms
                .checked_add(now)
                .map(Some)
                .ok_or_else(|| Reply::invalid_expire(cmd)),
        }
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
