//! Located problems: `file:line:column: key.path: message`, one per line.

use std::fmt;
use std::path::{Path, PathBuf};

/// A 1-based position in a spec file (the column counts characters, not bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Pos {
    pub line: usize,
    pub column: usize,
}

/// Where a value of a spec was written: a file and, when known, a position in it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Location {
    /// The file as the user named it (a base file: joined onto the including
    /// file's folder).
    pub file: PathBuf,
    /// `None` for problems with the file as a whole (it cannot be read) and for
    /// values that came from a default.
    pub pos: Option<Pos>,
}

impl Location {
    /// The start of `file`, or the file as a whole when `pos` is `None`.
    pub fn new(file: impl Into<PathBuf>, pos: Option<Pos>) -> Self {
        Location {
            file: file.into(),
            pos,
        }
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(p) = self.pos {
            write!(f, ":{}:{}", p.line, p.column)?;
        }
        Ok(())
    }
}

/// One problem with a spec, located where a text editor can jump to it.
///
/// Displays as `file:line:column: key.path: message`, e.g.
/// `specs/4_all.toml:12:6: configs[2].sx: must be at least 1, got 0`; the key path
/// is left out for problems of the file as a whole (TOML syntax errors) and the
/// position for problems without one (a file that cannot be read).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub location: Location,
    /// Dotted key path with 0-based array indices (`configs[2].sx`,
    /// `sweep.ratios[3]`); empty for problems of the file as a whole.
    pub key: String,
    pub message: String,
}

impl Problem {
    pub fn new(location: Location, key: impl Into<String>, message: impl Into<String>) -> Self {
        Problem {
            location,
            key: key.into(),
            message: message.into(),
        }
    }

    /// The file the problem is in.
    pub fn file(&self) -> &Path {
        &self.location.file
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: ", self.location)?;
        if !self.key.is_empty() {
            write!(f, "{}: ", self.key)?;
        }
        f.write_str(&self.message)
    }
}

/// Every problem `spec::load` found, in file order (base files where they are
/// reached). Displays one problem per line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpecErrors {
    pub problems: Vec<Problem>,
}

impl SpecErrors {
    pub fn len(&self) -> usize {
        self.problems.len()
    }

    pub fn is_empty(&self) -> bool {
        self.problems.is_empty()
    }

    pub fn iter(&self) -> std::slice::Iter<'_, Problem> {
        self.problems.iter()
    }
}

impl fmt::Display for SpecErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

impl std::error::Error for SpecErrors {}

impl<'a> IntoIterator for &'a SpecErrors {
    type Item = &'a Problem;
    type IntoIter = std::slice::Iter<'a, Problem>;

    fn into_iter(self) -> Self::IntoIter {
        self.problems.iter()
    }
}

/// The candidate nearest to `word`, if it is near enough to be a plausible typo
/// (within a third of the word's length, rounded up, at least 1; a case-only
/// difference always counts).
pub(crate) fn nearest<'a>(
    word: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    let limit = word.chars().count().div_ceil(3).max(1);
    let lower = word.to_lowercase();
    candidates
        .into_iter()
        .map(|c| (strsim::osa_distance(&lower, &c.to_lowercase()), c))
        .filter(|&(d, _)| d <= limit)
        .min_by_key(|&(d, _)| d)
        .map(|(_, c)| c)
}

/// `"; did you mean `x`?"` when a near candidate exists, else `""`.
pub(crate) fn did_you_mean<'a>(
    word: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> String {
    match nearest(word, candidates) {
        Some(c) => format!("; did you mean `{c}`?"),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggestions() {
        let keys = ["ratios", "name", "steps", "sx", "sy"];
        assert_eq!(nearest("ratoi", keys), Some("ratios"));
        assert_eq!(nearest("ratio", keys), Some("ratios"));
        assert_eq!(nearest("stpes", keys), Some("steps"));
        assert_eq!(nearest("sz", keys), Some("sx"));
        assert_eq!(nearest("completely_else", keys), None);
        assert_eq!(nearest("foo", keys), None);
        assert_eq!(nearest("Prompt", ["prompt", "seed"]), Some("prompt"));
    }

    #[test]
    fn display() {
        let p = Problem::new(
            Location::new("specs/a.toml", Some(Pos { line: 3, column: 6 })),
            "configs[0].sx",
            "must be at least 1, got 0",
        );
        assert_eq!(
            p.to_string(),
            "specs/a.toml:3:6: configs[0].sx: must be at least 1, got 0"
        );
        let q = Problem::new(Location::new("x.toml", None), "", "cannot read");
        assert_eq!(q.to_string(), "x.toml: cannot read");
        let all = SpecErrors {
            problems: vec![p, q],
        };
        assert_eq!(all.to_string().lines().count(), 2);
    }
}
