//! The rules every config file follows, below the config types that use them: the error
//! that names a key (and exit 64), upper bounds of durations and counts, reading a file of at
//! most 1 MiB, and keeping secrets out of messages. `config` (a node's file) and
//! `address::proxy::config` (a proxy's section or file) both build on it.

use std::path::{Path, PathBuf};
use std::time::Duration;

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

pub(crate) fn invalid(key: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        reason: reason.into(),
    }
}

/// Config keys whose values are secrets, in any section: never logged, printed, published in
/// events or hashed into the config digest.
pub const SECRET_KEYS: &[&str] = &["token", "requirepass", "api-token"];

/// Whether a secret a client sent equals the configured one, in time independent of where
/// the first difference is (the admin API's token, the store's password).
pub fn secret_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// What a secret's value is replaced with wherever it would be shown.
pub const REDACTED: &str = "<redacted>";

/// The values assigned to [`SECRET_KEYS`] anywhere in config `text` (a loose scan that also
/// finds them in text that does not parse).
fn secret_values(text: &str) -> Vec<&str> {
    let mut found = Vec::new();
    for key in SECRET_KEYS {
        let mut from = 0;
        while let Some(at) = text[from..].find(key).map(|i| from + i) {
            from = at + key.len();
            let before = text[..at].chars().next_back();
            if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.') {
                continue;
            }
            let rest = text[from..].trim_start_matches(['"', '\'']);
            let rest = rest.trim_start_matches([' ', '\t']);
            let Some(rest) = rest.strip_prefix('=') else {
                continue;
            };
            let rest = rest.trim_start_matches([' ', '\t']);
            let value = match rest.chars().next() {
                Some(q @ ('"' | '\'')) => {
                    let (open, close) = if rest.starts_with(&format!("{q}{q}{q}")) {
                        (3, format!("{q}{q}{q}"))
                    } else {
                        (1, q.to_string())
                    };
                    let body = &rest[open..];
                    let end = body
                        .find(close.as_str())
                        .or_else(|| (open == 1).then(|| body.find('\n')).flatten())
                        .unwrap_or(body.len());
                    &body[..end]
                }
                _ => {
                    let end = rest.find([',', '}', '#', '\n', '\r']).unwrap_or(rest.len());
                    rest[..end].trim()
                }
            };
            if !value.is_empty() {
                found.push(value);
            }
        }
    }
    // Longest first, so a secret that contains another is replaced whole.
    found.sort_by_key(|v| std::cmp::Reverse(v.len()));
    found
}

/// `message` (about config `text`) with every secret value in `text` replaced by [`REDACTED`].
pub fn redact(text: &str, message: &str) -> String {
    let mut out = message.to_string();
    for value in secret_values(text) {
        out = out.replace(value, REDACTED);
    }
    out
}

/// Largest config file read (a real one is a few KiB).
pub const MAX_CONFIG_BYTES: u64 = 1024 * 1024;

/// Reads `path` (at most [`MAX_CONFIG_BYTES`]) and hands its text to `parse`; parse errors
/// name the file.
pub fn load_with<T>(
    path: &Path,
    parse: impl FnOnce(&str) -> Result<T, ConfigError>,
) -> Result<T, ConfigError> {
    use std::io::Read;
    let read_error = |source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    };
    // Read at most one byte past the limit: a huge file (or `/dev/zero`) is refused without
    // being held in memory.
    let mut text = String::new();
    std::fs::File::open(path)
        .map_err(read_error)?
        .take(MAX_CONFIG_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(read_error)?;
    if text.len() as u64 > MAX_CONFIG_BYTES {
        return Err(ConfigError::Parse {
            path: path.to_path_buf(),
            message: format!("larger than {MAX_CONFIG_BYTES} bytes; this is not a standin config"),
        });
    }
    parse(&text).map_err(|e| match e {
        // Whatever parsed the text (a node's or a proxy's config), its error may quote it:
        // secrets are taken out here too.
        ConfigError::Parse { message, .. } => ConfigError::Parse {
            path: path.to_path_buf(),
            message: redact(&text, &message),
        },
        other => other,
    })
}

/// Upper bounds of configured durations and counts. Each is far beyond any sensible setting and
/// small enough that no derived value (`failure-timeout × 20`, `Instant + lease`, a doubled
/// backoff) can overflow.
pub mod limits {
    use std::time::Duration;

    pub const HEARTBEAT: Duration = Duration::from_secs(10);
    pub const FAILURE_TIMEOUT: Duration = Duration::from_secs(60);
    pub const PROMOTE_TIMEOUT: Duration = Duration::from_secs(2 * 3600);
    /// Hooks, checks, service stop and restart, alarms, the API's header read timeout.
    pub const HOOK: Duration = Duration::from_secs(3600);
    pub const DAY: Duration = Duration::from_secs(24 * 3600);
    pub const MAX_LAG: u64 = 1_000_000_000;
    /// `rise`, `fall`, consecutive failures.
    pub const COUNT: u64 = 1000;
    pub const ALARM_ATTEMPTS: u64 = 100;
    pub const API_CONNECTIONS: u64 = 65_536;
}

/// `key` must be at most `max`.
pub(crate) fn at_most(key: &str, d: Duration, max: Duration) -> Result<(), ConfigError> {
    if d > max {
        Err(invalid(
            key,
            format!("must be at most {}", humantime::format_duration(max)),
        ))
    } else {
        Ok(())
    }
}

/// `key` must be at most `max`.
pub(crate) fn count_at_most(key: &str, n: u64, max: u64) -> Result<(), ConfigError> {
    if n > max {
        Err(invalid(key, format!("must be at most {max}")))
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_compare_equal_only_when_equal() {
        assert!(secret_eq(b"0123456789abcdef", b"0123456789abcdef"));
        assert!(!secret_eq(b"0123456789abcdef", b"0123456789abcdeX"));
        assert!(!secret_eq(b"0123456789abcdef", b"0123456789abcde"));
        assert!(!secret_eq(b"", b"x"));
        assert!(secret_eq(b"", b""));
    }
}
