//! Event history reporting and alarms.
//!
//! * [`paths`]: every node reports its heartbeat paths going up or down into the replicated
//!   state (and so into the event history).
//! * [`alarms`]: the Raft leader derives degraded states (no in-sync standby, a standby
//!   unhealthy, a path down, quorum one failure from loss, mixed versions) from the replicated
//!   state and its live view, raises and clears them as replicated alarms (deduplicated by key),
//!   and delivers notable events (failover, switchover, fence, alarm raised/cleared) through
//!   [`notify`]: webhooks, an exec command and syslog.
//! * [`resources`]: the disk and memory alarms (`disk-low`, `disk-critical`, `memory-high`)
//!   judged from each node's own figures.

pub mod alarms;
pub mod notify;
pub mod paths;
pub mod resources;
