//! Reading a located TOML tree against the spec schema: the keys each table
//! allows (unknown ones are rejected with the nearest valid key suggested),
//! typed getters that report "expected …, found …" at the value, and the record
//! of where every key was written (for problems found after `load`).
//!
//! Nothing here stops at the first problem: a getter that finds a wrong value
//! reports it and returns `None`, and the caller goes on with the default.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::errors::{did_you_mean, Location, Pos, Problem};
use super::source::{Entry, Node, Table, Value};

/// The keys of each table of a spec (README.md, "Spec reference").
pub(crate) mod keys {
    pub const ROOT: &[&str] = &[
        "name",
        "description",
        "extends",
        "store",
        "model",
        "generation",
        "prompts",
        "seeds",
        "sweep",
        "configs",
        "metrics",
        "report",
    ];
    pub const MODEL: &[&str] = &["name", "dir"];
    pub const GENERATION: &[&str] = &[
        "width",
        "height",
        "steps",
        "guidance",
        "scheduler",
        "negative_prompt",
        "batch_size",
        "precision",
    ];
    pub const PROMPTS: &[&str] = &[
        "file",
        "column",
        "sample",
        "sampling_seed",
        "replace",
        "cut_long_prompts",
    ];
    pub const SEEDS: &[&str] = &["draw_seed", "list"];
    pub const SWEEP: &[&str] = &["ratios", "rounds"];
    pub const CONFIG: &[&str] = &[
        "name",
        "label",
        "color",
        "merge",
        "sx",
        "sy",
        "random",
        "seed",
        "max_downsample",
    ];
    pub const METRICS: &[&str] = &["fid", "inception", "fid_dims", "paired"];
    pub const REPORT: &[&str] = &["grid_prompts", "formats", "thesis_table"];
}

/// Where each key of a loaded spec was written, so that checks made after
/// `load` (`check_inputs`, the plan, the model lookup) can point at the spec.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Locations {
    /// The spec file that was loaded.
    root: PathBuf,
    /// Key path (`prompts.file`, `configs[1].sx`) → where its value was written.
    map: BTreeMap<String, Location>,
}

impl Locations {
    pub(crate) fn new(root: &Path) -> Self {
        Locations {
            root: root.to_path_buf(),
            map: BTreeMap::new(),
        }
    }

    pub(crate) fn record(&mut self, key: &str, loc: &Location) {
        self.map.insert(key.to_string(), loc.clone());
    }

    /// Where `key` was written; for a key that took its default, where its
    /// nearest enclosing table was written; else the spec file's first line.
    pub fn get(&self, key: &str) -> Location {
        let mut k = key;
        loop {
            if let Some(l) = self.map.get(k) {
                return l.clone();
            }
            match k.rfind(['.', '[']) {
                Some(i) => k = &k[..i],
                None => {
                    return Location::new(&self.root, Some(Pos { line: 1, column: 1 }));
                }
            }
        }
    }

    /// A problem located at `key`.
    pub fn problem(&self, key: &str, message: impl Into<String>) -> Problem {
        Problem::new(self.get(key), key, message)
    }
}

/// What reading a spec collects.
pub(crate) struct Ctx {
    pub problems: Vec<Problem>,
    pub warnings: Vec<Problem>,
    pub locations: Locations,
    /// Where problems about missing top-level keys point (the spec's first line).
    pub root_loc: Location,
}

impl Ctx {
    pub fn new(root: &Path) -> Self {
        Ctx {
            problems: Vec::new(),
            warnings: Vec::new(),
            locations: Locations::new(root),
            root_loc: Location::new(root, Some(Pos { line: 1, column: 1 })),
        }
    }

    pub fn error(&mut self, loc: &Location, key: &str, message: impl Into<String>) {
        self.problems
            .push(Problem::new(loc.clone(), key, message.into()));
    }

    pub fn warn(&mut self, loc: &Location, key: &str, message: impl Into<String>) {
        self.warnings
            .push(Problem::new(loc.clone(), key, message.into()));
    }
}

/// `path.key`, or `key` at the root.
pub(crate) fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

/// A located value read from a spec.
#[derive(Clone, Debug)]
pub(crate) struct Got<T> {
    pub value: T,
    pub loc: Location,
    /// The key path, for messages.
    pub key: String,
}

/// One table of the spec being read (possibly absent: then every getter returns
/// `None` and the caller's default applies).
pub(crate) struct Section<'t> {
    table: Option<&'t Table>,
    pub path: String,
    /// The table's header (or the including key), else the spec's first line.
    pub loc: Location,
}

impl<'t> Section<'t> {
    /// The root table.
    pub fn root(ctx: &mut Ctx, table: &'t Table) -> Self {
        let s = Section {
            table: Some(table),
            path: String::new(),
            loc: ctx.root_loc.clone(),
        };
        s.reject_unknown(ctx, keys::ROOT);
        s
    }

    /// A table value (`node`) at `path`, checked against `known` keys.
    pub fn of_node(ctx: &mut Ctx, node: &'t Node, path: String, known: &[&str]) -> Option<Self> {
        ctx.locations.record(&path, &node.loc);
        match &node.value {
            Value::Table(t) => {
                let s = Section {
                    table: Some(t),
                    path,
                    loc: node.loc.clone(),
                };
                s.reject_unknown(ctx, known);
                Some(s)
            }
            other => {
                ctx.error(
                    &node.loc,
                    &path,
                    format!("expected a table, found {}", other.kind()),
                );
                None
            }
        }
    }

    /// The sub-table `key`; an absent section when it is not written (or is not
    /// a table, which is reported).
    pub fn table(&self, ctx: &mut Ctx, key: &str, known: &[&str]) -> Section<'t> {
        let path = join(&self.path, key);
        if let Some(e) = self.entry(key) {
            if let Some(s) = Section::of_node(ctx, &e.node, path.clone(), known) {
                return s;
            }
        }
        Section {
            table: None,
            path,
            loc: self.loc.clone(),
        }
    }

    pub fn is_present(&self) -> bool {
        self.table.is_some()
    }

    fn entry(&self, key: &str) -> Option<&'t Entry> {
        self.table.and_then(|t| t.get(key))
    }

    pub fn has(&self, key: &str) -> bool {
        self.entry(key).is_some()
    }

    /// The raw value of `key`, recording where it was written.
    pub fn node(&self, ctx: &mut Ctx, key: &str) -> Option<&'t Node> {
        let e = self.entry(key)?;
        ctx.locations.record(&join(&self.path, key), &e.node.loc);
        Some(&e.node)
    }

    fn reject_unknown(&self, ctx: &mut Ctx, known: &[&str]) {
        let Some(t) = self.table else { return };
        for e in &t.entries {
            if known.contains(&e.key.as_str()) {
                continue;
            }
            let hint = did_you_mean(&e.key, known.iter().copied());
            let hint = if hint.is_empty() {
                format!(" (valid keys: {})", known.join(", "))
            } else {
                hint
            };
            ctx.error(
                &e.key_loc,
                &join(&self.path, &e.key),
                format!("unknown key `{}`{hint}", e.key),
            );
        }
    }

    fn got<T>(&self, key: &str, node: &Node, value: T) -> Got<T> {
        Got {
            value,
            loc: node.loc.clone(),
            key: join(&self.path, key),
        }
    }

    fn mismatch(&self, ctx: &mut Ctx, key: &str, node: &Node, expected: &str) {
        ctx.error(
            &node.loc,
            &join(&self.path, key),
            format!("expected {expected}, found {}", node.value.kind()),
        );
    }

    pub fn string(&self, ctx: &mut Ctx, key: &str) -> Option<Got<String>> {
        let node = self.node(ctx, key)?;
        match &node.value {
            Value::String(s) => Some(self.got(key, node, s.clone())),
            _ => {
                self.mismatch(ctx, key, node, "a string");
                None
            }
        }
    }

    pub fn bool(&self, ctx: &mut Ctx, key: &str) -> Option<Got<bool>> {
        let node = self.node(ctx, key)?;
        match node.value {
            Value::Boolean(b) => Some(self.got(key, node, b)),
            _ => {
                self.mismatch(ctx, key, node, "a boolean (true or false)");
                None
            }
        }
    }

    pub fn integer(&self, ctx: &mut Ctx, key: &str) -> Option<Got<i128>> {
        let node = self.node(ctx, key)?;
        integer_of(ctx, &join(&self.path, key), node)
    }

    /// A number: a float, or an integer taken as one.
    pub fn number(&self, ctx: &mut Ctx, key: &str) -> Option<Got<f64>> {
        let node = self.node(ctx, key)?;
        number_of(ctx, &join(&self.path, key), node)
    }

    pub fn array(&self, ctx: &mut Ctx, key: &str) -> Option<Got<&'t [Node]>> {
        let node = self.node(ctx, key)?;
        match &node.value {
            Value::Array(items) => Some(self.got(key, node, items.as_slice())),
            _ => {
                self.mismatch(ctx, key, node, "an array");
                None
            }
        }
    }
}

/// `node` (at key path `key`) as an integer.
pub(crate) fn integer_of(ctx: &mut Ctx, key: &str, node: &Node) -> Option<Got<i128>> {
    ctx.locations.record(key, &node.loc);
    match node.value {
        Value::Integer(i) => Some(Got {
            value: i,
            loc: node.loc.clone(),
            key: key.to_string(),
        }),
        _ => {
            ctx.error(
                &node.loc,
                key,
                format!("expected an integer, found {}", node.value.kind()),
            );
            None
        }
    }
}

/// `node` (at key path `key`) as a number (a float, or an integer taken as one).
pub(crate) fn number_of(ctx: &mut Ctx, key: &str, node: &Node) -> Option<Got<f64>> {
    ctx.locations.record(key, &node.loc);
    let value = match node.value {
        Value::Float(f) => f,
        Value::Integer(i) => i as f64,
        _ => {
            ctx.error(
                &node.loc,
                key,
                format!("expected a number, found {}", node.value.kind()),
            );
            return None;
        }
    };
    Some(Got {
        value,
        loc: node.loc.clone(),
        key: key.to_string(),
    })
}

/// `node` (at key path `key`) as a string.
pub(crate) fn string_of(ctx: &mut Ctx, key: &str, node: &Node) -> Option<Got<String>> {
    ctx.locations.record(key, &node.loc);
    match &node.value {
        Value::String(s) => Some(Got {
            value: s.clone(),
            loc: node.loc.clone(),
            key: key.to_string(),
        }),
        other => {
            ctx.error(
                &node.loc,
                key,
                format!("expected a string, found {}", other.kind()),
            );
            None
        }
    }
}
