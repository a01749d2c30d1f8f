//! What `Config::load` and `Config::parse` return when they fail.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

/// Why a config file could not be turned into a [`super::Config`].
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read (missing, unreadable, not UTF-8, too large).
    #[error("cannot read config file {}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    /// The file was read but is not a valid config. `problems` holds every
    /// problem found, sorted by position; it is never empty.
    #[error("{}", Report { path, problems })]
    Invalid {
        path: PathBuf,
        problems: Vec<Problem>,
    },
}

/// One problem in a config file, located for the operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// 1-based line of the offending key, value or syntax error.
    pub line: usize,
    /// 1-based column, counted in characters.
    pub column: usize,
    /// Dotted name such as `replication.port`; a section name such as
    /// `replication` when the problem is the section itself; empty when the
    /// problem is not inside any section (some syntax errors).
    pub field: String,
    /// What is wrong and what is allowed.
    pub message: String,
}

impl Problem {
    /// `FILE:LINE:COL: FIELD: MESSAGE` (without `FIELD: ` when the field is empty).
    pub fn render(&self, path: &Path) -> String {
        let file = path.display();
        let (line, column) = (self.line, self.column);
        if self.field.is_empty() {
            format!("{file}:{line}:{column}: {}", self.message)
        } else {
            format!("{file}:{line}:{column}: {}: {}", self.field, self.message)
        }
    }
}

/// The compiler-style report behind `ConfigError::Invalid`'s Display: one line
/// per problem, then a count.
struct Report<'a> {
    path: &'a Path,
    problems: &'a [Problem],
}

impl fmt::Display for Report<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for problem in self.problems {
            writeln!(f, "{}", problem.render(self.path))?;
        }
        let count = self.problems.len();
        let noun = if count == 1 { "problem" } else { "problems" };
        write!(f, "{count} {noun} in {}", self.path.display())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problem(line: usize, field: &str, message: &str) -> Problem {
        Problem {
            line,
            column: 3,
            field: field.to_owned(),
            message: message.to_owned(),
        }
    }

    #[test]
    fn invalid_renders_one_line_per_problem_then_a_count() {
        let error = ConfigError::Invalid {
            path: PathBuf::from("/etc/drgw/drgw.toml"),
            problems: vec![
                problem(
                    4,
                    "replication.port",
                    "port 0 is out of range: allowed 1..=65535",
                ),
                problem(9, "", "invalid basic string"),
            ],
        };
        assert_eq!(
            error.to_string(),
            "/etc/drgw/drgw.toml:4:3: replication.port: port 0 is out of range: allowed 1..=65535\n\
             /etc/drgw/drgw.toml:9:3: invalid basic string\n\
             2 problems in /etc/drgw/drgw.toml"
        );
    }

    #[test]
    fn one_problem_is_singular() {
        let error = ConfigError::Invalid {
            path: PathBuf::from("a.toml"),
            problems: vec![problem(1, "log.level", "bad")],
        };
        assert_eq!(
            error.to_string(),
            "a.toml:1:3: log.level: bad\n1 problem in a.toml"
        );
    }

    #[test]
    fn io_names_the_path() {
        let error = ConfigError::Io {
            path: PathBuf::from("/nowhere.toml"),
            source: io::Error::from(io::ErrorKind::NotFound),
        };
        assert!(error
            .to_string()
            .starts_with("cannot read config file /nowhere.toml: "));
    }
}
