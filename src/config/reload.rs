//! Reloading the configuration of a running node: the file read again and validated, the
//! difference classified section by section into what applies live and what needs a restart,
//! and [`Live`], the handle through which the consumers of live settings (hooks, the admin
//! API's token, the coordinator's failback policy, alarms, the event retention) read the
//! configuration in effect now.
//!
//! The classification is one pure function, [`Config::apply_live`]: the running configuration
//! with the live settings of the file copied in is what the node runs with next; the sections
//! that differ between the running and that one are *applied*, the ones still differing from
//! the file *need a restart*. Everything not copied in stays as the node started with it:
//! `node`, `member`, listen addresses and TLS settings (bound or loaded at start),
//! `[service]` (the supervisor was started with it), `[address]`, `[proxy]`, `[check]` (the
//! checks run from the start), the store (its server was started with it), and `[timing]`:
//! the lease argument holds only if every node derives its lease, margin and failure timeout
//! from the same timings, so one node changing them alone could let a lease outlive what the
//! others assume.

use std::path::Path;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::Config;

/// What reading the configuration file again found.
///
/// Which one, when a valid file differs: `Applied` when at least one section changed live
/// (`needs_restart` may still list others), `NeedsRestart` when none could.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ReloadOutcome {
    /// Valid and the same as the running configuration.
    Unchanged,
    /// Valid, but the sections that differ take effect only at the next restart.
    NeedsRestart,
    /// Does not validate: nothing changed.
    Rejected,
    /// The node could not be asked (set by `standin reload`, never by a node).
    Unreachable,
    /// Valid, and the sections in `applied` are in effect now; those in `needs_restart`, if
    /// any, take effect at the next restart.
    Applied,
}

/// What reading the configuration file again found (`SIGHUP`, `POST /v1/reload`,
/// `standin reload`): the sections applied live and those that take effect at the next
/// restart. A report without `applied` (an older node) decodes with an empty list.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ReloadReport {
    pub node: String,
    pub outcome: ReloadOutcome,
    /// The digest of the file's configuration (as in `config-changed` events), if it is valid.
    pub digest: Option<String>,
    /// The sections changed live by this reload: in effect now.
    #[serde(default)]
    pub applied: Vec<String>,
    /// The sections that still differ from the running configuration: they take effect at
    /// the next restart.
    #[serde(default)]
    pub needs_restart: Vec<String>,
    /// Why the file was rejected (naming the key), or the node not reached, if so.
    pub error: Option<String>,
    /// The TLS files changed but cannot be used (the previous ones stay in use), if so.
    #[serde(default)]
    pub tls_error: Option<String>,
}

impl ReloadReport {
    /// A report of `outcome` for `node` with nothing else known yet.
    pub fn new(node: &str, outcome: ReloadOutcome) -> ReloadReport {
        ReloadReport {
            node: node.to_string(),
            outcome,
            digest: None,
            applied: Vec::new(),
            needs_restart: Vec::new(),
            error: None,
            tls_error: None,
        }
    }

    /// Whether the file was valid and differed from the running configuration (a
    /// `config-changed` event is due).
    pub fn changed(&self) -> bool {
        matches!(self.outcome, ReloadOutcome::Applied | ReloadOutcome::NeedsRestart)
    }

    /// One log line for the report, at the level its outcome deserves.
    fn log(&self, file: &Path) {
        match self.outcome {
            ReloadOutcome::Rejected | ReloadOutcome::Unreachable => tracing::error!(
                file = %file.display(),
                error = self.error.as_deref().unwrap_or(""),
                "configuration reload rejected: the file does not validate; nothing changed"
            ),
            ReloadOutcome::Unchanged => tracing::info!(
                file = %file.display(),
                digest = self.digest.as_deref().unwrap_or(""),
                "configuration reread: unchanged"
            ),
            ReloadOutcome::Applied => tracing::info!(
                file = %file.display(),
                digest = self.digest.as_deref().unwrap_or(""),
                applied = %self.applied.join(", "),
                needs_restart = %self.needs_restart.join(", "),
                "configuration reloaded: changed sections applied live"
            ),
            ReloadOutcome::NeedsRestart => {}
        }
        if !self.needs_restart.is_empty() {
            tracing::warn!(
                file = %file.display(),
                digest = self.digest.as_deref().unwrap_or(""),
                sections = %self.needs_restart.join(", "),
                "configuration reread: these sections take effect only at the next restart \
                 (needs restart); the node keeps running with their current settings"
            );
        }
        if let Some(e) = &self.tls_error {
            tracing::error!(error = %e, "TLS files cannot be used; keeping the previous ones");
        }
    }
}

/// The configuration a node runs with now: what it started with, with the live settings of
/// each valid reload applied, and the cluster settings (`standin config set/apply`, replicated
/// through the Raft log) on top. Cheap to clone (one shared channel); readers take the current
/// [`Arc<Config>`] with [`Live::get`] each time they use a live setting, or wait for a change
/// with [`Live::subscribe`].
#[derive(Debug, Clone)]
pub struct Live {
    effective: Arc<watch::Sender<Arc<Config>>>,
    /// The file's configuration (as started, with the live settings of each valid reload) and
    /// the cluster settings applied on top of it.
    base: Arc<std::sync::Mutex<(Arc<Config>, Option<String>)>>,
}

impl Live {
    pub fn new(config: Arc<Config>) -> Live {
        Live {
            effective: Arc::new(watch::channel(config.clone()).0),
            base: Arc::new(std::sync::Mutex::new((config, None))),
        }
    }

    /// The configuration in effect now.
    pub fn get(&self) -> Arc<Config> {
        self.effective.borrow().clone()
    }

    /// A receiver that sees every applied reload.
    pub fn subscribe(&self) -> watch::Receiver<Arc<Config>> {
        self.effective.subscribe()
    }

    /// The file's configuration with `settings` on top (the file's alone if they do not apply,
    /// which is logged: they were validated by the leader against its own file).
    fn publish(&self, base: &Arc<Config>, settings: Option<&str>) {
        let effective = match settings {
            None => base.clone(),
            Some(text) => match base.with_settings(text) {
                Ok(c) => Arc::new(c),
                Err(e) => {
                    tracing::error!(error = %e, "the cluster settings do not apply to this node's configuration; running with its file's");
                    base.clone()
                }
            },
        };
        self.effective.send_if_modified(|cur| {
            if **cur == *effective {
                return false;
            }
            *cur = effective;
            true
        });
    }

    /// Applies the cluster settings `text` (`None`: none) on top of the file's configuration.
    pub fn set_settings(&self, text: Option<String>) {
        let mut base = self.base.lock().unwrap_or_else(|p| p.into_inner());
        if base.1 == text {
            return;
        }
        base.1 = text;
        self.publish(&base.0, base.1.as_deref());
    }

    /// A reload, as SIGHUP and `POST /v1/reload` both do it: the TLS files (`tls`, if the
    /// node has its own) loaded again, the configuration file read again, its live settings
    /// applied (see [`Config::apply_live`]) and the outcome logged. A file that does not
    /// validate changes nothing. The cluster settings stay on top. Reads files: call it off
    /// the async workers.
    pub fn reload(&self, path: &Path, tls: Option<&crate::tls::Tls>) -> ReloadReport {
        let mut base = self.base.lock().unwrap_or_else(|p| p.into_inner());
        let (mut report, next) = base.0.recheck(path);
        if let Some(next) = next {
            base.0 = Arc::new(next);
            self.publish(&base.0, base.1.as_deref());
        }
        drop(base);
        reload_tls(&mut report, tls);
        report.log(path);
        report
    }
}

/// Loads the TLS files again (they reload on their own too), noting a failure in `report`.
fn reload_tls(report: &mut ReloadReport, tls: Option<&crate::tls::Tls>) {
    if let Some(tls) = tls {
        match tls.reload() {
            Ok(true) => tracing::info!(
                cert = %tls.files().cert.display(),
                expires_unix = tls.not_after(),
                "TLS certificate reloaded; new connections use it"
            ),
            Ok(false) => {}
            Err(e) => report.tls_error = Some(e.to_string()),
        }
    }
}

impl Config {
    /// Reads and validates `path` again and compares it with this (running) configuration:
    /// the report, and the configuration to run with from now on if anything applies live.
    pub fn recheck(&self, path: &Path) -> (ReloadReport, Option<Config>) {
        let node = self.node.id.as_str();
        match Config::load(path) {
            Err(e) => (
                ReloadReport {
                    error: Some(e.to_string()),
                    ..ReloadReport::new(node, ReloadOutcome::Rejected)
                },
                None,
            ),
            Ok(file) => {
                let live = self.apply_live(&file);
                let outcome = match (live.applied.is_empty(), live.needs_restart.is_empty()) {
                    (true, true) => ReloadOutcome::Unchanged,
                    (true, false) => ReloadOutcome::NeedsRestart,
                    (false, _) => ReloadOutcome::Applied,
                };
                let report = ReloadReport {
                    digest: Some(file.digest()),
                    applied: live.applied,
                    needs_restart: live.needs_restart,
                    ..ReloadReport::new(node, outcome)
                };
                (report, (outcome == ReloadOutcome::Applied).then_some(live.next))
            }
        }
    }

    /// What of `file` (valid) applies to this running configuration live. Pure.
    ///
    /// Live: `[hooks]` (read by the next hook run), `[failback]` (read by the coordinator on
    /// each round), `[alarms]` (read on each delivery), `[events]` (its retention, written by
    /// the leader), and in `[api]` the access settings checked per request (`token`,
    /// `token-file`, `read-open`, `hosts`, `insecure-open`). Everything else needs a restart
    /// (see the module doc for why). If the result would leave the admin API open on a
    /// non-loopback address (the file drops the token and moves the admin address to
    /// loopback, which needs a restart), nothing applies.
    pub fn apply_live(&self, file: &Config) -> LiveChange {
        let mut next = self.clone();
        next.hooks = file.hooks.clone();
        next.failback = file.failback.clone();
        next.alarms = file.alarms.clone();
        next.events = file.events.clone();
        next.api.token = file.api.token.clone();
        next.api.token_file = file.api.token_file.clone();
        next.api.resolved_token = file.api.resolved_token.clone();
        next.api.read_open = file.api.read_open;
        next.api.hosts = file.api.hosts.clone();
        next.api.insecure_open = file.api.insecure_open;
        // The file's own admin address was checked with its access settings; the running one
        // (a listen address never changes live) must be too: no open API off loopback.
        let admin = next.me().admin;
        if next.api.resolved_token.is_none() && !admin.ip().is_loopback() && !next.api.insecure_open {
            next = self.clone();
        }
        LiveChange {
            applied: self.changed_sections(&next),
            needs_restart: next.changed_sections(file),
            next,
        }
    }
}

/// What a valid file changes of a running configuration (see [`Config::apply_live`]).
#[derive(Debug, Clone, PartialEq)]
pub struct LiveChange {
    /// The sections that change live.
    pub applied: Vec<String>,
    /// The sections that still differ from the file.
    pub needs_restart: Vec<String>,
    /// The configuration to run with: the running one with the live settings of the file.
    pub next: Config,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tests::MINIMAL;

    fn with(extra: &str) -> Config {
        Config::parse(&format!("{MINIMAL}\n{extra}\n")).expect("valid")
    }

    /// Each row: what the file adds to the running (minimal) configuration, the sections
    /// applied live, and those that need a restart.
    #[test]
    fn each_section_is_applied_live_or_needs_a_restart() {
        let table: &[(&str, &[&str], &[&str])] = &[
            ("", &[], &[]),
            ("[hooks]\non-promote = \"true\"", &["hooks"], &[]),
            ("[failback]\nmode = \"auto\"", &["failback"], &[]),
            ("[alarms]\nattempts = 2", &["alarms"], &[]),
            ("[events]\nretention = 10", &["events"], &[]),
            ("[api]\ntoken = \"0123456789abcdef-new\"", &["api"], &[]),
            ("[api]\nhosts = [\"ha.example\"]", &["api"], &[]),
            // Leases are safe only while every node uses the same timings.
            ("[timing]\nfailure-timeout = \"700ms\"", &[], &["timing"]),
            ("[api]\nmax-connections = 8", &[], &["api"]),
            // A token and a listen-side setting in one section: the token now, the rest later.
            (
                "[api]\ntoken = \"0123456789abcdef-new\"\nmax-connections = 8",
                &["api"],
                &["api"],
            ),
            (
                "[hooks]\non-demote = \"true\"\n[timing]\nfailure-timeout = \"700ms\"",
                &["hooks"],
                &["timing"],
            ),
        ];
        let running = with("");
        for (extra, applied, restart) in table {
            let change = running.apply_live(&with(extra));
            assert_eq!(change.applied, *applied, "{extra}");
            assert_eq!(change.needs_restart, *restart, "{extra}");
            // Applying again changes nothing more: the next reload of the file compares
            // against the configuration now in effect.
            let again = change.next.apply_live(&with(extra));
            assert!(again.applied.is_empty(), "{extra}: {:?}", again.applied);
            assert_eq!(again.needs_restart, *restart, "{extra}");
        }
    }

    /// A file that drops the token while it also moves the admin API to loopback (a listen
    /// address, so not live) would leave the running API open off loopback: nothing applies.
    #[test]
    fn no_live_change_opens_the_api_off_loopback() {
        let token = "[api]\ntoken = \"0123456789abcdef-old\"";
        let off_loopback = |extra: &str| {
            Config::parse(&format!(
                "{}\n{extra}\n",
                MINIMAL.replace("admin = \"127.0.0.1:7181\"", "admin = \"10.0.0.1:7181\"")
            ))
            .expect("valid")
        };
        let running = off_loopback(token);
        let change = running.apply_live(&with(""));
        assert!(change.applied.is_empty(), "{:?}", change.applied);
        assert_eq!(change.next, running);
        assert!(change.needs_restart.contains(&"api".to_string()));
        assert!(change.needs_restart.contains(&"member".to_string()));
    }

    #[test]
    fn outcomes_follow_the_classification_and_old_reports_decode() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("c.toml");
        let running = with("");
        let outcome = |extra: &str| {
            std::fs::write(&path, format!("{MINIMAL}\n{extra}\n")).expect("write");
            running.recheck(&path)
        };
        let (r, next) = outcome("");
        assert_eq!((r.outcome, next.is_none()), (ReloadOutcome::Unchanged, true));
        let (r, next) = outcome("[hooks]\non-promote = \"true\"");
        assert_eq!((r.outcome, next.is_some()), (ReloadOutcome::Applied, true));
        assert!(r.changed());
        let (r, next) = outcome("[timing]\nfailure-timeout = \"700ms\"");
        assert_eq!((r.outcome, next.is_none()), (ReloadOutcome::NeedsRestart, true));
        let (r, next) = outcome("[events]\nretention = 0");
        assert_eq!((r.outcome, next.is_none()), (ReloadOutcome::Rejected, true));
        assert!(r.error.is_some_and(|e| e.contains("events.retention")));
        // A report of an older node (no `applied`) still decodes.
        let old =
            r#"{"node":"a","outcome":"needs-restart","digest":"x","needs_restart":["timing"],"error":null}"#;
        let r: ReloadReport = serde_json::from_str(old).expect("decodes");
        assert!(r.applied.is_empty() && r.needs_restart == ["timing"]);
    }
}
