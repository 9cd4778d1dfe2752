//! `outpost status`: asks a running gateway for its `/status` and prints it.

use std::path::Path;

use super::{EXIT_FAILURE, EXIT_OK, load};
use crate::config;
use crate::http::{client, status};

/// How long `outpost status` waits for the gateway.
const STATUS_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

pub fn status(path: &Path, json: bool) -> u8 {
    // The packaged outpost.toml is readable only by root and group outpost
    // (it may hold a password). A person without access still gets an
    // answer from the default address, with a note saying so.
    let listen = match std::fs::File::open(path) {
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            let default = config::HttpConfig::default().listen;
            eprintln!(
                "outpost status: cannot read {} (permission denied); asking the default address. Run it with sudo, or join group outpost, to use the configured one.",
                path.display()
            );
            default
        }
        _ => match load(path) {
            Ok(c) => c.http.listen,
            Err(code) => return code,
        },
    };
    let Some(listen) = listen else {
        eprintln!(
            "outpost status: [http] listen is \"\" in {}: the gateway serves no status (set it, e.g. \"127.0.0.1:9184\", and restart it)",
            path.display()
        );
        return EXIT_FAILURE;
    };
    let addr = client::connect_addr(listen);
    let rt = match super::runtime(None) {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    let resp = match rt.block_on(client::get(addr, "/status", STATUS_TIMEOUT)) {
        Ok(r) => r,
        Err(client::ClientError::Refused { .. }) => {
            eprintln!(
                "outpost status: the gateway is not running: nothing answers at http://{addr} ([http] listen in {}). Start it with `systemctl start outpost`; `journalctl -u outpost` says why it stopped.",
                path.display()
            );
            return EXIT_FAILURE;
        }
        Err(e) => {
            eprintln!("outpost status: {e}");
            return EXIT_FAILURE;
        }
    };
    if resp.status != 200 {
        eprintln!(
            "outpost status: http://{addr}/status answered {}: {}",
            resp.status,
            resp.body.trim()
        );
        return EXIT_FAILURE;
    }
    if json {
        println!("{}", resp.body.trim_end());
        return EXIT_OK;
    }
    match serde_json::from_str::<status::Status>(&resp.body) {
        Ok(s) => {
            print!("{}", status::render(&s));
            EXIT_OK
        }
        Err(e) => {
            eprintln!(
                "outpost status: http://{addr}/status is not an outpost status document ({e}); is another program listening there?"
            );
            EXIT_FAILURE
        }
    }
}
