//! The keeper process (`standin vip-keeper`): holds the VIP on the interface only while the
//! daemon keeps saying it may, and deletes it the moment it stops saying so.
//!
//! It reads orders on stdin (see [`Order`]): `hold <ms>` sets the deadline to now + ms and
//! adds the VIP if it is absent (then announces it with `garp-count` gratuitous ARPs, one
//! every `garp-interval`, and, with a non-zero `garp-refresh`, once more that often for as
//! long as it holds it); `release` deletes it. It deletes the VIP when the deadline passes
//! without a new hold (the daemon is frozen or too slow to renew), on stdin EOF (the daemon
//! died, whatever killed it) and on SIGTERM/SIGINT, then, for the last two, exits. On start
//! it deletes a VIP left on the interface by a predecessor that was killed. It reports each
//! change on stdout ([`Report`]); errors also go to stderr, naming the interface and the VIP,
//! and the keeper goes on: the next order retries.
//!
//! It runs in its own process group, so signals meant for the daemon's group (a `kill -9` of
//! the service tree, a `SIGSTOP` of the node) do not reach it: stdin EOF and the deadline are
//! what it acts on.

use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::time::Instant;

use super::garp::Interface;
use super::netlink::Netlink;
use super::{monotonic_us, KeeperArgs, Order, Report};

/// How soon a failed delete is tried again.
const RETRY: Duration = Duration::from_millis(100);

struct Keeper {
    args: KeeperArgs,
    netlink: Netlink,
    /// Looked up on first need and again after a failure (the interface may appear later).
    interface: Option<Interface>,
    /// Whether the VIP is (as far as we know) on the interface.
    held: bool,
    /// The last state reported on stdout.
    reported: Option<bool>,
    /// The last error reported, so a persistent one is logged once, not on every order.
    last_error: Option<String>,
    /// Delete the VIP at this instant unless a new hold moves it.
    deadline: Option<Instant>,
    /// Gratuitous ARPs still to send for the current acquisition, and when the next is due.
    garps_left: u32,
    next_garp: Instant,
    /// While held and the burst is over: the next refresh announcement, if refreshing.
    next_refresh: Option<Instant>,
    stdout: tokio::io::Stdout,
}

impl Keeper {
    async fn report(&mut self, r: Report) {
        let line = format!("{r}\n");
        // The daemon may be gone (that is one reason we act): a failed write changes nothing.
        let _ = self.stdout.write_all(line.as_bytes()).await;
        let _ = self.stdout.flush().await;
    }

    async fn error(&mut self, message: String) {
        if self.last_error.as_deref() != Some(message.as_str()) {
            tracing::error!(interface = %self.args.interface, vip = %self.args.vip, error = %message, "vip keeper");
            self.last_error = Some(message.clone());
        }
        self.report(Report::Error(message)).await;
    }

    async fn set_held(&mut self, held: bool) {
        self.held = held;
        if self.reported != Some(held) {
            self.reported = Some(held);
            self.report(if held { Report::Held } else { Report::Released })
                .await;
        }
    }

    /// The interface, opening it if needed.
    async fn interface(&mut self) -> Option<&Interface> {
        if self.interface.is_none() {
            match Interface::open(&self.args.interface) {
                Ok(i) => {
                    tracing::info!(interface = %i.name, index = i.index, mac = %i.mac_string(), "interface found");
                    self.interface = Some(i);
                }
                Err(e) => {
                    self.error(e.to_string()).await;
                    return None;
                }
            }
        }
        self.interface.as_ref()
    }

    /// Adds the VIP if it is not there and starts the announcements.
    async fn acquire(&mut self) {
        let vip = self.args.vip;
        let Some(iface) = self.interface().await else {
            return;
        };
        let (name, index) = (iface.name.clone(), iface.index);
        match self.netlink.add(&name, index, vip).await {
            Ok(added) => {
                tracing::info!(interface = %name, vip = %vip, already_there = !added, "vip added");
                self.last_error = None;
                self.garps_left = self.args.garp_count;
                self.next_garp = Instant::now();
                self.next_refresh = self.refresh_after(Instant::now());
                self.set_held(true).await;
            }
            Err(e) => {
                // The index may be stale (interface re-created): look it up again next time.
                self.interface = None;
                self.error(e.to_string()).await;
            }
        }
    }

    /// Deletes the VIP. Returns false if that failed (the caller retries).
    async fn drop_vip(&mut self, why: &str) -> bool {
        self.garps_left = 0;
        self.next_refresh = None;
        self.deadline = None;
        let vip = self.args.vip;
        let Some(iface) = self.interface().await else {
            // No such interface: the VIP cannot be on it.
            self.set_held(false).await;
            return true;
        };
        let (name, index) = (iface.name.clone(), iface.index);
        match self.netlink.delete(&name, index, vip).await {
            Ok(was_there) => {
                if was_there {
                    tracing::info!(interface = %name, vip = %vip, reason = why, "vip deleted");
                }
                self.set_held(false).await;
                true
            }
            Err(e) => {
                self.interface = None;
                self.error(e.to_string()).await;
                false
            }
        }
    }

    async fn order(&mut self, order: Order) {
        match order {
            Order::Hold { ms, stamp_us } => {
                let mut left = Duration::from_millis(ms);
                if let Some(stamp) = stamp_us {
                    let age = Duration::from_micros(monotonic_us().saturating_sub(stamp));
                    left = left.saturating_sub(age);
                }
                if left.is_zero() {
                    // Stale by the time we read it: as good as no hold at all.
                    if self.held && !self.drop_vip("hold arrived expired").await {
                        self.deadline = Some(Instant::now() + RETRY);
                    }
                    return;
                }
                self.deadline = Some(crate::config::later_tokio(Instant::now(), left));
                if !self.held {
                    self.acquire().await;
                }
            }
            Order::Release => {
                if !self.drop_vip("released by the daemon").await {
                    self.deadline = Some(Instant::now() + RETRY);
                }
            }
        }
    }

    /// When the first refresh after a burst starting at `from` is due (None: no refresh).
    fn refresh_after(&self, from: Instant) -> Option<Instant> {
        let burst = self
            .args
            .garp_interval
            .saturating_mul(self.args.garp_count.saturating_sub(1));
        (!self.args.garp_refresh.is_zero()).then(|| from + burst + self.args.garp_refresh)
    }

    /// Sends one gratuitous ARP: the next of the burst, or else a refresh.
    async fn announce(&mut self) {
        let Some(iface) = self.interface.as_ref() else {
            self.garps_left = 0;
            return;
        };
        let result = iface.announce(self.args.vip.addr);
        if self.garps_left > 0 {
            self.garps_left -= 1;
            self.next_garp = crate::config::later_tokio(Instant::now(), self.args.garp_interval);
        } else if self.next_refresh.is_some() {
            self.next_refresh = Some(crate::config::later_tokio(Instant::now(), self.args.garp_refresh));
        }
        if let Err(e) = result {
            self.error(e.to_string()).await;
        }
    }
}

/// Runs the keeper until stdin closes or a termination signal; returns the exit code.
pub async fn run(args: KeeperArgs) -> i32 {
    let netlink = match Netlink::open() {
        Ok(n) => n,
        Err(e) => {
            tracing::error!(interface = %args.interface, vip = %args.vip, error = %e, "vip keeper cannot start");
            return 1;
        }
    };
    let mut k = Keeper {
        args,
        netlink,
        interface: None,
        held: false,
        reported: None,
        last_error: None,
        deadline: None,
        garps_left: 0,
        next_garp: Instant::now(),
        next_refresh: None,
        stdout: tokio::io::stdout(),
    };
    tracing::info!(interface = %k.args.interface, vip = %k.args.vip, "vip keeper started");
    // A predecessor killed while holding left the VIP behind: nobody may hold it until the
    // daemon says so.
    let vip = k.args.vip;
    if let Some(iface) = k.interface().await {
        let (name, index) = (iface.name.clone(), iface.index);
        if matches!(k.netlink.has(&name, index, vip).await, Ok(true)) {
            tracing::warn!(interface = %name, vip = %vip, "removing a stale vip left by a previous keeper");
        }
    }
    if !k.drop_vip("stale at start").await {
        k.deadline = Some(Instant::now() + RETRY);
    }

    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt()))
    else {
        k.drop_vip("cannot install signal handlers").await;
        return 1;
    };
    // SIGUSR2 (a hot restart asked of the whole unit, `systemctl kill -s USR2`) and SIGHUP
    // (`systemctl reload` sent to every process) are the daemon's business: with a handler
    // registered here their default action (exit) no longer applies to the keeper.
    let _usr2 = signal(SignalKind::user_defined2());
    let _hup = signal(SignalKind::hangup());
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let far = || Instant::now() + Duration::from_secs(3600);
    loop {
        let deadline = k.deadline.unwrap_or_else(far);
        let garp_at = if k.garps_left > 0 {
            k.next_garp
        } else {
            k.next_refresh.filter(|_| k.held).unwrap_or_else(far)
        };
        let announcing = k.garps_left > 0 || (k.held && k.next_refresh.is_some());
        tokio::select! {
            // Deadlines first: a backlog of orders must never delay a deletion.
            biased;
            _ = tokio::time::sleep_until(deadline), if k.deadline.is_some() => {
                if k.held {
                    tracing::warn!(interface = %k.args.interface, vip = %vip, "hold ran out without renewal");
                }
                if !k.drop_vip("hold ran out").await {
                    k.deadline = Some(Instant::now() + RETRY);
                }
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
            line = lines.next_line() => match line {
                Ok(Some(line)) => match Order::parse(&line) {
                    Ok(order) => k.order(order).await,
                    Err(e) => k.error(format!("bad order: {e}")).await,
                },
                // EOF or an unreadable stdin: the daemon is gone.
                Ok(None) | Err(_) => break,
            },
            _ = tokio::time::sleep_until(garp_at), if announcing => k.announce().await,
        }
    }
    // The daemon is gone (or we are told to stop): give the VIP up, retrying for a while.
    for _ in 0..50 {
        if k.drop_vip("daemon gone").await {
            tracing::info!(interface = %k.args.interface, vip = %vip, "vip keeper exits");
            return 0;
        }
        tokio::time::sleep(RETRY).await;
    }
    1
}
