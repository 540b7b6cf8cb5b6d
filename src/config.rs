//! The TOML configuration: `file -> Config (serde, unknown keys rejected) -> validate()`.
//!
//! One file describes one node *and* the whole cluster: every node of a cluster carries the same
//! `[[member]]` list (like corosync's nodelist) and differs only in `[node] id` and its
//! data directory. `Config::load` parses and validates; any error names the offending key, and
//! the binary exits with 64 (`EX_USAGE`) before binding a port.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Exit code for a configuration error (sysexits.h `EX_USAGE`).
pub const EXIT_CONFIG: i32 = 64;

/// Why a configuration was refused. Every variant names the key at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid value for `{key}`: {reason}")]
    Invalid { key: String, reason: String },
}

fn invalid(key: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        reason: reason.into(),
    }
}

/// The whole configuration file.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Config {
    /// Which member this process is, and where it keeps its data.
    pub node: NodeSection,
    /// Every voter of the cluster, this node included. Identical on every node.
    #[serde(rename = "member")]
    pub members: Vec<Member>,
    #[serde(default)]
    pub timing: Timing,
    /// The managed service. Required on data nodes, forbidden on witnesses.
    #[serde(default)]
    pub service: Option<ServiceConfig>,
    /// Health checks of the managed service (the supervised process is always checked too).
    #[serde(default, rename = "check")]
    pub checks: Vec<CheckConfig>,
    #[serde(default)]
    pub hooks: Hooks,
    #[serde(default)]
    pub failback: Failback,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct NodeSection {
    /// This node's name; must match one `[[member]] id`.
    pub id: String,
    /// Raft log, snapshots and state live here (created if missing).
    pub data_dir: PathBuf,
}

/// Whether a member runs the service or only votes.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[serde(rename_all = "kebab-case")]
pub enum NodeKind {
    Data,
    Witness,
}

impl std::fmt::Display for NodeKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            NodeKind::Data => "data",
            NodeKind::Witness => "witness",
        })
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Member {
    pub id: String,
    pub kind: NodeKind,
    /// Higher wins a promotion; 0 means "never promote this node". Ignored for witnesses.
    #[serde(default = "default_priority")]
    pub priority: u32,
    /// Cluster addresses, one per independent network path. The node listens on all of them
    /// and peers heartbeat over each one.
    pub addresses: Vec<SocketAddr>,
    /// The admin HTTP API (status, switchover, ...). `standin node` listens here.
    pub admin: SocketAddr,
    /// Where clients reach the managed service on this node (informational; used by
    /// front proxies and benchmarks).
    #[serde(default)]
    pub service_address: Option<SocketAddr>,
}

fn default_priority() -> u32 {
    100
}

/// Timings that decide how fast failures are detected and how long a lease lasts.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct Timing {
    /// Heartbeats on every path, and lease renewals, are sent this often.
    #[serde(with = "humantime_serde")]
    pub heartbeat_interval: Duration,
    /// A node is declared lost after no heartbeat on *any* path for this long.
    #[serde(with = "humantime_serde")]
    pub failure_timeout: Duration,
    /// How long a quorum-confirmed grant lets the active node act as active.
    #[serde(with = "humantime_serde")]
    pub lease: Duration,
    /// A promote hook that runs longer than this counts as failed.
    #[serde(with = "humantime_serde")]
    pub promote_timeout: Duration,
    /// A standby whose replication lags the leader by more than this many log entries is
    /// not in sync and cannot be promoted.
    pub max_lag: u64,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            heartbeat_interval: Duration::from_millis(100),
            failure_timeout: Duration::from_millis(500),
            lease: Duration::from_millis(400),
            promote_timeout: Duration::from_secs(10),
            max_lag: 64,
        }
    }
}

/// Whether the service runs on standbys too.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum ServiceMode {
    /// Running on every data node; promotion only changes its role (hooks).
    #[default]
    Hot,
    /// Started on promotion, stopped on demotion.
    Warm,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ServiceConfig {
    /// Program to run (absolute path or looked up in PATH).
    pub command: String,
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub workdir: Option<PathBuf>,
    #[serde(default)]
    pub mode: ServiceMode,
    /// SIGTERM first; SIGKILL to the whole process group after this long.
    #[serde(default = "default_stop_grace", with = "humantime_serde")]
    pub stop_grace: Duration,
    /// First restart delay of a crashed standby service; doubles up to `restart-backoff-max`.
    #[serde(default = "default_backoff_min", with = "humantime_serde")]
    pub restart_backoff_min: Duration,
    #[serde(default = "default_backoff_max", with = "humantime_serde")]
    pub restart_backoff_max: Duration,
}

fn default_stop_grace() -> Duration {
    Duration::from_secs(5)
}
fn default_backoff_min() -> Duration {
    Duration::from_millis(100)
}
fn default_backoff_max() -> Duration {
    Duration::from_secs(10)
}

/// What a health check probes.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum CheckKind {
    /// Healthy when a TCP connection to `address` succeeds.
    Tcp { address: SocketAddr },
    /// Healthy when `GET url` answers `status` (and the body contains `body`, if set).
    Http {
        url: String,
        #[serde(default = "default_http_status")]
        status: u16,
        #[serde(default)]
        body: Option<String>,
    },
    /// Healthy when `command` (run with `sh -c`) exits 0.
    Exec { command: String },
}

fn default_http_status() -> u16 {
    200
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct CheckConfig {
    pub name: String,
    #[serde(flatten)]
    pub kind: CheckKind,
    #[serde(default = "default_check_interval", with = "humantime_serde")]
    pub interval: Duration,
    #[serde(default = "default_check_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Consecutive successes before an unhealthy check turns healthy.
    #[serde(default = "default_rise")]
    pub rise: u32,
    /// Consecutive failures before a healthy check turns unhealthy.
    #[serde(default = "default_fall")]
    pub fall: u32,
}

fn default_check_interval() -> Duration {
    Duration::from_millis(200)
}
fn default_check_timeout() -> Duration {
    Duration::from_millis(500)
}
fn default_rise() -> u32 {
    2
}
fn default_fall() -> u32 {
    2
}

/// Role hooks, each run with `sh -c` and the environment `STANDIN_NODE`, `STANDIN_ROLE`,
/// `STANDIN_EPOCH`, `STANDIN_PREVIOUS`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct Hooks {
    pub on_promote: Option<String>,
    pub on_demote: Option<String>,
    /// Run on the node being promoted when the previous active could not be reached.
    pub on_fence: Option<String>,
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
}

impl Default for Hooks {
    fn default() -> Self {
        Hooks {
            on_promote: None,
            on_demote: None,
            on_fence: None,
            timeout: Duration::from_secs(5),
        }
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum FailbackMode {
    /// The role stays where failover put it until `standin failback`.
    #[default]
    Manual,
    /// Move back to the preferred node once it stayed healthy and in sync for `hold-down`.
    Auto,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct Failback {
    pub mode: FailbackMode,
    #[serde(with = "humantime_serde")]
    pub hold_down: Duration,
}

impl Default for Failback {
    fn default() -> Self {
        Failback {
            mode: FailbackMode::Manual,
            hold_down: Duration::from_secs(30),
        }
    }
}

impl Config {
    /// Reads, parses and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Config::parse(&text).map_err(|e| match e {
            ConfigError::Parse { message, .. } => ConfigError::Parse {
                path: path.to_path_buf(),
                message,
            },
            other => other,
        })
    }

    /// Parses and validates config text.
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: PathBuf::from("<config>"),
            message: e.to_string().trim().to_string(),
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Checks everything serde cannot: names, cross references, timing relations.
    pub fn validate(&self) -> Result<(), ConfigError> {
        validate_name("node.id", &self.node.id)?;
        if self.node.data_dir.as_os_str().is_empty() {
            return Err(invalid("node.data-dir", "must not be empty"));
        }
        if self.members.is_empty() {
            return Err(invalid("member", "at least one [[member]] is required"));
        }
        let mut ids = BTreeSet::new();
        let mut raft_ids = BTreeMap::new();
        let mut addrs = BTreeSet::new();
        for (i, m) in self.members.iter().enumerate() {
            let key = format!("member[{i}]");
            validate_name(&format!("{key}.id"), &m.id)?;
            if !ids.insert(m.id.clone()) {
                return Err(invalid(
                    format!("{key}.id"),
                    format!("duplicate member id {:?}", m.id),
                ));
            }
            if let Some(other) = raft_ids.insert(raft_id(&m.id), m.id.clone()) {
                return Err(invalid(
                    format!("{key}.id"),
                    format!(
                        "{:?} and {:?} hash to the same internal id; rename one",
                        m.id, other
                    ),
                ));
            }
            if m.addresses.is_empty() {
                return Err(invalid(
                    format!("{key}.addresses"),
                    "at least one address is required",
                ));
            }
            for a in &m.addresses {
                if a.port() == 0 {
                    return Err(invalid(format!("{key}.addresses"), "port 0 is not allowed"));
                }
                if !addrs.insert(*a) {
                    return Err(invalid(format!("{key}.addresses"), format!("{a} is used twice")));
                }
            }
            if m.admin.port() == 0 {
                return Err(invalid(format!("{key}.admin"), "port 0 is not allowed"));
            }
            if !addrs.insert(m.admin) {
                return Err(invalid(
                    format!("{key}.admin"),
                    format!("{} is used twice", m.admin),
                ));
            }
        }
        let me = self
            .members
            .iter()
            .find(|m| m.id == self.node.id)
            .ok_or_else(|| {
                invalid(
                    "node.id",
                    format!("{:?} is not one of the [[member]] ids", self.node.id),
                )
            })?;
        let voters = self.members.len();
        if voters.is_multiple_of(2) {
            return Err(invalid(
                "member",
                format!("{voters} voters cannot break ties; use an odd number (add a witness)"),
            ));
        }
        if !self.members.iter().any(|m| m.kind == NodeKind::Data) {
            return Err(invalid("member", "at least one member must be of kind \"data\""));
        }

        let t = &self.timing;
        if t.heartbeat_interval < Duration::from_millis(5) {
            return Err(invalid("timing.heartbeat-interval", "must be at least 5ms"));
        }
        if t.lease < t.heartbeat_interval * 3 {
            return Err(invalid(
                "timing.lease",
                "must be at least three heartbeat intervals, or one late renewal demotes the active node",
            ));
        }
        if t.failure_timeout < t.heartbeat_interval * 2 {
            return Err(invalid(
                "timing.failure-timeout",
                "must be at least two heartbeat intervals, or one lost heartbeat causes a failover",
            ));
        }
        if t.promote_timeout.is_zero() {
            return Err(invalid("timing.promote-timeout", "must be greater than 0"));
        }

        match (me.kind, &self.service) {
            (NodeKind::Witness, Some(_)) => {
                return Err(invalid("service", "a witness runs no service; remove [service]"))
            }
            (NodeKind::Data, None) => {
                return Err(invalid("service", "a data node needs a [service] section"))
            }
            _ => {}
        }
        if let Some(s) = &self.service {
            if s.command.trim().is_empty() {
                return Err(invalid("service.command", "must not be empty"));
            }
            if s.restart_backoff_min.is_zero() {
                return Err(invalid("service.restart-backoff-min", "must be greater than 0"));
            }
            if s.restart_backoff_max < s.restart_backoff_min {
                return Err(invalid(
                    "service.restart-backoff-max",
                    "must not be less than restart-backoff-min",
                ));
            }
        }
        if me.kind == NodeKind::Witness && !self.checks.is_empty() {
            return Err(invalid(
                "check",
                "a witness runs no service to check; remove [[check]]",
            ));
        }
        let mut names = BTreeSet::new();
        for (i, c) in self.checks.iter().enumerate() {
            let key = format!("check[{i}]");
            validate_name(&format!("{key}.name"), &c.name)?;
            if c.name == "process" {
                return Err(invalid(
                    format!("{key}.name"),
                    "\"process\" is reserved for the supervised process",
                ));
            }
            if !names.insert(c.name.clone()) {
                return Err(invalid(
                    format!("{key}.name"),
                    format!("duplicate check name {:?}", c.name),
                ));
            }
            if c.interval.is_zero() {
                return Err(invalid(format!("{key}.interval"), "must be greater than 0"));
            }
            if c.timeout.is_zero() {
                return Err(invalid(format!("{key}.timeout"), "must be greater than 0"));
            }
            if c.rise == 0 {
                return Err(invalid(format!("{key}.rise"), "must be at least 1"));
            }
            if c.fall == 0 {
                return Err(invalid(format!("{key}.fall"), "must be at least 1"));
            }
            match &c.kind {
                CheckKind::Http { url, status, .. } => {
                    if !url.starts_with("http://") {
                        return Err(invalid(format!("{key}.url"), "must start with http://"));
                    }
                    if !(100..=599).contains(status) {
                        return Err(invalid(
                            format!("{key}.status"),
                            "must be an HTTP status code (100-599)",
                        ));
                    }
                }
                CheckKind::Exec { command } if command.trim().is_empty() => {
                    return Err(invalid(format!("{key}.command"), "must not be empty"));
                }
                _ => {}
            }
        }
        if self.hooks.timeout.is_zero() {
            return Err(invalid("hooks.timeout", "must be greater than 0"));
        }
        Ok(())
    }

    /// This node's own `[[member]]` entry (validated to exist).
    pub fn me(&self) -> &Member {
        self.member(&self.node.id)
            .expect("validate() checked that node.id is a member")
    }

    pub fn member(&self, id: &str) -> Option<&Member> {
        self.members.iter().find(|m| m.id == id)
    }

    /// Maps an internal Raft id back to the member's name.
    pub fn member_by_raft_id(&self, rid: u64) -> Option<&Member> {
        self.members.iter().find(|m| raft_id(&m.id) == rid)
    }
}

fn validate_name(key: &str, name: &str) -> Result<(), ConfigError> {
    let ok = !name.is_empty()
        && name.len() <= 32
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(invalid(
            key,
            format!("{name:?} must be 1-32 characters of a-z, 0-9, '-' or '_'"),
        ))
    }
}

/// The numeric Raft id of a member name: 64-bit FNV-1a, stable across versions and machines.
/// `validate()` rejects configs whose names collide.
pub fn raft_id(name: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    // Raft reserves nothing, but keep 0 free so "no node" is never a valid id.
    h.max(1)
}
