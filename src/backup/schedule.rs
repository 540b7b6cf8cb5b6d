//! Scheduled backups: a data node with `[backup] dir` takes a consistent backup of its own
//! state machine every `every` (through its own admin API, `GET /v1/backup?local=true`),
//! writes it into `dir` (temporary file, fsync, rename, fsync of the directory), keeps the
//! newest `keep`, and reports each attempt to the cluster (`POST /v1/backup/report`), from
//! which the metrics and the `backup-stale` / `backup-failed` alarms come.
//!
//! Run beside the node by `standin node` (like the proxy): it is a client of the node, so the
//! node's own layers know nothing of backups. The schedule is the file's at start (a reload
//! does not change it).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use hyper::Method;
use tokio_util::sync::CancellationToken;

use crate::api::client::Access;
use crate::cluster::backup::Attempt;
use crate::config::{BackupConfig, Config};

/// How long after start the first backup waits when none is recent (the node settles first).
const FIRST_AFTER: Duration = Duration::from_secs(2);

/// The file name prefix of `node`'s scheduled backups.
fn prefix(node: &str) -> String {
    format!("standin-{node}-")
}

/// `node`'s scheduled backups in `dir`, oldest first (the name holds the time, zero-padded).
pub fn list(dir: &Path, node: &str) -> std::io::Result<Vec<PathBuf>> {
    let p = prefix(node);
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|path| {
            path.file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_prefix(&p))
                .and_then(|rest| rest.strip_suffix(".standin"))
                // Exactly the node's own names: its id, then only the time's digits (a member
                // `db` must not take `db-2`'s files for its own in a shared directory).
                .is_some_and(|time| !time.is_empty() && time.bytes().all(|b| b.is_ascii_digit()))
        })
        .collect();
    out.sort();
    Ok(out)
}

/// Removes the oldest of `node`'s backups beyond `keep`; the files removed.
pub fn prune(dir: &Path, node: &str, keep: usize) -> std::io::Result<Vec<PathBuf>> {
    let all = list(dir, node)?;
    let extra = all.len().saturating_sub(keep);
    let mut removed = Vec::new();
    for p in all.into_iter().take(extra) {
        std::fs::remove_file(&p)?;
        removed.push(p);
    }
    Ok(removed)
}

/// The node's own admin API and how to reach it.
fn own_api(config: &Config) -> Result<(String, Access), String> {
    let me = config.me();
    let mut admin = me.admin;
    if admin.ip().is_unspecified() {
        admin.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    let tls = if config.api.tls {
        let ca = config
            .tls
            .ca
            .as_deref()
            .ok_or("[api] tls without a [tls] ca to check the node's own certificate")?;
        Some(Arc::new(
            crate::tls::https_client_config(ca).map_err(|e| e.to_string())?,
        ))
    } else {
        None
    };
    Ok((
        format!("{}://{admin}", config.api.scheme()),
        Access {
            token: config.api.resolved_token.clone(),
            tls,
        },
    ))
}

/// One scheduled backup: written, pruned; the attempt to report.
pub async fn take(config: &Config, cfg: &BackupConfig, dir: &Path) -> Attempt {
    let node = config.me().id.clone();
    let at = crate::clock::unix_ms();
    let failed = |e: String| Attempt {
        ok: false,
        size_bytes: 0,
        path: String::new(),
        index: 0,
        keys: 0,
        error: Some(e),
        max_age_ms: cfg.max_age().as_millis() as u64,
        at,
    };
    let (api, access) = match own_api(config) {
        Ok(a) => a,
        Err(e) => return failed(e),
    };
    if let Err(e) = std::fs::create_dir_all(dir) {
        return failed(format!("cannot create {}: {e}", dir.display()));
    }
    let out = dir.join(format!("{}{at:013}.standin", prefix(&node)));
    match super::fetch::create(&api, &access, true, &out, super::fetch::OutFormat::Standin, false).await {
        Ok(c) => {
            if let Err(e) = prune(dir, &node, cfg.keep) {
                tracing::warn!(error = %e, dir = %dir.display(), "cannot remove old backups");
            }
            tracing::info!(path = %out.display(), bytes = c.bytes, keys = c.keys, index = c.index, "scheduled backup written");
            Attempt {
                ok: true,
                size_bytes: c.bytes,
                path: out.display().to_string(),
                index: c.index,
                keys: c.keys,
                error: None,
                max_age_ms: cfg.max_age().as_millis() as u64,
                at,
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "scheduled backup failed");
            failed(e.to_string())
        }
    }
}

/// Reports an attempt to the cluster through the node's API.
async fn report(config: &Config, attempt: &Attempt) -> Result<(), String> {
    let (api, access) = own_api(config)?;
    let body = serde_json::to_string(attempt).map_err(|e| e.to_string())?;
    let r = crate::api::client::request_with(
        &api,
        Method::POST,
        "/v1/backup/report",
        Some(body),
        Duration::from_secs(10),
        &access,
    )
    .await
    .map_err(|e| e.to_string())?;
    if r.status == 200 {
        Ok(())
    } else {
        Err(super::api_error(&r.body, r.status))
    }
}

/// Takes backups on the schedule of `[backup]` until `cancel` fires.
pub async fn run(config: Arc<Config>, cancel: CancellationToken) {
    let cfg = config.backup.clone();
    let Some(dir) = cfg.dir.clone() else {
        return;
    };
    let node = config.me().id.clone();
    // Due `every` after the newest backup there (a restart does not take one at once).
    let newest = list(&dir, &node).ok().and_then(|l| l.last().cloned());
    let since_newest = newest
        .and_then(|p| std::fs::metadata(p).ok())
        .and_then(|m| m.modified().ok())
        .and_then(|t| t.elapsed().ok());
    let mut wait = match since_newest {
        Some(age) => cfg.every.saturating_sub(age).max(FIRST_AFTER),
        None => FIRST_AFTER,
    };
    // Reports that could not be delivered yet (no leader): sent with the next round.
    let mut unsent: Vec<Attempt> = Vec::new();
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        wait = cfg.every;
        let attempt = take(&config, &cfg, &dir).await;
        unsent.push(attempt);
        while let Some(a) = unsent.first() {
            match report(&config, a).await {
                Ok(()) => {
                    unsent.remove(0);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot report the backup to the cluster; retried next round");
                    break;
                }
            }
        }
        // Only the newest few matter.
        if unsent.len() > 16 {
            unsent.drain(..unsent.len() - 16);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_lists_and_prunes_only_its_own_backups_in_a_shared_directory() {
        let dir = tempfile::tempdir().expect("tempdir");
        for name in [
            "standin-db-0000000000001.standin",
            "standin-db-0000000000002.standin",
            "standin-db-2-0000000000001.standin",
            "standin-db-2-0000000000002.standin",
            "standin-db-notes.standin",
        ] {
            std::fs::write(dir.path().join(name), b"x").expect("write");
        }
        let own = list(dir.path(), "db").expect("list");
        assert_eq!(own.len(), 2, "{own:?}");
        let removed = prune(dir.path(), "db", 1).expect("prune");
        assert_eq!(removed.len(), 1);
        assert!(removed[0].ends_with("standin-db-0000000000001.standin"));
        assert_eq!(
            list(dir.path(), "db-2").expect("list").len(),
            2,
            "the neighbour's files stay"
        );
    }
}
