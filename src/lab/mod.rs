//! The lab: the test and benchmark kit. A local cluster of real `standin node` processes
//! (`harness`), relays that cut its paths (`relay`), a client that probes every service and
//! records who answered as active (`probe`), and hosts in network namespaces for the VIP
//! (`netns`).
//!
//! It drives the product from outside, as an operator or a client would (processes, configs,
//! sockets, the admin API), so it is imported by `demo`, `bench`, `cli` and the tests only:
//! no product module imports it (`tests/layers.rs` checks).

pub mod harness;
pub mod netns;
pub mod probe;
pub mod relay;
