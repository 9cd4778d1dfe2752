//! Rules pushed to gateways over their upstream broker: the wire format.
//! Pure: bytes in, values out; no clock, no I/O.
//!
//! A push is one JSON object (at most [`MAX_PUSH_BYTES`]):
//!
//! ```json
//! {"version":"2026-11-26T10:00:00.123Z","rules":"[[rule]]\nid = \"hot\"\n...",
//!  "signature":"<base64 ed25519>","id":"3f9a0c1d5e7b2a48"}
//! ```
//!
//! - `version` orders pushes ([`Version`]): a gateway applies a push only
//!   when its version is above the one it last accepted; the exact same
//!   push again is answered again, and changes nothing.
//! - `rules` is the text of a rules file: the gateway reports its mistakes
//!   by line and column in it, so they are the operator's file's positions.
//! - `signature` (optional unless the gateway has a `public_key`) signs the
//!   target, the version and the rules ([`sign::signed_message`]).
//! - `id` (optional) is echoed in the answer, so the pusher can tell its
//!   answer from an older one; it is not signed (it decides nothing).
//!
//! Where: `{prefix}/rules/set` for one gateway ([`Target::Gateway`]),
//! `outpost/groups/{group}/rules/set` for a group ([`Target::Group`],
//! published retained so that a gateway that comes online later gets it).
//! The answer goes to `{prefix}/rules/result` ([`outcome`]).

pub mod outcome;
pub mod sign;
mod version;

use serde::{Deserialize, Serialize};

pub use version::Version;

/// The largest push a gateway reads: a push over it is refused unread.
pub const MAX_PUSH_BYTES: usize = 256 * 1024;

/// The largest MQTT packet a gateway that takes pushes accepts from its
/// upstream broker. Pushes up to this size are refused with an answer
/// (`too_large`); a larger packet ends the connection (rumqttc cannot skip
/// it), so the gap is wide and `outpost rules push` never sends one.
pub const MAX_INCOMING_PACKET: usize = 4 * MAX_PUSH_BYTES;

/// A push's `id`: at most this long, `[A-Za-z0-9_-]`.
const MAX_ID_LEN: usize = 64;

/// One push, as published.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Push {
    pub version: Version,
    pub rules: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
}

/// A push received on a rules topic, as the upstream link hands it over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Incoming {
    pub topic: String,
    pub payload: Vec<u8>,
    /// Delivered because it was retained (on subscribing), not live.
    pub retained: bool,
}

/// Why a push was not read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PushError {
    #[error("the push is {0} bytes; at most {MAX_PUSH_BYTES} are read")]
    TooLarge(usize),
    #[error("the push is not a push object: {0}")]
    Malformed(String),
}

impl Push {
    /// Reads a push; refuses one over [`MAX_PUSH_BYTES`] without reading it.
    pub fn parse(payload: &[u8]) -> Result<Push, PushError> {
        if payload.len() > MAX_PUSH_BYTES {
            return Err(PushError::TooLarge(payload.len()));
        }
        let push: Push = serde_json::from_slice(payload).map_err(|e| {
            // serde_json's message, without echoing the payload.
            PushError::Malformed(e.to_string())
        })?;
        if let Some(id) = &push.id
            && !valid_id(id)
        {
            return Err(PushError::Malformed(format!(
                "`id` must be 1 to {MAX_ID_LEN} characters of [A-Za-z0-9_-]"
            )));
        }
        Ok(push)
    }

    /// The payload to publish.
    pub fn to_payload(&self) -> Vec<u8> {
        // Serializing strings into a Vec cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }
}

fn valid_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_ID_LEN
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Gateway ids and group names: `[A-Za-z0-9_-]+`, at most 64 bytes (what
/// `[gateway] id` allows).
pub fn valid_name(s: &str) -> bool {
    valid_id(s)
}

/// Who a push is for; part of what is signed, so a push signed for one
/// gateway or group cannot be replayed onto another.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// One gateway, by `[gateway] id`.
    Gateway(String),
    /// Every gateway with the name in `[remote] groups`.
    Group(String),
}

impl Target {
    /// `gateway:ID` or `group:NAME`: the name that is signed and stored.
    pub fn name(&self) -> String {
        match self {
            Target::Gateway(id) => format!("gateway:{id}"),
            Target::Group(g) => format!("group:{g}"),
        }
    }

    /// The inverse of [`Target::name`].
    pub fn from_name(s: &str) -> Option<Target> {
        if let Some(id) = s.strip_prefix("gateway:") {
            return valid_name(id).then(|| Target::Gateway(id.into()));
        }
        let g = s.strip_prefix("group:")?;
        valid_name(g).then(|| Target::Group(g.into()))
    }

    /// Which target a push received on `topic` is for, given the gateway's
    /// `topic_prefix`, id and groups; `None` for any other topic.
    pub fn from_topic(
        topic: &str,
        prefix: &str,
        gateway: &str,
        groups: &[String],
    ) -> Option<Target> {
        if topic == set_topic(prefix) {
            return Some(Target::Gateway(gateway.into()));
        }
        groups
            .iter()
            .find(|g| topic == group_topic(g))
            .map(|g| Target::Group(g.clone()))
    }
}

/// What to do with a push that was read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Judgement {
    /// Validate it, and apply it if valid.
    Apply,
    /// The push in force, sent again: answer `applied`, `unchanged`.
    Unchanged,
    /// Refuse it, with why (answered).
    Refuse(outcome::Reason, String),
    /// An older retained push, delivered on subscribing (another topic's,
    /// or one a newer push replaced): not answered, so that it cannot
    /// overwrite the answer to the newer one.
    Ignore,
}

/// The last push a gateway accepted: its version and rules, and whether
/// they are in force (they may not be, when the local rules changed under
/// them while the gateway was stopped).
#[derive(Debug, Clone, Copy)]
pub struct Last<'a> {
    pub version: &'a Version,
    pub rules: &'a str,
    pub in_force: bool,
}

/// Whether `push` (received for `target`, `retained` or live) may be
/// applied, given the gateway's public key and the last push it accepted.
///
/// - With a key, the signature must be one of it over the push.
/// - A version above the last accepted one is applied (if valid); the same
///   version with the same rules again is `Unchanged` when in force (and
///   tried again when not); anything else is refused as `not_newer`, or
///   ignored when it was delivered retained.
pub fn judge(
    push: &Push,
    target: &Target,
    key: Option<&sign::PublicKey>,
    last: Option<Last<'_>>,
    retained: bool,
) -> Judgement {
    use outcome::Reason;
    if let Some(key) = key {
        let message = sign::signed_message(target, &push.version, &push.rules);
        if let Err(e) = key.verify(&message, push.signature.as_deref()) {
            let reason = match e {
                sign::SignatureError::Missing => Reason::Unsigned,
                _ => Reason::BadSignature,
            };
            return Judgement::Refuse(reason, e.to_string());
        }
    }
    let Some(last) = last else {
        return Judgement::Apply;
    };
    if push.version > *last.version {
        return Judgement::Apply;
    }
    if push.version == *last.version && push.rules == last.rules {
        return if last.in_force {
            Judgement::Unchanged
        } else {
            Judgement::Apply
        };
    }
    if retained {
        return Judgement::Ignore;
    }
    let why = if push.version == *last.version {
        format!(
            "version {} was accepted already, with other rules; push them under a higher version",
            push.version
        )
    } else {
        format!(
            "version {} is older than version {}, the last one accepted; push under a higher version",
            push.version, last.version
        )
    };
    Judgement::Refuse(Reason::NotNewer, why)
}

/// `{prefix}/rules/set`: pushes for one gateway.
pub fn set_topic(prefix: &str) -> String {
    format!("{prefix}/rules/set")
}

/// `{prefix}/rules/result`: the gateway's answers (retained).
pub fn result_topic(prefix: &str) -> String {
    format!("{prefix}/rules/result")
}

/// `outpost/groups/{group}/rules/set`: pushes for a group (retained).
pub fn group_topic(group: &str) -> String {
    format!("outpost/groups/{group}/rules/set")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn push(json: &str) -> Result<Push, PushError> {
        Push::parse(json.as_bytes())
    }

    #[test]
    fn a_push_reads_its_fields_and_round_trips() {
        let p =
            push(r#"{"version":"7","rules":"[[rule]]\n","signature":"c2ln","id":"ab-1"}"#).unwrap();
        assert_eq!(p.version.as_str(), "7");
        assert_eq!(p.rules, "[[rule]]\n");
        assert_eq!(p.signature.as_deref(), Some("c2ln"));
        assert_eq!(p.id.as_deref(), Some("ab-1"));
        assert_eq!(Push::parse(&p.to_payload()).unwrap(), p);
    }

    #[test]
    fn signature_and_id_are_optional_and_unknown_fields_are_ignored() {
        let p = push(r#"{"version":"1","rules":"","from":"a newer pusher"}"#).unwrap();
        assert_eq!((p.signature, p.id), (None, None));
        let text = String::from_utf8(
            Push {
                version: Version::parse("1").unwrap(),
                rules: String::new(),
                signature: None,
                id: None,
            }
            .to_payload(),
        )
        .unwrap();
        assert_eq!(text, r#"{"version":"1","rules":""}"#);
    }

    #[test]
    fn what_is_not_a_push_is_refused_with_why() {
        let cases = [
            ("", "EOF"),
            ("[]", "expected struct Push"),
            (r#"{"rules":""}"#, "missing field `version`"),
            (r#"{"version":"1"}"#, "missing field `rules`"),
            (r#"{"version":"","rules":""}"#, "version"),
            (r#"{"version":"a b","rules":""}"#, "version"),
            (r#"{"version":7,"rules":""}"#, "invalid type"),
            (r#"{"version":"1","rules":"","id":"a/b"}"#, "`id` must be"),
        ];
        for (json, want) in cases {
            match push(json) {
                Err(PushError::Malformed(m)) => assert!(m.contains(want), "{json}: {m}"),
                other => panic!("{json}: {other:?}"),
            }
        }
    }

    #[test]
    fn a_push_over_the_bound_is_refused_unread() {
        let big = vec![b'{'; MAX_PUSH_BYTES + 1];
        assert_eq!(
            Push::parse(&big),
            Err(PushError::TooLarge(MAX_PUSH_BYTES + 1))
        );
        let rules = "#".repeat(MAX_PUSH_BYTES - 40);
        let at_bound = format!(r#"{{"version":"1","rules":"{rules}"}}"#);
        assert!(at_bound.len() <= MAX_PUSH_BYTES);
        assert!(Push::parse(at_bound.as_bytes()).is_ok());
    }

    mod judging {
        use super::super::outcome::Reason;
        use super::super::sign::{SigningKey, signed_message};
        use super::*;

        fn key() -> SigningKey {
            let seed = std::array::from_fn(|i| i as u8 + 1);
            SigningKey::from_pkcs8(&super::super::sign::pkcs8_from_seed(&seed)).unwrap()
        }

        fn gw() -> Target {
            Target::Gateway("gw1".into())
        }

        fn p(version: &str, rules: &str) -> Push {
            Push {
                version: Version::parse(version).unwrap(),
                rules: rules.into(),
                signature: None,
                id: None,
            }
        }

        fn signed(version: &str, rules: &str, target: &Target) -> Push {
            let mut push = p(version, rules);
            push.signature = Some(key().sign(&signed_message(target, &push.version, &push.rules)));
            push
        }

        fn last<'a>(v: &'a Version, rules: &'a str, in_force: bool) -> Option<Last<'a>> {
            Some(Last {
                version: v,
                rules,
                in_force,
            })
        }

        #[test]
        fn a_first_push_and_a_newer_one_are_applied() {
            assert_eq!(
                judge(&p("1", "a"), &gw(), None, None, false),
                Judgement::Apply
            );
            let seven = Version::parse("7").unwrap();
            assert_eq!(
                judge(&p("10", "b"), &gw(), None, last(&seven, "a", true), false),
                Judgement::Apply,
                "10 is newer than 7"
            );
        }

        #[test]
        fn an_older_version_never_replaces_a_newer_one() {
            let ten = Version::parse("10").unwrap();
            match judge(&p("9", "b"), &gw(), None, last(&ten, "a", true), false) {
                Judgement::Refuse(Reason::NotNewer, why) => {
                    assert!(why.contains("older than version 10"), "{why}")
                }
                other => panic!("{other:?}"),
            }
            match judge(&p("10", "b"), &gw(), None, last(&ten, "a", true), false) {
                Judgement::Refuse(Reason::NotNewer, why) => {
                    assert!(why.contains("with other rules"), "{why}")
                }
                other => panic!("{other:?}"),
            }
        }

        #[test]
        fn the_same_push_again_is_unchanged_or_tried_again_when_not_in_force() {
            let ten = Version::parse("10").unwrap();
            for retained in [false, true] {
                assert_eq!(
                    judge(&p("10", "a"), &gw(), None, last(&ten, "a", true), retained),
                    Judgement::Unchanged
                );
            }
            assert_eq!(
                judge(&p("10", "a"), &gw(), None, last(&ten, "a", false), false),
                Judgement::Apply
            );
        }

        #[test]
        fn an_older_retained_push_is_ignored_not_answered() {
            let ten = Version::parse("10").unwrap();
            for (v, r) in [("9", "a"), ("10", "b")] {
                assert_eq!(
                    judge(&p(v, r), &gw(), None, last(&ten, "a", true), true),
                    Judgement::Ignore
                );
            }
        }

        #[test]
        fn with_a_key_only_pushes_it_signed_for_this_target_are_taken() {
            let k = key().public();
            assert_eq!(
                judge(&signed("1", "a", &gw()), &gw(), Some(&k), None, false),
                Judgement::Apply
            );
            let refused = |push: &Push| match judge(push, &gw(), Some(&k), None, false) {
                Judgement::Refuse(reason, _) => reason,
                other => panic!("{other:?}"),
            };
            assert_eq!(refused(&p("1", "a")), Reason::Unsigned);
            let mut changed = signed("1", "a", &gw());
            changed.rules.push('b');
            assert_eq!(refused(&changed), Reason::BadSignature);
            let mut bumped = signed("1", "a", &gw());
            bumped.version = Version::parse("2").unwrap();
            assert_eq!(refused(&bumped), Reason::BadSignature);
            let elsewhere = signed("1", "a", &Target::Group("north".into()));
            assert_eq!(refused(&elsewhere), Reason::BadSignature);
            // Without a key, a signature is not looked at.
            assert_eq!(judge(&changed, &gw(), None, None, false), Judgement::Apply);
        }
    }

    #[test]
    fn targets_come_from_the_topics_the_gateway_follows() {
        let groups = vec!["north".to_string(), "cold-rooms".to_string()];
        let t = |topic: &str| Target::from_topic(topic, "site/gw1", "gw1", &groups);
        assert_eq!(t("site/gw1/rules/set"), Some(Target::Gateway("gw1".into())));
        assert_eq!(
            t("outpost/groups/cold-rooms/rules/set"),
            Some(Target::Group("cold-rooms".into()))
        );
        assert_eq!(t("outpost/groups/south/rules/set"), None);
        assert_eq!(t("outpost/gw1/rules/set"), None);
        assert_eq!(t("site/gw1/rules/result"), None);
    }

    #[test]
    fn target_names_round_trip_and_refuse_anything_else() {
        for t in [
            Target::Gateway("gw-1".into()),
            Target::Group("north_2".into()),
        ] {
            assert_eq!(Target::from_name(&t.name()), Some(t));
        }
        for bad in ["gw1", "gateway:", "group:a/b", "host:gw1", "group:a b"] {
            assert_eq!(Target::from_name(bad), None, "{bad}");
        }
    }

    #[test]
    fn topics_are_built_from_the_prefix_and_the_group() {
        assert_eq!(set_topic("outpost/gw"), "outpost/gw/rules/set");
        assert_eq!(result_topic("outpost/gw"), "outpost/gw/rules/result");
        assert_eq!(group_topic("north"), "outpost/groups/north/rules/set");
    }
}
