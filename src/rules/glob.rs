//! Sensor and metric patterns: `*` matches any run of characters (including
//! `/` and the empty run); every other character is literal. There is no
//! escape, `?` or class: sensor ids are user-chosen names, and a pattern that
//! cannot fail to compile cannot fail a config.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A compiled glob. Equality is equality of the pattern text.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Glob {
    pattern: String,
}

impl Glob {
    /// Any string is a valid pattern.
    pub fn new(pattern: impl Into<String>) -> Self {
        Glob {
            pattern: pattern.into(),
        }
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.pattern
    }

    /// `Some(text)` when the pattern has no `*` and so matches only `text`.
    pub fn literal(&self) -> Option<&str> {
        if self.pattern.contains('*') {
            None
        } else {
            Some(&self.pattern)
        }
    }

    /// The text before the first `*` (the whole pattern when literal). Every
    /// matching string starts with it.
    pub fn literal_prefix(&self) -> &str {
        match self.pattern.split_once('*') {
            Some((prefix, _)) => prefix,
            None => &self.pattern,
        }
    }

    /// Whether `text` matches the whole pattern. Linear in
    /// `text.len() * pattern.len()` at worst, with no allocation.
    pub fn matches(&self, text: &str) -> bool {
        let Some((first, after_first)) = self.pattern.split_once('*') else {
            return self.pattern == text;
        };
        // `after_first` contains at least the last part; split off the part
        // after the last star, which must be a suffix.
        let (middle, last) = match after_first.rsplit_once('*') {
            Some((middle, last)) => (middle, last),
            None => ("", after_first),
        };
        if text.len() < first.len() + last.len()
            || !text.starts_with(first)
            || !text.ends_with(last)
        {
            return false;
        }
        // Both bounds are char boundaries: they end a matched prefix and
        // start a matched suffix, and the length check keeps them ordered.
        let Some(mut rest) = text.get(first.len()..text.len() - last.len()) else {
            return false;
        };
        // Leftmost match of each middle part is optimal for `*`-only globs:
        // taking an earlier occurrence never leaves less room for the rest.
        for part in middle.split('*').filter(|p| !p.is_empty()) {
            match rest.find(part) {
                Some(at) => rest = rest.get(at + part.len()..).unwrap_or(""),
                None => return false,
            }
        }
        true
    }
}

impl fmt::Display for Glob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.pattern)
    }
}

impl From<&str> for Glob {
    fn from(s: &str) -> Self {
        Glob::new(s)
    }
}

impl From<String> for Glob {
    fn from(s: String) -> Self {
        Glob::new(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn check(pattern: &str, text: &str, expected: bool) {
        assert_eq!(
            Glob::new(pattern).matches(text),
            expected,
            "pattern {pattern:?} against {text:?}"
        );
    }

    #[test]
    fn a_literal_matches_only_itself() {
        check("greenhouse/t1", "greenhouse/t1", true);
        check("greenhouse/t1", "greenhouse/t10", false);
        check("greenhouse/t1", "greenhouse/t", false);
        check("", "", true);
        check("", "x", false);
    }

    #[test]
    fn a_star_matches_any_run_including_slashes_and_nothing() {
        check("greenhouse/*", "greenhouse/t1", true);
        check("greenhouse/*", "greenhouse/a/b/c", true);
        check("greenhouse/*", "greenhouse/", true);
        check("greenhouse/*", "greenhouse", false);
        check("*", "", true);
        check("*", "anything/at/all", true);
        check("**", "x", true);
    }

    #[test]
    fn prefix_and_suffix_must_not_overlap() {
        check("ab*ba", "aba", false);
        check("ab*ba", "abba", true);
        check("a*a", "a", false);
        check("a*a", "aa", true);
    }

    #[test]
    fn middle_parts_match_in_order() {
        check("*/t*/x", "room/t1/x", true);
        check("a*b*c", "axxbyyc", true);
        check("a*b*c", "axxcyyb", false);
        check("*b*b*", "abab", true);
        check("*b*b*", "ab", false);
    }

    #[test]
    fn multibyte_characters_are_literal() {
        check("Küche/*", "Küche/t1", true);
        check("*°C", "21°C", true);
        check("é*é", "é", false);
        check("é*é", "éé", true);
    }

    #[test]
    fn literal_and_prefix_are_reported() {
        assert_eq!(Glob::new("a/b").literal(), Some("a/b"));
        assert_eq!(Glob::new("a/*").literal(), None);
        assert_eq!(Glob::new("a/*/c").literal_prefix(), "a/");
        assert_eq!(Glob::new("*c").literal_prefix(), "");
        assert_eq!(Glob::new("abc").literal_prefix(), "abc");
    }

    #[test]
    fn a_glob_serializes_as_its_pattern() {
        let json = serde_json::to_string(&Glob::new("g/*")).unwrap_or_default();
        assert_eq!(json, "\"g/*\"");
        let back: Result<Glob, _> = serde_json::from_str(&json);
        assert_eq!(back.ok(), Some(Glob::new("g/*")));
    }

    /// An obviously-correct (exponential) matcher to compare against.
    fn naive(p: &[char], t: &[char]) -> bool {
        match p.split_first() {
            None => t.is_empty(),
            Some(('*', rest)) => (0..=t.len()).any(|i| naive(rest, &t[i..])),
            Some((c, rest)) => t.first() == Some(c) && naive(rest, &t[1..]),
        }
    }

    proptest! {
        #[test]
        fn matching_agrees_with_a_naive_backtracking_matcher(
            p in "[ab*/é]{0,8}",
            t in "[ab/é]{0,10}",
        ) {
            let pc: Vec<char> = p.chars().collect();
            let tc: Vec<char> = t.chars().collect();
            prop_assert_eq!(Glob::new(p.as_str()).matches(&t), naive(&pc, &tc));
        }
    }
}
