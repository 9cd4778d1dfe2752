//! MQTT topic filters, as `[[mqtt]] topics` subscribes to them: checking
//! one, and matching a topic against one (with what each wildcard matched,
//! for the sensor templates). `$share/{group}/` prefixes are understood.

/// Strips a `$share/{group}/` prefix: the broker delivers with the plain topic.
fn without_share_prefix(filter: &str) -> &str {
    if let Some(rest) = filter.strip_prefix("$share/")
        && let Some((_, f)) = rest.split_once('/')
    {
        return f;
    }
    filter
}

/// Matches `topic` against an MQTT topic filter; returns what each wildcard
/// matched (`+` one level, `#` the remaining levels joined by `/`).
pub fn match_filter<'t>(filter: &str, topic: &'t str) -> Option<Vec<&'t str>> {
    let filter = without_share_prefix(filter);
    // Wildcards at the first level do not match topics starting with `$` (MQTT 4.7.2).
    if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return None;
    }
    let mut captures = Vec::new();
    let mut rest = topic;
    let mut f_levels = filter.split('/').peekable();
    let mut consumed = 0usize;
    while let Some(f) = f_levels.next() {
        if f == "#" {
            let tail = &topic[consumed.min(topic.len())..];
            if !tail.is_empty() {
                captures.push(tail);
            }
            return Some(captures);
        }
        let (level, next) = match rest.find('/') {
            Some(i) => (&rest[..i], Some(&rest[i + 1..])),
            None => (rest, None),
        };
        if consumed > topic.len() {
            return None;
        }
        if f == "+" {
            captures.push(level);
        } else if f != level {
            return None;
        }
        consumed += level.len() + 1;
        match next {
            Some(n) => rest = n,
            None => {
                // Topic exhausted: only a trailing `#` may remain (it matches the parent level).
                return match f_levels.next() {
                    None => Some(captures),
                    Some("#") if f_levels.peek().is_none() => Some(captures),
                    Some(_) => None,
                };
            }
        }
    }
    None
}

/// Checks an MQTT topic filter (what a `[[mqtt]] topics` entry may be).
pub fn validate_filter(filter: &str) -> Result<(), String> {
    let f = without_share_prefix(filter);
    if f.is_empty() {
        return Err("empty topic filter".into());
    }
    if f.len() > 1024 {
        return Err("topic filter longer than 1024 bytes".into());
    }
    if f.contains('\0') {
        return Err("topic filter contains NUL".into());
    }
    let levels: Vec<&str> = f.split('/').collect();
    for (i, l) in levels.iter().enumerate() {
        if l.contains('#') && (*l != "#" || i + 1 != levels.len()) {
            return Err(format!("`{filter}`: `#` must be a whole level at the end"));
        }
        if l.contains('+') && *l != "+" {
            return Err(format!("`{filter}`: `+` must be a whole level"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn filters_match_as_mqtt_says() {
        assert_eq!(match_filter("a/+/c", "a/b/c"), Some(vec!["b"]));
        assert_eq!(match_filter("a/+/c", "a/b/d"), None);
        assert_eq!(match_filter("a/#", "a"), Some(vec![]));
        assert_eq!(match_filter("a/#", "a/b/c"), Some(vec!["b/c"]));
        assert_eq!(match_filter("#", "x/y"), Some(vec!["x/y"]));
        assert_eq!(match_filter("+", "$SYS"), None);
        assert_eq!(match_filter("a/b", "a/b/c"), None);
        assert_eq!(match_filter("a/b/c", "a/b"), None);
        assert_eq!(match_filter("a/+", "a/"), Some(vec![""]));
        assert_eq!(match_filter("$share/g/s/+", "s/x"), Some(vec!["x"]));
    }

    #[test]
    fn filter_validation_finds_misplaced_wildcards() {
        assert!(validate_filter("a/+/b").is_ok());
        assert!(validate_filter("a/#").is_ok());
        assert!(validate_filter("a/#/b").is_err());
        assert!(validate_filter("a/b+").is_err());
        assert!(validate_filter("").is_err());
    }

    proptest! {
        #[test]
        fn a_literal_filter_matches_exactly_itself(topic in "[a-c]{1,3}(/[a-c]{1,3}){0,3}") {
            prop_assert_eq!(match_filter(&topic, &topic), Some(vec![]));
        }
    }
}
