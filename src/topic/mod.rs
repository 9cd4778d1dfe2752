//! MQTT topics.
//!
//! Upstream topics are built from an allow-list (this file). The topic
//! filters `[[mqtt]]` sources subscribe to are checked and matched in
//! `filter`, and the sensor templates over topic levels are in
//! `sensor_template`.
//!
//! A sensor id comes from a device (a serial line, a topic level, a JSON
//! field) and must never change what a topic means: `+`, `#`, NUL and control
//! characters become `_`, empty levels become `_`, and since every topic
//! starts with the validated `topic_prefix`, a leading `$` is impossible.
//! rumqttc's own check only refuses `+` and `#`: a NUL (malformed in MQTT:
//! the broker closes the connection) or a control character would go out.

mod filter;
mod sensor_template;

pub use filter::{match_filter, validate_filter};
pub use sensor_template::SensorTemplate;

/// Longest topic outpost builds, well under MQTT's 65,535 and brokers' limits.
pub const MAX_TOPIC_LEN: usize = 1024;

/// Checks a `topic_prefix`: non-empty levels, no wildcards, no `$` start.
pub fn validate_prefix(prefix: &str) -> Result<(), String> {
    if prefix.is_empty() {
        return Err("topic_prefix is empty".into());
    }
    if prefix.starts_with('$') {
        return Err(format!(
            "topic_prefix `{prefix}` starts with `$`, which brokers reserve"
        ));
    }
    if prefix.len() > 256 {
        return Err("topic_prefix is longer than 256 bytes".into());
    }
    for level in prefix.split('/') {
        if level.is_empty() {
            return Err(format!(
                "topic_prefix `{prefix}` has an empty level (leading, trailing or double `/`)"
            ));
        }
        if let Some(c) = level.chars().find(|c| !is_safe(*c)) {
            return Err(format!(
                "topic_prefix `{prefix}` contains {c:?}, which is not allowed in a topic"
            ));
        }
    }
    Ok(())
}

fn is_safe(c: char) -> bool {
    !(c == '+' || c == '#' || c == '\0' || c.is_control())
}

/// One topic level (or several, split at `/`) made safe.
pub fn sanitize(levels: &str) -> String {
    let mut out = String::with_capacity(levels.len());
    for (i, level) in levels.split('/').enumerate() {
        if i > 0 {
            out.push('/');
        }
        if level.is_empty() {
            out.push('_');
            continue;
        }
        out.extend(level.chars().map(|c| if is_safe(c) { c } else { '_' }));
    }
    out
}

/// `{prefix}/alerts/{rule_id}/{sensor}`, safe whatever the sensor id holds.
pub fn alert_topic(prefix: &str, rule_id: &str, sensor: &str) -> String {
    pair_topic(prefix, "alerts", rule_id, sensor)
}

/// `{prefix}/{kind}/{rule_id}/{sensor}` (`alerts`, `state`), safe whatever
/// the sensor id holds, at most [`MAX_TOPIC_LEN`] bytes.
pub fn pair_topic(prefix: &str, kind: &str, rule_id: &str, sensor: &str) -> String {
    let mut topic = format!("{prefix}/{kind}/{}/{}", sanitize(rule_id), sanitize(sensor));
    if topic.len() > MAX_TOPIC_LEN {
        let mut end = MAX_TOPIC_LEN;
        while !topic.is_char_boundary(end) {
            end -= 1;
        }
        topic.truncate(end);
        // A cut just after a `/` would leave an empty last level: drop the
        // `/` (pushing a `_` instead would pass the limit by one byte).
        if topic.ends_with('/') {
            topic.pop();
        }
    }
    topic
}

/// `{prefix}/status`, `{prefix}/events`, `{prefix}/health`.
pub fn gateway_topic(prefix: &str, leaf: &str) -> String {
    format!("{prefix}/{leaf}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_plain_sensor_id_becomes_levels() {
        assert_eq!(
            alert_topic("outpost/gw", "hot", "greenhouse/t1"),
            "outpost/gw/alerts/hot/greenhouse/t1"
        );
    }

    #[test]
    fn wildcards_nul_and_control_characters_become_underscores() {
        assert_eq!(
            alert_topic("p", "r", "a+b/#/c\0d\ne"),
            "p/alerts/r/a_b/_/c_d_e"
        );
    }

    #[test]
    fn empty_levels_are_filled() {
        assert_eq!(alert_topic("p", "r", "/a//b/"), "p/alerts/r/_/a/_/b/_");
        assert_eq!(alert_topic("p", "r", ""), "p/alerts/r/_");
    }

    #[test]
    fn a_dollar_sensor_cannot_make_a_system_topic() {
        assert!(alert_topic("p", "r", "$SYS/x").starts_with("p/"));
    }

    /// Found by `cargo fuzz run topic`: a long sensor id of `/` and NULs
    /// whose cut at the limit fell just after a `/`; the `_` that filled
    /// the empty level made the topic one byte too long.
    #[test]
    fn a_cut_just_after_a_slash_stays_within_the_limit() {
        let sensor = "\0/".repeat(600);
        let t = alert_topic("outpost/gw", "r", &sensor);
        // "outpost/gw/alerts/r/" is 20 bytes, then "_/" pairs: byte 1023 is a `/`.
        assert_eq!(&t[..24], "outpost/gw/alerts/r/_/_/");
        assert!(t.len() <= MAX_TOPIC_LEN, "{} bytes", t.len());
        assert!(t.split('/').all(|l| !l.is_empty()), "an empty level");
        assert!(t.ends_with('_'));
    }

    #[test]
    fn prefixes_are_validated() {
        assert!(validate_prefix("outpost/greenhouse-pi").is_ok());
        for bad in ["", "$SYS/x", "a//b", "a/", "/a", "a/+", "a/#", "a\0"] {
            assert!(validate_prefix(bad).is_err(), "{bad:?}");
        }
    }

    proptest! {
        #[test]
        fn any_sensor_id_gives_a_valid_publish_topic(sensor in any::<String>(), rule in "[A-Za-z0-9_.-]{1,20}") {
            let t = alert_topic("outpost/gw", &rule, &sensor);
            prop_assert!(t.starts_with("outpost/gw/alerts/"));
            prop_assert!(t.len() <= MAX_TOPIC_LEN);
            prop_assert!(!t.contains(['+', '#', '\0']));
            prop_assert!(!t.chars().any(char::is_control));
            prop_assert!(t.split('/').all(|l| !l.is_empty()));
        }
    }
}
