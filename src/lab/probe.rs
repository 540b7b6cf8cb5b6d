//! The client of the failover benchmark and the fault tests: probes every service address every
//! `interval` and records which node answered as active at which epoch.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::lab::harness::probe_service;

#[derive(Default)]
struct Log {
    /// (time, epoch) of every successful probe.
    answers: Vec<(Instant, u64)>,
    max_epoch: u64,
    stale: usize,
}

pub struct Prober {
    log: Arc<Mutex<Log>>,
    cancel: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Prober {
    pub fn start(services: Vec<SocketAddr>, interval: Duration) -> Prober {
        let log = Arc::new(Mutex::new(Log::default()));
        let cancel = CancellationToken::new();
        let (l2, c2) = (log.clone(), cancel.clone());
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            loop {
                tokio::select! {
                    _ = c2.cancelled() => return,
                    _ = tick.tick() => {}
                }
                let probes = services
                    .iter()
                    .map(|s| probe_service(*s, Duration::from_millis(200)));
                let results = futures::future::join_all(probes).await;
                let now = Instant::now();
                let mut log = l2.lock().unwrap_or_else(|p| p.into_inner());
                let answered: Vec<(String, u64)> = results.into_iter().flatten().collect();
                // Two nodes answering as active in the same round is an overlap.
                if answered.windows(2).any(|w| w[0].0 != w[1].0) {
                    log.stale += 1;
                }
                for (_, epoch) in answered {
                    if epoch < log.max_epoch {
                        log.stale += 1;
                    }
                    log.max_epoch = log.max_epoch.max(epoch);
                    log.answers.push((now, epoch));
                }
            }
        });
        Prober { log, cancel, task }
    }

    /// Waits for the first answer with an epoch above `old_epoch`; returns the interruption:
    /// from `max(fault, last answer of an old epoch)` to that answer.
    pub async fn wait_new_epoch(
        &self,
        old_epoch: u64,
        fault: Instant,
        timeout: Duration,
    ) -> Option<Duration> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            {
                let log = self.log.lock().unwrap_or_else(|p| p.into_inner());
                let first_new = log
                    .answers
                    .iter()
                    .find(|(t, e)| *t >= fault && *e > old_epoch)
                    .map(|(t, _)| *t);
                if let Some(new) = first_new {
                    let last_old = log
                        .answers
                        .iter()
                        .filter(|(t, e)| *t >= fault && *e <= old_epoch && *t < new)
                        .map(|(t, _)| *t)
                        .max()
                        .unwrap_or(fault);
                    return Some(new.duration_since(last_old));
                }
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        None
    }

    pub fn stale_answers(&self) -> usize {
        self.log.lock().unwrap_or_else(|p| p.into_inner()).stale
    }

    pub async fn stop(self) {
        self.cancel.cancel();
        let _ = self.task.await;
    }
}
