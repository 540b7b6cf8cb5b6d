//! Drills the cluster runs on its own (`[drill] schedule`). Every node with a schedule runs
//! this loop beside its daemon; only the Raft leader starts a run, when the last scheduled
//! one is at least one period old, and the cluster's "one run at a time" record keeps a
//! leader change from starting a second one. The run goes through the node's own admin API
//! like any client's.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{Api, Plan};
use crate::api::client::Access;
use crate::clock::unix_ms;
use crate::config::drill::{parse_probe, parse_schedule};
use crate::config::Config;

/// How often the loop looks whether a run is due.
const LOOK_EVERY: Duration = Duration::from_secs(5);

/// Whether a scheduled run is due at `now_ms`: a period after the last scheduled run, or,
/// when none ever ran, a period after `since_ms` (the loop's start).
pub fn due(now_ms: u64, every: Duration, last_scheduled_ms: Option<u64>, since_ms: u64) -> bool {
    let from = last_scheduled_ms.unwrap_or(since_ms);
    now_ms.saturating_sub(from) >= every.as_millis() as u64
}

/// The plan of a scheduled run from this node's configuration, or why there is none.
pub fn plan_of(config: &Config) -> Result<(Plan, Duration), String> {
    let d = &config.drill;
    let every = parse_schedule(d.schedule.as_deref().ok_or("no [drill] schedule")?)?;
    let service = parse_probe(d.service.as_deref().ok_or("no [drill] service")?)?;
    let me = config.me();
    let tls = if config.api.tls {
        let ca = config.tls.ca.as_ref().ok_or("[api] tls needs [tls] ca")?;
        Some(Arc::new(
            crate::tls::https_client_config(ca).map_err(|e| e.to_string())?,
        ))
    } else {
        None
    };
    let access = Access {
        token: config.api.resolved_token.clone(),
        tls,
    };
    let password = config.store.as_ref().and_then(|s| s.resolved_requirepass.clone());
    Ok((
        Plan {
            api: format!("{}://{}", config.api.scheme(), me.admin),
            access,
            scenarios: d.scenarios.clone(),
            service,
            store: d.store.clone().map(|s| (s, password)),
            max_interruption: d.max_interruption,
            scheduled: true,
            recovery_timeout: Duration::from_secs(120),
            force: false,
        },
        every,
    ))
}

/// Runs scheduled drills until `cancel` fires. Does nothing without a schedule.
pub async fn run(config: Arc<Config>, cancel: CancellationToken) {
    if config.drill.schedule.is_none() {
        return;
    }
    let (plan, every) = match plan_of(&config) {
        Ok(p) => p,
        Err(e) => {
            tracing::error!(error = %e, "scheduled drills are off");
            return;
        }
    };
    let since = unix_ms();
    let me = config.me().id.clone();
    let api = Api {
        access: plan.access.clone(),
        admins: vec![plan.api.clone()],
    };
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(LOOK_EVERY) => {}
        }
        let Ok(st) = api.status().await else { continue };
        if st.stale || st.leader.as_deref() != Some(me.as_str()) {
            continue;
        }
        let Ok(records) = api
            .get::<Vec<crate::api::drill::RecordSummary>>(&plan.api, "/v1/drills")
            .await
        else {
            continue;
        };
        let last = records.iter().filter(|r| r.scheduled).map(|r| r.at).max();
        if !due(unix_ms(), every, last, since) {
            continue;
        }
        tracing::info!(scenarios = ?plan.scenarios, "scheduled drill starting");
        let say = |line: &str| tracing::info!("drill: {line}");
        let outcome = tokio::select! {
            _ = cancel.cancelled() => return,
            r = super::run(&plan, &say) => r,
        };
        match outcome {
            Ok((record, None)) => {
                tracing::info!(run = %record.id, passed = record.passed, "scheduled drill recorded")
            }
            Ok((record, Some(why))) => {
                tracing::error!(run = %record.id, passed = record.passed, error = %why, "scheduled drill ran but its record could not be stored")
            }
            // Another run under way, or the cluster unreadable: looked at again later.
            Err(e) => tracing::warn!(error = %e, "scheduled drill not run"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_is_due_a_period_after_the_last_one_or_the_start() {
        let h = Duration::from_secs(3600);
        assert!(!due(1000, h, None, 0));
        assert!(due(3_600_000, h, None, 0));
        assert!(!due(7_000_000, h, Some(3_600_000), 0));
        assert!(due(7_200_000, h, Some(3_600_000), 0));
        // A clock that went back does not make a run due.
        assert!(!due(10, h, Some(3_600_000), 0));
    }
}
