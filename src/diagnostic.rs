//! Diagnostics for configuration and rules files: `FILE:LINE:COL: message`.
//!
//! Loading a file collects *every* problem it can find instead of stopping at
//! the first one (a person fixing a rules file wants the whole list), so the
//! loaders push into a [`Diagnostics`] and decide at the end whether the file
//! is valid.
//!
//! [`deserialize_lenient`] is the piece that makes serde report more than one
//! error per table: when deserializing a table fails at a key, that key is
//! recorded, removed, and the table tried again, so two typos in one rule give
//! two diagnostics.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use toml::Spanned;
use toml::de::{DeTable, DeValue, ValueDeserializer};

/// One problem at one place in one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: PathBuf,
    /// 1-based line; 0 when the problem has no place in the file (e.g. it is missing).
    pub line: usize,
    /// 1-based column, counted in characters.
    pub col: usize,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}: {}", self.file.display(), self.message)
        } else {
            write!(
                f,
                "{}:{}:{}: {}",
                self.file.display(),
                self.line,
                self.col,
                self.message
            )
        }
    }
}

/// Every problem found while loading a configuration, in file order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl Diagnostics {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    pub fn len(&self) -> usize {
        self.0.len()
    }
    pub fn extend(&mut self, other: Diagnostics) {
        self.0.extend(other.0);
    }
    pub fn push(&mut self, d: Diagnostic) {
        self.0.push(d);
    }
    pub fn iter(&self) -> impl Iterator<Item = &Diagnostic> {
        self.0.iter()
    }

    /// Puts diagnostics in reading order: files in the order they were first
    /// reported, and by line and column within each file.
    pub fn sort(&mut self) {
        let mut files: Vec<PathBuf> = Vec::new();
        for d in &self.0 {
            if !files.contains(&d.file) {
                files.push(d.file.clone());
            }
        }
        self.0.sort_by_key(|d| {
            let f = files.iter().position(|f| *f == d.file).unwrap_or(0);
            (f, d.line, d.col)
        });
    }
}

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Diagnostics {}

/// The text of one file, able to turn byte spans into line and column.
pub struct Source<'a> {
    pub path: &'a Path,
    pub text: &'a str,
}

impl<'a> Source<'a> {
    pub fn new(path: &'a Path, text: &'a str) -> Self {
        Source { path, text }
    }

    /// A diagnostic at the start of `span`.
    pub fn at(&self, span: Range<usize>, message: impl Into<String>) -> Diagnostic {
        let (line, col) = line_col(self.text, span.start);
        Diagnostic {
            file: self.path.to_path_buf(),
            line,
            col,
            message: message.into(),
        }
    }

    /// A diagnostic for the whole file (no place in it).
    pub fn whole(&self, message: impl Into<String>) -> Diagnostic {
        Diagnostic {
            file: self.path.to_path_buf(),
            line: 0,
            col: 0,
            message: message.into(),
        }
    }

    /// Parses the TOML document, reporting every syntax error.
    pub fn parse(&self, diags: &mut Diagnostics) -> Option<Spanned<DeTable<'a>>> {
        let (table, errors) = DeTable::parse_recoverable(self.text);
        if errors.is_empty() {
            return Some(table);
        }
        for e in errors {
            diags.push(self.toml_error(&e));
        }
        None
    }

    fn toml_error(&self, e: &toml::de::Error) -> Diagnostic {
        let message = e.message().trim().to_string();
        match e.span() {
            Some(span) => self.at(span, message),
            None => self.whole(message),
        }
    }
}

/// 1-based line and character column of a byte offset.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let col = before[line_start..].chars().count() + 1;
    (line, col)
}

/// Deserializes `value` into `T`, collecting every error into `diags`.
///
/// serde stops at the first error; to find the others, the offending key is
/// removed from the table and deserialization is tried again. Errors about a
/// missing field that was removed this way are not reported twice. Returns
/// what could be deserialized without the offending keys, so the caller can
/// still check its meaning and report more; the caller must treat the load
/// as failed whenever `diags` grew.
pub fn deserialize_lenient<T: DeserializeOwned>(
    src: &Source<'_>,
    value: &Spanned<DeValue<'_>>,
    diags: &mut Diagnostics,
) -> Option<T> {
    let mut value = value.clone();
    let mut removed: Vec<String> = Vec::new();
    // Each round removes one key, so a table with n keys needs at most n + 1 rounds.
    let max_rounds = match value.get_ref() {
        DeValue::Table(t) => t.len() + 1,
        _ => 1,
    };
    for _ in 0..max_rounds {
        match T::deserialize(ValueDeserializer::from(value.clone())) {
            Ok(v) => return Some(v),
            Err(e) => {
                let msg = e.message().trim().to_string();
                let is_echo = removed
                    .iter()
                    .any(|k| msg == format!("missing field `{k}`"));
                if !is_echo {
                    diags.push(src.toml_error(&e));
                }
                let span = e.span()?;
                let DeValue::Table(table) = value.get_mut() else {
                    return None;
                };
                let culprit = table
                    .iter()
                    .find(|(k, v)| {
                        contains(&k.span(), &span) || contains(&v.span(), &span) || k.span() == span
                    })
                    .map(|(k, _)| k.get_ref().to_string());
                let key = culprit?;
                let culprit_key = table.keys().find(|k| *k.get_ref() == key).cloned();
                if let Some(k) = culprit_key {
                    table.remove(&k);
                }
                removed.push(key);
            }
        }
    }
    None
}

fn contains(outer: &Range<usize>, inner: &Range<usize>) -> bool {
    outer.start <= inner.start && inner.end <= outer.end && outer.start < outer.end
}

/// Checks a table of cases, `(input, expected)`: each input for which
/// `check` gives another result than expected, with both, for the message
/// of a failed test.
#[cfg(test)]
pub(crate) fn mismatches<I, E, G>(
    cases: impl IntoIterator<Item = (I, E)>,
    check: impl Fn(&I) -> G,
) -> Vec<String>
where
    I: fmt::Debug,
    E: fmt::Debug,
    G: fmt::Debug + PartialEq<E>,
{
    cases
        .into_iter()
        .filter_map(|(input, expected)| {
            let got = check(&input);
            (got != expected)
                .then(|| format!("{input:?}\n  expected {expected:?}\n  got      {got:?}"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Item {
        name: String,
        size: Option<u32>,
    }

    fn check(text: &str) -> (Option<Item>, Vec<String>) {
        let path = Path::new("f.toml");
        let src = Source::new(path, text);
        let mut diags = Diagnostics::default();
        let table = src.parse(&mut diags).expect("valid toml");
        let value = Spanned::new(table.span(), DeValue::Table(table.into_inner()));
        let item = deserialize_lenient::<Item>(&src, &value, &mut diags);
        diags.sort();
        let item = if diags.is_empty() { item } else { None };
        (item, diags.iter().map(|d| d.to_string()).collect())
    }

    #[test]
    fn line_col_counts_from_one_in_characters() {
        assert_eq!(line_col("ab\ncé d", 0), (1, 1));
        assert_eq!(line_col("ab\ncé d", 3), (2, 1));
        assert_eq!(line_col("ab\ncé d", 7), (2, 4));
    }

    #[test]
    fn a_valid_table_gives_no_diagnostics() {
        let (item, diags) = check("name = \"x\"\nsize = 3\n");
        assert!(item.is_some());
        assert!(diags.is_empty(), "{diags:?}");
    }

    #[test]
    fn two_unknown_keys_give_two_diagnostics_with_their_lines() {
        let (item, diags) = check("name = \"x\"\nsiez = 3\nnmae = 4\n");
        assert!(item.is_none());
        assert_eq!(diags.len(), 2, "{diags:?}");
        assert!(
            diags[0].starts_with("f.toml:2:1: unknown field `siez`"),
            "{diags:?}"
        );
        assert!(
            diags[1].starts_with("f.toml:3:1: unknown field `nmae`"),
            "{diags:?}"
        );
    }

    #[test]
    fn a_wrong_type_is_reported_at_the_value_and_others_still_found() {
        let (_, diags) = check("name = 5\nsize = \"big\"\n");
        assert_eq!(diags.len(), 2, "{diags:?}");
        assert!(diags[0].starts_with("f.toml:1:8:"), "{diags:?}");
        assert!(diags[1].starts_with("f.toml:2:8:"), "{diags:?}");
    }

    #[test]
    fn syntax_errors_name_their_line() {
        let src = Source::new(Path::new("f.toml"), "a = 1\nb = = 2\n");
        let mut diags = Diagnostics::default();
        assert!(src.parse(&mut diags).is_none());
        assert!(diags.0[0].to_string().starts_with("f.toml:2:"), "{diags}");
    }
}
