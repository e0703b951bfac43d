//! Where each key of a TOML source sits, so errors can name a line.
//!
//! serde reports *what* is wrong; this index, built from `toml_edit`'s span-preserving
//! parser, tells *where*: the dotted path of every key with the byte ranges of the key
//! and of its value.

use std::ops::Range;
use toml_edit::{Document, Item, Table, Value};

/// One key of the source: its dotted path (`hypervisor.vcpus`) and where it is written.
#[derive(Debug, Clone)]
pub(crate) struct KeyEntry {
    /// Dotted path from the root.
    pub path: String,
    /// The key itself (last path element).
    pub key: String,
    /// Dotted path of the table that holds it (`""` for the root).
    pub section: String,
    /// Byte range of the key.
    pub key_span: Range<usize>,
    /// Byte range of the value (or of the table header for a `[table]`).
    pub value_span: Range<usize>,
}

/// All keys of one source, in source order.
#[derive(Debug, Clone, Default)]
pub(crate) struct KeyIndex {
    entries: Vec<KeyEntry>,
    line_starts: Vec<usize>,
}

impl KeyIndex {
    /// Index `src`. Returns `None` when it is not valid TOML (the serde parse reports that).
    pub fn build(src: &str) -> Option<Self> {
        let doc = Document::parse(src).ok()?;
        let mut entries = Vec::new();
        walk_table(doc.as_table(), "", &mut entries);
        entries.sort_by_key(|e| e.key_span.start);
        let line_starts = std::iter::once(0)
            .chain(src.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        Some(Self {
            entries,
            line_starts,
        })
    }

    /// Every key, in source order.
    pub fn entries(&self) -> &[KeyEntry] {
        &self.entries
    }

    /// The key at dotted `path`, if the source sets it.
    pub fn get(&self, path: &str) -> Option<&KeyEntry> {
        self.entries.iter().find(|e| e.path == path)
    }

    /// The innermost key whose key or value covers byte `offset`.
    pub fn at(&self, offset: usize) -> Option<&KeyEntry> {
        self.entries
            .iter()
            .filter(|e| e.key_span.contains(&offset) || e.value_span.contains(&offset))
            .max_by_key(|e| e.path.matches('.').count())
    }

    /// 1-based line number of byte `offset`.
    pub fn line_of(&self, offset: usize) -> usize {
        line_of(&self.line_starts, offset)
    }
}

/// 1-based line of `offset` given the byte offsets where lines start.
fn line_of(line_starts: &[usize], offset: usize) -> usize {
    match line_starts.binary_search(&offset) {
        Ok(i) => i + 1,
        Err(i) => i,
    }
}

/// 1-based line of byte `offset` in `src` (for errors raised before an index exists).
pub(crate) fn line_in(src: &str, offset: usize) -> usize {
    let offset = offset.min(src.len());
    src[..offset].matches('\n').count() + 1
}

fn join(section: &str, key: &str) -> String {
    if section.is_empty() {
        key.to_string()
    } else {
        format!("{section}.{key}")
    }
}

fn walk_table(table: &Table, section: &str, out: &mut Vec<KeyEntry>) {
    for (key, item) in table.iter() {
        let path = join(section, key);
        let key_span = table.key(key).and_then(|k| k.span()).unwrap_or(0..0);
        let value_span = item.span().unwrap_or_else(|| key_span.clone());
        out.push(KeyEntry {
            path: path.clone(),
            key: key.to_string(),
            section: section.to_string(),
            key_span,
            value_span,
        });
        match item {
            Item::Table(t) => walk_table(t, &path, out),
            Item::Value(Value::InlineTable(t)) => {
                for (k, v) in t.iter() {
                    let key_span = t.key(k).and_then(|k| k.span()).unwrap_or(0..0);
                    out.push(KeyEntry {
                        path: join(&path, k),
                        key: k.to_string(),
                        section: path.clone(),
                        value_span: v.span().unwrap_or_else(|| key_span.clone()),
                        key_span,
                    });
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indexes_tables_inline_tables_and_lines() {
        let src = "# c\n[hypervisor]\nvcpus = 2\n\nagent = { port = 5 }\n";
        let idx = KeyIndex::build(src).unwrap();
        let vcpus = idx.get("hypervisor.vcpus").unwrap();
        assert_eq!(idx.line_of(vcpus.key_span.start), 3);
        assert_eq!(vcpus.section, "hypervisor");
        let port = idx.get("hypervisor.agent.port").unwrap();
        assert_eq!(idx.line_of(port.key_span.start), 5);
        assert_eq!(
            idx.at(port.value_span.start).unwrap().path,
            "hypervisor.agent.port"
        );
        assert_eq!(line_in(src, 0), 1);
        assert_eq!(line_in(src, src.len()), 6);
    }
}
