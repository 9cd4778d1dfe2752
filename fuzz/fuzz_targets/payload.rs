//! Every payload format on any bytes: no panic, and every reading returned
//! has a finite value and a sensor id.
#![no_main]

use libfuzzer_sys::fuzz_target;
use outpost::payload::{Format, ParseContext, parse};

fuzz_target!(|data: &[u8]| {
    let columns = [
        "ts".to_string(),
        "sensor".to_string(),
        "a".to_string(),
        "_".to_string(),
        "b".to_string(),
    ];
    let ctx = ParseContext {
        default_sensor: Some("dev"),
        columns: &columns,
        metric: "value",
        received_ms: 1_795_687_200_000,
    };
    for format in [Format::Json, Format::Kv, Format::Csv, Format::Number] {
        let mut out = Vec::new();
        if parse(format, data, &ctx, &mut out).is_ok() {
            for r in &out {
                assert!(r.value.is_finite());
                assert!(!r.sensor.is_empty() && !r.metric.is_empty());
            }
        }
    }
});
