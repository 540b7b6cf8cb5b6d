//! Taking a backup: reads a node's export stream (`GET /v1/backup`) and writes the backup file
//! ([`super::format`]) or a Redis command stream ([`super::resp`]) to a temporary file beside
//! the target, fsyncs it, and renames it into place (then fsyncs the directory): a backup file
//! is there complete or not at all.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use hyper::Method;
use serde::{Deserialize, Serialize};

use super::format::{End, Header, Writer, KIND_CHANGE, KIND_EVENTS, KIND_KV};
use super::BackupError;
use crate::api::client::{request_streaming, Access, Streaming};
use crate::cluster::backup::{ExportFrame, KvDigest, KvRecordRef, MAX_EXPORT_FRAME};

/// What a backup file holds: standin's format, or Redis commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OutFormat {
    Standin,
    Resp,
}

/// A backup written.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Created {
    pub path: PathBuf,
    pub format: OutFormat,
    pub bytes: u64,
    pub keys: u64,
    pub index: u64,
    pub term: u64,
    pub epoch: u64,
    pub node: String,
    pub read: String,
    pub taken_unix_ms: u64,
    pub kv_digest: String,
    pub seconds: f64,
}

/// How long the answer's head may take (the copy is taken before it is sent: a large key
/// space on a slow node takes a while).
const HEAD_TIMEOUT: Duration = Duration::from_secs(120);

/// How long a request waits for a leader to be known (an election under way).
const LEADER_WAIT: Duration = Duration::from_secs(10);

/// Opens `GET path` on `api`; a 421 (not the leader) is followed to the leader's API, and
/// while no leader is known (421 without one, or 503 from a read barrier that did not
/// complete) it is asked again for up to [`LEADER_WAIT`]. Returns the answer and the API that
/// gave it.
pub(crate) async fn open(api: &str, path: &str, access: &Access) -> Result<(Streaming, String), BackupError> {
    let deadline = Instant::now() + LEADER_WAIT;
    let mut api = api.to_string();
    let mut hops = 0;
    loop {
        let s = request_streaming(&api, Method::GET, path, None, HEAD_TIMEOUT, access).await?;
        let status = s.status;
        match status {
            200 => return Ok((s, api)),
            401 => return Err(BackupError::Auth(super::api_error(&s.text().await, 401))),
            421 | 503 => {
                let body = s.text().await;
                let leader = serde_json::from_str::<crate::api::backup::NotLeader>(&body)
                    .ok()
                    .and_then(|n| n.leader_api);
                match leader {
                    // Followed a few times at most (leadership moving while we ask).
                    Some(l) if hops < 3 => {
                        hops += 1;
                        api = l;
                    }
                    _ if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(200)).await,
                    _ => return Err(BackupError::Refused(super::api_error(&body, status))),
                }
            }
            status => {
                let body = s.text().await;
                return Err(BackupError::Refused(super::api_error(&body, status)));
            }
        }
    }
}

/// Takes a backup from `api` into `out`: from the leader after a read barrier, or with
/// `local` from the node asked, at its applied index.
pub async fn create(
    api: &str,
    access: &Access,
    local: bool,
    out: &Path,
    format: OutFormat,
    progress: bool,
) -> Result<Created, BackupError> {
    let started = Instant::now();
    let path = if local {
        "/v1/backup?local=true"
    } else {
        "/v1/backup"
    };
    let (mut stream, _) = open(api, path, access).await?;
    let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(16);
    let out_path = out.to_path_buf();
    let writer = tokio::task::spawn_blocking(move || write_file(rx, &out_path, format, progress));
    let mut cut: Option<String> = None;
    while let Some(piece) = stream.next().await {
        match piece {
            Ok(b) => {
                if tx.send(b.to_vec()).is_err() {
                    break;
                }
            }
            Err(e) => {
                cut = Some(e.to_string());
                break;
            }
        }
    }
    drop(tx);
    let written = writer
        .await
        .map_err(|e| BackupError::Failed(format!("the writer stopped: {e}")))?;
    match (written, cut) {
        (Ok(mut c), _) => {
            c.seconds = started.elapsed().as_secs_f64();
            Ok(c)
        }
        (Err(e), Some(cut)) => Err(BackupError::Failed(format!("{e} ({cut})"))),
        (Err(e), None) => Err(e),
    }
}

/// Where the temporary file goes: beside the target, hidden.
fn temp_beside(out: &Path) -> PathBuf {
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "backup".into());
    out.with_file_name(format!(".{name}.tmp-{}", std::process::id()))
}

/// Splits the stream into frames and writes the file. Runs on a blocking thread.
fn write_file(
    rx: std::sync::mpsc::Receiver<Vec<u8>>,
    out: &Path,
    format: OutFormat,
    progress: bool,
) -> Result<Created, BackupError> {
    let tmp = temp_beside(out);
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&tmp)
        .map_err(|e| BackupError::Failed(format!("cannot create {}: {e}", tmp.display())))?;
    let result = write_frames(
        rx,
        std::io::BufWriter::with_capacity(1 << 20, file),
        out,
        format,
        progress,
    );
    match result {
        Ok((file, created)) => {
            super::commit_file(file, &tmp, out)
                .map_err(|e| BackupError::Failed(format!("cannot put {} in place: {e}", out.display())))?;
            Ok(created)
        }
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(e)
        }
    }
}

/// What is being written.
enum Sink {
    Standin(Writer<std::io::BufWriter<std::fs::File>>),
    Resp(super::resp::RespWriter<std::io::BufWriter<std::fs::File>>),
}

fn write_frames(
    rx: std::sync::mpsc::Receiver<Vec<u8>>,
    out: std::io::BufWriter<std::fs::File>,
    path: &Path,
    format: OutFormat,
    progress: bool,
) -> Result<(std::fs::File, Created), BackupError> {
    let failed =
        |e: &dyn std::fmt::Display| BackupError::Failed(format!("cannot write {}: {e}", path.display()));
    let mut buf: Vec<u8> = Vec::new();
    let mut pos = 0usize;
    let mut out = Some(out);
    let mut sink: Option<Sink> = None;
    let mut header: Option<crate::cluster::backup::ExportHeader> = None;
    let mut digest = KvDigest::new().ok_or_else(|| BackupError::Failed("SHA-256 is not available".into()))?;
    let mut chunks = 0u32;
    let mut bar: Option<super::Progress> = None;
    let cut = || BackupError::Failed("the export stream was cut short: the node stopped sending".into());
    loop {
        // The next frame: a u32 length, then that many bytes.
        let need_len = buf.len() - pos < 4;
        let frame_len = if need_len {
            None
        } else {
            let l = u32::from_le_bytes([buf[pos], buf[pos + 1], buf[pos + 2], buf[pos + 3]]) as usize;
            if l > MAX_EXPORT_FRAME {
                return Err(BackupError::Failed(format!(
                    "the export stream holds a frame of {l} bytes, more than {MAX_EXPORT_FRAME}"
                )));
            }
            Some(l)
        };
        let complete = frame_len.is_some_and(|l| buf.len() - pos >= 4 + l);
        if !complete {
            // Compact, then read more.
            if pos > 0 {
                buf.drain(..pos);
                pos = 0;
            }
            match rx.recv() {
                Ok(more) => {
                    buf.extend_from_slice(&more);
                    continue;
                }
                Err(_) => return Err(cut()),
            }
        }
        let l = frame_len.unwrap_or(0);
        let frame: ExportFrame = postcard::from_bytes(&buf[pos + 4..pos + 4 + l])
            .map_err(|e| BackupError::Failed(format!("the export stream cannot be decoded: {e}")))?;
        pos += 4 + l;
        match frame {
            ExportFrame::Header(h) => {
                if header.is_some() {
                    return Err(BackupError::Failed("the export stream has two headers".into()));
                }
                let o = out.take().ok_or_else(cut)?;
                sink = Some(match format {
                    OutFormat::Standin => Sink::Standin(
                        Writer::new(
                            o,
                            &Header {
                                format: super::format::FORMAT_VERSION,
                                index: h.index,
                                term: h.term,
                                epoch: h.epoch,
                                taken_unix_ms: h.taken_unix_ms,
                                node: h.node.clone(),
                                read: h.read.clone(),
                                versions: h.versions.clone(),
                                keys: h.keys,
                                data_bytes: h.data_bytes,
                                events: h.events,
                                build: crate::version::VERSION.to_string(),
                                source: "standin".into(),
                            },
                        )
                        .map_err(|e| failed(&e))?,
                    ),
                    OutFormat::Resp => Sink::Resp(super::resp::RespWriter::new(o, h.taken_unix_ms as i64)),
                });
                bar = Some(super::Progress::new(h.keys, "backup", progress));
                header = Some(h);
            }
            ExportFrame::Kv(records) => {
                for r in &records {
                    digest
                        .add(&KvRecordRef {
                            key: &r.key,
                            value: &r.value,
                            expire_at: r.expire_at,
                        })
                        .map_err(|e| failed(&e))?;
                }
                if let Some(b) = bar.as_mut() {
                    b.inc(records.len() as u64);
                }
                chunks += 1;
                match sink.as_mut() {
                    Some(Sink::Standin(w)) => {
                        let payload = postcard::to_allocvec(&records).map_err(|e| failed(&e))?;
                        w.section(KIND_KV, &payload).map_err(|e| failed(&e))?;
                    }
                    Some(Sink::Resp(w)) => {
                        w.records(&records).map_err(|e| failed(&e))?;
                    }
                    None => return Err(BackupError::Failed("the export stream has no header".into())),
                }
            }
            ExportFrame::Events(events) => {
                if let Some(Sink::Standin(w)) = sink.as_mut() {
                    w.section(KIND_EVENTS, &events).map_err(|e| failed(&e))?;
                }
            }
            ExportFrame::Change(change) => {
                if let Some(Sink::Standin(w)) = sink.as_mut() {
                    let payload = postcard::to_allocvec(&change).map_err(|e| failed(&e))?;
                    w.section(KIND_CHANGE, &payload).map_err(|e| failed(&e))?;
                }
            }
            ExportFrame::End { keys, digest: sent } => {
                let h =
                    header.ok_or_else(|| BackupError::Failed("the export stream has no header".into()))?;
                let (got_keys, kv_digest) = (digest.keys, digest.finish());
                if keys != got_keys || sent != kv_digest || h.keys != got_keys {
                    return Err(BackupError::Failed(format!(
                        "the export stream does not match its digest: {got_keys} keys read, {keys} sent"
                    )));
                }
                if let Some(b) = &bar {
                    b.done();
                }
                let (file, bytes) = match sink {
                    Some(Sink::Standin(w)) => {
                        let (o, bytes) = w
                            .finish(&End {
                                kv_chunks: chunks,
                                keys,
                                kv_digest: kv_digest.clone(),
                            })
                            .map_err(|e| failed(&e))?;
                        (o.into_inner().map_err(|e| failed(&e.error().to_string()))?, bytes)
                    }
                    Some(Sink::Resp(w)) => {
                        let (mut o, bytes) = w.finish().map_err(|e| failed(&e))?;
                        o.flush().map_err(|e| failed(&e))?;
                        (o.into_inner().map_err(|e| failed(&e.error().to_string()))?, bytes)
                    }
                    None => return Err(BackupError::Failed("the export stream has no header".into())),
                };
                return Ok((
                    file,
                    Created {
                        path: path.to_path_buf(),
                        format,
                        bytes,
                        keys,
                        index: h.index,
                        term: h.term,
                        epoch: h.epoch,
                        node: h.node,
                        read: h.read,
                        taken_unix_ms: h.taken_unix_ms,
                        kv_digest,
                        seconds: 0.0,
                    },
                ));
            }
        }
    }
}

/// `GET /v1/backup/digest` (on the leader unless `local`): the key space's digest now.
pub async fn digest(
    api: &str,
    access: &Access,
    local: bool,
) -> Result<crate::api::backup::DigestView, BackupError> {
    let path = if local {
        "/v1/backup/digest?local=true"
    } else {
        "/v1/backup/digest"
    };
    let (s, _) = open(api, path, access).await?;
    let body = s.text().await;
    serde_json::from_str(&body).map_err(|e| BackupError::Failed(format!("bad digest answer: {e}")))
}
