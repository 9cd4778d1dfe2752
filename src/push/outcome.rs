//! The answer to a push, published retained on `{prefix}/rules/result`,
//! and the hash that names a set of rules.
//!
//! ```json
//! {"gateway":"greenhouse-pi","id":"3f9a0c1d5e7b2a48","version":"8","result":"refused",
//!  "reason":"invalid","in_force":"7","rules":5,"pushed":3,
//!  "hash":"sha256:9c1f...","errors":[{"line":4,"col":1,"message":"unknown field `abvoe`, ..."}],
//!  "errors_omitted":0,"ts":"2026-11-26T10:00:00.123Z"}
//! ```
//!
//! `rules`, `pushed`, `hash` and `in_force` always describe the set in
//! force after the push was handled: the new one when applied, the old one
//! when refused. Every error has the line and column in the pushed text
//! (`0` when it has no place there); errors that would make the answer
//! larger than the upstream's `max_payload` are left out and counted in
//! `errors_omitted`.

use serde::{Deserialize, Serialize};

use crate::diagnostic::Diagnostic;
use crate::rules::Rule;

/// `applied` or `refused`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Applied,
    Refused,
}

/// Why a push was refused (or, for `unchanged`, applied without a change).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// Applied: the same version with the same rules is in force already.
    Unchanged,
    /// Over `MAX_PUSH_BYTES`.
    TooLarge,
    /// Not a push object.
    Malformed,
    /// The gateway has a `public_key`, the push has no signature.
    Unsigned,
    /// The signature is not one of the gateway's key over this push.
    BadSignature,
    /// The version is not above the one the gateway last accepted.
    NotNewer,
    /// The rules do not validate (`errors` has every mistake).
    Invalid,
    /// The pushed rules could not be stored in the state directory.
    Storage,
}

impl Reason {
    /// The name in the answer (`not_newer`).
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Unchanged => "unchanged",
            Reason::TooLarge => "too_large",
            Reason::Malformed => "malformed",
            Reason::Unsigned => "unsigned",
            Reason::BadSignature => "bad_signature",
            Reason::NotNewer => "not_newer",
            Reason::Invalid => "invalid",
            Reason::Storage => "storage",
        }
    }
}

/// One error, placed in the pushed text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorAt {
    /// 1-based; 0 when the error has no place in the pushed text.
    pub line: usize,
    /// 1-based, in characters.
    pub col: usize,
    pub message: String,
}

impl ErrorAt {
    /// An error with no place in the text.
    pub fn whole(message: impl Into<String>) -> ErrorAt {
        ErrorAt {
            line: 0,
            col: 0,
            message: message.into(),
        }
    }

    /// A diagnostic in the pushed text keeps its place; one in another file
    /// (none today) keeps its file in the message.
    pub fn from_diagnostic(d: &Diagnostic, pushed: &std::path::Path) -> ErrorAt {
        if d.file == pushed {
            ErrorAt {
                line: d.line,
                col: d.col,
                message: d.message.clone(),
            }
        } else {
            ErrorAt::whole(d.to_string())
        }
    }
}

/// What a gateway answers to a push.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outcome {
    pub gateway: String,
    /// The push's `id`, when it had one.
    pub id: Option<String>,
    /// The push's version (null when the push could not be read).
    pub version: Option<String>,
    pub result: Verdict,
    pub reason: Option<Reason>,
    /// The version of the pushed rules in force after this push (null when
    /// none is).
    pub in_force: Option<String>,
    /// Rules in force after this push, local and pushed.
    pub rules: u64,
    /// Of which pushed.
    pub pushed: u64,
    /// [`rules_hash`] of the rules in force after this push.
    pub hash: String,
    pub errors: Vec<ErrorAt>,
    pub errors_omitted: u64,
    pub ts: String,
}

impl Outcome {
    /// The payload, at most `max` bytes: errors that do not fit are left
    /// out (from the last) and counted.
    pub fn to_payload(&self, max: usize) -> Vec<u8> {
        let mut o = self.clone();
        loop {
            // Plain data: serializing it cannot fail.
            let bytes = serde_json::to_vec(&o).unwrap_or_default();
            if bytes.len() <= max || o.errors.is_empty() {
                return bytes;
            }
            // Remove about as many as the excess needs, at least one.
            let avg = bytes.len() / (o.errors.len() + 1);
            let drop = ((bytes.len() - max) / avg.max(1)).clamp(1, o.errors.len());
            o.errors.truncate(o.errors.len() - drop);
            o.errors_omitted += drop as u64;
        }
    }
}

/// A name for a set of rules: SHA-256 over the rules compiled and sorted
/// by id (JSON, one a line), as `sha256:` and 64 hex digits. Two gateways
/// run the same rules exactly when their hashes are equal, however the
/// files were written (comments, order, spacing).
pub fn rules_hash(rules: &[Rule]) -> String {
    let mut sorted: Vec<&Rule> = rules.iter().collect();
    sorted.sort_by(|a, b| a.id.cmp(&b.id));
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    for r in sorted {
        // A rule is plain data: serializing it cannot fail.
        ctx.update(&serde_json::to_vec(r).unwrap_or_default());
        ctx.update(b"\n");
    }
    let digest = ctx.finish();
    let mut s = String::from("sha256:");
    for b in digest.as_ref() {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn refused(errors: Vec<ErrorAt>) -> Outcome {
        Outcome {
            gateway: "gw1".into(),
            id: Some("ab12".into()),
            version: Some("8".into()),
            result: Verdict::Refused,
            reason: Some(Reason::Invalid),
            in_force: Some("7".into()),
            rules: 5,
            pushed: 3,
            hash: "sha256:00".into(),
            errors,
            errors_omitted: 0,
            ts: "2026-11-26T10:00:00.123Z".into(),
        }
    }

    #[test]
    fn the_payload_has_every_field_in_the_contract_order() {
        let o = refused(vec![ErrorAt {
            line: 4,
            col: 1,
            message: "unknown field `abvoe`".into(),
        }]);
        let text = String::from_utf8(o.to_payload(64 << 10)).unwrap();
        assert_eq!(
            text,
            r#"{"gateway":"gw1","id":"ab12","version":"8","result":"refused","reason":"invalid","in_force":"7","rules":5,"pushed":3,"hash":"sha256:00","errors":[{"line":4,"col":1,"message":"unknown field `abvoe`"}],"errors_omitted":0,"ts":"2026-11-26T10:00:00.123Z"}"#
        );
        let back: Outcome = serde_json::from_str(&text).unwrap();
        assert_eq!(back, o);
    }

    #[test]
    fn reasons_are_named_as_in_the_answer() {
        for r in [
            Reason::Unchanged,
            Reason::TooLarge,
            Reason::Malformed,
            Reason::Unsigned,
            Reason::BadSignature,
            Reason::NotNewer,
            Reason::Invalid,
            Reason::Storage,
        ] {
            assert_eq!(serde_json::to_value(r).unwrap(), r.as_str());
        }
    }

    #[test]
    fn an_applied_push_has_no_reason_and_no_errors() {
        let o = Outcome {
            result: Verdict::Applied,
            reason: None,
            errors: vec![],
            ..refused(vec![])
        };
        let v: serde_json::Value = serde_json::from_slice(&o.to_payload(1024)).unwrap();
        assert_eq!(v["result"], "applied");
        assert!(v["reason"].is_null());
        assert_eq!(v["errors"], serde_json::json!([]));
    }

    #[test]
    fn errors_that_do_not_fit_max_payload_are_left_out_and_counted() {
        let errors: Vec<ErrorAt> = (1..=500)
            .map(|i| ErrorAt {
                line: i,
                col: 1,
                message: format!("mistake number {i} in this rules file"),
            })
            .collect();
        let o = refused(errors);
        for max in [1024, 4096, 20_000] {
            let p = o.to_payload(max);
            assert!(p.len() <= max, "{} > {max}", p.len());
            let back: Outcome = serde_json::from_slice(&p).unwrap();
            assert_eq!(back.errors.len() as u64 + back.errors_omitted, 500);
            assert!(!back.errors.is_empty(), "at {max} some errors fit");
            assert_eq!(back.errors[0].line, 1, "the first errors are kept");
        }
        assert_eq!(
            o.to_payload(1 << 20).len(),
            serde_json::to_vec(&o).unwrap().len()
        );
    }

    #[test]
    fn errors_keep_their_place_in_the_pushed_text_and_others_name_their_file() {
        let pushed = Path::new("<pushed rules>");
        let d = |file: &str, line| Diagnostic {
            file: file.into(),
            line,
            col: 3,
            message: "m".into(),
        };
        assert_eq!(
            ErrorAt::from_diagnostic(&d("<pushed rules>", 4), pushed),
            ErrorAt {
                line: 4,
                col: 3,
                message: "m".into()
            }
        );
        assert_eq!(
            ErrorAt::from_diagnostic(&d("/etc/outpost/rules.toml", 2), pushed),
            ErrorAt::whole("/etc/outpost/rules.toml:2:3: m")
        );
    }

    fn rule(id: &str, above: f64) -> Rule {
        let condition = crate::rules::Condition::Above {
            threshold: above,
            clear: None,
        };
        Rule::plain(id, "*", "t", condition)
    }

    #[test]
    fn the_hash_names_the_compiled_set_whatever_its_order() {
        let a = [rule("a", 1.0), rule("b", 2.0)];
        let b = [rule("b", 2.0), rule("a", 1.0)];
        let c = [rule("a", 1.5), rule("b", 2.0)];
        assert_eq!(rules_hash(&a), rules_hash(&b));
        assert_ne!(rules_hash(&a), rules_hash(&c));
        assert_ne!(rules_hash(&a), rules_hash(&a[..1]));
        let h = rules_hash(&[]);
        assert_eq!(
            h, "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            "no rules: SHA-256 of nothing"
        );
    }
}
