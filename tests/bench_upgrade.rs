//! `standin bench upgrade` end to end with small counts: it completes, prints a row per kind
//! of change with plausible figures, and leaves no process and no file behind. Real processes
//! on loopback (a local cluster, HAProxy if installed). No figure is asserted against a target:
//! benchmarks print, tests check that they ran.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

mod common;
use common::binary;

/// Whether `name` is an executable on `PATH`.
fn on_path(name: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(name).is_file()))
        .unwrap_or(false)
}

/// Processes whose command line mentions `dir` (the cluster's daemons name their config
/// there, HAProxy its configuration file).
fn processes_under(dir: &Path) -> Vec<String> {
    let needle = dir.to_string_lossy().into_owned();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().parse::<u32>().is_ok())
        .filter_map(|e| {
            let raw = std::fs::read(e.path().join("cmdline")).ok()?;
            let cmd = String::from_utf8_lossy(&raw).replace('\0', " ");
            cmd.contains(&needle)
                .then(|| format!("{}: {cmd}", e.file_name().to_string_lossy()))
        })
        .collect()
}

fn row<'a>(rows: &'a [Value], phase: &str) -> &'a Value {
    rows.iter()
        .find(|r| r["phase"] == phase)
        .unwrap_or_else(|| panic!("no {phase} row in {rows:?}"))
}

fn ms(v: &Value) -> f64 {
    v["max_interruption_ms"].as_f64().expect("max_interruption_ms")
}

/// Two hot restarts, five reloads and one stop-and-start of the active node under load, and
/// five HAProxy reloads of each kind: every row is there with its operations, the clients ran,
/// the hot restarts and reloads caused no failover and the stop-and-start did (it is a
/// switchover); the scratch directory is gone and no process of the run is left.
#[test]
fn the_upgrade_benchmark_runs_every_phase_and_cleans_up() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut child = Command::new(binary())
        .args([
            "bench",
            "upgrade",
            "--restarts",
            "2",
            "--reloads",
            "5",
            "--stop-starts",
            "1",
            "--json",
        ])
        // The benchmark's scratch directory goes under the temp dir: this one.
        .env("TMPDIR", tmp.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run standin bench upgrade");
    let deadline = Instant::now() + Duration::from_secs(300);
    while child.try_wait().expect("try_wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("standin bench upgrade still running after 300 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = child.wait_with_output().expect("output");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "bench upgrade failed: {stderr}");
    let report: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("--json output ({e}): {}", String::from_utf8_lossy(&out.stdout)));
    let rows = report["rows"].as_array().expect("rows");
    eprintln!("{}", serde_json::to_string_pretty(&report).unwrap_or_default());

    for (phase, ops) in [("hot-restart", 2), ("reload", 5), ("stop-start", 1)] {
        let r = row(rows, phase);
        assert_eq!(r["skipped"], Value::Null, "{r}");
        assert_eq!(r["operations"], ops, "{r}");
        let (service, store) = (&r["service"], &r["store"]);
        assert!(service["requests"].as_u64().expect("requests") > 10, "{r}");
        assert!(store["requests"].as_u64().expect("requests") > 0, "{r}");
        for t in [service, store] {
            let m = ms(t);
            assert!(m > 0.0 && m < 60_000.0, "{r}");
            assert!(t["failed"].as_u64().expect("failed") <= t["requests"].as_u64().expect("requests"));
        }
    }
    assert_eq!(
        row(rows, "hot-restart")["failovers"],
        0,
        "a hot restart is no failover"
    );
    assert_eq!(row(rows, "reload")["failovers"], 0, "a reload is no failover");
    assert!(
        row(rows, "stop-start")["failovers"].as_u64().expect("failovers") >= 1,
        "stopping the active node's daemon moves the active role"
    );
    for phase in ["haproxy-sf", "haproxy-master-worker"] {
        let r = row(rows, phase);
        if on_path("haproxy") {
            assert_eq!(r["skipped"], Value::Null, "{r}");
            assert_eq!(r["operations"], 5, "{r}");
            assert!(r["service"]["requests"].as_u64().expect("requests") > 10, "{r}");
            assert_eq!(r["store"], Value::Null, "{r}");
        } else {
            assert!(
                r["skipped"].as_str().is_some_and(|s| s.contains("haproxy")),
                "{r}"
            );
        }
    }

    let left: Vec<String> = std::fs::read_dir(tmp.path())
        .expect("read the temp dir")
        .filter_map(|e| e.ok())
        .map(|e| e.path().display().to_string())
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
    // The cluster's and HAProxy's processes are killed before the benchmark exits.
    let procs = processes_under(tmp.path());
    assert!(procs.is_empty(), "processes left: {procs:?}");
}
