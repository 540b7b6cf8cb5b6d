//! The virtual IP, keepalived's way: the active node adds the address to an interface and
//! announces it with gratuitous ARP; every other node has it removed.
//!
//! The address is never held by the daemon itself but by a small keeper process it spawns
//! (`standin vip-keeper`), so that a node never holds the VIP without a valid lease even when
//! the daemon is `kill -9`ed or `SIGSTOP`ped:
//!
//! ```text
//!   daemon: node.local (role loop) ──> driver ──"hold <ms>" / "release" (stdin)──> keeper
//!                                           <──"held" / "released" / "error ..." (stdout)──┘
//!   keeper: netlink (add / delete / query the address) + garp (announce it)
//! ```
//!
//! The keeper deletes the address when a hold runs out without a new one (daemon frozen), on
//! stdin EOF (daemon dead), and on `release`. Files: `netlink` (the address on the
//! interface), `garp` (gratuitous ARP over a raw socket), `keeper` (the process),
//! `driver` (the daemon's side).

pub mod driver;
#[allow(unsafe_code)]
pub mod garp;
pub mod keeper;
pub mod netlink;

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;
use std::time::Duration;

/// An IPv4 address with its prefix length, as in `10.0.0.100/24`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Vip {
    pub addr: Ipv4Addr,
    pub prefix: u8,
}

impl FromStr for Vip {
    type Err = String;

    fn from_str(s: &str) -> Result<Vip, String> {
        let (addr, prefix) = s
            .split_once('/')
            .ok_or_else(|| format!("{s:?} is not in CIDR form (like \"10.0.0.100/24\")"))?;
        let addr: Ipv4Addr = addr
            .parse()
            .map_err(|_| format!("{addr:?} is not an IPv4 address"))?;
        let prefix: u8 = prefix
            .parse()
            .ok()
            .filter(|p| (1..=32).contains(p))
            .ok_or_else(|| format!("prefix {prefix:?} must be a number from 1 to 32"))?;
        if addr.is_unspecified() || addr.is_loopback() || addr.is_multicast() || addr.is_broadcast() {
            return Err(format!("{addr} cannot be a virtual IP"));
        }
        if prefix <= 30 {
            let host = u32::from(addr) & (u32::MAX >> prefix);
            if host == 0 || host == u32::MAX >> prefix {
                return Err(format!("{addr} is the network or broadcast address of /{prefix}"));
            }
        }
        Ok(Vip { addr, prefix })
    }
}

impl fmt::Display for Vip {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// One line from the daemon to the keeper.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    /// "You may hold the VIP for `ms` more milliseconds", counted from `stamp_us` (the
    /// sender's `CLOCK_MONOTONIC` in microseconds when it computed `ms`) if given, else from
    /// when the keeper reads the line. The stamp makes a line that sat in the pipe (the daemon
    /// was stopped between computing and writing it) worth no more than it was when computed.
    Hold { ms: u64, stamp_us: Option<u64> },
    /// Delete the VIP now.
    Release,
}

impl Order {
    /// Parses one line: `hold <ms> [<stamp_us>]` or `release`.
    pub fn parse(line: &str) -> Result<Order, String> {
        let mut words = line.split_whitespace();
        let order = match words.next() {
            Some("hold") => {
                let ms = words
                    .next()
                    .and_then(|w| w.parse().ok())
                    .ok_or_else(|| format!("{line:?}: expected `hold <ms>`"))?;
                let stamp_us = match words.next() {
                    Some(w) => Some(w.parse().map_err(|_| format!("{line:?}: bad stamp {w:?}"))?),
                    None => None,
                };
                Order::Hold { ms, stamp_us }
            }
            Some("release") => Order::Release,
            _ => return Err(format!("{line:?}: expected `hold <ms>` or `release`")),
        };
        match words.next() {
            Some(extra) => Err(format!("{line:?}: unexpected {extra:?}")),
            None => Ok(order),
        }
    }
}

impl fmt::Display for Order {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Order::Hold {
                ms,
                stamp_us: Some(s),
            } => write!(f, "hold {ms} {s}"),
            Order::Hold { ms, stamp_us: None } => write!(f, "hold {ms}"),
            Order::Release => f.write_str("release"),
        }
    }
}

/// What the keeper reports on stdout, one line per change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Report {
    /// The VIP is on the interface (added, or found there while holding).
    Held,
    /// The VIP is not on the interface (deleted, or never added).
    Released,
    /// An operation failed; the keeper goes on and retries with the next order.
    Error(String),
}

impl Report {
    pub fn parse(line: &str) -> Option<Report> {
        match line.trim_end().split_once(' ') {
            None if line.trim_end() == "held" => Some(Report::Held),
            None if line.trim_end() == "released" => Some(Report::Released),
            Some(("error", msg)) => Some(Report::Error(msg.to_string())),
            _ => None,
        }
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Report::Held => f.write_str("held"),
            Report::Released => f.write_str("released"),
            // One line: a message never carries a newline into the protocol.
            Report::Error(m) => write!(f, "error {}", m.replace('\n', " ")),
        }
    }
}

/// `CLOCK_MONOTONIC` in microseconds: the same clock in every process of the machine, so
/// the daemon's stamp means the same instant to the keeper.
pub fn monotonic_us() -> u64 {
    let ts = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .expect("CLOCK_MONOTONIC is always available on Linux");
    ts.tv_sec() as u64 * 1_000_000 + ts.tv_nsec() as u64 / 1_000
}

/// The keeper's command line, as the daemon passes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeeperArgs {
    pub interface: String,
    pub vip: Vip,
    pub garp_count: u32,
    pub garp_interval: Duration,
    /// One more gratuitous ARP this often while holding (zero: never).
    pub garp_refresh: Duration,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vips_parse_and_bad_ones_say_why() {
        let v: Vip = "10.0.0.100/24".parse().unwrap();
        assert_eq!((v.addr, v.prefix), (Ipv4Addr::new(10, 0, 0, 100), 24));
        assert_eq!(v.to_string(), "10.0.0.100/24");
        assert!("10.0.0.1/32".parse::<Vip>().is_ok());
        assert!("10.0.0.0/31".parse::<Vip>().is_ok());
        for (bad, why) in [
            ("10.0.0.100", "CIDR"),
            ("10.0.0.300/24", "IPv4"),
            ("fe80::1/64", "IPv4"),
            ("10.0.0.100/0", "prefix"),
            ("10.0.0.100/33", "prefix"),
            ("10.0.0.100/x", "prefix"),
            ("10.0.0.0/24", "network or broadcast"),
            ("10.0.0.255/24", "network or broadcast"),
            ("127.0.0.2/8", "cannot be"),
            ("224.0.0.1/24", "cannot be"),
            ("0.0.0.0/24", "cannot be"),
        ] {
            let e = bad.parse::<Vip>().unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn orders_round_trip_and_garbage_is_refused() {
        for o in [
            Order::Hold {
                ms: 312,
                stamp_us: None,
            },
            Order::Hold {
                ms: 0,
                stamp_us: Some(123_456_789),
            },
            Order::Release,
        ] {
            assert_eq!(Order::parse(&o.to_string()), Ok(o));
        }
        for bad in [
            "",
            "hold",
            "hold x",
            "hold 1 2 3",
            "release now",
            "grab 10",
            "hold -5",
        ] {
            assert!(Order::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn reports_round_trip() {
        for r in [
            Report::Held,
            Report::Released,
            Report::Error("eth9: no such device".into()),
        ] {
            assert_eq!(Report::parse(&r.to_string()), Some(r.clone()));
        }
        assert_eq!(
            Report::parse(&Report::Error("a\nb".into()).to_string()),
            Some(Report::Error("a b".into()))
        );
        assert_eq!(Report::parse("what"), None);
    }

    #[test]
    fn the_monotonic_clock_moves_forward() {
        let a = monotonic_us();
        std::thread::sleep(Duration::from_millis(2));
        assert!(monotonic_us() >= a + 2_000);
    }
}
