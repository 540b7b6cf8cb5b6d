//! Backups and restores of a cluster (issue 18): the file format ([`format`]), taking a backup
//! from a node's admin API ([`fetch`]), restoring one into a running cluster ([`restore`]),
//! Redis command streams in and out ([`resp`]), and the scheduled backups a data node takes
//! of itself ([`schedule`]).
//!
//! The replicated side (the export stream, the staged restore and its swap, the reports) is
//! the cluster's (`cluster::backup`), served by the admin API (`api::backup`); nothing below
//! this module imports it.

pub mod fetch;
pub mod format;
pub mod resp;
pub mod restore;
pub mod schedule;

use std::path::{Path, PathBuf};

use crate::api::client::ClientError;

/// Why a backup command failed, with what the CLI needs for its exit code.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// The file is not a valid backup (exit 65, EX_DATAERR).
    #[error("{path}: {source}")]
    Format {
        path: String,
        #[source]
        source: format::FormatError,
    },
    /// The admin API cannot be reached (exit 69).
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The API refused the token (exit 77).
    #[error("the admin API refused the token: {0}")]
    Auth(String),
    /// The cluster refused (exit 1): a non-empty store without --force, a superseded restore.
    #[error("{0}")]
    Refused(String),
    /// Something else failed on the way (exit 1): a local file, a cut-off stream.
    #[error("{0}")]
    Failed(String),
}

impl BackupError {
    pub fn format(path: &std::path::Path, source: format::FormatError) -> BackupError {
        BackupError::Format {
            path: path.display().to_string(),
            source,
        }
    }
}

pub(crate) use crate::api::client::error_text as api_error;

/// A progress bar on stderr that shows up only when stderr is a terminal, the work has taken
/// more than a second, and the output is not JSON.
pub(crate) struct Progress {
    bar: indicatif::ProgressBar,
    started: std::time::Instant,
    shown: bool,
    allowed: bool,
}

impl Progress {
    pub(crate) fn new(total: u64, what: &str, allowed: bool) -> Progress {
        use std::io::IsTerminal;
        let bar =
            indicatif::ProgressBar::with_draw_target(Some(total), indicatif::ProgressDrawTarget::hidden());
        if let Ok(style) = indicatif::ProgressStyle::with_template(
            "{msg} [{elapsed_precise}] {wide_bar} {pos}/{len} keys ({eta})",
        ) {
            bar.set_style(style);
        }
        bar.set_message(what.to_string());
        Progress {
            bar,
            started: std::time::Instant::now(),
            shown: false,
            allowed: allowed && std::io::stderr().is_terminal(),
        }
    }

    pub(crate) fn inc(&mut self, n: u64) {
        self.bar.inc(n);
        if self.allowed && !self.shown && self.started.elapsed() > std::time::Duration::from_secs(1) {
            self.shown = true;
            self.bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
        }
    }

    pub(crate) fn done(&self) {
        if self.shown {
            self.bar.finish_and_clear();
        }
    }
}

/// Puts the finished temporary file in place: fsync, rename, fsync the directory.
pub(crate) fn commit_file(file: std::fs::File, tmp: &Path, out: &Path) -> std::io::Result<()> {
    file.sync_all()?;
    drop(file);
    std::fs::rename(tmp, out)?;
    let dir = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::File::open(dir)?.sync_all()
}
