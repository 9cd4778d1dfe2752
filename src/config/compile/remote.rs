//! `[remote]`: rules pushed over the upstream link, from which topics, and
//! whose signature they need.

use std::collections::HashSet;
use std::ops::Range;
use std::path::Path;

use toml::Spanned;

use super::super::RemoteConfig;
use super::super::raw::RawRemote;
use super::Compiler;
use crate::push::sign::PublicKey;
use crate::push::valid_name;

/// More groups than a gateway sensibly belongs to.
const MAX_GROUPS: usize = 32;

impl Compiler<'_, '_> {
    pub(super) fn remote(
        &mut self,
        raw: RawRemote,
        span: Range<usize>,
        has_upstream: bool,
    ) -> RemoteConfig {
        let rules = raw.rules.unwrap_or(false);
        if rules && !has_upstream {
            self.err(
                span.clone(),
                "[remote] rules = true needs an [upstream] broker (pushes come over it), which is missing or invalid",
            );
        }
        let mut groups = Vec::new();
        if let Some(list) = raw.groups {
            if list.get_ref().len() > MAX_GROUPS {
                self.err(
                    list.span(),
                    format!("at most {MAX_GROUPS} groups, not {}", list.get_ref().len()),
                );
            }
            let mut seen = HashSet::new();
            for g in list.into_inner() {
                if !valid_name(g.get_ref()) {
                    self.err(
                        g.span(),
                        format!(
                            "group name `{}` must match [A-Za-z0-9_-]+ (at most 64 characters)",
                            g.get_ref()
                        ),
                    );
                } else if !seen.insert(g.get_ref().clone()) {
                    self.err(g.span(), format!("duplicate group `{}`", g.get_ref()));
                } else {
                    groups.push(g.into_inner());
                }
            }
        }
        let public_key = match (raw.public_key, raw.public_key_file) {
            (Some(_), Some(f)) => {
                self.err(f.span(), "give `public_key` or `public_key_file`, not both");
                None
            }
            (Some(k), None) => match PublicKey::parse(k.get_ref()) {
                Ok(key) => Some(key),
                Err(e) => {
                    self.err(k.span(), format!("public_key: {e}"));
                    None
                }
            },
            (None, Some(f)) => self
                .existing_file(&f, "public_key_file")
                .and_then(|path| self.key_file(&f, &path)),
            (None, None) => None,
        };
        if !rules && (!groups.is_empty() || public_key.is_some()) {
            self.warn(
                span,
                "[remote] `groups` and the public key have no effect while `rules` is not true",
            );
        } else if rules && public_key.is_none() {
            self.warn(
                span,
                "pushed rules need no signature: whoever can publish to this gateway's rules topics can change its rules; set `public_key` (see `outpost rules keygen`) or restrict them with broker ACLs",
            );
        }
        RemoteConfig {
            rules,
            groups,
            public_key,
        }
    }

    /// The public key in `path` (named at `at`).
    fn key_file(&mut self, at: &Spanned<String>, path: &Path) -> Option<PublicKey> {
        let parsed = self
            .files
            .read_to_string(path)
            .map_err(|e| format!("cannot read public_key_file `{}`: {e}", path.display()))
            .and_then(|text| {
                PublicKey::parse(&text)
                    .map_err(|e| format!("public_key_file `{}`: {e}", path.display()))
            });
        match parsed {
            Ok(key) => Some(key),
            Err(e) => {
                self.err(at.span(), e);
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::super::super::files::MemFiles;
    use super::super::compile;
    use crate::diagnostic::mismatches;
    use crate::push::sign::{PublicKey, pem, spki_der};

    const PATH: &str = "/etc/outpost/outpost.toml";
    /// An ed25519 public key (the raw 32 bytes 1..=32, base64).
    const KEY: &str = "AQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRobHB0eHyA=";
    const HEAD: &str = "[gateway]\nid = \"gw\"\n[upstream]\nurl = \"mqtt://h\"\n";

    fn files() -> MemFiles {
        let key = PublicKey::parse(KEY).unwrap();
        MemFiles::default()
            .with("/etc/outpost/rules.toml", "")
            .with("/etc/outpost/fleet.pub", format!("{KEY}\n"))
            .with("/etc/outpost/fleet.pem", pem("PUBLIC KEY", &spki_der(&key)))
            .with("/etc/outpost/junk.pub", "not a key\n")
    }

    /// Errors, else warnings, each as `LINE:COL: message`.
    fn problems(text: &str) -> Vec<String> {
        let show = |d: &crate::diagnostic::Diagnostic| {
            d.to_string()
                .trim_start_matches(PATH)
                .trim_start_matches(':')
                .trim_start()
                .to_string()
        };
        match compile(Path::new(PATH), text, &files()) {
            Ok(c) => c.warnings.iter().map(show).collect(),
            Err(d) => d.iter().map(show).collect(),
        }
    }

    #[test]
    fn every_remote_problem_is_reported_at_its_place() {
        let full =
            |rest: &str| format!("{HEAD}[remote]\nrules = true\npublic_key = \"{KEY}\"\n{rest}");
        let cases: Vec<(String, Vec<String>)> = vec![
            (
                "[gateway]\nid = \"gw\"\n[remote]\nrules = true\n".into(),
                vec![
                    "3:1: [remote] rules = true needs an [upstream] broker (pushes come over it), which is missing or invalid".into(),
                ],
            ),
            (
                full("groups = [\"a b\", \"n\", \"n\"]\n"),
                vec![
                    "8:11: group name `a b` must match [A-Za-z0-9_-]+ (at most 64 characters)".into(),
                    "8:23: duplicate group `n`".into(),
                ],
            ),
            (
                full(&format!(
                    "groups = [{}]\n",
                    (0..33).map(|i| format!("\"g{i}\"")).collect::<Vec<_>>().join(",")
                )),
                vec!["8:10: at most 32 groups, not 33".into()],
            ),
            (
                format!("{HEAD}[remote]\nrules = true\npublic_key = \"{KEY}\"\npublic_key_file = \"fleet.pub\"\n"),
                vec!["8:19: give `public_key` or `public_key_file`, not both".into()],
            ),
            (
                format!("{HEAD}[remote]\nrules = true\npublic_key = \"AAAA\"\n"),
                vec!["7:14: public_key: an ed25519 public key is 32 bytes, this one is 3".into()],
            ),
            (
                format!("{HEAD}[remote]\nrules = true\npublic_key_file = \"junk.pub\"\n"),
                vec![
                    "7:19: public_key_file `/etc/outpost/junk.pub`: a public key is base64 (or a PEM PUBLIC KEY)".into(),
                ],
            ),
            (
                format!("{HEAD}[remote]\nrules = true\npublic_key_file = \"none.pub\"\n"),
                vec![
                    "7:19: cannot read public_key_file `/etc/outpost/none.pub`: No such file or directory (os error 2)".into(),
                ],
            ),
            (
                format!("{HEAD}[remote]\nrules = \"yes\"\n"),
                vec!["6:9: invalid type: string \"yes\", expected a boolean".into()],
            ),
            (
                format!("{HEAD}[remote]\nrule = true\n"),
                vec![
                    "6:1: unknown field `rule`, expected one of `rules`, `groups`, `public_key`, `public_key_file`".into(),
                ],
            ),
            // Warnings: the config stays valid.
            (
                format!("{HEAD}[remote]\nrules = true\n"),
                vec![
                    "5:1: warning: pushed rules need no signature: whoever can publish to this gateway's rules topics can change its rules; set `public_key` (see `outpost rules keygen`) or restrict them with broker ACLs".into(),
                ],
            ),
            (
                format!("{HEAD}[remote]\ngroups = [\"north\"]\n"),
                vec![
                    "5:1: warning: [remote] `groups` and the public key have no effect while `rules` is not true".into(),
                ],
            ),
        ];
        let cases: Vec<(&str, Vec<&str>)> = cases
            .iter()
            .map(|(t, w)| (t.as_str(), w.iter().map(String::as_str).collect()))
            .collect();
        let wrong = mismatches(cases.iter().map(|(t, w)| (*t, w.as_slice())), |t| {
            problems(t)
        });
        assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    }

    #[test]
    fn a_valid_remote_section_compiles_with_its_key_from_any_form() {
        for key in [
            format!("public_key = \"{KEY}\""),
            "public_key_file = \"fleet.pub\"".into(),
            "public_key_file = \"/etc/outpost/fleet.pem\"".into(),
        ] {
            let text = format!(
                "{HEAD}[remote]\nrules = true\ngroups = [\"north\", \"cold-rooms\"]\n{key}\n"
            );
            let c = compile(Path::new(PATH), &text, &files()).unwrap();
            assert!(c.warnings.is_empty(), "{:?}", c.warnings);
            assert!(c.remote.rules);
            assert_eq!(c.remote.groups, ["north", "cold-rooms"]);
            assert_eq!(c.remote.public_key, Some(PublicKey::parse(KEY).unwrap()));
            assert!(
                c.summary().contains(&format!(
                    "remote     rules pushed on outpost/gw/rules/set, outpost/groups/north/rules/set, outpost/groups/cold-rooms/rules/set; signed by key {KEY}"
                )),
                "{}",
                c.summary()
            );
        }
        let off = compile(Path::new(PATH), HEAD, &files()).unwrap();
        assert_eq!(off.remote, Default::default());
        assert!(!off.summary().contains("remote"));
    }
}
