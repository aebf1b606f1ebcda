//! Spec files as located TOML trees: parsing (every syntax error, located),
//! `extends` (resolved recursively, cycles rejected) and the deep merge of a file
//! over its base. Every key and value remembers the file and position it came
//! from, so problems found later point into the right file.

use std::path::{Component, Path, PathBuf};

use toml::de::{DeTable, DeValue};

use super::errors::{Location, Pos, Problem};

/// A TOML value with where it was written.
#[derive(Clone, Debug)]
pub(crate) struct Node {
    pub value: Value,
    pub loc: Location,
}

#[derive(Clone, Debug)]
pub(crate) enum Value {
    String(String),
    /// Wide enough for every TOML integer and for `u64` seeds.
    Integer(i128),
    Float(f64),
    Boolean(bool),
    Datetime,
    Array(Vec<Node>),
    Table(Table),
}

impl Value {
    /// "a string", "an integer", … for "expected …, found …" messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Value::String(_) => "a string",
            Value::Integer(_) => "an integer",
            Value::Float(_) => "a float",
            Value::Boolean(_) => "a boolean",
            Value::Datetime => "a date-time",
            Value::Array(_) => "an array",
            Value::Table(_) => "a table",
        }
    }
}

/// One `key = value` of a table.
#[derive(Clone, Debug)]
pub(crate) struct Entry {
    pub key: String,
    /// Where the key was written (for unknown keys).
    pub key_loc: Location,
    pub node: Node,
}

/// A TOML table, in source order.
#[derive(Clone, Debug, Default)]
pub(crate) struct Table {
    pub entries: Vec<Entry>,
}

impl Table {
    pub fn get(&self, key: &str) -> Option<&Entry> {
        self.entries.iter().find(|e| e.key == key)
    }

    fn remove(&mut self, key: &str) -> Option<Entry> {
        let i = self.entries.iter().position(|e| e.key == key)?;
        Some(self.entries.remove(i))
    }
}

/// Line starts of a text, to turn byte offsets into 1-based line/column.
struct Lines<'a> {
    text: &'a str,
    starts: Vec<usize>,
}

impl<'a> Lines<'a> {
    fn new(text: &'a str) -> Self {
        let mut starts = vec![0];
        starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        Lines { text, starts }
    }

    fn pos(&self, offset: usize) -> Pos {
        let offset = offset.min(self.text.len());
        let line = self.starts.partition_point(|&s| s <= offset) - 1;
        let start = self.starts[line];
        // Spans lie on character boundaries; be safe anyway.
        let column = self.text[start..]
            .char_indices()
            .take_while(|&(i, _)| start + i < offset)
            .count()
            + 1;
        Pos {
            line: line + 1,
            column,
        }
    }
}

/// Removes `.` components and folds `dir/..` (`specs/./a/../base.toml` →
/// `specs/base.toml`) so messages name files the way a user would. Lexical, as
/// cargo resolves paths in its manifests; leading `..` stay.
fn tidy(path: &Path) -> PathBuf {
    let mut out: Vec<Component> = Vec::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir if matches!(out.last(), Some(Component::Normal(_))) => {
                out.pop();
            }
            Component::ParentDir if matches!(out.last(), Some(Component::RootDir)) => {}
            other => out.push(other),
        }
    }
    let tidied: PathBuf = out.iter().collect();
    if tidied.as_os_str().is_empty() {
        PathBuf::from(".")
    } else {
        tidied
    }
}

/// A file's folder, `""` for a bare file name (so joins stay relative).
pub(crate) fn folder_of(file: &Path) -> PathBuf {
    file.parent().map(Path::to_path_buf).unwrap_or_default()
}

/// Resolves `value` (a path written in `file`) against `file`'s folder.
pub(crate) fn resolve_against(file: &Path, value: &str) -> PathBuf {
    tidy(&folder_of(file).join(value))
}

/// Parses one file into a located tree; `None` when it has syntax errors (all of
/// which are pushed).
fn parse_file(file: &Path, text: &str, problems: &mut Vec<Problem>) -> Option<Table> {
    let lines = Lines::new(text);
    let (doc, errors) = DeTable::parse_recoverable(text);
    if !errors.is_empty() {
        for e in errors {
            let pos = e.span().map(|s| lines.pos(s.start));
            problems.push(Problem::new(
                Location::new(file, pos),
                "",
                format!("invalid TOML: {}", e.message()),
            ));
        }
        return None;
    }
    Some(convert_table(file, &lines, doc.get_ref()))
}

fn convert_table(file: &Path, lines: &Lines, table: &DeTable) -> Table {
    let mut entries: Vec<Entry> = table
        .iter()
        .map(|(k, v)| Entry {
            key: k.get_ref().to_string(),
            key_loc: Location::new(file, Some(lines.pos(k.span().start))),
            node: convert_value(file, lines, v.get_ref(), v.span()),
        })
        .collect();
    // Source order (the parser's map is sorted by key).
    entries.sort_by_key(|e| e.key_loc.pos);
    Table { entries }
}

fn convert_value(
    file: &Path,
    lines: &Lines,
    value: &DeValue,
    span: std::ops::Range<usize>,
) -> Node {
    let loc = Location::new(file, Some(lines.pos(span.start)));
    let value = match value {
        DeValue::String(s) => Value::String(s.to_string()),
        DeValue::Integer(i) => {
            // The parser has checked the digits; only the width can fail.
            match i128::from_str_radix(i.as_str(), i.radix()) {
                Ok(v) => Value::Integer(v),
                Err(_) => Value::Float(f64::INFINITY),
            }
        }
        DeValue::Float(f) => Value::Float(f.as_str().parse().unwrap_or(f64::NAN)),
        DeValue::Boolean(b) => Value::Boolean(*b),
        DeValue::Datetime(_) => Value::Datetime,
        DeValue::Array(a) => Value::Array(
            a.iter()
                .map(|e| convert_value(file, lines, e.get_ref(), e.span()))
                .collect(),
        ),
        DeValue::Table(t) => Value::Table(convert_table(file, lines, t)),
    };
    Node { value, loc }
}

/// Reads `file` and every file it `extends`, and merges them into one tree (the
/// including file over its base). Problems of every file reached are pushed;
/// `None` when no tree could be made at all.
///
/// The `extends` key is consumed here; the merged tree never contains it. `name`
/// is not inherited from a base: a spec's name is its own (its file stem when
/// it does not set one).
pub(crate) fn load_tree(file: &Path, problems: &mut Vec<Problem>) -> Option<Table> {
    let bytes = match std::fs::read(file) {
        Ok(b) => b,
        Err(e) => {
            problems.push(Problem::new(
                Location::new(file, None),
                "",
                read_error_message(&e),
            ));
            return None;
        }
    };
    let text = match String::from_utf8(bytes) {
        Ok(t) => t,
        Err(e) => {
            // Located at the first byte that is not UTF-8 (line and column count
            // characters of the valid text before it).
            let valid = &e.as_bytes()[..e.utf8_error().valid_up_to()];
            let before = String::from_utf8_lossy(valid);
            let line = before.matches('\n').count() + 1;
            let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
            problems.push(Problem::new(
                Location::new(file, Some(Pos { line, column })),
                "",
                "not valid UTF-8 here; a spec is a UTF-8 TOML file (save it as UTF-8)",
            ));
            return None;
        }
    };
    let mut chain = vec![canonical(file)];
    let table = parse_file(file, &text, problems)?;
    Some(resolve_extends(file, table, &mut chain, problems))
}

fn read_error_message(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::NotFound => "no such file".to_string(),
        _ => format!("cannot read: {e}"),
    }
}

fn canonical(file: &Path) -> PathBuf {
    std::fs::canonicalize(file).unwrap_or_else(|_| tidy(file))
}

/// Applies the `extends` of `table` (written in `file`), recursively.
fn resolve_extends(
    file: &Path,
    mut table: Table,
    chain: &mut Vec<PathBuf>,
    problems: &mut Vec<Problem>,
) -> Table {
    let Some(ext) = table.remove("extends") else {
        return table;
    };
    let base_name = match &ext.node.value {
        Value::String(s) if !s.trim().is_empty() => s.clone(),
        Value::String(_) => {
            problems.push(Problem::new(
                ext.node.loc.clone(),
                "extends",
                "must name a base spec file, relative to this file",
            ));
            return table;
        }
        other => {
            problems.push(Problem::new(
                ext.node.loc.clone(),
                "extends",
                format!(
                    "expected a string (a base spec file), found {}",
                    other.kind()
                ),
            ));
            return table;
        }
    };
    let base_file = resolve_against(file, &base_name);
    let key = canonical(&base_file);
    if let Some(i) = chain.iter().position(|c| *c == key) {
        let mut cycle: Vec<String> = chain[i..]
            .iter()
            .map(|p| {
                p.file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default()
            })
            .collect();
        cycle.push(
            base_file
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
        );
        problems.push(Problem::new(
            ext.node.loc.clone(),
            "extends",
            format!("`extends` cycle: {}", cycle.join(" -> ")),
        ));
        return table;
    }
    let text = match std::fs::read_to_string(&base_file) {
        Ok(t) => t,
        Err(e) => {
            let what = match e.kind() {
                std::io::ErrorKind::NotFound => "does not exist".to_string(),
                _ => format!("cannot be read: {e}"),
            };
            problems.push(Problem::new(
                ext.node.loc.clone(),
                "extends",
                format!("base spec `{}` {what}", base_file.display()),
            ));
            return table;
        }
    };
    let Some(base) = parse_file(&base_file, &text, problems) else {
        return table;
    };
    chain.push(key);
    let mut base = resolve_extends(&base_file, base, chain, problems);
    chain.pop();
    base.remove("name");
    merge(&mut base, table);
    base
}

/// Deep-merges `over` into `base`: tables merge key by key, anything else
/// (arrays included, so `[[configs]]` of a file replace its base's) is replaced.
fn merge(base: &mut Table, over: Table) {
    for entry in over.entries {
        match base.entries.iter_mut().find(|e| e.key == entry.key) {
            Some(existing) => match (&mut existing.node.value, entry.node.value) {
                (Value::Table(b), Value::Table(o)) => {
                    merge(b, o);
                    // The including file's header is where a reader looks.
                    existing.node.loc = entry.node.loc;
                    existing.key_loc = entry.key_loc;
                }
                (_, value) => {
                    *existing = Entry {
                        key: entry.key,
                        key_loc: entry.key_loc,
                        node: Node {
                            value,
                            loc: entry.node.loc,
                        },
                    }
                }
            },
            None => base.entries.push(entry),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_count_characters_from_one() {
        let text = "a = 1\nbé = \"x\"\n";
        let lines = Lines::new(text);
        assert_eq!(lines.pos(0), Pos { line: 1, column: 1 });
        assert_eq!(lines.pos(4), Pos { line: 1, column: 5 });
        // "bé = " is 6 bytes, 5 characters: the string starts at column 6.
        let at = text.find('"').unwrap();
        assert_eq!(lines.pos(at), Pos { line: 2, column: 6 });
    }

    #[test]
    fn tidy_removes_current_dir() {
        assert_eq!(
            tidy(Path::new("specs/./base.toml")),
            Path::new("specs/base.toml")
        );
        assert_eq!(
            resolve_against(Path::new("a.toml"), "b.toml"),
            Path::new("b.toml")
        );
        assert_eq!(
            resolve_against(Path::new("specs/a.toml"), "../results"),
            Path::new("results")
        );
        assert_eq!(
            resolve_against(Path::new("a.toml"), "../results"),
            Path::new("../results")
        );
        assert_eq!(
            resolve_against(Path::new("/x/specs/a.toml"), "../../../y"),
            Path::new("/y")
        );
    }
}
