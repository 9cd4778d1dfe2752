//! outpost.toml and rules.toml text: any input gives a config or
//! diagnostics, never a panic.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = outpost::config::parse_rules(Path::new("rules.toml"), text);
    // `rules` names no file, so this stays in memory (no file is read).
    let _ = outpost::config::Config::from_str(Path::new("/nonexistent/outpost.toml"), text);
});
