//! Signals: SIGTERM and SIGINT stop the gateway; SIGHUP reloads the rules.

use std::sync::atomic::Ordering;

use tokio::sync::mpsc;
use tracing::{error, info};

use crate::config::Config;
use crate::evaluator::Control;
use crate::telemetry::Telemetry;

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
/// On SIGHUP the rules files are read again; a set that does not validate is
/// refused whole and the old rules keep running.
pub async fn wait(
    signals: Signals,
    config: &Config,
    control: &mpsc::Sender<Control>,
    telemetry: &Telemetry,
) {
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
                let current = config.clone();
                match tokio::task::spawn_blocking(move || current.reload_rules()).await {
                    Ok(Ok(rules)) => {
                        let n = rules.len();
                        if control.send(Control::Reload(rules)).await.is_ok() {
                            Telemetry::bump(&telemetry.rule_reloads);
                            telemetry.rules_loaded.store(n as u64, Ordering::Relaxed);
                            info!(rules = n, "rules reloaded");
                        }
                    }
                    Ok(Err(diags)) => {
                        Telemetry::bump(&telemetry.rule_reload_errors);
                        for d in diags.iter() {
                            error!(error = %d, "rules reload refused; the old rules keep running");
                        }
                    }
                    Err(e) => error!(error = %e, "rules reload task failed"),
                }
            }
        }
    }
}
