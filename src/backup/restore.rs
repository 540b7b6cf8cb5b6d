//! `standin restore FILE`: puts a backup's key space into a running cluster, replicated as
//! one operation.
//!
//! 1. The whole file is read and checked before anything is sent (a damaged file changes
//!    nothing).
//! 2. The leader is found (a 421 from another node names it); a store that holds keys is
//!    refused unless `--force`.
//! 3. A pre-restore backup of the cluster as it is now is written (the path is printed).
//! 4. `Begin`, the chunks in order, then `Commit`: the state machine swaps the staged key
//!    space in at one log index (`cluster::backup`). A failure on the way aborts the restore
//!    on the cluster; the store is unchanged until the commit.
//! 5. The store's digest is read back and compared with the file's.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use hyper::Method;
use serde::{Deserialize, Serialize};

use super::BackupError;
use crate::api::backup::{AbortBody, BeginBody, CommitBody};
use crate::api::client::{request_streaming, Access};
use crate::cluster::backup::{encoded_estimate, KvRecord, CHUNK_BYTES};

/// A restore done.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Restored {
    pub file: PathBuf,
    pub keys: u64,
    pub chunks: u32,
    /// The store's keys before (replaced with `--force`).
    pub replaced: u64,
    pub pre_restore_backup: Option<PathBuf>,
    pub digest: String,
    pub leader_api: String,
    pub index: u64,
    pub seconds: f64,
}

const STEP_TIMEOUT: Duration = Duration::from_secs(60);

/// Posts `body` to the leader's `path`; the answer's body, or the error.
async fn post(
    api: &str,
    access: &Access,
    path: &str,
    body: Vec<u8>,
    ct: &str,
) -> Result<String, BackupError> {
    let s = request_streaming(api, Method::POST, path, Some((body, ct)), STEP_TIMEOUT, access).await?;
    let status = s.status;
    let text = s.text().await;
    match status {
        200 => Ok(text),
        401 => Err(BackupError::Auth(super::api_error(&text, 401))),
        _ => Err(BackupError::Refused(super::api_error(&text, status))),
    }
}

fn json<T: Serialize>(v: &T) -> Result<Vec<u8>, BackupError> {
    serde_json::to_vec(v).map_err(|e| BackupError::Failed(e.to_string()))
}

/// Restores `file` through `api` (any node: the leader is found). `pre_backup`: where the
/// pre-restore backup goes (default: beside `file`).
pub async fn restore(
    api: &str,
    access: &Access,
    file: &Path,
    force: bool,
    pre_backup: Option<PathBuf>,
    progress: bool,
) -> Result<Restored, BackupError> {
    let started = Instant::now();
    // 1. The whole file, checked.
    let path = file.to_path_buf();
    let summary = tokio::task::spawn_blocking(move || super::format::verify_file(&path))
        .await
        .map_err(|e| BackupError::Failed(e.to_string()))?
        .map_err(|e| BackupError::format(file, e))?;
    // 2. The leader, and the store as it is.
    let (s, leader) = super::fetch::open(api, "/v1/backup/digest", access).await?;
    let now: crate::api::backup::DigestView = serde_json::from_str(&s.text().await)
        .map_err(|e| BackupError::Failed(format!("bad digest answer: {e}")))?;
    if now.keys > 0 && !force {
        return Err(BackupError::Refused(format!(
            "the store holds {} keys: restore with --force to replace them (a pre-restore backup is written first)",
            now.keys
        )));
    }
    // 3. The pre-restore backup.
    let pre = match pre_backup {
        Some(p) => p,
        None => {
            let dir = file
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            dir.join(format!("pre-restore-{}.standin", crate::clock::unix_ms()))
        }
    };
    super::fetch::create(
        &leader,
        access,
        false,
        &pre,
        super::fetch::OutFormat::Standin,
        false,
    )
    .await?;
    // 4. Begin, chunks, commit.
    let id = (crate::clock::unix_ms() << 16) ^ u64::from(std::process::id());
    let by = format!(
        "standin restore {} (pid {})",
        file.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        std::process::id()
    );
    post(
        &leader,
        access,
        "/v1/restore/begin",
        json(&BeginBody {
            id,
            keys: summary.keys,
            by: by.clone(),
        })?,
        "application/json",
    )
    .await?;
    let sent = send_chunks(&leader, access, file, id, summary.keys, progress).await;
    let chunks = match sent {
        Ok(n) => n,
        Err(e) => {
            abort(&leader, access, id, &e.to_string()).await;
            return Err(e);
        }
    };
    let committed = post(
        &leader,
        access,
        "/v1/restore/commit",
        json(&CommitBody {
            id,
            chunks,
            keys: summary.keys,
            force,
            digest: summary.kv_digest.clone(),
            by,
        })?,
        "application/json",
    )
    .await;
    if let Err(e) = committed {
        abort(&leader, access, id, &e.to_string()).await;
        return Err(e);
    }
    // 5. The digest read back.
    let after = super::fetch::digest(&leader, access, false).await?;
    if after.digest != summary.kv_digest || after.keys != summary.keys {
        return Err(BackupError::Failed(format!(
            "after the restore the store's digest is {} ({} keys), the backup's {} ({} keys)",
            after.digest, after.keys, summary.kv_digest, summary.keys
        )));
    }
    Ok(Restored {
        file: file.to_path_buf(),
        keys: summary.keys,
        chunks,
        replaced: now.keys,
        pre_restore_backup: Some(pre),
        digest: after.digest,
        leader_api: leader,
        index: after.index,
        seconds: started.elapsed().as_secs_f64(),
    })
}

async fn abort(leader: &str, access: &Access, id: u64, reason: &str) {
    let body = json(&AbortBody {
        id,
        reason: reason.chars().take(300).collect(),
    });
    if let Ok(b) = body {
        let _ = post(leader, access, "/v1/restore/abort", b, "application/json").await;
    }
}

/// Reads the file again and sends its records in chunks of about [`CHUNK_BYTES`], in order;
/// the number of chunks sent.
async fn send_chunks(
    leader: &str,
    access: &Access,
    file: &Path,
    id: u64,
    keys: u64,
    progress: bool,
) -> Result<u32, BackupError> {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(4);
    let path = file.to_path_buf();
    let reader = tokio::task::spawn_blocking(move || {
        let f = std::fs::File::open(&path).map_err(|e| BackupError::format(&path, e.into()))?;
        let mut pending: Vec<KvRecord> = Vec::new();
        let mut size = 0usize;
        let flush = |pending: &mut Vec<KvRecord>| -> Result<(), super::format::FormatError> {
            let bytes = postcard::to_allocvec(pending)
                .map_err(|e| super::format::FormatError::Other(e.to_string()))?;
            pending.clear();
            tx.blocking_send(bytes)
                .map_err(|_| super::format::FormatError::Other("the restore stopped".into()))
        };
        super::format::read(std::io::BufReader::with_capacity(1 << 20, f), |records| {
            for r in records {
                let n = encoded_estimate(&r.key, &r.value);
                if !pending.is_empty() && size + n > CHUNK_BYTES {
                    flush(&mut pending)?;
                    size = 0;
                }
                size += n;
                pending.push(r);
            }
            Ok(())
        })
        .map_err(|e| BackupError::format(&path, e))?;
        if !pending.is_empty() {
            flush(&mut pending).map_err(|e| BackupError::format(&path, e))?;
        }
        Ok::<_, BackupError>(())
    });
    let mut seq = 0u32;
    let mut bar = super::Progress::new(keys, "restore", progress);
    while let Some(chunk) = rx.recv().await {
        let n: u64 = postcard::take_from_bytes::<u32>(&chunk)
            .map(|(n, _)| u64::from(n))
            .unwrap_or(0);
        post(
            leader,
            access,
            &format!("/v1/restore/chunk?id={id}&seq={seq}"),
            chunk,
            "application/octet-stream",
        )
        .await?;
        bar.inc(n);
        seq += 1;
    }
    bar.done();
    reader.await.map_err(|e| BackupError::Failed(e.to_string()))??;
    Ok(seq)
}
