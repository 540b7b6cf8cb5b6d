//! The peer protocol's version, negotiated on every peer connection: which versions a node
//! speaks ([`Range`]), how they are offered and picked (TLS ALPN names `standin/<v>`, or the
//! in-band `Hello` without TLS), and the error both sides log when no version is common.
//!
//! A connection whose peer offers nothing is from a build before negotiation: it speaks
//! protocol 1 only ([`Range::LEGACY`]).

use std::fmt;

/// The ALPN name of a protocol version is this prefix followed by the version in decimal.
const ALPN_PREFIX: &[u8] = b"standin/";
/// ALPN names read from a peer's offer at most (the rest is ignored): a hostile hello cannot
/// make this node parse without end.
const MAX_OFFERED: usize = 32;

/// The versions a node speaks, `min..=max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range {
    pub min: u32,
    pub max: u32,
}

impl fmt::Display for Range {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}..{}", self.min, self.max)
    }
}

impl Range {
    /// What this build speaks.
    pub const OURS: Range = Range {
        min: crate::version::PROTOCOL_MIN,
        max: crate::version::PROTOCOL,
    };
    /// What a peer from before negotiation speaks.
    pub const LEGACY: Range = Range { min: 1, max: 1 };

    /// A range, if `min <= max` and both are versions (>= 1).
    pub fn new(min: u32, max: u32) -> Option<Range> {
        (min >= 1 && min <= max).then_some(Range { min, max })
    }

    pub fn contains(&self, v: u32) -> bool {
        self.min <= v && v <= self.max
    }

    /// The highest version both ranges hold, if any.
    pub fn highest_common(&self, theirs: &Range) -> Option<u32> {
        let v = self.max.min(theirs.max);
        (v >= self.min.max(theirs.min)).then_some(v)
    }

    /// The ALPN names a client offers: every version it speaks, newest first (a range wider
    /// than [`MAX_OFFERED`] offers only its newest versions).
    pub fn alpn(&self) -> Vec<Vec<u8>> {
        (self.min..=self.max)
            .rev()
            .take(MAX_OFFERED)
            .map(|v| [ALPN_PREFIX, v.to_string().as_bytes()].concat())
            .collect()
    }

    /// The range a client's ALPN offer names (its lowest and highest `standin/<v>`), if it
    /// names any version; other names and anything past [`MAX_OFFERED`] are ignored.
    pub fn from_alpn<'a>(offer: impl Iterator<Item = &'a [u8]>) -> Option<Range> {
        let versions: Vec<u32> = offer.take(MAX_OFFERED).filter_map(version_of_alpn).collect();
        Range::new(*versions.iter().min()?, *versions.iter().max()?)
    }
}

/// The version an ALPN name stands for (`standin/<v>`, `v` >= 1, at most 10 digits).
pub fn version_of_alpn(name: &[u8]) -> Option<u32> {
    let digits = name.strip_prefix(ALPN_PREFIX)?;
    if digits.is_empty() || digits.len() > 10 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok().filter(|v| *v >= 1)
}

/// The error logged (on both sides) when `peer`, speaking `theirs`, and this node, speaking
/// `ours`, have no version in common; it says which side to upgrade.
pub fn mismatch(peer: &str, theirs: &Range, ours: &Range) -> String {
    let upgrade = if theirs.max < ours.min {
        peer.to_string()
    } else {
        "this node".to_string()
    };
    format!("peer {peer} speaks protocol {theirs}, this node {ours}: upgrade {upgrade}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_highest_common_version_is_chosen() {
        let r = |a, b| Range::new(a, b).unwrap();
        assert_eq!(r(1, 3).highest_common(&r(2, 5)), Some(3));
        assert_eq!(r(2, 5).highest_common(&r(1, 3)), Some(3));
        assert_eq!(r(1, 1).highest_common(&r(1, 1)), Some(1));
        assert_eq!(r(1, 1).highest_common(&r(2, 3)), None);
        assert_eq!(Range::new(2, 1), None);
        assert_eq!(Range::new(0, 1), None);
    }

    #[test]
    fn alpn_names_round_trip_and_hostile_ones_are_ignored() {
        let offer = Range::new(2, 4).unwrap().alpn();
        assert_eq!(
            offer,
            vec![
                b"standin/4".to_vec(),
                b"standin/3".to_vec(),
                b"standin/2".to_vec()
            ]
        );
        assert_eq!(
            Range::from_alpn(offer.iter().map(|v| v.as_slice())),
            Range::new(2, 4)
        );
        for bad in [
            &b"standin/"[..],
            b"standin/0",
            b"standin/-1",
            b"standin/99999999999",
            b"h2",
            b"standin/1x",
        ] {
            assert_eq!(version_of_alpn(bad), None, "{bad:?}");
        }
        assert_eq!(Range::from_alpn([&b"http/1.1"[..]].into_iter()), None);
        let wide = Range::new(1, 1000).unwrap().alpn();
        assert_eq!(wide.len(), MAX_OFFERED);
    }

    #[test]
    fn the_mismatch_names_both_ranges_and_whom_to_upgrade() {
        let (old, new) = (Range::new(1, 1).unwrap(), Range::new(2, 3).unwrap());
        assert_eq!(
            mismatch("b", &new, &old),
            "peer b speaks protocol 2..3, this node 1..1: upgrade this node"
        );
        assert_eq!(
            mismatch("a", &old, &new),
            "peer a speaks protocol 1..1, this node 2..3: upgrade a"
        );
    }
}
