//! `standin backup …` and `standin restore`: the backup app's results rendered, and its errors
//! turned into exit codes (65 for a file that is not a valid backup).

use std::path::Path;

use comfy_table::{presets::UTF8_FULL_CONDENSED, Table};

use super::{exit, CliError};
use crate::backup::{self, BackupError};

/// EX_DATAERR: the input file is not a valid backup.
pub const DATAERR: i32 = 65;

impl From<BackupError> for CliError {
    fn from(e: BackupError) -> Self {
        match e {
            BackupError::Client(c) => c.into(),
            e => {
                let code = match &e {
                    BackupError::Format { .. } => DATAERR,
                    BackupError::Auth(_) => exit::NOPERM,
                    _ => exit::REFUSED,
                };
                CliError::new(code, e.to_string())
            }
        }
    }
}

fn print_json<T: serde::Serialize>(v: &T) -> Result<(), CliError> {
    let s = serde_json::to_string_pretty(v).map_err(|e| CliError::new(exit::REFUSED, e.to_string()))?;
    println!("{s}");
    Ok(())
}

fn time(ms: u64) -> String {
    humantime::format_rfc3339_millis(std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms)).to_string()
}

/// `standin backup create`.
pub async fn create(api: &str, out: &Path, format: &str, local: bool, json: bool) -> Result<(), CliError> {
    let fmt = if format == "resp" {
        backup::fetch::OutFormat::Resp
    } else {
        backup::fetch::OutFormat::Standin
    };
    let access = super::client::access();
    let c = backup::fetch::create(api, &access, local, out, fmt, !json).await?;
    if json {
        return print_json(&c);
    }
    println!(
        "{}: {} keys, {} bytes, taken from {} at index {} (term {}, epoch {}; {}), {} in {:.2} s",
        c.path.display(),
        c.keys,
        c.bytes,
        c.node,
        c.index,
        c.term,
        c.epoch,
        c.read,
        time(c.taken_unix_ms),
        c.seconds
    );
    println!("key space digest {}", c.kv_digest);
    Ok(())
}

/// `standin backup verify`.
pub fn verify(file: &Path, json: bool) -> Result<(), CliError> {
    let s = backup::format::verify_file(file).map_err(|e| BackupError::format(file, e))?;
    if json {
        return print_json(&serde_json::json!({"ok": true, "file": file, "summary": s}));
    }
    println!(
        "{}: valid standin backup (format {}): {} keys in {} chunks, index {}, sha256 {}",
        file.display(),
        s.header.format,
        s.keys,
        s.kv_chunks,
        s.header.index,
        s.sha256
    );
    Ok(())
}

/// `standin backup inspect`.
pub fn inspect(file: &Path, json: bool) -> Result<(), CliError> {
    let s = backup::format::verify_file(file).map_err(|e| BackupError::format(file, e))?;
    if json {
        return print_json(&s);
    }
    let h = &s.header;
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED);
    let versions: Vec<String> = h.versions.iter().map(|(n, v)| format!("{n} {v}")).collect();
    for (k, v) in [
        ("file", file.display().to_string()),
        ("format", h.format.to_string()),
        ("taken", format!("{} by {}", time(h.taken_unix_ms), h.node)),
        (
            "consistent at",
            format!("index {} term {} ({})", h.index, h.term, h.read),
        ),
        ("epoch", h.epoch.to_string()),
        ("node versions", versions.join(", ")),
        (
            "written by",
            format!("standin {} (source: {})", h.build, h.source),
        ),
        ("keys", s.keys.to_string()),
        ("data bytes", h.data_bytes.to_string()),
        (
            "key space",
            format!("{} chunks, {} bytes", s.kv_chunks, s.kv_bytes),
        ),
        ("events", format!("{} ({} bytes)", s.events, s.events_bytes)),
        (
            "change control",
            format!(
                "{} service versions, {} deploys, {} settings versions ({} bytes)",
                s.service_versions, s.deploys, s.settings_versions, s.change_bytes
            ),
        ),
        ("key space digest", s.kv_digest.clone()),
        ("file", format!("{} bytes, sha256 {}", s.file_bytes, s.sha256)),
    ] {
        t.add_row(vec![k.to_string(), v]);
    }
    println!("{t}");
    Ok(())
}

/// `standin backup status`.
pub async fn status(api: &str, json: bool) -> Result<(), CliError> {
    let (st, body) =
        super::client::get_json::<crate::api::backup::BackupStatus>(api, "/v1/backup/status").await?;
    if json {
        println!("{body}");
        return Ok(());
    }
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED);
    t.set_header(vec![
        "node",
        "last good backup",
        "size",
        "keys",
        "failures",
        "last error",
        "path",
    ]);
    for (n, r) in &st.reports {
        t.add_row(vec![
            n.clone(),
            r.last_success_unix_ms.map(time).unwrap_or_else(|| "never".into()),
            r.last_size_bytes.to_string(),
            r.last_keys.to_string(),
            r.failures_total.to_string(),
            r.last_error.clone().unwrap_or_default(),
            r.last_path.clone(),
        ]);
    }
    println!("{t}");
    if let Some(p) = &st.restore {
        println!(
            "restore {} under way by {}: {} of {} keys staged in {} chunks since {}",
            p.id,
            p.by,
            p.keys_staged,
            p.keys,
            p.chunks,
            time(p.began_unix_ms)
        );
    }
    Ok(())
}

/// `standin backup to-resp`.
pub fn to_resp(file: &Path, out: &Path, json: bool) -> Result<(), CliError> {
    let (s, bytes) = backup::resp::file_to_resp(file, out, crate::clock::unix_ms() as i64)?;
    if json {
        return print_json(&serde_json::json!({"file": file, "out": out, "keys": s.keys, "bytes": bytes}));
    }
    println!(
        "{}: {} keys as Redis commands ({bytes} bytes); load with: redis-cli --pipe < {}",
        out.display(),
        s.keys,
        out.display()
    );
    Ok(())
}

/// `standin backup export-redis`.
pub async fn export_redis(
    from: &str,
    password: Option<&str>,
    out: &Path,
    json: bool,
) -> Result<(), CliError> {
    let r = backup::resp::export_redis(from, password, out).await?;
    if json {
        return print_json(&r);
    }
    println!(
        "{}: {} keys from {from} as {} Redis commands ({} bytes) in {:.2} s; load into standin with: redis-cli -p STORE_PORT --pipe < {}",
        out.display(),
        r.keys,
        r.commands,
        r.bytes,
        r.seconds,
        out.display()
    );
    for (ty, n) in &r.skipped {
        eprintln!("standin: warning: {n} keys of type {ty} left out (standin's store has no such type)");
    }
    Ok(())
}

/// `standin restore`.
pub async fn restore(
    api: &str,
    file: &Path,
    force: bool,
    pre_backup: Option<&Path>,
    json: bool,
) -> Result<(), CliError> {
    let access = super::client::access();
    let r = backup::restore::restore(
        api,
        &access,
        file,
        force,
        pre_backup.map(Path::to_path_buf),
        !json,
    )
    .await?;
    if json {
        return print_json(&r);
    }
    if let Some(p) = &r.pre_restore_backup {
        println!("pre-restore backup: {}", p.display());
    }
    println!(
        "restored {} keys from {} in {} chunks ({} replaced) through {} in {:.2} s; digest {} matches",
        r.keys,
        r.file.display(),
        r.chunks,
        r.replaced,
        r.leader_api,
        r.seconds,
        r.digest
    );
    Ok(())
}
