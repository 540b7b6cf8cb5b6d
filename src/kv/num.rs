//! Numbers in arguments and stored values, as Redis reads and writes them: the one integer
//! parser of the store (Redis's `string2ll`, also the RESP codec's lengths and counts), the
//! SCAN cursor, floats as `getLongDoubleFromObject` accepts them, and INCRBYFLOAT's output.

/// Strict decimal `i64` as Redis's `string2ll` (the one integer parser of the store: the codec's
/// lengths and counts, and every integer argument): optional `-`, no `+`, no spaces, no leading
/// zeros ("0" itself is fine, "-0" is not), at most 20 characters.
pub fn parse_i64(s: &[u8]) -> Option<i64> {
    // At most 20 characters: `-9223372036854775808`.
    if s.is_empty() || s.len() > 20 {
        return None;
    }
    if s == b"0" {
        return Some(0);
    }
    let (neg, digits) = match s.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, s),
    };
    match digits.first() {
        Some(b'1'..=b'9') => {}
        _ => return None,
    }
    let mut v: u64 = 0;
    for &c in digits {
        if !c.is_ascii_digit() {
            return None;
        }
        v = v.checked_mul(10)?.checked_add(u64::from(c - b'0'))?;
    }
    if neg {
        // -(i64::MIN) does not fit in i64, so negate in i128.
        i64::try_from(-(i128::from(v))).ok()
    } else {
        i64::try_from(v).ok()
    }
}

/// An unsigned cursor: decimal digits only (leading zeros allowed), fits in `u64`.
pub fn parse_u64(s: &[u8]) -> Option<u64> {
    if s.is_empty() || !s.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(s).ok()?.parse().ok()
}

/// A float argument or stored value as Redis's `getLongDoubleFromObject` accepts it: no
/// leading whitespace, nothing after the number, not NaN. `inf` is accepted (INCRBYFLOAT then
/// rejects an infinite result). Redis uses `long double`; this is `f64`.
pub fn parse_f64(s: &[u8]) -> Option<f64> {
    if s.is_empty() || s[0].is_ascii_whitespace() || s.len() > 5 * 1024 {
        return None;
    }
    let v: f64 = std::str::from_utf8(s).ok()?.parse().ok()?;
    (!v.is_nan()).then_some(v)
}

/// Formats an INCRBYFLOAT result like Redis's human `long double` format (`%.17Lf` with the
/// trailing zeros and dot removed, `-0` printed as `0`): plain decimal notation, never an
/// exponent, no trailing `.0` ("5000", "10.5", "3").
///
/// The digits are Rust's shortest representation that parses back to the same `f64`, cut to
/// 17 decimals like Redis when longer (so `1e-20` prints `0`). Redis computes in 80-bit
/// `long double`, this in `f64`: `0.1 + 0.2` prints `0.30000000000000004` here and `0.3` in
/// Redis; for the usual values ("10.5" + "0.1" = "10.6") both agree.
pub fn format_f64(v: f64) -> String {
    let mut s = format!("{v}");
    if s.find('.').is_some_and(|dot| s.len() - dot - 1 > 17) {
        let fixed = format!("{v:.17}");
        s = fixed.trim_end_matches('0').trim_end_matches('.').to_owned();
    }
    if s == "-0" {
        s = "0".to_owned();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_i64_is_string2ll() {
        assert_eq!(parse_i64(b"0"), Some(0));
        assert_eq!(parse_i64(b"-1"), Some(-1));
        assert_eq!(parse_i64(b"9223372036854775807"), Some(i64::MAX));
        assert_eq!(parse_i64(b"-9223372036854775808"), Some(i64::MIN));
        for bad in [
            &b""[..],
            b"-",
            b"-0",
            b"00",
            b"+1",
            b" 1",
            b"1a",
            b"9223372036854775808",
        ] {
            assert_eq!(parse_i64(bad), None, "{bad:?}");
        }
    }
}
