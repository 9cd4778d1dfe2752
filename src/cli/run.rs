//! `outpost check` and `outpost run`.

use std::path::Path;

use super::{EXIT_FAILURE, EXIT_OK, load};

/// Validates the configuration and prints its summary.
pub fn check(path: &Path) -> u8 {
    match load(path) {
        Ok(c) => {
            for w in &c.warnings {
                eprintln!("{w}");
            }
            println!("{}", c.summary());
            println!("{}: ok", path.display());
            EXIT_OK
        }
        Err(code) => code,
    }
}

/// Runs the gateway until SIGTERM or SIGINT.
pub fn run(path: &Path) -> u8 {
    let config = match load(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    crate::logging::init(config.gateway.log_level.as_deref());
    let rt = match super::runtime(Some(2)) {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    match rt.block_on(crate::runtime::run(config)) {
        Ok(()) => EXIT_OK,
        Err(e) => {
            tracing::error!("{e:#}");
            EXIT_FAILURE
        }
    }
}
