//! The face of the `standin` binary: the argument tree (`args`), the dispatch of each command
//! to the library with its exit code (`run`), and the operator commands that talk to a node's
//! admin API or a proxy's control API (`client`). `main.rs` only parses the arguments, sets up
//! logging and calls [`run::main_with`].
//!
//! This module holds what they all share: the exit codes and the error that carries one.

pub mod args;
pub mod backup;
pub mod client;
pub mod config;
pub mod deploy;
pub mod drill;
pub mod member;
pub mod run;

use crate::api::client::ClientError;

/// Exit codes (sysexits.h).
pub mod exit {
    pub const OK: i32 = 0;
    /// The request was refused (e.g. switchover to an unhealthy node).
    pub const REFUSED: i32 = 1;
    pub const USAGE: i32 = 64;
    /// The admin API or the cluster is unavailable.
    pub const UNAVAILABLE: i32 = 69;
    /// A wait ran out of time.
    pub const TEMPFAIL: i32 = 75;
    /// The API refused the token (missing or wrong).
    pub const NOPERM: i32 = 77;
}

/// An error that ends a CLI command, with its exit code.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct CliError {
    pub message: String,
    pub code: i32,
}

impl CliError {
    fn new(code: i32, message: impl Into<String>) -> Self {
        CliError {
            message: message.into(),
            code,
        }
    }
}

impl From<ClientError> for CliError {
    fn from(e: ClientError) -> Self {
        let code = match e {
            ClientError::Address(_) | ClientError::NoCa { .. } => exit::USAGE,
            _ => exit::UNAVAILABLE,
        };
        CliError::new(code, e.to_string())
    }
}
