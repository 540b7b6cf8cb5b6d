//! `standin bench backup`: backup and restore of a store of N keys, beside Redis's own ways
//! of saving and loading the same keys on the same machine.
//!
//! standin: `backup create` from the leader of a running cluster (read barrier, copy, stream,
//! file written and fsynced), `backup verify` of the file, then the whole cluster is stopped
//! and a new one started, and `restore` puts the file back (checked, pre-restore backup,
//! replicated chunks, the swap, the digest read back).
//! Redis: `redis-cli --rdb` (a BGSAVE streamed to the client; the diskless sync delay set to
//! 0, or Redis waits 5 s for more replicas first), and `DEBUG RELOAD` (save the
//! RDB and load it again, in the server).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::store::{redis_server, wait_redis};
use super::{free_ports, Scratch};
use crate::api::client::Access;
use crate::lab::harness::{HarnessError, LocalCluster, Spec};

fn err(m: impl Into<String>) -> HarnessError {
    HarnessError(m.into())
}

/// Options of `standin bench backup`.
pub struct BackupOptions {
    pub keys: u64,
    pub value_size: usize,
    pub json: bool,
}

#[derive(Serialize)]
struct Report {
    keys: u64,
    value_size: usize,
    load_s: f64,
    standin_create_s: f64,
    standin_file_bytes: u64,
    standin_verify_s: f64,
    standin_restore_s: f64,
    redis_rdb_s: Option<f64>,
    redis_rdb_bytes: Option<u64>,
    redis_debug_reload_s: Option<f64>,
    redis_skipped: Option<String>,
    build: &'static str,
}

fn admin(c: &LocalCluster, id: &str) -> Result<String, HarnessError> {
    Ok(c.node(id)
        .ok_or_else(|| err(format!("no node {id}")))?
        .admin
        .to_string())
}

/// Redis's rows: `redis-cli --rdb` and `DEBUG RELOAD` of the same keys.
async fn redis_rows(dir: &std::path::Path, keys: u64, size: usize) -> Result<(f64, u64, f64), HarnessError> {
    let port = free_ports(1)?[0];
    let _r = redis_server(
        dir,
        port,
        &["--enable-debug-command", "yes", "--repl-diskless-sync-delay", "0"],
    )?;
    tokio::task::spawn_blocking(move || {
        wait_redis(
            port,
            &["PING"],
            |o| o.trim() == "PONG",
            Duration::from_secs(10),
            "redis-server did not answer PING",
        )
    })
    .await
    .map_err(|e| err(e.to_string()))??;
    super::join::load(SocketAddr::from(([127, 0, 0, 1], port)), keys, size).await?;
    let rdb = dir.join("dump-client.rdb");
    let t = Instant::now();
    let out = std::process::Command::new("redis-cli")
        .args(["-p", &port.to_string(), "--rdb"])
        .arg(&rdb)
        .output()
        .map_err(|e| err(format!("redis-cli --rdb: {e}")))?;
    if !out.status.success() {
        return Err(err(format!(
            "redis-cli --rdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    let rdb_s = t.elapsed().as_secs_f64();
    let rdb_bytes = std::fs::metadata(&rdb).map_err(|e| err(e.to_string()))?.len();
    let t = Instant::now();
    let out = std::process::Command::new("redis-cli")
        .args(["-p", &port.to_string(), "DEBUG", "RELOAD"])
        .output()
        .map_err(|e| err(format!("redis-cli DEBUG RELOAD: {e}")))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !text.trim().eq_ignore_ascii_case("OK") {
        return Err(err(format!("DEBUG RELOAD: {}", text.trim())));
    }
    Ok((rdb_s, rdb_bytes, t.elapsed().as_secs_f64()))
}

/// Runs the benchmark and prints the table (or JSON).
pub async fn run(o: BackupOptions) -> Result<(), HarnessError> {
    let scratch = Scratch::new("standin-bench-backup")?;
    let binary = std::env::current_exe().map_err(|e| err(e.to_string()))?;
    let access = Access::default();
    eprintln!("bench backup: starting a local cluster (a, b, witness)");
    let (cluster, status) = LocalCluster::launch(Spec::new(&scratch.path().join("old"), &binary)).await?;
    let active = status.active.clone().ok_or_else(|| err("no active node"))?;
    let store = cluster
        .node(&active)
        .and_then(|n| n.store)
        .ok_or_else(|| err("no store"))?;
    eprintln!("bench backup: loading {} keys of {} bytes", o.keys, o.value_size);
    let t = Instant::now();
    super::join::load(store, o.keys, o.value_size).await?;
    let load_s = t.elapsed().as_secs_f64();
    let file = scratch.path().join("bench.standin");
    eprintln!("bench backup: standin backup create");
    let created = crate::backup::fetch::create(
        &admin(&cluster, &active)?,
        &access,
        false,
        &file,
        crate::backup::fetch::OutFormat::Standin,
        false,
    )
    .await
    .map_err(|e| err(e.to_string()))?;
    if created.keys != o.keys {
        return Err(err(format!(
            "the backup holds {} keys, not {}",
            created.keys, o.keys
        )));
    }
    let t = Instant::now();
    let f = file.clone();
    tokio::task::spawn_blocking(move || crate::backup::format::verify_file(&f))
        .await
        .map_err(|e| err(e.to_string()))?
        .map_err(|e| err(e.to_string()))?;
    let verify_s = t.elapsed().as_secs_f64();
    drop(cluster);
    eprintln!("bench backup: a new cluster; standin restore");
    let (fresh, status) = LocalCluster::launch(Spec::new(&scratch.path().join("new"), &binary)).await?;
    let active = status.active.ok_or_else(|| err("no active node"))?;
    let restored = crate::backup::restore::restore(
        &admin(&fresh, &active)?,
        &access,
        &file,
        false,
        Some(scratch.path().join("pre.standin")),
        false,
    )
    .await
    .map_err(|e| err(e.to_string()))?;
    drop(fresh);
    eprintln!("bench backup: redis-server: redis-cli --rdb, DEBUG RELOAD");
    let (rdb, skipped) = match redis_rows(&scratch.path().join("redis"), o.keys, o.value_size).await {
        Ok(r) => (Some(r), None),
        Err(e) => (None, Some(e.0)),
    };
    let report = Report {
        keys: o.keys,
        value_size: o.value_size,
        load_s,
        standin_create_s: created.seconds,
        standin_file_bytes: created.bytes,
        standin_verify_s: verify_s,
        standin_restore_s: restored.seconds,
        redis_rdb_s: rdb.map(|r| r.0),
        redis_rdb_bytes: rdb.map(|r| r.1),
        redis_debug_reload_s: rdb.map(|r| r.2),
        redis_skipped: skipped,
        build: if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        },
    };
    if o.json {
        return super::print_json(&report);
    }
    println!(
        "{} keys of {} bytes (loaded in {:.1} s; {} build)",
        report.keys, report.value_size, report.load_s, report.build
    );
    println!(
        "standin backup create:  {:.2} s, {} bytes ({:.1} MB)",
        report.standin_create_s,
        report.standin_file_bytes,
        report.standin_file_bytes as f64 / 1e6
    );
    println!("standin backup verify:  {:.2} s", report.standin_verify_s);
    println!(
        "standin restore:        {:.2} s (into a new cluster, digest checked)",
        report.standin_restore_s
    );
    match (&rdb, &report.redis_skipped) {
        (Some((s, bytes, reload)), _) => {
            println!(
                "redis-cli --rdb:        {s:.2} s, {bytes} bytes ({:.1} MB)",
                *bytes as f64 / 1e6
            );
            println!("redis DEBUG RELOAD:     {reload:.2} s (save + load)");
        }
        (None, Some(why)) => println!("redis rows skipped: {why}"),
        _ => {}
    }
    Ok(())
}
