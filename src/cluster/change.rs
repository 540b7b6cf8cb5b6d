//! Change control of the managed service, replicated: the versions of its spec, which version
//! each node should run and runs, and the rolling deploy under way.
//!
//! A version is an overlay on each node's own `[service]` section (what differs per node, such
//! as a port or the node's id, stays in the node's file): version 1 is the files as they are;
//! a deploy makes a new version from the current one plus changes. The deploy itself is a small
//! state machine in the Raft log ([`Deploy`]): each step (switch the role away, set a node's
//! version, watch it, go on or roll back) is a committed [`ChangeCmd`], so a new leader
//! continues a deploy from where the last one left it. The driver that decides the steps runs
//! on the leader (`node::deploy`); everything here is pure and applied identically everywhere.

use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::config::ServiceConfig;

/// Versions kept (the oldest beyond are dropped, never one a node runs or should run).
pub const MAX_VERSIONS: usize = 500;
/// Finished deploys kept in the history.
pub const MAX_DEPLOYS: usize = 200;
/// Longest version label.
pub const MAX_LABEL: usize = 64;
/// Most arguments of a version's command.
pub const MAX_ARGS: usize = 256;
/// Most environment variables a version sets.
pub const MAX_ENV: usize = 256;
/// Longest string in a version (command, argument, variable name or value, workdir).
pub const MAX_STRING: usize = 4096;
/// Largest version spec (all its strings together).
pub const MAX_OVERLAY: usize = 64 * 1024;
/// Longest "by" (who asked) and failure reason kept.
pub const MAX_NOTE: usize = 512;

/// What a version changes in a node's `[service]` section. (No `skip_serializing_if`: the
/// log and snapshots encode it with postcard, which needs every field.)
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ServiceOverlay {
    /// Replaces `command`.
    #[serde(default)]
    pub command: Option<String>,
    /// Replaces `args` (all of them).
    #[serde(default)]
    pub args: Option<Vec<String>>,
    /// Set on top of `env` (a variable the file sets too takes this value).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Replaces `workdir`.
    #[serde(default)]
    pub workdir: Option<PathBuf>,
}

impl ServiceOverlay {
    /// `base` (a node's `[service]`) with this overlay applied.
    pub fn apply(&self, base: &ServiceConfig) -> ServiceConfig {
        let mut s = base.clone();
        if let Some(c) = &self.command {
            s.command = c.clone();
        }
        if let Some(a) = &self.args {
            s.args = a.clone();
        }
        for (k, v) in &self.env {
            s.env.insert(k.clone(), v.clone());
        }
        if let Some(w) = &self.workdir {
            s.workdir = Some(w.clone());
        }
        s
    }

    /// `self` with `changes` on top: what `changes` names replaces, its variables are added.
    pub fn then(&self, changes: &ServiceOverlay) -> ServiceOverlay {
        let mut o = self.clone();
        if changes.command.is_some() {
            o.command = changes.command.clone();
        }
        if changes.args.is_some() {
            o.args = changes.args.clone();
        }
        for (k, v) in &changes.env {
            o.env.insert(k.clone(), v.clone());
        }
        if changes.workdir.is_some() {
            o.workdir = changes.workdir.clone();
        }
        o
    }

    pub fn is_empty(&self) -> bool {
        *self == ServiceOverlay::default()
    }

    /// Checks the overlay as the config checks `[service]`; the error names the key.
    pub fn validate(&self) -> Result<(), String> {
        let text = |key: &str, s: &str| -> Result<(), String> {
            if s.len() > MAX_STRING {
                return Err(format!("{key}: longer than {MAX_STRING} bytes"));
            }
            if s.contains('\0') {
                return Err(format!("{key}: holds a NUL byte"));
            }
            Ok(())
        };
        if let Some(c) = &self.command {
            if c.trim().is_empty() {
                return Err("service.command: must not be empty".into());
            }
            text("service.command", c)?;
        }
        if let Some(a) = &self.args {
            if a.len() > MAX_ARGS {
                return Err(format!("service.args: more than {MAX_ARGS} arguments"));
            }
            for (i, s) in a.iter().enumerate() {
                text(&format!("service.args[{i}]"), s)?;
            }
        }
        let total = self.command.as_ref().map_or(0, String::len)
            + self.args.iter().flatten().map(String::len).sum::<usize>()
            + self.env.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>()
            + self.workdir.as_ref().map_or(0, |w| w.as_os_str().len());
        if total > MAX_OVERLAY {
            return Err(format!(
                "service: the version's spec is larger than {MAX_OVERLAY} bytes"
            ));
        }
        if self.env.len() > MAX_ENV {
            return Err(format!("service.env: more than {MAX_ENV} variables"));
        }
        for (k, v) in &self.env {
            if k.is_empty() || k.contains('=') {
                return Err(format!("service.env: invalid variable name {k:?}"));
            }
            if k == "STANDIN_NODE" {
                return Err("service.env.STANDIN_NODE: set by standin itself".into());
            }
            text(&format!("service.env.{k}"), k)?;
            text(&format!("service.env.{k}"), v)?;
        }
        if let Some(w) = &self.workdir {
            text("service.workdir", &w.to_string_lossy())?;
            if !w.is_absolute() {
                return Err("service.workdir: must be an absolute path".into());
            }
        }
        Ok(())
    }

    /// One line saying what the overlay sets (for plans, history and events).
    pub fn summary(&self) -> String {
        let mut parts = Vec::new();
        if let Some(c) = &self.command {
            parts.push(format!("command={c}"));
        }
        if let Some(a) = &self.args {
            parts.push(format!("args={a:?}"));
        }
        for (k, v) in &self.env {
            parts.push(format!("{k}={v}"));
        }
        if let Some(w) = &self.workdir {
            parts.push(format!("workdir={}", w.display()));
        }
        if parts.is_empty() {
            "as in the config files".into()
        } else {
            parts.join(" ")
        }
    }
}

/// One version of the service spec.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ServiceVersion {
    pub number: u64,
    pub label: String,
    pub overlay: ServiceOverlay,
    /// Who asked (as the client said; the API has one token, not users).
    pub by: String,
    pub at_unix_ms: u64,
    /// How its last deploy ended (`None` while never deployed or under way).
    pub outcome: Option<String>,
}

/// How a deploy moves the role and the traffic.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    /// Standbys first, then a switchover to an updated standby, then the old active.
    #[default]
    Failover,
    /// Like failover, and each node is drained (front proxies send it no new connections)
    /// before its service restarts, and put back once it is healthy.
    Balance,
}

/// What a deploy is.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum DeployKind {
    /// A new version (or an earlier one, `standin deploy rollback`) going out.
    Deploy,
    /// The way back after a failed step: every node that got the failed version returns.
    Rollback,
}

/// Where the deploy is with its current node.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    /// The step has not begun on the node: the driver decides how it begins.
    Pending,
    /// The node is active: the role moves to an updated standby first.
    SwitchingOver,
    /// The node is taken out of load balancing (balance strategy) and its connections finish.
    Draining,
    /// The node was told to run the new version; waiting for it to run and be healthy.
    Updating,
    /// The node runs the new version healthily; watched for the watch window.
    Watching,
    /// Put back into load balancing.
    Undraining,
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Phase::Pending => "pending",
            Phase::SwitchingOver => "switching-over",
            Phase::Draining => "draining",
            Phase::Updating => "updating",
            Phase::Watching => "watching",
            Phase::Undraining => "undraining",
        })
    }
}

/// Timings of one deploy.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct DeployTimes {
    /// Longest a step may take (the new version to run healthily, a switchover, a drain).
    pub step_timeout_ms: u64,
    /// How long a node must stay healthy on the new version before the next step.
    pub watch_ms: u64,
    /// How long a drained node's connections get before its service restarts (balance).
    pub drain_ms: u64,
}

/// A deploy under way.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Deploy {
    pub id: u64,
    pub kind: DeployKind,
    pub strategy: Strategy,
    /// The version nodes leave and the one they go to.
    pub from: u64,
    pub to: u64,
    /// Nodes in the order they are updated; the active node last.
    pub plan: Vec<String>,
    /// Index into `plan` of the node being updated.
    pub step: usize,
    pub phase: Phase,
    /// When the current phase began (proposer's clock).
    pub phase_at_unix_ms: u64,
    pub times: DeployTimes,
    pub by: String,
    pub started_unix_ms: u64,
    /// For a rollback: why the deploy it reverses failed.
    pub failure: Option<String>,
    /// For a rollback: the deploy it reverses.
    pub reverses: Option<u64>,
}

impl Deploy {
    pub fn node(&self) -> Option<&str> {
        self.plan.get(self.step).map(String::as_str)
    }
}

/// A finished deploy, for the history.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DeployRecord {
    pub id: u64,
    pub kind: DeployKind,
    pub strategy: Strategy,
    pub from: u64,
    pub to: u64,
    pub plan: Vec<String>,
    pub by: String,
    pub started_unix_ms: u64,
    pub ended_unix_ms: u64,
    /// `deployed`, `rolled back: ...`, `failed: ...`.
    pub outcome: String,
    pub ok: bool,
}

/// What applying a command answers (the state machine turns it into a `CommandResult`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub ok: bool,
    pub message: String,
}

impl Outcome {
    fn ok() -> Self {
        Outcome {
            ok: true,
            message: String::new(),
        }
    }
    fn ok_with(message: String) -> Self {
        Outcome { ok: true, message }
    }
    fn refused(message: impl Into<String>) -> Self {
        Outcome {
            ok: false,
            message: message.into(),
        }
    }
}

/// Which history event a [`Note`] becomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoteKind {
    /// A `deploy` event.
    Deploy,
    /// A `config-changed` event (the cluster settings).
    Settings,
}

/// An event for the history, recorded by the state machine (which owns the history).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    pub at: u64,
    pub kind: NoteKind,
    pub node: Option<String>,
    pub detail: String,
}

/// The events one command produced.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Notes(pub Vec<Note>);

impl Notes {
    fn record(&mut self, at: u64, kind: NoteKind, node: Option<&str>, detail: String) {
        self.0.push(Note {
            at,
            kind,
            node: node.map(str::to_string),
            detail,
        });
    }
}

/// The replicated change-control state.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ChangeControl {
    /// Every version kept, oldest first; empty until the first deploy (version 1, the files,
    /// is then recorded too).
    pub versions: VecDeque<ServiceVersion>,
    /// The version the cluster runs when no deploy is under way (1 before any deploy).
    pub current: u64,
    /// The version each node should run (a node absent runs `current`).
    pub desired: BTreeMap<String, u64>,
    /// The version each node reported it runs (when is in the `deploy` event).
    pub running: BTreeMap<String, u64>,
    pub deploy: Option<Deploy>,
    pub next_deploy: u64,
    pub history: VecDeque<DeployRecord>,
    /// Versions of the cluster settings (`standin config set/apply/rollback`), oldest first;
    /// the last is in effect.
    pub settings: VecDeque<SettingsVersion>,
}

/// One version of the cluster settings: a TOML document of the sections every node applies
/// live on top of its file (`config::CLUSTER_SECTIONS`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SettingsVersion {
    pub number: u64,
    /// The whole document in effect from this version on (empty: none, the files alone).
    pub text: String,
    /// What changed, in words (`failback.mode = "auto"`, `rollback to 3`, `apply FILE`).
    pub change: String,
    pub by: String,
    pub at_unix_ms: u64,
    /// Digests of the document before and after.
    pub old_digest: String,
    pub new_digest: String,
}

impl ChangeControl {
    /// The cluster settings in effect (`None`: none were ever set, or the last version is
    /// empty).
    pub fn settings_text(&self) -> Option<String> {
        self.settings
            .back()
            .map(|v| v.text.clone())
            .filter(|t| !t.trim().is_empty())
    }

    /// The alarms change control raises, by key: `deploy-failed` while the last deploy failed
    /// (until a deploy succeeds), `rolled-back` while the last thing that happened was an
    /// automatic rollback.
    pub fn alarms(&self) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        let last_deploy = self.history.iter().rev().find(|r| r.kind == DeployKind::Deploy);
        if let Some(r) = last_deploy.filter(|r| !r.ok) {
            out.insert(
                "deploy-failed".to_string(),
                format!("deploy {} of version {}: {}", r.id, r.to, r.outcome),
            );
        }
        if let Some(r) = self.history.back().filter(|r| r.kind == DeployKind::Rollback) {
            out.insert(
                "rolled-back".to_string(),
                format!("version {} rolled back to {}: {}", r.from, r.to, r.outcome),
            );
        }
        out
    }

    /// The version the cluster runs when nothing is under way.
    pub fn current(&self) -> u64 {
        self.current.max(1)
    }

    /// The version `node` should run.
    pub fn desired_of(&self, node: &str) -> u64 {
        self.desired.get(node).copied().unwrap_or_else(|| self.current())
    }

    /// The version `node` last said it runs (1 if it never said).
    pub fn running_of(&self, node: &str) -> u64 {
        self.running.get(node).copied().unwrap_or(1)
    }

    pub fn version(&self, number: u64) -> Option<&ServiceVersion> {
        self.versions.iter().find(|v| v.number == number)
    }

    /// The overlay of `number` (version 1 and unknown ones: none).
    pub fn overlay(&self, number: u64) -> ServiceOverlay {
        self.version(number)
            .map(|v| v.overlay.clone())
            .unwrap_or_default()
    }

    /// The number the next new version gets.
    pub fn next_version(&self) -> u64 {
        self.versions.back().map_or(1, |v| v.number) + 1
    }

    fn set_outcome(&mut self, number: u64, outcome: &str) {
        if let Some(v) = self.versions.iter_mut().find(|v| v.number == number) {
            v.outcome = Some(outcome.to_string());
        }
    }

    fn trim(&mut self) {
        while self.versions.len() > MAX_VERSIONS {
            let in_use = |n: u64| {
                n == self.current()
                    || self.desired.values().any(|d| *d == n)
                    || self.running.values().any(|r| *r == n)
                    || self.deploy.as_ref().is_some_and(|d| d.from == n || d.to == n)
            };
            match self.versions.iter().position(|v| !in_use(v.number)) {
                Some(i) => {
                    self.versions.remove(i);
                }
                None => break,
            }
        }
        while self.history.len() > MAX_DEPLOYS {
            self.history.pop_front();
        }
    }

    fn finish(&mut self, state: &mut Notes, outcome: String, ok: bool, at: u64) {
        let Some(d) = self.deploy.take() else { return };
        let version = if d.kind == DeployKind::Rollback {
            d.from
        } else {
            d.to
        };
        self.set_outcome(version, &outcome);
        if ok {
            self.current = d.to;
        }
        state.record(
            at,
            NoteKind::Deploy,
            None,
            format!("deploy {}: version {} -> {}: {outcome}", d.id, d.from, d.to),
        );
        self.history.push_back(DeployRecord {
            id: d.id,
            kind: d.kind,
            strategy: d.strategy,
            from: d.from,
            to: d.to,
            plan: d.plan,
            by: d.by,
            started_unix_ms: d.started_unix_ms,
            ended_unix_ms: at,
            outcome,
            ok,
        });
        self.trim();
    }

    /// Applies one command. Every command names the deploy it is about: one for another
    /// deploy (a stale leader's) is refused.
    ///
    /// `active` is the node entitled to act as active, and `failover` whether a failover is
    /// under way (see `state::failover_under_way`): a step that restarts or drains the active
    /// node, or any during a failover, is refused whatever the driver read.
    pub fn apply(
        &mut self,
        state: &mut Notes,
        cmd: &ChangeCmd,
        active: Option<&str>,
        failover: bool,
    ) -> Outcome {
        match cmd {
            ChangeCmd::Start {
                version,
                target,
                strategy,
                plan,
                times,
                by,
                at,
            } => {
                if let Some(d) = &self.deploy {
                    return Outcome::refused(format!(
                        "deploy {} (version {} -> {}) is under way",
                        d.id, d.from, d.to
                    ));
                }
                if plan.is_empty() {
                    return Outcome::refused("no data node to deploy to");
                }
                let from = self.current();
                let to = match (version, target) {
                    (Some(v), None) => {
                        if let Err(e) = v.overlay.validate() {
                            return Outcome::refused(e);
                        }
                        if self.versions.is_empty() {
                            // Version 1 is the config files; recorded when a second appears.
                            self.versions.push_back(ServiceVersion {
                                number: 1,
                                label: "config files".into(),
                                overlay: ServiceOverlay::default(),
                                by: "standin".into(),
                                at_unix_ms: *at,
                                outcome: Some("deployed".into()),
                            });
                        }
                        let number = self.next_version();
                        let mut v = ServiceVersion::clone(v);
                        v.number = number;
                        v.at_unix_ms = *at;
                        v.outcome = None;
                        self.versions.push_back(v);
                        number
                    }
                    (None, Some(t)) => {
                        if *t != 1 && self.version(*t).is_none() {
                            return Outcome::refused(format!("there is no version {t}"));
                        }
                        *t
                    }
                    _ => return Outcome::refused("a deploy names a new version or an existing one"),
                };
                let id = self.next_deploy.max(1);
                self.next_deploy = id + 1;
                self.deploy = Some(Deploy {
                    id,
                    kind: DeployKind::Deploy,
                    strategy: *strategy,
                    from,
                    to,
                    plan: plan.clone(),
                    step: 0,
                    phase: Phase::Pending,
                    phase_at_unix_ms: *at,
                    times: *times,
                    by: by.clone(),
                    started_unix_ms: *at,
                    failure: None,
                    reverses: None,
                });
                state.record(
                    *at,
                    NoteKind::Deploy,
                    None,
                    format!(
                        "deploy {id} started by {by}: version {from} -> {to} ({}), order {}",
                        self.overlay(to).summary(),
                        plan.join(", ")
                    ),
                );
                self.trim();
                Outcome::ok_with(format!("deploy {id}: version {from} -> {to}"))
            }
            ChangeCmd::Phase {
                deploy,
                step,
                phase,
                at,
            } => {
                let Some(d) = self.deploy.as_mut().filter(|d| d.id == *deploy) else {
                    return Outcome::refused("not the deploy under way");
                };
                if *step >= d.plan.len() || *step < d.step || *step > d.step + 1 {
                    return Outcome::refused("not the step the deploy is at, or the next one");
                }
                if matches!(phase, Phase::Updating | Phase::Draining)
                    && (failover || active == Some(d.plan[*step].as_str()))
                {
                    return Outcome::refused(format!(
                        "{} is active or a failover is under way: its service is not touched",
                        d.plan[*step]
                    ));
                }
                let moved = d.step != *step;
                d.step = *step;
                d.phase = *phase;
                d.phase_at_unix_ms = *at;
                let node = d.plan[*step].clone();
                if *phase == Phase::Updating {
                    self.desired.insert(node.clone(), d.to);
                }
                let detail = format!(
                    "deploy {}: {} {node} (version {}){}",
                    d.id,
                    phase,
                    d.to,
                    if moved { ", next node" } else { "" }
                );
                state.record(*at, NoteKind::Deploy, Some(&node), detail);
                Outcome::ok()
            }
            ChangeCmd::Done { deploy, at } => {
                let Some(d) = self.deploy.as_ref().filter(|d| d.id == *deploy) else {
                    return Outcome::refused("not the deploy under way");
                };
                match d.kind {
                    DeployKind::Deploy => self.finish(state, "deployed".into(), true, *at),
                    DeployKind::Rollback => {
                        let failed = d.from;
                        let outcome = format!(
                            "rolled back to version {}: {}",
                            d.to,
                            d.failure.clone().unwrap_or_default()
                        );
                        self.finish(state, outcome.clone(), true, *at);
                        // The version that was reversed keeps its failure as the outcome.
                        self.set_outcome(failed, &format!("failed; {outcome}"));
                    }
                }
                Outcome::ok()
            }
            ChangeCmd::Fail {
                deploy,
                reason,
                rollback_plan,
                at,
            } => {
                let Some(d) = self.deploy.clone().filter(|d| d.id == *deploy) else {
                    return Outcome::refused("not the deploy under way");
                };
                let reason = cut(reason);
                if d.kind == DeployKind::Rollback || rollback_plan.is_empty() {
                    // Nothing to go back to, or the way back failed too: the deploy stops
                    // here and an operator decides.
                    let outcome = if d.kind == DeployKind::Rollback {
                        format!("rollback failed: {reason}")
                    } else {
                        format!("failed: {reason}")
                    };
                    if d.kind == DeployKind::Rollback {
                        self.set_outcome(d.from, &outcome);
                    }
                    self.finish(state, outcome, false, *at);
                    return Outcome::ok();
                }
                state.record(
                    *at,
                    NoteKind::Deploy,
                    d.node(),
                    format!(
                        "deploy {} failed at {} ({}): {reason}; rolling back {} to version {}",
                        d.id,
                        d.node().unwrap_or("-"),
                        d.phase,
                        rollback_plan.join(", "),
                        d.from
                    ),
                );
                self.set_outcome(d.to, &format!("failed: {reason}"));
                self.history.push_back(DeployRecord {
                    id: d.id,
                    kind: d.kind,
                    strategy: d.strategy,
                    from: d.from,
                    to: d.to,
                    plan: d.plan.clone(),
                    by: d.by.clone(),
                    started_unix_ms: d.started_unix_ms,
                    ended_unix_ms: *at,
                    outcome: format!("failed at {}: {reason}", d.node().unwrap_or("-")),
                    ok: false,
                });
                let id = self.next_deploy.max(1);
                self.next_deploy = id + 1;
                self.deploy = Some(Deploy {
                    id,
                    kind: DeployKind::Rollback,
                    strategy: d.strategy,
                    from: d.to,
                    to: d.from,
                    plan: rollback_plan.clone(),
                    step: 0,
                    phase: Phase::Pending,
                    phase_at_unix_ms: *at,
                    times: d.times,
                    by: d.by.clone(),
                    started_unix_ms: *at,
                    failure: Some(reason),
                    reverses: Some(d.id),
                });
                self.trim();
                Outcome::ok()
            }
            ChangeCmd::Running { node, version, at } => {
                if self.running.get(node) == Some(version) {
                    return Outcome::ok();
                }
                self.running.insert(node.clone(), *version);
                state.record(
                    *at,
                    NoteKind::Deploy,
                    Some(node),
                    format!("{node} runs service version {version}"),
                );
                Outcome::ok()
            }
            ChangeCmd::Settings {
                text,
                change,
                by,
                base,
                at,
            } => {
                let current = self.settings.back().map_or(0, |v| v.number);
                if *base != current {
                    return Outcome::refused(format!(
                        "the settings changed meanwhile (version {current}, the change was made on {base}): run it again"
                    ));
                }
                if text.len() > crate::config::MAX_SETTINGS {
                    return Outcome::refused("settings too large");
                }
                let old = self.settings.back().map(|v| v.text.clone()).unwrap_or_default();
                let number = current + 1;
                let v = SettingsVersion {
                    number,
                    text: text.clone(),
                    change: cut(change),
                    by: cut(by),
                    at_unix_ms: *at,
                    old_digest: digest(&old),
                    new_digest: digest(text),
                };
                state.record(
                    *at,
                    NoteKind::Settings,
                    None,
                    format!(
                        "cluster settings version {number} by {}: {} (digest {} -> {})",
                        v.by, v.change, v.old_digest, v.new_digest
                    ),
                );
                self.settings.push_back(v);
                while self.settings.len() > MAX_VERSIONS {
                    self.settings.pop_front();
                }
                Outcome::ok_with(format!("cluster settings version {number}"))
            }
        }
    }
}

fn cut(s: &str) -> String {
    if s.len() <= MAX_NOTE {
        return s.to_string();
    }
    let mut end = MAX_NOTE;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

/// The commands of change control (inside `Command::Change`). Variant order is the encoding:
/// append new ones at the end.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub enum ChangeCmd {
    /// Starts a deploy: of a new `version` (its number is given when applied), or of an
    /// existing one (`target`, for `standin deploy rollback N`).
    Start {
        /// Boxed: the largest variant by far, and every log entry is sized by it.
        version: Option<Box<ServiceVersion>>,
        target: Option<u64>,
        strategy: Strategy,
        plan: Vec<String>,
        times: DeployTimes,
        by: String,
        at: u64,
    },
    /// The deploy moves to `phase` on `plan[step]` (`Updating` sets that node's version).
    Phase {
        deploy: u64,
        step: usize,
        phase: Phase,
        at: u64,
    },
    /// Every node runs the new version healthily (or, for a rollback, the old one again).
    Done { deploy: u64, at: u64 },
    /// A step failed: the deploy becomes a rollback of `rollback_plan` (the nodes that got the
    /// new version, in the order they go back); a rollback that fails stops.
    Fail {
        deploy: u64,
        reason: String,
        rollback_plan: Vec<String>,
        at: u64,
    },
    /// `node` runs `version` of the service now (it started it).
    Running { node: String, version: u64, at: u64 },
    /// The cluster settings become `text` (a whole document), if the last version is still
    /// `base` (a compare-and-set: two operators' changes do not overwrite each other).
    Settings {
        text: String,
        change: String,
        by: String,
        base: u64,
        at: u64,
    },
}

/// A short digest of a settings document.
pub fn digest(text: &str) -> String {
    format!("{:016x}", crate::config::raft_id(text))
}

#[cfg(test)]
mod tests {
    use super::*;

    impl ChangeControl {
        fn apply_t(&mut self, st: &mut Notes, cmd: &ChangeCmd) -> Outcome {
            self.apply(st, cmd, Some("a"), false)
        }
    }

    fn times() -> DeployTimes {
        DeployTimes {
            step_timeout_ms: 10_000,
            watch_ms: 1000,
            drain_ms: 0,
        }
    }

    fn start(cc: &mut ChangeControl, st: &mut Notes, env: &str) -> Outcome {
        let mut overlay = cc.overlay(cc.current());
        overlay.env.insert("V".into(), env.into());
        cc.apply_t(
            st,
            &ChangeCmd::Start {
                version: Some(Box::new(ServiceVersion {
                    number: 0,
                    label: env.into(),
                    overlay,
                    by: "t".into(),
                    at_unix_ms: 0,
                    outcome: None,
                })),
                target: None,
                strategy: Strategy::Failover,
                plan: vec!["b".into(), "a".into()],
                times: times(),
                by: "t".into(),
                at: 1,
            },
        )
    }

    #[test]
    fn a_good_deploy_moves_current_and_sets_versions_per_step() {
        let (mut cc, mut st) = (ChangeControl::default(), Notes::default());
        assert!(start(&mut cc, &mut st, "2").ok);
        assert_eq!(cc.versions.len(), 2, "version 1 (the files) is recorded beside 2");
        let id = cc.deploy.as_ref().map(|d| d.id).unwrap_or_default();
        assert!(!start(&mut cc, &mut st, "3").ok, "one deploy at a time");
        let phase = |step, phase| ChangeCmd::Phase {
            deploy: id,
            step,
            phase,
            at: 2,
        };
        assert!(cc.apply_t(&mut st, &phase(0, Phase::Updating)).ok);
        assert_eq!(cc.desired_of("b"), 2);
        assert_eq!(cc.desired_of("a"), 1);
        assert_eq!(cc.desired_of("a"), 1, "a pending step changes nothing yet");
        assert!(cc.apply_t(&mut st, &phase(1, Phase::Pending)).ok);
        assert!(cc.apply_t(&mut st, &phase(1, Phase::SwitchingOver)).ok);
        assert!(
            !cc.apply_t(&mut st, &phase(1, Phase::Updating)).ok,
            "the active node's service is never restarted"
        );
        assert!(
            !cc.apply(&mut st, &phase(1, Phase::Updating), Some("b"), true).ok,
            "nor during a failover"
        );
        assert!(cc.apply(&mut st, &phase(1, Phase::Updating), Some("b"), false).ok);
        assert!(
            !cc.apply_t(&mut st, &phase(2, Phase::Updating)).ok,
            "no third step"
        );
        assert!(cc.apply_t(&mut st, &ChangeCmd::Done { deploy: id, at: 3 }).ok);
        assert_eq!(cc.current(), 2);
        assert!(cc.deploy.is_none());
        assert_eq!(
            cc.version(2).and_then(|v| v.outcome.clone()).as_deref(),
            Some("deployed")
        );
        assert!(
            !cc.apply_t(&mut st, &ChangeCmd::Done { deploy: id, at: 4 }).ok,
            "a stale leader's step is refused"
        );
    }

    #[test]
    fn a_failed_step_becomes_a_rollback_that_keeps_current() {
        let (mut cc, mut st) = (ChangeControl::default(), Notes::default());
        assert!(start(&mut cc, &mut st, "2").ok);
        let id = cc.deploy.as_ref().map(|d| d.id).unwrap_or_default();
        cc.apply_t(
            &mut st,
            &ChangeCmd::Phase {
                deploy: id,
                step: 0,
                phase: Phase::Updating,
                at: 2,
            },
        );
        let fail = ChangeCmd::Fail {
            deploy: id,
            reason: "checks failed".into(),
            rollback_plan: vec!["b".into()],
            at: 3,
        };
        assert!(cc.apply_t(&mut st, &fail).ok);
        let rb = cc.deploy.clone().expect("rollback under way");
        assert_eq!((rb.kind, rb.from, rb.to), (DeployKind::Rollback, 2, 1));
        assert_eq!(rb.plan, vec!["b".to_string()]);
        cc.apply_t(
            &mut st,
            &ChangeCmd::Phase {
                deploy: rb.id,
                step: 0,
                phase: Phase::Updating,
                at: 4,
            },
        );
        assert_eq!(cc.desired_of("b"), 1);
        assert!(cc.apply_t(&mut st, &ChangeCmd::Done { deploy: rb.id, at: 5 }).ok);
        assert_eq!(cc.current(), 1);
        let outcome = cc.version(2).and_then(|v| v.outcome.clone()).unwrap_or_default();
        assert!(outcome.starts_with("failed"), "{outcome}");
        assert_eq!(cc.history.len(), 2);
        assert!(!cc.history[0].ok);
    }

    /// Every command survives the log's encoding (postcard needs every field written).
    #[test]
    fn commands_round_trip_through_postcard() {
        let mut overlay = ServiceOverlay {
            command: Some("/bin/x".into()),
            args: Some(vec!["-v".into()]),
            workdir: Some("/srv".into()),
            ..Default::default()
        };
        overlay.env.insert("V".into(), "2".into());
        let cmds = [
            ChangeCmd::Start {
                version: Some(Box::new(ServiceVersion {
                    number: 0,
                    label: "l".into(),
                    overlay,
                    by: "t".into(),
                    at_unix_ms: 0,
                    outcome: None,
                })),
                target: None,
                strategy: Strategy::Balance,
                plan: vec!["b".into(), "a".into()],
                times: times(),
                by: "t".into(),
                at: 1,
            },
            ChangeCmd::Start {
                version: Some(Box::new(ServiceVersion {
                    number: 0,
                    label: String::new(),
                    overlay: ServiceOverlay::default(),
                    by: "t".into(),
                    at_unix_ms: 0,
                    outcome: None,
                })),
                target: None,
                strategy: Strategy::Failover,
                plan: vec!["b".into()],
                times: times(),
                by: "t".into(),
                at: 1,
            },
            ChangeCmd::Phase {
                deploy: 1,
                step: 1,
                phase: Phase::Watching,
                at: 2,
            },
            ChangeCmd::Done { deploy: 1, at: 3 },
            ChangeCmd::Fail {
                deploy: 1,
                reason: "r".into(),
                rollback_plan: vec!["b".into()],
                at: 4,
            },
            ChangeCmd::Running {
                node: "a".into(),
                version: 2,
                at: 5,
            },
            ChangeCmd::Settings {
                text: "[failback]\nmode = \"auto\"\n".into(),
                change: "c".into(),
                by: "t".into(),
                base: 0,
                at: 6,
            },
        ];
        for c in cmds {
            let bytes =
                postcard::to_allocvec(&crate::cluster::state::Command::Change(c.clone())).expect("encode");
            let back: crate::cluster::state::Command = postcard::from_bytes(&bytes).expect("decode");
            assert_eq!(back, crate::cluster::state::Command::Change(c));
        }
        let mut cc = ChangeControl::default();
        let mut st = Notes::default();
        assert!(start(&mut cc, &mut st, "2").ok);
        let bytes = postcard::to_allocvec(&cc).expect("encode");
        assert_eq!(postcard::from_bytes::<ChangeControl>(&bytes).expect("decode"), cc);
    }

    #[test]
    fn settings_are_versioned_with_a_compare_and_set() {
        let (mut cc, mut st) = (ChangeControl::default(), Notes::default());
        let set = |text: &str, base| ChangeCmd::Settings {
            text: text.into(),
            change: "c".into(),
            by: "t".into(),
            base,
            at: 1,
        };
        assert!(cc.apply_t(&mut st, &set("[events]\nretention = 10\n", 0)).ok);
        assert!(
            !cc.apply_t(&mut st, &set("[events]\nretention = 20\n", 0)).ok,
            "made on a stale version"
        );
        assert!(cc.apply_t(&mut st, &set("", 1)).ok);
        assert_eq!(cc.settings.len(), 2);
        assert_eq!(cc.settings_text(), None, "an empty document is no settings");
        let v = &cc.settings[1];
        assert_eq!(
            (v.old_digest.clone(), v.new_digest.clone()),
            (digest("[events]\nretention = 10\n"), digest(""))
        );
    }

    #[test]
    fn overlays_validate_and_compose() {
        let mut o = ServiceOverlay::default();
        o.env.insert("A=B".into(), "x".into());
        assert!(o.validate().is_err());
        let mut o = ServiceOverlay::default();
        o.env.insert("STANDIN_NODE".into(), "x".into());
        assert!(o.validate().is_err());
        let o = ServiceOverlay {
            workdir: Some("rel".into()),
            ..Default::default()
        };
        assert!(o.validate().is_err());
        let mut a = ServiceOverlay::default();
        a.env.insert("V".into(), "1".into());
        let mut b = ServiceOverlay {
            command: Some("/bin/x".into()),
            ..Default::default()
        };
        b.env.insert("W".into(), "2".into());
        let c = a.then(&b);
        assert_eq!(c.env.len(), 2);
        assert_eq!(c.command.as_deref(), Some("/bin/x"));
    }
}
