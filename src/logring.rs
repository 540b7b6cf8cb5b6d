//! The last log lines of this process, kept in memory so that a drill can collect the lines
//! of its window from every node (`GET /v1/logs`) as evidence. A `tracing` layer beside the
//! one that writes stderr: the same lines, bounded in count and length.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::sync::{Mutex, OnceLock};

use serde::{Deserialize, Serialize};
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::Context;
use tracing_subscriber::Layer;

/// Lines kept.
pub const LINES: usize = 2000;
/// Bytes kept of one line.
pub const LINE_BYTES: usize = 1024;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LogLine {
    pub unix_ms: u64,
    pub level: String,
    pub text: String,
}

fn ring() -> &'static Mutex<VecDeque<LogLine>> {
    static RING: OnceLock<Mutex<VecDeque<LogLine>>> = OnceLock::new();
    RING.get_or_init(|| Mutex::new(VecDeque::with_capacity(LINES)))
}

/// The layer that keeps lines (installed once, by `main`).
pub fn layer() -> RingLayer {
    RingLayer
}

pub struct RingLayer;

struct Fields(String);

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if self.0.len() >= LINE_BYTES {
            return;
        }
        if field.name() == "message" {
            let _ = write!(self.0, "{value:?}");
        } else {
            let _ = write!(self.0, " {}={value:?}", field.name());
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.0.push_str(value);
        } else {
            let _ = write!(self.0, " {}={value}", field.name());
        }
    }
}

impl<S: Subscriber> Layer<S> for RingLayer {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        if *event.metadata().level() > Level::INFO {
            return;
        }
        let mut f = Fields(String::new());
        event.record(&mut f);
        push(*event.metadata().level(), f.0);
    }
}

fn push(level: Level, mut text: String) {
    if text.len() > LINE_BYTES {
        let mut cut = LINE_BYTES;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
    }
    let line = LogLine {
        unix_ms: crate::clock::unix_ms(),
        level: level.as_str().to_ascii_lowercase(),
        text,
    };
    let mut r = ring().lock().unwrap_or_else(|p| p.into_inner());
    if r.len() >= LINES {
        r.pop_front();
    }
    r.push_back(line);
}

/// Lines logged at or after `since_ms` (Unix ms), oldest first, at most `limit`.
pub fn since(since_ms: u64, limit: usize) -> Vec<LogLine> {
    let r = ring().lock().unwrap_or_else(|p| p.into_inner());
    let start = r.partition_point(|l| l.unix_ms < since_ms);
    r.iter().skip(start).take(limit).cloned().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_bounded_and_selected_by_time() {
        let before = crate::clock::unix_ms();
        push(Level::WARN, "x".repeat(5000));
        push(Level::INFO, "é".repeat(1000));
        let got = since(before, LINES);
        assert!(got.len() >= 2);
        assert!(got.iter().all(|l| l.text.len() <= LINE_BYTES));
        for _ in 0..LINES + 10 {
            push(Level::INFO, "filler".into());
        }
        assert_eq!(since(0, usize::MAX).len(), LINES);
        assert!(since(u64::MAX, 10).is_empty());
    }
}
