//! The replicated cluster state and the commands that change it.
//!
//! Every node applies the same committed [`Command`]s in the same order, so every node tells the
//! same story: who is active at which epoch, who was deposed and whether it confirmed it
//! stopped, health per node, maintenance flags, and the event history. Commands carry the
//! proposer's wall-clock time, never read the clock while applying, and are guarded (a
//! `Promote` only applies while nobody is active and only for `epoch + 1`), so a stale
//! coordinator's command is refused instead of doing harm.

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};

use crate::failover::Cause;

/// How many events the history keeps; older ones are dropped.
pub const EVENT_RETENTION: usize = 2000;

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ClusterState {
    /// Fencing token: grows by one with every promotion, never goes back.
    pub epoch: u64,
    /// The node entitled to act as active (it still needs a lease to actually act).
    pub active: Option<String>,
    pub active_since_unix_ms: Option<u64>,
    /// A committed promotion whose hook result has not arrived yet.
    pub promotion: Option<Promotion>,
    /// The previous active while its lease may still run.
    pub deposed: Option<DeposedRecord>,
    pub switchover: Option<SwitchoverRequest>,
    pub nodes: BTreeMap<String, NodeRecord>,
    pub events: VecDeque<Event>,
    pub next_event_seq: u64,
    /// Counters since the cluster was created (the event history is bounded; these are not).
    #[serde(default)]
    pub stats: Stats,
    /// Raised alarms by key (`no-in-sync-standby`, `path-down:a>b@addr`, ...): a key raised
    /// twice is one alarm, so notifications are not repeated.
    #[serde(default)]
    pub alarms: BTreeMap<String, AlarmRecord>,
    /// How many events the history keeps (`[events] retention` of the leader; default 2000).
    #[serde(default)]
    pub event_retention: Option<usize>,
    /// Events up to this sequence number have been notified (by some leader): a new leader
    /// continues from here, so nothing committed just before a change of leader is skipped.
    #[serde(default)]
    pub notified_up_to: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AlarmRecord {
    pub detail: String,
    pub since_unix_ms: u64,
}

/// Cluster-wide counters, replicated like everything else (exported as Prometheus counters).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Stats {
    /// Events by `"kind/cause"` (`"kind/"` when the event has no cause).
    pub events: BTreeMap<String, u64>,
    /// Hook runs by `"hook/ok"` or `"hook/failed"`.
    pub hooks: BTreeMap<String, u64>,
}

impl Stats {
    fn hook(&mut self, h: &HookRecord) {
        let key = format!("{}/{}", h.hook, if h.ok { "ok" } else { "failed" });
        *self.hooks.entry(key).or_default() += 1;
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Promotion {
    pub node: String,
    pub epoch: u64,
    pub previous: Option<String>,
    pub cause: Cause,
    pub fence: bool,
    pub at_unix_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DeposedRecord {
    pub node: String,
    pub epoch: u64,
    pub released: bool,
    pub cause: Cause,
    pub at_unix_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SwitchoverRequest {
    pub target: Option<String>,
    pub cause: Cause,
    pub requested_unix_ms: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct NodeRecord {
    pub maintenance: bool,
    /// Taken out of load balancing: front proxies send it no new connections.
    #[serde(default)]
    pub drain: bool,
    /// Every check (and the supervised process) passing.
    pub healthy: bool,
    pub healthy_since_unix_ms: Option<u64>,
    /// Last reported state of each check, by name ("process" is the supervised process).
    pub checks: BTreeMap<String, CheckRecord>,
    pub version: String,
    pub started_unix_ms: Option<u64>,
    /// Heartbeat paths to each peer as this node last reported them: `"peer address"` → up.
    #[serde(default)]
    pub paths: BTreeMap<String, bool>,
    /// Digest of the configuration the node last started with.
    #[serde(default)]
    pub config_digest: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CheckRecord {
    pub healthy: bool,
    pub detail: String,
    pub since_unix_ms: u64,
}

/// One line of the event history.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Event {
    pub seq: u64,
    pub at_unix_ms: u64,
    pub kind: EventKind,
    pub node: Option<String>,
    pub epoch: u64,
    pub cause: Option<Cause>,
    pub detail: String,
    /// For promotions: time without an active node, from deposition to the promote hook's end.
    pub duration_ms: Option<u64>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum EventKind {
    NodeStarted,
    HealthChanged,
    Deposed,
    Released,
    Promoting,
    Promoted,
    PromotionFailed,
    Hook,
    Maintenance,
    Drain,
    PathChanged,
    AlarmRaised,
    AlarmCleared,
    ConfigChanged,
    SwitchoverRequested,
    SwitchoverCancelled,
    /// A node's daemon was hot-restarted (same pid, new program; role and service kept).
    HotRestart,
    /// A node read its configuration file again and refused it (the detail names the key).
    ConfigRejected,
    /// The membership changed (`standin member add/remove/replace`): the detail says how.
    MembershipChanged,
    /// A deploy of the service (`standin deploy`): started, a step, failed, rolled back, done.
    Deploy,
    /// A failover drill was recorded or confirmed (`standin drill`).
    Drill,
    /// A restore of the key space from a backup (`standin restore`): done or abandoned.
    Restore,
}

impl std::fmt::Display for EventKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = serde_json::to_value(self)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        f.write_str(&s)
    }
}

/// A hook run, as recorded in the history.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct HookRecord {
    pub hook: String,
    pub ok: bool,
    pub exit_code: Option<i32>,
    pub timed_out: bool,
    pub duration_ms: u64,
    pub output: String,
}

/// A change to the cluster state: the payload of a Raft log entry.
///
/// A batch holds plain changes only ([`Change`], whose `Batch` variant holds the uninhabited
/// [`NoBatch`]), so nothing decoded from the wire or the log nests: postcard's decoder and
/// [`ClusterState::apply`] never recurse more than one level, whatever the bytes say.
pub type Command = CommandOf<Changes>;

/// Most changes in one batch. The largest batch the node itself writes holds a few per node
/// (alarms, paths); the bound keeps a hostile batch of millions of two-byte changes from
/// decoding into gigabytes (a change takes ~110 bytes in memory).
pub const MAX_BATCH: usize = 1024;

/// The changes of a batch: at most [`MAX_BATCH`], checked while decoding before anything is
/// allocated for more.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Changes(pub Vec<Change>);

impl<'de> Deserialize<'de> for Changes {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Bounded;
        impl<'de> serde::de::Visitor<'de> for Bounded {
            type Value = Changes;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "at most {MAX_BATCH} changes")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Changes, A::Error> {
                if seq.size_hint().is_some_and(|n| n > MAX_BATCH) {
                    return Err(serde::de::Error::custom(format!(
                        "a batch of more than {MAX_BATCH} changes"
                    )));
                }
                let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(MAX_BATCH));
                while let Some(c) = seq.next_element::<Change>()? {
                    if out.len() == MAX_BATCH {
                        return Err(serde::de::Error::custom(format!(
                            "a batch of more than {MAX_BATCH} changes"
                        )));
                    }
                    out.push(c);
                }
                Ok(Changes(out))
            }
        }
        d.deserialize_seq(Bounded)
    }
}

/// The variant name of a command, for messages (never its contents).
fn kind_name<B>(c: &CommandOf<B>) -> &'static str {
    match c {
        CommandOf::NodeStarted { .. } => "NodeStarted",
        CommandOf::Health { .. } => "Health",
        CommandOf::Depose { .. } => "Depose",
        CommandOf::Released { .. } => "Released",
        CommandOf::Promote { .. } => "Promote",
        CommandOf::PromoteResult { .. } => "PromoteResult",
        CommandOf::PromotionTimedOut { .. } => "PromotionTimedOut",
        CommandOf::HookRun { .. } => "HookRun",
        CommandOf::Maintenance { .. } => "Maintenance",
        CommandOf::Path { .. } => "Path",
        CommandOf::Alarm { .. } => "Alarm",
        CommandOf::SetRetention { .. } => "SetRetention",
        CommandOf::Notified { .. } => "Notified",
        CommandOf::Drain { .. } => "Drain",
        CommandOf::Switchover { .. } => "Switchover",
        CommandOf::CancelSwitchover { .. } => "CancelSwitchover",
        CommandOf::Batch(_) => "Batch",
        CommandOf::Store { .. } => "Store",
        CommandOf::SwitchoverIf { .. } => "SwitchoverIf",
        CommandOf::NodeResumed { .. } => "NodeResumed",
        CommandOf::ConfigReloaded { .. } => "ConfigReloaded",
        CommandOf::Members { .. } => "Members",
        CommandOf::Change(_) => "Change",
        CommandOf::Drill(_) => "Drill",
        CommandOf::Backup(_) => "Backup",
    }
}

impl<B> CommandOf<B> {
    /// The member a peer may forward this change for: the kinds a node reports about itself
    /// (start, health, release, promotion result, hook run, paths) and only for itself. The
    /// others are written by the leader itself (coordinator, admin actions, alarms, store
    /// groups) and never arrive as a forwarded write.
    fn forwardable_by(&self) -> Option<&str> {
        match self {
            CommandOf::NodeStarted { node, .. }
            | CommandOf::NodeResumed { node, .. }
            | CommandOf::Health { node, .. }
            | CommandOf::Released { node, .. }
            | CommandOf::PromoteResult { node, .. }
            | CommandOf::HookRun { node, .. }
            | CommandOf::Path { node, .. }
            | CommandOf::ConfigReloaded { node, .. } => Some(node),
            CommandOf::Change(crate::cluster::change::ChangeCmd::Running { node, .. }) => Some(node),
            CommandOf::Backup(crate::cluster::backup::BackupCmd::Report { node, .. }) => Some(node),
            _ => None,
        }
    }
}

impl Command {
    /// Whether member `from` may forward this command to the leader (`Request::Write`): only
    /// reports about itself. A peer's certificate proves who it is, not what it says about
    /// others: a forged release of the active node would skip the lease wait (two actives), a
    /// forged health report would force a failover, a forged promotion would pick the active.
    pub fn check_forwarded(&self, from: &str) -> Result<(), String> {
        let one = |node: Option<&str>, kind: &str| match node {
            Some(node) if node == from => Ok(()),
            Some(node) => Err(format!("{from} cannot report {kind} for {node}")),
            None => Err(format!("{from} cannot forward {kind}: only the leader writes it")),
        };
        match self {
            CommandOf::Batch(Changes(changes)) => changes
                .iter()
                .try_for_each(|c| one(c.forwardable_by(), kind_name(c))),
            c => one(c.forwardable_by(), kind_name(c)),
        }
    }

    /// A batch of `changes`, applied in order in one log entry. At most [`MAX_BATCH`] are kept
    /// (a longer batch could not be read back); the callers write records that they derive
    /// again on their next round (alarms, paths), so what is left out follows then.
    pub fn batch(mut changes: Vec<Change>) -> Command {
        if changes.len() > MAX_BATCH {
            tracing::error!(
                changes = changes.len(),
                max = MAX_BATCH,
                "batch too long; the rest waits for the next round"
            );
            changes.truncate(MAX_BATCH);
        }
        CommandOf::Batch(Changes(changes))
    }
}

/// One change inside a [`Command::Batch`]: every variant but a nested batch.
pub type Change = CommandOf<NoBatch>;

/// The content of a batch inside a batch: there is none. Decoding one fails like any
/// unknown variant (postcard refuses an empty enum), so a nested batch cannot be built,
/// sent or read back.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub enum NoBatch {}

/// The commands, generic over what a batch holds (see [`Command`] and [`Change`]). Variant
/// order is the wire and disk encoding: append new variants at the end.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub enum CommandOf<B> {
    /// A node (re)started. If the state still names it active, it steps down: a returning node
    /// never resumes as active on its own.
    NodeStarted {
        node: String,
        version: String,
        checks: Vec<String>,
        /// A digest of the node's configuration: a different one than last time is recorded
        /// as a configuration change.
        #[serde(default)]
        config: String,
        at: u64,
    },
    /// A health check (or the process) changed state on `node`.
    Health {
        node: String,
        check: String,
        healthy: bool,
        detail: String,
        at: u64,
    },
    Depose {
        node: String,
        epoch: u64,
        cause: Cause,
        detail: String,
        at: u64,
    },
    /// `node` confirms it no longer acts as active for `epoch` (after a depose, or on its own).
    Released {
        node: String,
        epoch: u64,
        reason: String,
        at: u64,
    },
    Promote {
        node: String,
        epoch: u64,
        previous: Option<String>,
        cause: Cause,
        fence: bool,
        at: u64,
    },
    /// The promoted node ran its hooks; `ok == false` means the next candidate is tried.
    PromoteResult {
        node: String,
        epoch: u64,
        ok: bool,
        hooks: Vec<HookRecord>,
        at: u64,
    },
    /// The promoted node did not report in time.
    PromotionTimedOut {
        node: String,
        epoch: u64,
        at: u64,
    },
    /// A hook run outside a promotion (on-demote).
    HookRun {
        node: String,
        epoch: u64,
        hook: HookRecord,
        at: u64,
    },
    Maintenance {
        node: String,
        on: bool,
        at: u64,
    },
    /// A heartbeat path from `node` to `peer` over `address` went up or down.
    Path {
        node: String,
        peer: String,
        address: String,
        up: bool,
        at: u64,
    },
    /// Raise (or clear) a degraded-state alarm. Refused when it is already in that state.
    Alarm {
        key: String,
        raise: bool,
        detail: String,
        at: u64,
    },
    /// Set how many events the history keeps.
    SetRetention {
        events: usize,
    },
    /// Events up to `seq` were notified.
    Notified {
        seq: u64,
    },
    /// Take a node out of (or back into) load balancing.
    Drain {
        node: String,
        on: bool,
        at: u64,
    },
    Switchover {
        target: Option<String>,
        cause: Cause,
        at: u64,
    },
    CancelSwitchover {
        reason: String,
        at: u64,
    },
    /// Several changes in one log entry, applied in order (never a batch inside).
    Batch(B),
    /// Store operations: every group of one log entry, applied at the proposer's time
    /// `now_ms` (absolute Unix milliseconds). Applied by the state machine on its key space.
    Store {
        groups: Vec<(Vec<crate::kv::cmd::Op>, crate::kv::GroupKind)>,
        now_ms: i64,
    },
    /// A switchover only if `from` is still the active node and the epoch still `epoch`
    /// (either may be left out): checked when applied, so a retried or duplicated request
    /// makes one switchover (the admin API's compare-and-set). Last, so that older log
    /// entries keep their encoding.
    SwitchoverIf {
        target: Option<String>,
        cause: Cause,
        at: u64,
        from: Option<String>,
        epoch: Option<u64>,
    },
    /// A node's daemon was replaced in place by a hot restart: the same process (pid) runs a
    /// new program that took over the service, the listeners and the role. Unlike
    /// [`CommandOf::NodeStarted`] it does not step the node down and keeps its checks: the
    /// node never stopped acting. Records the version and configuration it runs now.
    NodeResumed {
        node: String,
        version: String,
        /// The version that handed over.
        from_version: String,
        #[serde(default)]
        config: String,
        /// The checks the new program runs (the process check included): a check no longer
        /// configured leaves the node's record; a new one is reported by the node.
        checks: Vec<String>,
        at: u64,
    },
    /// `node` read its configuration file again (SIGHUP, `POST /v1/reload`): a valid file
    /// that differs (`error` is `None`; `digest` is the file's) is a `config-changed` event
    /// and becomes the node's recorded digest, a refused one (`error` names the key) a
    /// `config-rejected` event. Appended last: older entries keep their encoding.
    ConfigReloaded {
        node: String,
        digest: String,
        error: Option<String>,
        at: u64,
    },
    /// The member table becomes `members` (the whole table: ids, kinds, addresses, sites),
    /// written by the leader before a node joins Raft and after one left it; `change` says
    /// what changed, for the history. Applied by the state machine, which keeps the table
    /// beside the cluster state (see `storage::SmExt`). Appended last.
    Members {
        members: Vec<MemberRecord>,
        change: String,
        at: u64,
    },
    /// Change control of the service: versions and the rolling deploy (see
    /// [`crate::cluster::change`]). Applied by the state machine, which keeps it beside the
    /// cluster state (`storage::SmData::change`). Appended last.
    Change(crate::cluster::change::ChangeCmd),
    /// Acceptance records of failover drills (see [`crate::cluster::drills`]), kept by the
    /// state machine beside the cluster state (`storage::SmData::drills`). Appended last.
    Drill(crate::cluster::drills::DrillCmd),
    /// Backups and restores (see [`crate::cluster::backup`]): a restore's staged chunks and
    /// its swap, and nodes' reports of scheduled backups. Applied by the state machine, which
    /// keeps them beside the cluster state (`storage::SmData::backup`). Appended last.
    Backup(crate::cluster::backup::BackupCmd),
}

/// Whether a failover is under way (the deploy waits): no active node, a promotion not yet
/// confirmed.
pub fn failover_under_way(state: &ClusterState) -> bool {
    // (A deposed record stays after its successor is promoted, unreleased if the node died:
    // it says nothing about now once a node is active again.)
    state.active.is_none() || state.promotion.is_some()
}

/// The order a deploy updates the data nodes in: standbys first (the lowest priority first),
/// the active node last. `Err` when the cluster cannot take a deploy now.
pub fn plan(members: &[crate::config::Member], state: &ClusterState) -> Result<Vec<String>, String> {
    if failover_under_way(state) {
        return Err("a failover is under way; deploy once a node is active".into());
    }
    let mut data: Vec<_> = members
        .iter()
        .filter(|m| m.kind == crate::config::NodeKind::Data)
        .collect();
    if data.len() < 2 {
        return Err("a deploy needs a standby data node to switch over to".into());
    }
    let active = state.active.clone();
    data.sort_by(|a, b| {
        let is_active = |m: &crate::config::Member| active.as_deref() == Some(m.id.as_str());
        is_active(a)
            .cmp(&is_active(b))
            .then(a.priority.cmp(&b.priority))
            .then(a.id.cmp(&b.id))
    });
    Ok(data.into_iter().map(|m| m.id.clone()).collect())
}

/// A member as the cluster records it: a `[[member]]` of the config, replicated so that every
/// node knows a member added at run time (its addresses, to connect; its id, to admit it).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MemberRecord {
    pub id: String,
    pub kind: crate::config::NodeKind,
    pub priority: u32,
    pub addresses: Vec<std::net::SocketAddr>,
    pub admin: std::net::SocketAddr,
    pub service_address: Option<std::net::SocketAddr>,
    pub store_address: Option<std::net::SocketAddr>,
    pub site: Option<String>,
}

impl From<&crate::config::Member> for MemberRecord {
    fn from(m: &crate::config::Member) -> Self {
        MemberRecord {
            id: m.id.clone(),
            kind: m.kind,
            priority: m.priority,
            addresses: m.addresses.clone(),
            admin: m.admin,
            service_address: m.service_address,
            store_address: m.store_address,
            site: m.site.clone(),
        }
    }
}

impl From<&MemberRecord> for crate::config::Member {
    fn from(m: &MemberRecord) -> Self {
        crate::config::Member {
            id: m.id.clone(),
            kind: m.kind,
            priority: m.priority,
            addresses: m.addresses.clone(),
            admin: m.admin,
            service_address: m.service_address,
            store_address: m.store_address,
            site: m.site.clone(),
        }
    }
}

/// The answer to a command: applied, or refused with the reason.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct CommandResult {
    pub ok: bool,
    pub message: String,
    /// For `Command::Store`: the replies of each group.
    #[serde(default)]
    pub store: Vec<Vec<crate::kv::reply::Reply>>,
}

impl CommandResult {
    pub(crate) fn ok() -> Self {
        CommandResult {
            ok: true,
            ..Default::default()
        }
    }
    pub(crate) fn refused(message: impl Into<String>) -> Self {
        CommandResult {
            ok: false,
            message: message.into(),
            ..Default::default()
        }
    }
}

/// What a batch holds: changes for a top-level command, nothing for a change.
pub trait Batched {
    /// Applies the batch in order; the result is the last refusal, or ok.
    fn apply_in(&self, state: &mut ClusterState) -> CommandResult;
}

impl Batched for Changes {
    fn apply_in(&self, state: &mut ClusterState) -> CommandResult {
        let mut last = CommandResult::ok();
        for c in &self.0 {
            let r = state.apply_one(c);
            if !r.ok {
                last = r;
            }
        }
        last
    }
}

impl Batched for NoBatch {
    fn apply_in(&self, _: &mut ClusterState) -> CommandResult {
        match *self {}
    }
}

impl ClusterState {
    /// Records an event without a cause (for state kept beside this one, such as deploys).
    pub fn record(&mut self, at: u64, kind: EventKind, node: Option<&str>, detail: String) {
        self.event(at, kind, node, None, detail, None);
    }

    /// Records a membership change in the history (the table itself is the state machine's).
    pub fn membership_changed(&mut self, change: &str, at: u64) {
        self.event(
            at,
            EventKind::MembershipChanged,
            None,
            None,
            change.to_string(),
            None,
        );
    }

    fn event(
        &mut self,
        at: u64,
        kind: EventKind,
        node: Option<&str>,
        cause: Option<Cause>,
        detail: String,
        duration_ms: Option<u64>,
    ) {
        let seq = self.next_event_seq;
        self.next_event_seq += 1;
        *self
            .stats
            .events
            .entry(format!(
                "{kind}/{}",
                cause.map(|c| c.to_string()).unwrap_or_default()
            ))
            .or_default() += 1;
        self.events.push_back(Event {
            seq,
            at_unix_ms: at,
            kind,
            node: node.map(str::to_string),
            epoch: self.epoch,
            cause,
            detail,
            duration_ms,
        });
        while self.events.len() > self.event_retention.unwrap_or(EVENT_RETENTION) {
            self.events.pop_front();
        }
    }

    fn node_mut(&mut self, node: &str) -> &mut NodeRecord {
        self.nodes.entry(node.to_string()).or_default()
    }

    fn recompute_health(&mut self, node: &str, at: u64) {
        let rec = self.node_mut(node);
        let healthy = !rec.checks.is_empty() && rec.checks.values().all(|c| c.healthy);
        if healthy != rec.healthy {
            rec.healthy = healthy;
            rec.healthy_since_unix_ms = healthy.then_some(at);
            let detail = if healthy {
                "all checks passing".to_string()
            } else {
                let failing: Vec<&str> = rec
                    .checks
                    .iter()
                    .filter(|(_, c)| !c.healthy)
                    .map(|(n, _)| n.as_str())
                    .collect();
                format!("failing: {}", failing.join(", "))
            };
            self.event(
                at,
                EventKind::HealthChanged,
                Some(node),
                None,
                format!("{} ({detail})", if healthy { "healthy" } else { "unhealthy" }),
                None,
            );
        }
    }

    /// Applies one command. Deterministic: depends only on the state and the command.
    pub fn apply(&mut self, cmd: &Command) -> CommandResult {
        self.apply_one(cmd)
    }

    fn apply_one<B: Batched>(&mut self, cmd: &CommandOf<B>) -> CommandResult {
        match cmd {
            CommandOf::Batch(changes) => changes.apply_in(self),
            CommandOf::NodeStarted {
                node,
                version,
                checks,
                config,
                at,
            } => {
                let rec = self.node_mut(node);
                let previous_config = std::mem::replace(&mut rec.config_digest, config.clone());
                rec.version = version.clone();
                rec.started_unix_ms = Some(*at);
                // Checks restart from "unhealthy": the new process has proven nothing yet.
                rec.checks = checks
                    .iter()
                    .map(|c| {
                        (
                            c.clone(),
                            CheckRecord {
                                healthy: false,
                                detail: "not yet checked".into(),
                                since_unix_ms: *at,
                            },
                        )
                    })
                    .collect();
                self.event(
                    *at,
                    EventKind::NodeStarted,
                    Some(node),
                    None,
                    format!("version {version}"),
                    None,
                );
                if !previous_config.is_empty() && !config.is_empty() && previous_config != *config {
                    self.event(
                        *at,
                        EventKind::ConfigChanged,
                        Some(node),
                        None,
                        format!("configuration changed (digest {previous_config} -> {config})"),
                        None,
                    );
                }
                self.recompute_health(node, *at);
                if self.active.as_deref() == Some(node) {
                    let epoch = self.epoch;
                    // Not a confirmed release: the old daemon died without telling its service,
                    // which may act until its lease runs out. The coordinator waits for it.
                    self.step_down(node, epoch, Cause::Released, "node restarted", *at, false);
                }
                CommandResult::ok()
            }
            CommandOf::NodeResumed {
                node,
                version,
                from_version,
                config,
                checks,
                at,
            } => {
                let rec = self.node_mut(node);
                let previous_config = std::mem::replace(&mut rec.config_digest, config.clone());
                rec.version = version.clone();
                rec.checks.retain(|name, _| checks.contains(name));
                self.event(
                    *at,
                    EventKind::HotRestart,
                    Some(node),
                    None,
                    format!("hot restart: version {from_version} -> {version}; service and role kept"),
                    None,
                );
                if !previous_config.is_empty() && !config.is_empty() && previous_config != *config {
                    self.event(
                        *at,
                        EventKind::ConfigChanged,
                        Some(node),
                        None,
                        format!("configuration changed (digest {previous_config} -> {config})"),
                        None,
                    );
                }
                self.recompute_health(node, *at);
                CommandResult::ok()
            }
            CommandOf::Health {
                node,
                check,
                healthy,
                detail,
                at,
            } => {
                let rec = self.node_mut(node);
                rec.checks.insert(
                    check.clone(),
                    CheckRecord {
                        healthy: *healthy,
                        detail: detail.clone(),
                        since_unix_ms: *at,
                    },
                );
                self.recompute_health(node, *at);
                CommandResult::ok()
            }
            CommandOf::Depose {
                node,
                epoch,
                cause,
                detail,
                at,
            } => {
                if self.active.as_deref() != Some(node) || self.epoch != *epoch {
                    return CommandResult::refused(format!("{node} is not active at epoch {epoch}"));
                }
                self.vacate(node, *epoch, false, *cause, *at);
                self.event(
                    *at,
                    EventKind::Deposed,
                    Some(node),
                    Some(*cause),
                    detail.clone(),
                    None,
                );
                CommandResult::ok()
            }
            CommandOf::Released {
                node,
                epoch,
                reason,
                at,
            } => {
                if self.active.as_deref() == Some(node) && self.epoch == *epoch {
                    self.step_down(node, *epoch, Cause::Released, reason, *at, true);
                    return CommandResult::ok();
                }
                match &mut self.deposed {
                    Some(d) if d.node == *node && d.epoch == *epoch && !d.released => {
                        d.released = true;
                        self.event(*at, EventKind::Released, Some(node), None, reason.clone(), None);
                        CommandResult::ok()
                    }
                    _ => CommandResult::refused("nothing to release"),
                }
            }
            CommandOf::Promote {
                node,
                epoch,
                previous,
                cause,
                fence,
                at,
            } => {
                if self.active.is_some() {
                    return CommandResult::refused("a node is already active");
                }
                if *epoch != self.epoch + 1 {
                    return CommandResult::refused(format!(
                        "epoch {epoch} is not the next epoch ({})",
                        self.epoch + 1
                    ));
                }
                self.epoch = *epoch;
                self.active = Some(node.clone());
                self.active_since_unix_ms = Some(*at);
                self.promotion = Some(Promotion {
                    node: node.clone(),
                    epoch: *epoch,
                    previous: previous.clone(),
                    cause: *cause,
                    fence: *fence,
                    at_unix_ms: *at,
                });
                self.switchover = None;
                let from = previous
                    .as_deref()
                    .map(|p| format!(" from {p}"))
                    .unwrap_or_default();
                let fence = if *fence {
                    ", fencing the previous active"
                } else {
                    ""
                };
                self.event(
                    *at,
                    EventKind::Promoting,
                    Some(node),
                    Some(*cause),
                    format!("promoting{from}{fence}"),
                    None,
                );
                CommandResult::ok()
            }
            CommandOf::PromoteResult {
                node,
                epoch,
                ok,
                hooks,
                at,
            } => {
                let Some(p) = self
                    .promotion
                    .clone()
                    .filter(|p| p.node == *node && p.epoch == *epoch)
                else {
                    return CommandResult::refused("no such promotion in progress");
                };
                self.promotion = None;
                for h in hooks {
                    self.stats.hook(h);
                }
                let hooks_text: Vec<String> = hooks
                    .iter()
                    .map(|h| {
                        format!(
                            "{} {} in {} ms",
                            h.hook,
                            if h.ok { "ok" } else { "failed" },
                            h.duration_ms
                        )
                    })
                    .collect();
                let since = self
                    .events
                    .iter()
                    .rev()
                    .find(|e| e.kind == EventKind::Deposed || e.kind == EventKind::Released)
                    .map(|e| e.at_unix_ms)
                    .filter(|_| p.previous.is_some())
                    .unwrap_or(p.at_unix_ms);
                if *ok {
                    self.event(
                        *at,
                        EventKind::Promoted,
                        Some(node),
                        Some(p.cause),
                        hooks_text.join("; "),
                        Some(at.saturating_sub(since)),
                    );
                } else {
                    // The node ran its hooks and reported: it does not act.
                    self.vacate(node, *epoch, true, p.cause, *at);
                    self.event(
                        *at,
                        EventKind::PromotionFailed,
                        Some(node),
                        Some(p.cause),
                        hooks_text.join("; "),
                        None,
                    );
                }
                CommandResult::ok()
            }
            CommandOf::PromotionTimedOut { node, epoch, at } => {
                let Some(p) = self
                    .promotion
                    .clone()
                    .filter(|p| p.node == *node && p.epoch == *epoch)
                else {
                    return CommandResult::refused("no such promotion in progress");
                };
                // It may have acquired a lease: treat it like a lost active.
                self.vacate(node, *epoch, false, p.cause, *at);
                self.event(
                    *at,
                    EventKind::PromotionFailed,
                    Some(node),
                    Some(p.cause),
                    "no promotion result in time".into(),
                    None,
                );
                CommandResult::ok()
            }
            CommandOf::HookRun {
                node,
                epoch: _,
                hook,
                at,
            } => {
                self.stats.hook(hook);
                let detail = format!(
                    "{} {} in {} ms{}",
                    hook.hook,
                    if hook.ok { "ok" } else { "failed" },
                    hook.duration_ms,
                    hook.exit_code.map(|c| format!(" (exit {c})")).unwrap_or_default()
                );
                self.event(*at, EventKind::Hook, Some(node), None, detail, None);
                CommandResult::ok()
            }
            CommandOf::Maintenance { node, on, at } => {
                self.node_mut(node).maintenance = *on;
                self.event(
                    *at,
                    EventKind::Maintenance,
                    Some(node),
                    None,
                    if *on { "maintenance on" } else { "maintenance off" }.into(),
                    None,
                );
                CommandResult::ok()
            }
            CommandOf::Path {
                node,
                peer,
                address,
                up,
                at,
            } => {
                let key = format!("{peer} {address}");
                let before = self.node_mut(node).paths.insert(key, *up);
                if before == Some(*up) {
                    return CommandResult::refused("path already in that state");
                }
                // A path seen for the first time, up, is the normal start: recorded quietly.
                if before.is_none() && *up {
                    return CommandResult::ok();
                }
                self.event(
                    *at,
                    EventKind::PathChanged,
                    Some(node),
                    None,
                    format!("path to {peer} via {address} {}", if *up { "up" } else { "down" }),
                    None,
                );
                CommandResult::ok()
            }
            CommandOf::Alarm {
                key,
                raise,
                detail,
                at,
            } => {
                if *raise == self.alarms.contains_key(key) {
                    return CommandResult::refused(if *raise {
                        "alarm already raised"
                    } else {
                        "alarm not raised"
                    });
                }
                let kind = if *raise {
                    self.alarms.insert(
                        key.clone(),
                        AlarmRecord {
                            detail: detail.clone(),
                            since_unix_ms: *at,
                        },
                    );
                    EventKind::AlarmRaised
                } else {
                    self.alarms.remove(key);
                    EventKind::AlarmCleared
                };
                let node = key
                    .split_once(':')
                    .map(|(_, n)| n.split(['>', '@']).next().unwrap_or(n).to_string());
                self.event(*at, kind, node.as_deref(), None, format!("{key}: {detail}"), None);
                CommandResult::ok()
            }
            CommandOf::Notified { seq } => {
                self.notified_up_to = self.notified_up_to.max(*seq);
                CommandResult::ok()
            }
            CommandOf::SetRetention { events } => {
                self.event_retention = Some((*events).max(1));
                while self.events.len() > (*events).max(1) {
                    self.events.pop_front();
                }
                CommandResult::ok()
            }
            CommandOf::Drain { node, on, at } => {
                self.node_mut(node).drain = *on;
                self.event(
                    *at,
                    EventKind::Drain,
                    Some(node),
                    None,
                    if *on { "drain on" } else { "drain off" }.into(),
                    None,
                );
                CommandResult::ok()
            }
            CommandOf::Switchover { target, cause, at } => {
                if self.switchover.is_some() {
                    return CommandResult::refused("a switchover is already in progress");
                }
                self.switchover = Some(SwitchoverRequest {
                    target: target.clone(),
                    cause: *cause,
                    requested_unix_ms: *at,
                });
                let to = target.as_deref().unwrap_or("the best standby");
                self.event(
                    *at,
                    EventKind::SwitchoverRequested,
                    target.as_deref(),
                    Some(*cause),
                    format!("to {to}"),
                    None,
                );
                CommandResult::ok()
            }
            CommandOf::SwitchoverIf {
                target,
                cause,
                at,
                from,
                epoch,
            } => {
                let active_ok = from.is_none() || self.active == *from;
                if !active_ok || epoch.is_some_and(|e| e != self.epoch) {
                    return CommandResult::refused(format!(
                        "precondition failed: active is {} at epoch {}",
                        self.active.as_deref().unwrap_or("none"),
                        self.epoch
                    ));
                }
                self.apply_one(&Change::Switchover {
                    target: target.clone(),
                    cause: *cause,
                    at: *at,
                })
            }
            // Applied by the state machine, which owns the key space.
            CommandOf::Store { .. } => {
                CommandResult::refused("store commands are applied by the state machine")
            }
            // Applied by the state machine, which owns the member table.
            CommandOf::Members { .. } => {
                CommandResult::refused("member tables are applied by the state machine")
            }
            // Applied by the state machine, which keeps change control beside this state.
            CommandOf::Change(_) => CommandResult::refused("deploys are applied by the state machine"),
            // Applied by the state machine, which keeps drill records beside this state.
            CommandOf::Drill(_) => CommandResult::refused("drill records are applied by the state machine"),
            CommandOf::Backup(_) => CommandResult::refused("restores are applied by the state machine"),
            CommandOf::ConfigReloaded {
                node,
                digest,
                error,
                at,
            } => {
                match error {
                    Some(error) => self.event(
                        *at,
                        EventKind::ConfigRejected,
                        Some(node),
                        None,
                        format!("configuration file refused, nothing changed: {error}"),
                        None,
                    ),
                    None => {
                        let rec = self.node_mut(node);
                        let previous = std::mem::replace(&mut rec.config_digest, digest.clone());
                        let from = if previous.is_empty() {
                            "unknown"
                        } else {
                            previous.as_str()
                        };
                        self.event(
                            *at,
                            EventKind::ConfigChanged,
                            Some(node),
                            None,
                            format!("configuration reloaded (digest {from} -> {digest})"),
                            None,
                        );
                    }
                }
                CommandResult::ok()
            }
            CommandOf::CancelSwitchover { reason, at } => {
                if self.switchover.take().is_none() {
                    return CommandResult::refused("no switchover in progress");
                }
                self.event(
                    *at,
                    EventKind::SwitchoverCancelled,
                    None,
                    None,
                    reason.clone(),
                    None,
                );
                CommandResult::ok()
            }
        }
    }

    /// Nobody is active any more; `node` held the role at `epoch` and, unless `released`, may
    /// still act until its lease expires. The one place that takes the role away.
    fn vacate(&mut self, node: &str, epoch: u64, released: bool, cause: Cause, at: u64) {
        self.active = None;
        self.active_since_unix_ms = None;
        self.promotion = None;
        self.deposed = Some(DeposedRecord {
            node: node.to_string(),
            epoch,
            released,
            cause,
            at_unix_ms: at,
        });
    }

    fn step_down(&mut self, node: &str, epoch: u64, cause: Cause, reason: &str, at: u64, released: bool) {
        self.vacate(node, epoch, released, cause, at);
        self.event(
            at,
            EventKind::Released,
            Some(node),
            Some(cause),
            reason.to_string(),
            None,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A forwarded write (`Request::Write`) carries only the sender's reports about itself:
    /// a member with its own certificate used to be able to release, fail or promote another
    /// member through the leader.
    #[test]
    fn a_peer_forwards_only_reports_about_itself() {
        let health = |node: &str| Change::Health {
            node: node.into(),
            check: "process".into(),
            healthy: false,
            detail: String::new(),
            at: 1,
        };
        let released = |node: &str| Command::Released {
            node: node.into(),
            epoch: 3,
            reason: String::new(),
            at: 1,
        };
        assert!(released("b").check_forwarded("b").is_ok());
        assert!(Command::batch(vec![
            health("b"),
            Change::Released {
                node: "b".into(),
                epoch: 3,
                reason: String::new(),
                at: 1,
            }
        ])
        .check_forwarded("b")
        .is_ok());
        let e = released("a").check_forwarded("b").expect_err("b releases a");
        assert!(e.contains("b cannot report Released for a"), "{e}");
        assert!(Command::batch(vec![health("b"), health("a")])
            .check_forwarded("b")
            .is_err());
        let promote = Command::Promote {
            node: "b".into(),
            epoch: 4,
            previous: Some("a".into()),
            cause: crate::failover::Cause::Switchover,
            fence: false,
            at: 1,
        };
        let e = promote
            .check_forwarded("b")
            .expect_err("only the leader promotes");
        assert!(e.contains("only the leader"), "{e}");
        assert!(Command::batch(vec![Change::Notified { seq: 1 }])
            .check_forwarded("b")
            .is_err());
        assert!(Command::Store {
            groups: Vec::new(),
            now_ms: 1
        }
        .check_forwarded("b")
        .is_err());
    }

    /// The attack of issue 12: a batch nested thousands deep, as a log entry or inside a
    /// `Request::Write` frame, used to overflow the stack of every node while decoding or
    /// applying. It no longer decodes at all (a batch holds plain changes only).
    #[test]
    fn a_nested_batch_does_not_decode() {
        let empty = postcard::to_allocvec(&Command::batch(Vec::new())).expect("encode");
        // `Batch` is one tag byte, then the length of its vector.
        assert_eq!(empty.len(), 2);
        let tag = empty[0];
        let mut nested = Vec::new();
        for _ in 0..3000 {
            nested.extend([tag, 1]);
        }
        nested.extend([tag, 0]);
        assert!(postcard::from_bytes::<Command>(&nested).is_err());
        // One level is what a batch is for.
        let one = Command::batch(vec![Change::Notified { seq: 3 }]);
        let bytes = postcard::to_allocvec(&one).expect("encode");
        assert_eq!(postcard::from_bytes::<Command>(&bytes).expect("decode"), one);
        // The same bytes inside a peer frame.
        let frame = crate::cluster::rpc::Frame {
            id: 7,
            from: "a".to_string(),
            body: crate::cluster::rpc::Request::Write(Command::batch(Vec::new())),
        };
        let mut bytes = postcard::to_allocvec(&frame).expect("encode");
        bytes.truncate(bytes.len() - 2);
        bytes.extend(&nested);
        assert!(
            postcard::from_bytes::<crate::cluster::rpc::Frame<crate::cluster::rpc::Request>>(&bytes).is_err()
        );
    }

    /// A 2 MiB frame of a million two-byte changes decoded to 113 MiB; a batch is now refused
    /// past `MAX_BATCH` changes before anything is allocated for them.
    #[test]
    fn a_batch_is_bounded_while_decoding() {
        let at_limit = Command::batch(vec![Change::Notified { seq: 0 }; MAX_BATCH]);
        let bytes = postcard::to_allocvec(&at_limit).expect("encode");
        assert_eq!(
            postcard::from_bytes::<Command>(&bytes).expect("at the limit"),
            at_limit
        );
        let over = CommandOf::Batch(Changes(vec![Change::Notified { seq: 0 }; 1_000_000]));
        let bytes = postcard::to_allocvec(&over).expect("encode");
        assert!(postcard::from_bytes::<Command>(&bytes).is_err());
        // What the node writes itself never exceeds it.
        assert!(matches!(
            Command::batch(vec![Change::Notified { seq: 0 }; MAX_BATCH + 5]),
            CommandOf::Batch(Changes(c)) if c.len() == MAX_BATCH
        ));
    }

    #[test]
    fn a_batch_applies_its_changes_in_order() {
        let mut st = ClusterState::default();
        let r = st.apply(&Command::batch(vec![
            Change::SetRetention { events: 5 },
            Change::Notified { seq: 9 },
        ]));
        assert!(r.ok);
        assert_eq!((st.event_retention, st.notified_up_to), (Some(5), 9));
    }

    fn promote(node: &str, epoch: u64) -> Command {
        Command::Promote {
            node: node.into(),
            epoch,
            previous: None,
            cause: Cause::Bootstrap,
            fence: false,
            at: 1,
        }
    }

    #[test]
    fn promote_requires_next_epoch_and_no_active() {
        let mut s = ClusterState::default();
        assert!(!s.apply(&promote("a", 2)).ok, "skipping an epoch is refused");
        assert!(s.apply(&promote("a", 1)).ok);
        assert!(!s.apply(&promote("b", 2)).ok, "a second active is refused");
        assert_eq!(s.active.as_deref(), Some("a"));
        assert_eq!(s.epoch, 1);
    }

    #[test]
    fn a_conditional_switchover_happens_once() {
        let mut s = ClusterState::default();
        s.apply(&promote("a", 1));
        let request = |from: Option<&str>, epoch: Option<u64>| Command::SwitchoverIf {
            target: None,
            cause: Cause::Switchover,
            at: 2,
            from: from.map(str::to_string),
            epoch,
        };
        assert!(s.apply(&request(Some("a"), Some(1))).ok);
        assert!(!s.apply(&request(Some("a"), Some(1))).ok, "one in progress");
        // The switchover completes: a deposed, b promoted at epoch 2.
        assert!(
            s.apply(&Command::Depose {
                node: "a".into(),
                epoch: 1,
                cause: Cause::Switchover,
                detail: String::new(),
                at: 3,
            })
            .ok
        );
        assert!(s.apply(&promote("b", 2)).ok);
        // The same request again (a retry, a duplicate) is refused, naming the current values.
        let r = s.apply(&request(Some("a"), None));
        assert!(
            !r.ok && r.message.contains("active is b at epoch 2"),
            "{}",
            r.message
        );
        assert!(!s.apply(&request(None, Some(1))).ok);
        assert!(s.switchover.is_none());
        assert!(s.apply(&request(Some("b"), Some(2))).ok);
    }

    #[test]
    fn stale_depose_is_refused() {
        let mut s = ClusterState::default();
        s.apply(&promote("a", 1));
        let stale = Command::Depose {
            node: "a".into(),
            epoch: 0,
            cause: Cause::NodeLost,
            detail: String::new(),
            at: 2,
        };
        assert!(!s.apply(&stale).ok);
        assert_eq!(s.active.as_deref(), Some("a"));
    }

    #[test]
    fn config_changes_alarms_paths_and_retention_are_recorded_once() {
        let mut s = ClusterState::default();
        let started = |config: &str, at| Command::NodeStarted {
            config: config.into(),
            node: "b".into(),
            version: "1".into(),
            checks: vec![],
            at,
        };
        let count = |s: &ClusterState, k: EventKind| s.events.iter().filter(|e| e.kind == k).count();
        s.apply(&started("aaaa", 1));
        s.apply(&started("aaaa", 2));
        assert_eq!(
            count(&s, EventKind::ConfigChanged),
            0,
            "same config, or the first start"
        );
        s.apply(&started("bbbb", 3));
        assert_eq!(count(&s, EventKind::ConfigChanged), 1);
        // Alarms: raised once, cleared once; repeats refused (so never notified twice).
        let alarm = |raise| Command::Alarm {
            key: "standby-unhealthy:b".into(),
            raise,
            detail: "http: timeout".into(),
            at: 4,
        };
        assert!(s.apply(&alarm(true)).ok);
        assert!(!s.apply(&alarm(true)).ok);
        assert!(s.alarms.contains_key("standby-unhealthy:b"));
        assert!(s.apply(&alarm(false)).ok);
        assert!(!s.apply(&alarm(false)).ok);
        assert_eq!(count(&s, EventKind::AlarmRaised), 1);
        assert_eq!(count(&s, EventKind::AlarmCleared), 1);
        assert_eq!(
            s.events
                .iter()
                .rev()
                .find(|e| e.kind == EventKind::AlarmCleared)
                .and_then(|e| e.node.as_deref()),
            Some("b")
        );
        // Paths: the first "up" is quiet, a change is an event, a repeat is refused.
        let path = |up, at| Command::Path {
            node: "b".into(),
            peer: "w".into(),
            address: "10.0.0.3:7100".into(),
            up,
            at,
        };
        assert!(s.apply(&path(true, 5)).ok);
        assert_eq!(count(&s, EventKind::PathChanged), 0);
        assert!(s.apply(&path(false, 6)).ok);
        assert!(!s.apply(&path(false, 7)).ok);
        assert_eq!(count(&s, EventKind::PathChanged), 1);
        // Counters by kind/cause; retention trims the history at once and from then on.
        assert_eq!(s.stats.events.get("alarm-raised/"), Some(&1));
        assert!(s.apply(&Command::SetRetention { events: 2 }).ok);
        assert_eq!(s.events.len(), 2);
        s.apply(&path(true, 8));
        assert_eq!(s.events.len(), 2);
        assert_eq!(
            s.stats.events.get("path-changed/"),
            Some(&2),
            "counters outlive the history"
        );
    }

    #[test]
    fn restarted_active_steps_down() {
        let mut s = ClusterState::default();
        s.apply(&promote("a", 1));
        s.apply(&Command::NodeStarted {
            config: String::new(),
            node: "a".into(),
            version: "1".into(),
            checks: vec!["process".into()],
            at: 5,
        });
        assert_eq!(s.active, None);
        let d = s.deposed.as_ref().expect("deposed");
        // Unconfirmed: the old service may still hold its lease, so the successor waits.
        assert!(!d.released && d.node == "a" && d.epoch == 1);
    }

    /// A hot restart is not a restart: the active node keeps its role and epoch, its checks
    /// keep their states, a check no longer configured leaves its record, and the history
    /// says what happened.
    #[test]
    fn a_resumed_active_keeps_its_role_and_drops_removed_checks() {
        let mut s = ClusterState::default();
        s.apply(&promote("a", 1));
        let health = |check: &str, healthy: bool| Command::Health {
            node: "a".into(),
            check: check.into(),
            healthy,
            detail: String::new(),
            at: 2,
        };
        s.apply(&health("process", true));
        s.apply(&health("http", true));
        s.apply(&health("old", false));
        assert!(!s.nodes["a"].healthy);
        s.apply(&Command::NodeResumed {
            node: "a".into(),
            version: "2".into(),
            from_version: "1".into(),
            config: String::new(),
            checks: vec!["process".into(), "http".into()],
            at: 5,
        });
        assert_eq!(s.active.as_deref(), Some("a"), "still active");
        assert_eq!(s.epoch, 1);
        assert!(s.deposed.is_none());
        let rec = &s.nodes["a"];
        assert_eq!(rec.version, "2");
        assert!(rec.checks["http"].healthy, "states kept");
        assert!(
            !rec.checks.contains_key("old"),
            "a removed check leaves the record"
        );
        assert!(rec.healthy, "healthy once the failing removed check is gone");
        assert!(s
            .events
            .iter()
            .any(|e| e.kind == EventKind::HotRestart && e.detail.contains("1 -> 2")));
    }

    #[test]
    fn failed_promotion_releases_and_keeps_epoch() {
        let mut s = ClusterState::default();
        s.apply(&promote("a", 1));
        s.apply(&Command::PromoteResult {
            node: "a".into(),
            epoch: 1,
            ok: false,
            hooks: vec![],
            at: 3,
        });
        assert_eq!(s.active, None);
        assert_eq!(s.epoch, 1, "the epoch never goes back");
        assert!(s.apply(&promote("b", 2)).ok);
    }

    #[test]
    fn health_is_all_checks() {
        let mut s = ClusterState::default();
        s.apply(&Command::NodeStarted {
            config: String::new(),
            node: "a".into(),
            version: "1".into(),
            checks: vec!["process".into(), "http".into()],
            at: 1,
        });
        let h = |check: &str, healthy| Command::Health {
            node: "a".into(),
            check: check.into(),
            healthy,
            detail: String::new(),
            at: 2,
        };
        s.apply(&h("process", true));
        assert!(!s.nodes["a"].healthy);
        s.apply(&h("http", true));
        assert!(s.nodes["a"].healthy);
        s.apply(&h("http", false));
        assert!(!s.nodes["a"].healthy);
    }

    #[test]
    fn events_are_bounded() {
        let mut s = ClusterState::default();
        for i in 0..(EVENT_RETENTION as u64 + 10) {
            s.apply(&Command::Maintenance {
                node: "a".into(),
                on: i % 2 == 0,
                at: i,
            });
        }
        assert_eq!(s.events.len(), EVENT_RETENTION);
        assert_eq!(s.events.back().map(|e| e.seq), Some(EVENT_RETENTION as u64 + 9));
    }
}
