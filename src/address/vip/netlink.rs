//! The VIP on the interface: add, delete and query one IPv4 address over rtnetlink (what
//! `ip addr add|del|show` do).
//!
//! Each call is one request on a connection opened by [`Netlink::open`]; the connection's
//! task runs on the caller's tokio runtime. "Already there" on add and "not there" on delete
//! are outcomes, not errors, so the keeper can be told the truth either way.

use std::net::IpAddr;

use futures::TryStreamExt;
use rtnetlink::packet_route::address::{AddressAttribute, AddressMessage};
use rtnetlink::{AddressMessageBuilder, Handle};

use super::Vip;

/// A netlink operation that failed, naming the operation, the address and the interface.
#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    #[error("cannot open a netlink socket: {0}")]
    Open(std::io::Error),
    #[error("cannot {op} {vip} on {interface}: {source}")]
    Op {
        op: &'static str,
        vip: Vip,
        interface: String,
        source: std::io::Error,
    },
}

/// A route-netlink connection of this process (its network namespace).
pub struct Netlink {
    handle: Handle,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Netlink {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The errno of a netlink reply, as an `io::Error` (`EPERM`, `ENODEV`, ...).
fn io_error(e: rtnetlink::Error) -> std::io::Error {
    match e {
        rtnetlink::Error::NetlinkError(m) => m.to_io(),
        other => std::io::Error::other(other.to_string()),
    }
}

fn message(index: u32, vip: Vip) -> AddressMessage {
    AddressMessageBuilder::<std::net::Ipv4Addr>::new()
        .index(index)
        .address(vip.addr, vip.prefix)
        .build()
}

impl Netlink {
    /// Opens a connection; must be called inside a tokio runtime.
    pub fn open() -> Result<Netlink, NetlinkError> {
        let (connection, handle, _) = rtnetlink::new_connection().map_err(NetlinkError::Open)?;
        let task = tokio::spawn(connection);
        Ok(Netlink { handle, task })
    }

    /// The index of the interface called `interface`.
    pub async fn index_of(&self, interface: &str, vip: Vip) -> Result<u32, NetlinkError> {
        let mut links = self.handle.link().get().match_name(interface).execute();
        let err = |source| NetlinkError::Op {
            op: "find the interface for",
            vip,
            interface: interface.to_string(),
            source,
        };
        match links.try_next().await.map_err(|e| err(io_error(e)))? {
            Some(link) => Ok(link.header.index),
            None => Err(err(std::io::Error::from_raw_os_error(libc::ENODEV))),
        }
    }

    /// Whether `vip` (address and prefix) is on the interface with `index`.
    pub async fn has(&self, interface: &str, index: u32, vip: Vip) -> Result<bool, NetlinkError> {
        let mut found = self
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .set_address_filter(IpAddr::V4(vip.addr))
            .execute();
        let err = |source| NetlinkError::Op {
            op: "query",
            vip,
            interface: interface.to_string(),
            source,
        };
        while let Some(m) = found.try_next().await.map_err(|e| err(io_error(e)))? {
            let local = m
                .attributes
                .iter()
                .any(|a| matches!(a, AddressAttribute::Local(IpAddr::V4(a)) if *a == vip.addr));
            if local && m.header.prefix_len == vip.prefix {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Adds `vip`; `Ok(false)` if it was already there.
    pub async fn add(&self, interface: &str, index: u32, vip: Vip) -> Result<bool, NetlinkError> {
        match self
            .handle
            .address()
            .add(index, IpAddr::V4(vip.addr), vip.prefix)
            .execute()
            .await
            .map_err(io_error)
        {
            Ok(()) => Ok(true),
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(false),
            Err(source) => Err(NetlinkError::Op {
                op: "add",
                vip,
                interface: interface.to_string(),
                source,
            }),
        }
    }

    /// Deletes `vip`; `Ok(false)` if it was not there.
    pub async fn delete(&self, interface: &str, index: u32, vip: Vip) -> Result<bool, NetlinkError> {
        match self
            .handle
            .address()
            .del(message(index, vip))
            .execute()
            .await
            .map_err(io_error)
        {
            Ok(()) => Ok(true),
            Err(e) if e.raw_os_error() == Some(libc::EADDRNOTAVAIL) => Ok(false),
            Err(source) => Err(NetlinkError::Op {
                op: "delete",
                vip,
                interface: interface.to_string(),
                source,
            }),
        }
    }
}
