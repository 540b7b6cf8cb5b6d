//! standin: high availability for any network service.
//!
//! A node daemon (`node`), the operator CLI (`cli`) and the admin API (`api`) in one crate.
//! See DESIGN in `docs/` and the module docs: `failover` holds the rules, `cluster` the Raft
//! wiring, `node` the runtime that connects them to the service.
// Unsafe code is denied everywhere except a few blocks that allow it explicitly, each with a
// SAFETY note: `address::vip::garp` (raw packet socket), `malloc` (mallopt),
// `service::process` (clearing ambient capabilities before exec), and the libc calls for TCP
// keep-alive (`net`), free disk space (`cluster`) and the file limit (`store::server`).
#![deny(unsafe_code)]
#![warn(rust_2018_idioms)]

pub mod address;
pub mod api;
pub mod backup;
pub mod bench;
pub mod certs;
pub mod cli;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod demo;
pub mod drill;
pub mod events;
pub mod failover;
pub mod failstop;
pub mod handover;
pub mod health;
pub mod kv;
pub mod lab;
pub mod logring;
pub mod malloc;
pub mod metrics;
pub mod net;
pub mod node;
pub mod service;
pub mod sizes;
pub mod status;
pub mod store;
pub mod systemd;
pub mod tls;
pub mod version;
