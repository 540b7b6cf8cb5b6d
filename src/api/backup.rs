//! The admin API of backups and restores: the export stream a backup is written from, the
//! digest of the key space, the restore steps, and the nodes' backup reports.
//!
//! An export is a consistent copy of the state machine at one applied index: on the leader
//! after a read barrier (everything committed before the request is in it), or with
//! `?local=true` from the node asked, at its own applied index (scheduled backups). Restore
//! steps are written by the leader only; another node answers 421 naming the leader's API,
//! and the client goes there. The file format itself belongs to the backup app
//! (`crate::backup`): this layer sends postcard frames ([`crate::cluster::backup::ExportFrame`]).

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};

use super::serve::error_response;
use super::AdminContext;
use crate::cluster::backup::{Attempt, BackupCmd, BackupPart, KvRecord};
use crate::cluster::state::Command;
use crate::cluster::Cluster;

/// `?local=true`: copy this node's state machine as it is, without asking the leader.
#[derive(Debug, Default, Deserialize)]
pub struct ExportQuery {
    #[serde(default)]
    pub local: bool,
}

/// The answer when a request must go to the leader (421).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NotLeader {
    pub error: String,
    pub retry: bool,
    /// The leader's admin API (`http://host:port` or `https://…`), if known.
    pub leader_api: Option<String>,
}

fn leader_api(node: &AdminContext) -> Option<String> {
    let leader = node.cluster.leader()?;
    let m = node.cluster.members().iter().find(|m| m.id == leader).cloned()?;
    Some(format!("{}://{}", node.config.api.scheme(), m.admin))
}

fn not_leader(node: &AdminContext) -> Response {
    let api = leader_api(node);
    (
        StatusCode::MISDIRECTED_REQUEST,
        Json(NotLeader {
            error: format!(
                "{} is not the leader; ask {}",
                node.cluster.me(),
                api.as_deref().unwrap_or("the leader (none known now)")
            ),
            retry: api.is_none(),
            leader_api: api,
        }),
    )
        .into_response()
}

/// Takes the copy: after a read barrier on the leader, or locally. `Err` is the answer.
async fn copy(
    node: &AdminContext,
    local: bool,
) -> Result<(crate::cluster::backup::Copy, &'static str), Response> {
    let read = if local {
        "local applied index"
    } else {
        if !node.cluster.is_leader() {
            return Err(not_leader(node));
        }
        if let Err(e) = node.cluster.confirm_leadership().await {
            return Err(error_response(
                StatusCode::SERVICE_UNAVAILABLE,
                e.to_string(),
                true,
            ));
        }
        "leader read barrier"
    };
    let c = node
        .cluster
        .sm
        .read(copy_of)
        .map_err(|e| error_response(StatusCode::INTERNAL_SERVER_ERROR, e, false))?;
    Ok((c, read))
}

/// Copies what a backup holds from the state machine's data (under its read lock).
fn copy_of(d: &crate::cluster::storage::SmData) -> Result<crate::cluster::backup::Copy, String> {
    let events: Vec<&crate::cluster::state::Event> = d.state.events.iter().collect();
    let encoded = postcard::to_allocvec(&events).map_err(|e| e.to_string())?;
    Ok(crate::cluster::backup::Copy {
        index: d.last_applied.map_or(0, |l| l.index),
        term: d.last_applied.map_or(0, |l| l.leader_id.term),
        epoch: d.state.epoch,
        kv: d.kv.clone(),
        events: encoded,
        event_count: events.len() as u64,
        change: d.change.clone(),
        versions: d
            .state
            .nodes
            .iter()
            .map(|(n, r)| (n.clone(), r.version.clone()))
            .collect(),
    })
}

/// `GET /v1/backup`: the export stream.
pub async fn export_handler(State(node): State<Arc<AdminContext>>, Query(q): Query<ExportQuery>) -> Response {
    let (copy, read) = match copy(&node, q.local).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let me = node.cluster.me().to_string();
    let (tx, rx) = tokio::sync::mpsc::channel::<Vec<u8>>(4);
    let taken = crate::clock::unix_ms();
    tokio::task::spawn_blocking(move || {
        let r =
            crate::cluster::backup::export(copy, &me, read, taken, |bytes| tx.blocking_send(bytes).is_ok());
        if let Err(e) = r {
            // The stream ends early: the client sees it cut short and refuses it.
            tracing::warn!(error = %e, "backup export stopped");
        }
    });
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|b| (Ok::<_, std::io::Error>(axum::body::Bytes::from(b)), rx))
    });
    (
        [(axum::http::header::CONTENT_TYPE, "application/octet-stream")],
        axum::body::Body::from_stream(stream),
    )
        .into_response()
}

/// `GET /v1/backup/digest`: the digest of the key space (see `cluster::backup::KvDigest`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DigestView {
    pub node: String,
    pub read: String,
    pub index: u64,
    pub keys: u64,
    pub digest: String,
}

pub async fn digest_handler(State(node): State<Arc<AdminContext>>, Query(q): Query<ExportQuery>) -> Response {
    let (copy, read) = match copy(&node, q.local).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let me = node.cluster.me().to_string();
    let answer = tokio::task::spawn_blocking(move || {
        crate::cluster::backup::db_digest(&copy.kv).map(|digest| DigestView {
            node: me,
            read: read.to_string(),
            index: copy.index,
            keys: copy.kv.len() as u64,
            digest,
        })
    })
    .await;
    match answer {
        Ok(Ok(v)) => Json(v).into_response(),
        Ok(Err(e)) => error_response(StatusCode::INTERNAL_SERVER_ERROR, e, false),
        Err(e) => error_response(StatusCode::INTERNAL_SERVER_ERROR, e.to_string(), false),
    }
}

/// `GET /v1/backup/status`: every node's scheduled backups and the restore under way.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct BackupStatus {
    pub reports: std::collections::BTreeMap<String, crate::cluster::backup::BackupReport>,
    pub restore: Option<RestoreProgress>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RestoreProgress {
    pub id: u64,
    pub chunks: u32,
    pub keys_staged: u64,
    pub keys: u64,
    pub by: String,
    pub began_unix_ms: u64,
}

pub fn backup_status(part: &BackupPart) -> BackupStatus {
    BackupStatus {
        reports: part.reports.clone(),
        restore: part.staging.as_ref().map(|s| RestoreProgress {
            id: s.id,
            chunks: s.next_seq,
            keys_staged: s.kv.len() as u64,
            keys: s.keys,
            by: s.by.clone(),
            began_unix_ms: s.began_unix_ms,
        }),
    }
}

pub async fn status_handler(State(node): State<Arc<AdminContext>>) -> Json<BackupStatus> {
    Json(node.cluster.sm.read(|d| backup_status(&d.backup)))
}

/// `POST /v1/backup/report`: this node's scheduler reports an attempt (written for this node).
pub async fn report_handler(State(node): State<Arc<AdminContext>>, Json(attempt): Json<Attempt>) -> Response {
    let cmd = Command::Backup(BackupCmd::Report {
        node: node.cluster.me().to_string(),
        attempt,
    });
    write(&node.cluster, cmd, false).await
}

/// Commits a restore step (leader) or a report (any node, forwarded).
async fn write(cluster: &Cluster, cmd: Command, leader_only: bool) -> Response {
    let r = if leader_only {
        cluster.write_local(cmd).await
    } else {
        cluster.write(cmd).await
    };
    match r {
        Ok(r) if r.ok => Json(super::AdminReply {
            ok: true,
            message: r.message,
            epoch: cluster.sm.read(|d| d.state.epoch),
            active: None,
        })
        .into_response(),
        Ok(r) => error_response(StatusCode::CONFLICT, r.message, false),
        Err(e) => error_response(StatusCode::SERVICE_UNAVAILABLE, e.to_string(), e.retryable()),
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BeginBody {
    pub id: u64,
    pub keys: u64,
    pub by: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CommitBody {
    pub id: u64,
    pub chunks: u32,
    pub keys: u64,
    pub force: bool,
    pub digest: String,
    pub by: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AbortBody {
    pub id: u64,
    pub reason: String,
}

#[derive(Debug, Deserialize)]
pub struct ChunkQuery {
    pub id: u64,
    pub seq: u32,
}

pub async fn begin_handler(State(node): State<Arc<AdminContext>>, Json(b): Json<BeginBody>) -> Response {
    if !node.cluster.is_leader() {
        return not_leader(&node);
    }
    // A restore writes the whole key space to the log: not on a disk that is nearly full.
    if let Err(e) = node.cluster.space.check() {
        return error_response(StatusCode::INSUFFICIENT_STORAGE, e.to_string(), false);
    }
    let cmd = BackupCmd::Begin {
        id: b.id,
        keys: b.keys,
        by: b.by,
        at: crate::clock::unix_ms(),
    };
    write(&node.cluster, Command::Backup(cmd), true).await
}

/// `POST /v1/restore/chunk?id=..&seq=..`: the body is a postcard `Vec<KvRecord>`.
pub async fn chunk_handler(
    State(node): State<Arc<AdminContext>>,
    Query(q): Query<ChunkQuery>,
    body: axum::body::Bytes,
) -> Response {
    if !node.cluster.is_leader() {
        return not_leader(&node);
    }
    if let Err(e) = node.cluster.space.check() {
        return error_response(StatusCode::INSUFFICIENT_STORAGE, e.to_string(), false);
    }
    let records: Vec<KvRecord> = match postcard::from_bytes(&body) {
        Ok(r) => r,
        Err(e) => {
            return error_response(
                StatusCode::BAD_REQUEST,
                format!(
                    "restore chunk {} of {} bytes cannot be decoded: {e}",
                    q.seq,
                    body.len()
                ),
                false,
            )
        }
    };
    let cmd = BackupCmd::Chunk {
        id: q.id,
        seq: q.seq,
        records,
        at: crate::clock::unix_ms(),
    };
    write(&node.cluster, Command::Backup(cmd), true).await
}

pub async fn commit_handler(State(node): State<Arc<AdminContext>>, Json(b): Json<CommitBody>) -> Response {
    if !node.cluster.is_leader() {
        return not_leader(&node);
    }
    let cmd = BackupCmd::Commit {
        id: b.id,
        chunks: b.chunks,
        keys: b.keys,
        force: b.force,
        digest: b.digest,
        by: b.by,
        at: crate::clock::unix_ms(),
    };
    write(&node.cluster, Command::Backup(cmd), true).await
}

pub async fn abort_handler(State(node): State<Arc<AdminContext>>, Json(b): Json<AbortBody>) -> Response {
    if !node.cluster.is_leader() {
        return not_leader(&node);
    }
    let cmd = BackupCmd::Abort {
        id: b.id,
        reason: b.reason,
        at: crate::clock::unix_ms(),
    };
    write(&node.cluster, Command::Backup(cmd), true).await
}

/// The backup metrics of every node that reports scheduled backups (`/metrics`).
pub fn register_metrics(reg: &mut prometheus_client::registry::Registry, part: &BackupPart, now_ms: u64) {
    use crate::metrics::l;
    use prometheus_client::metrics::family::Family;
    use prometheus_client::metrics::gauge::Gauge;
    type F = Family<crate::metrics::Labels, Gauge<f64, std::sync::atomic::AtomicU64>>;
    let last: F = Family::default();
    let size: F = Family::default();
    let age: F = Family::default();
    let failures: F = Family::default();
    reg.register(
        "backup_last_success_timestamp_seconds",
        "Unix time of the node's last good scheduled backup",
        last.clone(),
    );
    reg.register(
        "backup_size_bytes",
        "Size of the node's last good scheduled backup file",
        size.clone(),
    );
    reg.register(
        "backup_age_seconds",
        "Age of the node's last good scheduled backup (since its first report if none)",
        age.clone(),
    );
    reg.register(
        "backup_failures_total",
        "Scheduled backups of the node that failed",
        failures.clone(),
    );
    for (n, r) in &part.reports {
        let labels = l(&[("node", n)]);
        if let Some(t) = r.last_success_unix_ms {
            last.get_or_create(&labels).set(t as f64 / 1000.0);
            size.get_or_create(&labels).set(r.last_size_bytes as f64);
        }
        let since = r.last_success_unix_ms.unwrap_or(r.first_unix_ms);
        age.get_or_create(&labels)
            .set(now_ms.saturating_sub(since) as f64 / 1000.0);
        failures.get_or_create(&labels).set(r.failures_total as f64);
    }
}
