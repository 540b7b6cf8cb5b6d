//! The wall clock, at the bottom of the layers: milliseconds since the Unix epoch for what is
//! recorded and shown (events, health transitions, the service's state), never for decisions,
//! which use monotonic `Instant`s.

use std::time::{SystemTime, UNIX_EPOCH};

/// Wall-clock milliseconds since the Unix epoch (0 if the clock is before it, saturating far
/// in the future).
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}
