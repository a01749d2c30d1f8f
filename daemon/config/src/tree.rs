//! Key paths into the parsed document ([`DeTable`]): find the entry an error's
//! span points at, look an entry up, take it out. A path is keys and, inside
//! arrays (`[[disk]]`), 0-based indices; problems name it as `disk[1].path`.

use std::fmt::Write;
use std::ops::Range;

use toml::de::{DeTable, DeValue};
use toml::Spanned;

/// One step of a [`KeyPath`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Segment {
    Key(String),
    Index(usize),
}

pub(super) type KeyPath = Vec<Segment>;

/// `disk[1].path` for `[Key("disk"), Index(1), Key("path")]`.
pub(super) fn render(path: &[Segment]) -> String {
    let mut text = String::new();
    for segment in path {
        match segment {
            Segment::Key(key) if text.is_empty() => text.push_str(key),
            Segment::Key(key) => write!(text, ".{key}").expect("writing to a String"),
            Segment::Index(index) => write!(text, "[{index}]").expect("writing to a String"),
        }
    }
    text
}

/// The inverse of [`render`], for the dotted names that rules give. Keys of
/// the schema hold neither `.` nor `[`.
pub(super) fn parse_field(field: &str) -> KeyPath {
    let mut path = Vec::new();
    for part in field.split('.') {
        let mut pieces = part.split('[');
        path.push(Segment::Key(pieces.next().unwrap_or_default().to_owned()));
        for index in pieces {
            let index = index.trim_end_matches(']').parse().unwrap_or(usize::MAX);
            path.push(Segment::Index(index));
        }
    }
    path
}

/// Whether `field` is `ancestor` or lies below it (`disk[1].path` lies below
/// `disk` and `disk[1]`, not below `dis`).
pub(super) fn is_within(field: &str, ancestor: &str) -> bool {
    match field.strip_prefix(ancestor) {
        Some(rest) => rest.is_empty() || rest.starts_with(['.', '[']),
        None => false,
    }
}

/// The path of the deepest entry whose key or value span contains `span`:
/// the entry an error is about.
pub(super) fn locate(table: &DeTable, span: &Range<usize>) -> Option<KeyPath> {
    let mut best: Option<KeyPath> = None;
    for (key, value) in table.iter() {
        let here = [Segment::Key(key.get_ref().to_string())];
        let mut candidate = None;
        if contains(key.span(), span) || contains(value.span(), span) {
            candidate = Some(here.to_vec());
        }
        // An error on a key is about this entry, even where the key lies in
        // a header that also spans an element (`[[disk]]`).
        let below = match contains(key.span(), span) {
            true => None,
            false => locate_below(value.get_ref(), span),
        };
        if let Some(below) = below {
            candidate = Some(here.into_iter().chain(below).collect());
        }
        if candidate.as_ref().map(Vec::len) > best.as_ref().map(Vec::len) {
            best = candidate;
        }
    }
    best
}

/// [`locate`] inside a table or array value, relative to it.
fn locate_below(value: &DeValue, span: &Range<usize>) -> Option<KeyPath> {
    let items = match value {
        DeValue::Table(child) => return locate(child, span),
        DeValue::Array(items) => items,
        _ => return None,
    };
    let mut best: Option<KeyPath> = None;
    for (index, item) in items.iter().enumerate() {
        let mut candidate = None;
        if contains(item.span(), span) {
            candidate = Some(vec![Segment::Index(index)]);
        }
        if let Some(below) = locate_below(item.get_ref(), span) {
            candidate = Some(
                std::iter::once(Segment::Index(index))
                    .chain(below)
                    .collect(),
            );
        }
        if candidate.as_ref().map(Vec::len) > best.as_ref().map(Vec::len) {
            best = candidate;
        }
    }
    best
}

fn contains(outer: Range<usize>, inner: &Range<usize>) -> bool {
    outer.start <= inner.start && inner.end <= outer.end
}

pub(super) fn lookup<'t, 'i>(
    table: &'t DeTable<'i>,
    path: &[Segment],
) -> Option<&'t Spanned<DeValue<'i>>> {
    let (Segment::Key(first), rest) = path.split_first()? else {
        return None;
    };
    let mut entry = table.get(first.as_str())?;
    for segment in rest {
        entry = match (segment, entry.get_ref()) {
            (Segment::Key(key), DeValue::Table(child)) => child.get(key.as_str())?,
            (Segment::Index(index), DeValue::Array(items)) => items.get(*index)?,
            _ => return None,
        };
    }
    Some(entry)
}

/// Takes the entry at `path` out, so that it falls back to its default. An
/// array element becomes an empty table instead (the indices of the elements
/// after it must not shift); an element that already is one takes its whole
/// array with it.
pub(super) fn remove(table: &mut DeTable, path: &[Segment]) {
    let Some((Segment::Key(first), rest)) = path.split_first() else {
        return;
    };
    let Some(entry) = table.get_mut(first.as_str()) else {
        return;
    };
    let remove_here = match rest.split_first() {
        None => true,
        Some((Segment::Key(_), _)) => {
            if let DeValue::Table(child) = entry.get_mut() {
                remove(child, rest);
            }
            false
        }
        Some((Segment::Index(index), below)) => remove_from_array(entry.get_mut(), *index, below),
    };
    if remove_here {
        table.remove(first.as_str());
    }
}

/// Returns whether the array itself must go.
fn remove_from_array(value: &mut DeValue, index: usize, below: &[Segment]) -> bool {
    let DeValue::Array(items) = value else {
        return false;
    };
    let Some(item) = items.get_mut(index) else {
        return false;
    };
    match (below.first(), item.get_mut()) {
        (Some(Segment::Key(_)), DeValue::Table(child)) => {
            remove(child, below);
            false
        }
        (Some(_), _) => false,
        (None, DeValue::Table(child)) if child.is_empty() => true,
        (None, element) => {
            *element = DeValue::Table(DeTable::new());
            false
        }
    }
}

/// Drops every entry, at any depth, for which `doomed(key span, value span)`.
/// Array elements are emptied rather than dropped, as in [`remove`].
pub(super) fn drop_entries(table: &mut DeTable, doomed: &dyn Fn(Range<usize>) -> bool) {
    let keys: Vec<String> = table
        .iter()
        .filter(|(key, value)| doomed(key.span()) || doomed(value.span()))
        .map(|(key, _)| key.get_ref().to_string())
        .collect();
    for key in keys {
        table.remove(key.as_str());
    }
    for (_, value) in table.iter_mut() {
        drop_below(value.get_mut(), doomed);
    }
}

fn drop_below(value: &mut DeValue, doomed: &dyn Fn(Range<usize>) -> bool) {
    match value {
        DeValue::Table(child) => drop_entries(child, doomed),
        DeValue::Array(items) => {
            for item in items.iter_mut() {
                if doomed(item.span()) {
                    *item.get_mut() = DeValue::Table(DeTable::new());
                } else {
                    drop_below(item.get_mut(), doomed);
                }
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_and_parse_are_inverse() {
        let path = vec![
            Segment::Key("disk".to_owned()),
            Segment::Index(1),
            Segment::Key("path".to_owned()),
        ];
        assert_eq!(render(&path), "disk[1].path");
        assert_eq!(parse_field("disk[1].path"), path);
        assert_eq!(parse_field("log.level").len(), 2);
    }

    #[test]
    fn within() {
        assert!(is_within("disk[1].path", "disk"));
        assert!(is_within("disk[1].path", "disk[1]"));
        assert!(is_within("gateway.address", "gateway.address"));
        assert!(!is_within("disks", "disk"));
        assert!(!is_within("disk[10]", "disk[1]"));
    }

    #[test]
    fn locate_lookup_and_remove_inside_an_array_of_tables() {
        let text = "[[disk]]\nname = \"a\"\n[[disk]]\nname = \"b\"\nbogus = 1\n";
        let (mut tree, errors) = DeTable::parse_recoverable(text);
        assert!(errors.is_empty());
        let at = text.find("bogus").unwrap();
        let path = locate(tree.get_ref(), &(at..at + 5)).unwrap();
        assert_eq!(render(&path), "disk[1].bogus");
        assert!(lookup(tree.get_ref(), &path).is_some());
        remove(tree.get_mut(), &path);
        assert!(lookup(tree.get_ref(), &path).is_none());
        let second = parse_field("disk[1]");
        remove(tree.get_mut(), &second);
        let emptied = lookup(tree.get_ref(), &second).unwrap();
        assert!(matches!(emptied.get_ref(), DeValue::Table(t) if t.is_empty()));
        assert!(lookup(tree.get_ref(), &parse_field("disk[0].name")).is_some());
        remove(tree.get_mut(), &second);
        assert!(lookup(tree.get_ref(), &parse_field("disk")).is_none());
    }
}
