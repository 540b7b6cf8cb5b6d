//! `standin bench disk`: what one durable write costs on the disk under a directory, the
//! floor under every Raft commit (the leader's and a follower's log append each pay it once,
//! one after the other). Three series of `commits` writes each, timed one by one:
//!
//! - `pwrite` of 4 KiB + `fdatasync`: the disk itself;
//! - a redb transaction inserting one 2 KB entry, committed with `Durability::Immediate`:
//!   what standin's log append pays (redb's commit, fsync included);
//! - the same with `Durability::None`: redb's work without the fsync.

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use comfy_table::{presets::UTF8_FULL_CONDENSED, Table};
use serde::Serialize;

use super::{percentile, print_json, progress, Scratch};
use crate::lab::harness::HarnessError;

const ENTRIES: redb::TableDefinition<'_, u64, &[u8]> = redb::TableDefinition::new("entries");

#[derive(Debug, Serialize)]
pub struct DiskRow {
    pub what: &'static str,
    pub commits: usize,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub mean_ms: f64,
}

fn row(what: &'static str, mut times: Vec<Duration>) -> DiskRow {
    let mut ms: Vec<f64> = times.drain(..).map(|d| d.as_secs_f64() * 1000.0).collect();
    ms.sort_by(|a, b| a.total_cmp(b));
    DiskRow {
        what,
        commits: ms.len(),
        p50_ms: percentile(&ms, 50.0),
        p99_ms: percentile(&ms, 99.0),
        mean_ms: ms.iter().sum::<f64>() / ms.len().max(1) as f64,
    }
}

fn io(path: &Path, e: impl std::fmt::Display) -> HarnessError {
    HarnessError(format!("{}: {e}", path.display()))
}

/// `standin bench disk`: [`measure`] on a blocking thread, since every one of its writes waits
/// for the disk.
pub async fn run(dir: Option<PathBuf>, commits: usize, json: bool) -> Result<(), HarnessError> {
    match tokio::task::spawn_blocking(move || measure(dir, commits, json)).await {
        Ok(r) => r,
        Err(e) => Err(HarnessError(format!("bench disk: {e}"))),
    }
}

/// Runs the three series in a scratch directory under `dir` (default: the temp dir) and
/// prints them (or JSON).
pub fn measure(dir: Option<PathBuf>, commits: usize, json: bool) -> Result<(), HarnessError> {
    if commits == 0 {
        return Err(HarnessError("--commits must be at least 1".into()));
    }
    let scratch = match &dir {
        Some(d) => Scratch::new_in(d, "standin-bench-disk")?,
        None => Scratch::new("standin-bench-disk")?,
    };
    let bar = progress(3 * commits, "durable writes");

    let raw_path = scratch.path().join("raw");
    let file = std::fs::File::options()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(&raw_path)
        .map_err(|e| io(&raw_path, e))?;
    file.set_len(1 << 20).map_err(|e| io(&raw_path, e))?;
    file.sync_all().map_err(|e| io(&raw_path, e))?;
    let block = vec![7u8; 4096];
    let mut raw = Vec::with_capacity(commits);
    for i in 0..commits {
        let t = Instant::now();
        file.write_all_at(&block, (i as u64 % 256) * 4096)
            .map_err(|e| io(&raw_path, e))?;
        file.sync_data().map_err(|e| io(&raw_path, e))?;
        raw.push(t.elapsed());
        bar.inc(1);
    }

    let db_path = scratch.path().join("redb");
    let db = redb::Database::create(&db_path).map_err(|e| io(&db_path, e))?;
    let entry = vec![7u8; 2000];
    let mut series = Vec::new();
    for (n, durability) in [(0u64, redb::Durability::Immediate), (1, redb::Durability::None)] {
        let mut times = Vec::with_capacity(commits);
        for i in 0..commits as u64 {
            let t = Instant::now();
            let mut tx = db.begin_write().map_err(|e| io(&db_path, e))?;
            tx.set_durability(durability).map_err(|e| io(&db_path, e))?;
            {
                let mut table = tx.open_table(ENTRIES).map_err(|e| io(&db_path, e))?;
                table
                    .insert(n * commits as u64 + i, entry.as_slice())
                    .map_err(|e| io(&db_path, e))?;
            }
            tx.commit().map_err(|e| io(&db_path, e))?;
            times.push(t.elapsed());
            bar.inc(1);
        }
        series.push(times);
    }
    bar.finish_and_clear();
    let none = series.pop().unwrap_or_default();
    let immediate = series.pop().unwrap_or_default();
    let rows = [
        row("pwrite 4 KiB + fdatasync", raw),
        row("redb commit, 2 KB entry, Durability::Immediate", immediate),
        row("redb commit, 2 KB entry, Durability::None", none),
    ];
    if json {
        print_json(&rows)?;
        return Ok(());
    }
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED);
    t.set_header(vec!["write", "commits", "p50 ms", "p99 ms", "mean ms"]);
    let ms = |v: Option<f64>| v.map(|x| format!("{x:.3}")).unwrap_or_else(|| "-".into());
    for r in &rows {
        t.add_row(vec![
            r.what.to_string(),
            r.commits.to_string(),
            ms(r.p50_ms),
            ms(r.p99_ms),
            format!("{:.3}", r.mean_ms),
        ]);
    }
    println!("{t}");
    println!(
        "in {} (one after the other, one thread); a standin write pays the Immediate row twice in a row \
         (leader, then follower) plus the network and scheduling",
        dir.as_deref().unwrap_or(&std::env::temp_dir()).display()
    );
    Ok(())
}
