//! Glob-style pattern matching as Redis's `stringmatchlen` (KEYS, SCAN MATCH).
//!
//! `*` any run of bytes, `?` one byte, `[abc]` a set, `[^a]` a negated set (only `^` negates,
//! as in Redis), `[a-z]` a range (reversed ranges are swapped), `\x` the byte `x` literally. An
//! unterminated `[` set runs to the end of the pattern. Matching is byte-wise and
//! case-sensitive. The port keeps Redis's two guards against abusive patterns: a recursion
//! limit and the "a later `*` failed everywhere, so stop" shortcut, which makes patterns like
//! `a*a*a*a*b` linear instead of exponential.

/// Deeper `*` nesting than this never matches (Redis's protection against stack exhaustion).
const MAX_NESTING: usize = 1000;

/// True if `string` matches the glob `pattern`.
pub fn matches(pattern: &[u8], string: &[u8]) -> bool {
    let mut skip_longer = false;
    match_impl(pattern, string, &mut skip_longer, 0)
}

/// The literal prefix every match must start with (bytes before the first special character),
/// used to narrow KEYS to a range of the sorted keyspace.
pub fn literal_prefix(pattern: &[u8]) -> &[u8] {
    let end = pattern
        .iter()
        .position(|c| matches!(c, b'*' | b'?' | b'[' | b'\\'))
        .unwrap_or(pattern.len());
    &pattern[..end]
}

fn match_impl(pat: &[u8], s: &[u8], skip_longer: &mut bool, nesting: usize) -> bool {
    if nesting > MAX_NESTING {
        return false;
    }
    let (mut p, mut i) = (0usize, 0usize);
    while p < pat.len() && i < s.len() {
        match pat[p] {
            b'*' => {
                while p + 1 < pat.len() && pat[p + 1] == b'*' {
                    p += 1;
                }
                if p + 1 == pat.len() {
                    return true;
                }
                while i < s.len() {
                    if match_impl(&pat[p + 1..], &s[i..], skip_longer, nesting + 1) {
                        return true;
                    }
                    if *skip_longer {
                        return false;
                    }
                    i += 1;
                }
                // The rest of the pattern matches no suffix of the string: no earlier `*`
                // can help by consuming more, so every caller can give up.
                *skip_longer = true;
                return false;
            }
            b'?' => i += 1,
            b'[' => {
                p += 1;
                let not = p < pat.len() && pat[p] == b'^';
                if not {
                    p += 1;
                }
                let c = s[i];
                let mut hit = false;
                loop {
                    if p >= pat.len() {
                        // Unterminated set: Redis steps back so the outer `p += 1` lands on
                        // the end of the pattern.
                        p -= 1;
                        break;
                    } else if pat[p] == b'\\' && pat.len() - p >= 2 {
                        p += 1;
                        if pat[p] == c {
                            hit = true;
                        }
                    } else if pat[p] == b']' {
                        break;
                    } else if pat.len() - p >= 3 && pat[p + 1] == b'-' {
                        let (mut lo, mut hi) = (pat[p], pat[p + 2]);
                        if lo > hi {
                            std::mem::swap(&mut lo, &mut hi);
                        }
                        p += 2;
                        if (lo..=hi).contains(&c) {
                            hit = true;
                        }
                    } else if pat[p] == c {
                        hit = true;
                    }
                    p += 1;
                }
                if hit == not {
                    return false;
                }
                i += 1;
            }
            b'\\' => {
                if pat.len() - p >= 2 {
                    p += 1;
                }
                if pat[p] != s[i] {
                    return false;
                }
                i += 1;
            }
            c => {
                if c != s[i] {
                    return false;
                }
                i += 1;
            }
        }
        p += 1;
        if i == s.len() {
            while p < pat.len() && pat[p] == b'*' {
                p += 1;
            }
            break;
        }
    }
    p == pat.len() && i == s.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redis_glob_cases() {
        let yes: &[(&str, &str)] = &[
            ("*", "abc"),
            ("h?llo", "hello"),
            ("h*llo", "hllo"),
            ("h*llo", "heeeello"),
            ("h[ae]llo", "hallo"),
            ("h[^e]llo", "hallo"),
            ("h[a-b]llo", "hbllo"),
            ("h[b-a]llo", "hallo"),
            ("h\\*llo", "h*llo"),
            ("h[\\]]llo", "h]llo"),
            ("user:*", "user:1"),
            ("*:*", "a:b"),
            ("a*", "a"),
            ("a**", "a"),
            ("[abc", "a"),
            ("\\", "\\"),
        ];
        for (p, s) in yes {
            assert!(matches(p.as_bytes(), s.as_bytes()), "{p} should match {s}");
        }
        let no: &[(&str, &str)] = &[
            ("h?llo", "hllo"),
            ("h[ae]llo", "hillo"),
            ("h[^e]llo", "hello"),
            ("h[a-b]llo", "hcllo"),
            ("h\\*llo", "hello"),
            ("a", ""),
            ("?", ""),
            // As in Redis, the empty string matches nothing (KEYS * special-cases "*").
            ("*", ""),
            ("a*b", "acd"),
            ("abc", "ab"),
            ("ab", "abc"),
            (
                "a*a*a*a*a*a*a*a*a*a*a*b",
                "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
            ),
        ];
        for (p, s) in no {
            assert!(!matches(p.as_bytes(), s.as_bytes()), "{p} should not match {s}");
        }
    }

    #[test]
    fn prefix() {
        assert_eq!(literal_prefix(b"user:*"), b"user:");
        assert_eq!(literal_prefix(b"abc"), b"abc");
        assert_eq!(literal_prefix(b"a\\*"), b"a");
        assert_eq!(literal_prefix(b"*x"), b"");
    }
}
