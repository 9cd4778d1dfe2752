//! The rules keeper: the one task that changes which rules are in force.
//!
//! Two things change them, and both come here, one at a time, so neither
//! can undo the other:
//!
//! - a SIGHUP (`runtime::signals`): the local rules files are read again
//!   and checked as `check` checks them, together with the pushed rules in
//!   force; a set that does not validate is refused whole and the old rules
//!   keep running;
//! - a push received by the upstream link (`[remote] rules = true`; format
//!   in [`crate::push`]): judged against the public key and the last
//!   accepted version ([`push::judge`]), checked exactly as `check` checks a
//!   rules file plus against the local rules (an id both define is an
//!   error), refused whole on any error, else stored in the state directory
//!   (`store.rs`, atomically and fsync'd) and only then applied. The answer
//!   goes back to the upstream link, which publishes it retained on
//!   `{prefix}/rules/result`.
//!
//! Applying is the evaluator's `Control::Reload`, as a SIGHUP always was:
//! rules that did not change keep their state, removed or changed ones
//! resolve what they had firing. The pushed set is loaded with the local
//! files at start ([`Keeper::start`]); a SIGHUP keeps it.
//!
//! Parsing and checking a pushed text, and the disk, run on tokio's
//! blocking threads: the upstream link only hands pushes over, and never
//! waits for them.

mod store;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::alert::rfc3339_ms;
use crate::config::{Config, LocalRules};
use crate::diagnostic::Diagnostics;
use crate::evaluator::Control;
use crate::push::outcome::{ErrorAt, Outcome, Reason, Verdict, rules_hash};
use crate::push::{self, Incoming, Judgement, Last, Push, Target};
use crate::rules::Rule;
use crate::telemetry::{RulesInForce, Telemetry};
use store::Stored;

/// How the pushed rules text is named in diagnostics (the gateway's log);
/// answers carry only line and column.
pub const PUSHED_NAME: &str = "<pushed rules>";

/// What the keeper task is connected to.
pub struct Links {
    /// Pushes, from the upstream link.
    pub pushes: mpsc::Receiver<Incoming>,
    /// SIGHUPs.
    pub reloads: mpsc::Receiver<()>,
    /// To the evaluator.
    pub control: mpsc::Sender<Control>,
    /// Answers to publish on `{prefix}/rules/result`, to the upstream link.
    pub results: mpsc::Sender<Vec<u8>>,
}

/// The rules in force and where they came from; [`Keeper::run`] is the task.
pub struct Keeper {
    config: Arc<Config>,
    telemetry: Arc<Telemetry>,
    local: Arc<LocalRules>,
    /// The last accepted push (whose signature, with a key, was checked).
    stored: Option<Stored>,
    /// Its rules, when they are in force.
    pushed: Option<Vec<Rule>>,
    /// The stored push refused at start, and why: answered once connected.
    startup: Option<(Push, Vec<ErrorAt>)>,
}

impl Keeper {
    /// The keeper, and the rules the evaluator starts with: the local rules
    /// and, with `[remote] rules = true`, the stored pushed rules if they
    /// still validate with them (else the local rules alone, and an answer
    /// saying why for the pusher). Reads the disk.
    pub fn start(config: Config, telemetry: Arc<Telemetry>) -> (Keeper, Vec<Rule>) {
        // Read again for the places of the rules (the messages about pushed
        // ids that clash); `Config::load` checked these files a moment ago.
        let local = config.load_local_rules().unwrap_or_else(|d| {
            warn!(error = %d, "the rules files changed since they were checked; using the checked ones");
            LocalRules {
                rules: config.rules.clone(),
                places: Default::default(),
            }
        });
        let mut k = Keeper {
            config: Arc::new(config),
            telemetry,
            local: Arc::new(local),
            stored: None,
            pushed: None,
            startup: None,
        };
        k.load_stored();
        k.show_in_force();
        let rules = k.in_force();
        (k, rules)
    }

    fn state_dir(&self) -> &Path {
        &self.config.gateway.state_dir
    }

    /// The stored push, checked again (signature, rules) against the
    /// current key and local rules.
    fn load_stored(&mut self) {
        let path = store::path(self.state_dir());
        let stored = match store::load(self.state_dir()) {
            Ok(Some(s)) => s,
            Ok(None) => return,
            Err(e) => {
                error!(path = %path.display(), error = %e, "cannot read the stored pushed rules; running without them");
                return;
            }
        };
        if !self.config.remote.rules {
            info!(path = %path.display(), version = %stored.push.version, "pushed rules are stored but not used: [remote] rules is off");
            return;
        }
        if let Some(key) = &self.config.remote.public_key {
            let verified = Target::from_name(&stored.target).is_some_and(|t| {
                let m = push::sign::signed_message(&t, &stored.push.version, &stored.push.rules);
                key.verify(&m, stored.push.signature.as_deref()).is_ok()
            });
            if !verified {
                error!(path = %path.display(), version = %stored.push.version, "the stored pushed rules are not signed by [remote] public_key; running without them");
                return;
            }
        }
        match self
            .config
            .check_pushed(Path::new(PUSHED_NAME), &stored.push.rules, &self.local)
        {
            Ok(rules) => {
                info!(version = %stored.push.version, pushed = rules.len(), "pushed rules loaded");
                self.pushed = Some(rules);
            }
            Err(diags) => {
                for d in diags.iter() {
                    error!(version = %stored.push.version, error = %d, "the stored pushed rules no longer validate with the local rules; running without them");
                }
                // Told to the pusher too, once connected.
                self.startup = Some((stored.push.clone(), errors(&diags)));
            }
        }
        self.stored = Some(stored);
    }

    /// Every rule in force: the local ones, then the pushed ones.
    fn in_force(&self) -> Vec<Rule> {
        let mut rules = self.local.rules.clone();
        rules.extend(self.pushed.iter().flatten().cloned());
        rules
    }

    /// Tells telemetry what is in force now.
    fn show_in_force(&self) {
        let rules = self.in_force();
        self.telemetry
            .rules_loaded
            .store(rules.len() as u64, Ordering::Relaxed);
        self.telemetry.set_rules_in_force(RulesInForce {
            version: self.version_in_force(),
            pushed: self.pushed.as_ref().map_or(0, |p| p.len() as u64),
            hash: rules_hash(&rules),
        });
    }

    fn version_in_force(&self) -> Option<String> {
        self.pushed.as_ref()?;
        self.stored.as_ref().map(|s| s.push.version.to_string())
    }

    /// The answer to `push` (or to an unreadable push, with `push` none),
    /// describing what is in force now.
    fn outcome(
        &self,
        push: &Push,
        result: Verdict,
        reason: Option<Reason>,
        errors: Vec<ErrorAt>,
    ) -> Outcome {
        let mut o = self.outcome_unread(result, reason, errors);
        o.id = push.id.clone();
        o.version = Some(push.version.to_string());
        o
    }

    fn outcome_unread(
        &self,
        result: Verdict,
        reason: Option<Reason>,
        errors: Vec<ErrorAt>,
    ) -> Outcome {
        let r = self.telemetry.rules_in_force();
        Outcome {
            gateway: self.config.gateway.id.clone(),
            id: None,
            version: None,
            result,
            reason,
            in_force: r.version,
            rules: self.telemetry.rules_loaded.load(Ordering::Relaxed),
            pushed: r.pushed,
            hash: r.hash,
            errors,
            errors_omitted: 0,
            ts: rfc3339_ms(crate::reading::wall_ms()),
        }
    }

    fn max_payload(&self) -> usize {
        self.config
            .upstream
            .as_ref()
            .map_or(crate::alert::DEFAULT_MAX_PAYLOAD, |u| u.max_payload)
    }

    /// Runs until `cancel`, or until both the pushes and the reloads end.
    pub async fn run(mut self, mut links: Links, cancel: CancellationToken) {
        if let Some((push, errors)) = self.startup.take() {
            let o = self.outcome(&push, Verdict::Refused, Some(Reason::Invalid), errors);
            let _ = links.results.send(o.to_payload(self.max_payload())).await;
        }
        let (mut pushes_open, mut reloads_open) = (true, true);
        while pushes_open || reloads_open {
            tokio::select! {
                _ = cancel.cancelled() => return,
                p = links.pushes.recv(), if pushes_open => match p {
                    Some(p) => self.on_push(p, &links).await,
                    None => pushes_open = false,
                },
                r = links.reloads.recv(), if reloads_open => match r {
                    Some(()) => self.on_reload(&links).await,
                    None => reloads_open = false,
                },
            }
        }
    }

    /// SIGHUP: the local files read again, with the pushed rules kept.
    async fn on_reload(&mut self, links: &Links) {
        let config = self.config.clone();
        let pushed_text = self.stored.as_ref().map(|s| s.push.rules.clone());
        let checked = tokio::task::spawn_blocking(move || {
            let local = config.load_local_rules()?;
            let pushed = match pushed_text {
                Some(t) => Some(config.check_pushed(Path::new(PUSHED_NAME), &t, &local)?),
                None => None,
            };
            Ok::<_, Diagnostics>((local, pushed))
        })
        .await;
        match checked {
            Ok(Ok((local, pushed))) => {
                let (before_local, before_pushed) = (self.local.clone(), self.pushed.take());
                self.local = Arc::new(local);
                self.pushed = pushed;
                let rules = self.in_force();
                let n = rules.len();
                if links.control.send(Control::Reload(rules)).await.is_ok() {
                    Telemetry::bump(&self.telemetry.rule_reloads);
                    self.show_in_force();
                    info!(rules = n, "rules reloaded");
                } else {
                    (self.local, self.pushed) = (before_local, before_pushed);
                }
            }
            Ok(Err(diags)) => {
                Telemetry::bump(&self.telemetry.rule_reload_errors);
                for d in diags.iter() {
                    error!(error = %d, "rules reload refused; the old rules keep running");
                }
            }
            Err(e) => error!(error = %e, "rules reload task failed"),
        }
    }

    /// A push: judged, checked, stored, applied, answered.
    async fn on_push(&mut self, incoming: Incoming, links: &Links) {
        let remote = &self.config.remote;
        let Some(upstream) = &self.config.upstream else {
            return;
        };
        let Some(target) = Target::from_topic(
            &incoming.topic,
            &upstream.topic_prefix,
            &self.config.gateway.id,
            &remote.groups,
        ) else {
            debug!(topic = %incoming.topic, "a message on a topic that is not a rules topic");
            return;
        };
        if incoming.payload.is_empty() {
            // How a retained push is cleared from a broker: nothing to apply.
            debug!(topic = %incoming.topic, "an empty message on a rules topic (a retained push cleared)");
            return;
        }
        let outcome = match Push::parse(&incoming.payload) {
            Ok(push) => self.handle(push, &target, incoming.retained, links).await,
            Err(e) => {
                warn!(topic = %incoming.topic, error = %e, "rules push refused");
                let reason = match e {
                    push::PushError::TooLarge(_) => Reason::TooLarge,
                    push::PushError::Malformed(_) => Reason::Malformed,
                };
                Some(self.outcome_unread(
                    Verdict::Refused,
                    Some(reason),
                    vec![ErrorAt::whole(e.to_string())],
                ))
            }
        };
        if let Some(o) = outcome {
            let _ = links.results.send(o.to_payload(self.max_payload())).await;
        }
    }

    /// The answer to a push that was read (none for an ignored one).
    async fn handle(
        &mut self,
        push: Push,
        target: &Target,
        retained: bool,
        links: &Links,
    ) -> Option<Outcome> {
        let last = self.stored.as_ref().map(|s| Last {
            version: &s.push.version,
            rules: &s.push.rules,
            in_force: self.pushed.is_some(),
        });
        let judgement = push::judge(
            &push,
            target,
            self.config.remote.public_key.as_ref(),
            last,
            retained,
        );
        let from = target.name();
        match judgement {
            Judgement::Ignore => {
                info!(version = %push.version, %from, "an older retained rules push, not applied");
                None
            }
            Judgement::Unchanged => {
                info!(version = %push.version, %from, "rules push: this version is in force already");
                Some(self.outcome(&push, Verdict::Applied, Some(Reason::Unchanged), vec![]))
            }
            Judgement::Refuse(reason, why) => {
                warn!(version = %push.version, %from, reason = reason.as_str(), "rules push refused: {why}");
                Some(self.outcome(
                    &push,
                    Verdict::Refused,
                    Some(reason),
                    vec![ErrorAt::whole(why)],
                ))
            }
            Judgement::Apply => Some(self.apply(push, target, links).await),
        }
    }

    /// Checks, stores and applies a push judged new.
    async fn apply(&mut self, push: Push, target: &Target, links: &Links) -> Outcome {
        let from = target.name();
        let config = self.config.clone();
        let local = self.local.clone();
        let stored = Stored {
            target: from.clone(),
            push,
        };
        let (stored, checked) = match tokio::task::spawn_blocking(move || {
            let checked = config
                .check_pushed(Path::new(PUSHED_NAME), &stored.push.rules, &local)
                .map_err(|d| (Reason::Invalid, errors(&d)))
                .and_then(|rules| {
                    store::save(&config.gateway.state_dir, &stored)
                        .map(|()| rules)
                        .map_err(|e| {
                            (
                                Reason::Storage,
                                vec![ErrorAt::whole(format!(
                                    "cannot store the pushed rules in {}: {e}",
                                    config.gateway.state_dir.display()
                                ))],
                            )
                        })
                });
            (stored, checked)
        })
        .await
        {
            Ok(r) => r,
            Err(e) => {
                error!(error = %e, "rules push task failed");
                return self.outcome_unread(
                    Verdict::Refused,
                    Some(Reason::Storage),
                    vec![ErrorAt::whole("the gateway failed while checking the push")],
                );
            }
        };
        let version = stored.push.version.clone();
        match checked {
            Err((reason, errs)) => {
                for e in &errs {
                    warn!(%version, %from, line = e.line, col = e.col, "rules push refused: {}", e.message);
                }
                self.outcome(&stored.push, Verdict::Refused, Some(reason), errs)
            }
            Ok(rules) => {
                let n = rules.len();
                let push = stored.push.clone();
                self.pushed = Some(rules);
                self.stored = Some(stored);
                if links
                    .control
                    .send(Control::Reload(self.in_force()))
                    .await
                    .is_ok()
                {
                    Telemetry::bump(&self.telemetry.rule_reloads);
                }
                self.show_in_force();
                let o = self.outcome(&push, Verdict::Applied, None, vec![]);
                info!(%version, %from, pushed = n, rules = o.rules, hash = %o.hash, "pushed rules applied");
                o
            }
        }
    }
}

/// Diagnostics as errors in the pushed text.
fn errors(diags: &Diagnostics) -> Vec<ErrorAt> {
    let name = Path::new(PUSHED_NAME);
    diags
        .iter()
        .map(|d| ErrorAt::from_diagnostic(d, name))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::push::sign::{SigningKey, pkcs8_from_seed, signed_message};
    use crate::push::{Version, set_topic};

    const HOT: &str = "[[rule]]\nid = \"hot\"\nmetric = \"t\"\nabove = 30.0\n";
    const COLD: &str = "[[rule]]\nid = \"cold\"\nmetric = \"t\"\nbelow = 5.0\n";

    fn key() -> SigningKey {
        SigningKey::from_pkcs8(&pkcs8_from_seed(&[7; 32])).unwrap()
    }

    /// A config in `dir` taking pushes, with `remote` lines more.
    fn config(dir: &Path, remote: &str) -> Config {
        std::fs::write(dir.join("rules.toml"), HOT).unwrap();
        let text = format!(
            "[gateway]\nid = \"gw\"\nstate_dir = \"state\"\n[upstream]\nurl = \"mqtt://127.0.0.1:1\"\n[remote]\nrules = true\n{remote}"
        );
        let path = dir.join("outpost.toml");
        std::fs::write(&path, text).unwrap();
        let c = Config::load(&path).unwrap();
        std::fs::create_dir_all(&c.gateway.state_dir).unwrap();
        c
    }

    fn push(version: &str, rules: &str, signed_by: Option<&SigningKey>) -> Push {
        let version = Version::parse(version).unwrap();
        let signature = signed_by.map(|k| {
            k.sign(&signed_message(
                &Target::Gateway("gw".into()),
                &version,
                rules,
            ))
        });
        Push {
            version,
            rules: rules.into(),
            signature,
            id: Some("t1".into()),
        }
    }

    fn store(c: &Config, p: Push) {
        let stored = Stored {
            target: "gateway:gw".into(),
            push: p,
        };
        store::save(&c.gateway.state_dir, &stored).unwrap();
    }

    fn ids(rules: &[Rule]) -> Vec<&str> {
        rules.iter().map(|r| r.id.as_str()).collect()
    }

    #[test]
    fn the_stored_push_starts_with_the_local_rules() {
        let dir = tempfile::tempdir().unwrap();
        let c = config(dir.path(), "");
        store(&c, push("3", COLD, None));
        let t = Arc::new(Telemetry::new());
        let (_, rules) = Keeper::start(c, t.clone());
        assert_eq!(ids(&rules), ["hot", "cold"]);
        let r = t.rules_in_force();
        assert_eq!((r.version.as_deref(), r.pushed), (Some("3"), 1));
        assert_eq!(r.hash, rules_hash(&rules));
        assert_eq!(t.rules_loaded.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn a_stored_push_the_key_did_not_sign_is_not_loaded() {
        let dir = tempfile::tempdir().unwrap();
        let public = key().public().to_base64();
        let c = config(dir.path(), &format!("public_key = \"{public}\"\n"));
        let other = SigningKey::from_pkcs8(&pkcs8_from_seed(&[8; 32])).unwrap();
        for p in [push("3", COLD, None), push("3", COLD, Some(&other))] {
            store(&c, p);
            let (_, rules) = Keeper::start(c.clone(), Arc::new(Telemetry::new()));
            assert_eq!(ids(&rules), ["hot"]);
        }
        store(&c, push("3", COLD, Some(&key())));
        let (_, rules) = Keeper::start(c, Arc::new(Telemetry::new()));
        assert_eq!(ids(&rules), ["hot", "cold"]);
    }

    #[test]
    fn with_remote_off_a_stored_push_is_not_used() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = config(dir.path(), "");
        store(&c, push("3", COLD, None));
        c.remote.rules = false;
        let (_, rules) = Keeper::start(c, Arc::new(Telemetry::new()));
        assert_eq!(ids(&rules), ["hot"]);
    }

    struct Running {
        pushes: mpsc::Sender<Incoming>,
        control: mpsc::Receiver<Control>,
        results: mpsc::Receiver<Vec<u8>>,
        _reloads: mpsc::Sender<()>,
    }

    fn run(c: Config) -> Running {
        let (keeper, _) = Keeper::start(c, Arc::new(Telemetry::new()));
        let (pushes, pushes_rx) = mpsc::channel(8);
        let (reloads, reloads_rx) = mpsc::channel(1);
        let (control_tx, control) = mpsc::channel(8);
        let (results_tx, results) = mpsc::channel(8);
        tokio::spawn(keeper.run(
            Links {
                pushes: pushes_rx,
                reloads: reloads_rx,
                control: control_tx,
                results: results_tx,
            },
            CancellationToken::new(),
        ));
        Running {
            pushes,
            control,
            results,
            _reloads: reloads,
        }
    }

    impl Running {
        /// Hands a push over without waiting for an answer.
        async fn hand(&mut self, payload: Vec<u8>, retained: bool) {
            let topic = set_topic("outpost/gw");
            let push = Incoming {
                topic,
                payload,
                retained,
            };
            self.pushes.send(push).await.unwrap();
        }

        /// Hands a push over; the next answer.
        async fn send(&mut self, payload: Vec<u8>, retained: bool) -> Outcome {
            self.hand(payload, retained).await;
            let answer = self.results.recv().await.unwrap();
            serde_json::from_slice(&answer).unwrap()
        }
    }

    #[tokio::test]
    async fn a_push_is_stored_before_it_is_applied_and_answered() {
        let dir = tempfile::tempdir().unwrap();
        let c = config(dir.path(), "");
        let state = c.gateway.state_dir.clone();
        let stored_version = || store::load(&state).unwrap().unwrap().push.version;
        let mut k = run(c);
        let o = k.send(push("1", COLD, None).to_payload(), false).await;
        assert_eq!((o.result, o.reason), (Verdict::Applied, None));
        assert_eq!((o.rules, o.pushed), (2, 1));
        assert_eq!(o.in_force.as_deref(), Some("1"));
        let Some(Control::Reload(rules)) = k.control.recv().await else {
            panic!("no reload")
        };
        assert_eq!(ids(&rules), ["hot", "cold"]);
        assert_eq!(o.hash, rules_hash(&rules));
        assert_eq!(stored_version().as_str(), "1");

        // Refused ones change nothing and are answered with why.
        let bad = push("2", "[[rule]]\nid = \"x\"\nmetric = \"t\"\n", None);
        let o = k.send(bad.to_payload(), false).await;
        assert_eq!(
            (o.result, o.reason),
            (Verdict::Refused, Some(Reason::Invalid))
        );
        assert_eq!((o.errors[0].line, o.errors[0].col), (2, 6));
        assert_eq!(o.in_force.as_deref(), Some("1"));
        let o = k.send(b"{\"version\":1}".to_vec(), false).await;
        assert_eq!((o.reason, o.version), (Some(Reason::Malformed), None));
        let o = k.send(vec![b' '; push::MAX_PUSH_BYTES + 1], false).await;
        assert_eq!(o.reason, Some(Reason::TooLarge));
        // An older retained push is not answered, an empty message neither:
        // the next answer is the one to the push after them.
        k.hand(push("0", COLD, None).to_payload(), true).await;
        k.hand(Vec::new(), false).await;
        let mut again = push("1", COLD, None);
        again.id = Some("t2".into());
        let o = k.send(again.to_payload(), false).await;
        assert_eq!(
            (o.id.as_deref(), o.reason),
            (Some("t2"), Some(Reason::Unchanged))
        );
        assert!(k.control.try_recv().is_err(), "nothing was reloaded");
        assert_eq!(stored_version().as_str(), "1");
    }

    #[tokio::test]
    async fn a_push_that_cannot_be_stored_is_not_applied() {
        let dir = tempfile::tempdir().unwrap();
        let c = config(dir.path(), "");
        std::fs::remove_dir_all(&c.gateway.state_dir).unwrap();
        let mut k = run(c);
        let o = k.send(push("1", COLD, None).to_payload(), false).await;
        assert_eq!(
            (o.result, o.reason),
            (Verdict::Refused, Some(Reason::Storage))
        );
        let e = &o.errors[0].message;
        assert!(e.starts_with("cannot store the pushed rules in "), "{e}");
        assert!(k.control.try_recv().is_err(), "nothing was reloaded");
    }
}
