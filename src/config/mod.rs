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

pub mod drill;
pub mod reload;
pub mod rules;
pub use reload::{Live, LiveChange, ReloadOutcome, ReloadReport};
pub(crate) use rules::{at_most, count_at_most, invalid};
pub use rules::{
    limits, load_with, redact, ConfigError, EXIT_CONFIG, MAX_CONFIG_BYTES, REDACTED, SECRET_KEYS,
};

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
    /// The replicated Redis-protocol store (data nodes only).
    #[serde(default)]
    pub store: Option<StoreConfig>,
    /// Access control of the admin API.
    #[serde(default)]
    pub api: ApiConfig,
    /// The event history.
    #[serde(default)]
    pub events: EventsConfig,
    /// Where alarms and notable events are sent (by whichever node is the Raft leader).
    #[serde(default)]
    pub alarms: AlarmsConfig,
    /// The floating address this node holds while active (data nodes only).
    #[serde(default)]
    pub address: Option<AddressConfig>,
    /// A front proxy run by this node too (see `address::proxy`).
    #[serde(default)]
    pub proxy: Option<crate::address::proxy::config::ProxyConfig>,
    /// Mutual TLS between nodes. Required unless `insecure = true`.
    #[serde(default)]
    pub tls: TlsConfig,
    /// Failover drills: the fault API (off unless enabled), probes, schedule.
    #[serde(default)]
    pub drill: drill::DrillConfig,
    /// Scheduled backups of this node's state (data nodes; see `crate::backup::schedule`).
    #[serde(default)]
    pub backup: BackupConfig,
}

/// `[backup]`: scheduled backups this node takes of its own state machine into `dir`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct BackupConfig {
    /// Where backups go; none are taken without it.
    pub dir: Option<PathBuf>,
    /// How often.
    #[serde(with = "humantime_serde")]
    pub every: Duration,
    /// Backups kept in `dir` (the oldest beyond are removed).
    pub keep: usize,
    /// The last good backup older than this raises `backup-stale` (default: twice `every`).
    #[serde(default, with = "humantime_serde")]
    pub max_age: Option<Duration>,
}

impl Default for BackupConfig {
    fn default() -> Self {
        BackupConfig {
            dir: None,
            every: Duration::from_secs(3600),
            keep: 24,
            max_age: None,
        }
    }
}

impl BackupConfig {
    /// `max-age`, or twice `every`.
    pub fn max_age(&self) -> Duration {
        self.max_age.unwrap_or(self.every * 2)
    }

    /// Whether this node takes scheduled backups: a data node with `dir` (a witness ignores
    /// the section, so the same snippet can go into every member's file).
    pub fn scheduled(&self, kind: NodeKind) -> bool {
        self.dir.is_some() && kind == NodeKind::Data
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if self.every < Duration::from_secs(1) || self.every > Duration::from_secs(366 * 24 * 3600) {
            return Err(invalid("backup.every", "must be between 1s and 366days"));
        }
        if self.keep == 0 || self.keep > 100_000 {
            return Err(invalid("backup.keep", "must be between 1 and 100000"));
        }
        if self.max_age.is_some_and(|m| m < self.every) {
            return Err(invalid("backup.max-age", "must be at least `every`"));
        }
        if let Some(d) = &self.dir {
            if d.as_os_str().is_empty() || !d.is_absolute() {
                return Err(invalid("backup.dir", "must be an absolute path"));
            }
        }
        Ok(())
    }
}

/// `[tls]`: the cluster CA and this node's certificate and key (PEM files). Every connection
/// between nodes is TLS 1.3 with certificates checked both ways; a node's certificate names
/// its member id (URI SAN `standin:node:<id>`), and a peer may act only as that id.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct TlsConfig {
    /// The cluster CA certificate(s) that sign every member's certificate.
    pub ca: Option<PathBuf>,
    /// This node's certificate (its chain, leaf first).
    pub cert: Option<PathBuf>,
    /// This node's private key; must not be readable by other users.
    pub key: Option<PathBuf>,
    /// Run without TLS: anyone who can reach a cluster address can act as a member. For a
    /// laptop or a closed test network only; logged at start and shown in `status`.
    pub insecure: bool,
}

impl TlsConfig {
    /// The files to load, or `None` when running insecure.
    pub fn files(&self) -> Option<crate::tls::TlsFiles> {
        if self.insecure {
            return None;
        }
        Some(crate::tls::TlsFiles {
            ca: self.ca.clone(),
            cert: self.cert.clone()?,
            key: self.key.clone()?,
            keys: ["tls.ca", "tls.cert", "tls.key"],
        })
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if self.insecure {
            if self.ca.is_some() || self.cert.is_some() || self.key.is_some() {
                return Err(invalid(
                    "tls.insecure",
                    "true turns TLS off; remove it or the ca, cert and key files",
                ));
            }
            return Ok(());
        }
        let how = "make them with `standin certs init DIR` and `standin certs issue ID --ca DIR`, \
                   or set `tls.insecure = true` (anyone who can reach the cluster addresses can then act as a member)";
        if self.ca.is_none() && self.cert.is_none() && self.key.is_none() {
            return Err(invalid(
                "tls",
                format!("a [tls] section with ca, cert and key is required; {how}"),
            ));
        }
        for (key, v) in [
            ("tls.ca", &self.ca),
            ("tls.cert", &self.cert),
            ("tls.key", &self.key),
        ] {
            if v.is_none() {
                return Err(invalid(key, format!("is required with [tls]; {how}")));
            }
        }
        Ok(())
    }

    /// Loads the files and checks them: readable, the key private to its owner and matching
    /// the certificate, the certificate from the CA, not expired, naming member `id`.
    pub fn check(&self, id: &str) -> Result<(), ConfigError> {
        let Some(files) = self.files() else {
            return Ok(());
        };
        crate::tls::Tls::load(files, Some(id))
            .map(drop)
            .map_err(|e| match e.key() {
                Some(key) => invalid(key, e.detail()),
                None => invalid("tls", e.detail()),
            })
    }
}

/// `[events]`: the replicated event history.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct EventsConfig {
    /// Events kept (oldest dropped first); the Raft leader's setting applies cluster-wide.
    pub retention: usize,
}

impl Default for EventsConfig {
    fn default() -> Self {
        EventsConfig { retention: 2000 }
    }
}

/// `[alarms]`: notifications of failovers, switchovers, fences and degraded states.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct AlarmsConfig {
    /// URLs that get each notification as a JSON POST.
    pub webhook: Vec<String>,
    /// A program run per notification with the JSON on stdin and `STANDIN_ALARM_*` variables.
    pub exec: Option<String>,
    /// Also log each notification to the local syslog (`/dev/log`), facility daemon.
    pub syslog: bool,
    /// Attempts per webhook or exec delivery before giving up (with doubling backoff).
    pub attempts: u32,
    #[serde(with = "humantime_serde")]
    pub backoff: Duration,
    /// Per attempt.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
}

impl Default for AlarmsConfig {
    fn default() -> Self {
        AlarmsConfig {
            webhook: Vec::new(),
            exec: None,
            syslog: false,
            attempts: 5,
            backoff: Duration::from_millis(500),
            timeout: Duration::from_secs(5),
        }
    }
}

/// `[api]`: who may use the admin API, and whether it speaks HTTPS. Without a token the API
/// is open, which is allowed only on a loopback `admin` address or with `insecure-open`
/// (Redis's protected mode, for the admin API).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct ApiConfig {
    /// Bearer token required by mutating calls (switchover, failback, maintenance, drain).
    pub token: Option<String>,
    /// The same, read from a file (first line), so it stays out of the config.
    pub token_file: Option<PathBuf>,
    /// Whether read-only calls (status, events, watch, metrics, dashboard) work without the
    /// token. `/v1/lease` is always open: it is the managed service's local contract.
    pub read_open: bool,
    /// A client must send a whole request head within this long after the connection opens
    /// or the previous answer ends; otherwise the connection is closed. It is also the
    /// keep-alive idle timeout (hyper starts the same timer while it waits for a request).
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// Open connections at most. At the cap, the oldest connection with no request in
    /// progress is closed to make room; when every one is busy, the new one is closed.
    pub max_connections: usize,
    /// Serve the admin API over HTTPS (TLS 1.3), with `tls-cert`/`tls-key` or else the
    /// node's `[tls]` certificate and key. Files are reloaded when they change.
    pub tls: bool,
    /// The admin API's own certificate (chain, leaf first), instead of the node's.
    pub tls_cert: Option<PathBuf>,
    /// The admin API's own private key; must not be readable by other users.
    pub tls_key: Option<PathBuf>,
    /// Serve the API without a token on a non-loopback `admin` address: anyone who can reach
    /// it can move the role. Refused otherwise (the node does not start).
    pub insecure_open: bool,
    /// DNS names the admin API answers to (the `Host` a browser sends), besides IP addresses
    /// and `localhost`: a request naming any other host is refused, so a web page whose name
    /// was rebound to this address cannot read it.
    pub hosts: Vec<String>,
    /// The token in effect (from `token` or `token-file`), resolved when the config loads.
    #[serde(skip)]
    pub resolved_token: Option<String>,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            token: None,
            token_file: None,
            read_open: true,
            header_read_timeout: Duration::from_secs(10),
            max_connections: 256,
            tls: false,
            tls_cert: None,
            tls_key: None,
            insecure_open: false,
            hosts: Vec::new(),
            resolved_token: None,
        }
    }
}

impl ApiConfig {
    /// The certificate and key the admin API serves HTTPS with, or `None` for plain HTTP.
    /// No client certificates are asked for: callers authenticate with the token.
    pub fn tls_files(&self, node: &TlsConfig) -> Option<crate::tls::TlsFiles> {
        if !self.tls {
            return None;
        }
        if let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) {
            return Some(crate::tls::TlsFiles {
                ca: None,
                cert: cert.clone(),
                key: key.clone(),
                keys: ["api.tls-cert", "api.tls-cert", "api.tls-key"],
            });
        }
        let mut files = node.files()?;
        files.ca = None;
        Some(files)
    }

    /// `http` or `https`, as clients and browsers name this API's origin.
    pub fn scheme(&self) -> &'static str {
        if self.tls {
            "https"
        } else {
            "http"
        }
    }

    /// Checks the HTTPS settings (and loads the files), and refuses an open API on a
    /// non-loopback address. Runs after [`ApiConfig::resolve`].
    fn check(&self, admin: SocketAddr, node_tls: &TlsConfig) -> Result<(), ConfigError> {
        match (&self.tls_cert, &self.tls_key) {
            (Some(_), None) => return Err(invalid("api.tls-key", "is required with `api.tls-cert`")),
            (None, Some(_)) => return Err(invalid("api.tls-cert", "is required with `api.tls-key`")),
            (Some(_), Some(_)) if !self.tls => {
                return Err(invalid(
                    "api.tls",
                    "`api.tls-cert` and `api.tls-key` are set but `api.tls` is not true",
                ))
            }
            _ => {}
        }
        if self.tls {
            let Some(files) = self.tls_files(node_tls) else {
                return Err(invalid(
                    "api.tls",
                    "true needs a certificate: `api.tls-cert` and `api.tls-key`, or the node's \
                     [tls] cert and key (not `tls.insecure`)",
                ));
            };
            crate::tls::Tls::load(files, None)
                .map(drop)
                .map_err(|e| match e.key() {
                    Some(key) => invalid(key, e.detail()),
                    None => invalid("api.tls", e.detail()),
                })?;
        }
        if self.resolved_token.is_none() && !admin.ip().is_loopback() && !self.insecure_open {
            return Err(invalid(
                "api.token",
                format!(
                    "the admin API listens on {admin}, not a loopback address, and has no token: \
                     anyone who can reach it could move the role. Set `api.token-file` to a file \
                     holding a random token of at least 16 characters (e.g. \
                     `openssl rand -hex 32 > /etc/standin/api-token; chmod 600 /etc/standin/api-token`), \
                     or `api.insecure-open = true` to run it open"
                ),
            ));
        }
        Ok(())
    }

    fn resolve(&mut self) -> Result<(), ConfigError> {
        self.resolved_token = match (&self.token, &self.token_file) {
            (Some(_), Some(_)) => {
                return Err(invalid(
                    "api.token-file",
                    "set `api.token` or `api.token-file`, not both",
                ))
            }
            (Some(t), None) => Some(t.clone()),
            (None, Some(path)) => Some(read_secret_file("api.token-file", path)?),
            (None, None) => None,
        };
        match &self.resolved_token {
            Some(t) if t.len() < 16 => Err(invalid(
                if self.token.is_some() {
                    "api.token"
                } else {
                    "api.token-file"
                },
                "must be at least 16 characters",
            )),
            Some(t) if t.chars().any(|c| c.is_whitespace() || c.is_control()) => Err(invalid(
                if self.token.is_some() {
                    "api.token"
                } else {
                    "api.token-file"
                },
                "must not contain spaces or control characters",
            )),
            None if !self.read_open => Err(invalid(
                "api.read-open",
                "false needs `api.token` or `api.token-file`",
            )),
            _ => Ok(()),
        }
    }
}

/// `[address]`: a virtual IP on an interface, held by this node only while it is active.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct AddressConfig {
    /// IPv4 address with prefix length, e.g. `10.0.0.100/24` (validated: see [`AddressConfig::vip`]).
    pub vip: String,
    /// The interface the address is added to, e.g. `eth0`.
    pub interface: String,
    /// Gratuitous ARPs sent when the address is acquired (0: none).
    #[serde(default = "default_garp_count")]
    pub garp_count: u32,
    /// Time between two gratuitous ARPs.
    #[serde(default = "default_garp_interval", with = "humantime_serde")]
    pub garp_interval: Duration,
    /// While holding the VIP, announce it again this often (keepalived's
    /// `vrrp_garp_master_refresh`): it corrects hosts and switches that learned a wrong MAC
    /// meanwhile. 0 (the default): only when the address is taken.
    #[serde(default, with = "humantime_serde")]
    pub garp_refresh: Duration,
}

impl AddressConfig {
    /// The parsed VIP (`validate()` refused anything that does not parse).
    pub fn vip(&self) -> crate::address::vip::Vip {
        self.vip
            .parse()
            .expect("validate() checked that address.vip parses")
    }
}

fn default_garp_count() -> u32 {
    3
}
fn default_garp_interval() -> Duration {
    Duration::from_millis(100)
}

/// `[store]`: a Redis-protocol server on this node over the replicated key-value state.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct StoreConfig {
    /// Where Redis clients connect to this node.
    pub listen: SocketAddr,
    /// Like Redis `requirepass`: clients must AUTH first.
    #[serde(default)]
    pub requirepass: Option<String>,
    /// The same, read from a file (first line), so it stays out of the config. Like
    /// `api.token-file`, refused when users other than its owner can read it.
    #[serde(default)]
    pub requirepass_file: Option<PathBuf>,
    /// Redis's protected mode: with no password, the store may listen on a loopback address
    /// only; `false` allows any address without one (anyone who can reach it can then read and
    /// write the store).
    #[serde(default = "default_protected_mode")]
    pub protected_mode: bool,
    /// Serve clients over TLS 1.3 (`redis-cli --tls`), with the node certificate from `[tls]`
    /// or `tls-cert`/`tls-key`. No client certificates are asked for: clients authenticate
    /// with `requirepass`.
    #[serde(default)]
    pub tls: bool,
    /// A certificate for the store's own (e.g. one naming the store's host name), instead of
    /// the node certificate. Needs `tls-key` and `tls = true`.
    #[serde(default)]
    pub tls_cert: Option<PathBuf>,
    /// The key of `tls-cert`; must not be readable by other users.
    #[serde(default)]
    pub tls_key: Option<PathBuf>,
    /// Bytes of keys and values after which writes that add data get an OOM error (0: none).
    #[serde(default)]
    pub maxmemory: u64,
    /// Connections beyond this get "ERR max number of clients reached". Lowered at start up
    /// to what the process's file limit leaves after a reserve (as Redis does).
    #[serde(default = "default_max_clients")]
    pub max_clients: u32,
    /// Largest request: one bulk string (Redis `proto-max-bulk-len`), and all arguments of one
    /// request together (16 bytes counted per argument). By default
    /// [`crate::sizes::DEFAULT_MAX_REQUEST_SIZE`] (4 MiB: what replicates within openraft's
    /// append timeout), at most [`crate::sizes::MAX_REQUEST_SIZE`], which follows from the peer
    /// frame limit.
    #[serde(default = "default_max_request_size")]
    pub max_request_size: u64,
    /// Largest reply buffer of one client (Redis `client-output-buffer-limit` for normal
    /// clients, there unlimited): a client whose pending replies would exceed it is
    /// disconnected.
    #[serde(default = "default_client_output_buffer_limit")]
    pub client_output_buffer_limit: u64,
    /// All clients' read and reply buffers together, beyond the first 64 KiB of each: a client
    /// whose buffers would take the total above it is disconnected, never the node.
    #[serde(default = "default_client_buffer_budget")]
    pub client_buffer_budget: u64,
    /// While no leader is known (a failover), requests wait this long before failing.
    #[serde(default = "default_retry_for", with = "humantime_serde")]
    pub retry_for: Duration,
    /// The password in effect (from `requirepass` or `requirepass-file`), resolved when the
    /// config loads.
    #[serde(skip)]
    pub resolved_requirepass: Option<String>,
}

fn default_protected_mode() -> bool {
    true
}

impl StoreConfig {
    /// The TLS files the store serves with, if `tls = true`: its own, or the node's (`None`
    /// also when the node runs without `[tls]`, which `resolve` refuses).
    pub fn tls_files(&self, node: &TlsConfig) -> Option<crate::tls::TlsFiles> {
        if !self.tls {
            return None;
        }
        match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Some(crate::tls::TlsFiles {
                ca: None,
                cert: cert.clone(),
                key: key.clone(),
                keys: ["store.tls-cert", "store.tls-cert", "store.tls-key"],
            }),
            _ => node.files(),
        }
    }

    /// Reads `requirepass-file`, applies protected mode and checks the TLS settings and files.
    fn resolve(&mut self, node_tls: &TlsConfig) -> Result<(), ConfigError> {
        self.resolved_requirepass = match (&self.requirepass, &self.requirepass_file) {
            (Some(_), Some(_)) => {
                return Err(invalid(
                    "store.requirepass-file",
                    "set `store.requirepass` or `store.requirepass-file`, not both",
                ))
            }
            (Some(p), None) => Some(p.clone()),
            (None, Some(path)) => {
                let text = read_secret_file("store.requirepass-file", path)?;
                if text.is_empty() {
                    return Err(invalid(
                        "store.requirepass-file",
                        format!("{}: the first line is empty", path.display()),
                    ));
                }
                Some(text)
            }
            (None, None) => None,
        };
        if self.resolved_requirepass.is_none() && self.protected_mode && !self.listen.ip().is_loopback() {
            return Err(invalid(
                "store.requirepass",
                format!(
                    "the store listens on {} (not a loopback address) without a password: set \
                     `store.requirepass` or `store.requirepass-file`, or listen on 127.0.0.1, or set \
                     `store.protected-mode = false` to let anyone who can reach it read and write the store",
                    self.listen
                ),
            ));
        }
        match (&self.tls_cert, &self.tls_key) {
            (Some(_), None) => return Err(invalid("store.tls-key", "is required with `store.tls-cert`")),
            (None, Some(_)) => return Err(invalid("store.tls-cert", "is required with `store.tls-key`")),
            (Some(_), Some(_)) if !self.tls => {
                return Err(invalid("store.tls-cert", "is used only with `store.tls = true`"))
            }
            _ => {}
        }
        if !self.tls {
            return Ok(());
        }
        let Some(files) = self.tls_files(node_tls) else {
            return Err(invalid(
                "store.tls",
                "needs a certificate, and `tls.insecure = true` gives none: configure [tls] ca, cert \
                 and key (the node certificate is used), or `store.tls-cert` and `store.tls-key`",
            ));
        };
        crate::tls::Tls::load(files, None)
            .map(drop)
            .map_err(|e| invalid(e.key().unwrap_or("store.tls"), e.detail()))
    }
}

impl Config {
    /// The top-level sections (`node`, `timing`, `member`, ...) whose effective values differ
    /// between `self` and `other`, sorted; secrets read from files compare too, but only the
    /// section's name is reported.
    pub fn changed_sections(&self, other: &Config) -> Vec<String> {
        let (a, b) = match (serde_json::to_value(self), serde_json::to_value(other)) {
            (Ok(serde_json::Value::Object(a)), Ok(serde_json::Value::Object(b))) => (a, b),
            _ => return vec!["(whole file)".into()],
        };
        let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
        keys.sort();
        keys.dedup();
        let mut changed: Vec<String> = keys
            .into_iter()
            .filter(|k| a.get(*k) != b.get(*k))
            .map(|k| k.replace('_', "-"))
            .collect();
        // Secrets read from files are not in the serialized form: a token rotated inside its
        // file changes the section all the same.
        let mut secret = |section: &str, differs: bool| {
            if differs && !changed.iter().any(|c| c == section) {
                changed.push(section.to_string());
            }
        };
        secret("api", self.api.resolved_token != other.api.resolved_token);
        secret(
            "store",
            self.store.as_ref().map(|s| &s.resolved_requirepass)
                != other.store.as_ref().map(|s| &s.resolved_requirepass),
        );
        changed.sort();
        changed
    }

    /// The effective configuration as JSON with every secret replaced by [`REDACTED`] (what
    /// `GET /v1/config` and `standin config export` show).
    pub fn redacted_json(&self) -> serde_json::Value {
        let mut value = serde_json::to_value(self).unwrap_or_default();
        // The config's shape is fixed (a few levels of sections and lists): an explicit stack
        // rather than recursion all the same.
        let mut stack = vec![&mut value];
        while let Some(v) = stack.pop() {
            match v {
                serde_json::Value::Object(map) => {
                    for (k, v) in map.iter_mut() {
                        if SECRET_KEYS.contains(&k.as_str()) && !v.is_null() {
                            *v = serde_json::Value::String(REDACTED.into());
                        } else {
                            stack.push(v);
                        }
                    }
                }
                serde_json::Value::Array(items) => stack.extend(items.iter_mut()),
                _ => {}
            }
        }
        value
    }

    /// A short digest of the effective configuration (what the node runs with, not the file's
    /// formatting), published in `config-changed` events: FNV-1a over its JSON form with every
    /// secret replaced by a marker, so the digest tells nothing about a token or password
    /// (whether one is set still counts).
    pub fn digest(&self) -> String {
        format!("{:016x}", raft_id(&self.redacted_json().to_string()))
    }

    /// A digest of each section every member should have the same (see [`SHARED_SECTIONS`]),
    /// for the `config-drift` alarm: `"none"` for one left out.
    pub fn shared_digests(&self) -> BTreeMap<String, String> {
        let value = self.redacted_json();
        SHARED_SECTIONS
            .iter()
            .map(|s| {
                let v = value.get(s.replace('-', "_")).or_else(|| value.get(*s));
                let d = match v {
                    None | Some(serde_json::Value::Null) => "none".to_string(),
                    Some(v) => format!("{:016x}", raft_id(&v.to_string())),
                };
                (s.to_string(), d)
            })
            .collect()
    }
}

/// The sections cluster settings may change (`standin config set/apply`, through the Raft
/// log): the ones that apply live on every node (see [`Config::apply_live`]).
pub const CLUSTER_SECTIONS: &[&str] = &["failback", "hooks", "alarms", "events"];

/// Largest cluster settings document.
pub const MAX_SETTINGS: usize = 64 * 1024;

/// `cur` with the keys of `overlay` (a TOML table) set on it, read back as `T`: unknown keys
/// and bad values are refused, naming `section`.
fn merge_section<T>(cur: &T, overlay: &toml::Value, section: &str) -> Result<T, ConfigError>
where
    T: Serialize + serde::de::DeserializeOwned,
{
    let mut value = toml::Value::try_from(cur).map_err(|e| invalid(section, e.to_string()))?;
    let (Some(table), Some(over)) = (value.as_table_mut(), overlay.as_table()) else {
        return Err(invalid(section, "must be a table"));
    };
    for (k, v) in over {
        table.insert(k.clone(), v.clone());
    }
    value
        .try_into::<T>()
        .map_err(|e| invalid(section, e.message().trim().to_string()))
}

impl Config {
    /// This configuration with the cluster settings `text` (a TOML document of
    /// [`CLUSTER_SECTIONS`]) applied: each key it sets replaces the file's, the rest of the
    /// section stays. Refused, naming the key, if a section is not a cluster setting or the
    /// result does not validate.
    pub fn with_settings(&self, text: &str) -> Result<Config, ConfigError> {
        if text.len() > MAX_SETTINGS {
            return Err(invalid("settings", format!("larger than {MAX_SETTINGS} bytes")));
        }
        let doc: toml::Table =
            toml::from_str(text).map_err(|e| invalid("settings", e.message().trim().to_string()))?;
        let mut next = self.clone();
        for (section, v) in &doc {
            match section.as_str() {
                "failback" => next.failback = merge_section(&next.failback, v, "failback")?,
                "hooks" => next.hooks = merge_section(&next.hooks, v, "hooks")?,
                "alarms" => next.alarms = merge_section(&next.alarms, v, "alarms")?,
                "events" => next.events = merge_section(&next.events, v, "events")?,
                "timing" => {
                    return Err(invalid(
                        "timing",
                        "the timings must change on every node at once (the lease rests on them): \
                         change [timing] in every file and restart the nodes one by one; \
                         `standin config diff` shows where they differ",
                    ))
                }
                other => {
                    return Err(invalid(
                        other,
                        format!(
                            "not a cluster setting (those are: {})",
                            CLUSTER_SECTIONS.join(", ")
                        ),
                    ))
                }
            }
        }
        next.validate()?;
        Ok(next)
    }
}

/// The sections that must be the same on every member (the timings the lease argument rests
/// on, and the policies whichever node leads applies): a difference raises `config-drift`.
/// `hooks` is compared between data nodes only (a witness runs none).
pub const SHARED_SECTIONS: &[&str] = &["timing", "failback", "hooks", "alarms", "events"];

/// Largest secret file read (a token or password is a line).
const MAX_SECRET_FILE: u64 = 64 * 1024;

/// Reads the first line of a secret file (trimmed), refusing one that users other than its
/// owner can read (as ssh does with keys) or that is larger than [`MAX_SECRET_FILE`].
fn read_secret_file(key: &str, path: &Path) -> Result<String, ConfigError> {
    use std::io::Read;
    crate::tls::check_private(key, path).map_err(|e| invalid(key, e.detail()))?;
    let mut text = String::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_SECRET_FILE + 1).read_to_string(&mut text))
        .map_err(|e| invalid(key, format!("cannot read {}: {e}", path.display())))?;
    if text.len() as u64 > MAX_SECRET_FILE {
        return Err(invalid(
            key,
            format!("{}: larger than {MAX_SECRET_FILE} bytes", path.display()),
        ));
    }
    Ok(text.lines().next().unwrap_or("").trim().to_string())
}

fn default_max_clients() -> u32 {
    10_000
}
fn default_max_request_size() -> u64 {
    crate::sizes::DEFAULT_MAX_REQUEST_SIZE
}
fn default_client_output_buffer_limit() -> u64 {
    512 * 1024 * 1024
}
fn default_client_buffer_budget() -> u64 {
    1024 * 1024 * 1024
}
fn default_retry_for() -> Duration {
    Duration::from_secs(5)
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct NodeSection {
    /// This node's name; must match one `[[member]] id`.
    pub id: String,
    /// Raft log, snapshots and state live here (created if missing).
    pub data_dir: PathBuf,
    /// Addresses to bind instead of this member's `addresses`, one per path, when peers reach
    /// this node through a NAT, relay or port forward. Default: bind `addresses`.
    #[serde(default)]
    pub listen: Option<Vec<SocketAddr>>,
    /// Store writes are refused (with an error naming the disk) while the data directory's
    /// file system has fewer free bytes than this, so a filling disk stops new data before
    /// Raft's own records can no longer be written. 0 turns the check off.
    #[serde(default = "default_min_free_disk")]
    pub min_free_disk: u64,
    /// Below this many free bytes on the data directory's file system the `disk-low:NODE`
    /// alarm (warning) is raised, before writes are refused at `min-free-disk`. Default:
    /// twice `min-free-disk`; 0 turns the warning off. (Left out of the effective config while
    /// unset, so that a file without it keeps its digest across an upgrade.)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_low_warning: Option<u64>,
    /// Above this many bytes of resident memory (VmRSS) the `memory-high:NODE` alarm is
    /// raised. Default: off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_warning: Option<u64>,
    /// This node joins a running cluster (`standin member add` makes it a member) instead of
    /// creating one with the `[[member]]` list on its first start. Its member list needs
    /// itself and at least one member of the running cluster.
    #[serde(default)]
    pub join: bool,
}

fn default_min_free_disk() -> u64 {
    64 * 1024 * 1024
}

/// Smallest `memory-warning`: a smaller value is a unit mistake (the daemon alone takes more).
pub const MIN_MEMORY_WARNING: u64 = 16 * 1024 * 1024;

impl NodeSection {
    /// The free bytes below which `disk-low:NODE` is raised (0: never).
    pub fn disk_low_warning(&self) -> u64 {
        self.disk_low_warning
            .unwrap_or(self.min_free_disk.saturating_mul(2))
    }

    /// `disk-low-warning` and `memory-warning` make sense with `min-free-disk`.
    fn validate_resources(&self) -> Result<(), ConfigError> {
        if let Some(w) = self.disk_low_warning {
            if w != 0 && w <= self.min_free_disk {
                return Err(invalid(
                    "node.disk-low-warning",
                    format!(
                        "{w} must be above node.min-free-disk ({}): the warning comes before writes are refused (0 turns it off)",
                        self.min_free_disk
                    ),
                ));
            }
        }
        if let Some(m) = self.memory_warning {
            if m < MIN_MEMORY_WARNING {
                return Err(invalid(
                    "node.memory-warning",
                    format!("{m} bytes is below {MIN_MEMORY_WARNING} (16 MiB); the value is in bytes"),
                ));
            }
        }
        Ok(())
    }
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
    /// Where clients reach this node's Redis-protocol store (informational; used by front
    /// proxies for the store's floating address).
    #[serde(default)]
    pub store_address: Option<SocketAddr>,
    /// Where the member stands (a building, a region): `status` groups members by site and
    /// a failover prefers a standby on the active node's site. Optional.
    #[serde(default)]
    pub site: Option<String>,
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

/// Every duration derived from the configured timings, each with the reason for its multiplier
/// written once here: no other module multiplies a timing value.
impl Timing {
    /// Whether a node last heard at `last` is still heard at `now`: within the failure timeout.
    pub fn is_heard(&self, last: std::time::Instant, now: std::time::Instant) -> bool {
        now.saturating_duration_since(last) < self.failure_timeout
    }

    /// [`Timing::is_heard`] on milliseconds of the node's own clock.
    pub fn is_heard_ms(&self, last_ms: u64, now_ms: u64) -> bool {
        now_ms.saturating_sub(last_ms) < self.failure_timeout.as_millis() as u64
    }

    /// Time a new view needs before it is judged (two failure timeouts): paths need a moment
    /// to connect, and a new leader a round of heartbeats and reports, before "down" or an
    /// alarm means anything.
    pub fn settle_grace(&self) -> Duration {
        self.failure_timeout.saturating_mul(2)
    }

    /// How long the cluster may stay without a leader before a witness that holds entries
    /// the surviving data node lacks campaigns itself (two failure timeouts: a data node had
    /// every chance to win first).
    pub fn witness_rescue_after(&self) -> Duration {
        self.failure_timeout.saturating_mul(2)
    }

    /// How long after the first leader is elected the coordinator waits for the
    /// highest-priority node before bootstrapping another (three failure timeouts: every
    /// node has started and reported its health by then).
    pub fn bootstrap_wait(&self) -> Duration {
        self.failure_timeout.saturating_mul(3)
    }

    /// Between two requests to move Raft leadership, and the bound on one coordinator write
    /// (four failure timeouts: an election and its settling, with room to spare).
    pub fn coordination_retry(&self) -> Duration {
        self.failure_timeout.saturating_mul(4)
    }

    /// How long a node whose promotion failed or timed out is not tried again (twenty
    /// failure timeouts: ten seconds at the defaults, long enough for another candidate to
    /// take over and short enough to retry a node that recovered).
    pub fn promotion_exclusion(&self) -> Duration {
        self.failure_timeout.saturating_mul(20)
    }

    /// The lease's safety margin, for clock-rate differences and scheduling delays: a tenth of
    /// the lease, at least 20 ms. The holder subtracts it ([`Timing::lease_held_for`]), the
    /// coordinator adds it before it may promote a successor, and the VIP keeper drops the
    /// address that much before the hold ends.
    pub fn lease_margin(&self) -> Duration {
        (self.lease / 10).max(Duration::from_millis(20))
    }

    /// How long the holder counts a granted lease, from the moment it asked: the lease minus
    /// [`Timing::lease_margin`].
    pub fn lease_held_for(&self) -> Duration {
        self.lease.saturating_sub(self.lease_margin())
    }

    /// How long the active node waits for one lease renewal (half a lease: a renewal that
    /// fails in time leaves the other half for the next one).
    pub fn lease_request_timeout(&self) -> Duration {
        self.lease / 2
    }

    /// How long a heartbeat ping may take to come back and still count: half the failure
    /// timeout (at least one heartbeat), so a path is seen down well within the timeout.
    pub fn ping_timeout(&self) -> Duration {
        (self.failure_timeout / 2).max(self.heartbeat_interval)
    }

    /// How long a new peer connection may stay silent (no TLS handshake, no member frame)
    /// before it is closed: `floor` or three heartbeat intervals, if longer (real peers ping
    /// every heartbeat).
    pub fn silence_allowed(&self, floor: Duration) -> Duration {
        floor.max(self.heartbeat_interval.saturating_mul(3))
    }

    /// The coordinator's tick: twice per heartbeat (at least 5 ms), so a decision never waits
    /// a whole heartbeat.
    pub fn coordinator_tick(&self) -> Duration {
        (self.heartbeat_interval / 2).max(Duration::from_millis(5))
    }

    /// How often the pre-vote gate decides whether openraft may campaign: twice per minimum
    /// election timeout (at least 5 ms), so a follower that lost its leader campaigns within
    /// half an election timeout of being allowed to.
    pub fn prevote_tick(&self) -> Duration {
        Duration::from_millis(self.raft_ms().1 / 2).max(Duration::from_millis(5))
    }

    /// How long a requested switchover may stay pending before it is dropped: the promotion's
    /// own timeout plus 30 s, as long as the CLI waits for it by default, plus a margin.
    pub fn switchover_timeout(&self) -> Duration {
        self.promote_timeout.saturating_add(Duration::from_secs(30))
    }

    /// How often the path watcher looks at every path: each heartbeat, at most 20 times a
    /// second (a path's state only changes on heartbeats; alarms need no finer grain).
    pub fn path_watch_tick(&self) -> Duration {
        self.heartbeat_interval.max(Duration::from_millis(50))
    }

    /// openraft's timings in milliseconds: (heartbeat, election timeout min, max). Raft's own
    /// heartbeat is twice as frequent as ours (leadership is what lease renewals depend on, so
    /// it must survive a lost packet or two); openraft adds `election_timeout_max` (its leader
    /// lease) to a follower's timeout, so a dead leader is replaced after 2-2.5 heartbeat
    /// intervals of silence.
    pub fn raft_ms(&self) -> (u64, u64, u64) {
        let hb = self.heartbeat_interval.as_millis() as u64;
        ((hb / 2).max(5), hb.max(20), (hb * 3 / 2).max(30))
    }
}

/// `now + d`, saturating: the latest representable instant at most `d` after `now` (never a
/// panic on overflow, whatever a duration derived from the config or a peer amounts to).
pub fn later(now: std::time::Instant, d: Duration) -> std::time::Instant {
    let mut d = d;
    loop {
        if let Some(t) = now.checked_add(d) {
            return t;
        }
        // Halving converges in at most 64 steps; `now + 0` always exists.
        d /= 2;
    }
}

/// [`later`] for tokio's clock.
pub fn later_tokio(now: tokio::time::Instant, d: Duration) -> tokio::time::Instant {
    tokio::time::Instant::from_std(later(now.into_std(), d))
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

/// One health check. In TOML the probe's fields sit beside the common ones:
/// `kind = "http"`, `url = "..."`; parsed through [`RawCheck`] so unknown keys are rejected
/// (serde cannot combine `flatten` with `deny_unknown_fields`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(try_from = "RawCheck", into = "RawCheck")]
pub struct CheckConfig {
    pub name: String,
    pub kind: CheckKind,
    pub interval: Duration,
    pub timeout: Duration,
    /// Consecutive successes before an unhealthy check turns healthy.
    pub rise: u32,
    /// Consecutive failures before a healthy check turns unhealthy.
    pub fall: u32,
}

/// The TOML shape of a `[[check]]`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawCheck {
    pub name: String,
    /// `tcp`, `http` or `exec`.
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<SocketAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    #[serde(default = "default_check_interval", with = "humantime_serde")]
    pub interval: Duration,
    #[serde(default = "default_check_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    #[serde(default = "default_rise")]
    pub rise: u32,
    #[serde(default = "default_fall")]
    pub fall: u32,
}

impl TryFrom<RawCheck> for CheckConfig {
    type Error = String;

    fn try_from(r: RawCheck) -> Result<Self, String> {
        let name = &r.name;
        let unexpected = |key: &str, present: bool| -> Result<(), String> {
            if present {
                Err(format!(
                    "check {name:?}: `{key}` does not apply to kind = {:?}",
                    r.kind
                ))
            } else {
                Ok(())
            }
        };
        let kind = match r.kind.as_str() {
            "tcp" => {
                unexpected("url", r.url.is_some())?;
                unexpected("status", r.status.is_some())?;
                unexpected("body", r.body.is_some())?;
                unexpected("command", r.command.is_some())?;
                CheckKind::Tcp {
                    address: r
                        .address
                        .ok_or_else(|| format!("check {name:?}: kind = \"tcp\" needs `address`"))?,
                }
            }
            "http" => {
                unexpected("address", r.address.is_some())?;
                unexpected("command", r.command.is_some())?;
                CheckKind::Http {
                    url: r
                        .url
                        .clone()
                        .ok_or_else(|| format!("check {name:?}: kind = \"http\" needs `url`"))?,
                    status: r.status.unwrap_or_else(default_http_status),
                    body: r.body.clone(),
                }
            }
            "exec" => {
                unexpected("address", r.address.is_some())?;
                unexpected("url", r.url.is_some())?;
                unexpected("status", r.status.is_some())?;
                unexpected("body", r.body.is_some())?;
                CheckKind::Exec {
                    command: r
                        .command
                        .clone()
                        .ok_or_else(|| format!("check {name:?}: kind = \"exec\" needs `command`"))?,
                }
            }
            other => {
                return Err(format!(
                    "check {name:?}: unknown kind {other:?}; expected \"tcp\", \"http\" or \"exec\""
                ))
            }
        };
        Ok(CheckConfig {
            name: r.name,
            kind,
            interval: r.interval,
            timeout: r.timeout,
            rise: r.rise,
            fall: r.fall,
        })
    }
}

impl From<CheckConfig> for RawCheck {
    fn from(c: CheckConfig) -> RawCheck {
        let mut raw = RawCheck {
            name: c.name,
            kind: String::new(),
            address: None,
            url: None,
            status: None,
            body: None,
            command: None,
            interval: c.interval,
            timeout: c.timeout,
            rise: c.rise,
            fall: c.fall,
        };
        match c.kind {
            CheckKind::Tcp { address } => {
                raw.kind = "tcp".into();
                raw.address = Some(address);
            }
            CheckKind::Http { url, status, body } => {
                raw.kind = "http".into();
                raw.url = Some(url);
                raw.status = Some(status);
                raw.body = body;
            }
            CheckKind::Exec { command } => {
                raw.kind = "exec".into();
                raw.command = Some(command);
            }
        }
        raw
    }
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

/// Reads a proxy config (see [`parse_proxy`]).
pub fn load_proxy(path: &Path) -> Result<crate::address::proxy::config::ProxyConfig, ConfigError> {
    load_with(path, parse_proxy)
}

/// Parses and validates a proxy config: a file with only `[proxy]`, or a node's config with a
/// `[proxy]` section (the whole node config is then validated too).
pub fn parse_proxy(text: &str) -> Result<crate::address::proxy::config::ProxyConfig, ConfigError> {
    let table: toml::Table = toml::from_str(text).map_err(|e| ConfigError::Parse {
        path: PathBuf::from("<config>"),
        message: e.to_string().trim().to_string(),
    })?;
    if table.contains_key("node") {
        return Config::parse(text)?
            .proxy
            .ok_or_else(|| invalid("proxy", "this node config has no [proxy] section"));
    }
    crate::address::proxy::config::ProxyConfig::parse(text)
}

impl Config {
    /// Reads, parses and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        load_with(path, Config::parse)
    }

    /// Parses and validates config text.
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let mut config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: PathBuf::from("<config>"),
            // The parser quotes the offending line and values: never a secret.
            message: redact(text, e.to_string().trim()),
        })?;
        config.validate()?;
        config.api.resolve()?;
        config.tls.check(&config.node.id)?;
        if let Some(store) = config.store.as_mut() {
            store.resolve(&config.tls)?;
        }
        config.api.check(config.me().admin, &config.tls)?;
        if let Some(p) = &mut config.proxy {
            p.resolve(config.api.resolved_token.as_deref())?;
        }
        Ok(config)
    }

    /// Checks everything serde cannot: names, cross references, timing relations.
    pub fn validate(&self) -> Result<(), ConfigError> {
        validate_name("node.id", &self.node.id)?;
        self.tls.validate()?;
        if self.node.data_dir.as_os_str().is_empty() {
            return Err(invalid("node.data-dir", "must not be empty"));
        }
        self.node.validate_resources()?;
        if self.members.is_empty() {
            return Err(invalid("member", "at least one [[member]] is required"));
        }
        let mut ids = BTreeSet::new();
        let mut raft_ids = BTreeMap::new();
        let mut addrs = BTreeSet::new();
        for (i, m) in self.members.iter().enumerate() {
            let key = format!("member[{i}]");
            check_member_at(&key, m)?;
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
            for a in &m.addresses {
                if !addrs.insert(*a) {
                    return Err(invalid(format!("{key}.addresses"), format!("{a} is used twice")));
                }
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
        if let Some(listen) = &self.node.listen {
            if listen.len() != me.addresses.len() {
                return Err(invalid(
                    "node.listen",
                    format!(
                        "has {} addresses but this member has {} paths; give one per path",
                        listen.len(),
                        me.addresses.len()
                    ),
                ));
            }
        }
        let voters = self.members.len();
        // A joining node's list is itself and a contact, not the voters.
        if voters.is_multiple_of(2) && !self.node.join {
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
        at_most(
            "timing.heartbeat-interval",
            t.heartbeat_interval,
            limits::HEARTBEAT,
        )?;
        at_most(
            "timing.failure-timeout",
            t.failure_timeout,
            limits::FAILURE_TIMEOUT,
        )?;
        if t.lease < t.heartbeat_interval.saturating_mul(3) {
            return Err(invalid(
                "timing.lease",
                "must be at least three heartbeat intervals, or one late renewal demotes the active node",
            ));
        }
        if t.failure_timeout < t.heartbeat_interval.saturating_mul(2) {
            return Err(invalid(
                "timing.failure-timeout",
                "must be at least two heartbeat intervals, or one lost heartbeat causes a failover",
            ));
        }
        // The coordinator waits for a deposed node's lease before promoting a successor: a
        // lease longer than the failure timeout adds to every failover (operator guide), and
        // a huge one stopped a node from ever becoming active without a word.
        if t.lease > t.failure_timeout {
            return Err(invalid(
                "timing.lease",
                format!(
                    "must not exceed timing.failure-timeout ({}), or the lease adds to every failover",
                    humantime::format_duration(t.failure_timeout)
                ),
            ));
        }
        if t.promote_timeout.is_zero() {
            return Err(invalid("timing.promote-timeout", "must be greater than 0"));
        }
        at_most(
            "timing.promote-timeout",
            t.promote_timeout,
            limits::PROMOTE_TIMEOUT,
        )?;
        if t.max_lag > limits::MAX_LAG {
            return Err(invalid(
                "timing.max-lag",
                format!("must be at most {}", limits::MAX_LAG),
            ));
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
            at_most("service.stop-grace", s.stop_grace, limits::HOOK)?;
            at_most("service.restart-backoff-min", s.restart_backoff_min, limits::HOOK)?;
            at_most("service.restart-backoff-max", s.restart_backoff_max, limits::HOOK)?;
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
            at_most(&format!("{key}.interval"), c.interval, limits::HOOK)?;
            at_most(&format!("{key}.timeout"), c.timeout, limits::HOOK)?;
            count_at_most(&format!("{key}.rise"), c.rise.into(), limits::COUNT)?;
            count_at_most(&format!("{key}.fall"), c.fall.into(), limits::COUNT)?;
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
        if let Some(st) = &self.store {
            if me.kind == NodeKind::Witness {
                return Err(invalid("store", "a witness serves no store; remove [store]"));
            }
            if st.listen.port() == 0 {
                return Err(invalid("store.listen", "port 0 is not allowed"));
            }
            if st.max_clients == 0 {
                return Err(invalid("store.max-clients", "must be at least 1"));
            }
            if st.max_request_size < 1024 {
                return Err(invalid("store.max-request-size", "must be at least 1024 bytes"));
            }
            if st.max_request_size > crate::sizes::MAX_REQUEST_SIZE {
                return Err(invalid(
                    "store.max-request-size",
                    format!(
                        "must be at most {} bytes (the peer frame limit less room for framing)",
                        crate::sizes::MAX_REQUEST_SIZE
                    ),
                ));
            }
            if st.client_output_buffer_limit < 64 * 1024 {
                return Err(invalid(
                    "store.client-output-buffer-limit",
                    "must be at least 65536 bytes",
                ));
            }
            at_most("store.retry-for", st.retry_for, limits::HOOK)?;
            if st.client_buffer_budget < 1024 * 1024 {
                return Err(invalid(
                    "store.client-buffer-budget",
                    "must be at least 1048576 bytes",
                ));
            }
            if st.requirepass.as_deref() == Some("") {
                return Err(invalid(
                    "store.requirepass",
                    "must not be empty (omit it for no password)",
                ));
            }
        }
        self.drill.validate()?;
        if self.events.retention == 0 || self.events.retention > 1_000_000 {
            return Err(invalid("events.retention", "must be between 1 and 1000000"));
        }
        self.backup.validate()?;
        for (i, url) in self.alarms.webhook.iter().enumerate() {
            let ok = url
                .parse::<hyper::Uri>()
                .ok()
                .is_some_and(|u| u.scheme_str() == Some("http") && u.authority().is_some());
            if !ok {
                return Err(invalid(
                    format!("alarms.webhook[{i}]"),
                    format!("`{url}` is not an http://host:port/path URL"),
                ));
            }
        }
        if self.alarms.exec.as_deref().is_some_and(|c| c.trim().is_empty()) {
            return Err(invalid("alarms.exec", "must not be empty"));
        }
        if self.alarms.attempts == 0 {
            return Err(invalid("alarms.attempts", "must be at least 1"));
        }
        if self.alarms.timeout.is_zero() {
            return Err(invalid("alarms.timeout", "must be greater than 0"));
        }
        count_at_most(
            "alarms.attempts",
            self.alarms.attempts.into(),
            limits::ALARM_ATTEMPTS,
        )?;
        at_most("alarms.backoff", self.alarms.backoff, limits::HOOK)?;
        at_most("alarms.timeout", self.alarms.timeout, limits::HOOK)?;
        if self.api.header_read_timeout < Duration::from_millis(10) {
            return Err(invalid("api.header-read-timeout", "must be at least 10ms"));
        }
        at_most(
            "api.header-read-timeout",
            self.api.header_read_timeout,
            limits::HOOK,
        )?;
        if self.api.max_connections == 0 {
            return Err(invalid("api.max-connections", "must be at least 1"));
        }
        count_at_most(
            "api.max-connections",
            self.api.max_connections as u64,
            limits::API_CONNECTIONS,
        )?;
        at_most("failback.hold-down", self.failback.hold_down, limits::DAY)?;
        if let Some(a) = &self.address {
            if me.kind == NodeKind::Witness {
                return Err(invalid(
                    "address",
                    "a witness never holds the floating address; remove [address]",
                ));
            }
            a.vip
                .parse::<crate::address::vip::Vip>()
                .map_err(|reason| invalid("address.vip", reason))?;
            let name_ok = !a.interface.is_empty()
                && a.interface.len() < 16
                && a.interface != "."
                && a.interface != ".."
                && !a
                    .interface
                    .bytes()
                    .any(|b| b == b'/' || b == b':' || b.is_ascii_whitespace() || b == 0);
            if !name_ok {
                return Err(invalid(
                    "address.interface",
                    format!(
                        "{:?} is not an interface name (1-15 characters, no '/', ':' or spaces)",
                        a.interface
                    ),
                ));
            }
            if a.garp_count > 100 {
                return Err(invalid("address.garp-count", "must be at most 100"));
            }
            if a.garp_interval.is_zero() {
                return Err(invalid("address.garp-interval", "must be greater than 0"));
            }
            if a.garp_interval > Duration::from_secs(10) {
                return Err(invalid("address.garp-interval", "must be at most 10s"));
            }
            if !a.garp_refresh.is_zero() && a.garp_refresh < Duration::from_millis(100) {
                return Err(invalid(
                    "address.garp-refresh",
                    "must be 0 (off) or at least 100ms",
                ));
            }
            at_most("address.garp-refresh", a.garp_refresh, limits::HOOK)?;
        }
        if let Some(p) = &self.proxy {
            p.validate()?;
        }
        if self.hooks.timeout.is_zero() {
            return Err(invalid("hooks.timeout", "must be greater than 0"));
        }
        at_most("hooks.timeout", self.hooks.timeout, limits::HOOK)?;
        if me.kind == NodeKind::Data && self.timing.promote_timeout < self.hooks.timeout.saturating_mul(2) {
            return Err(invalid(
                "timing.promote-timeout",
                "must cover on-fence and on-promote: at least twice hooks.timeout",
            ));
        }
        self.check_own_ports(me)?;
        Ok(())
    }

    /// Two of this node's own listeners on one port (the same IP, or either on a wildcard
    /// address) would fail only at start-up, after the cluster counted on the node.
    fn check_own_ports(&self, me: &Member) -> Result<(), ConfigError> {
        let index = self.members.iter().position(|m| m.id == me.id).unwrap_or(0);
        let mut own: Vec<(String, SocketAddr)> = Vec::new();
        match &self.node.listen {
            Some(listen) => own.extend(
                listen
                    .iter()
                    .enumerate()
                    .map(|(i, a)| (format!("node.listen[{i}]"), *a)),
            ),
            None => own.extend(
                me.addresses
                    .iter()
                    .enumerate()
                    .map(|(i, a)| (format!("member[{index}].addresses[{i}]"), *a)),
            ),
        }
        own.push((format!("member[{index}].admin"), me.admin));
        if let Some(st) = &self.store {
            own.push(("store.listen".into(), st.listen));
        }
        if let Some(p) = &self.proxy {
            if let Some(a) = p.admin {
                own.push(("proxy.admin".into(), a));
            }
            for (i, l) in p.listeners.iter().enumerate() {
                own.push((format!("proxy.listener[{i}].listen"), l.listen));
            }
        }
        for (i, (key, addr)) in own.iter().enumerate() {
            if addr.port() == 0 {
                continue;
            }
            if let Some((other, _)) = own[..i].iter().find(|(_, a)| ports_clash(*a, *addr)) {
                return Err(invalid(
                    key.clone(),
                    format!("{addr} clashes with `{other}` (the same port on this node)"),
                ));
            }
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

/// Whether two listening addresses take the same port on this host: the same IP, or either a
/// wildcard (`0.0.0.0`, `::`).
fn ports_clash(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() == b.port() && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}

/// Checks a member name as `[[member]] id` would.
pub fn validate_member_name(name: &str) -> Result<(), ConfigError> {
    validate_name("member id", name)
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
/// Checks one member on its own (name, addresses, site), as a `[[member]]` or as the member
/// of `standin member add`.
pub fn check_member(m: &Member) -> Result<(), ConfigError> {
    check_member_at("member", m)
}

fn check_member_at(key: &str, m: &Member) -> Result<(), ConfigError> {
    validate_name(&format!("{key}.id"), &m.id)?;
    if m.addresses.is_empty() {
        return Err(invalid(
            format!("{key}.addresses"),
            "at least one address is required",
        ));
    }
    if m.addresses.len() > MAX_PATHS {
        return Err(invalid(
            format!("{key}.addresses"),
            format!("at most {MAX_PATHS} paths"),
        ));
    }
    if m.addresses.iter().any(|a| a.port() == 0) {
        return Err(invalid(format!("{key}.addresses"), "port 0 is not allowed"));
    }
    if m.admin.port() == 0 {
        return Err(invalid(format!("{key}.admin"), "port 0 is not allowed"));
    }
    if let Some(site) = &m.site {
        validate_name(&format!("{key}.site"), site)?;
    }
    Ok(())
}

/// Most heartbeat paths one member may have.
pub const MAX_PATHS: usize = 8;

pub fn raft_id(name: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    // Raft reserves nothing, but keep 0 free so "no node" is never a valid id.
    h.max(1)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A complete 3-node cluster as seen from data node `a`: two data nodes and a witness,
    /// two cluster addresses each, a service, one check of every kind, hooks and failback.
    /// `disk-low-warning` defaults to twice `min-free-disk` and must come before it;
    /// `memory-warning` is off by default and refuses a value that is surely not in bytes.
    #[test]
    fn disk_and_memory_warnings_name_their_key() {
        let with = |extra: &str| {
            FULL.replace(
                "data-dir = \"/var/lib/standin\"\n",
                &format!("data-dir = \"/var/lib/standin\"\n{extra}\n"),
            )
        };
        let c = Config::parse(&with("")).expect("defaults");
        assert_eq!(c.node.disk_low_warning(), 2 * c.node.min_free_disk);
        assert_eq!(c.node.memory_warning, None);
        // Unset, they leave the effective config (and its digest) as it was before them.
        let effective = c.redacted_json().to_string();
        assert!(
            !effective.contains("disk-low-warning") && !effective.contains("memory-warning"),
            "{effective}"
        );
        let c = Config::parse(&with("min-free-disk = 0")).expect("refusal off");
        assert_eq!(c.node.disk_low_warning(), 0);
        let c = Config::parse(&with("disk-low-warning = 0")).expect("warning off");
        assert_eq!(c.node.disk_low_warning(), 0);
        let c =
            Config::parse(&with("disk-low-warning = 1073741824\nmemory-warning = 536870912")).expect("set");
        assert_eq!(
            (c.node.disk_low_warning(), c.node.memory_warning),
            (1 << 30, Some(1 << 29))
        );
        for (extra, key) in [
            ("disk-low-warning = 1000", "node.disk-low-warning"),
            (
                "min-free-disk = 100\ndisk-low-warning = 100",
                "node.disk-low-warning",
            ),
            ("disk-low-warning = -1", "disk-low-warning"),
            ("memory-warning = 512", "node.memory-warning"),
            ("memory-warning = \"lots\"", "memory-warning"),
        ] {
            match Config::parse(&with(extra)) {
                Err(ConfigError::Invalid { key: k, reason }) => assert_eq!(k, key, "{reason}"),
                Err(e) => assert!(e.to_string().contains(key), "{extra}: {e}"),
                Ok(_) => panic!("{extra} accepted"),
            }
        }
    }

    const FULL: &str = r#"
[tls]
insecure = true

[node]
id = "a"
data-dir = "/var/lib/standin"

[[member]]
id = "a"
kind = "data"
priority = 100
addresses = ["10.0.0.1:7100", "10.1.0.1:7100"]
admin = "10.0.0.1:7180"
service-address = "10.0.0.1:6379"
store-address = "10.0.0.1:6380"

[[member]]
id = "b"
kind = "data"
priority = 50
addresses = ["10.0.0.2:7100", "10.1.0.2:7100"]
admin = "10.0.0.2:7180"

[[member]]
id = "w"
kind = "witness"
addresses = ["10.0.0.3:7100", "10.1.0.3:7100"]
admin = "10.0.0.3:7180"

[timing]
heartbeat-interval = "50ms"
failure-timeout = "250ms"
lease = "200ms"
promote-timeout = "6s"
max-lag = 16

[service]
command = "/usr/bin/redis-server"
args = ["--port", "6379"]
env = { REDIS_LOG = "verbose" }
workdir = "/srv/redis"
mode = "warm"
stop-grace = "2s"
restart-backoff-min = "50ms"
restart-backoff-max = "1m"

[[check]]
name = "http-ok"
kind = "http"
url = "http://127.0.0.1:8080/health"
status = 204
body = "ok"
interval = "100ms"
timeout = "80ms"
rise = 3
fall = 1

[[check]]
name = "port"
kind = "tcp"
address = "127.0.0.1:6379"

[[check]]
name = "ping"
kind = "exec"
command = "redis-cli ping"

[hooks]
on-promote = "/etc/standin/promote.sh"
on-demote = "/etc/standin/demote.sh"
on-fence = "/etc/standin/fence.sh"
timeout = "3s"

[failback]
mode = "auto"
hold-down = "45s"

[address]
vip = "10.0.0.100/24"
interface = "eth0"
garp-count = 5
garp-interval = "50ms"

# Last, so that tests can append [api] keys. The admin API is on 10.0.0.1 without a token.
[api]
insecure-open = true
"#;

    /// The smallest valid config: only the required keys, every section with defaults omitted
    /// (the benchmark profiles' test builds on it too).
    pub(crate) const MINIMAL: &str = r#"
[tls]
insecure = true

[node]
id = "a"
data-dir = "/tmp/a"

[[member]]
id = "a"
kind = "data"
addresses = ["127.0.0.1:7101"]
admin = "127.0.0.1:7181"

[[member]]
id = "b"
kind = "data"
addresses = ["127.0.0.1:7102"]
admin = "127.0.0.1:7182"

[[member]]
id = "w"
kind = "witness"
addresses = ["127.0.0.1:7103"]
admin = "127.0.0.1:7183"

[service]
command = "sleep"
args = ["1000"]
"#;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// Parses `text` and returns the error message, failing the test if it parsed.
    fn err(text: &str) -> String {
        match Config::parse(text) {
            Ok(_) => panic!("config was accepted:\n{text}"),
            Err(e) => e.to_string(),
        }
    }

    /// Asserts that `text` is refused by `validate()` for `key`.
    fn assert_invalid(text: &str, key: &str) {
        match Config::parse(text) {
            Ok(_) => panic!("config was accepted, expected an error for `{key}`:\n{text}"),
            Err(ConfigError::Invalid { key: k, reason }) => {
                assert_eq!(k, key, "wrong key (reason: {reason})")
            }
            Err(e) => panic!("expected a validation error for `{key}`, got: {e}"),
        }
    }

    /// The store's request size limit follows from the peer frame limit: the default is the
    /// largest allowed, and a larger value is refused naming the key (it was 512 MiB by
    /// default, above the 64 MiB frame limit).
    #[test]
    fn store_request_size_follows_the_frame_limit() {
        let with_store = |extra: &str| format!("{FULL}\n[store]\nlisten = \"127.0.0.1:6390\"\n{extra}");
        let c = Config::parse(&with_store("")).expect("valid");
        let st = c.store.expect("store section");
        assert_eq!(st.max_request_size, crate::sizes::DEFAULT_MAX_REQUEST_SIZE);
        assert!(
            st.max_request_size + 2 * 1024 * 1024 <= crate::cluster::transport::MAX_FRAME as u64,
            "a request must leave room for framing"
        );
        assert_invalid(
            &with_store(&format!(
                "max-request-size = {}\n",
                crate::sizes::MAX_REQUEST_SIZE + 1
            )),
            "store.max-request-size",
        );
        assert_invalid(
            &with_store("max-request-size = 536870912\n"),
            "store.max-request-size",
        );
        assert_invalid(
            &with_store("client-output-buffer-limit = 10\n"),
            "store.client-output-buffer-limit",
        );
        assert_invalid(
            &with_store("client-buffer-budget = 10\n"),
            "store.client-buffer-budget",
        );
    }

    /// `FULL` with one line replaced (the line must occur exactly once).
    fn full_with(old: &str, new: &str) -> String {
        assert_eq!(FULL.matches(old).count(), 1, "{old:?} must occur once in FULL");
        FULL.replacen(old, new, 1)
    }

    /// `FULL` with `line` inserted right after the first occurrence of `after`.
    fn full_insert(after: &str, line: &str) -> String {
        let at = FULL.find(after).expect("anchor present") + after.len();
        format!("{}\n{line}{}", &FULL[..at], &FULL[at..])
    }

    #[test]
    fn full_config_parses_with_the_right_values() {
        let c = Config::parse(FULL).expect("valid");
        assert_eq!(c.node.id, "a");
        assert_eq!(c.node.data_dir, PathBuf::from("/var/lib/standin"));
        assert_eq!(c.members.len(), 3);
        let a = c.me();
        assert_eq!(a.id, "a");
        assert_eq!(a.kind, NodeKind::Data);
        assert_eq!(a.priority, 100);
        assert_eq!(
            a.addresses,
            vec![
                "10.0.0.1:7100".parse::<SocketAddr>().unwrap(),
                "10.1.0.1:7100".parse().unwrap()
            ]
        );
        assert_eq!(a.admin, "10.0.0.1:7180".parse().unwrap());
        assert_eq!(a.service_address, Some("10.0.0.1:6379".parse().unwrap()));
        assert_eq!(a.store_address, Some("10.0.0.1:6380".parse().unwrap()));
        let b = c.member("b").unwrap();
        assert_eq!(
            (b.kind, b.priority, b.service_address),
            (NodeKind::Data, 50, None)
        );
        assert_eq!(b.addresses.len(), 2);
        let w = c.member("w").unwrap();
        assert_eq!(w.kind, NodeKind::Witness);
        assert_eq!(w.priority, 100, "default priority");
        assert_eq!(c.member_by_raft_id(raft_id("w")).unwrap().id, "w");

        assert_eq!(
            c.timing,
            Timing {
                heartbeat_interval: ms(50),
                failure_timeout: ms(250),
                lease: ms(200),
                promote_timeout: Duration::from_secs(6),
                max_lag: 16,
            }
        );

        let s = c.service.as_ref().unwrap();
        assert_eq!(s.command, "/usr/bin/redis-server");
        assert_eq!(s.args, vec!["--port", "6379"]);
        assert_eq!(s.env.get("REDIS_LOG").map(String::as_str), Some("verbose"));
        assert_eq!(s.workdir, Some(PathBuf::from("/srv/redis")));
        assert_eq!(s.mode, ServiceMode::Warm);
        assert_eq!(s.stop_grace, Duration::from_secs(2));
        assert_eq!(s.restart_backoff_min, ms(50));
        assert_eq!(s.restart_backoff_max, Duration::from_secs(60));

        assert_eq!(c.checks.len(), 3);
        let http = &c.checks[0];
        assert_eq!(http.name, "http-ok");
        assert_eq!(
            http.kind,
            CheckKind::Http {
                url: "http://127.0.0.1:8080/health".into(),
                status: 204,
                body: Some("ok".into()),
            }
        );
        assert_eq!(
            (http.interval, http.timeout, http.rise, http.fall),
            (ms(100), ms(80), 3, 1)
        );
        let tcp = &c.checks[1];
        assert_eq!(tcp.name, "port");
        assert_eq!(
            tcp.kind,
            CheckKind::Tcp {
                address: "127.0.0.1:6379".parse().unwrap()
            }
        );
        assert_eq!(
            (tcp.interval, tcp.timeout, tcp.rise, tcp.fall),
            (ms(200), ms(500), 2, 2)
        );
        assert_eq!(
            c.checks[2].kind,
            CheckKind::Exec {
                command: "redis-cli ping".into()
            }
        );

        assert_eq!(
            c.hooks,
            Hooks {
                on_promote: Some("/etc/standin/promote.sh".into()),
                on_demote: Some("/etc/standin/demote.sh".into()),
                on_fence: Some("/etc/standin/fence.sh".into()),
                timeout: Duration::from_secs(3),
            }
        );
        assert_eq!(
            c.failback,
            Failback {
                mode: FailbackMode::Auto,
                hold_down: Duration::from_secs(45),
            }
        );
        let a = c.address.as_ref().unwrap();
        assert_eq!(a.vip().to_string(), "10.0.0.100/24");
        assert_eq!(
            (a.interface.as_str(), a.garp_count, a.garp_interval),
            ("eth0", 5, ms(50))
        );
    }

    #[test]
    fn address_defaults_and_zero_garps() {
        let c = Config::parse(&format!(
            "{MINIMAL}\n[address]\nvip = \"192.168.7.10/24\"\ninterface = \"bond0\"\n"
        ))
        .expect("valid");
        let a = c.address.unwrap();
        assert_eq!((a.garp_count, a.garp_interval), (3, ms(100)));
        let c = Config::parse(&format!(
            "{MINIMAL}\n[address]\nvip = \"192.168.7.10/24\"\ninterface = \"bond0\"\ngarp-count = 0\n"
        ))
        .expect("valid");
        assert_eq!(c.address.unwrap().garp_count, 0);
        assert!(Config::parse(MINIMAL).unwrap().address.is_none());
    }

    #[test]
    fn address_needs_vip_and_interface() {
        for missing in ["vip", "interface"] {
            let text = full_with(
                if missing == "vip" {
                    "vip = \"10.0.0.100/24\""
                } else {
                    "interface = \"eth0\""
                },
                "",
            );
            let e = err(&text);
            assert!(e.contains(&format!("missing field `{missing}`")), "{e}");
        }
    }

    #[test]
    fn the_same_cluster_validates_on_the_witness() {
        // The witness's file: same members, its own id, no [service] and no [[check]].
        let end = FULL.find("[service]").unwrap();
        let text = FULL[..end].replace("id = \"a\"\ndata-dir", "id = \"w\"\ndata-dir")
            + "\n[api]\ninsecure-open = true\n";
        let c = Config::parse(&text).expect("valid witness config");
        assert_eq!(c.me().kind, NodeKind::Witness);
        assert!(c.service.is_none() && c.checks.is_empty());
    }

    #[test]
    fn defaults_apply_when_sections_are_omitted() {
        let c = Config::parse(MINIMAL).expect("valid");
        assert_eq!(c.timing, Timing::default());
        assert_eq!(c.timing.heartbeat_interval, ms(100));
        assert_eq!(c.timing.failure_timeout, ms(500));
        assert_eq!(c.timing.lease, ms(400));
        assert_eq!(c.timing.promote_timeout, Duration::from_secs(10));
        assert_eq!(c.timing.max_lag, 64);
        assert!(c.members.iter().all(|m| m.priority == 100));
        assert!(c.members.iter().all(|m| m.service_address.is_none()));
        let s = c.service.as_ref().unwrap();
        assert!(s.env.is_empty() && s.workdir.is_none());
        assert_eq!(s.mode, ServiceMode::Hot);
        assert_eq!(s.stop_grace, Duration::from_secs(5));
        assert_eq!(s.restart_backoff_min, ms(100));
        assert_eq!(s.restart_backoff_max, Duration::from_secs(10));
        assert!(c.checks.is_empty());
        assert_eq!(c.hooks, Hooks::default());
        assert_eq!(c.hooks.timeout, Duration::from_secs(5));
        assert!(c.hooks.on_promote.is_none() && c.hooks.on_fence.is_none());
        assert_eq!(c.failback, Failback::default());
        assert_eq!(c.failback.mode, FailbackMode::Manual);
        assert_eq!(c.failback.hold_down, Duration::from_secs(30));
    }

    #[test]
    fn partial_sections_keep_defaults_for_omitted_keys() {
        let text = format!("{MINIMAL}\n[timing]\nlease = \"450ms\"\n\n[failback]\nmode = \"auto\"\n");
        let c = Config::parse(&text).expect("valid");
        assert_eq!(c.timing.lease, ms(450));
        assert_eq!(c.timing.failure_timeout, ms(500));
        assert_eq!(c.failback.hold_down, Duration::from_secs(30));
    }

    #[test]
    fn unknown_keys_are_rejected_everywhere() {
        let cases = [
            ("top level", full_insert("", "colour = \"red\"")),
            (
                "[node]",
                full_insert("data-dir = \"/var/lib/standin\"", "colour = \"red\""),
            ),
            ("[[member]]", full_insert("priority = 50", "colour = \"red\"")),
            ("[timing]", full_insert("max-lag = 16", "colour = \"red\"")),
            ("[service]", full_insert("mode = \"warm\"", "colour = \"red\"")),
            ("[[check]] http", full_insert("rise = 3", "colour = \"red\"")),
            (
                "[[check]] tcp",
                full_insert("address = \"127.0.0.1:6379\"", "colour = \"red\""),
            ),
            ("[hooks]", full_insert("timeout = \"3s\"", "colour = \"red\"")),
            (
                "[failback]",
                full_insert("hold-down = \"45s\"", "colour = \"red\""),
            ),
            ("[address]", full_insert("garp-count = 5", "colour = \"red\"")),
            // A key of another check kind is unknown for this kind.
            (
                "[[check]] tcp with url",
                full_insert("address = \"127.0.0.1:6379\"", "url = \"http://x/\""),
            ),
            // snake_case spelling of a kebab-case key.
            ("snake_case key", full_with("max-lag = 16", "max_lag = 16")),
        ];
        for (place, text) in cases {
            let e = err(&text);
            let key = if place == "[[check]] tcp with url" {
                "url"
            } else if place == "snake_case key" {
                "max_lag"
            } else {
                "colour"
            };
            // The message itself names the key (not only the quoted source line).
            let named = e.contains(&format!("unknown field `{key}`"))
                || e.contains(&format!("`{key}` does not apply"));
            assert!(named, "{place}: error does not name `{key}`: {e}");
        }
    }

    #[test]
    fn type_errors_are_parse_errors() {
        let e = err(&full_with("priority = 50", "priority = \"high\""));
        assert!(e.contains("priority"), "{e}");
        let e = err(&full_with("kind = \"witness\"", "kind = \"observer\""));
        assert!(e.contains("observer"), "{e}");
        let e = err(&full_with("kind = \"exec\"", "kind = \"smtp\""));
        assert!(e.contains("smtp"), "{e}");
        let e = err(&full_with(
            "addresses = [\"10.0.0.2:7100\", \"10.1.0.2:7100\"]",
            "addresses = [\"nowhere\"]",
        ));
        assert!(e.contains("addresses") || e.contains("address"), "{e}");
    }

    #[test]
    fn bad_durations_are_rejected_naming_the_key() {
        // toml points at the offending line and quotes it, so the key is in the message.
        for (old, new, expected) in [
            ("lease = \"200ms\"", "lease = \"fast\"", "expected a duration"),
            (
                "hold-down = \"45s\"",
                "hold-down = \"fast\"",
                "expected a duration",
            ),
            (
                "stop-grace = \"2s\"",
                "stop-grace = \"fast\"",
                "expected a duration",
            ),
            (
                "interval = \"100ms\"",
                "interval = \"fast\"",
                "expected a duration",
            ),
            ("lease = \"200ms\"", "lease = 200", "invalid type"),
        ] {
            let e = err(&full_with(old, new));
            assert!(
                e.contains(&format!("| {new}")) && e.contains(expected),
                "{new}: error does not show the key: {e}"
            );
        }
    }

    #[test]
    fn api_access_settings_are_checked_and_the_token_file_is_read() {
        let with = |api: &str| format!("{FULL}\n{api}\n");
        assert!(err(&with("token = \"short\"")).contains("`api.token`"));
        assert!(err(&with("token = \"has a space in it 0123\"")).contains("`api.token`"));
        assert!(err(&with("read-open = false")).contains("`api.read-open`"));
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        assert!(err(&with(&format!("token-file = \"{}\"", file.display()))).contains("`api.token-file`"));
        std::fs::write(&file, "0123456789abcdef-from-file\n").unwrap();
        set_mode(&file, 0o600);
        let both = with(&format!(
            "token = \"0123456789abcdef\"\ntoken-file = \"{}\"",
            file.display()
        ));
        assert!(err(&both).contains("`api.token-file`"));
        let c = Config::parse(&with(&format!(
            "token-file = \"{}\"\nread-open = false",
            file.display()
        )))
        .unwrap();
        assert_eq!(
            c.api.resolved_token.as_deref(),
            Some("0123456789abcdef-from-file")
        );
        assert!(!c.api.read_open);
        // Without a token: open, no token (FULL says insecure-open for its 10.0.0.1 admin).
        let c = Config::parse(FULL).unwrap();
        assert!(c.api.resolved_token.is_none() && c.api.read_open && c.api.insecure_open);
    }

    /// Issue 13: an admin API on a non-loopback address without a token is refused (exit 64
    /// naming `api.token`, with how to set one) unless `insecure-open`; loopback is fine.
    #[test]
    fn an_open_admin_api_needs_loopback_or_insecure_open() {
        let open = FULL.replace("insecure-open = true", "");
        let e = err(&open);
        assert!(e.contains("`api.token`") && e.contains("api.token-file"), "{e}");
        assert!(e.contains("10.0.0.1:7180"), "{e}");
        Config::parse(&format!(
            "{open}
token = \"0123456789abcdef\"\n"
        ))
        .expect("a token");
        Config::parse(MINIMAL).expect("loopback admin without a token");
        let wild = MINIMAL.replace("admin = \"127.0.0.1:7181\"", "admin = \"0.0.0.0:7181\"");
        assert!(err(&wild).contains("`api.token`"));
        Config::parse(&format!("{wild}\n[api]\ninsecure-open = true\n")).expect("insecure-open");
    }

    /// A proxy inside a node's config sends the node's `[api]` token unless it has its own.
    #[test]
    fn a_proxy_in_a_node_config_sends_the_node_token_by_default() {
        let text = format!(
            "{MINIMAL}\n[api]\ntoken = \"node-token-0123456789\"\n\
             [proxy]\ncluster = [\"127.0.0.1:7181\"]\nadmin = \"127.0.0.1:7190\"\n"
        );
        let c = Config::parse(&text).expect("valid");
        let p = c.proxy.expect("proxy");
        assert_eq!(p.resolved_api_token.as_deref(), Some("node-token-0123456789"));
        assert!(p.resolved_token.is_none());
        let own = text.replace("[proxy]\n", "[proxy]\napi-token = \"proxy-token-0123456789\"\n");
        let p = Config::parse(&own).expect("valid").proxy.expect("proxy");
        assert_eq!(p.resolved_api_token.as_deref(), Some("proxy-token-0123456789"));
        let open = text.replace("admin = \"127.0.0.1:7190\"", "admin = \"0.0.0.0:7190\"");
        assert!(err(&open).contains("`proxy.token`"));
    }

    /// `[api] tls`: own files or the node's certificate; not with `tls.insecure` alone; the
    /// files are loaded and a broken one is named.
    #[test]
    fn api_tls_settings_are_checked() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = crate::tls::init_ca(&dir.path().join("ca"), "test", Duration::from_secs(3600)).expect("ca");
        let issued = crate::tls::issue_files(
            &dir.path().join("ca"),
            dir.path(),
            "a",
            &[],
            Duration::from_secs(3600),
        )
        .expect("issue");
        let e = err(&format!("{MINIMAL}\n[api]\ntls = true\n"));
        assert!(e.contains("`api.tls`"), "{e}");
        let own = format!(
            "{MINIMAL}\n[api]\ntls = true\ntls-cert = \"{}\"\ntls-key = \"{}\"\n",
            issued.cert.display(),
            issued.key.display()
        );
        let c = Config::parse(&own).expect("own files");
        assert_eq!(c.api.scheme(), "https");
        assert_eq!(c.api.tls_files(&c.tls).map(|f| f.cert), Some(issued.cert.clone()));
        assert!(err(&own.replace("tls = true\n", "")).contains("`api.tls`"));
        let no_key = own
            .lines()
            .filter(|l| !l.starts_with("tls-key"))
            .collect::<Vec<_>>()
            .join("\n");
        assert!(err(&no_key).contains("`api.tls-key`"));
        // A key others can read is refused, naming the key.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&issued.key, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        assert!(err(&own).contains("`api.tls-key`"));
        std::fs::set_permissions(&issued.key, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        // The node's own certificate, without the CA (no client certificates for HTTPS).
        let node = MINIMAL.replace(
            "[tls]\ninsecure = true",
            &format!(
                "[tls]\nca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"",
                ca.cert.display(),
                issued.cert.display(),
                issued.key.display()
            ),
        );
        let c = Config::parse(&format!("{node}\n[api]\ntls = true\n")).expect("node certificate");
        let files = c.api.tls_files(&c.tls).expect("files");
        assert_eq!((files.ca, files.cert), (None, issued.cert.clone()));
    }

    fn set_mode(path: &Path, mode: u32) {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    /// Issue 13: a token or password file other users can read is refused (as ssh refuses a
    /// key), naming the key and the fix; a private one is read (first line).
    #[test]
    fn secret_files_readable_by_other_users_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("secret");
        std::fs::write(&file, "0123456789abcdef-secret\nsecond line\n").unwrap();
        set_mode(&file, 0o644);
        let api = format!("{FULL}\ntoken-file = \"{}\"\n", file.display());
        let store = format!(
            "{FULL}\n[store]\nlisten = \"127.0.0.1:6390\"\nrequirepass-file = \"{}\"\n",
            file.display()
        );
        for (text, key) in [(&api, "api.token-file"), (&store, "store.requirepass-file")] {
            let e = err(text);
            assert!(e.contains(&format!("`{key}`")) && e.contains("chmod 600"), "{e}");
            assert!(!e.contains("0123456789abcdef-secret"), "{e}");
        }
        set_mode(&file, 0o600);
        let c = Config::parse(&api).unwrap();
        assert_eq!(c.api.resolved_token.as_deref(), Some("0123456789abcdef-secret"));
        let c = Config::parse(&store).unwrap();
        let st = c.store.as_ref().unwrap();
        assert_eq!(
            st.resolved_requirepass.as_deref(),
            Some("0123456789abcdef-secret")
        );
        // Both ways at once is ambiguous.
        assert_invalid(&format!("{store}requirepass = \"x\"\n"), "store.requirepass-file");
        // An inline password is what clients must send.
        let c = Config::parse(&format!(
            "{FULL}\n[store]\nlisten = \"127.0.0.1:6390\"\nrequirepass = \"pw\"\n"
        ))
        .unwrap();
        assert_eq!(c.store.unwrap().resolved_requirepass.as_deref(), Some("pw"));
    }

    /// Issue 13: Redis's protected mode. No password and a non-loopback listen address is
    /// refused, naming `store.requirepass` and how to opt out.
    #[test]
    fn store_protected_mode_needs_a_password_off_loopback() {
        let store = |lines: &str| format!("{FULL}\n[store]\n{lines}\n");
        for listen in ["10.0.0.1:6390", "0.0.0.0:6390", "[::]:6390"] {
            let text = store(&format!("listen = \"{listen}\""));
            assert_invalid(&text, "store.requirepass");
            assert!(err(&text).contains("store.protected-mode = false"));
            Config::parse(&store(&format!("listen = \"{listen}\"\nrequirepass = \"pw\""))).unwrap();
            Config::parse(&store(&format!("listen = \"{listen}\"\nprotected-mode = false"))).unwrap();
        }
        for listen in ["127.0.0.1:6390", "[::1]:6390"] {
            Config::parse(&store(&format!("listen = \"{listen}\""))).unwrap();
        }
    }

    /// Issue 13: `[store] tls` needs a certificate: the node's (`[tls]`), or its own files,
    /// which are loaded and checked like the node's.
    #[test]
    fn store_tls_needs_a_certificate() {
        let store = |lines: &str| format!("{FULL}\n[store]\nlisten = \"127.0.0.1:6390\"\n{lines}\n");
        // FULL runs with `[tls] insecure = true`: no node certificate to reuse.
        assert_invalid(&store("tls = true"), "store.tls");
        let dir = tempfile::tempdir().unwrap();
        let ca = crate::tls::init_ca(&dir.path().join("ca"), "test", Duration::from_secs(3600)).unwrap();
        let (cert, key) = crate::tls::issue(
            &std::fs::read_to_string(&ca.cert).unwrap(),
            &std::fs::read_to_string(&ca.key).unwrap(),
            "a",
            &["127.0.0.1".into()],
            Duration::from_secs(3600),
        )
        .unwrap();
        let (cert_path, key_path) = (dir.path().join("store.pem"), dir.path().join("store.key"));
        std::fs::write(&cert_path, cert).unwrap();
        std::fs::write(&key_path, key).unwrap();
        set_mode(&key_path, 0o600);
        let own = format!(
            "tls-cert = \"{}\"\ntls-key = \"{}\"",
            cert_path.display(),
            key_path.display()
        );
        assert_invalid(
            &store(&format!("tls-cert = \"{}\"", cert_path.display())),
            "store.tls-key",
        );
        assert_invalid(
            &store(&format!("tls-key = \"{}\"", key_path.display())),
            "store.tls-cert",
        );
        assert_invalid(&store(&own), "store.tls-cert");
        let c = Config::parse(&store(&format!("tls = true\n{own}"))).unwrap();
        let files = c.store.as_ref().unwrap().tls_files(&c.tls).unwrap();
        assert_eq!((files.cert, files.key), (cert_path.clone(), key_path.clone()));
        // The files are checked when the config loads: a key others can read is refused.
        set_mode(&key_path, 0o644);
        let e = err(&store(&format!("tls = true\n{own}")));
        assert!(e.contains("`store.tls-key`") && e.contains("chmod 600"), "{e}");
        // Without `tls = true`, nothing is served over TLS.
        set_mode(&key_path, 0o600);
        let c = Config::parse(&store("")).unwrap();
        assert!(c.store.as_ref().unwrap().tls_files(&c.tls).is_none());
    }

    /// Issue 13: the digest published in `config-changed` events never covers secrets: two
    /// configs that differ only in a token or password have the same digest (it used to hash
    /// the token with the rest), and any other change still changes it.
    #[test]
    fn the_config_digest_leaves_secrets_out() {
        let with = |token: &str, pass: &str, retention: u32| {
            Config::parse(&format!(
                "{FULL}\ntoken = \"{token}\"\n[store]\nlisten = \"127.0.0.1:6390\"\nrequirepass = \"{pass}\"\n[events]\nretention = {retention}\n"
            ))
            .unwrap()
            .digest()
        };
        let base = with("0123456789abcdef-one", "pass-one", 1000);
        assert_eq!(base, with("0123456789abcdef-two", "pass-one", 1000));
        assert_eq!(base, with("0123456789abcdef-one", "pass-two", 1000));
        assert_ne!(base, with("0123456789abcdef-one", "pass-one", 1001));
        // The old digest (FNV-1a over the whole JSON) told tokens apart.
        let c = Config::parse(&format!("{FULL}\ntoken = \"0123456789abcdef-one\"\n")).unwrap();
        let whole = format!("{:016x}", raft_id(&serde_json::to_string(&c).unwrap()));
        assert_ne!(c.digest(), whole);
    }

    /// `[proxy] api-token` (the token a proxy inside a node's config sends to the admin APIs)
    /// is a secret too: it was hashed into the digest and left in error messages (the scan
    /// skipped `token` after a `-`).
    #[test]
    fn the_proxy_api_token_is_a_secret_too() {
        let with = |token: &str| {
            format!(
                "{MINIMAL}\n[proxy]\ncluster = [\"127.0.0.1:7181\"]\nadmin = \"127.0.0.1:7190\"\n\
                 api-token = \"{token}\"\n"
            )
        };
        let digest = |t: &str| Config::parse(&with(t)).expect("valid").digest();
        assert_eq!(digest("proxy-token-0123456789"), digest("proxy-token-9876543210"));
        let text = with("proxy-token-0123456789");
        let shown = redact(&text, "line 9: api-token = \"proxy-token-0123456789\" unexpected");
        assert!(!shown.contains("proxy-token-0123456789"), "{shown}");
    }

    /// Issue 13: a config that does not parse is reported without the secrets in it (the
    /// TOML parser quotes the offending line and value).
    #[test]
    fn parse_errors_never_show_secrets() {
        for (bad, secret) in [
            (
                "[store]\nlisten = \"127.0.0.1:6390\"\nrequirepass = \"Hunter2-store-pw\" trailing\n",
                "Hunter2-store-pw",
            ),
            ("[api]\ntoken = 918273645546372819\n", "918273645546372819"),
            (
                "[api]\n\"token\" = 'Hunter2-token-0123456' 7\n",
                "Hunter2-token-0123456",
            ),
            ("[api]\ntoken = \"Hunter2-unterminated\n", "Hunter2-unterminated"),
            (
                "[store]\nlisten = \"127.0.0.1:6390\"\nrequirepass = [\"Hunter2-in-array\"]\n",
                "Hunter2-in-array",
            ),
        ] {
            let text = format!("{FULL}\n{bad}");
            let e = err(&text);
            assert!(
                matches!(Config::parse(&text), Err(ConfigError::Parse { .. })),
                "{e}"
            );
            assert!(!e.contains(secret), "{e}");
        }
        // Loaded from a file, by the node or by `standin proxy` (whose parser quotes the line
        // too).
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, "[proxy]\ntoken = \"Hunter2-proxy-token-01\" junk\n").unwrap();
        for e in [
            Config::load(&path).unwrap_err().to_string(),
            load_proxy(&path).unwrap_err().to_string(),
        ] {
            assert!(e.contains("bad.toml") && e.contains(REDACTED), "{e}");
            assert!(!e.contains("Hunter2-proxy-token-01"), "{e}");
        }
    }

    #[test]
    fn events_and_alarms_settings_are_checked() {
        let with = |t: &str| format!("{FULL}\n{t}\n");
        assert!(err(&with("[events]\nretention = 0")).contains("`events.retention`"));
        assert!(err(&with("[alarms]\nwebhook = [\"ftp://x/\"]")).contains("`alarms.webhook[0]`"));
        assert!(err(&with("[alarms]\nwebhook = [\"http://a:1/\", \"nope\"]")).contains("`alarms.webhook[1]`"));
        assert!(err(&with("[alarms]\nexec = \" \"")).contains("`alarms.exec`"));
        assert!(err(&with("[alarms]\nattempts = 0")).contains("`alarms.attempts`"));
        assert!(err(&with("[alarms]\npager = true")).contains("unknown field"));
        let c = Config::parse(&with(
            "[events]\nretention = 50\n[alarms]\nwebhook = [\"http://127.0.0.1:9/hook\"]\nsyslog = true",
        ))
        .unwrap();
        assert_eq!(c.events.retention, 50);
        assert_eq!(c.alarms.webhook.len(), 1);
        assert!(c.alarms.syslog && c.alarms.attempts == 5);
    }

    #[test]
    fn each_validation_rule_names_its_key() {
        let cases: Vec<(&str, String, &str)> = vec![
            (
                "duplicate member id",
                full_with("id = \"b\"", "id = \"a\""),
                "member[1].id",
            ),
            (
                "node.id not a member",
                full_with("id = \"a\"\ndata-dir", "id = \"x\"\ndata-dir"),
                "node.id",
            ),
            (
                "even number of voters",
                {
                    let start = FULL.find("[[member]]\nid = \"w\"").unwrap();
                    let end = FULL.find("[timing]").unwrap();
                    format!("{}{}", &FULL[..start], &FULL[end..])
                },
                "member",
            ),
            (
                "witness with [service]",
                {
                    let end = FULL.find("[[check]]").unwrap();
                    FULL[..end].replace("id = \"a\"\ndata-dir", "id = \"w\"\ndata-dir")
                },
                "service",
            ),
            (
                "witness with [[check]]",
                {
                    let start = FULL.find("[service]").unwrap();
                    let end = FULL.find("[[check]]").unwrap();
                    format!("{}{}", &FULL[..start], &FULL[end..])
                        .replace("id = \"a\"\ndata-dir", "id = \"w\"\ndata-dir")
                },
                "check",
            ),
            (
                "data node without [service]",
                {
                    let start = FULL.find("[service]").unwrap();
                    let end = FULL.find("[[check]]").unwrap();
                    format!("{}{}", &FULL[..start], &FULL[end..])
                },
                "service",
            ),
            (
                "lease < 3 heartbeats",
                full_with("lease = \"200ms\"", "lease = \"149ms\""),
                "timing.lease",
            ),
            (
                "failure-timeout < 2 heartbeats",
                full_with("failure-timeout = \"250ms\"", "failure-timeout = \"99ms\""),
                "timing.failure-timeout",
            ),
            (
                "heartbeat too fast",
                full_with("heartbeat-interval = \"50ms\"", "heartbeat-interval = \"1ms\""),
                "timing.heartbeat-interval",
            ),
            (
                "promote-timeout 0",
                full_with("promote-timeout = \"6s\"", "promote-timeout = \"0s\""),
                "timing.promote-timeout",
            ),
            (
                "bad characters in node.id",
                full_with("id = \"a\"\ndata-dir", "id = \"A!\"\ndata-dir"),
                "node.id",
            ),
            (
                "bad characters in member id",
                full_with("id = \"b\"", "id = \"b c\""),
                "member[1].id",
            ),
            (
                "member id too long",
                full_with("id = \"b\"", &format!("id = \"{}\"", "b".repeat(33))),
                "member[1].id",
            ),
            (
                "empty check name",
                full_with("name = \"port\"", "name = \"\""),
                "check[1].name",
            ),
            (
                "duplicate check name",
                full_with("name = \"ping\"", "name = \"port\""),
                "check[2].name",
            ),
            (
                "check named process",
                full_with("name = \"port\"", "name = \"process\""),
                "check[1].name",
            ),
            (
                "https url",
                full_with(
                    "url = \"http://127.0.0.1:8080/health\"",
                    "url = \"https://127.0.0.1:8080/health\"",
                ),
                "check[0].url",
            ),
            (
                "bad http status",
                full_with("status = 204", "status = 99"),
                "check[0].status",
            ),
            ("rise 0", full_with("rise = 3", "rise = 0"), "check[0].rise"),
            ("fall 0", full_with("fall = 1", "fall = 0"), "check[0].fall"),
            (
                "check interval 0",
                full_with("interval = \"100ms\"", "interval = \"0s\""),
                "check[0].interval",
            ),
            (
                "empty exec command",
                full_with("command = \"redis-cli ping\"", "command = \" \""),
                "check[2].command",
            ),
            (
                "address used twice",
                full_with("admin = \"10.0.0.2:7180\"", "admin = \"10.0.0.1:7100\""),
                "member[1].admin",
            ),
            (
                "port 0",
                full_with(
                    "addresses = [\"10.0.0.2:7100\", \"10.1.0.2:7100\"]",
                    "addresses = [\"10.0.0.2:0\"]",
                ),
                "member[1].addresses",
            ),
            (
                "no addresses",
                full_with(
                    "addresses = [\"10.0.0.2:7100\", \"10.1.0.2:7100\"]",
                    "addresses = []",
                ),
                "member[1].addresses",
            ),
            (
                "empty service command",
                full_with("command = \"/usr/bin/redis-server\"", "command = \"\""),
                "service.command",
            ),
            (
                "backoff max < min",
                full_with("restart-backoff-max = \"1m\"", "restart-backoff-max = \"10ms\""),
                "service.restart-backoff-max",
            ),
            (
                "hooks timeout 0",
                full_with("timeout = \"3s\"", "timeout = \"0s\""),
                "hooks.timeout",
            ),
            (
                "vip without prefix",
                full_with("vip = \"10.0.0.100/24\"", "vip = \"10.0.0.100\""),
                "address.vip",
            ),
            (
                "vip not IPv4",
                full_with("vip = \"10.0.0.100/24\"", "vip = \"fd00::1/64\""),
                "address.vip",
            ),
            (
                "vip is the network address",
                full_with("vip = \"10.0.0.100/24\"", "vip = \"10.0.0.0/24\""),
                "address.vip",
            ),
            (
                "interface empty",
                full_with("interface = \"eth0\"", "interface = \"\""),
                "address.interface",
            ),
            (
                "interface too long",
                full_with("interface = \"eth0\"", "interface = \"a-very-long-name0\""),
                "address.interface",
            ),
            (
                "garp-count too high",
                full_with("garp-count = 5", "garp-count = 1000"),
                "address.garp-count",
            ),
            (
                "garp-interval 0",
                full_with("garp-interval = \"50ms\"", "garp-interval = \"0s\""),
                "address.garp-interval",
            ),
            (
                "garp-refresh 10ms",
                full_with(
                    "garp-interval = \"50ms\"",
                    "garp-interval = \"50ms\"\ngarp-refresh = \"10ms\"",
                ),
                "address.garp-refresh",
            ),
            (
                "witness with [address]",
                {
                    let start = FULL.find("[service]").unwrap();
                    let end = FULL.find("[address]").unwrap();
                    format!("{}{}", &FULL[..start], &FULL[end..])
                        .replace("id = \"a\"\ndata-dir", "id = \"w\"\ndata-dir")
                },
                "address",
            ),
        ];
        for (rule, text, key) in cases {
            match Config::parse(&text) {
                Ok(_) => panic!("{rule}: config was accepted"),
                Err(ConfigError::Invalid { key: k, reason }) => {
                    assert_eq!(k, key, "{rule}: wrong key (reason: {reason})");
                    let msg = ConfigError::Invalid { key: k, reason }.to_string();
                    assert!(msg.contains(&format!("`{key}`")), "{rule}: {msg}");
                }
                Err(e) => panic!("{rule}: expected a validation error for `{key}`, got: {e}"),
            }
        }
    }

    #[test]
    fn boundary_timings_are_accepted() {
        // Exactly three heartbeats of lease, and a failure timeout equal to the lease.
        let text = full_with("lease = \"200ms\"", "lease = \"150ms\"")
            .replace("failure-timeout = \"250ms\"", "failure-timeout = \"150ms\"");
        let c = Config::parse(&text).expect("valid");
        assert_eq!((c.timing.lease, c.timing.failure_timeout), (ms(150), ms(150)));
        // And every upper bound itself.
        let text = FULL
            .replace("heartbeat-interval = \"50ms\"", "heartbeat-interval = \"10s\"")
            .replace("failure-timeout = \"250ms\"", "failure-timeout = \"60s\"")
            .replace("lease = \"200ms\"", "lease = \"60s\"")
            .replace("promote-timeout = \"6s\"", "promote-timeout = \"2h\"")
            .replace("timeout = \"3s\"", "timeout = \"1h\"")
            .replace("hold-down = \"45s\"", "hold-down = \"1day\"")
            .replace("max-lag = 16", "max-lag = 1000000000");
        let c = Config::parse(&format!(
            "{text}\nheader-read-timeout = \"1h\"\nmax-connections = 65536\n"
        ))
        .expect("the bounds themselves are valid");
        assert_eq!(c.timing.failure_timeout, Duration::from_secs(60));
        assert_eq!(c.api.max_connections, 65_536);
    }

    /// Finding 12 of issue 12: absurd values passed `check-config` (a lease of 2^64-1 s, a
    /// failure timeout of 500000000 years) and derived arithmetic could overflow. Every
    /// duration and count has an upper bound, named in the error.
    #[test]
    fn every_duration_and_count_has_an_upper_bound_naming_its_key() {
        let huge = "\"500000000y\"";
        let cases: Vec<(String, &str)> = vec![
            (
                full_with("heartbeat-interval = \"50ms\"", "heartbeat-interval = \"11s\""),
                "timing.heartbeat-interval",
            ),
            (
                full_with(
                    "failure-timeout = \"250ms\"",
                    &format!("failure-timeout = {huge}"),
                ),
                "timing.failure-timeout",
            ),
            (
                full_with("failure-timeout = \"250ms\"", "failure-timeout = \"61s\""),
                "timing.failure-timeout",
            ),
            (
                full_with("lease = \"200ms\"", "lease = \"18446744073709551615s\""),
                "timing.lease",
            ),
            (
                full_with("lease = \"200ms\"", "lease = \"251ms\""),
                "timing.lease",
            ),
            (
                full_with("promote-timeout = \"6s\"", "promote-timeout = \"3h\""),
                "timing.promote-timeout",
            ),
            (
                full_with("max-lag = 16", "max-lag = 1000000001"),
                "timing.max-lag",
            ),
            (
                full_with("stop-grace = \"2s\"", "stop-grace = \"2h\""),
                "service.stop-grace",
            ),
            (
                full_with("restart-backoff-max = \"1m\"", "restart-backoff-max = \"2h\""),
                "service.restart-backoff-max",
            ),
            (
                full_with("restart-backoff-min = \"50ms\"", "restart-backoff-min = \"2h\"")
                    .replace("restart-backoff-max = \"1m\"", "restart-backoff-max = \"3h\""),
                "service.restart-backoff-min",
            ),
            (
                full_with("interval = \"100ms\"", "interval = \"2h\""),
                "check[0].interval",
            ),
            (
                full_with("timeout = \"80ms\"", "timeout = \"2h\""),
                "check[0].timeout",
            ),
            (full_with("rise = 3", "rise = 1001"), "check[0].rise"),
            (full_with("fall = 1", "fall = 1001"), "check[0].fall"),
            (full_with("timeout = \"3s\"", "timeout = \"2h\""), "hooks.timeout"),
            (
                full_with("hold-down = \"45s\"", "hold-down = \"2days\""),
                "failback.hold-down",
            ),
            (
                full_with(
                    "garp-interval = \"50ms\"",
                    "garp-interval = \"50ms\"\ngarp-refresh = \"2h\"",
                ),
                "address.garp-refresh",
            ),
            (format!("{FULL}\n[alarms]\nattempts = 101\n"), "alarms.attempts"),
            (format!("{FULL}\n[alarms]\nbackoff = {huge}\n"), "alarms.backoff"),
            (format!("{FULL}\n[alarms]\ntimeout = \"2h\"\n"), "alarms.timeout"),
            (
                format!("{FULL}\nheader-read-timeout = \"2h\"\n"),
                "api.header-read-timeout",
            ),
            (
                format!("{FULL}\nheader-read-timeout = \"1ms\"\n"),
                "api.header-read-timeout",
            ),
            (format!("{FULL}\nmax-connections = 0\n"), "api.max-connections"),
            (
                format!("{FULL}\nmax-connections = 65537\n"),
                "api.max-connections",
            ),
            (
                format!("{FULL}\n[store]\nlisten = \"127.0.0.1:6390\"\nretry-for = {huge}\n"),
                "store.retry-for",
            ),
        ];
        for (text, key) in cases {
            match Config::parse(&text) {
                Ok(_) => panic!("`{key}`: an absurd value was accepted"),
                Err(ConfigError::Invalid { key: k, reason }) => assert_eq!(k, key, "{reason}"),
                Err(e) => panic!("`{key}`: expected a validation error, got: {e}"),
            }
        }
    }

    /// Finding 15 of issue 12: two of a node's own listeners on one port passed
    /// `check-config`. The error names both keys.
    #[test]
    fn a_port_clash_between_own_listeners_names_both_keys() {
        let store = |listen: &str| format!("{FULL}\n[store]\nlisten = \"{listen}\"\n");
        let proxy = |admin: &str, listen: &str| {
            format!(
                "{FULL}\n[proxy]\ncluster = [\"10.0.0.1:7180\"]\nadmin = \"{admin}\"\n[[proxy.listener]]\nname = \"s\"\nlisten = \"{listen}\"\n"
            )
        };
        for (text, key, other) in [
            (store("10.0.0.1:7180"), "store.listen", "member[0].admin"),
            (store("0.0.0.0:7100"), "store.listen", "member[0].addresses[0]"),
            (
                proxy("127.0.0.1:9000", "10.1.0.1:7100"),
                "proxy.listener[0].listen",
                "member[0].addresses[1]",
            ),
            (
                proxy("0.0.0.0:7180", "127.0.0.1:9001"),
                "proxy.admin",
                "member[0].admin",
            ),
            (
                full_with(
                    "data-dir = \"/var/lib/standin\"",
                    "data-dir = \"/var/lib/standin\"\nlisten = [\"0.0.0.0:7180\", \"0.0.0.0:7101\"]",
                ),
                "member[0].admin",
                "node.listen[0]",
            ),
        ] {
            match Config::parse(&text) {
                Err(ConfigError::Invalid { key: k, reason }) => {
                    assert_eq!(k, key, "{reason}");
                    assert!(reason.contains(&format!("`{other}`")), "{key}: {reason}");
                }
                other => panic!("{key}: expected a port clash, got {other:?}"),
            }
        }
        // Different ports, or another member's address on the same port: fine.
        Config::parse(&format!("{}requirepass = \"pw\"\n", store("10.0.0.1:6380"))).expect("no clash");
        Config::parse(&proxy("127.0.0.1:9000", "127.0.0.1:7180")).expect("another IP, no wildcard");
    }

    #[test]
    fn a_data_member_is_required() {
        let text = MINIMAL
            .replace("kind = \"data\"", "kind = \"witness\"")
            .replace("[service]\ncommand = \"sleep\"\nargs = [\"1000\"]\n", "");
        assert_invalid(&text, "member");
    }

    #[test]
    fn load_reports_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("standin.toml");
        let e = Config::load(&path).unwrap_err();
        assert!(matches!(e, ConfigError::Read { .. }));
        assert!(e.to_string().contains("standin.toml"), "{e}");

        std::fs::write(&path, format!("{MINIMAL}\nbogus = 1\n")).unwrap();
        let e = Config::load(&path).unwrap_err();
        let msg = e.to_string();
        assert!(matches!(e, ConfigError::Parse { .. }), "{msg}");
        assert!(msg.contains("standin.toml") && msg.contains("bogus"), "{msg}");

        std::fs::write(&path, MINIMAL).unwrap();
        assert_eq!(Config::load(&path).unwrap(), Config::parse(MINIMAL).unwrap());
    }

    #[test]
    fn a_config_round_trips_through_toml() {
        let c = Config::parse(FULL).unwrap();
        let text = toml::to_string(&c).expect("serializes");
        assert_eq!(Config::parse(&text).expect("re-parses"), c);
    }

    #[test]
    fn huge_durations_are_refused_not_a_panic() {
        // heartbeat * 3 would overflow `Duration`: validate() must report it, not panic.
        let text = full_with(
            "heartbeat-interval = \"50ms\"",
            "heartbeat-interval = \"300000000000years\"",
        );
        assert_invalid(&text, "timing.heartbeat-interval");
    }

    #[test]
    fn changed_sections_name_what_differs() {
        let a = Config::parse(MINIMAL).expect("valid");
        assert!(a.changed_sections(&a.clone()).is_empty());
        let b = Config::parse(&format!("{MINIMAL}\n[timing]\nfailure-timeout = \"700ms\"\n")).expect("valid");
        assert_eq!(a.changed_sections(&b), vec!["timing".to_string()]);
    }

    #[test]
    fn derived_timings_keep_their_documented_values() {
        let t = Timing::default();
        let now = std::time::Instant::now();
        assert!(t.is_heard(now, now + ms(499)));
        assert!(!t.is_heard(now, now + ms(500)));
        assert!(t.is_heard(now + ms(10), now), "a time after now is heard");
        assert!(t.is_heard_ms(1_000, 1_499) && !t.is_heard_ms(1_000, 1_500));
        assert_eq!(t.settle_grace(), ms(1000));
        assert_eq!(t.witness_rescue_after(), ms(1000));
        assert_eq!(t.bootstrap_wait(), ms(1500));
        assert_eq!(t.coordination_retry(), ms(2000));
        assert_eq!(t.promotion_exclusion(), Duration::from_secs(10));
        assert_eq!(t.lease_request_timeout(), ms(200));
        // Lease 400 ms: margin 40 ms, held 360 ms; a short lease keeps the 20 ms floor.
        assert_eq!((t.lease_margin(), t.lease_held_for()), (ms(40), ms(360)));
        let short = Timing {
            lease: ms(80),
            ..Timing::default()
        };
        assert_eq!((short.lease_margin(), short.lease_held_for()), (ms(20), ms(60)));
        assert_eq!(t.coordinator_tick(), ms(50));
        assert_eq!(t.prevote_tick(), ms(50));
        assert_eq!(t.switchover_timeout(), Duration::from_secs(40));
        assert_eq!(t.path_watch_tick(), ms(100));
        assert_eq!(t.ping_timeout(), ms(250));
        assert_eq!(t.silence_allowed(Duration::from_secs(5)), Duration::from_secs(5));
        // openraft: heartbeat 50 ms, election timeout 100-150 ms (README: How failover works).
        assert_eq!(t.raft_ms(), (50, 100, 150));
        // The floors, at the fastest allowed heartbeat (5 ms).
        let fast = Timing {
            heartbeat_interval: ms(5),
            ..Timing::default()
        };
        assert_eq!(fast.raft_ms(), (5, 20, 30));
        assert_eq!(fast.coordinator_tick(), ms(5));
    }

    #[test]
    fn later_saturates_instead_of_panicking() {
        let now = std::time::Instant::now();
        assert_eq!(later(now, Duration::from_secs(1)), now + Duration::from_secs(1));
        let far = later(now, Duration::MAX);
        assert!(far > now);
        let t = tokio::time::Instant::now();
        assert!(later_tokio(t, Duration::MAX) > t);
    }

    #[test]
    fn an_oversized_config_file_is_refused_without_reading_it_all() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("huge.toml");
        std::fs::write(
            &path,
            format!("{MINIMAL}\n# {}\n", "x".repeat(MAX_CONFIG_BYTES as usize)),
        )
        .unwrap();
        let e = Config::load(&path).unwrap_err();
        assert!(
            matches!(e, ConfigError::Parse { .. }) && e.to_string().contains("larger than"),
            "{e}"
        );
    }

    /// Config text: arbitrary bytes, `FULL` mutated at one point, and deep nesting of arrays,
    /// inline tables, dotted keys and table headers.
    fn config_text() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        prop_oneof![
            "\\PC{0,400}",
            (any::<usize>(), 0usize..16, "\\PC{0,12}", 0usize..3).prop_map(|(at, len, piece, how)| {
                let floor = |mut i: usize| {
                    while !FULL.is_char_boundary(i) {
                        i -= 1;
                    }
                    i
                };
                let at = floor(at % (FULL.len() + 1));
                match how {
                    0 => format!("{}{piece}{}", &FULL[..at], &FULL[at..]),
                    1 => format!("{}{piece}", &FULL[..at]),
                    _ => format!("{}{}", &FULL[..at], &FULL[floor((at + len).min(FULL.len()))..]),
                }
            }),
            (1usize..3000, 0usize..4).prop_map(|(n, shape)| match shape {
                0 => format!("{FULL}\nx = {}{}\n", "[".repeat(n), "]".repeat(n)),
                1 => format!("{FULL}\nx = {}{}\n", "{a=".repeat(n), "}".repeat(n)),
                2 => format!("{FULL}\n{} = 1\n", vec!["k"; n].join(".")),
                _ => format!("{FULL}\n[{}]\n", vec!["k"; n].join(".")),
            }),
        ]
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(512))]

        /// Issue 12 fuzzing: the TOML loader and `validate()` never panic or overflow the stack,
        /// whatever the text.
        #[test]
        fn arbitrary_config_text_never_panics(text in config_text()) {
            let _ = Config::parse(&text);
            let _ = parse_proxy(&text);
        }
    }

    #[test]
    fn raft_ids_are_stable_and_nonzero() {
        assert_eq!(raft_id(""), 0xcbf2_9ce4_8422_2325);
        assert_ne!(raft_id("a"), raft_id("b"));
        assert!(raft_id("a") != 0);
    }
}
