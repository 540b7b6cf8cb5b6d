//! The clients a drill measures with while it runs: one asks the service through its
//! floating address every few milliseconds, one writes to the store through its floating
//! address (and reads back what was acknowledged), and one asks every data node whether it
//! acts as active (two at once is the split brain the cluster must never show).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper::Method;
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use crate::backup::resp::read_reply;
pub use crate::backup::resp::Reply;
use crate::clock::unix_ms;
use crate::config::drill::ProbeTarget;

/// How often the service is asked.
pub const SERVICE_EVERY: Duration = Duration::from_millis(20);
/// How often the store is written to.
pub const STORE_EVERY: Duration = Duration::from_millis(50);
/// How often every data node is asked for its role.
pub const ROLES_EVERY: Duration = Duration::from_millis(50);
/// One probe's time budget.
const PROBE_TIMEOUT: Duration = Duration::from_millis(500);

/// One answer (or its absence) of the service.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceSample {
    pub at_ms: u64,
    pub ok: bool,
    pub latency_ms: f64,
    /// The node that answered, when the service says (`node=ID` in its answer).
    pub node: Option<String>,
    pub epoch: Option<u64>,
    pub error: Option<String>,
}

/// One write to the store.
#[derive(Debug, Clone, PartialEq)]
pub struct StoreSample {
    pub at_ms: u64,
    pub key: String,
    pub value: String,
    pub acked: bool,
    pub error: Option<String>,
}

/// A moment where more than one data node said it acts as active.
#[derive(Debug, Clone, PartialEq)]
pub struct TwoActives {
    pub at_ms: u64,
    pub nodes: Vec<String>,
}

#[derive(Default)]
pub struct Samples {
    pub service: Vec<ServiceSample>,
    pub store: Vec<StoreSample>,
    pub two_actives: Vec<TwoActives>,
}

/// Every probe of one drill run, sampling until `stop` fires.
pub struct Probes {
    pub samples: Arc<Mutex<Samples>>,
    stop: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// The data nodes' admin addresses the role watcher asks (replaced as the run learns).
    admins: Arc<Mutex<Vec<(String, String)>>>,
    /// While set, the store probe writes nothing.
    store_paused: Arc<std::sync::atomic::AtomicBool>,
}

/// The samples cap: a probe stops recording beyond it (an hour at the service's rate).
const MAX_SAMPLES: usize = 200_000;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Probes {
    pub fn start(
        service: ProbeTarget,
        store: Option<(String, Option<String>)>,
        run_id: &str,
        admins: Vec<(String, String)>,
    ) -> Probes {
        let samples = Arc::new(Mutex::new(Samples::default()));
        let stop = CancellationToken::new();
        let admins = Arc::new(Mutex::new(admins));
        let store_paused = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut tasks = vec![tokio::spawn(service_loop(service, samples.clone(), stop.clone()))];
        if let Some((addr, password)) = store {
            tasks.push(tokio::spawn(store_loop(
                addr,
                password,
                format!("standin-drill:{run_id}"),
                samples.clone(),
                store_paused.clone(),
                stop.clone(),
            )));
        }
        tasks.push(tokio::spawn(roles_loop(
            admins.clone(),
            samples.clone(),
            stop.clone(),
        )));
        Probes {
            samples,
            stop,
            tasks,
            admins,
            store_paused,
        }
    }

    /// Pauses (or resumes) the store probe's writes.
    pub fn pause_store(&self, paused: bool) {
        self.store_paused
            .store(paused, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn set_admins(&self, admins: Vec<(String, String)>) {
        *lock(&self.admins) = admins;
    }

    pub async fn stop(self) -> Arc<Mutex<Samples>> {
        self.stop.cancel();
        for t in self.tasks {
            let _ = t.await;
        }
        self.samples
    }
}

async fn service_loop(target: ProbeTarget, samples: Arc<Mutex<Samples>>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(SERVICE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let at_ms = unix_ms();
        let start = std::time::Instant::now();
        let (ok, node, epoch, error) = probe_service(&target).await;
        let sample = ServiceSample {
            at_ms,
            ok,
            latency_ms: start.elapsed().as_secs_f64() * 1000.0,
            node,
            epoch,
            error,
        };
        let mut s = lock(&samples);
        if s.service.len() < MAX_SAMPLES {
            s.service.push(sample);
        }
    }
}

/// One probe of the service: (answered, node, epoch, error).
pub async fn probe_service(target: &ProbeTarget) -> (bool, Option<String>, Option<u64>, Option<String>) {
    match target {
        ProbeTarget::Tcp { authority } => {
            match tokio::time::timeout(PROBE_TIMEOUT, TcpStream::connect(authority.as_str())).await {
                Ok(Ok(_)) => (true, None, None, None),
                Ok(Err(e)) => (false, None, None, Some(e.to_string())),
                Err(_) => (false, None, None, Some("connect timed out".into())),
            }
        }
        ProbeTarget::Http { authority, path } => {
            match crate::api::client::request(authority, Method::GET, path, None, PROBE_TIMEOUT).await {
                Ok(r) => {
                    let (mut node, mut epoch) = (None, None);
                    for kv in r.body.split_whitespace().take(16) {
                        match kv.split_once('=') {
                            Some(("node", v)) if v.len() <= 64 => node = Some(v.to_string()),
                            Some(("epoch", v)) => epoch = v.parse().ok(),
                            _ => {}
                        }
                    }
                    let ok = (200..300).contains(&r.status);
                    let error = (!ok).then(|| {
                        let body: String = r.body.chars().take(120).collect();
                        format!("HTTP {}: {}", r.status, body.trim())
                    });
                    (ok, node, epoch, error)
                }
                Err(e) => (false, None, None, Some(e.to_string())),
            }
        }
    }
}

/// A minimal Redis-protocol client: one connection, reconnected after an error.
pub struct Resp {
    addr: String,
    password: Option<String>,
    conn: Option<BufReader<TcpStream>>,
}

impl Resp {
    pub fn new(addr: String, password: Option<String>) -> Resp {
        Resp {
            addr,
            password,
            conn: None,
        }
    }

    /// Sends one command and reads its reply, within `PROBE_TIMEOUT` (connecting, and
    /// authenticating, first if needed). An error drops the connection.
    pub async fn call(&mut self, args: &[&[u8]]) -> Result<Reply, String> {
        let r = tokio::time::timeout(PROBE_TIMEOUT, self.call_inner(args)).await;
        let r = match r {
            Ok(r) => r,
            Err(_) => Err("no reply in time".to_string()),
        };
        if r.is_err() {
            self.conn = None;
        }
        r
    }

    async fn call_inner(&mut self, args: &[&[u8]]) -> Result<Reply, String> {
        if self.conn.is_none() {
            let s = TcpStream::connect(self.addr.as_str())
                .await
                .map_err(|e| format!("connect {}: {e}", self.addr))?;
            let _ = s.set_nodelay(true);
            self.conn = Some(BufReader::new(s));
            if let Some(p) = self.password.clone() {
                if let Reply::Error(e) = self.exchange(&[b"AUTH", p.as_bytes()]).await? {
                    return Err(format!("AUTH: {e}"));
                }
            }
        }
        self.exchange(args).await
    }

    async fn exchange(&mut self, args: &[&[u8]]) -> Result<Reply, String> {
        let conn = self.conn.as_mut().ok_or("not connected")?;
        let mut out = format!("*{}\r\n", args.len()).into_bytes();
        for a in args {
            out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
            out.extend_from_slice(a);
            out.extend_from_slice(b"\r\n");
        }
        conn.get_mut().write_all(&out).await.map_err(|e| e.to_string())?;
        read_reply(conn).await
    }
}

async fn store_loop(
    addr: String,
    password: Option<String>,
    prefix: String,
    samples: Arc<Mutex<Samples>>,
    paused: Arc<std::sync::atomic::AtomicBool>,
    stop: CancellationToken,
) {
    let mut client = Resp::new(addr, password);
    let mut tick = tokio::time::interval(STORE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut n: u64 = 0;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        if paused.load(std::sync::atomic::Ordering::Relaxed) {
            continue;
        }
        n += 1;
        let at_ms = unix_ms();
        let key = format!("{prefix}:{n}");
        let value = format!("{n}@{at_ms}");
        let r = client
            .call(&[
                b"SET",
                key.as_bytes(),
                value.as_bytes(),
                b"PX",
                super::KEY_TTL_MS.as_bytes(),
            ])
            .await;
        let (acked, error) = match r {
            Ok(Reply::Simple(s)) if s == "OK" => (true, None),
            Ok(Reply::Error(e)) => (false, Some(e)),
            Ok(other) => (false, Some(format!("unexpected reply {other:?}"))),
            Err(e) => (false, Some(e)),
        };
        let mut s = lock(&samples);
        if s.store.len() < MAX_SAMPLES {
            s.store.push(StoreSample {
                at_ms,
                key,
                value,
                acked,
                error,
            });
        }
    }
}

async fn roles_loop(
    admins: Arc<Mutex<Vec<(String, String)>>>,
    samples: Arc<Mutex<Samples>>,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(ROLES_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let nodes = lock(&admins).clone();
        let at_ms = unix_ms();
        let asks = nodes.iter().map(|(id, admin)| async move {
            let r =
                crate::api::client::request(admin, Method::GET, "/v1/role/active", None, PROBE_TIMEOUT).await;
            (id.clone(), matches!(r, Ok(ref r) if r.status == 200))
        });
        let answers = futures::future::join_all(asks).await;
        let active: Vec<String> = answers
            .into_iter()
            .filter(|(_, a)| *a)
            .map(|(id, _)| id)
            .collect();
        if active.len() > 1 {
            let mut s = lock(&samples);
            if s.two_actives.len() < 1000 {
                s.two_actives.push(TwoActives { at_ms, nodes: active });
            }
        }
    }
}

/// What the service probe saw between two instants.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ServiceStats {
    pub requests: u64,
    pub failed: u64,
    /// The longest time a client waited (ms): between two successful answers, by when they
    /// came back, less the probe interval (20 ms); 0 when answers kept coming.
    pub interruption_ms: u64,
    /// Answer latency of the successful requests.
    pub latency_p50_ms: f64,
    pub latency_max_ms: f64,
    /// Successful requests / all, in percent.
    pub availability_pct: f64,
    /// The first error seen, if any.
    pub first_error: Option<String>,
}

pub fn service_stats(samples: &[ServiceSample], from_ms: u64, to_ms: u64) -> ServiceStats {
    let mut in_window: Vec<&ServiceSample> = samples
        .iter()
        .filter(|s| s.at_ms >= from_ms && s.at_ms <= to_ms)
        .collect();
    in_window.sort_by_key(|s| s.at_ms);
    let requests = in_window.len() as u64;
    let failed = in_window.iter().filter(|s| !s.ok).count() as u64;
    let mut latencies: Vec<f64> = in_window.iter().filter(|s| s.ok).map(|s| s.latency_ms).collect();
    latencies.sort_by(|a, b| a.total_cmp(b));
    let pct = |p: f64| -> f64 {
        if latencies.is_empty() {
            0.0
        } else {
            latencies[((latencies.len() - 1) as f64 * p).round() as usize]
        }
    };
    // What a client waits for: the longest time between two successful answers, by when they
    // came back (a request the proxy held through a failover is late, not failed), less the
    // probe's own interval; a window that ends failing counts to its end.
    let mut done: Vec<(u64, bool)> = in_window
        .iter()
        .map(|s| (s.at_ms + s.latency_ms.max(0.0) as u64, s.ok))
        .collect();
    done.sort_by_key(|d| d.0);
    let every = SERVICE_EVERY.as_millis() as u64;
    let mut interruption = 0u64;
    let mut last_ok: Option<u64> = None;
    let mut since_ok_failed = false;
    for (at, ok) in &done {
        if *ok {
            let gap = at.saturating_sub(last_ok.unwrap_or(from_ms));
            if since_ok_failed || (last_ok.is_some() && gap > 2 * every) {
                interruption = interruption.max(gap.saturating_sub(every));
            }
            last_ok = Some(*at);
            since_ok_failed = false;
        } else {
            since_ok_failed = true;
        }
    }
    if since_ok_failed {
        interruption = interruption.max(to_ms.saturating_sub(last_ok.unwrap_or(from_ms)));
    }
    ServiceStats {
        requests,
        failed,
        interruption_ms: interruption,
        latency_p50_ms: round1(pct(0.5)),
        latency_max_ms: round1(latencies.last().copied().unwrap_or(0.0)),
        availability_pct: if requests == 0 {
            0.0
        } else {
            round1(100.0 * (requests - failed) as f64 / requests as f64)
        },
        first_error: in_window.iter().find_map(|s| s.error.clone()),
    }
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(at_ms: u64, ok: bool) -> ServiceSample {
        ServiceSample {
            at_ms,
            ok,
            latency_ms: 1.0,
            node: None,
            epoch: None,
            error: (!ok).then(|| "down".into()),
        }
    }

    #[test]
    fn interruption_is_measured_between_the_answers_around_the_failures() {
        let samples = vec![
            s(100, true),
            s(120, false),
            s(140, false),
            s(160, true),
            s(180, false),
            s(200, true),
        ];
        let st = service_stats(&samples, 100, 200);
        assert_eq!(st.requests, 6);
        assert_eq!(st.failed, 3);
        assert_eq!(
            st.interruption_ms, 40,
            "answers at 101 and 161, less the 20 ms interval"
        );
        assert_eq!(st.availability_pct, 50.0);
        assert_eq!(st.first_error.as_deref(), Some("down"));
        // Failing at the end of the window: up to the window's end.
        let st = service_stats(&[s(100, true), s(120, false)], 100, 500);
        assert_eq!(st.interruption_ms, 399);
        // Nothing failed and answers kept coming.
        let st = service_stats(&[s(100, true), s(120, true), s(140, true)], 0, 1000);
        assert_eq!((st.failed, st.interruption_ms), (0, 0));
        // A request held 800 ms (a proxy queueing through a failover) is an interruption.
        let mut held = s(140, true);
        held.latency_ms = 800.0;
        let st = service_stats(&[s(100, true), s(120, true), held], 0, 1000);
        assert_eq!((st.failed, st.interruption_ms), (0, 800 + 140 - 121 - 20));
        // An empty window.
        assert_eq!(service_stats(&[], 0, 10).requests, 0);
    }
}
