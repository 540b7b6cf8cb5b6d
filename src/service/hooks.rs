//! Role hooks: the operator's commands that run when this node is promoted, demoted, or must
//! fence the previous active node before promotion.
//!
//! A hook is `sh -c <command>` in its own process group with the environment `STANDIN_NODE`,
//! `STANDIN_ROLE`, `STANDIN_EPOCH`, `STANDIN_PREVIOUS` and `STANDIN_HOOK`. It never blocks the
//! caller longer than `hooks.timeout`: past that the whole group is SIGKILLed and the hook
//! counts as failed. The outcome is returned, not logged only, so the caller can record it in
//! the event history (a failed fence is recorded; the expired lease is what makes promotion safe).
//!
//! The commands and the timeout are read when a hook starts: a runner made with
//! [`HookRunner::live`] follows reloads of `[hooks]` (the next run uses the new ones; a hook
//! already running finishes as it started).

use std::fmt;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::config::Hooks;
use crate::service::process;

/// Output kept from a hook: enough to explain a failure in the event history.
pub const HOOK_OUTPUT_LIMIT: usize = 2048;

/// Which hook to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum HookKind {
    /// This node became the active node.
    Promote,
    /// This node stopped being the active node.
    Demote,
    /// Fence the previous active node before this node is promoted (STONITH-style).
    Fence,
}

impl HookKind {
    /// The config key / `STANDIN_HOOK` value: `on-promote`, `on-demote`, `on-fence`.
    pub fn as_str(self) -> &'static str {
        match self {
            HookKind::Promote => "on-promote",
            HookKind::Demote => "on-demote",
            HookKind::Fence => "on-fence",
        }
    }
}

impl fmt::Display for HookKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What happened when a hook ran.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HookOutcome {
    pub kind: HookKind,
    /// False when no command is configured for this hook (then `ok` is true).
    pub ran: bool,
    /// Exited 0 within the timeout (or was not configured).
    pub ok: bool,
    /// Exit code when it exited normally; `None` when killed by a signal or not started.
    pub exit_code: Option<i32>,
    /// Ran past `hooks.timeout` and was killed.
    pub timed_out: bool,
    pub duration_ms: u64,
    /// stdout and stderr, interleaved, truncated to [`HOOK_OUTPUT_LIMIT`] bytes. Holds the
    /// error when the hook could not be started.
    pub output: String,
}

/// Runs the configured role hooks of one node.
#[derive(Debug, Clone)]
pub struct HookRunner {
    hooks: Source,
    node: String,
}

/// Where a runner reads its hooks from.
#[derive(Debug, Clone)]
enum Source {
    Fixed(Hooks),
    /// `[hooks]` of the configuration in effect when each hook starts.
    Live(crate::config::Live),
}

impl HookRunner {
    /// `node` is this node's id, passed to every hook as `STANDIN_NODE`.
    pub fn new(hooks: Hooks, node: String) -> Self {
        HookRunner {
            hooks: Source::Fixed(hooks),
            node,
        }
    }

    /// A runner that reads `[hooks]` from `live` at each run, so a reload applies to the next.
    pub fn live(live: crate::config::Live, node: String) -> Self {
        HookRunner {
            hooks: Source::Live(live),
            node,
        }
    }

    /// The hooks in effect now.
    fn hooks(&self) -> Hooks {
        match &self.hooks {
            Source::Fixed(h) => h.clone(),
            Source::Live(live) => live.get().hooks.clone(),
        }
    }

    /// Runs hook `kind` and waits for it (at most `hooks.timeout`).
    ///
    /// `role` is the role this node takes (`STANDIN_ROLE`), `epoch` the fencing epoch of that
    /// role (`STANDIN_EPOCH`), `previous` the node that was active before, if known
    /// (`STANDIN_PREVIOUS`, empty otherwise).
    pub async fn run(&self, kind: HookKind, role: &str, epoch: u64, previous: Option<&str>) -> HookOutcome {
        let hooks = self.hooks();
        let command = match kind {
            HookKind::Promote => hooks.on_promote.as_deref(),
            HookKind::Demote => hooks.on_demote.as_deref(),
            HookKind::Fence => hooks.on_fence.as_deref(),
        };
        let Some(command) = command else {
            return HookOutcome {
                kind,
                ran: false,
                ok: true,
                exit_code: None,
                timed_out: false,
                duration_ms: 0,
                output: String::new(),
            };
        };
        let env = [
            ("STANDIN_NODE", self.node.clone()),
            ("STANDIN_ROLE", role.to_string()),
            ("STANDIN_EPOCH", epoch.to_string()),
            ("STANDIN_PREVIOUS", previous.unwrap_or("").to_string()),
            ("STANDIN_HOOK", kind.as_str().to_string()),
        ];
        let started = Instant::now();
        let result = process::run_shell(command, &env, hooks.timeout, HOOK_OUTPUT_LIMIT).await;
        let duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let ok = result.success();
        let output = match &result.spawn_error {
            Some(e) => format!("cannot run hook: {e}"),
            None => result.output,
        };
        if ok {
            tracing::info!(node = %self.node, hook = %kind, epoch, duration_ms, "hook succeeded");
        } else {
            tracing::warn!(
                node = %self.node,
                hook = %kind,
                epoch,
                duration_ms,
                exit_code = ?result.exit_code,
                signal = ?result.signal,
                timed_out = result.timed_out,
                "hook failed"
            );
        }
        HookOutcome {
            kind,
            ran: true,
            ok,
            exit_code: result.exit_code,
            timed_out: result.timed_out,
            duration_ms,
            output,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn runner(on_promote: Option<&str>, timeout: Duration) -> HookRunner {
        HookRunner::new(
            Hooks {
                on_promote: on_promote.map(str::to_string),
                timeout,
                ..Hooks::default()
            },
            "a".into(),
        )
    }

    #[test]
    fn kind_names() {
        assert_eq!(HookKind::Promote.to_string(), "on-promote");
        assert_eq!(HookKind::Fence.to_string(), "on-fence");
        assert_eq!(
            serde_json::to_string(&HookKind::Demote).ok().as_deref(),
            Some("\"demote\"")
        );
    }

    #[tokio::test]
    async fn unconfigured_hook_is_ok_and_not_run() {
        let out = runner(None, Duration::from_secs(1))
            .run(HookKind::Promote, "active", 1, None)
            .await;
        assert!(!out.ran);
        assert!(out.ok);
    }

    #[tokio::test]
    async fn hook_gets_its_environment() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("env");
        let cmd = format!(
            "echo \"$STANDIN_ROLE $STANDIN_EPOCH $STANDIN_PREVIOUS $STANDIN_NODE $STANDIN_HOOK\" > '{}'",
            path.display()
        );
        let out = runner(Some(&cmd), Duration::from_secs(5))
            .run(HookKind::Promote, "active", 7, Some("b"))
            .await;
        assert!(out.ran && out.ok, "{out:?}");
        assert_eq!(out.exit_code, Some(0));
        let written = std::fs::read_to_string(&path).expect("hook wrote the file");
        assert_eq!(written.trim(), "active 7 b a on-promote");

        // No previous node: STANDIN_PREVIOUS is set but empty.
        let cmd = format!("echo \"${{STANDIN_PREVIOUS-unset}}|\" > '{}'", path.display());
        let out = runner(Some(&cmd), Duration::from_secs(5))
            .run(HookKind::Promote, "active", 8, None)
            .await;
        assert!(out.ok, "{out:?}");
        let written = std::fs::read_to_string(&path).expect("hook wrote the file");
        assert_eq!(written.trim(), "|");
    }

    /// Values reach a hook through its environment, never as shell text: a value holding
    /// `$(...)` is not run.
    #[tokio::test]
    async fn hook_values_with_shell_syntax_are_passed_not_executed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pwned = dir.path().join("pwned");
        let path = dir.path().join("env");
        let evil = format!("$(touch {p}) `touch {p}`; touch {p}", p = pwned.display());
        let cmd = format!(
            "printf '%s|%s' \"$STANDIN_PREVIOUS\" \"$STANDIN_ROLE\" > '{}'",
            path.display()
        );
        let out = runner(Some(&cmd), Duration::from_secs(5))
            .run(HookKind::Promote, &evil, 1, Some(&evil))
            .await;
        assert!(out.ok, "{out:?}");
        let written = std::fs::read_to_string(&path).expect("hook wrote the file");
        assert_eq!(written, format!("{evil}|{evil}"));
        assert!(!pwned.exists(), "a value was run as a command");
    }

    #[tokio::test]
    async fn failing_hook_reports_exit_code_and_output() {
        let out = runner(Some("echo boom >&2; exit 3"), Duration::from_secs(5))
            .run(HookKind::Promote, "active", 1, None)
            .await;
        assert!(out.ran);
        assert!(!out.ok);
        assert!(!out.timed_out);
        assert_eq!(out.exit_code, Some(3));
        assert!(out.output.contains("boom"), "{out:?}");
    }

    #[tokio::test]
    async fn slow_hook_is_killed_with_its_children() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pidfile = dir.path().join("pid");
        let cmd = format!("sleep 30 & echo $! > '{}'; sleep 30", pidfile.display());
        let started = Instant::now();
        let out = tokio::time::timeout(
            Duration::from_secs(10),
            runner(Some(&cmd), Duration::from_millis(300)).run(HookKind::Promote, "active", 1, None),
        )
        .await
        .expect("hook returns soon after its timeout");
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(out.ran && !out.ok && out.timed_out, "{out:?}");
        assert_eq!(out.exit_code, None);
        let pid: i32 = std::fs::read_to_string(&pidfile)
            .expect("pidfile")
            .trim()
            .parse()
            .expect("pid");
        assert!(!process::pid_alive(pid), "background child {pid} survived");
    }
}
