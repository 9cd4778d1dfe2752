//! Topic building and matching on hostile sensor ids and filters.
#![no_main]

use libfuzzer_sys::fuzz_target;
use outpost::topic::{MAX_TOPIC_LEN, SensorTemplate, alert_topic, match_filter};

fuzz_target!(|data: (&str, &str, &str)| {
    let (a, b, c) = data;
    let t = alert_topic("outpost/gw", a, b);
    assert!(t.len() <= MAX_TOPIC_LEN);
    assert!(!t.contains(['+', '#', '\0']));
    if let Ok(tpl) = SensorTemplate::parse(c) {
        if let Some(caps) = match_filter(a, b) {
            let _ = tpl.render(b, &caps);
        }
    }
});
