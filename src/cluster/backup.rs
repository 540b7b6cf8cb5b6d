//! Backups and restores as the replicated state machine sees them.
//!
//! * Export: a consistent copy of the state machine at one applied index ([`Copy`]), cut into
//!   length-prefixed postcard frames ([`ExportFrame`]) that the admin API streams and the
//!   backup app (`crate::backup`) turns into a checksummed file.
//! * Restore: a replicated operation of several log entries ([`BackupCmd`]): `Begin` opens a
//!   staging key space, `Chunk`s fill it in order (each within the entry size limits), and one
//!   `Commit` swaps it in whole, so every node switches from the old key space to the restored
//!   one at the same index and a reader never sees half a restore. A new `Begin` supersedes a
//!   restore under way; `Abort` (from the client, or from the leader for one idle too long)
//!   drops it. The staging key space is a part of the state machine ([`BackupPart`], in
//!   snapshots after change control), so a snapshot taken mid-restore carries it.
//! * Reports: each node with scheduled backups reports every attempt (`Report`); the counters
//!   and the `backup-stale` / `backup-failed` alarms are derived from them.
//!
//! Only the key space is restored: the events, deploy history and settings versions a backup
//! also holds describe the cluster it was taken from, and are kept in the file for the record.

use std::collections::BTreeMap;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::kv::db::{Db, Value};

/// Largest encoded size of one chunk of records the export and the restore client cut (a
/// record larger than this travels alone). Far below the entry and frame limits
/// ([`crate::sizes::MAX_ENTRY_BYTES`]), so a chunk moves to a follower within a heartbeat.
pub const CHUNK_BYTES: usize = 1 << 20;
/// Largest restore chunk the admin API accepts (a single large key, up to the store's
/// largest request, travels alone in a chunk).
pub const MAX_CHUNK_BODY: usize = crate::sizes::MAX_REQUEST_SIZE as usize;
/// A restore with no progress for this long is dropped by the leader.
pub const STAGING_IDLE_MS: u64 = 10 * 60 * 1000;
/// Longest text kept in a report (path, error).
pub const MAX_REPORT_TEXT: usize = 1024;

/// One key as a backup holds it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KvRecord {
    pub key: Bytes,
    pub value: Value,
    /// Absolute Unix ms.
    pub expire_at: Option<i64>,
}

/// [`KvRecord`] borrowed from the key space: the same encoding, without copying.
#[derive(Serialize)]
pub struct KvRecordRef<'a> {
    pub key: &'a Bytes,
    pub value: &'a Value,
    pub expire_at: Option<i64>,
}

/// SHA-256 through rustls's ring provider (no hashing dependency of our own).
pub struct Sha256(Box<dyn rustls::crypto::hash::Context>);

impl Sha256 {
    pub fn new() -> Option<Sha256> {
        let suite = rustls::crypto::ring::cipher_suite::TLS13_AES_128_GCM_SHA256.tls13()?;
        Some(Sha256(suite.common.hash_provider.start()))
    }

    pub fn update(&mut self, data: &[u8]) {
        self.0.update(data);
    }

    pub fn finish(self) -> [u8; 32] {
        let out = self.0.finish();
        let mut d = [0u8; 32];
        let bytes = out.as_ref();
        let n = bytes.len().min(32);
        d[..n].copy_from_slice(&bytes[..n]);
        d
    }
}

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The digest of a key space: SHA-256 over the postcard encoding of every record in key
/// order. Equal digests mean the same keys, values and expiries (the scan order and memory
/// estimate are not part of it). Computed the same way from a backup file's chunks.
pub struct KvDigest {
    sha: Sha256,
    buf: Vec<u8>,
    pub keys: u64,
}

impl KvDigest {
    pub fn new() -> Option<KvDigest> {
        Some(KvDigest {
            sha: Sha256::new()?,
            buf: Vec::new(),
            keys: 0,
        })
    }

    pub fn add(&mut self, r: &KvRecordRef<'_>) -> Result<(), postcard::Error> {
        self.buf.clear();
        let buf = std::mem::take(&mut self.buf);
        let buf = postcard::to_extend(r, buf)?;
        self.sha.update(&buf);
        self.buf = buf;
        self.keys += 1;
        Ok(())
    }

    pub fn finish(self) -> String {
        hex(&self.sha.finish())
    }
}

/// The digest of `db` (see [`KvDigest`]).
pub fn db_digest(db: &Db) -> Result<String, String> {
    let mut d = KvDigest::new().ok_or("SHA-256 is not available")?;
    for (key, value, expire_at) in db.records() {
        d.add(&KvRecordRef {
            key,
            value,
            expire_at,
        })
        .map_err(|e| e.to_string())?;
    }
    Ok(d.finish())
}

/// What the state machine keeps for backups: a restore under way and each node's reports.
/// A part of [`super::storage::SmData`] encoded after change control.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct BackupPart {
    pub staging: Option<Staging>,
    /// The scheduled backups of each node, as it reported them.
    pub reports: BTreeMap<String, BackupReport>,
}

/// A restore under way: the key space being filled.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Staging {
    pub id: u64,
    /// The next chunk expected.
    pub next_seq: u32,
    /// Keys the restore announced (more are refused: the staging space stays bounded).
    pub keys: u64,
    pub kv: Db,
    pub by: String,
    pub began_unix_ms: u64,
    pub last_unix_ms: u64,
}

/// A node's scheduled backups.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct BackupReport {
    pub last_success_unix_ms: Option<u64>,
    pub last_size_bytes: u64,
    pub last_path: String,
    pub last_index: u64,
    pub last_keys: u64,
    pub failures_total: u64,
    pub last_failure_unix_ms: Option<u64>,
    pub last_error: Option<String>,
    /// The node's `[backup] max-age`: older than this, the last good backup is stale.
    pub max_age_ms: u64,
    /// When the node first reported (a node that never succeeded is stale from then on).
    pub first_unix_ms: u64,
}

/// One attempt of a scheduled backup, as the node reports it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Attempt {
    pub ok: bool,
    pub size_bytes: u64,
    pub path: String,
    pub index: u64,
    pub keys: u64,
    pub error: Option<String>,
    pub max_age_ms: u64,
    pub at: u64,
}

/// The commands of backups and restores (inside `Command::Backup`). Variant order is the
/// encoding: append new variants at the end.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub enum BackupCmd {
    /// Opens a staging key space for restore `id` (a restore under way is superseded).
    Begin { id: u64, keys: u64, by: String, at: u64 },
    /// The next records of restore `id`, in order (`seq` from 0).
    Chunk {
        id: u64,
        seq: u32,
        records: Vec<KvRecord>,
        at: u64,
    },
    /// Swaps the staging key space in if it holds `chunks` chunks and `keys` keys; refused
    /// while the store holds keys unless `force`. `digest` is the file's, for the history.
    Commit {
        id: u64,
        chunks: u32,
        keys: u64,
        force: bool,
        digest: String,
        by: String,
        at: u64,
    },
    /// Drops restore `id`.
    Abort { id: u64, reason: String, at: u64 },
    /// A scheduled backup of `node` succeeded or failed.
    Report { node: String, attempt: Attempt },
}

/// What applying a [`BackupCmd`] did: its answer, and a line for the history if any.
pub struct Applied {
    pub ok: bool,
    pub message: String,
    pub event: Option<String>,
}

fn refused(message: impl Into<String>) -> Applied {
    Applied {
        ok: false,
        message: message.into(),
        event: None,
    }
}

fn clip(s: &str) -> String {
    s.chars().take(MAX_REPORT_TEXT).collect()
}

impl BackupPart {
    /// Applies `cmd`; `kv` is the live key space (replaced whole by a commit).
    pub fn apply(&mut self, kv: &mut Db, cmd: &BackupCmd) -> Applied {
        match cmd {
            BackupCmd::Begin { id, keys, by, at } => {
                let superseded = self.staging.take().map(|s| s.id);
                self.staging = Some(Staging {
                    id: *id,
                    next_seq: 0,
                    keys: *keys,
                    kv: Db::new(),
                    by: clip(by),
                    began_unix_ms: *at,
                    last_unix_ms: *at,
                });
                let message = match superseded {
                    Some(old) => format!("restore {id} begins; restore {old} under way is dropped"),
                    None => format!("restore {id} begins"),
                };
                Applied {
                    ok: true,
                    message,
                    event: None,
                }
            }
            BackupCmd::Chunk { id, seq, records, at } => {
                let Some(st) = self.staging.as_mut().filter(|s| s.id == *id) else {
                    return refused(format!("restore {id} is not under way (superseded or dropped)"));
                };
                if st.next_seq != *seq {
                    return refused(format!(
                        "restore {id}: chunk {seq} arrived, chunk {} expected",
                        st.next_seq
                    ));
                }
                if st.kv.len() as u64 + records.len() as u64 > st.keys {
                    return refused(format!("restore {id}: more keys than the {} announced", st.keys));
                }
                for r in records {
                    st.kv.restore_record(r.key.clone(), r.value.clone(), r.expire_at);
                }
                st.next_seq += 1;
                st.last_unix_ms = *at;
                Applied {
                    ok: true,
                    message: String::new(),
                    event: None,
                }
            }
            BackupCmd::Commit {
                id,
                chunks,
                keys,
                force,
                digest,
                by,
                at: _,
            } => {
                let Some(st) = self.staging.as_ref().filter(|s| s.id == *id) else {
                    return refused(format!("restore {id} is not under way (superseded or dropped)"));
                };
                if st.next_seq != *chunks {
                    return refused(format!(
                        "restore {id}: {} of {chunks} chunks arrived",
                        st.next_seq
                    ));
                }
                if st.kv.len() as u64 != *keys {
                    return refused(format!(
                        "restore {id}: the staging space holds {} keys, the backup {keys}",
                        st.kv.len()
                    ));
                }
                if !force && !kv.is_empty() {
                    let n = kv.len();
                    self.staging = None;
                    return refused(format!(
                        "the store is not empty ({n} keys): restore with --force to replace them"
                    ));
                }
                let Some(st) = self.staging.take() else {
                    return refused("no restore under way");
                };
                let replaced = kv.len();
                *kv = st.kv;
                Applied {
                    ok: true,
                    message: format!("restored {keys} keys (replaced {replaced})"),
                    event: Some(format!(
                        "restore {id} by {}: {keys} keys restored, {replaced} replaced; digest {digest}",
                        clip(by)
                    )),
                }
            }
            BackupCmd::Abort { id, reason, .. } => {
                if self.staging.as_ref().is_some_and(|s| s.id == *id) {
                    self.staging = None;
                    Applied {
                        ok: true,
                        message: format!("restore {id} dropped"),
                        event: Some(format!("restore {id} abandoned: {}", clip(reason))),
                    }
                } else {
                    refused(format!("restore {id} is not under way"))
                }
            }
            BackupCmd::Report { node, attempt } => {
                let r = self.reports.entry(node.clone()).or_default();
                if r.first_unix_ms == 0 {
                    r.first_unix_ms = attempt.at;
                }
                r.max_age_ms = attempt.max_age_ms;
                if attempt.ok {
                    r.last_success_unix_ms = Some(attempt.at);
                    r.last_size_bytes = attempt.size_bytes;
                    r.last_path = clip(&attempt.path);
                    r.last_index = attempt.index;
                    r.last_keys = attempt.keys;
                } else {
                    r.failures_total += 1;
                    r.last_failure_unix_ms = Some(attempt.at);
                    r.last_error = attempt.error.as_deref().map(clip);
                }
                Applied {
                    ok: true,
                    message: String::new(),
                    event: None,
                }
            }
        }
    }

    /// The restore to drop because it made no progress for [`STAGING_IDLE_MS`] at `now`.
    pub fn abandoned(&self, now: u64) -> Option<u64> {
        self.staging
            .as_ref()
            .filter(|s| now.saturating_sub(s.last_unix_ms) > STAGING_IDLE_MS)
            .map(|s| s.id)
    }

    /// `backup-stale:NODE` while a node's last good backup is older than its max-age (or it
    /// never had one for that long), `backup-failed:NODE` while its last attempt failed.
    pub fn alarms(&self, now: u64) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        for (node, r) in &self.reports {
            let since = r.last_success_unix_ms.unwrap_or(r.first_unix_ms);
            let age = now.saturating_sub(since);
            if r.max_age_ms > 0 && age > r.max_age_ms {
                let detail = match r.last_success_unix_ms {
                    Some(_) => format!(
                        "the last good backup of {node} is {} s old (max-age {} s)",
                        age / 1000,
                        r.max_age_ms / 1000
                    ),
                    None => format!("{node} has taken no good backup in {} s", age / 1000),
                };
                out.insert(format!("backup-stale:{node}"), detail);
            }
            if r.last_failure_unix_ms > r.last_success_unix_ms {
                out.insert(
                    format!("backup-failed:{node}"),
                    format!(
                        "the last backup of {node} failed: {}",
                        r.last_error.as_deref().unwrap_or("unknown error")
                    ),
                );
            }
        }
        out
    }
}

/// A consistent copy of what a backup holds, taken at one applied index (built by the admin
/// API under the state machine's read lock: the key space's values are shared `Bytes`, so
/// this copies the maps, not the data).
pub struct Copy {
    pub index: u64,
    pub term: u64,
    pub epoch: u64,
    pub kv: Db,
    /// The event history, postcard-encoded (`Vec<Event>`): this file stays below the cluster
    /// state, which carries its commands.
    pub events: Vec<u8>,
    pub event_count: u64,
    pub change: super::change::ChangeControl,
    /// The build version of every node, as it last reported it.
    pub versions: BTreeMap<String, String>,
}

/// The first frame of an export: where and when it was taken, and what follows.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ExportHeader {
    pub index: u64,
    pub term: u64,
    pub epoch: u64,
    pub taken_unix_ms: u64,
    /// The node whose state machine was copied.
    pub node: String,
    /// How the copy is consistent: `"leader read barrier"` or `"local applied index"`.
    pub read: String,
    pub versions: BTreeMap<String, String>,
    pub keys: u64,
    /// Bytes of keys and values.
    pub data_bytes: u64,
    pub events: u64,
    /// The build that took it.
    pub build: String,
}

/// One frame of an export stream (each sent as a little-endian `u32` length and postcard).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub enum ExportFrame {
    Header(ExportHeader),
    Kv(Vec<KvRecord>),
    /// The event history, postcard-encoded (`Vec<Event>`).
    Events(Vec<u8>),
    Change(super::change::ChangeControl),
    /// The last frame: the digest of the key space sent.
    End {
        keys: u64,
        digest: String,
    },
}

/// Largest export frame a reader accepts.
pub const MAX_EXPORT_FRAME: usize = crate::sizes::MAX_FRAME;

fn frame(f: &ExportFrame) -> Result<Vec<u8>, String> {
    let body = postcard::to_allocvec(f).map_err(|e| e.to_string())?;
    if body.len() > MAX_EXPORT_FRAME {
        return Err(format!("an export frame of {} bytes is too large", body.len()));
    }
    let mut out = Vec::with_capacity(body.len() + 4);
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&body);
    Ok(out)
}

/// Cuts `copy` into export frames and hands each to `send` (which returns `false` when the
/// reader went away). Runs on a blocking thread: it encodes the whole key space.
pub fn export(
    copy: Copy,
    node: &str,
    read: &str,
    taken_unix_ms: u64,
    mut send: impl FnMut(Vec<u8>) -> bool,
) -> Result<(), String> {
    let data_bytes: u64 = copy
        .kv
        .records()
        .map(|(k, v, _)| (k.len() + value_bytes(v)) as u64)
        .sum();
    let header = ExportHeader {
        index: copy.index,
        term: copy.term,
        epoch: copy.epoch,
        taken_unix_ms,
        node: node.to_string(),
        read: read.to_string(),
        versions: copy.versions.clone(),
        keys: copy.kv.len() as u64,
        data_bytes,
        events: copy.event_count,
        build: crate::version::VERSION.to_string(),
    };
    if !send(frame(&ExportFrame::Header(header))?) {
        return Err("the reader went away".into());
    }
    let mut digest = KvDigest::new().ok_or("SHA-256 is not available")?;
    let mut chunk: Vec<KvRecord> = Vec::new();
    let mut size = 0usize;
    for (key, value, expire_at) in copy.kv.records() {
        let r = KvRecordRef {
            key,
            value,
            expire_at,
        };
        digest.add(&r).map_err(|e| e.to_string())?;
        let n = encoded_estimate(key, value);
        if !chunk.is_empty() && size + n > CHUNK_BYTES {
            if !send(frame(&ExportFrame::Kv(std::mem::take(&mut chunk)))?) {
                return Err("the reader went away".into());
            }
            size = 0;
        }
        size += n;
        chunk.push(KvRecord {
            key: key.clone(),
            value: value.clone(),
            expire_at,
        });
    }
    if !chunk.is_empty() && !send(frame(&ExportFrame::Kv(chunk))?) {
        return Err("the reader went away".into());
    }
    if !send(frame(&ExportFrame::Events(copy.events))?) || !send(frame(&ExportFrame::Change(copy.change))?) {
        return Err("the reader went away".into());
    }
    let keys = digest.keys;
    if !send(frame(&ExportFrame::End {
        keys,
        digest: digest.finish(),
    })?) {
        return Err("the reader went away".into());
    }
    Ok(())
}

/// About the encoded size of a record (data plus a few bytes of lengths per element): what a
/// chunk is cut by.
pub fn encoded_estimate(key: &Bytes, value: &Value) -> usize {
    let elements = match value {
        Value::Str(_) => 1,
        Value::Hash(h) => 2 * h.len(),
        Value::List(l) => l.len(),
        Value::Set(s) => s.len(),
    };
    16 + key.len() + value_bytes(value) + 5 * elements
}

/// Bytes of data in a value (keys, fields, members, items).
pub fn value_bytes(v: &Value) -> usize {
    match v {
        Value::Str(s) => s.len(),
        Value::Hash(h) => h.iter().map(|(f, v)| f.len() + v.len()).sum(),
        Value::List(l) => l.iter().map(Bytes::len).sum(),
        Value::Set(s) => s.iter().map(Bytes::len).sum(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(k: &str, v: &str) -> KvRecord {
        KvRecord {
            key: Bytes::from(k.to_string()),
            value: Value::Str(Bytes::from(v.to_string())),
            expire_at: None,
        }
    }

    /// A restore applies only in order, only for the restore under way, swaps in whole at the
    /// commit, refuses a non-empty store without force, and a new Begin supersedes.
    #[test]
    fn a_restore_stages_then_swaps_in_whole() {
        let mut part = BackupPart::default();
        let mut kv = Db::new();
        let begin = |id| BackupCmd::Begin {
            id,
            keys: 3,
            by: "t".into(),
            at: 1,
        };
        let chunk = |id, seq, records| BackupCmd::Chunk {
            id,
            seq,
            records,
            at: 2,
        };
        let commit = |id, force| BackupCmd::Commit {
            id,
            chunks: 2,
            keys: 3,
            force,
            digest: "d".into(),
            by: "t".into(),
            at: 3,
        };
        assert!(part.apply(&mut kv, &begin(1)).ok);
        assert!(
            part.apply(&mut kv, &chunk(1, 0, vec![rec("a", "1"), rec("b", "2")]))
                .ok
        );
        assert!(
            !part.apply(&mut kv, &chunk(1, 0, vec![rec("c", "3")])).ok,
            "out of order"
        );
        assert!(!part.apply(&mut kv, &commit(1, false)).ok, "a chunk is missing");
        assert!(kv.is_empty(), "nothing visible before the commit");
        assert!(part.apply(&mut kv, &chunk(1, 1, vec![rec("c", "3")])).ok);
        assert!(
            !part.apply(&mut kv, &chunk(1, 2, vec![rec("d", "4")])).ok,
            "more than announced"
        );
        // A new restore supersedes this one.
        assert!(part.apply(&mut kv, &begin(2)).ok);
        assert!(!part.apply(&mut kv, &commit(1, false)).ok);
        assert!(
            part.apply(&mut kv, &chunk(2, 0, vec![rec("a", "1"), rec("b", "2")]))
                .ok
        );
        assert!(part.apply(&mut kv, &chunk(2, 1, vec![rec("c", "3")])).ok);
        let a = part.apply(&mut kv, &commit(2, false));
        assert!(a.ok, "{}", a.message);
        assert_eq!(kv.len(), 3);
        assert!(part.staging.is_none());
        // The store now holds keys: a restore without force is refused and changes nothing.
        assert!(part.apply(&mut kv, &begin(3)).ok);
        assert!(part.apply(&mut kv, &chunk(3, 0, vec![rec("x", "1")])).ok);
        assert!(
            part.apply(&mut kv, &chunk(3, 1, vec![rec("y", "1"), rec("z", "1")]))
                .ok
        );
        let a = part.apply(&mut kv, &commit(3, false));
        assert!(!a.ok && a.message.contains("--force"), "{}", a.message);
        assert_eq!(kv.value(b"a", 0), Some(&Value::Str(Bytes::from("1"))));
        assert!(kv.value(b"x", 0).is_none());
    }

    /// A restore that stops making progress is named for the leader to drop, and an Abort
    /// drops it (only the one under way).
    #[test]
    fn an_idle_restore_is_abandoned() {
        let mut part = BackupPart::default();
        let mut kv = Db::new();
        let begin = BackupCmd::Begin {
            id: 7,
            keys: 1,
            by: "t".into(),
            at: 1000,
        };
        assert!(part.apply(&mut kv, &begin).ok);
        assert_eq!(part.abandoned(1000 + STAGING_IDLE_MS), None);
        assert_eq!(part.abandoned(1001 + STAGING_IDLE_MS), Some(7));
        let abort = |id| BackupCmd::Abort {
            id,
            reason: "idle".into(),
            at: 2,
        };
        assert!(!part.apply(&mut kv, &abort(8)).ok, "not the one under way");
        let a = part.apply(&mut kv, &abort(7));
        assert!(a.ok && a.event.is_some_and(|e| e.contains("abandoned")));
        assert!(part.staging.is_none());
        assert_eq!(part.abandoned(u64::MAX), None);
    }

    #[test]
    fn stale_and_failed_alarms_follow_the_reports() {
        let mut part = BackupPart::default();
        let mut kv = Db::new();
        let report = |ok, at| BackupCmd::Report {
            node: "a".into(),
            attempt: Attempt {
                ok,
                size_bytes: 10,
                path: "/b/x".into(),
                index: 5,
                keys: 1,
                error: (!ok).then(|| "disk full".to_string()),
                max_age_ms: 1000,
                at,
            },
        };
        part.apply(&mut kv, &report(true, 100));
        assert!(part.alarms(500).is_empty());
        assert!(part.alarms(1200).contains_key("backup-stale:a"));
        part.apply(&mut kv, &report(false, 1300));
        let a = part.alarms(1300);
        assert!(a["backup-failed:a"].contains("disk full"));
        part.apply(&mut kv, &report(true, 1400));
        assert!(part.alarms(1500).is_empty(), "cleared by a good one");
        assert_eq!(part.reports["a"].failures_total, 1);
    }

    #[test]
    fn the_digest_depends_on_contents_only() {
        let mut a = Db::new();
        let mut b = Db::new();
        a.restore_record(Bytes::from("k1"), Value::Str(Bytes::from("v")), None);
        a.restore_record(Bytes::from("k2"), Value::Str(Bytes::from("w")), Some(5));
        b.restore_record(Bytes::from("k2"), Value::Str(Bytes::from("w")), Some(5));
        b.restore_record(Bytes::from("k1"), Value::Str(Bytes::from("v")), None);
        assert_eq!(db_digest(&a), db_digest(&b));
        b.restore_record(Bytes::from("k2"), Value::Str(Bytes::from("w")), Some(6));
        assert_ne!(db_digest(&a), db_digest(&b));
    }
}
