//! The configuration as read, before deserialization: the file's parsed table with the
//! overrides merged in, each value with a span that tells where it came from.

use std::borrow::Cow;
use std::ops::Range;
use std::path::Path;

use toml::Spanned;
use toml::de::{DeTable, DeValue};

use super::{ConfigError, KeyProblem, Origin};

/// The configuration as read, before deserialization: the file's parsed table with the
/// overrides merged in, and where each value came from.
///
/// Every value carries a span. Spans below the file's length are offsets in the file; each
/// override gets a range of its own above it, so a span found in a deserialization error
/// tells where the value came from, and which key it belongs to.
pub(super) struct Sources<'a> {
    path: &'a Path,
    text: &'a str,
    pub(super) root: Spanned<DeTable<'a>>,
    overrides: Vec<(Range<usize>, Origin)>,
    next: usize,
}

/// A key of the merged table: its dotted name, the span of its name and of its value.
struct Entry {
    key: String,
    key_span: Range<usize>,
    value_span: Range<usize>,
}

impl<'a> Sources<'a> {
    pub(super) fn parse(path: &'a Path, text: &'a str) -> Result<Self, ConfigError> {
        let root = DeTable::parse(text).map_err(|e| ConfigError::Syntax {
            path: path.into(),
            line: line_of(text, e.span().map_or(0, |s| s.start)),
            message: e.message().trim().to_string(),
        })?;
        Ok(Sources { path, text, root, overrides: Vec::new(), next: text.len() + 1 })
    }

    /// Sets `key` (dotted) to `value` (TOML, or a bare string) from `origin`.
    pub(super) fn set(
        &mut self,
        key: &'a str,
        value: &'a str,
        origin: Origin,
    ) -> Result<(), ConfigError> {
        let parts: Vec<&str> = key.split('.').map(str::trim).collect();
        let error = |problem| ConfigError::Key { key: key.into(), origin: origin.clone(), problem };
        if parts.iter().any(|p| p.is_empty()) {
            return Err(error(KeyProblem::Unknown("an empty key".into())));
        }
        let value = value.trim();
        let value_base = self.next + parts.len();
        let end = value_base + value.len() + 1;
        let mut parsed = match DeValue::parse(value) {
            Ok(v) => v,
            Err(_) => Spanned::new(0..value.len(), DeValue::String(Cow::Borrowed(value))),
        };
        shift(&mut parsed, value_base);
        let mut table = self.root.get_mut();
        let (last, path) = parts.split_last().expect("split yields at least one part");
        for (i, p) in path.iter().enumerate() {
            let created = Spanned::new(self.next + i..end, DeValue::Table(DeTable::new()));
            let key_span = self.next + i..self.next + i + 1;
            let entry = table.entry(Spanned::new(key_span, Cow::Borrowed(*p))).or_insert(created);
            table = match entry.get_mut() {
                DeValue::Table(t) => t,
                _ => return Err(error(KeyProblem::NotATable(parts[..=i].join(".")))),
            };
        }
        let n = path.len();
        table.remove(*last);
        table.insert(Spanned::new(self.next + n..self.next + n + 1, Cow::Borrowed(*last)), parsed);
        self.overrides.push((self.next..end, origin));
        self.next = end + 1;
        Ok(())
    }

    /// Where the value at `span` came from.
    fn origin(&self, span: &Range<usize>) -> Origin {
        if span.start < self.text.len() {
            return Origin::File {
                path: self.path.into(),
                line: Some(line_of(self.text, span.start)),
            };
        }
        self.overrides
            .iter()
            .find(|(range, _)| range.contains(&span.start))
            .map(|(_, origin)| origin.clone())
            .unwrap_or_else(|| self.file())
    }

    fn file(&self) -> Origin {
        Origin::File { path: self.path.into(), line: None }
    }

    /// Every key of the merged table, tables included, outermost first.
    fn entries(&self) -> Vec<Entry> {
        fn walk(prefix: &str, table: &DeTable<'_>, out: &mut Vec<Entry>) {
            for (k, v) in table.iter() {
                let key = if prefix.is_empty() {
                    k.get_ref().to_string()
                } else {
                    format!("{prefix}.{}", k.get_ref())
                };
                out.push(Entry { key: key.clone(), key_span: k.span(), value_span: v.span() });
                if let DeValue::Table(t) = v.get_ref() {
                    walk(&key, t, out);
                }
            }
        }
        let mut out = Vec::new();
        walk("", self.root.get_ref(), &mut out);
        out
    }

    /// Names the key and origin of a deserialization error, by its span.
    pub(super) fn locate(&self, e: &toml::de::Error) -> ConfigError {
        let message = e.message().trim().to_string();
        // serde's wording for a missing field (`serde::de::Error::missing_field`).
        let missing = message
            .strip_prefix("missing field `")
            .and_then(|m| m.strip_suffix('`'))
            .map(str::to_string);
        let entries = self.entries();
        let key_error = |key: String, origin, problem| ConfigError::Key { key, origin, problem };
        let Some(span) = e.span() else {
            return match missing {
                Some(field) => key_error(field, self.file(), KeyProblem::Missing),
                None => ConfigError::Invalid { origin: self.file(), reason: message },
            };
        };
        if let Some(entry) = entries.iter().find(|en| en.key_span == span) {
            return key_error(entry.key.clone(), self.origin(&span), KeyProblem::Unknown(message));
        }
        // The innermost key whose value holds the span: the value itself, an element of it,
        // or the table that lacks a required key.
        let holder = entries
            .iter()
            .filter(|en| en.value_span.start <= span.start && span.end <= en.value_span.end)
            .min_by_key(|en| en.value_span.len());
        match (holder, missing) {
            (Some(entry), Some(field)) => key_error(
                format!("{}.{field}", entry.key),
                self.origin(&entry.key_span),
                KeyProblem::Missing,
            ),
            (None, Some(field)) => key_error(field, self.file(), KeyProblem::Missing),
            (Some(entry), None) => {
                key_error(entry.key.clone(), self.origin(&span), KeyProblem::Value(message))
            }
            (None, None) => ConfigError::Invalid { origin: self.origin(&span), reason: message },
        }
    }

    /// Where the value of `key` (dotted) came from; for a key set nowhere, where its table
    /// did, or the file.
    pub(super) fn origin_of(&self, key: &str) -> Origin {
        let entries = self.entries();
        let mut key = key;
        loop {
            if let Some(entry) = entries.iter().find(|en| en.key == key) {
                return self.origin(&entry.key_span);
            }
            match key.rsplit_once('.') {
                Some((parent, _)) => key = parent,
                None => return self.file(),
            }
        }
    }
}

/// Moves every span in `value` up by `by`.
fn shift(value: &mut Spanned<DeValue<'_>>, by: usize) {
    let span = value.span();
    let inner = std::mem::replace(value.get_mut(), DeValue::Boolean(false));
    let inner = match inner {
        DeValue::Array(mut a) => {
            for item in a.iter_mut() {
                shift(item, by);
            }
            DeValue::Array(a)
        }
        DeValue::Table(t) => {
            let mut shifted = DeTable::new();
            for (k, mut v) in t {
                shift(&mut v, by);
                let key_span = k.span();
                shifted.insert(
                    Spanned::new(key_span.start + by..key_span.end + by, k.into_inner()),
                    v,
                );
            }
            DeValue::Table(shifted)
        }
        other => other,
    };
    *value = Spanned::new(span.start + by..span.end + by, inner);
}

/// The 1-based line of byte `offset` in `text`.
fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())].iter().filter(|b| **b == b'\n').count() + 1
}
