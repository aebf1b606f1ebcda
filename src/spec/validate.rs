//! From a merged, located TOML tree to a [`Spec`]: defaults, value checks and the
//! semantic checks that need no file but the spec (ratios against each
//! configuration's maximum, duplicate names, …). Every problem is collected.

use std::path::Path;
use std::str::FromStr;

use crate::diffusion::pipeline::{MAX_GUIDANCE, MAX_SIDE, MAX_STEPS};
use crate::diffusion::scheduler::SchedulerKind;
use crate::onnx::Precision;
use crate::tome::{Targets, TomeConfig};

use super::errors::did_you_mean;
use super::schema::{integer_of, keys, number_of, string_of, Ctx, Got, Section};
use super::source::{folder_of, resolve_against, Node, Table};
use super::types::*;

/// numpy's `np.random.seed` takes seeds below 2^32.
pub const MAX_NUMPY_SEED: i128 = u32::MAX as i128;

/// The thesis's sweep, the default of `sweep.ratios`.
pub const THESIS_RATIOS: [f64; 7] = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6];

/// Line colours of configurations without `color`, in order: the thesis's black,
/// red and blue first, then matplotlib's tab10.
pub const PALETTE: [&str; 10] = [
    "#000000", "#ff0000", "#0000ff", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2",
    "#17becf", "#bcbd22",
];

/// The components a configuration can merge, by their spec names.
pub const COMPONENTS: [&str; 3] = ["self_attn", "cross_attn", "mlp"];

/// pytorch-fid's Inception feature sizes (`--dims`).
pub const FID_DIMS: [usize; 4] = [64, 192, 768, 2048];

/// Builds the spec of `path` from its merged tree; problems and warnings go to
/// `ctx`. Returns `None` only when nothing usable could be built (the caller
/// returns `ctx.problems` then, which is never empty in that case).
pub(crate) fn build(ctx: &mut Ctx, path: &Path, tree: &Table) -> Option<Spec> {
    let root = Section::root(ctx, tree);

    let name = match root.string(ctx, "name") {
        Some(g) => {
            check_name(ctx, &g);
            g.value
        }
        None => path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default(),
    };
    let description = root
        .string(ctx, "description")
        .map(|g| g.value)
        .unwrap_or_default();
    let store = match root.string(ctx, "store") {
        Some(g) if g.value.trim().is_empty() => {
            ctx.error(&g.loc, &g.key, "must not be empty");
            folder_of(path).join("results")
        }
        Some(g) => resolve_against(&g.loc.file, &g.value),
        None => folder_of(path).join("results"),
    };

    let model = model(ctx, &root);
    let generation = generation(ctx, &root);
    let prompts = prompts(ctx, &root);
    let seeds = seeds(ctx, &root);
    let (ratios, rounds) = sweep(ctx, &root);
    let configs = configs(ctx, &root);
    let metrics = metrics(ctx, &root);
    let report = report(ctx, &root, prompts.as_ref().and_then(|p| p.sample));

    let mut skipped = Vec::new();
    for (i, c) in configs.iter().enumerate() {
        let max = c.tome.max_ratio();
        let over: Vec<f64> = ratios.iter().copied().filter(|&r| r > max).collect();
        if over.is_empty() {
            continue;
        }
        let list = over
            .iter()
            .map(|r| r.to_string())
            .collect::<Vec<_>>()
            .join(", ");
        let key = format!("configs[{i}]");
        let loc = ctx.locations.get(&key);
        let (verb, these) = if over.len() == 1 {
            ("is", "this cell is")
        } else {
            ("are", "these cells are")
        };
        ctx.warn(
            &loc,
            &key,
            format!(
                "r = {list} {verb} above the maximum {max} of `{}` (1 - 1/(sx*sy), sx = {}, sy = {}); \
                 {these} skipped and shown as \"-\"",
                c.name,
                c.tome.sx,
                c.tome.sy,
                max = round6(max),
            ),
        );
        skipped.extend(over.into_iter().map(|ratio| SkippedCell {
            config: c.name.clone(),
            ratio,
            max_ratio: max,
        }));
    }

    let (Some(model), Some(generation), Some(prompts), Some(seeds)) =
        (model, generation, prompts, seeds)
    else {
        return None;
    };
    Some(Spec {
        path: path.to_path_buf(),
        name,
        description,
        model,
        generation,
        prompts,
        seeds,
        ratios,
        rounds,
        configs,
        store,
        metrics,
        report,
        skipped,
        warnings: Vec::new(),
        locations: ctx.locations.clone(),
    })
}

/// `x` to at most 6 decimals, for messages (`0.888889`, `0.5`).
fn round6(x: f64) -> f64 {
    (x * 1e6).round() / 1e6
}

/// Names are used in file names: letters, digits, `-`, `_`, `.`.
fn is_name(s: &str) -> bool {
    !s.is_empty()
        && !s.starts_with('.')
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

fn check_name(ctx: &mut Ctx, g: &Got<String>) -> bool {
    if is_name(&g.value) {
        return true;
    }
    ctx.error(
        &g.loc,
        &g.key,
        format!(
            "must be letters, digits, `-`, `_` or `.` (it names files), got {:?}",
            g.value
        ),
    );
    false
}

/// An integer in `[min, max]`, else a located problem.
fn ranged(ctx: &mut Ctx, g: Got<i128>, min: i128, max: i128) -> Option<i128> {
    if g.value < min {
        ctx.error(
            &g.loc,
            &g.key,
            format!("must be at least {min}, got {}", g.value),
        );
        None
    } else if g.value > max {
        ctx.error(
            &g.loc,
            &g.key,
            format!("must be at most {max}, got {}", g.value),
        );
        None
    } else {
        Some(g.value)
    }
}

fn usize_at_least(ctx: &mut Ctx, s: &Section, key: &str, min: i128, default: usize) -> usize {
    s.integer(ctx, key)
        .and_then(|g| ranged(ctx, g, min, u32::MAX as i128))
        .map_or(default, |v| v as usize)
}

fn missing(ctx: &mut Ctx, s: &Section, key: &str, what: &str) {
    let loc = s.loc.clone();
    ctx.error(
        &loc,
        &super::schema::join(&s.path, key),
        format!("missing; {what}"),
    );
}

fn model(ctx: &mut Ctx, root: &Section) -> Option<ModelRef> {
    let had = root.has("model");
    let m = root.table(ctx, "model", keys::MODEL);
    if !m.is_present() {
        if !had {
            missing(
                ctx,
                root,
                "model",
                "add a [model] table with `name` (a models.lock name) or `dir` (a model directory)",
            );
        }
        return None;
    }
    let name = m.string(ctx, "name");
    let dir = m.string(ctx, "dir");
    for g in [&name, &dir].into_iter().flatten() {
        if g.value.trim().is_empty() {
            ctx.error(&g.loc, &g.key, "must not be empty");
            return None;
        }
    }
    match (name, dir) {
        (Some(_), Some(d)) => {
            ctx.error(&d.loc, &d.key, "set either `name` or `dir`, not both");
            None
        }
        (Some(n), None) => Some(ModelRef::LockName(n.value)),
        (None, Some(d)) => Some(ModelRef::Dir(resolve_against(&d.loc.file, &d.value))),
        (None, None) => {
            if !m.has("name") && !m.has("dir") {
                let loc = m.loc.clone();
                ctx.error(
                    &loc,
                    "model",
                    "set `name` (a models.lock name) or `dir` (a model directory)",
                );
            }
            None
        }
    }
}

fn generation(ctx: &mut Ctx, root: &Section) -> Option<Generation> {
    let g = root.table(ctx, "generation", keys::GENERATION);
    let mut ok = true;
    let mut size = |ctx: &mut Ctx, key: &str| -> usize {
        let Some(v) = g.integer(ctx, key) else {
            return 512;
        };
        if v.value <= 0 || v.value % 8 != 0 {
            ctx.error(
                &v.loc,
                &v.key,
                format!("must be a positive multiple of 8, got {}", v.value),
            );
            ok = false;
            return 512;
        }
        if v.value > MAX_SIDE as i128 {
            ctx.error(
                &v.loc,
                &v.key,
                format!(
                    "must be at most {MAX_SIDE} (the VAE decoder's activations at \
                     {MAX_SIDE}x{MAX_SIDE} already take 8 GiB each), got {}",
                    v.value
                ),
            );
            ok = false;
            return 512;
        }
        v.value as usize
    };
    let width = size(ctx, "width");
    let height = size(ctx, "height");
    let steps = g
        .integer(ctx, "steps")
        .and_then(|v| ranged(ctx, v, 1, MAX_STEPS as i128))
        .map_or(50, |v| v as usize);
    let guidance = match g.number(ctx, "guidance") {
        Some(v) if !v.value.is_finite() || v.value.abs() > f64::from(MAX_GUIDANCE) => {
            ctx.error(
                &v.loc,
                &v.key,
                format!(
                    "must be a number from -{MAX_GUIDANCE} to {MAX_GUIDANCE} (Stable Diffusion \
                     is used at 1 to 20), got {:?}",
                    v.value
                ),
            );
            7.5
        }
        Some(v) => v.value as f32,
        None => 7.5,
    };
    let from_model = FromModel {
        width: !g.has("width"),
        height: !g.has("height"),
        scheduler: !g.has("scheduler"),
        guidance: !g.has("guidance"),
    };
    let scheduler = named(
        ctx,
        &g,
        "scheduler",
        &SchedulerKind::NAMES,
        SchedulerKind::Pndm,
    );
    let negative_prompt = g
        .string(ctx, "negative_prompt")
        .map(|v| v.value)
        .unwrap_or_default();
    let batch_size = usize_at_least(ctx, &g, "batch_size", 1, 1);
    let precision = named(ctx, &g, "precision", &Precision::NAMES, Precision::Fp32);
    ok.then_some(Generation {
        width,
        height,
        steps,
        guidance,
        scheduler,
        negative_prompt,
        batch_size,
        precision,
        from_model,
    })
}

/// The value of `key`, which must be one of `names` (each parsed by `T::from_str`):
/// `default` when absent; an unknown name is reported with the nearest one.
fn named<T: FromStr>(ctx: &mut Ctx, g: &Section, key: &str, names: &[&str], default: T) -> T {
    let Some(v) = g.string(ctx, key) else {
        return default;
    };
    match T::from_str(&v.value) {
        Ok(t) => t,
        Err(_) => {
            let hint = did_you_mean(&v.value, names.iter().copied());
            ctx.error(
                &v.loc,
                &v.key,
                format!(
                    "unknown {key} `{}`{hint} (valid: {})",
                    v.value,
                    names.join(", ")
                ),
            );
            default
        }
    }
}

fn prompts(ctx: &mut Ctx, root: &Section) -> Option<PromptSource> {
    let had = root.has("prompts");
    let p = root.table(ctx, "prompts", keys::PROMPTS);
    if !p.is_present() {
        if !had {
            missing(
                ctx,
                root,
                "prompts",
                "add a [prompts] table with `file` (a CSV file of prompts)",
            );
        }
        return None;
    }
    let file = match p.string(ctx, "file") {
        Some(f) if !f.value.to_ascii_lowercase().ends_with(".csv") => {
            ctx.error(
                &f.loc,
                &f.key,
                format!("must be a CSV file (`.csv`), got `{}`", f.value),
            );
            None
        }
        Some(f) => Some(resolve_against(&f.loc.file, &f.value)),
        None => {
            if !p.has("file") {
                missing(ctx, &p, "file", "name the CSV file of prompts");
            }
            None
        }
    };
    let column = match p.string(ctx, "column") {
        Some(c) if c.value.is_empty() => {
            ctx.error(&c.loc, &c.key, "must not be empty");
            "prompt".to_string()
        }
        Some(c) => c.value,
        None => "prompt".to_string(),
    };
    let sample = p
        .integer(ctx, "sample")
        .and_then(|g| ranged(ctx, g, 1, u32::MAX as i128))
        .map(|v| v as usize);
    let sampling_seed = p
        .integer(ctx, "sampling_seed")
        .and_then(|g| ranged(ctx, g, 0, MAX_NUMPY_SEED))
        .unwrap_or(0) as u64;
    let replace = p.bool(ctx, "replace").map(|g| g.value).unwrap_or(true);
    let cut_long_prompts = p
        .bool(ctx, "cut_long_prompts")
        .map(|g| g.value)
        .unwrap_or(true);
    Some(PromptSource {
        file: file?,
        column,
        sample,
        sampling_seed,
        replace,
        cut_long_prompts,
    })
}

fn seeds(ctx: &mut Ctx, root: &Section) -> Option<SeedSource> {
    let s = root.table(ctx, "seeds", keys::SEEDS);
    let draw = s.integer(ctx, "draw_seed");
    let list = s.array(ctx, "list");
    if let (Some(_), Some(l)) = (&draw, &list) {
        ctx.error(&l.loc, &l.key, "set either `draw_seed` or `list`, not both");
        return None;
    }
    if let Some(l) = list {
        if l.value.is_empty() {
            ctx.error(&l.loc, &l.key, "must list at least one seed");
            return None;
        }
        let mut seeds = Vec::new();
        let mut ok = true;
        for (i, node) in l.value.iter().enumerate() {
            let key = format!("{}[{i}]", l.key);
            match integer_of(ctx, &key, node).and_then(|g| ranged(ctx, g, 0, u64::MAX as i128)) {
                Some(v) => seeds.push(v as u64),
                None => ok = false,
            }
        }
        return ok.then_some(SeedSource::Listed(seeds));
    }
    match draw {
        Some(g) => ranged(ctx, g, 0, MAX_NUMPY_SEED).map(|v| SeedSource::Drawn { seed: v as u64 }),
        None if s.has("draw_seed") => None,
        None => Some(SeedSource::Drawn { seed: 0 }),
    }
}

/// `sweep.ratios` and `sweep.rounds`.
fn sweep(ctx: &mut Ctx, root: &Section) -> (Vec<f64>, usize) {
    let s = root.table(ctx, "sweep", keys::SWEEP);
    let rounds = usize_at_least(ctx, &s, "rounds", 1, 1);
    (ratios(ctx, &s), rounds)
}

fn ratios(ctx: &mut Ctx, s: &Section) -> Vec<f64> {
    let Some(list) = s.array(ctx, "ratios") else {
        return if s.has("ratios") {
            Vec::new()
        } else {
            THESIS_RATIOS.to_vec()
        };
    };
    if list.value.is_empty() {
        ctx.error(&list.loc, &list.key, "must list at least one ratio (and 0)");
        return Vec::new();
    }
    let mut out: Vec<f64> = Vec::new();
    for (i, node) in list.value.iter().enumerate() {
        let key = format!("{}[{i}]", list.key);
        let Some(g) = number_of(ctx, &key, node) else {
            continue;
        };
        let r = g.value + 0.0; // -0 is 0
        let problem = if !r.is_finite() {
            Some(format!("must be a finite number, got {r}"))
        } else if r < 0.0 {
            Some(format!("must be at least 0, got {r}"))
        } else if r >= 1.0 {
            Some(format!(
                "must be below 1 (r is the fraction of tokens merged: 10% is 0.1), got {r}"
            ))
        } else if out.contains(&r) {
            Some(format!("{r} is listed twice"))
        } else if let Some(&last) = out.last().filter(|&&last| last > r) {
            Some(format!(
                "must be in ascending order, but {r} comes after {last}"
            ))
        } else {
            None
        };
        match problem {
            Some(m) => ctx.error(&g.loc, &key, m),
            None => out.push(r),
        }
    }
    if !out.is_empty() && !out.contains(&0.0) && !list.value.is_empty() {
        ctx.error(
            &list.loc,
            &list.key,
            "must include 0, the baseline every r > 0 is compared with",
        );
    }
    out
}

fn configs(ctx: &mut Ctx, root: &Section) -> Vec<ConfigSpec> {
    let Some(node) = root.node(ctx, "configs") else {
        let loc = ctx.root_loc.clone();
        ctx.error(
            &loc,
            "configs",
            "missing; add at least one [[configs]] table (a ToMe configuration to compare)",
        );
        return Vec::new();
    };
    let items: &[Node] = match &node.value {
        super::source::Value::Array(items) => items,
        other => {
            ctx.error(
                &node.loc,
                "configs",
                format!(
                    "expected an array of tables ([[configs]]), found {}",
                    other.kind()
                ),
            );
            return Vec::new();
        }
    };
    if items.is_empty() {
        ctx.error(&node.loc, "configs", "must hold at least one configuration");
    }
    let mut out: Vec<ConfigSpec> = Vec::new();
    let mut names: Vec<(String, usize)> = Vec::new();
    let mut indices: Vec<usize> = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let path = format!("configs[{i}]");
        let Some(s) = Section::of_node(ctx, item, path, keys::CONFIG) else {
            continue;
        };
        if let Some(c) = config(ctx, &s, i, &mut names) {
            indices.push(i);
            out.push(c);
        }
    }
    // Two configurations that merge identically make the same images.
    for a in 0..out.len() {
        for b in 0..a {
            let (x, y) = (&out[a].tome, &out[b].tome);
            if x == y {
                let key = format!("configs[{}]", indices[a]);
                let loc = ctx.locations.get(&key);
                ctx.warn(
                    &loc,
                    &key,
                    format!(
                        "`{}` merges exactly like `{}` (configs[{}]); their images are the same jobs",
                        out[a].name, out[b].name, indices[b]
                    ),
                );
                break;
            }
        }
    }
    out
}

fn config(
    ctx: &mut Ctx,
    s: &Section,
    index: usize,
    names: &mut Vec<(String, usize)>,
) -> Option<ConfigSpec> {
    let mut ok = true;
    let name = match s.string(ctx, "name") {
        Some(g) => {
            if !check_name(ctx, &g) {
                ok = false;
            } else if let Some((_, j)) = names.iter().find(|(n, _)| *n == g.value) {
                ctx.error(
                    &g.loc,
                    &g.key,
                    format!(
                        "duplicate configuration name `{}` (also configs[{j}])",
                        g.value
                    ),
                );
                ok = false;
            } else {
                names.push((g.value.clone(), index));
            }
            g.value
        }
        None => {
            if !s.has("name") {
                missing(
                    ctx,
                    s,
                    "name",
                    "every configuration needs a name (it names files and table columns)",
                );
            }
            ok = false;
            String::new()
        }
    };
    let label = s
        .string(ctx, "label")
        .map_or_else(|| name.clone(), |g| g.value);
    let color = match s.string(ctx, "color") {
        Some(g) => match parse_color(&g.value) {
            Some(c) => c,
            None => {
                ctx.error(
                    &g.loc,
                    &g.key,
                    format!("must be a colour written `#rrggbb`, got {:?}", g.value),
                );
                ok = false;
                String::new()
            }
        },
        None => PALETTE[index % PALETTE.len()].to_string(),
    };
    let targets = match s.array(ctx, "merge") {
        Some(list) => {
            let mut t = Targets {
                self_attn: false,
                cross_attn: false,
                mlp: false,
            };
            let mut seen: Vec<String> = Vec::new();
            for (i, node) in list.value.iter().enumerate() {
                let key = format!("{}[{i}]", list.key);
                let Some(g) = string_of(ctx, &key, node) else {
                    ok = false;
                    continue;
                };
                let flag = match g.value.as_str() {
                    "self_attn" => &mut t.self_attn,
                    "cross_attn" => &mut t.cross_attn,
                    "mlp" => &mut t.mlp,
                    other => {
                        let hint = did_you_mean(other, COMPONENTS);
                        ctx.error(
                            &g.loc,
                            &key,
                            format!(
                                "unknown component `{other}`{hint} (valid: {})",
                                COMPONENTS.join(", ")
                            ),
                        );
                        ok = false;
                        continue;
                    }
                };
                if seen.contains(&g.value) {
                    ctx.error(&g.loc, &key, format!("`{}` is listed twice", g.value));
                    ok = false;
                }
                *flag = true;
                seen.push(g.value);
            }
            if list.value.is_empty() {
                ctx.error(
                    &list.loc,
                    &list.key,
                    format!("must name at least one of {}", COMPONENTS.join(", ")),
                );
                ok = false;
            }
            t
        }
        None => Targets::default(),
    };
    let defaults = TomeConfig::default();
    let mut stride = |ctx: &mut Ctx, key: &str, default: usize| -> usize {
        match s.integer(ctx, key).map(|g| ranged(ctx, g, 1, 64)) {
            Some(Some(v)) => v as usize,
            Some(None) => {
                ok = false;
                default
            }
            None => default,
        }
    };
    let sx = stride(ctx, "sx", defaults.sx);
    let sy = stride(ctx, "sy", defaults.sy);
    let random = s.bool(ctx, "random").map_or(defaults.random, |g| g.value);
    let seed = s
        .integer(ctx, "seed")
        .and_then(|g| ranged(ctx, g, 0, u64::MAX as i128))
        .map_or(defaults.seed, |v| v as u64);
    let max_downsample = match s.integer(ctx, "max_downsample") {
        Some(g) if [1, 2, 4, 8].contains(&g.value) => g.value as usize,
        Some(g) => {
            ctx.error(
                &g.loc,
                &g.key,
                format!("must be 1, 2, 4 or 8, got {}", g.value),
            );
            ok = false;
            defaults.max_downsample
        }
        None => defaults.max_downsample,
    };
    if ok && sx == 1 && sy == 1 {
        let key = format!("{}.sy", s.path);
        let loc = ctx.locations.get(&key);
        ctx.error(
            &loc,
            &key,
            "sx = sy = 1 makes every token a dst, so nothing can be merged (the maximum r is 0)",
        );
        ok = false;
    }
    ok.then_some(ConfigSpec {
        name,
        label,
        color,
        tome: TomeConfig {
            ratio: 0.0,
            targets,
            sx,
            sy,
            random,
            seed,
            max_downsample,
        },
    })
}

/// `#rrggbb` (either case), normalised to lower case.
fn parse_color(s: &str) -> Option<String> {
    let hex = s.strip_prefix('#')?;
    (hex.len() == 6 && hex.chars().all(|c| c.is_ascii_hexdigit())).then(|| s.to_ascii_lowercase())
}

fn metrics(ctx: &mut Ctx, root: &Section) -> Metrics {
    let m = root.table(ctx, "metrics", keys::METRICS);
    let fid = m.bool(ctx, "fid").map(|g| g.value).unwrap_or(true);
    let inception = match m.string(ctx, "inception") {
        Some(g) if g.value.trim().is_empty() => {
            ctx.error(&g.loc, &g.key, "must not be empty");
            None
        }
        Some(g) if g.value.to_ascii_lowercase().ends_with(".onnx") => Some(
            resolve_against(&g.loc.file, &g.value)
                .to_string_lossy()
                .into_owned(),
        ),
        Some(g) => Some(g.value),
        None => Some(DEFAULT_INCEPTION.to_string()),
    };
    let fid_dims = match m.integer(ctx, "fid_dims") {
        Some(g) if FID_DIMS.iter().any(|&d| d as i128 == g.value) => g.value as usize,
        Some(g) => {
            ctx.error(
                &g.loc,
                &g.key,
                format!(
                    "must be one of pytorch-fid's feature sizes 64, 192, 768 or 2048, got {}",
                    g.value
                ),
            );
            2048
        }
        None => 2048,
    };
    let paired = m.bool(ctx, "paired").map(|g| g.value).unwrap_or(true);
    Metrics {
        fid,
        inception: if fid { inception } else { None },
        fid_dims,
        paired,
    }
}

fn report(ctx: &mut Ctx, root: &Section, sample: Option<usize>) -> ReportOptions {
    let r = root.table(ctx, "report", keys::REPORT);
    let grid_prompts = match r.integer(ctx, "grid_prompts") {
        Some(g) => match ranged(ctx, g.clone(), 0, u32::MAX as i128) {
            Some(v) => match sample {
                Some(n) if v as usize > n => {
                    ctx.error(
                        &g.loc,
                        &g.key,
                        format!(
                            "must be at most the {n} prompts sampled (prompts.sample), got {v}"
                        ),
                    );
                    4.min(n)
                }
                _ => v as usize,
            },
            None => 4,
        },
        None => sample.map_or(4, |n| n.min(4)),
    };
    let formats = match r.array(ctx, "formats") {
        Some(list) => {
            let mut out: Vec<String> = Vec::new();
            for (i, node) in list.value.iter().enumerate() {
                let key = format!("{}[{i}]", list.key);
                let Some(g) = string_of(ctx, &key, node) else {
                    continue;
                };
                if !ReportOptions::FORMATS.contains(&g.value.as_str()) {
                    let hint = did_you_mean(&g.value, ReportOptions::FORMATS);
                    ctx.error(
                        &g.loc,
                        &key,
                        format!(
                            "unknown format `{}`{hint} (valid: {})",
                            g.value,
                            ReportOptions::FORMATS.join(", ")
                        ),
                    );
                } else if out.contains(&g.value) {
                    ctx.error(&g.loc, &key, format!("`{}` is listed twice", g.value));
                } else {
                    out.push(g.value);
                }
            }
            out
        }
        None => ReportOptions::FORMATS
            .iter()
            .map(|s| s.to_string())
            .collect(),
    };
    let thesis_table = r.integer(ctx, "thesis_table").and_then(|g| {
        if (7..=13).contains(&g.value) {
            Some(g.value as u32)
        } else {
            ctx.error(
                &g.loc,
                &g.key,
                format!(
                    "must be one of the thesis's data tables, 7 to 13, got {}",
                    g.value
                ),
            );
            None
        }
    });
    ReportOptions {
        grid_prompts,
        formats,
        thesis_table,
    }
}
