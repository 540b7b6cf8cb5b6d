//! Hot restart: what a running daemon hands to the process that replaces it, and the `exec`
//! that does it.
//!
//! A hot restart replaces the daemon's program in place (`execve`, same pid): the supervised
//! service and the VIP keeper stay its children (not restarted, still reaped by it), systemd's
//! main pid does not change, and the listening sockets stay open, so connections that arrive
//! meanwhile wait in their backlog instead of being refused. What the new program must know
//! travels in one JSON document in the environment variable [`ENV`]: the inherited file
//! descriptors (listeners, the service's output pipes, the keeper's pipes), the role, epoch
//! and lease the node holds, the health of its checks, and a descriptor of the previous
//! program to go back to if the new one cannot start ([`Handover::fallback`]).
//!
//! The document comes from our own previous process, but it is still checked like any other
//! input: bounded size, a known format, descriptors that exist, are distinct and are of the
//! expected kind. Every inherited descriptor is marked close-on-exec again at once, so neither
//! the service's restarts nor the hooks ever inherit one.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// The environment variable that carries the handover document.
pub const ENV: &str = "STANDIN_HANDOVER";

/// The handover document's format. A program refuses a document of another format (the
/// previous program then keeps running, see [`Handover::fallback`]).
pub const FORMAT: u32 = 1;

/// The largest handover document accepted.
pub const MAX_BYTES: usize = 64 * 1024;

/// The most descriptors one handover may carry (listeners, pipes, the fallback program).
pub const MAX_FDS: usize = 64;

/// What the previous process hands over.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Handover {
    pub format: u32,
    /// The version (and commit) of the program that handed over.
    pub from_version: String,
    /// Hot restarts this daemon's pid has gone through, this one included.
    pub hot_restarts: u64,
    /// When this pid started (its first program), Unix ms.
    pub started_unix_ms: u64,
    /// The program path to run at the next hot restart (the path the daemon was started
    /// from: the binary now on disk there is the one that takes over).
    pub program: std::path::PathBuf,
    /// Listening sockets: the admin API, every cluster path, the store.
    pub admin: RawFd,
    pub cluster: Vec<RawFd>,
    pub store: Option<RawFd>,
    /// The supervised service, if it runs.
    pub service: Option<ServiceHandover>,
    /// The VIP keeper, if one runs.
    pub keeper: Option<KeeperHandover>,
    pub role: RoleHandover,
    /// The health of each configured check when the previous process stopped probing.
    pub checks: BTreeMap<String, bool>,
    /// A descriptor of the previous program: if this start fails before anything was taken
    /// over, the new program executes it again with this same document (plus `failed`), so
    /// the previous version resumes.
    pub fallback: Option<RawFd>,
    /// Set when the program that was handed to could not start: why, and which version it was.
    pub failed: Option<String>,
}

/// The supervised service, left running.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ServiceHandover {
    /// Its pid (also its process group id): still a child of this pid.
    pub pid: u32,
    pub since_unix_ms: u64,
    /// The read ends of its stdout and stderr pipes.
    pub stdout: Option<RawFd>,
    pub stderr: Option<RawFd>,
}

/// The VIP keeper, left holding (or not holding) the address.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct KeeperHandover {
    pub pid: u32,
    /// The write end of its stdin (orders) and the read end of its stdout (reports).
    pub stdin: RawFd,
    pub stdout: RawFd,
}

/// The role the node was acting in. Instants are `CLOCK_MONOTONIC` nanoseconds, the clock
/// `Instant` reads, which an `execve` does not reset.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(deny_unknown_fields)]
pub struct RoleHandover {
    /// The node was acting as active for `epoch`.
    pub active: bool,
    pub epoch: u64,
    /// The lease it holds, if any: its epoch and end.
    pub lease: Option<(u64, u64)>,
    /// What `/v1/lease` last told the service: until when, and the pid told.
    pub handed_out: Option<(u64, Option<u32>)>,
    /// A hold was sent to the VIP keeper and not yet confirmed released.
    pub vip_unreleased: bool,
}

impl Handover {
    /// Every descriptor the document names, in a fixed order.
    pub fn fds(&self) -> Vec<RawFd> {
        let mut fds = vec![self.admin];
        fds.extend(&self.cluster);
        fds.extend(self.store);
        if let Some(s) = &self.service {
            fds.extend(s.stdout);
            fds.extend(s.stderr);
        }
        if let Some(k) = &self.keeper {
            fds.push(k.stdin);
            fds.push(k.stdout);
        }
        fds.extend(self.fallback);
        fds
    }

    /// Checks the document against what the process really has: known format, distinct
    /// descriptors above stdio that are open, listeners that listen.
    pub fn check(&self) -> Result<(), String> {
        let mut listeners = vec![self.admin];
        listeners.extend(&self.cluster);
        listeners.extend(self.store);
        check_descriptors(self.format, &self.fds(), &listeners)?;
        if self.service.as_ref().is_some_and(|s| s.pid <= 1)
            || self.keeper.as_ref().is_some_and(|k| k.pid <= 1)
        {
            return Err("a process handed over has no valid pid".into());
        }
        Ok(())
    }
}

/// What both handover documents must satisfy: our format, at most [`MAX_FDS`] distinct open
/// descriptors above stdio, and `listeners` among them listening sockets.
fn check_descriptors(format: u32, fds: &[RawFd], listeners: &[RawFd]) -> Result<(), String> {
    if format != FORMAT {
        return Err(format!(
            "handover format {format} is not the one this program reads ({FORMAT})"
        ));
    }
    if fds.len() > MAX_FDS {
        return Err(format!(
            "{} descriptors handed over, at most {MAX_FDS}",
            fds.len()
        ));
    }
    let mut seen = std::collections::BTreeSet::new();
    for fd in fds {
        if *fd <= 2 || !seen.insert(*fd) {
            return Err(format!("descriptor {fd} handed over twice or is stdio"));
        }
        // SAFETY: F_GETFD only reads the descriptor's flags; any integer is allowed.
        #[allow(unsafe_code)]
        if unsafe { libc::fcntl(*fd, libc::F_GETFD) } < 0 {
            return Err(format!("descriptor {fd} handed over is not open"));
        }
    }
    for fd in listeners {
        if !is_listening_socket(*fd) {
            return Err(format!("descriptor {fd} handed over is not a listening socket"));
        }
    }
    Ok(())
}

/// Reads a handover document from environment variable `env` (and removes it), bounded in
/// size; `check` validates it and `fds` names its descriptors, made close-on-exec again.
fn take_document<T: serde::de::DeserializeOwned>(
    env: &str,
    check: impl Fn(&T) -> Result<(), String>,
    fds: impl Fn(&T) -> Vec<RawFd>,
) -> Result<Option<T>, String> {
    let Some(raw) = std::env::var_os(env) else {
        return Ok(None);
    };
    std::env::remove_var(env);
    let raw = raw.into_string().map_err(|_| format!("{env} is not UTF-8"))?;
    if raw.len() > MAX_BYTES {
        return Err(format!("{env} holds {} bytes, at most {MAX_BYTES}", raw.len()));
    }
    let doc: T = serde_json::from_str(&raw).map_err(|e| format!("{env} cannot be read: {e}"))?;
    check(&doc)?;
    for fd in fds(&doc) {
        set_cloexec(fd, true).map_err(|e| format!("descriptor {fd}: {e}"))?;
    }
    Ok(Some(doc))
}

fn is_listening_socket(fd: RawFd) -> bool {
    let mut value: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `value`, which is that large.
    #[allow(unsafe_code)]
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_ACCEPTCONN,
            (&mut value as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    rc == 0 && value == 1
}

/// Sets or clears close-on-exec on `fd`.
pub fn set_cloexec(fd: RawFd, on: bool) -> std::io::Result<()> {
    // SAFETY: F_GETFD/F_SETFD only read and change the descriptor's flags.
    #[allow(unsafe_code)]
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFD);
        if flags < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let flags = if on {
            flags | libc::FD_CLOEXEC
        } else {
            flags & !libc::FD_CLOEXEC
        };
        if libc::fcntl(fd, libc::F_SETFD, flags) < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// A close-on-exec duplicate of `fd` (the caller owns it).
pub fn dup(fd: RawFd) -> std::io::Result<OwnedFd> {
    // SAFETY: F_DUPFD_CLOEXEC returns a new descriptor or -1; a new one is ours to own.
    #[allow(unsafe_code)]
    unsafe {
        let new = libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 3);
        if new < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(OwnedFd::from_raw_fd(new))
    }
}

/// Takes ownership of a descriptor named by a checked handover.
///
/// # Safety
/// `fd` must come from a [`Handover`] that passed [`Handover::check`] and must be taken once.
#[allow(unsafe_code)]
pub unsafe fn own(fd: RawFd) -> OwnedFd {
    OwnedFd::from_raw_fd(fd)
}

/// Reads the handover document from the environment, if there is one, and removes it so that
/// nothing started later sees it. Must run before any other thread exists (it changes the
/// environment). A document that cannot be read is an error the caller reports; the
/// descriptors it named are then left alone.
pub fn take_from_env() -> Result<Option<Handover>, String> {
    take_document(ENV, Handover::check, Handover::fds)
}

/// Replaces this process's program with `binary` (same pid, same arguments `args`), handing
/// over `handover`. Returns only if the `execve` failed; the descriptors are then
/// close-on-exec again.
pub fn exec(binary: &Path, args: &[OsString], handover: &Handover) -> std::io::Error {
    let json = match serde_json::to_string(handover) {
        Ok(j) => j,
        Err(e) => return std::io::Error::other(e),
    };
    let fds = handover.fds();
    for fd in &fds {
        if let Err(e) = set_cloexec(*fd, false) {
            return e;
        }
    }
    let err = std::process::Command::new(binary)
        .args(args)
        .env(ENV, json)
        .exec();
    for fd in &fds {
        let _ = set_cloexec(*fd, true);
    }
    err
}

/// Opens the program this process runs, for [`Handover::fallback`] (close-on-exec until
/// [`exec`] hands it over). Works even if the file was replaced or deleted since it started.
pub fn open_own_program() -> std::io::Result<OwnedFd> {
    let file = std::fs::File::open("/proc/self/exe")?;
    Ok(OwnedFd::from(file))
}

/// The path through which a handed-over program descriptor can be executed.
pub fn fd_path(fd: RawFd) -> std::path::PathBuf {
    std::path::PathBuf::from(format!("/proc/self/fd/{fd}"))
}

/// Goes back to the program that handed over (its descriptor in `handover.fallback`) because
/// this one cannot start (`why`): it executes it with the same document, marked failed, so
/// the previous version resumes with the listeners, the service and the role. Returns only if
/// that is impossible (no fallback, or its `execve` failed).
pub fn fall_back(handover: &Handover, why: &str) -> String {
    let Some(fd) = handover.fallback else {
        return "no previous program to go back to".into();
    };
    let mut back = handover.clone();
    back.fallback = None;
    back.failed = Some(format!(
        "version {} could not start: {why}",
        crate::version::VERSION
    ));
    back.hot_restarts = back.hot_restarts.saturating_sub(1);
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    // The descriptor itself must not be handed to the previous program again.
    let _ = set_cloexec(fd, true);
    exec(&fd_path(fd), &args, &back).to_string()
}

/// `CLOCK_MONOTONIC` now, in nanoseconds.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into `ts`.
    #[allow(unsafe_code)]
    unsafe {
        libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts);
    }
    (ts.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec as u64)
}

/// How much earlier than the original a deadline comes out of a conversion to or from
/// `CLOCK_MONOTONIC`: `Instant::now` and `clock_gettime` are read one after the other, so a
/// round trip may drift by the time between the two reads; a lease must never get longer.
const CONVERSION_SLACK: Duration = Duration::from_millis(1);

/// An `Instant` as `CLOCK_MONOTONIC` nanoseconds (for a document that outlives the process).
pub fn to_monotonic(t: Instant) -> u64 {
    // The monotonic clock first: a stall between the two reads then makes the result earlier.
    let mono = monotonic_ns();
    let now = Instant::now();
    let slack = CONVERSION_SLACK.as_nanos() as u64;
    if t >= now {
        let ahead = t.duration_since(now).as_nanos() as u64;
        mono.saturating_add(ahead).saturating_sub(slack)
    } else {
        let behind = now.duration_since(t).as_nanos() as u64;
        mono.saturating_sub(behind).saturating_sub(slack)
    }
}

/// The `Instant` of `CLOCK_MONOTONIC` nanoseconds `ns` (never later than it).
pub fn from_monotonic(ns: u64) -> Instant {
    // `Instant` first: a stall between the two reads then makes the result earlier.
    let now = Instant::now();
    let mono = monotonic_ns();
    let ns = ns.saturating_sub(CONVERSION_SLACK.as_nanos() as u64);
    if ns >= mono {
        crate::config::later(now, Duration::from_nanos(ns - mono))
    } else {
        now.checked_sub(Duration::from_nanos(mono - ns)).unwrap_or(now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn monotonic_round_trip_never_lengthens_a_deadline() {
        let t = Instant::now() + Duration::from_millis(300);
        let back = from_monotonic(to_monotonic(t));
        assert!(back <= t, "a converted deadline came out later");
        assert!(t - back < Duration::from_millis(5), "drift {:?}", t - back);
        let past = Instant::now() - Duration::from_millis(10);
        assert!(from_monotonic(to_monotonic(past)) <= past);
    }

    fn sample() -> Handover {
        Handover {
            format: FORMAT,
            from_version: "0.1.0".into(),
            hot_restarts: 1,
            started_unix_ms: 0,
            program: "/usr/bin/standin".into(),
            admin: 3,
            cluster: vec![4],
            store: None,
            service: None,
            keeper: None,
            role: RoleHandover::default(),
            checks: BTreeMap::new(),
            fallback: None,
            failed: None,
        }
    }

    #[test]
    fn a_document_naming_closed_duplicate_or_wrong_descriptors_is_refused() {
        let mut h = sample();
        h.admin = 100_000;
        h.cluster = vec![100_001];
        assert!(h.check().unwrap_err().contains("not open"));
        h.admin = 2;
        assert!(h.check().unwrap_err().contains("stdio"));
        // An open descriptor that is not a listening socket, and one named twice.
        let file = std::fs::File::open("/proc/self/exe").expect("open");
        let fd = std::os::fd::AsRawFd::as_raw_fd(&file);
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let lfd = std::os::fd::AsRawFd::as_raw_fd(&listener);
        h.admin = lfd;
        h.cluster = vec![lfd];
        assert!(h.check().unwrap_err().contains("twice"));
        h.admin = fd;
        h.cluster = vec![lfd];
        assert!(h.check().unwrap_err().contains("not a listening socket"));
        h.admin = lfd;
        h.cluster = vec![];
        h.check().expect("a listener is accepted");
        h.format = FORMAT + 1;
        assert!(h.check().unwrap_err().contains("format"));
    }

    #[test]
    fn unknown_fields_are_refused() {
        let mut v = serde_json::to_value(sample()).expect("json");
        v["surprise"] = serde_json::json!(1);
        assert!(serde_json::from_value::<Handover>(v).is_err());
    }
}

/// The environment variable that carries a proxy's handover document.
pub const PROXY_ENV: &str = "STANDIN_PROXY_HANDOVER";

/// What a running `standin proxy` hands to the new process it started for a hot restart (the
/// HAProxy way: the new process takes the listening sockets and says when it serves; the old
/// one then stops accepting, lets its open connections finish, and exits).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ProxyHandover {
    pub format: u32,
    pub from_pid: u32,
    pub from_version: String,
    /// Hot restarts so far, this one included.
    pub hot_restarts: u64,
    /// The control API's listener, if any.
    pub admin: Option<RawFd>,
    /// Every listener's socket, by listener name.
    pub listeners: BTreeMap<String, RawFd>,
    /// The write end of a pipe: the new process writes `ready\n` once it serves.
    pub ready: RawFd,
}

impl ProxyHandover {
    pub fn fds(&self) -> Vec<RawFd> {
        let mut fds: Vec<RawFd> = self.admin.into_iter().collect();
        fds.extend(self.listeners.values());
        fds.push(self.ready);
        fds
    }

    /// Known format, distinct open descriptors above stdio, listeners that listen.
    pub fn check(&self) -> Result<(), String> {
        let listeners: Vec<RawFd> = self
            .admin
            .iter()
            .chain(self.listeners.values())
            .copied()
            .collect();
        check_descriptors(self.format, &self.fds(), &listeners)
    }
}

/// [`take_from_env`] for a proxy's document ([`PROXY_ENV`]).
pub fn take_proxy_from_env() -> Result<Option<ProxyHandover>, String> {
    take_document(PROXY_ENV, ProxyHandover::check, ProxyHandover::fds)
}

/// Starts `program` with `args` as a new process that inherits `fds` (close-on-exec here,
/// cleared in the child only) and gets `env` = `json`.
pub fn spawn_inheriting(
    program: &Path,
    args: &[OsString],
    env: (&str, &str),
    fds: Vec<RawFd>,
) -> std::io::Result<std::process::Child> {
    let mut cmd = std::process::Command::new(program);
    cmd.args(args)
        .env(env.0, env.1)
        .stdin(std::process::Stdio::null());
    // SAFETY: the closure runs in the child between fork and exec and only calls fcntl
    // (async-signal-safe) on descriptors the parent owns; it allocates nothing.
    #[allow(unsafe_code)]
    unsafe {
        cmd.pre_exec(move || {
            for fd in &fds {
                let flags = libc::fcntl(*fd, libc::F_GETFD);
                if flags < 0 || libc::fcntl(*fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    cmd.spawn()
}

/// A pipe whose both ends are close-on-exec: (read, write).
pub fn pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: pipe2 writes two new descriptors into `fds`; we own them from here.
    #[allow(unsafe_code)]
    unsafe {
        if libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok((OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])))
    }
}
