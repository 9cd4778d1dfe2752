//! Sensor ids (and, for `format = "number"`, metric names) from MQTT topic
//! levels: the `sensor = "..."` and `metric = "..."` templates of `[[mqtt]]`,
//! rendered from a topic and what its filter's wildcards matched
//! ([`super::match_filter`]).
//!
//! | placeholder | gives | for `sensors/+/reading` and topic `sensors/t1/reading` |
//! | --- | --- | --- |
//! | `{topic}` | the whole topic | `sensors/t1/reading` |
//! | `{N}` | level N, counted from 1 | `{2}` → `t1` |
//! | `{-N}` | level N counted from the end | `{-1}` → `reading` |
//! | `{+}` | the levels the wildcards (`+`, `#`) matched, joined by `/` | `t1` |
//! | `{+N}` | what the N-th wildcard matched | `{+1}` → `t1` |
//!
//! Any other text is copied; `{{` and `}}` write a brace. A template naming a
//! level the topic does not have renders to `None` (the message is counted as
//! an error, never given an empty id).

/// One piece of a parsed template.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    Topic,
    Level(usize),
    LevelFromEnd(usize),
    Wildcards,
    Wildcard(usize),
}

/// A parsed `sensor` template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SensorTemplate {
    parts: Vec<Part>,
}

impl SensorTemplate {
    pub fn parse(s: &str) -> Result<SensorTemplate, String> {
        let mut parts = Vec::new();
        let mut text = String::new();
        let mut chars = s.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '{' if chars.peek() == Some(&'{') => {
                    chars.next();
                    text.push('{');
                }
                '}' if chars.peek() == Some(&'}') => {
                    chars.next();
                    text.push('}');
                }
                '{' => {
                    let mut name = String::new();
                    loop {
                        match chars.next() {
                            Some('}') => break,
                            Some(c) => name.push(c),
                            None => return Err(format!("unclosed `{{` in template `{s}`")),
                        }
                    }
                    if !text.is_empty() {
                        parts.push(Part::Text(std::mem::take(&mut text)));
                    }
                    parts.push(parse_placeholder(&name).ok_or_else(|| {
                        format!(
                            "unknown placeholder `{{{name}}}` in template `{s}`; use {{topic}}, {{N}}, {{-N}}, {{+}} or {{+N}}"
                        )
                    })?);
                }
                '}' => return Err(format!("unmatched `}}` in template `{s}`; write `}}}}`")),
                c => text.push(c),
            }
        }
        if !text.is_empty() {
            parts.push(Part::Text(text));
        }
        if parts.is_empty() {
            return Err("empty template".into());
        }
        Ok(SensorTemplate { parts })
    }

    /// A fixed text.
    pub fn literal(text: &str) -> SensorTemplate {
        SensorTemplate {
            parts: vec![Part::Text(text.to_string())],
        }
    }

    /// The whole topic: the default.
    pub fn whole_topic() -> SensorTemplate {
        SensorTemplate {
            parts: vec![Part::Topic],
        }
    }

    /// Whether the template uses wildcard captures (`{+}`, `{+N}`).
    pub fn uses_wildcards(&self) -> bool {
        self.parts
            .iter()
            .any(|p| matches!(p, Part::Wildcards | Part::Wildcard(_)))
    }

    /// Renders the sensor id for `topic`, given what the filter's wildcards matched.
    pub fn render(&self, topic: &str, captures: &[&str]) -> Option<String> {
        let levels: Vec<&str> = topic.split('/').collect();
        let mut out = String::new();
        for p in &self.parts {
            match p {
                Part::Text(t) => out.push_str(t),
                Part::Topic => out.push_str(topic),
                Part::Level(n) => out.push_str(levels.get(n - 1)?),
                Part::LevelFromEnd(n) => out.push_str(levels.get(levels.len().checked_sub(*n)?)?),
                Part::Wildcards => {
                    if captures.is_empty() {
                        return None;
                    }
                    out.push_str(&captures.join("/"));
                }
                Part::Wildcard(n) => out.push_str(captures.get(n - 1)?),
            }
        }
        if out.is_empty() { None } else { Some(out) }
    }
}

fn parse_placeholder(name: &str) -> Option<Part> {
    let name = name.trim();
    match name {
        "topic" => return Some(Part::Topic),
        "+" => return Some(Part::Wildcards),
        _ => {}
    }
    let positive = |s: &str| s.parse::<usize>().ok().filter(|n| *n > 0);
    if let Some(n) = name.strip_prefix('+') {
        return positive(n).map(Part::Wildcard);
    }
    if let Some(n) = name.strip_prefix('-') {
        return positive(n).map(Part::LevelFromEnd);
    }
    positive(name).map(Part::Level)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topic::match_filter;
    use proptest::prelude::*;

    fn check(template: &str, filter: &str, topic: &str, expected: Option<&str>) {
        let t = SensorTemplate::parse(template).unwrap();
        let caps = match_filter(filter, topic).expect("filter matches");
        assert_eq!(
            t.render(topic, &caps).as_deref(),
            expected,
            "{template} {topic}"
        );
    }

    #[test]
    fn every_placeholder_renders_as_documented() {
        check(
            "{topic}",
            "sensors/+/reading",
            "sensors/t1/reading",
            Some("sensors/t1/reading"),
        );
        check("{2}", "sensors/+/reading", "sensors/t1/reading", Some("t1"));
        check(
            "{-1}",
            "sensors/+/reading",
            "sensors/t1/reading",
            Some("reading"),
        );
        check("{+}", "sensors/+/reading", "sensors/t1/reading", Some("t1"));
        check(
            "{+1}",
            "tele/+/SENSOR",
            "tele/kitchen/SENSOR",
            Some("kitchen"),
        );
        check(
            "room/{+}",
            "zigbee2mqtt/#",
            "zigbee2mqtt/a/b",
            Some("room/a/b"),
        );
        check("{{{2}}}", "a/+", "a/b", Some("{b}"));
    }

    #[test]
    fn a_level_the_topic_lacks_renders_to_none() {
        check("{5}", "a/+", "a/b", None);
        check("{+2}", "a/+", "a/b", None);
        check("{-3}", "a/+", "a/b", None);
    }

    #[test]
    fn bad_templates_are_refused() {
        for t in ["{", "}", "{0}", "{x}", "{+0}", "", "{-0}"] {
            assert!(SensorTemplate::parse(t).is_err(), "{t}");
        }
    }

    proptest! {
        #[test]
        fn matching_and_rendering_never_panic(filter in "[a-c+#/]{0,12}", topic in "[a-c/$]{0,12}", t in "[{}+\\-0-9a-z]{0,8}") {
            let _ = match_filter(&filter, &topic);
            if let Ok(t) = SensorTemplate::parse(&t)
                && let Some(caps) = match_filter(&filter, &topic) {
                    let _ = t.render(&topic, &caps);
                }
        }
    }
}
