//! The floating address: a virtual IP that moves with the active node (`vip`).
pub mod vip;
