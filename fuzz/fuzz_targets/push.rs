//! A rules push as a gateway receives it from the broker: any bytes give a
//! push or a refusal, and judging it (signature, version) never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use outpost::push::sign::PublicKey;
use outpost::push::{Last, Push, Target, Version, judge};

fuzz_target!(|data: &[u8]| {
    let Ok(push) = Push::parse(data) else {
        return;
    };
    // Any 32 bytes are a key to check against (most are not valid points).
    let key = PublicKey::parse("AQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRobHB0eHyA=").ok();
    let last = Version::parse("2026-11-26T10:00:00.123Z").ok();
    let target = Target::Group("north".into());
    for retained in [false, true] {
        let _ = judge(
            &push,
            &target,
            key.as_ref(),
            last.as_ref().map(|v| Last {
                version: v,
                rules: "",
                in_force: true,
            }),
            retained,
        );
    }
    let _ = push.to_payload();
});
