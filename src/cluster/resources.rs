//! What a standby needs to stay ready besides its log: room on the data disk and memory. One
//! background sampler per node reads the data directory's file system (`statvfs`), the size
//! of the data directory and its growth, and the daemon's resident memory
//! (`/proc/self/status`); the store's write path asks [`DiskSpace::check`] before a write, and
//! the status model shows [`Resources`] per node. The Raft leader learns each member's own
//! figures from the member's status answer (the `[alarms]` loop asks every member every few
//! seconds) and keeps them here ([`DiskSpace::remember`]) so its view shows every node's.

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::ClusterError;

/// How often free space and memory are read.
const SAMPLE_EVERY: Duration = Duration::from_millis(250);
/// How often the data directory is measured (a directory walk: less often).
const MEASURE_DIR_EVERY: Duration = Duration::from_secs(5);
/// The growth rate is measured over this sliding window.
pub const GROWTH_WINDOW: Duration = Duration::from_secs(3600);
/// A growth rate is shown once the window spans at least this much.
pub const GROWTH_MIN_SPAN: Duration = Duration::from_secs(60);
/// Most samples kept in the growth window (one per [`MEASURE_DIR_EVERY`] over an hour).
const GROWTH_SAMPLES: usize = 720;
/// A member's figures older than this are not shown (it stopped answering).
pub const PEER_TTL: Duration = Duration::from_secs(30);
/// Files counted in the data directory at most, and how deep it is walked (it holds a few).
const DIR_MAX_FILES: usize = 10_000;
const DIR_MAX_DEPTH: usize = 4;

/// One node's disk and memory figures, as that node measured them. Every field defaults, so
/// a status from an older build (no figures) or one that omits some still decodes.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct Resources {
    /// Bytes free to the daemon on the data directory's file system.
    pub disk_free_bytes: Option<u64>,
    /// Size of that file system.
    pub disk_total_bytes: Option<u64>,
    /// Bytes the redb files in the data directory take on disk.
    pub data_dir_bytes: Option<u64>,
    /// Growth of the data directory in bytes per hour over the last hour (negative: it shrank,
    /// e.g. after compaction); unknown until a minute of samples.
    pub data_dir_growth_bytes_per_hour: Option<i64>,
    /// The daemon's resident memory (VmRSS).
    pub resident_memory_bytes: Option<u64>,
    /// The store's used memory (keys and values), on a node with a `[store]`.
    pub store_used_memory_bytes: Option<u64>,
    /// The node's `min-free-disk` (0: writes are never refused for the disk).
    pub min_free_disk: u64,
    /// The node's `disk-low-warning` (0: no warning).
    pub disk_low_warning: u64,
    /// The node's `memory-warning` (0: none).
    pub memory_warning: u64,
    /// Free space is below `disk-low-warning`.
    pub disk_low: bool,
    /// Free space is below `min-free-disk`: store writes are refused.
    pub writes_refused: bool,
    /// Resident memory is above `memory-warning`.
    pub memory_high: bool,
    /// How old these figures are, in the view that shows them.
    pub age_ms: u64,
}

impl Resources {
    /// `disk 1.2 GiB free (34%), dir 40.0 MiB +3.0 MiB/h, mem 48.0 MiB, store 12.0 MiB`, with
    /// `DISK LOW` or `WRITES REFUSED` after the disk and `HIGH` after the memory when past a
    /// threshold: what `standin status` shows (one part a line in its table).
    pub fn summary(&self) -> String {
        let mut parts = Vec::new();
        if let Some(free) = self.disk_free_bytes {
            let pct = self
                .disk_total_bytes
                .filter(|t| *t > 0)
                .map(|t| format!(" ({}%)", (u128::from(free) * 100 / u128::from(t)).min(100)))
                .unwrap_or_default();
            parts.push(format!("disk {} free{pct}", human_bytes(free)));
            if self.writes_refused {
                parts.push("WRITES REFUSED".to_string());
            } else if self.disk_low {
                parts.push("DISK LOW".to_string());
            }
        }
        if let Some(d) = self.data_dir_bytes {
            let growth = self
                .data_dir_growth_bytes_per_hour
                .map(|g| {
                    let sign = if g < 0 { "-" } else { "+" };
                    format!(" {sign}{}/h", human_bytes(g.unsigned_abs()))
                })
                .unwrap_or_default();
            parts.push(format!("dir {}{growth}", human_bytes(d)));
        }
        if let Some(m) = self.resident_memory_bytes {
            let high = if self.memory_high { " HIGH" } else { "" };
            parts.push(format!("mem {}{high}", human_bytes(m)));
        }
        if let Some(s) = self.store_used_memory_bytes {
            parts.push(format!("store {}", human_bytes(s)));
        }
        parts.join(", ")
    }
}

/// `512 B`, `48.0 MiB`, `1.2 GiB`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// The `VmRSS` line of `/proc/self/status`, in bytes. `None` when the line is missing, its
/// number does not parse, its unit is not `kB`, or the value overflows.
pub fn parse_vm_rss(status: &str) -> Option<u64> {
    let line = status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?;
    let mut words = line.split_whitespace();
    let n: u64 = words.next()?.parse().ok()?;
    match words.next() {
        Some("kB") => n.checked_mul(1024),
        _ => None,
    }
}

/// This process's resident memory, if `/proc` tells it.
fn resident_memory() -> Option<u64> {
    // Bounded: the file is a few KiB; a longer one is not what we expect.
    let text = std::fs::read_to_string("/proc/self/status").ok()?;
    parse_vm_rss(&text)
}

/// Data directory sizes over a sliding window, for a growth rate.
#[derive(Debug, Default)]
pub struct Growth {
    /// (milliseconds since the sampler started, bytes), oldest first.
    samples: VecDeque<(u64, u64)>,
}

impl Growth {
    /// Adds a sample taken at `at_ms`; drops samples older than [`GROWTH_WINDOW`] and any
    /// beyond [`GROWTH_SAMPLES`]. A sample older than the last one is ignored.
    pub fn push(&mut self, at_ms: u64, bytes: u64) {
        if self.samples.back().is_some_and(|(t, _)| at_ms < *t) {
            return;
        }
        self.samples.push_back((at_ms, bytes));
        let window = GROWTH_WINDOW.as_millis() as u64;
        while self
            .samples
            .front()
            .is_some_and(|(t, _)| at_ms.saturating_sub(*t) > window)
            || self.samples.len() > GROWTH_SAMPLES
        {
            self.samples.pop_front();
        }
    }

    /// Bytes per hour between the oldest and the newest sample, once they are
    /// [`GROWTH_MIN_SPAN`] apart; saturates at the bounds of `i64`.
    pub fn per_hour(&self) -> Option<i64> {
        let (t0, b0) = *self.samples.front()?;
        let (t1, b1) = *self.samples.back()?;
        let span = t1.checked_sub(t0)?;
        if span < GROWTH_MIN_SPAN.as_millis() as u64 {
            return None;
        }
        let delta = i128::from(b1) - i128::from(b0);
        let rate = delta * 3_600_000 / i128::from(span);
        Some(rate.clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64)
    }
}

/// Bytes the redb files (`*.redb`: the log, the state and snapshots) under `dir` take on disk
/// (allocated blocks), walking at most [`DIR_MAX_DEPTH`] levels and [`DIR_MAX_FILES`] entries;
/// unreadable entries count 0. Other files an operator keeps there are not standin's growth.
fn dir_bytes(dir: &Path) -> std::io::Result<u64> {
    use std::os::unix::fs::MetadataExt;
    let mut total: u64 = 0;
    let mut seen = 0usize;
    let mut stack: Vec<(PathBuf, usize)> = vec![(dir.to_path_buf(), 0)];
    let mut first = true;
    while let Some((d, depth)) = stack.pop() {
        let entries = match std::fs::read_dir(&d) {
            Ok(e) => e,
            // The data directory itself must be readable; a subdirectory may vanish.
            Err(e) if first => return Err(e),
            Err(_) => continue,
        };
        first = false;
        for entry in entries.flatten() {
            seen += 1;
            if seen > DIR_MAX_FILES {
                return Ok(total);
            }
            let Ok(meta) = entry.metadata() else { continue };
            if meta.is_dir() {
                if depth + 1 < DIR_MAX_DEPTH {
                    stack.push((entry.path(), depth + 1));
                }
            } else if meta.is_file() && entry.path().extension().is_some_and(|e| e == "redb") {
                total = total.saturating_add(meta.blocks().saturating_mul(512));
            }
        }
    }
    Ok(total)
}

/// Bytes available to this process, and the size, of the file system holding `dir`.
fn disk_space(dir: &Path) -> std::io::Result<(u64, u64)> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::other("data directory path holds a NUL byte"))?;
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `path` is a NUL-terminated string that outlives the call; `st` points at writable
    // memory of the right type, read only after the call reported success.
    #[allow(unsafe_code)]
    let st = unsafe {
        if libc::statvfs(path.as_ptr(), st.as_mut_ptr()) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        st.assume_init()
    };
    let frsize = st.f_frsize as u64;
    Ok((
        (st.f_bavail as u64).saturating_mul(frsize),
        (st.f_blocks as u64).saturating_mul(frsize),
    ))
}

/// The thresholds a node judges its own figures by (its `[node]` section).
#[derive(Debug, Clone, Copy, Default)]
pub struct Thresholds {
    /// `min-free-disk` (0: off).
    pub min_free: u64,
    /// `disk-low-warning` (0: off).
    pub disk_warning: u64,
    /// `memory-warning` (0: off).
    pub memory_warning: u64,
}

/// What the sampler found and what the leader heard from the members.
#[derive(Default)]
struct Figures {
    own: Option<Resources>,
    peers: BTreeMap<String, (Resources, Instant)>,
}

/// Free space of the data directory's file system, sampled in the background, so a write
/// can be refused while there is still room for Raft's own records; and the node's other
/// figures ([`Resources`]), its own and (on the leader) the members'.
#[derive(Clone)]
pub struct DiskSpace {
    min_free: u64,
    free: Arc<AtomicU64>,
    figures: Arc<Mutex<Figures>>,
}

impl DiskSpace {
    /// Samples `dir` and this process until the last handle is dropped. The refusal applies
    /// only with `min_free > 0`; the figures are always sampled.
    pub(super) fn watch(dir: PathBuf, limits: Thresholds) -> DiskSpace {
        let free = Arc::new(AtomicU64::new(u64::MAX));
        let figures = Arc::new(Mutex::new(Figures::default()));
        let space = DiskSpace {
            min_free: limits.min_free,
            free: free.clone(),
            figures: figures.clone(),
        };
        tokio::spawn(async move {
            let started = Instant::now();
            let mut growth = Growth::default();
            let mut measured: Option<Instant> = None;
            let mut dir_size = None;
            let (mut was_refused, mut was_low, mut was_high) = (false, false, false);
            while Arc::strong_count(&figures) > 1 {
                let mut r = Resources {
                    min_free_disk: limits.min_free,
                    disk_low_warning: limits.disk_warning,
                    memory_warning: limits.memory_warning,
                    ..Resources::default()
                };
                match disk_space(&dir) {
                    Ok((n, total)) => {
                        free.store(n, Ordering::Relaxed);
                        r.disk_free_bytes = Some(n);
                        r.disk_total_bytes = Some(total);
                        r.writes_refused = limits.min_free > 0 && n < limits.min_free;
                        r.disk_low = limits.disk_warning > 0 && n < limits.disk_warning;
                    }
                    Err(e) => tracing::debug!(error = %e, "statvfs of the data directory failed"),
                }
                if measured.is_none_or(|t| t.elapsed() >= MEASURE_DIR_EVERY) {
                    measured = Some(Instant::now());
                    dir_size = dir_bytes(&dir).ok();
                    if let Some(b) = dir_size {
                        growth.push(started.elapsed().as_millis() as u64, b);
                    }
                }
                r.data_dir_bytes = dir_size;
                r.data_dir_growth_bytes_per_hour = growth.per_hour();
                r.resident_memory_bytes = resident_memory();
                r.memory_high = limits.memory_warning > 0
                    && r.resident_memory_bytes.is_some_and(|m| m > limits.memory_warning);
                let n = r.disk_free_bytes.unwrap_or(u64::MAX);
                if r.writes_refused != was_refused {
                    was_refused = r.writes_refused;
                    if was_refused {
                        tracing::error!(free = n, min = limits.min_free, dir = %dir.display(), "data disk nearly full: store writes refused");
                    } else {
                        tracing::info!(free = n, dir = %dir.display(), "data disk has room again: store writes accepted");
                    }
                }
                if r.disk_low != was_low {
                    was_low = r.disk_low;
                    if was_low {
                        tracing::warn!(free = n, warning = limits.disk_warning, dir = %dir.display(), "data disk low (node.disk-low-warning)");
                    }
                }
                if r.memory_high != was_high {
                    was_high = r.memory_high;
                    if was_high {
                        tracing::warn!(rss = ?r.resident_memory_bytes, warning = limits.memory_warning, "resident memory above node.memory-warning");
                    }
                }
                figures.lock().unwrap_or_else(|p| p.into_inner()).own = Some(r);
                tokio::time::sleep(SAMPLE_EVERY).await;
            }
        });
        space
    }

    /// `Err` while the disk has less free space than the configured minimum.
    pub fn check(&self) -> Result<(), ClusterError> {
        let free = self.free.load(Ordering::Relaxed);
        if self.min_free > 0 && free < self.min_free {
            return Err(ClusterError::DiskLow {
                free,
                min: self.min_free,
            });
        }
        Ok(())
    }

    /// This node's latest figures (none before the first sample).
    pub fn own(&self) -> Option<Resources> {
        self.figures.lock().unwrap_or_else(|p| p.into_inner()).own.clone()
    }

    /// Keeps what member `id` reported about itself (see the module doc); forgets figures
    /// older than [`PEER_TTL`].
    pub fn remember(&self, id: &str, mut r: Resources) {
        r.age_ms = 0;
        let mut f = self.figures.lock().unwrap_or_else(|p| p.into_inner());
        f.peers.retain(|_, (_, at)| at.elapsed() < PEER_TTL);
        f.peers.insert(id.to_string(), (r, Instant::now()));
    }

    /// What member `id` last reported about itself, within [`PEER_TTL`], with its age.
    pub fn peer(&self, id: &str) -> Option<Resources> {
        let f = self.figures.lock().unwrap_or_else(|p| p.into_inner());
        let (r, at) = f.peers.get(id)?;
        let age = at.elapsed();
        (age < PEER_TTL).then(|| Resources {
            age_ms: r.age_ms.saturating_add(age.as_millis() as u64),
            ..r.clone()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vm_rss_is_read_in_bytes() {
        let text = "Name:\tstandin\nVmPeak:\t  999 kB\nVmRSS:\t   49152 kB\nThreads:\t9\n";
        assert_eq!(parse_vm_rss(text), Some(49152 * 1024));
    }

    #[test]
    fn vm_rss_on_hostile_input_is_none() {
        for text in [
            "",
            "garbage\n\0\u{fffd}",
            "Name:\tstandin\nThreads:\t9\n",
            "VmRSS:\n",
            "VmRSS:\t kB\n",
            "VmRSS:\t-5 kB\n",
            "VmRSS:\t12.5 kB\n",
            "VmRSS:\t0x10 kB\n",
            "VmRSS:\t49152 MB\n",
            "VmRSS:\t49152\n",
            // Overflows u64 as a number, and as bytes.
            "VmRSS:\t99999999999999999999999 kB\n",
            "VmRSS:\t18446744073709551615 kB\n",
            // Not at the start of a line.
            "XVmRSS:\t100 kB\n",
        ] {
            assert_eq!(parse_vm_rss(text), None, "{text:?}");
        }
        // Extra fields after the unit, and the first VmRSS line wins.
        assert_eq!(parse_vm_rss("VmRSS: 1 kB extra\nVmRSS: 2 kB\n"), Some(1024));
    }

    #[test]
    fn growth_needs_a_minute_and_is_per_hour() {
        let mut g = Growth::default();
        assert_eq!(g.per_hour(), None, "no samples");
        g.push(0, 1_000);
        assert_eq!(g.per_hour(), None, "one sample");
        g.push(59_999, 2_000);
        assert_eq!(g.per_hour(), None, "less than a minute");
        g.push(60_000, 1_000 + 1_000_000);
        // 1 MB a minute: 60 MB an hour.
        assert_eq!(g.per_hour(), Some(60_000_000));
        // Shrinking is negative.
        g.push(120_000, 0);
        assert_eq!(g.per_hour(), Some(-30_000));
    }

    #[test]
    fn growth_on_hostile_input_saturates_and_ignores_time_going_back() {
        let mut g = Growth::default();
        g.push(0, 0);
        g.push(GROWTH_MIN_SPAN.as_millis() as u64, u64::MAX);
        assert_eq!(g.per_hour(), Some(i64::MAX), "huge growth saturates");
        let mut g = Growth::default();
        g.push(0, u64::MAX);
        g.push(GROWTH_MIN_SPAN.as_millis() as u64, 0);
        assert_eq!(g.per_hour(), Some(i64::MIN), "huge shrink saturates");
        // A sample from the past is ignored.
        let mut g = Growth::default();
        g.push(100_000, 10);
        g.push(5, 1_000_000);
        assert_eq!(g.samples.len(), 1, "{:?}", g.samples);
        // The window slides: only the last hour counts (a sample at the end of time pushes
        // the others out), and one sample is no rate.
        g.push(u64::MAX, 10);
        assert_eq!(g.samples.len(), 1, "{:?}", g.samples);
        assert_eq!(g.samples.front(), Some(&(u64::MAX, 10)));
        assert_eq!(g.per_hour(), None);
    }

    #[test]
    fn growth_keeps_a_bounded_window() {
        let mut g = Growth::default();
        for i in 0..10_000u64 {
            g.push(i * 1_000, i);
        }
        assert!(g.samples.len() <= GROWTH_SAMPLES, "{}", g.samples.len());
        let span = g.samples.back().expect("last").0 - g.samples.front().expect("first").0;
        assert!(span <= GROWTH_WINDOW.as_millis() as u64, "{span}");
        // 1 byte a second.
        assert_eq!(g.per_hour(), Some(3600));
    }

    #[test]
    fn human_sizes_and_the_summary() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(48 * 1024 * 1024), "48.0 MiB");
        assert_eq!(human_bytes(u64::MAX), "16384.0 PiB");
        let r = Resources {
            disk_free_bytes: Some(1288490188),
            disk_total_bytes: Some(3789677025),
            data_dir_bytes: Some(40 * 1024 * 1024),
            data_dir_growth_bytes_per_hour: Some(-3 * 1024 * 1024),
            resident_memory_bytes: Some(48 * 1024 * 1024),
            disk_low: true,
            ..Resources::default()
        };
        assert_eq!(
            r.summary(),
            "disk 1.2 GiB free (33%), DISK LOW, dir 40.0 MiB -3.0 MiB/h, mem 48.0 MiB"
        );
        // A zero-sized file system (a hostile answer) shows no percentage.
        let r = Resources {
            disk_free_bytes: Some(5),
            disk_total_bytes: Some(0),
            ..Resources::default()
        };
        assert_eq!(r.summary(), "disk 5 B free");
        assert_eq!(Resources::default().summary(), "");
    }

    #[test]
    fn an_answer_without_figures_or_with_some_decodes() {
        let r: Resources = serde_json::from_str("{}").expect("empty");
        assert_eq!(r, Resources::default());
        let r: Resources =
            serde_json::from_str(r#"{"disk_free_bytes":7,"future_field":1}"#).expect("partial");
        assert_eq!(r.disk_free_bytes, Some(7));
    }

    #[tokio::test]
    async fn the_sampler_runs_without_min_free_disk() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("standin.redb"), vec![1u8; 64 * 1024]).expect("write");
        // Not standin's: not counted.
        std::fs::write(dir.path().join("filler"), vec![1u8; 1024 * 1024]).expect("write");
        let space = DiskSpace::watch(
            dir.path().to_path_buf(),
            Thresholds {
                min_free: 0,
                disk_warning: u64::MAX,
                memory_warning: 0,
            },
        );
        let deadline = Instant::now() + Duration::from_secs(5);
        let r = loop {
            if let Some(r) = space.own() {
                break r;
            }
            assert!(Instant::now() < deadline, "no sample");
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert!(r.disk_total_bytes.is_some_and(|t| t > 0), "{r:?}");
        assert!(
            r.data_dir_bytes
                .is_some_and(|b| (64 * 1024..1024 * 1024).contains(&b)),
            "{r:?}"
        );
        assert!(r.resident_memory_bytes.is_some_and(|m| m > 0), "{r:?}");
        assert!(r.disk_low, "below a warning of u64::MAX");
        assert!(!r.writes_refused, "min-free-disk 0: never refused");
        assert!(space.check().is_ok());
        // A member's figures are shown with their age, then forgotten.
        space.remember("b", r.clone());
        assert_eq!(
            space.peer("b").map(|p| p.disk_free_bytes),
            Some(r.disk_free_bytes)
        );
        assert_eq!(space.peer("c"), None);
    }
}
