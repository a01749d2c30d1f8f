//! Turns config text into a typed config or into every problem it has, each
//! with its line, column and dotted field. Used for every config file type
//! ([`Schema`]): the daemon's `Config` and the tap's `TapConfig`.
//!
//! serde stops at the first error, so the document is parsed once, with
//! spans, into a tree ([`DeTable`]) and deserialized from that tree in rounds:
//! each failing round names one offending entry (by the error's span), which
//! is recorded as a problem and removed from the tree before the next round.
//! Removed entries fall back to their defaults, so later rounds see a
//! complete, valid-so-far config. The serde structs stay the only schema.
//!
//! Required fields also have a default inside serde (an empty string or
//! path, never valid when written), so that one left out does not stop the
//! rounds; [`Schema::missing`] then names them, and they are reported at the
//! header of the table that lacks them (line 1 when the table itself is
//! missing).
//!
//! Syntax errors come from the parser's own recovery; the entries a syntax
//! error is in, or on the line of, are dropped first, as their recovered
//! values are guesses that would only produce echoes of the same mistake.

use std::collections::BTreeSet;
use std::ops::Range;

use serde::de::DeserializeOwned;
use toml::de::{DeTable, DeValue, Deserializer};
use toml::Spanned;

use super::tree::{self, KeyPath, Segment};
use super::validate::{Missing, Relation};
use super::Problem;

/// Most problems reported for one file; a file with more is probably not a
/// drgw config at all, and the first ones are enough to see that.
pub(super) const PROBLEMS_MAX: usize = 64;

/// A config file type. Its serde structs are the schema; these are the
/// checks serde cannot make, run on a config whose every field is valid on
/// its own.
pub(super) trait Schema: DeserializeOwned {
    /// Required fields the file does not set (they hold their sentinel).
    fn missing(&self) -> Vec<Missing>;
    /// Broken rules between fields.
    fn relations(&self) -> Vec<Relation>;
}

type Tree<'i> = Spanned<DeTable<'i>>;

pub(super) fn parse<T: Schema>(text: &str) -> Result<T, Vec<Problem>> {
    let lines = Lines::new(text);
    let (mut tree, syntax_errors) = DeTable::parse_recoverable(text);
    let mut problems = syntax_problems(tree.get_mut(), &lines, &syntax_errors);

    let config: Option<T> = deserialize_collecting(tree.clone(), &lines, &mut problems);
    if let Some(config) = &config {
        let blamed: Vec<String> = problems.iter().map(|p| p.field.clone()).collect();
        let is_blamed = |field: &str| {
            let within =
                |ancestor: &String| !ancestor.is_empty() && tree::is_within(field, ancestor);
            blamed.iter().any(within)
        };
        let missing = config.missing().into_iter();
        let missing: Vec<Missing> = missing.filter(|m| !is_blamed(&m.field)).collect();
        problems.extend(missing_problems(tree.get_ref(), &lines, missing));
        for relation in config.relations() {
            if !relation.fields.iter().any(|field| is_blamed(field)) {
                problems.push(relation_problem(tree.get_ref(), &lines, relation));
            }
        }
    }
    problems.sort_by_key(|problem| (problem.line, problem.column));
    problems.truncate(PROBLEMS_MAX + 1);
    match config {
        Some(config) if problems.is_empty() => Ok(config),
        _ => Err(problems),
    }
}

/// Deserializes `tree`, removing one offending entry per failed round.
/// Returns the config of the last round, or `None` if an error could not be
/// pinned to an entry (then nothing more can be learnt safely).
fn deserialize_collecting<T: DeserializeOwned>(
    mut tree: Tree,
    lines: &Lines,
    problems: &mut Vec<Problem>,
) -> Option<T> {
    loop {
        let error = match T::deserialize(Deserializer::from(tree.clone())) {
            Ok(config) => return Some(config),
            Err(error) => error,
        };
        let span = error.span().unwrap_or(0..0);
        if problems.len() >= PROBLEMS_MAX {
            let message = format!("too many problems; only {PROBLEMS_MAX} are reported");
            problems.push(lines.problem(span.start, String::new(), message));
            return None;
        }
        // An empty span is the document's own (an error about the whole
        // file): no entry to blame, and blaming the first one would be wrong.
        let path = Some(&span).filter(|span| !span.is_empty());
        let Some(path) = path.and_then(|span| tree::locate(tree.get_ref(), span)) else {
            let message = error.message().to_owned();
            problems.push(lines.problem(span.start, String::new(), message));
            return None;
        };
        // A required field without a sentinel default (a schema slip): the
        // error is about its table, which cannot be removed without echoes.
        if let Some(key) = missing_field(error.message()) {
            let field = format!("{}.{key}", tree::render(&path));
            let message = format!("required key `{key}` is missing");
            problems.push(lines.problem(span.start, field, message));
            return None;
        }
        let value = tree::lookup(tree.get_ref(), &path).map(|entry| entry.get_ref());
        let message = describe(error.message(), value, path.len());
        problems.push(lines.problem(span.start, tree::render(&path), message));
        tree::remove(tree.get_mut(), &path);
    }
}

/// `address` from serde's "missing field `address`".
fn missing_field(message: &str) -> Option<&str> {
    message.strip_prefix("missing field `")?.strip_suffix('`')
}
/// Rewrites serde's wording where it is unclear to an operator: type errors
/// say what was expected and which TOML type was found, and an unknown
/// top-level table is called a section.
fn describe(message: &str, value: Option<&DeValue>, depth: usize) -> String {
    if let (Some(rest), Some(value)) = (message.strip_prefix("invalid type: "), value) {
        if let Some((_, expected)) = rest.rsplit_once(", expected ") {
            let expected = match expected {
                _ if expected.starts_with("struct ") => "a table",
                "a sequence" => "an array",
                _ => expected,
            };
            let found = value.type_str();
            let article = if found.starts_with(['a', 'e', 'i', 'o', 'u']) {
                "an"
            } else {
                "a"
            };
            return format!("expected {expected}, found {article} {found}");
        }
    }
    let is_section = matches!(value, Some(DeValue::Table(_) | DeValue::Array(_)));
    if let (Some(rest), 1, true) = (message.strip_prefix("unknown field "), depth, is_section) {
        return format!("unknown section {rest}");
    }
    message.to_owned()
}

/// A broken rule is reported at the first of its fields that the file
/// sets, else where the first field would go.
fn relation_problem(table: &DeTable, lines: &Lines, relation: Relation) -> Problem {
    let located = relation.fields.iter().find_map(|field| {
        let entry = tree::lookup(table, &tree::parse_field(field))?;
        Some((field.clone(), entry.span().start))
    });
    let first = relation.fields.first().cloned().unwrap_or_default();
    let (field, offset) = located.unwrap_or_else(|| {
        let offset = nearest_entry(table, &tree::parse_field(&first)).map_or(0, |(_, at)| at);
        (first, offset)
    });
    lines.problem(offset, field, relation.message)
}

/// The deepest entry on `path` that the file has (`path` itself included),
/// with how many segments of `path` it covers and where it starts.
fn nearest_entry(table: &DeTable, path: &[Segment]) -> Option<(usize, usize)> {
    (1..=path.len()).rev().find_map(|depth| {
        let entry = tree::lookup(table, &path[..depth])?;
        Some((depth, entry.span().start))
    })
}

/// Each missing field is reported at its table's header (or at the value
/// it is required in, such as an empty array). When a whole table is absent,
/// its missing fields become one problem about that table, on line 1.
fn missing_problems(table: &DeTable, lines: &Lines, missing: Vec<Missing>) -> Vec<Problem> {
    let mut problems = Vec::new();
    let mut absent_tables: Vec<(KeyPath, Vec<String>)> = Vec::new();
    for Missing { field, message } in missing {
        let path = tree::parse_field(&field);
        let nearest = nearest_entry(table, &path);
        let covered = nearest.map_or(0, |(depth, _)| depth);
        if covered + 1 >= path.len() {
            let offset = nearest.map_or(0, |(_, at)| at);
            problems.push(lines.problem(offset, field, message));
            continue;
        }
        // A table above the field is absent: blame the outermost one.
        let absent = path[..covered + 1].to_vec();
        let below = tree::render(&path[covered + 1..]);
        match absent_tables.iter_mut().find(|(known, _)| *known == absent) {
            Some((_, fields)) => fields.push(below),
            None => absent_tables.push((absent, vec![below])),
        }
    }
    for (absent, fields) in absent_tables {
        let offset = nearest_entry(table, &absent).map_or(0, |(_, at)| at);
        let name = tree::render(&absent);
        let message = format!(
            "required section [{name}] is missing (it must set {})",
            fields.join(", ")
        );
        problems.push(lines.problem(offset, name, message));
    }
    problems
}

/// One problem per syntax error, then the recovered entries those errors
/// touch are dropped from `tree`.
fn syntax_problems(tree: &mut DeTable, lines: &Lines, errors: &[toml::de::Error]) -> Vec<Problem> {
    let mut problems = Vec::new();
    let mut culprits = Vec::new();
    let mut error_lines = BTreeSet::new();
    for error in errors {
        let offset = error.span().map_or(0, |span| span.start);
        let error_line = lines.position(offset).0;
        error_lines.insert(error_line);
        let message = syntax_message(lines, error_line, error.message());
        // An empty span at `offset` finds the entry whose key or value the
        // error is in or just after (an unterminated string or array).
        let Some(path) = tree::locate(tree, &(offset..offset)) else {
            problems.push(lines.problem(offset, lines.field_at(error_line), message));
            continue;
        };
        // Point at where a value that runs over several lines starts, not at
        // the end of the file where the parser noticed.
        let value_start = tree::lookup(tree, &path).map_or(offset, |entry| entry.span().start);
        let same_line = lines.position(value_start).0 == error_line;
        let at = if same_line { offset } else { value_start };
        problems.push(lines.problem(at, tree::render(&path), message));
        culprits.push(path);
    }
    for path in &culprits {
        tree::remove(tree, path);
    }
    drop_entries_on_lines(tree, lines, &error_lines);
    problems
}

/// The parser's message, except for a bare word where a value belongs (such
/// as `level = info`), which TOML reads as a broken number or boolean.
fn syntax_message(lines: &Lines, line: usize, message: &str) -> String {
    let text = lines.line(line);
    let value = text.split_once('=').map(|(_, value)| value.trim());
    let value = value.map(|value| value.split('#').next().unwrap_or_default().trim());
    let bare_word = value.filter(|value| {
        let starts_with_letter = value
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic());
        let wordlike = value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
        starts_with_letter && wordlike && !matches!(*value, "true" | "false" | "inf" | "nan")
    });
    match bare_word {
        Some(word) => format!("`{word}` is not a TOML value: put a string in quotes, \"{word}\""),
        None => message.to_owned(),
    }
}

/// Drops every entry whose key or value touches one of `bad` lines.
fn drop_entries_on_lines(table: &mut DeTable, lines: &Lines, bad: &BTreeSet<usize>) {
    if bad.is_empty() {
        return;
    }
    let touches = |span: Range<usize>| {
        let first = lines.position(span.start).0;
        let last = lines.position(span.end.saturating_sub(1).max(span.start)).0;
        bad.range(first..=last).next().is_some()
    };
    tree::drop_entries(table, &touches);
}

/// Line arithmetic over the original text.
struct Lines<'t> {
    text: &'t str,
    /// Byte offset where each line starts; line `n` (1-based) is `starts[n - 1]`.
    starts: Vec<usize>,
}

impl<'t> Lines<'t> {
    fn new(text: &'t str) -> Self {
        let breaks = text.match_indices('\n').map(|(at, _)| at + 1);
        Self {
            text,
            starts: std::iter::once(0).chain(breaks).collect(),
        }
    }

    /// 1-based line and column (in characters) of a byte offset.
    fn position(&self, offset: usize) -> (usize, usize) {
        let mut offset = offset.min(self.text.len());
        while !self.text.is_char_boundary(offset) {
            offset -= 1;
        }
        let line = self.starts.partition_point(|&start| start <= offset);
        let start = self.starts[line - 1];
        (line, self.text[start..offset].chars().count() + 1)
    }

    /// A problem at byte `offset`.
    fn problem(&self, offset: usize, field: String, message: String) -> Problem {
        let (line, column) = self.position(offset);
        Problem {
            line,
            column,
            field,
            message,
        }
    }

    /// The text of a line, trimmed.
    fn line(&self, line: usize) -> &'t str {
        let start = self.starts[line - 1];
        let end = self
            .starts
            .get(line)
            .map_or(self.text.len(), |next| next - 1);
        self.text[start..end].trim()
    }

    /// Best-effort dotted field of a line that failed to parse: the key before
    /// `=` under the last table header, or the header itself.
    fn field_at(&self, line: usize) -> String {
        if let Some(header) = header_name(self.line(line)) {
            return header;
        }
        let section = (1..line)
            .rev()
            .find_map(|above| header_name(self.line(above)));
        let key = self.line(line).split_once('=').map(|(key, _)| key.trim());
        match (section, key) {
            (Some(section), Some(key)) if !key.is_empty() => format!("{section}.{key}"),
            (None, Some(key)) => key.to_owned(),
            (Some(section), _) => section,
            (None, None) => String::new(),
        }
    }
}

/// `replication` for `[replication]`, `[[replication]]` or `[replication` (a
/// header cut short); `None` for any other line.
fn header_name(line: &str) -> Option<String> {
    let inner = line.strip_prefix('[')?.trim_start_matches('[');
    let inner = inner.split([']', '#']).next().unwrap_or_default();
    Some(inner.trim().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A schema whose required key has no sentinel default.
    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Strict {
        peer: StrictPeer,
    }

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct StrictPeer {
        host: String,
    }

    impl Schema for Strict {
        fn missing(&self) -> Vec<Missing> {
            Vec::new()
        }

        fn relations(&self) -> Vec<Relation> {
            Vec::new()
        }
    }

    #[test]
    fn a_key_serde_finds_missing_is_reported_at_its_table_and_ends_the_rounds() {
        let problems = parse::<Strict>("\n[peer]\nport = 1\n").unwrap_err();
        let located: Vec<_> = problems
            .iter()
            .map(|p| (p.line, p.field.as_str(), p.message.as_str()))
            .collect();
        assert_eq!(
            located,
            [(2, "peer.host", "required key `host` is missing")]
        );
    }

    #[test]
    fn positions_are_one_based_and_count_characters() {
        let lines = Lines::new("ab\né = 1\n\nx");
        assert_eq!(lines.position(0), (1, 1));
        assert_eq!(lines.position(2), (1, 3));
        assert_eq!(lines.position(3), (2, 1));
        assert_eq!(lines.position(6), (2, 3), "é is one character of two bytes");
        assert_eq!(lines.position(10), (3, 1), "an empty line");
        assert_eq!(lines.position(11), (4, 1));
        assert_eq!(lines.position(12), (4, 2), "the end of the text");
        assert_eq!(lines.position(99), (4, 2), "past the end clamps to the end");
    }

    #[test]
    fn field_at_a_broken_line() {
        let lines = Lines::new("top = 1\n[log]\nlevel = \"x\n[shutdown\n# [not]\nk\n");
        assert_eq!(lines.field_at(1), "top");
        assert_eq!(lines.field_at(2), "log");
        assert_eq!(lines.field_at(3), "log.level");
        assert_eq!(lines.field_at(4), "shutdown");
        assert_eq!(lines.field_at(6), "shutdown");
    }

    #[test]
    fn header_names() {
        assert_eq!(header_name("[a.b]").as_deref(), Some("a.b"));
        assert_eq!(header_name("[[ x ]] # c").as_deref(), Some("x"));
        assert_eq!(header_name("a = [1]"), None);
    }

    #[test]
    fn describe_type_errors() {
        let integer = DeValue::Integer(toml::de::DeInteger::default());
        assert_eq!(
            describe(
                "invalid type: integer `5`, expected a string",
                Some(&integer),
                2
            ),
            "expected a string, found an integer"
        );
        assert_eq!(
            describe(
                "invalid type: integer `5`, expected struct LogConfig",
                Some(&integer),
                1
            ),
            "expected a table, found an integer"
        );
        assert_eq!(describe("other", Some(&integer), 1), "other");
    }
}
