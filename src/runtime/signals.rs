//! Signals: SIGTERM and SIGINT stop the gateway; SIGHUP reloads the rules.

use tokio::sync::mpsc;
use tracing::{error, info};

/// Returns on SIGTERM or SIGINT (or when no handler can be installed).
/// On SIGHUP the rules keeper (`remote`) reads the rules files again; a set
/// that does not validate is refused whole and the old rules keep running.
pub async fn wait(reload: &mpsc::Sender<()>) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
    ) else {
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
