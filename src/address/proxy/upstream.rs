//! One backend of a listener (a data node's service or store address) and what the proxy knows
//! about it: the cluster's verdict, the proxy's own health checks, passive outlier ejection,
//! open connections. Everything the request path reads is an atomic: no lock per request.
//!
//! A backend's connections hold a clone of its *kill token*. Retiring the backend swaps the
//! token for a fresh one (new connections get the new one) and cancels the old one at once
//! (failure: nothing may be answered by a replaced node) or after a drain timeout (planned
//! switchover: let them finish).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{OnceLock, RwLock};
use std::time::{Duration, Instant};

use hyper::http::uri::Authority;
use tokio_util::sync::CancellationToken;

use super::config::OutlierConfig;

/// Milliseconds since the proxy's clock started (for atomics that hold instants).
pub fn now_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64 + 1
}

pub struct Upstream {
    /// The member id.
    pub node: String,
    pub addr: SocketAddr,
    /// `addr` as an HTTP authority, built once.
    pub authority: Authority,
    /// Healthy in the cluster's view, not in maintenance, not draining.
    cluster_ok: AtomicBool,
    /// The proxy's own active checks (always true when none run).
    check_ok: AtomicBool,
    /// Ejected by outlier detection until this [`now_ms`] (0: not ejected).
    ejected_until: AtomicU64,
    consecutive_failures: AtomicU32,
    /// Ejections so far (the next lasts `base × 2^ejections`); reset after a calm period.
    ejections: AtomicU32,
    /// Open connections (TCP) or requests in flight (HTTP).
    pub open: AtomicUsize,
    pub total: AtomicU64,
    pub failures: AtomicU64,
    kill: RwLock<CancellationToken>,
}

impl Upstream {
    pub fn new(node: String, addr: SocketAddr) -> Upstream {
        let authority = addr
            .to_string()
            .parse()
            .expect("a socket address is a valid authority");
        Upstream {
            node,
            addr,
            authority,
            cluster_ok: AtomicBool::new(false),
            check_ok: AtomicBool::new(true),
            ejected_until: AtomicU64::new(0),
            consecutive_failures: AtomicU32::new(0),
            ejections: AtomicU32::new(0),
            open: AtomicUsize::new(0),
            total: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            kill: RwLock::new(CancellationToken::new()),
        }
    }

    pub fn cluster_ok(&self) -> bool {
        self.cluster_ok.load(Ordering::Relaxed)
    }

    pub fn set_cluster_ok(&self, ok: bool) {
        self.cluster_ok.store(ok, Ordering::Relaxed);
    }

    pub fn check_ok(&self) -> bool {
        self.check_ok.load(Ordering::Relaxed)
    }

    pub fn set_check_ok(&self, ok: bool) {
        self.check_ok.store(ok, Ordering::Relaxed);
    }

    /// Milliseconds of ejection left, if ejected.
    pub fn ejected_for(&self, now: u64) -> Option<u64> {
        let until = self.ejected_until.load(Ordering::Relaxed);
        (until > now).then(|| until - now)
    }

    pub fn ejections(&self) -> u32 {
        self.ejections.load(Ordering::Relaxed)
    }

    /// May get new traffic in balance mode, ejection aside.
    pub fn serviceable(&self) -> bool {
        self.cluster_ok() && self.check_ok()
    }

    /// The token this backend's new connections must watch.
    pub fn kill_token(&self) -> CancellationToken {
        self.kill.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Ends the connections opened so far: at once (`drain: None`) or after `drain`.
    /// Connections opened from now on are not affected.
    pub fn retire(&self, drain: Option<Duration>) {
        let old = std::mem::take(&mut *self.kill.write().unwrap_or_else(|p| p.into_inner()));
        match drain {
            None => old.cancel(),
            Some(d) => {
                tokio::spawn(async move {
                    tokio::time::sleep(d).await;
                    old.cancel();
                });
            }
        }
    }

    /// Counts a connection (or request) as open until the guard drops.
    pub fn enter(&self) -> OpenGuard<'_> {
        self.open.fetch_add(1, Ordering::Relaxed);
        self.total.fetch_add(1, Ordering::Relaxed);
        OpenGuard(self)
    }

    pub fn record_success(&self) {
        if self.consecutive_failures.load(Ordering::Relaxed) != 0 {
            self.consecutive_failures.store(0, Ordering::Relaxed);
        }
    }

    /// A failed connect (or a 5xx): ejects after `consecutive-failures` in a row. Returns
    /// true if this failure ejected the backend.
    pub fn record_failure(&self, outlier: &OutlierConfig) -> bool {
        self.failures.fetch_add(1, Ordering::Relaxed);
        let now = now_ms();
        let until = self.ejected_until.load(Ordering::Relaxed);
        if outlier.consecutive_failures == 0 || until > now {
            // Failures while ejected (traffic only because nothing else is left) do not count.
            return false;
        }
        let n = self.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
        if n < outlier.consecutive_failures {
            return false;
        }
        // A backend that stayed clean for a whole max-ejection since its last ejection ended
        // starts over at the base time.
        if until != 0 && now - until > outlier.max_ejection.as_millis() as u64 {
            self.ejections.store(0, Ordering::Relaxed);
        }
        let k = self.ejections.fetch_add(1, Ordering::Relaxed).min(20);
        let time = outlier
            .base_ejection
            .saturating_mul(1u32 << k)
            .min(outlier.max_ejection);
        self.ejected_until.store(
            now.saturating_add(u64::try_from(time.as_millis()).unwrap_or(u64::MAX)),
            Ordering::Relaxed,
        );
        self.consecutive_failures.store(0, Ordering::Relaxed);
        tracing::warn!(backend = %self.node, address = %self.addr, ejected_ms = time.as_millis() as u64, "backend ejected after consecutive failures");
        true
    }
}

pub struct OpenGuard<'a>(&'a Upstream);

impl Drop for OpenGuard<'_> {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outlier(n: u32, base_ms: u64, max_ms: u64) -> OutlierConfig {
        OutlierConfig {
            consecutive_failures: n,
            base_ejection: Duration::from_millis(base_ms),
            max_ejection: Duration::from_millis(max_ms),
        }
    }

    #[test]
    fn consecutive_failures_eject_for_a_growing_time() {
        let u = Upstream::new("a".into(), "127.0.0.1:1".parse().expect("addr"));
        let o = outlier(3, 1000, 3000);
        assert!(!u.record_failure(&o));
        u.record_success();
        assert!(!u.record_failure(&o));
        assert!(!u.record_failure(&o));
        assert!(u.record_failure(&o), "third in a row ejects");
        let left = u.ejected_for(now_ms()).expect("ejected");
        assert!((900..=1000).contains(&left), "{left}");
        // Failures while ejected do not extend it.
        for _ in 0..3 {
            assert!(!u.record_failure(&o));
        }
        // Pretend the ejection ended: the next lasts twice as long, then capped.
        u.ejected_until.store(now_ms() - 1, Ordering::Relaxed);
        for _ in 0..2 {
            u.record_failure(&o);
        }
        assert!(u.record_failure(&o));
        let left = u.ejected_for(now_ms()).expect("ejected");
        assert!((1900..=2000).contains(&left), "{left}");
        u.ejected_until.store(now_ms() - 1, Ordering::Relaxed);
        for _ in 0..3 {
            u.record_failure(&o);
        }
        let left = u.ejected_for(now_ms()).expect("ejected");
        assert!((2900..=3000).contains(&left), "capped at max: {left}");
    }

    #[test]
    fn zero_consecutive_failures_never_ejects() {
        let u = Upstream::new("a".into(), "127.0.0.1:1".parse().expect("addr"));
        let o = outlier(0, 1000, 3000);
        for _ in 0..10 {
            assert!(!u.record_failure(&o));
        }
        assert_eq!(u.ejected_for(now_ms()), None);
    }

    #[tokio::test]
    async fn retire_cancels_old_connections_only() {
        let u = Upstream::new("a".into(), "127.0.0.1:1".parse().expect("addr"));
        let old = u.kill_token();
        u.retire(None);
        assert!(old.is_cancelled());
        assert!(!u.kill_token().is_cancelled());
        let old = u.kill_token();
        u.retire(Some(Duration::from_millis(30)));
        assert!(!old.is_cancelled(), "draining");
        tokio::time::timeout(Duration::from_secs(2), old.cancelled())
            .await
            .expect("closed after the drain timeout");
    }
}
