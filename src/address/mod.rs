//! The floating address: how clients reach whichever node is active at one stable address.
//! `vip` is the virtual IP that moves with the active node (keepalived's way); `proxy` is the
//! front proxy and load balancer (`standin proxy`).

pub mod proxy;
pub mod vip;
