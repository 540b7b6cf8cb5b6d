//! The `[proxy]` section: `TOML -> ProxyConfig (serde, unknown keys rejected) -> validate()`.
//!
//! It stands alone in a proxy's own file (`standin proxy --config proxy.toml`) or sits inside a
//! node's config, and then the node runs the proxy too. A listener's settings are the same
//! struct in TOML and in the control API's `PUT /v1/proxy/listeners/{name}` (JSON), so a
//! runtime change is validated exactly like the file.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::rules::{at_most, count_at_most, invalid, limits, ConfigError};

/// `[proxy]`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ProxyConfig {
    /// Admin APIs of cluster nodes to watch (`GET /v1/watch`); any node will do, they are
    /// followed at once. `host:port` (HTTPS when `api-ca` is set), or with an explicit
    /// `http://` / `https://`.
    pub cluster: Vec<String>,
    /// The proxy's own control API (`GET /v1/proxy`, `PUT|DELETE /v1/proxy/listeners/{name}`).
    #[serde(default)]
    pub admin: Option<SocketAddr>,
    #[serde(default, rename = "listener")]
    pub listeners: Vec<ListenerConfig>,
    /// Bearer token the control API's mutations (`PUT`, `DELETE`) need. Without one, `admin`
    /// must be a loopback address.
    #[serde(default)]
    pub token: Option<String>,
    /// The same, read from a file (first line) that other users cannot read.
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// Addresses a listener may be bound to through the control API beyond unprivileged
    /// loopback ones (exact `ip:port`; `0.0.0.0:80` does not allow `0.0.0.0:81`). The file's
    /// own listeners are always allowed.
    #[serde(default)]
    pub allow_bind: Vec<SocketAddr>,
    /// The token sent to the cluster's admin APIs (`Authorization: Bearer`), so the proxy
    /// works with `[api] read-open = false`. Inside a node's config, the node's `[api]` token
    /// is sent when neither this nor `api-token-file` is set.
    #[serde(default)]
    pub api_token: Option<String>,
    /// The same, read from a file (first line) that other users cannot read.
    #[serde(default)]
    pub api_token_file: Option<PathBuf>,
    /// The CA that signs the cluster's admin API certificates: with it the proxy speaks HTTPS
    /// to every `cluster` address (`[api] tls = true` on the nodes).
    #[serde(default)]
    pub api_ca: Option<PathBuf>,
    /// The control API's token in effect (from `token` or `token-file`).
    #[serde(skip)]
    pub resolved_token: Option<String>,
    /// The token sent to the admin APIs (from `api-token`, `api-token-file` or the node's).
    #[serde(skip)]
    pub resolved_api_token: Option<String>,
}

/// Reads a token from `inline` or `file` (keys `{prefix}` and `{prefix}-file`): at least 16
/// characters, no spaces or control characters, a file other users cannot read.
fn resolve_token(
    prefix: &str,
    inline: &Option<String>,
    file: &Option<PathBuf>,
) -> Result<Option<String>, ConfigError> {
    let file_key = format!("{prefix}-file");
    let (key, token) = match (inline, file) {
        (Some(_), Some(_)) => {
            return Err(invalid(
                &file_key,
                format!("set `{prefix}` or `{file_key}`, not both"),
            ))
        }
        (Some(t), None) => (prefix.to_string(), t.clone()),
        (None, Some(path)) => {
            crate::tls::check_private(&file_key, path).map_err(|e| invalid(&file_key, e.detail()))?;
            let text = std::fs::read_to_string(path)
                .map_err(|e| invalid(&file_key, format!("cannot read {}: {e}", path.display())))?;
            (file_key, text.lines().next().unwrap_or("").trim().to_string())
        }
        (None, None) => return Ok(None),
    };
    if token.chars().count() < 16 {
        return Err(invalid(key, "must be at least 16 characters"));
    }
    if token.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(invalid(key, "must not contain spaces or control characters"));
    }
    Ok(Some(token))
}

/// Which of a member's addresses a listener forwards to.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Target {
    /// The member's `service-address`.
    Service,
    /// The member's `store-address` (its Redis-protocol store).
    Store,
}

/// Which nodes get traffic.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// Only the active node.
    #[default]
    Failover,
    /// Every healthy data node (active-active).
    Balance,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Protocol {
    /// Bytes both ways; the backend is chosen per connection.
    #[default]
    Tcp,
    /// HTTP/1.1: keep-alive on both sides, the backend is chosen per request, and every
    /// request carries `X-Standin-Epoch` and `X-Forwarded-For`.
    Http,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Balance {
    #[default]
    RoundRobin,
    /// The backend with the fewest open connections (TCP) or requests in flight (HTTP).
    LeastConn,
}

/// `[[proxy.listener]]`, and the JSON body of `PUT /v1/proxy/listeners/{name}`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ListenerConfig {
    /// Required in TOML; in a PUT the name comes from the path (a body's name must match).
    #[serde(default)]
    pub name: String,
    pub listen: SocketAddr,
    #[serde(default = "default_target")]
    pub target: Target,
    #[serde(default)]
    pub mode: Mode,
    #[serde(default)]
    pub protocol: Protocol,
    #[serde(default)]
    pub balance: Balance,
    /// Planned switchover: connections to the old active node may finish until then.
    #[serde(default = "default_drain_timeout", with = "humantime_serde")]
    pub drain_timeout: Duration,
    #[serde(default = "default_connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// No node to forward to right now: hold a new connection (or request) this long.
    #[serde(default = "default_queue_timeout", with = "humantime_serde")]
    pub queue_timeout: Duration,
    /// HTTP listeners: a backend that has not begun its answer this long after the request was
    /// sent gets the client a 504 (and counts as a failure for outlier detection). The request
    /// is not sent again: it may have had an effect.
    #[serde(default = "default_request_timeout", with = "humantime_serde")]
    pub request_timeout: Duration,
    /// HTTP listeners: a client must send a whole request head within this long, and a
    /// keep-alive connection waiting for its next request is closed after this long.
    #[serde(default = "default_header_read_timeout", with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// A failed connect is retried on another node this many times (balance mode).
    #[serde(default = "default_retries")]
    pub retries: u32,
    #[serde(default)]
    pub health: HealthConfig,
    #[serde(default)]
    pub outlier: OutlierConfig,
}

fn default_target() -> Target {
    Target::Service
}
fn default_drain_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_connect_timeout() -> Duration {
    Duration::from_secs(1)
}
fn default_queue_timeout() -> Duration {
    Duration::from_secs(2)
}
fn default_request_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_header_read_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_retries() -> u32 {
    1
}

/// `[proxy.listener.health]`: the proxy's own active checks (balance mode), on top of the
/// cluster's health view.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct HealthConfig {
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Consecutive successes before a failed backend gets traffic again.
    pub rise: u32,
    /// Consecutive failures before a backend gets no more traffic.
    pub fall: u32,
    /// HTTP listeners: `GET path` must answer 2xx or 3xx. TCP listeners: a connect is enough.
    pub path: String,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            interval: Duration::from_millis(500),
            timeout: Duration::from_millis(300),
            rise: 2,
            fall: 2,
            path: "/".into(),
        }
    }
}

/// `[proxy.listener.outlier]`: passive detection. Consecutive connect failures (and 5xx
/// answers in HTTP mode) eject a backend for `base-ejection × 2^(n-1)` at its n-th ejection,
/// at most `max-ejection`. The last backend is never ejected.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct OutlierConfig {
    /// 0 turns passive detection off.
    pub consecutive_failures: u32,
    #[serde(with = "humantime_serde")]
    pub base_ejection: Duration,
    #[serde(with = "humantime_serde")]
    pub max_ejection: Duration,
}

impl Default for OutlierConfig {
    fn default() -> Self {
        OutlierConfig {
            consecutive_failures: 3,
            base_ejection: Duration::from_secs(1),
            max_ejection: Duration::from_secs(30),
        }
    }
}

/// A file that holds only `[proxy]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProxyFile {
    proxy: ProxyConfig,
}

impl ProxyConfig {
    /// Parses and validates the text of a file that holds only `[proxy]`. A node's config
    /// with a `[proxy]` section is read by `config::parse_proxy` (in the layer above), which knows both.
    pub fn parse(text: &str) -> Result<ProxyConfig, ConfigError> {
        let parse_error = |e: toml::de::Error| ConfigError::Parse {
            path: PathBuf::from("<config>"),
            message: e.to_string().trim().to_string(),
        };
        let mut file: ProxyFile = toml::from_str(text).map_err(parse_error)?;
        file.proxy.validate()?;
        file.proxy.resolve(None)?;
        Ok(file.proxy)
    }

    /// Reads the tokens (files included) and checks the control API's exposure; `node_token`
    /// is the `[api]` token of the node config this section sits in, if any. Runs after
    /// [`ProxyConfig::validate`].
    pub fn resolve(&mut self, node_token: Option<&str>) -> Result<(), ConfigError> {
        self.resolved_token = resolve_token("proxy.token", &self.token, &self.token_file)?;
        self.resolved_api_token = resolve_token("proxy.api-token", &self.api_token, &self.api_token_file)?
            .or_else(|| node_token.map(str::to_string));
        if let Some(a) = self.admin {
            if self.resolved_token.is_none() && !a.ip().is_loopback() {
                return Err(invalid(
                    "proxy.token",
                    format!(
                        "the control API listens on {a}, not a loopback address, and has no token: \
                         anyone who can reach it could remove or rebind listeners. Set \
                         `proxy.token-file` to a file holding a random token of at least 16 \
                         characters (chmod 600), or bind `proxy.admin` to 127.0.0.1"
                    ),
                ));
            }
        }
        if let Some(ca) = &self.api_ca {
            crate::tls::https_client_config(ca).map_err(|e| invalid("proxy.api-ca", e.detail()))?;
        }
        Ok(())
    }

    /// Whether the control API may bind a listener to `addr`: an unprivileged port on a
    /// loopback address, an address of the file's own listeners, or one in `allow-bind`.
    pub fn may_bind(&self, addr: SocketAddr) -> bool {
        let unprivileged = addr.port() == 0 || addr.port() >= 1024;
        (addr.ip().is_loopback() && unprivileged)
            || self.allow_bind.contains(&addr)
            || self.listeners.iter().any(|l| l.listen == addr)
    }

    /// Checks everything serde cannot; errors name the key (`proxy.listener[1].listen`).
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.cluster.is_empty() {
            return Err(invalid(
                "proxy.cluster",
                "name at least one node's admin API (host:port)",
            ));
        }
        for (i, c) in self.cluster.iter().enumerate() {
            let target = crate::api::client::Target::parse(c, false).map_err(|_| {
                invalid(
                    format!("proxy.cluster[{i}]"),
                    format!("{c:?} is not host:port (or https://host:port)"),
                )
            })?;
            if target.https && self.api_ca.is_none() {
                return Err(invalid(
                    "proxy.api-ca",
                    format!("`proxy.cluster[{i}]` is {c:?}: HTTPS needs the CA that signed the admin API's certificate"),
                ));
            }
        }
        let mut names = BTreeSet::new();
        let mut listens = BTreeSet::new();
        if let Some(a) = self.admin {
            listens.insert(a);
        }
        for (i, l) in self.listeners.iter().enumerate() {
            let key = format!("proxy.listener[{i}]");
            if l.name.is_empty() {
                return Err(invalid(format!("{key}.name"), "is required"));
            }
            if !names.insert(l.name.clone()) {
                return Err(invalid(
                    format!("{key}.name"),
                    format!("duplicate listener name {:?}", l.name),
                ));
            }
            if l.listen.port() != 0 && !listens.insert(l.listen) {
                return Err(invalid(
                    format!("{key}.listen"),
                    format!("{} is used twice", l.listen),
                ));
            }
            l.validate(&key)?;
        }
        Ok(())
    }
}

impl ListenerConfig {
    /// Checks one listener; `key` prefixes the keys in errors.
    pub fn validate(&self, key: &str) -> Result<(), ConfigError> {
        if !self.name.is_empty()
            && !self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
        {
            return Err(invalid(
                format!("{key}.name"),
                "use letters, digits, '-', '_' and '.'",
            ));
        }
        let positive = |name: &str, d: Duration| {
            if d.is_zero() {
                Err(invalid(format!("{key}.{name}"), "must be greater than 0"))
            } else {
                Ok(())
            }
        };
        // Upper bounds: far beyond any sensible setting, and small enough that no deadline
        // (`Instant + timeout`) or doubled ejection can overflow.
        let at_most = |name: &str, d: Duration, max: Duration| at_most(&format!("{key}.{name}"), d, max);
        let count = |name: &str, n: u32| count_at_most(&format!("{key}.{name}"), n.into(), limits::COUNT);
        positive("connect-timeout", self.connect_timeout)?;
        positive("queue-timeout", self.queue_timeout)?;
        positive("request-timeout", self.request_timeout)?;
        positive("header-read-timeout", self.header_read_timeout)?;
        at_most("drain-timeout", self.drain_timeout, limits::DAY)?;
        at_most("connect-timeout", self.connect_timeout, limits::HOOK)?;
        at_most("queue-timeout", self.queue_timeout, limits::HOOK)?;
        at_most("request-timeout", self.request_timeout, limits::DAY)?;
        at_most("header-read-timeout", self.header_read_timeout, limits::HOOK)?;
        if self.retries > 10 {
            return Err(invalid(format!("{key}.retries"), "at most 10"));
        }
        let h = &self.health;
        positive("health.interval", h.interval)?;
        positive("health.timeout", h.timeout)?;
        at_most("health.interval", h.interval, limits::HOOK)?;
        at_most("health.timeout", h.timeout, limits::HOOK)?;
        if h.rise == 0 {
            return Err(invalid(format!("{key}.health.rise"), "must be at least 1"));
        }
        if h.fall == 0 {
            return Err(invalid(format!("{key}.health.fall"), "must be at least 1"));
        }
        count("health.rise", h.rise)?;
        count("health.fall", h.fall)?;
        if !h.path.starts_with('/') {
            return Err(invalid(format!("{key}.health.path"), "must start with '/'"));
        }
        if h.path.parse::<hyper::http::uri::PathAndQuery>().is_err() {
            return Err(invalid(
                format!("{key}.health.path"),
                "is not a valid request path",
            ));
        }
        let o = &self.outlier;
        if o.consecutive_failures > 0 {
            positive("outlier.base-ejection", o.base_ejection)?;
            if o.max_ejection < o.base_ejection {
                return Err(invalid(
                    format!("{key}.outlier.max-ejection"),
                    "must not be less than base-ejection",
                ));
            }
        }
        count("outlier.consecutive-failures", o.consecutive_failures)?;
        at_most("outlier.base-ejection", o.base_ejection, limits::HOOK)?;
        at_most("outlier.max-ejection", o.max_ejection, limits::DAY)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FULL: &str = r#"
[proxy]
cluster = ["127.0.0.1:7001", "localhost:7002"]
admin = "127.0.0.1:7100"
[[proxy.listener]]
name = "service"
listen = "127.0.0.1:8000"
target = "service"
mode = "balance"
protocol = "http"
balance = "least-conn"
drain-timeout = "3s"
connect-timeout = "250ms"
queue-timeout = "1s"
retries = 2
[proxy.listener.health]
interval = "100ms"
timeout = "50ms"
rise = 3
fall = 1
path = "/health"
[proxy.listener.outlier]
consecutive-failures = 5
base-ejection = "2s"
max-ejection = "20s"
[[proxy.listener]]
name = "store"
listen = "127.0.0.1:8001"
target = "store"
"#;

    fn err(text: &str) -> String {
        ProxyConfig::parse(text).expect_err("must be refused").to_string()
    }

    #[test]
    fn full_config_parses() {
        let c = ProxyConfig::parse(FULL).expect("valid");
        assert_eq!(c.cluster.len(), 2);
        let l = &c.listeners[0];
        assert_eq!(l.mode, Mode::Balance);
        assert_eq!(l.protocol, Protocol::Http);
        assert_eq!(l.balance, Balance::LeastConn);
        assert_eq!(l.connect_timeout, Duration::from_millis(250));
        assert_eq!(l.health.rise, 3);
        assert_eq!(l.health.path, "/health");
        assert_eq!(l.outlier.max_ejection, Duration::from_secs(20));
        let s = &c.listeners[1];
        assert_eq!(s.target, Target::Store);
        assert_eq!(s.mode, Mode::Failover);
        assert_eq!(s.protocol, Protocol::Tcp);
        assert_eq!(s.drain_timeout, Duration::from_secs(5));
        assert_eq!(s.health, HealthConfig::default());
    }

    #[test]
    fn unknown_keys_are_rejected() {
        for (old, new) in [
            ("retries = 2", "retrys = 2"),
            ("rise = 3", "raise = 3"),
            ("max-ejection = \"20s\"", "max-ejections = \"20s\""),
            ("admin = \"127.0.0.1:7100\"", "admn = \"127.0.0.1:7100\""),
        ] {
            let e = err(&FULL.replace(old, new));
            let field = new.split(' ').next().unwrap_or_default();
            assert!(e.contains(field), "{e}");
        }
        assert!(err(&FULL.replace("mode = \"balance\"", "mode = \"both\"")).contains("both"));
    }

    #[test]
    fn validation_names_the_key() {
        for (old, new, key) in [
            (
                "cluster = [\"127.0.0.1:7001\", \"localhost:7002\"]",
                "cluster = []",
                "proxy.cluster",
            ),
            ("\"localhost:7002\"", "\"localhost\"", "proxy.cluster[1]"),
            ("name = \"store\"", "name = \"service\"", "proxy.listener[1].name"),
            (
                "listen = \"127.0.0.1:8001\"",
                "listen = \"127.0.0.1:8000\"",
                "proxy.listener[1].listen",
            ),
            (
                "queue-timeout = \"1s\"",
                "queue-timeout = \"0s\"",
                "proxy.listener[0].queue-timeout",
            ),
            ("rise = 3", "rise = 0", "proxy.listener[0].health.rise"),
            (
                "path = \"/health\"",
                "path = \"health\"",
                "proxy.listener[0].health.path",
            ),
            (
                "max-ejection = \"20s\"",
                "max-ejection = \"1s\"",
                "proxy.listener[0].outlier.max-ejection",
            ),
            ("retries = 2", "retries = 11", "proxy.listener[0].retries"),
            // Upper bounds (issue 12, finding 12): durations of 10^9 years passed.
            (
                "drain-timeout = \"3s\"",
                "drain-timeout = \"1000000000y\"",
                "proxy.listener[0].drain-timeout",
            ),
            (
                "connect-timeout = \"250ms\"",
                "connect-timeout = \"2h\"",
                "proxy.listener[0].connect-timeout",
            ),
            (
                "queue-timeout = \"1s\"",
                "queue-timeout = \"1000000000y\"",
                "proxy.listener[0].queue-timeout",
            ),
            (
                "retries = 2",
                "retries = 2\nrequest-timeout = \"2days\"",
                "proxy.listener[0].request-timeout",
            ),
            (
                "retries = 2",
                "retries = 2\nheader-read-timeout = \"2h\"",
                "proxy.listener[0].header-read-timeout",
            ),
            (
                "retries = 2",
                "retries = 2\nheader-read-timeout = \"0s\"",
                "proxy.listener[0].header-read-timeout",
            ),
            (
                "interval = \"100ms\"",
                "interval = \"2h\"",
                "proxy.listener[0].health.interval",
            ),
            (
                "timeout = \"50ms\"",
                "timeout = \"2h\"",
                "proxy.listener[0].health.timeout",
            ),
            ("rise = 3", "rise = 1001", "proxy.listener[0].health.rise"),
            ("fall = 1", "fall = 1001", "proxy.listener[0].health.fall"),
            (
                "consecutive-failures = 5",
                "consecutive-failures = 1001",
                "proxy.listener[0].outlier.consecutive-failures",
            ),
            (
                "base-ejection = \"2s\"\nmax-ejection = \"20s\"",
                "base-ejection = \"2h\"\nmax-ejection = \"3h\"",
                "proxy.listener[0].outlier.base-ejection",
            ),
            (
                "max-ejection = \"20s\"",
                "max-ejection = \"2days\"",
                "proxy.listener[0].outlier.max-ejection",
            ),
        ] {
            let text = FULL.replace(old, new);
            assert_ne!(text, FULL, "{old}");
            let e = err(&text);
            assert!(e.contains(&format!("`{key}`")), "{key}: {e}");
        }
        let e = err(&FULL.replace("name = \"store\"\n", ""));
        assert!(e.contains("proxy.listener[1].name"), "{e}");
    }

    /// Issue 13: the control API without a token only on loopback; tokens of at least 16
    /// characters, token files private; what the API may bind.
    #[test]
    fn control_api_access_and_binds_are_checked() {
        let public = FULL.replace("admin = \"127.0.0.1:7100\"", "admin = \"0.0.0.0:7100\"");
        let e = err(&public);
        assert!(
            e.contains("`proxy.token`") && e.contains("proxy.token-file"),
            "{e}"
        );
        let with =
            |extra: &str| public.replacen("[[proxy.listener]]", &format!("{extra}\n[[proxy.listener]]"), 1);
        let c = ProxyConfig::parse(&with("token = \"0123456789abcdef\"")).expect("a token");
        assert_eq!(c.resolved_token.as_deref(), Some("0123456789abcdef"));
        assert!(err(&with("token = \"short\"")).contains("`proxy.token`"));
        assert!(err(&with("api-token = \"has space 0123456789\"")).contains("`proxy.api-token`"));
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("token");
        std::fs::write(&file, "0123456789abcdef-file\n").expect("write");
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let line = format!("token-file = \"{}\"", file.display());
        let e = err(&with(&line));
        assert!(e.contains("`proxy.token-file`") && e.contains("chmod 600"), "{e}");
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        let c = ProxyConfig::parse(
            &with(&line.replace("token-file", "api-token-file"))
                .replace("admin = \"0.0.0.0:7100\"", "admin = \"127.0.0.1:7100\""),
        )
        .expect("api token file");
        assert_eq!(c.resolved_api_token.as_deref(), Some("0123456789abcdef-file"));
        assert!(err(&with(
            "token = \"0123456789abcdef\"\napi-ca = \"/nonexistent/ca.pem\""
        ))
        .contains("`proxy.api-ca`"));
        let https = FULL.replace("\"localhost:7002\"", "\"https://localhost:7002\"");
        assert!(err(&https).contains("`proxy.api-ca`"));

        let c = ProxyConfig::parse(&FULL.replacen(
            "[[proxy.listener]]",
            "allow-bind = [\"0.0.0.0:80\"]\n[[proxy.listener]]",
            1,
        ))
        .expect("allow-bind");
        let ok = |a: &str| c.may_bind(a.parse().expect("addr"));
        assert!(ok("127.0.0.1:8080") && ok("127.0.0.1:0") && ok("[::1]:9000"));
        assert!(ok("0.0.0.0:80"), "listed");
        assert!(ok("127.0.0.1:8000"), "a listener of the file");
        assert!(!ok("127.0.0.1:80") && !ok("0.0.0.0:81") && !ok("0.0.0.0:8080") && !ok("10.0.0.1:9000"));
    }

    #[test]
    fn a_listener_round_trips_through_json() {
        let c = ProxyConfig::parse(FULL).expect("valid");
        let json = serde_json::to_string(&c.listeners[0]).expect("json");
        assert!(json.contains("\"drain-timeout\":\"3s\""), "{json}");
        let back: ListenerConfig = serde_json::from_str(&json).expect("parse");
        assert_eq!(back, c.listeners[0]);
        let minimal: ListenerConfig = serde_json::from_str(r#"{"listen":"127.0.0.1:0"}"#).expect("minimal");
        assert_eq!(minimal.target, Target::Service);
        assert!(minimal.validate("x").is_ok());
    }
}
