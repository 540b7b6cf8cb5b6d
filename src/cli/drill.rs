//! `standin drill`: run failover drills against the live cluster (`crate::drill`), list and
//! show their records, and confirm them.

use std::io::IsTerminal;
use std::time::Duration;

use comfy_table::{presets::UTF8_FULL_CONDENSED, Table};

use super::client::{access, get_json, post};
use super::{exit, CliError};
use crate::api::drill::RecordSummary;
use crate::cluster::drills::StoredRecord;
use crate::drill::record::{self, ConfirmationView, Record};

/// `standin drill confirm RUN --by NAME ...`.
pub async fn confirm(
    api: &str,
    run: &str,
    by: &str,
    note: &str,
    unresolved: &[String],
) -> Result<(), CliError> {
    post(
        api,
        &format!("/v1/drills/{run}/confirm"),
        Some(serde_json::json!({"by": by, "note": note, "unresolved": unresolved})),
    )
    .await?;
    println!("drill {run} confirmed by {by}");
    Ok(())
}

/// What `standin drill run` was asked for.
pub struct RunOpts {
    pub force: bool,
    pub scenarios: Vec<String>,
    pub service: Option<String>,
    pub store: Option<String>,
    pub store_password: Option<String>,
    pub max_interruption: Option<Duration>,
    pub recovery_timeout: Duration,
    pub markdown: Option<std::path::PathBuf>,
    pub html: Option<std::path::PathBuf>,
    pub json: bool,
}

fn usage(message: impl Into<String>) -> CliError {
    CliError::new(exit::USAGE, message)
}

/// `standin drill run`.
pub async fn run(api: &str, o: RunOpts) -> Result<(), CliError> {
    // What to probe: the options, else the cluster's `[drill]` settings.
    let (cfg, _) = get_json::<serde_json::Value>(api, "/v1/config").await?;
    let drill_cfg = cfg
        .get("config")
        .and_then(|c| c.get("drill"))
        .cloned()
        .unwrap_or_default();
    let from_cluster = |k: &str| drill_cfg.get(k).and_then(|v| v.as_str()).map(str::to_string);
    let service = o.service.or_else(|| from_cluster("service")).ok_or_else(|| {
        usage("nothing to probe: give --service http://host:port/path (or tcp://host:port), or set [drill] service")
    })?;
    let service =
        crate::config::drill::parse_probe(&service).map_err(|e| usage(format!("--service: {e}")))?;
    let store = o.store.or_else(|| from_cluster("store"));
    if let Some(s) = &store {
        crate::config::drill::parse_probe(&format!("tcp://{s}"))
            .map_err(|e| usage(format!("--store: {e}")))?;
    }
    let scenarios = if o.scenarios.is_empty() {
        crate::config::drill::SCENARIOS
            .iter()
            .map(|s| s.to_string())
            .collect()
    } else {
        o.scenarios
    };
    for s in &scenarios {
        if !crate::config::drill::SCENARIOS.contains(&s.as_str()) {
            return Err(usage(format!(
                "--scenarios: `{s}` is not one of {}",
                crate::config::drill::SCENARIOS.join(", ")
            )));
        }
    }
    let plan = crate::drill::Plan {
        api: api.to_string(),
        access: access(),
        scenarios,
        service,
        store: store.map(|s| (s, o.store_password)),
        max_interruption: o.max_interruption,
        scheduled: false,
        recovery_timeout: o.recovery_timeout,
        force: o.force,
    };
    let bar = std::io::stderr().is_terminal().then(|| {
        let b = indicatif::ProgressBar::new_spinner();
        b.enable_steady_tick(Duration::from_millis(100));
        b.set_style(
            indicatif::ProgressStyle::with_template("{spinner} {elapsed} {msg}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
        );
        b
    });
    let say = {
        let bar = bar.clone();
        move |line: &str| match &bar {
            Some(b) if line.ends_with(": running") => b.set_message(line.to_string()),
            Some(b) => b.println(line),
            None => eprintln!("{line}"),
        }
    };
    let outcome = crate::drill::run(&plan, &say).await;
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    let (rec, not_stored) = outcome.map_err(|e| CliError::new(exit::UNAVAILABLE, e))?;
    write_reports(&rec, o.markdown.as_deref(), o.html.as_deref())?;
    if o.json {
        println!("{}", serde_json::to_string_pretty(&rec).unwrap_or_default());
    } else {
        print!("{}", summary(&rec));
    }
    if let Some(why) = &not_stored {
        eprintln!("standin: the record could not be stored in the cluster: {why}");
    }
    if rec.passed {
        match not_stored {
            // A run without its record is not an acceptance: the files above are all of it.
            Some(why) => Err(CliError::new(
                exit::UNAVAILABLE,
                format!("drill {} passed but its record was not stored: {why}", rec.id),
            )),
            None => Ok(()),
        }
    } else {
        Err(CliError::new(
            exit::REFUSED,
            format!("drill {} failed: {}", rec.id, rec.unresolved.join("; ")),
        ))
    }
}

fn write_reports(
    rec: &Record,
    markdown: Option<&std::path::Path>,
    html: Option<&std::path::Path>,
) -> Result<(), CliError> {
    let write = |path: &std::path::Path, text: String| {
        std::fs::write(path, text).map_err(|e| CliError::new(exit::USAGE, format!("{}: {e}", path.display())))
    };
    if let Some(p) = markdown {
        write(p, record::markdown(rec))?;
    }
    if let Some(p) = html {
        write(p, record::html(rec))?;
    }
    Ok(())
}

fn summary(r: &Record) -> String {
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED);
    t.set_header(vec![
        "scenario",
        "result",
        "failover",
        "interruption",
        "failed req.",
        "lost writes",
        "observed",
    ]);
    for s in &r.scenarios {
        t.add_row(vec![
            s.name.clone(),
            if s.passed { "pass".into() } else { "FAIL".into() },
            s.failover_ms.map_or("-".into(), |f| format!("{f} ms")),
            format!("{} ms (max {})", s.service.interruption_ms, s.max_interruption_ms),
            format!("{}/{}", s.service.failed, s.service.requests),
            s.store.as_ref().map_or("-".into(), |st| st.lost.to_string()),
            s.reason.clone().unwrap_or_else(|| s.observed.clone()),
        ]);
    }
    format!(
        "drill {}: {}\n{t}\nrecord: standin drill show {} [--html FILE]; confirm: standin drill confirm {} --by NAME --note TEXT\n",
        r.id,
        if r.passed { "PASSED" } else { "FAILED" },
        r.id,
        r.id
    )
}

/// `standin drill list`.
pub async fn list(api: &str, json: bool) -> Result<(), CliError> {
    let (runs, raw) = get_json::<Vec<RecordSummary>>(api, "/v1/drills").await?;
    if json {
        println!("{raw}");
        return Ok(());
    }
    if runs.is_empty() {
        println!("no drill recorded yet: standin drill run");
        return Ok(());
    }
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED);
    t.set_header(vec!["run", "started", "result", "how", "scenarios", "confirmed"]);
    for r in &runs {
        t.add_row(vec![
            r.id.clone(),
            humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_millis(r.at))
                .to_string(),
            if r.passed { "pass".into() } else { "FAIL".into() },
            if r.scheduled {
                "scheduled".into()
            } else {
                "operator".into()
            },
            r.scenarios
                .iter()
                .map(|(s, ok)| if *ok { s.clone() } else { format!("{s} (FAIL)") })
                .collect::<Vec<_>>()
                .join(", "),
            r.confirmations.to_string(),
        ]);
    }
    println!("{t}");
    Ok(())
}

/// The stored record with its confirmations folded in.
pub fn record_of(stored: &StoredRecord) -> Result<Record, String> {
    let mut r: Record = serde_json::from_str(&stored.json)
        .map_err(|e| format!("drill {}: the stored record does not read: {e}", stored.id))?;
    r.confirmations = stored
        .confirmations
        .iter()
        .map(|c| ConfirmationView {
            by: c.by.clone(),
            note: c.note.clone(),
            unresolved: c.unresolved.clone(),
            at_unix_ms: c.at,
        })
        .collect();
    Ok(r)
}

/// `standin drill show RUN`.
pub async fn show(api: &str, run: &str, html: Option<&std::path::Path>, json: bool) -> Result<(), CliError> {
    let (stored, _) = get_json::<StoredRecord>(api, &format!("/v1/drills/{run}")).await?;
    let r = record_of(&stored).map_err(|e| CliError::new(exit::UNAVAILABLE, e))?;
    write_reports(&r, None, html)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&r).unwrap_or_default());
    } else if html.is_none() {
        print!("{}", record::markdown(&r));
    } else if let Some(p) = html {
        println!("drill {run}: HTML record written to {}", p.display());
    }
    Ok(())
}
