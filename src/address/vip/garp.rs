//! Gratuitous ARP: tells every host on the segment that the VIP now lives at this
//! interface's MAC, so that clients and switches stop sending to the previous holder without
//! waiting for their ARP entries to expire.
//!
//! The frame is an ARP *request* for the VIP from the VIP (sender IP = target IP = VIP,
//! sender MAC = the interface's MAC, Ethernet broadcast), sent on an `AF_PACKET` raw socket.
//! Linux updates an existing neighbour entry on such a request at once (it counts as
//! gratuitous, so the ARP lock time does not hold it back), which a reply would not do on
//! older kernels. The interface's index and MAC are read with the same socket's ioctls.
//!
//! This is the only module with `unsafe` code: four libc calls (socket, two ioctls, sendto),
//! each with its `SAFETY` note.

use std::ffi::c_void;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// A failure to look up the interface or to send, naming the interface.
#[derive(Debug, thiserror::Error)]
pub enum GarpError {
    #[error("interface name {0:?} is empty or longer than 15 bytes")]
    BadName(String),
    #[error("cannot open a raw packet socket for {interface}: {source}")]
    Socket {
        interface: String,
        source: std::io::Error,
    },
    #[error("cannot read the {what} of {interface}: {source}")]
    Lookup {
        what: &'static str,
        interface: String,
        source: std::io::Error,
    },
    #[error("{interface} is not an Ethernet interface (hardware type {hw_type})")]
    NotEthernet { interface: String, hw_type: u16 },
    #[error("cannot send a gratuitous ARP for {vip} on {interface}: {source}")]
    Send {
        interface: String,
        vip: Ipv4Addr,
        source: std::io::Error,
    },
}

/// An Ethernet interface, looked up by name, with a raw socket to announce on it.
pub struct Interface {
    pub name: String,
    pub index: u32,
    pub mac: [u8; 6],
    socket: OwnedFd,
}

/// Length of the frame: Ethernet header (14) + ARP for IPv4 over Ethernet (28).
pub const FRAME_LEN: usize = 42;

/// The gratuitous ARP request announcing `ip` at `mac`.
pub fn frame(mac: [u8; 6], ip: Ipv4Addr) -> [u8; FRAME_LEN] {
    let mut f = [0u8; FRAME_LEN];
    f[0..6].copy_from_slice(&[0xff; 6]); // destination: broadcast
    f[6..12].copy_from_slice(&mac); // source
    f[12..14].copy_from_slice(&(libc::ETH_P_ARP as u16).to_be_bytes());
    f[14..16].copy_from_slice(&libc::ARPHRD_ETHER.to_be_bytes()); // hardware type
    f[16..18].copy_from_slice(&(libc::ETH_P_IP as u16).to_be_bytes()); // protocol type
    f[18] = 6; // hardware address length
    f[19] = 4; // protocol address length
    f[20..22].copy_from_slice(&1u16.to_be_bytes()); // operation: request
    f[22..28].copy_from_slice(&mac); // sender MAC
    f[28..32].copy_from_slice(&ip.octets()); // sender IP
                                             // Target MAC stays zero (unknown, as in any request); target IP = sender IP.
    f[38..42].copy_from_slice(&ip.octets());
    f
}

/// An `ifreq` carrying `name`.
fn ifreq(name: &str) -> Result<libc::ifreq, GarpError> {
    let bytes = name.as_bytes();
    if bytes.is_empty() || bytes.len() >= libc::IFNAMSIZ || bytes.contains(&0) {
        return Err(GarpError::BadName(name.to_string()));
    }
    // SAFETY: `ifreq` is a plain C struct (a name array and a union of integers and
    // sockaddrs) for which all-zero bytes are a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    Ok(req)
}

impl Interface {
    /// Opens the raw socket and reads the interface's index and MAC. Needs `CAP_NET_RAW`.
    pub fn open(name: &str) -> Result<Interface, GarpError> {
        let mut req = ifreq(name)?;
        let protocol = (libc::ETH_P_ARP as u16).to_be() as libc::c_int;
        // SAFETY: socket(2) takes no pointers; the result is checked before use.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, protocol) };
        if fd < 0 {
            return Err(GarpError::Socket {
                interface: name.to_string(),
                source: std::io::Error::last_os_error(),
            });
        }
        // SAFETY: `fd` is a freshly opened descriptor that nothing else owns.
        let socket = unsafe { OwnedFd::from_raw_fd(fd) };
        let lookup = |what, source| GarpError::Lookup {
            what,
            interface: name.to_string(),
            source,
        };

        // SAFETY: SIOCGIFINDEX reads the name from and writes an int into `req`, a valid,
        // exclusively borrowed `ifreq` that outlives the call.
        let r = unsafe { libc::ioctl(socket.as_raw_fd(), libc::SIOCGIFINDEX, &mut req) };
        if r < 0 {
            return Err(lookup("index", std::io::Error::last_os_error()));
        }
        // SAFETY: after a successful SIOCGIFINDEX the union holds `ifru_ifindex`.
        let index = unsafe { req.ifr_ifru.ifru_ifindex } as u32;

        // SAFETY: as above; SIOCGIFHWADDR writes a `sockaddr` into the union.
        let r = unsafe { libc::ioctl(socket.as_raw_fd(), libc::SIOCGIFHWADDR, &mut req) };
        if r < 0 {
            return Err(lookup("MAC address", std::io::Error::last_os_error()));
        }
        // SAFETY: after a successful SIOCGIFHWADDR the union holds `ifru_hwaddr`.
        let hw = unsafe { req.ifr_ifru.ifru_hwaddr };
        if hw.sa_family != libc::ARPHRD_ETHER {
            return Err(GarpError::NotEthernet {
                interface: name.to_string(),
                hw_type: hw.sa_family,
            });
        }
        let mut mac = [0u8; 6];
        for (dst, src) in mac.iter_mut().zip(hw.sa_data.iter()) {
            *dst = *src as u8;
        }
        Ok(Interface {
            name: name.to_string(),
            index,
            mac,
            socket,
        })
    }

    /// The MAC as `aa:bb:cc:dd:ee:ff`.
    pub fn mac_string(&self) -> String {
        let hex: Vec<String> = self.mac.iter().map(|b| format!("{b:02x}")).collect();
        hex.join(":")
    }

    /// Sends one gratuitous ARP for `vip` out of this interface.
    pub fn announce(&self, vip: Ipv4Addr) -> Result<(), GarpError> {
        let frame = frame(self.mac, vip);
        let mut to = libc::sockaddr_ll {
            sll_family: libc::AF_PACKET as u16,
            sll_protocol: (libc::ETH_P_ARP as u16).to_be(),
            sll_ifindex: self.index as libc::c_int,
            sll_hatype: 0,
            sll_pkttype: 0,
            sll_halen: 6,
            sll_addr: [0; 8],
        };
        to.sll_addr[..6].copy_from_slice(&[0xff; 6]);
        // SAFETY: `frame` and `to` are live locals for the duration of the call, and the
        // lengths passed are their exact sizes.
        let sent = unsafe {
            libc::sendto(
                self.socket.as_raw_fd(),
                frame.as_ptr() as *const c_void,
                frame.len(),
                0,
                &to as *const libc::sockaddr_ll as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if sent < 0 {
            return Err(GarpError::Send {
                interface: self.name.clone(),
                vip,
                source: std::io::Error::last_os_error(),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_frame_is_a_broadcast_arp_request_from_and_for_the_vip() {
        let mac = [0x02, 0x11, 0x22, 0x33, 0x44, 0x55];
        let f = frame(mac, Ipv4Addr::new(10, 0, 0, 100));
        let expected: [u8; FRAME_LEN] = [
            0xff, 0xff, 0xff, 0xff, 0xff, 0xff, // to: broadcast
            0x02, 0x11, 0x22, 0x33, 0x44, 0x55, // from: our MAC
            0x08, 0x06, // ARP
            0x00, 0x01, 0x08, 0x00, 6, 4, 0x00, 0x01, // Ethernet/IPv4, request
            0x02, 0x11, 0x22, 0x33, 0x44, 0x55, 10, 0, 0, 100, // sender
            0, 0, 0, 0, 0, 0, 10, 0, 0, 100, // target
        ];
        assert_eq!(f, expected);
    }

    #[test]
    fn bad_names_are_refused_before_any_syscall() {
        for bad in ["", "a-name-longer-than-15", "nul\0"] {
            assert!(
                matches!(Interface::open(bad), Err(GarpError::BadName(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn loopback_is_found_but_is_not_ethernet() {
        // Needs CAP_NET_RAW for the socket; without it the error names the interface.
        match Interface::open("lo") {
            Err(GarpError::NotEthernet { interface, hw_type }) => {
                assert_eq!(interface, "lo");
                assert_eq!(hw_type, libc::ARPHRD_LOOPBACK);
            }
            Err(GarpError::Socket { interface, .. }) => assert_eq!(interface, "lo"),
            Err(e) => panic!("unexpected error: {e}"),
            Ok(_) => panic!("lo is not Ethernet"),
        }
        match Interface::open("no-such-if0") {
            Err(GarpError::Lookup { interface, .. } | GarpError::Socket { interface, .. }) => {
                assert_eq!(interface, "no-such-if0")
            }
            Err(e) => panic!("unexpected error: {e}"),
            Ok(_) => panic!("no-such-if0 exists"),
        }
    }
}
