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

/// Edit distance between two short strings (in characters): insertions,
/// deletions, substitutions and transpositions of neighbours each count 1
/// (optimal string alignment), so `wdith` is 1 from `width`.
pub(crate) fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    // d[i][j]: distance between a[..i] and b[..j].
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut v = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                v = v.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = v;
        }
    }
    d[a.len()][b.len()]
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
        .map(|c| (edit_distance(&lower, &c.to_lowercase()), c))
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
    fn edit_distances() {
        assert_eq!(edit_distance("ratoi", "ratios"), 2);
        assert_eq!(edit_distance("wdith", "width"), 1);
        assert_eq!(edit_distance("pnmd", "pndm"), 1);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("same", "same"), 0);
    }

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
