//! A push's version label and how versions are ordered.
//!
//! A version is 1 to 64 characters of `[A-Za-z0-9._:+-]`: a counter (`7`,
//! `42`), a date or time (`2026-11-26`, `2026-11-26T10:00:00.123Z`, what
//! `outpost rules push` uses when given none), or a release name (`v1.10`).
//! Versions compare as a person reads them: split into runs of digits and
//! runs of other characters, runs of digits compare as numbers (`9` before
//! `10`, leading zeros ignored), other runs character by character, and a
//! version that is a prefix of another comes first (`1` before `1.1`). Two
//! versions equal that way but written differently (`01`, `1`) are ordered
//! by their bytes, so the order is total and only the same text is equal.
//!
//! Keep one scheme per fleet: a counter and a date compare as numbers
//! (`7` is older than `2026-11-26`).

use std::cmp::Ordering;
use std::fmt;

use serde::{Deserialize, Serialize};

/// The longest version label.
pub const MAX_VERSION_LEN: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Version(String);

impl Version {
    pub fn parse(s: &str) -> Result<Version, String> {
        let ok = !s.is_empty()
            && s.len() <= MAX_VERSION_LEN
            && s.bytes().all(|b| {
                b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'+' | b'-')
            });
        if ok {
            Ok(Version(s.to_string()))
        } else {
            Err(format!(
                "version `{}` must be 1 to {MAX_VERSION_LEN} characters of [A-Za-z0-9._:+-]",
                s.escape_debug()
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Version {
    type Error = String;
    fn try_from(s: String) -> Result<Version, String> {
        Version::parse(&s)
    }
}

impl From<Version> for String {
    fn from(v: Version) -> String {
        v.0
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Ord for Version {
    fn cmp(&self, other: &Version) -> Ordering {
        natural(&self.0, &other.0).then_with(|| self.0.cmp(&other.0))
    }
}

impl PartialOrd for Version {
    fn partial_cmp(&self, other: &Version) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// Runs of ASCII digits and runs of anything else.
fn runs(s: &str) -> impl Iterator<Item = &str> {
    let b = s.as_bytes();
    let mut i = 0;
    std::iter::from_fn(move || {
        let start = i;
        let digits = b.get(i)?.is_ascii_digit();
        while b.get(i).is_some_and(|c| c.is_ascii_digit() == digits) {
            i += 1;
        }
        // Splits only between ASCII bytes: always a char boundary.
        s.get(start..i)
    })
}

/// The order a person reads versions in (see the module header); equal for
/// `01` and `1`.
fn natural(a: &str, b: &str) -> Ordering {
    let (mut ra, mut rb) = (runs(a), runs(b));
    loop {
        let ord = match (ra.next(), rb.next()) {
            (None, None) => return Ordering::Equal,
            (None, Some(_)) => return Ordering::Less,
            (Some(_), None) => return Ordering::Greater,
            (Some(x), Some(y)) => run_cmp(x, y),
        };
        if ord != Ordering::Equal {
            return ord;
        }
    }
}

fn run_cmp(x: &str, y: &str) -> Ordering {
    let number = |s: &str| s.bytes().all(|c| c.is_ascii_digit());
    if number(x) && number(y) {
        let (x, y) = (x.trim_start_matches('0'), y.trim_start_matches('0'));
        // No overflow whatever the length: more digits is more.
        x.len().cmp(&y.len()).then_with(|| x.cmp(y))
    } else {
        // A number against other characters: their first bytes differ.
        x.cmp(y)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn v(s: &str) -> Version {
        Version::parse(s).unwrap()
    }

    #[test]
    fn versions_read_in_the_order_people_write_them() {
        let ascending = [
            "1",
            "2",
            "9",
            "10",
            "10.1",
            "10.2",
            "10.10",
            "2026-01-31",
            "2026-02-01",
            "2026-11-26T09:59:59.999Z",
            "2026-11-26T10:00:00.123Z",
            "2026-11-26T10:00:00.124Z",
        ];
        for w in ascending.windows(2) {
            assert!(v(w[0]) < v(w[1]), "{} < {}", w[0], w[1]);
        }
        assert!(v("v1.9") < v("v1.10"));
        assert!(v("1") < v("1.1"), "a prefix comes first");
        assert!(v("1.0") < v("1.0.0"));
    }

    #[test]
    fn only_the_same_text_is_the_same_version() {
        assert_eq!(v("7").cmp(&v("7")), Ordering::Equal);
        assert_ne!(v("01").cmp(&v("1")), Ordering::Equal);
        assert_eq!(natural("01", "1"), Ordering::Equal);
        assert!(v("01") < v("1"), "ties are broken by bytes");
    }

    #[test]
    fn huge_numbers_compare_without_overflow() {
        let a = "9".repeat(40);
        let b = format!("1{}", "0".repeat(40));
        assert!(v(&a) < v(&b));
    }

    #[test]
    fn labels_outside_the_alphabet_or_length_are_refused() {
        for bad in ["", "a b", "1/2", "é", "1\n", &"1".repeat(65)] {
            assert!(Version::parse(bad).is_err(), "{bad:?}");
        }
        assert!(Version::parse(&"1".repeat(64)).is_ok());
        assert!(Version::parse("2026-11-26T10:00:00.123+01:00").is_ok());
    }

    fn label() -> impl Strategy<Value = String> {
        "[0-9a.:-]{1,8}"
    }

    proptest! {
        #[test]
        fn the_order_is_total_antisymmetric_and_transitive(a in label(), b in label(), c in label()) {
            let (a, b, c) = (v(&a), v(&b), v(&c));
            prop_assert_eq!(a.cmp(&b), b.cmp(&a).reverse());
            prop_assert_eq!(a.cmp(&b) == Ordering::Equal, a == b);
            if a <= b && b <= c {
                prop_assert!(a <= c, "{} <= {} <= {}", a, b, c);
            }
        }

        #[test]
        fn counters_compare_as_numbers(x in 0u64..u64::MAX, y in 0u64..u64::MAX) {
            prop_assert_eq!(v(&x.to_string()).cmp(&v(&y.to_string())), x.cmp(&y));
        }
    }
}
