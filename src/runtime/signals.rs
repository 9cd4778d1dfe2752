//! Signals: SIGTERM and SIGINT stop the gateway; SIGHUP reloads the rules.

use tokio::sync::mpsc;
use tracing::{error, info};

use tokio::signal::unix::{Signal, SignalKind, signal};

/// The handlers, installed before anything else starts: a SIGTERM that
/// comes while the gateway is starting is a clean stop too, not the
/// default action (an exit with no `offline`, no final flush).
pub struct Signals {
    handlers: Option<(Signal, Signal, Signal)>,
}

pub fn install() -> Signals {
    let handlers = match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
    ) {
        (Ok(t), Ok(i), Ok(h)) => Some((t, i, h)),
        _ => None,
    };
    Signals { handlers }
}

/// Returns on SIGTERM or SIGINT (or when no handler could be installed).
/// On SIGHUP the rules keeper (`remote`) reads the rules files again; a set
/// that does not validate is refused whole and the old rules keep running.
pub async fn wait(signals: Signals, reload: &mpsc::Sender<()>) {
    let Some((mut term, mut int, mut hup)) = signals.handlers else {
        error!("cannot install signal handlers; stopping");
        return;
    };
    loop {
        tokio::select! {
            _ = term.recv() => { info!("SIGTERM"); return; }
            _ = int.recv() => { info!("SIGINT"); return; }
            _ = hup.recv() => {
                info!("SIGHUP: reloading rules");
                // Full: reloads are queued already, and the last one reads
                // the files as they are now.
                let _ = reload.try_send(());
            }
        }
    }
}
