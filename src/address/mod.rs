//! The floating address: how clients reach whichever node is active at one stable address.
//! `proxy` is the front proxy and load balancer (`standin proxy`).

pub mod proxy;
