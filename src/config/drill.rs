//! `[drill]`: failover drills. Whether this node obeys the drill API's fault requests (off
//! unless the file says so), how long a fault may last, what a drill probes, and the schedule
//! of the drills the cluster runs on its own.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::rules::{at_most, invalid};
use super::ConfigError;

/// The scenarios `standin drill run` knows, in the order a full run takes them.
pub const SCENARIOS: &[&str] = &[
    "planned-switchover",
    "link-failure",
    "service-crash",
    "node-isolation",
    "node-shutdown",
    "recovery",
    "store-consistency",
];

/// Scenarios that cause no failover when the cluster is healthy: the default of a schedule.
pub const SAFE_SCENARIOS: &[&str] = &["planned-switchover", "link-failure"];

/// The longest fault a node accepts, whatever the file says.
pub const MAX_FAULT_LIMIT: Duration = Duration::from_secs(600);

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct DrillConfig {
    /// This node injects faults into itself when the drill API asks (token required):
    /// killing its service, crashing its daemon, cutting its own peer paths for a while.
    pub enabled: bool,
    /// The longest a fault may last; the node heals itself when it runs out, whoever asked.
    #[serde(with = "humantime_serde")]
    pub max_fault: Duration,
    /// What a drill probes through the floating address: `http://host:port/path` (a GET
    /// answered 2xx counts) or `tcp://host:port` (a connection counts).
    pub service: Option<String>,
    /// The store's floating address (host:port) a drill writes to and reads back from.
    pub store: Option<String>,
    /// Run drills on their own: `hourly`, `daily`, `weekly`, or a duration (`"12h"`). The
    /// Raft leader runs them.
    pub schedule: Option<String>,
    /// The scenarios a scheduled drill runs.
    pub scenarios: Vec<String>,
    /// Raise `drill-overdue` when no drill passed for this long (default: twice the schedule).
    #[serde(with = "humantime_serde::option")]
    pub max_age: Option<Duration>,
    /// The longest interruption a scenario may cause (default: from the timing profile).
    #[serde(with = "humantime_serde::option")]
    pub max_interruption: Option<Duration>,
}

impl Default for DrillConfig {
    fn default() -> Self {
        DrillConfig {
            enabled: false,
            max_fault: Duration::from_secs(60),
            service: None,
            store: None,
            schedule: None,
            scenarios: SAFE_SCENARIOS.iter().map(|s| s.to_string()).collect(),
            max_age: None,
            max_interruption: None,
        }
    }
}

/// How often a schedule runs: `hourly`, `daily`, `weekly` or a duration of at least 10 s.
pub fn parse_schedule(text: &str) -> Result<Duration, String> {
    let every = match text.trim() {
        "hourly" => Duration::from_secs(3600),
        "daily" => Duration::from_secs(86_400),
        "weekly" => Duration::from_secs(7 * 86_400),
        other => humantime::parse_duration(other)
            .map_err(|e| format!("`{other}` is not hourly, daily, weekly or a duration ({e})"))?,
    };
    if every < Duration::from_secs(10) {
        return Err("must be at least 10s apart".into());
    }
    if every > Duration::from_secs(366 * 86_400) {
        return Err("must be at most a year apart".into());
    }
    Ok(every)
}

/// A probe target: `http://host:port/path` or `tcp://host:port`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeTarget {
    Http { authority: String, path: String },
    Tcp { authority: String },
}

impl std::fmt::Display for ProbeTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ProbeTarget::Http { authority, path } => write!(f, "http://{authority}{path}"),
            ProbeTarget::Tcp { authority } => write!(f, "tcp://{authority}"),
        }
    }
}

/// Reads a probe target; a bare `host:port` is an HTTP target with path `/`.
pub fn parse_probe(text: &str) -> Result<ProbeTarget, String> {
    let text = text.trim();
    if text.len() > 1024 {
        return Err("is longer than 1024 bytes".into());
    }
    let (scheme, rest) = match text.split_once("://") {
        Some((s, r)) => (s, r),
        None => ("http", text),
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let port_ok = authority
        .rsplit_once(':')
        .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0));
    if !port_ok {
        return Err(format!("`{text}` has no host:port"));
    }
    match scheme {
        "http" => Ok(ProbeTarget::Http {
            authority: authority.to_string(),
            path: path.to_string(),
        }),
        "tcp" if path == "/" => Ok(ProbeTarget::Tcp {
            authority: authority.to_string(),
        }),
        "tcp" => Err(format!("`{text}`: a tcp:// target has no path")),
        other => Err(format!("`{other}://` is not http:// or tcp://")),
    }
}

impl DrillConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.max_fault < Duration::from_secs(1) {
            return Err(invalid("drill.max-fault", "must be at least 1s"));
        }
        at_most("drill.max-fault", self.max_fault, MAX_FAULT_LIMIT)?;
        if let Some(s) = &self.service {
            parse_probe(s).map_err(|e| invalid("drill.service", e))?;
        }
        if let Some(s) = &self.store {
            parse_probe(&format!("tcp://{s}")).map_err(|e| invalid("drill.store", e))?;
        }
        if let Some(s) = &self.schedule {
            parse_schedule(s).map_err(|e| invalid("drill.schedule", e))?;
            if self.service.is_none() {
                return Err(invalid(
                    "drill.service",
                    "a scheduled drill needs a probe target (http://host:port/path or tcp://host:port)",
                ));
            }
        }
        if self.scenarios.is_empty() {
            return Err(invalid("drill.scenarios", "must name at least one scenario"));
        }
        for (i, s) in self.scenarios.iter().enumerate() {
            if !SCENARIOS.contains(&s.as_str()) {
                return Err(invalid(
                    format!("drill.scenarios[{i}]"),
                    format!("`{s}` is not one of {}", SCENARIOS.join(", ")),
                ));
            }
        }
        if let Some(a) = self.max_age {
            if a < Duration::from_secs(60) {
                return Err(invalid("drill.max-age", "must be at least 1m"));
            }
        }
        if let Some(m) = self.max_interruption {
            if m.is_zero() {
                return Err(invalid("drill.max-interruption", "must be greater than 0"));
            }
            at_most("drill.max-interruption", m, Duration::from_secs(600))?;
        }
        Ok(())
    }

    /// How long without a passing drill raises `drill-overdue`; `None` without a schedule
    /// and without `max-age`.
    pub fn overdue_after(&self) -> Option<Duration> {
        self.max_age.or_else(|| {
            self.schedule
                .as_deref()
                .and_then(|s| parse_schedule(s).ok())
                .map(|e| e.saturating_mul(2))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_targets_parse_and_bad_ones_say_why() {
        assert_eq!(
            parse_probe("http://127.0.0.1:80/health").unwrap(),
            ProbeTarget::Http {
                authority: "127.0.0.1:80".into(),
                path: "/health".into()
            }
        );
        assert_eq!(
            parse_probe("10.0.0.1:6379").unwrap().to_string(),
            "http://10.0.0.1:6379/"
        );
        assert_eq!(
            parse_probe("tcp://[::1]:5432").unwrap(),
            ProbeTarget::Tcp {
                authority: "[::1]:5432".into()
            }
        );
        for bad in [
            "",
            "http://",
            "ftp://a:1/",
            "tcp://a:1/x",
            "http://a/",
            "a:0",
            "a:99999",
            ":80",
        ] {
            assert!(parse_probe(bad).is_err(), "{bad}");
        }
        assert!(parse_probe(&"x".repeat(2000)).is_err());
    }

    #[test]
    fn schedules_are_named_or_durations_within_bounds() {
        assert_eq!(parse_schedule("weekly").unwrap(), Duration::from_secs(604_800));
        assert_eq!(parse_schedule("12h").unwrap(), Duration::from_secs(43_200));
        assert!(parse_schedule("5s").is_err());
        assert!(parse_schedule("0 3 * * *").is_err());
        assert!(parse_schedule("400days").is_err());
    }

    #[test]
    fn validation_names_the_key() {
        let key = |c: DrillConfig| match c.validate() {
            Err(ConfigError::Invalid { key, .. }) => key,
            other => panic!("{other:?}"),
        };
        let base = DrillConfig::default();
        assert!(base.validate().is_ok());
        assert_eq!(
            key(DrillConfig {
                max_fault: Duration::from_secs(3600),
                ..base.clone()
            }),
            "drill.max-fault"
        );
        assert_eq!(
            key(DrillConfig {
                schedule: Some("daily".into()),
                ..base.clone()
            }),
            "drill.service"
        );
        assert_eq!(
            key(DrillConfig {
                scenarios: vec!["planned-switchover".into(), "explode".into()],
                ..base.clone()
            }),
            "drill.scenarios[1]"
        );
        assert_eq!(
            key(DrillConfig {
                store: Some("nohost".into()),
                ..base
            }),
            "drill.store"
        );
    }
}
