//! `spec::load` and `spec::check_inputs`: every invalid spec below is checked
//! against its exact messages (`file:line:column: key: text`, one per problem,
//! all problems at once); the specs shipped in `specs/` must load.

use std::path::{Path, PathBuf};

use tomex::diffusion::scheduler::SchedulerKind;
use tomex::onnx::Precision;
use tomex::plan::{DrawnPrompt, ModelIdentity};
use tomex::spec::{self, ModelRef, SeedSource, Spec};

/// The smallest valid spec; cases below add to it or break it.
const MINIMAL: &str = r#"[model]
name = "tiny"

[prompts]
file = "p.csv"

[[configs]]
name = "a"
"#;

struct Dir {
    dir: tempfile::TempDir,
}

impl Dir {
    fn new() -> Self {
        Dir {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.dir.path().join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, text).unwrap();
        p
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }
}

/// Loads `text` as `spec.toml` and returns its messages (it must fail).
fn errors_of(text: &str) -> (Dir, Vec<String>) {
    let d = Dir::new();
    let p = d.write("spec.toml", text);
    let lines = errors_at(&p);
    (d, lines)
}

fn errors_at(p: &Path) -> Vec<String> {
    match spec::load(p) {
        Ok(s) => panic!("{} loaded, expected errors: {s:#?}", p.display()),
        Err(e) => {
            let lines: Vec<String> = e.to_string().lines().map(str::to_string).collect();
            assert_eq!(lines.len(), e.len(), "one line per problem");
            lines
        }
    }
}

/// Asserts that `text` fails with exactly `expected` (each `{f}` is the file).
fn assert_errors(text: &str, expected: &[&str]) {
    let (d, got) = errors_of(text);
    let f = d.path("spec.toml");
    let expected: Vec<String> = expected.iter().map(|e| e.replace("{f}", &f)).collect();
    assert_eq!(got, expected, "\nspec:\n{text}");
}

fn load_ok(text: &str) -> (Dir, Spec) {
    let d = Dir::new();
    let p = d.write("spec.toml", text);
    let s = spec::load(&p).unwrap_or_else(|e| panic!("{e}\nspec:\n{text}"));
    (d, s)
}

// ---------------------------------------------------------------- invalid specs

#[test]
fn unknown_key_suggests_the_nearest() {
    assert_errors(
        &format!("{MINIMAL}\n[sweep]\nratoi = [0.0, 0.5]\n"),
        &["{f}:11:1: sweep.ratoi: unknown key `ratoi`; did you mean `ratios`?"],
    );
}

#[test]
fn unknown_key_without_a_near_one_lists_the_valid_keys() {
    assert_errors(
        &format!("{MINIMAL}foo = 2\n\n[generation]\nwdith = 512\n"),
        &[
            "{f}:9:1: configs[0].foo: unknown key `foo` (valid keys: name, label, color, merge, \
             sx, sy, random, seed, max_downsample)",
            "{f}:12:1: generation.wdith: unknown key `wdith`; did you mean `width`?",
        ],
    );
}

#[test]
fn size_must_be_a_positive_multiple_of_8() {
    assert_errors(
        &format!("[generation]\nwidth = 770\nheight = 0\n\n{MINIMAL}"),
        &[
            "{f}:2:9: generation.width: must be a positive multiple of 8, got 770",
            "{f}:3:10: generation.height: must be a positive multiple of 8, got 0",
        ],
    );
}

#[test]
fn steps_guidance_batch_size() {
    assert_errors(
        &format!("[generation]\nsteps = 0\nguidance = nan\nbatch_size = -1\n\n{MINIMAL}"),
        &[
            "{f}:2:9: generation.steps: must be at least 1, got 0",
            "{f}:3:12: generation.guidance: must be a number from -100 to 100 (Stable Diffusion is used at 1 to 20), got NaN",
            "{f}:4:14: generation.batch_size: must be at least 1, got -1",
        ],
    );
}

/// Values that used to pass the check and fail (or abort) at run time are refused at
/// load, each at its place: a guidance that overflows float32, a side whose VAE decode
/// cannot fit memory and more steps than the scheduler's training timesteps; a batch
/// of images is allowed.
#[test]
fn limits_are_checked_at_load() {
    assert_errors(
        &format!(
            "[generation]\nsteps = 2000\nguidance = 1e300\nwidth = 2147483648\nheight = 8192\nbatch_size = 2\n\n{MINIMAL}"
        ),
        &[
            "{f}:2:9: generation.steps: must be at most 1000, got 2000",
            "{f}:3:12: generation.guidance: must be a number from -100 to 100 (Stable Diffusion is used at 1 to 20), got 1e300",
            "{f}:4:9: generation.width: must be at most 4096 (the VAE decoder's activations at 4096x4096 already take 8 GiB each), got 2147483648",
            "{f}:5:10: generation.height: must be at most 4096 (the VAE decoder's activations at 4096x4096 already take 8 GiB each), got 8192",
        ],
    );
}

#[test]
fn unknown_scheduler_suggests_and_lists() {
    assert_errors(
        &format!("[generation]\nscheduler = \"pnmd\"\n\n{MINIMAL}"),
        &[
            "{f}:2:13: generation.scheduler: unknown scheduler `pnmd`; did you mean `pndm`? \
           (valid: pndm, ddim, euler, dpmpp-2m)",
        ],
    );
}

#[test]
fn unknown_precision_suggests_and_lists() {
    assert_errors(
        &format!("[generation]\nprecision = \"fp61\"\n\n{MINIMAL}"),
        &[
            "{f}:2:13: generation.precision: unknown precision `fp61`; did you mean `fp16`? \
           (valid: fp32, fp16)",
        ],
    );
}

#[test]
fn wrong_types_say_expected_and_found() {
    assert_errors(
        &format!(
            "description = 3\n[generation]\nsteps = \"50\"\nguidance = true\n\n{MINIMAL}random = 1\nmerge = \"self_attn\"\n"
        ),
        &[
            "{f}:1:15: description: expected a string, found an integer",
            "{f}:3:9: generation.steps: expected an integer, found a string",
            "{f}:4:12: generation.guidance: expected a number, found a boolean",
            "{f}:14:10: configs[0].random: expected a boolean (true or false), found an integer",
            "{f}:15:9: configs[0].merge: expected an array, found a string",
        ],
    );
}

#[test]
fn configuration_values() {
    let text = r##"[model]
name = "tiny"
[prompts]
file = "p.csv"

[[configs]]
name = "a"
sx = 0
sy = 2
max_downsample = 3
color = "red"

[[configs]]
name = "a"
merge = ["self_attn", "crossattn", "self_attn"]

[[configs]]
name = "one by one"
sx = 1
sy = 1
"##;
    assert_errors(
        text,
        &[
            "{f}:8:6: configs[0].sx: must be at least 1, got 0",
            "{f}:10:18: configs[0].max_downsample: must be 1, 2, 4 or 8, got 3",
            "{f}:11:9: configs[0].color: must be a colour written `#rrggbb`, got \"red\"",
            "{f}:14:8: configs[1].name: duplicate configuration name `a` (also configs[0])",
            "{f}:15:23: configs[1].merge[1]: unknown component `crossattn`; did you mean \
             `cross_attn`? (valid: self_attn, cross_attn, mlp)",
            "{f}:15:36: configs[1].merge[2]: `self_attn` is listed twice",
            "{f}:18:8: configs[2].name: must be letters, digits, `-`, `_` or `.` (it names \
             files), got \"one by one\"",
        ],
    );
}

#[test]
fn one_by_one_cells_merge_nothing() {
    assert_errors(
        &format!("{MINIMAL}sx = 1\nsy = 1\n"),
        &[
            "{f}:10:6: configs[0].sy: sx = sy = 1 makes every token a dst, so nothing can be \
           merged (the maximum r is 0)",
        ],
    );
}

#[test]
fn empty_merge_list() {
    assert_errors(
        &format!("{MINIMAL}merge = []\n"),
        &["{f}:9:9: configs[0].merge: must name at least one of self_attn, cross_attn, mlp"],
    );
}

#[test]
fn ratios_in_range_sorted_unique_with_zero() {
    assert_errors(
        &format!("[sweep]\nratios = [0.1, 10, -0.1, 0.5, 0.3, 0.5, inf]\n\n{MINIMAL}"),
        &[
            "{f}:2:10: sweep.ratios: must include 0, the baseline every r > 0 is compared with",
            "{f}:2:16: sweep.ratios[1]: must be below 1 (r is the fraction of tokens merged: \
             10% is 0.1), got 10",
            "{f}:2:20: sweep.ratios[2]: must be at least 0, got -0.1",
            "{f}:2:31: sweep.ratios[4]: must be in ascending order, but 0.3 comes after 0.5",
            "{f}:2:36: sweep.ratios[5]: 0.5 is listed twice",
            "{f}:2:41: sweep.ratios[6]: must be a finite number, got inf",
        ],
    );
}

#[test]
fn rounds_is_a_whole_number_of_at_least_one() {
    assert_errors(
        &format!("[sweep]\nrounds = 0\n\n{MINIMAL}"),
        &["{f}:2:10: sweep.rounds: must be at least 1, got 0"],
    );
    assert_errors(
        &format!("[sweep]\nrounds = 2.5\n\n{MINIMAL}"),
        &["{f}:2:10: sweep.rounds: expected an integer, found a float"],
    );
}

#[test]
fn model_needs_exactly_one_of_name_and_dir() {
    assert_errors(
        "[model]\nname = \"sd15\"\ndir = \"models/sd15\"\n[prompts]\nfile = \"p.csv\"\n[[configs]]\nname = \"a\"\n",
        &["{f}:3:7: model.dir: set either `name` or `dir`, not both"],
    );
    assert_errors(
        "[model]\n\n[prompts]\nfile = \"p.csv\"\n[[configs]]\nname = \"a\"\n",
        &["{f}:1:1: model: set `name` (a models.lock name) or `dir` (a model directory)"],
    );
}

#[test]
fn missing_tables() {
    assert_errors(
        "description = \"nothing else\"\n",
        &[
            "{f}:1:1: model: missing; add a [model] table with `name` (a models.lock name) or \
             `dir` (a model directory)",
            "{f}:1:1: prompts: missing; add a [prompts] table with `file` (a CSV file of prompts)",
            "{f}:1:1: configs: missing; add at least one [[configs]] table (a ToMe configuration \
             to compare)",
        ],
    );
}

#[test]
fn seeds_list_or_draw_seed() {
    assert_errors(
        &format!("[seeds]\nlist = []\n\n{MINIMAL}"),
        &["{f}:2:8: seeds.list: must list at least one seed"],
    );
    assert_errors(
        &format!("[seeds]\ndraw_seed = 1\nlist = [1, 2]\n\n{MINIMAL}"),
        &["{f}:3:8: seeds.list: set either `draw_seed` or `list`, not both"],
    );
    assert_errors(
        &format!("[seeds]\nlist = [1, -2, \"3\"]\n\n{MINIMAL}"),
        &[
            "{f}:2:12: seeds.list[1]: must be at least 0, got -2",
            "{f}:2:16: seeds.list[2]: expected an integer, found a string",
        ],
    );
}

#[test]
fn numpy_seed_range() {
    assert_errors(
        &format!("[seeds]\ndraw_seed = 4294967296\n\n{MINIMAL}sampling_seed = -1\n"),
        &[
            "{f}:2:13: seeds.draw_seed: must be at most 4294967295, got 4294967296",
            // `sampling_seed` after [[configs]] belongs to the configuration.
            "{f}:12:1: configs[0].sampling_seed: unknown key `sampling_seed` (valid keys: name, \
             label, color, merge, sx, sy, random, seed, max_downsample)",
        ],
    );
    assert_errors(
        "[model]\nname = \"tiny\"\n[prompts]\nfile = \"p.csv\"\nsampling_seed = -1\n[[configs]]\nname = \"a\"\nseed = 18446744073709551616\n",
        &[
            "{f}:5:17: prompts.sampling_seed: must be at least 0, got -1",
            "{f}:8:8: configs[0].seed: must be at most 18446744073709551615, got 18446744073709551616",
        ],
    );
}

#[test]
fn prompt_file_must_be_csv_and_sample_positive() {
    assert_errors(
        "[model]\nname = \"tiny\"\n[prompts]\nfile = \"prompts.txt\"\nsample = 0\ncolumn = \"\"\n[[configs]]\nname = \"a\"\n",
        &[
            "{f}:4:8: prompts.file: must be a CSV file (`.csv`), got `prompts.txt`",
            "{f}:5:10: prompts.sample: must be at least 1, got 0",
            "{f}:6:10: prompts.column: must not be empty",
        ],
    );
}

#[test]
fn report_and_metrics_options() {
    assert_errors(
        &format!(
            "{MINIMAL}\n[metrics]\nfid_dims = 1000\n\n[report]\nformats = [\"png\", \"jpg\", \"svgg\", \"png\"]\nthesis_table = 5\n"
        ),
        &[
            "{f}:11:12: metrics.fid_dims: must be one of pytorch-fid's feature sizes 64, 192, \
             768 or 2048, got 1000",
            "{f}:14:19: report.formats[1]: unknown format `jpg` (valid: png, svg, md, csv, tex)",
            "{f}:14:26: report.formats[2]: unknown format `svgg`; did you mean `svg`? (valid: \
             png, svg, md, csv, tex)",
            "{f}:14:34: report.formats[3]: `png` is listed twice",
            "{f}:15:16: report.thesis_table: must be one of the thesis's data tables, 7 to 13, \
             got 5",
        ],
    );
}

#[test]
fn grid_prompts_at_most_the_sample() {
    assert_errors(
        "[model]\nname = \"tiny\"\n[prompts]\nfile = \"p.csv\"\nsample = 2\n[[configs]]\nname = \"a\"\n[report]\ngrid_prompts = 3\n",
        &["{f}:9:16: report.grid_prompts: must be at most the 2 prompts sampled (prompts.sample), got 3"],
    );
}

#[test]
fn a_table_where_a_value_belongs_and_back() {
    assert_errors(
        "model = \"tiny\"\n[prompts]\nfile = \"p.csv\"\n[[configs]]\nname = \"a\"\n[generation.width]\nx = 1\n",
        &[
            "{f}:1:9: model: expected a table, found a string",
            "{f}:6:1: generation.width: expected an integer, found a table",
        ],
    );
}

#[test]
fn toml_syntax_errors_are_all_located() {
    assert_errors(
        "[model]\nname = \"tiny\"\nname = \"x\"\n[prompts]\nfile = p.csv\n",
        &[
            "{f}:3:1: invalid TOML: duplicate key",
            "{f}:5:8: invalid TOML: string values must be quoted, expected literal string",
        ],
    );
}

#[test]
fn unreadable_spec_file() {
    let d = Dir::new();
    let p = d.dir.path().join("nope.toml");
    assert_eq!(
        errors_at(&p),
        vec![format!("{}: no such file", p.display())]
    );
}

// ---------------------------------------------------------------- extends

#[test]
fn extends_merges_tables_and_replaces_arrays() {
    let d = Dir::new();
    d.write(
        "shared/base.toml",
        r##"name = "base-name-is-not-inherited"
description = "from base"
store = "../out"
[model]
dir = "../models/m"
[generation]
width = 768
height = 768
steps = 50
[prompts]
file = "prompts.csv"
sample = 10
[sweep]
ratios = [0.0, 0.1, 0.2]
[[configs]]
name = "base-config"
[[configs]]
name = "base-config-2"
"##,
    );
    let child = d.write(
        "exp/child.toml",
        r##"extends = "../shared/base.toml"
[generation]
width = 512
[prompts]
sample = 20
[sweep]
ratios = [0.0, 0.5]
[[configs]]
name = "mine"
color = "#ABCDEF"
"##,
    );
    let s = spec::load(&child).unwrap_or_else(|e| panic!("{e}"));
    let root = d.dir.path();
    assert_eq!(s.name, "child");
    assert_eq!(s.description, "from base");
    assert_eq!((s.generation.width, s.generation.height), (512, 768));
    assert_eq!(s.generation.steps, 50);
    // Paths resolve against the file that wrote them.
    assert_eq!(s.store, root.join("out"));
    assert_eq!(s.model, ModelRef::Dir(root.join("models/m")));
    assert_eq!(s.prompts.file, root.join("shared/prompts.csv"));
    assert_eq!(s.prompts.sample, Some(20));
    assert_eq!(s.ratios, vec![0.0, 0.5]);
    // [[configs]] replaced, not appended.
    assert_eq!(s.configs.len(), 1);
    assert_eq!(s.configs[0].name, "mine");
    assert_eq!(s.configs[0].color, "#abcdef");
    // Locations point into the file that wrote each key.
    assert_eq!(
        s.locations.problem("generation.height", "x").to_string(),
        format!(
            "{}:8:10: generation.height: x",
            root.join("shared/base.toml").display()
        )
    );
    assert_eq!(
        s.locations.problem("generation.width", "x").to_string(),
        format!("{}:3:9: generation.width: x", child.display())
    );
}

#[test]
fn errors_in_a_base_point_at_the_base() {
    let d = Dir::new();
    d.write(
        "base.toml",
        "[model]\nname = \"tiny\"\n[generation]\nsteps = 0\nwidht = 8\n",
    );
    let child = d.write(
        "child.toml",
        "extends = \"base.toml\"\n[prompts]\nfile = \"p.csv\"\n[[configs]]\nname = \"a\"\nsx = 0\n",
    );
    let c = child.display().to_string();
    let b = d.path("base.toml");
    assert_eq!(
        errors_at(&child),
        vec![
            format!("{c}:6:6: configs[0].sx: must be at least 1, got 0"),
            format!("{b}:4:9: generation.steps: must be at least 1, got 0"),
            format!("{b}:5:1: generation.widht: unknown key `widht`; did you mean `width`?"),
        ]
    );
    // A syntax error in the base is the base's.
    d.write("base.toml", "[model\n");
    assert_eq!(
        errors_at(&child),
        vec![format!(
            "{b}:1:7: invalid TOML: unclosed table, expected `]`"
        )]
    );
}

#[test]
fn extends_cycles_and_missing_bases() {
    let d = Dir::new();
    let a = d.write("a.toml", "extends = \"b.toml\"\n");
    d.write("b.toml", "\n\nextends = \"./a.toml\"\n");
    assert_eq!(
        errors_at(&a),
        vec![format!(
            "{}:3:11: extends: `extends` cycle: a.toml -> b.toml -> a.toml",
            d.path("b.toml")
        )]
    );
    let own = d.write("self.toml", "extends = \"self.toml\"\n");
    assert_eq!(
        errors_at(&own),
        vec![format!(
            "{}:1:11: extends: `extends` cycle: self.toml -> self.toml",
            own.display()
        )]
    );
    let lost = d.write("lost.toml", "extends = \"gone.toml\"\n");
    assert_eq!(
        errors_at(&lost),
        vec![format!(
            "{}:1:11: extends: base spec `{}` does not exist",
            lost.display(),
            d.path("gone.toml")
        )]
    );
    let wrong = d.write("wrong.toml", "extends = [\"a.toml\"]\n");
    assert_eq!(
        errors_at(&wrong),
        vec![format!(
            "{}:1:11: extends: expected a string (a base spec file), found an array",
            wrong.display()
        )]
    );
}

// ---------------------------------------------------------------- valid specs

#[test]
fn minimal_spec_takes_tomesd_and_thesis_defaults() {
    let (d, s) = load_ok(MINIMAL);
    assert_eq!(s.name, "spec");
    assert_eq!(s.model, ModelRef::LockName("tiny".into()));
    let g = &s.generation;
    assert_eq!(
        (g.width, g.height, g.steps, g.batch_size),
        (512, 512, 50, 1)
    );
    assert_eq!(g.guidance, 7.5);
    assert_eq!(g.scheduler, SchedulerKind::Pndm);
    assert_eq!(g.precision, Precision::Fp32);
    assert_eq!(s.prompts.file, d.dir.path().join("p.csv"));
    assert_eq!(s.prompts.column, "prompt");
    assert_eq!(s.prompts.sample, None);
    assert!(s.prompts.replace && s.prompts.cut_long_prompts);
    assert_eq!(s.seeds, SeedSource::Drawn { seed: 0 });
    assert_eq!(s.ratios, spec::THESIS_RATIOS.to_vec());
    let c = &s.configs[0];
    assert_eq!((c.label.as_str(), c.color.as_str()), ("a", "#000000"));
    let defaults = tomex::tome::TomeConfig::default();
    assert_eq!(c.tome.targets, defaults.targets);
    assert_eq!(
        (c.tome.sx, c.tome.sy, c.tome.random, c.tome.max_downsample),
        (2, 2, true, 1)
    );
    assert_eq!(s.store, d.dir.path().join("results"));
    assert!(s.metrics.fid && s.metrics.paired);
    assert_eq!(s.metrics.inception.as_deref(), Some("inception-fid"));
    assert_eq!(s.report.formats, ["png", "svg", "md", "csv", "tex"]);
    assert!(s.skipped.is_empty() && s.warnings.is_empty());
}

#[test]
fn half_precision_is_read_and_goes_into_every_key() {
    let (_d, s) = load_ok(&format!("[generation]\nprecision = \"fp16\"\n\n{MINIMAL}"));
    assert_eq!(s.generation.precision, Precision::Fp16);
    let (_d, s32) = load_ok(MINIMAL);
    let model = ModelIdentity::Unresolved("lock:tiny".into());
    let prompts = [DrawnPrompt {
        row: 0,
        text: "a cat".into(),
        prompt: "a cat".into(),
        seed: 1,
    }];
    let half = tomex::plan::expand_drawn(&s, &model, &prompts);
    let full = tomex::plan::expand_drawn(&s32, &model, &prompts);
    assert_eq!(half.jobs().len(), full.jobs().len());
    for (h, f) in half.jobs().iter().zip(full.jobs()) {
        assert_eq!(h.material.precision.as_deref(), Some("fp16"));
        assert_eq!(f.material.precision, None);
        assert_ne!(h.key, f.key);
    }
}

#[test]
fn ratio_above_a_configurations_maximum_is_skipped_with_a_warning() {
    let (d, s) = load_ok(&format!(
        "{MINIMAL}sx = 1\nsy = 2\n\n[[configs]]\nname = \"b\"\nmerge = [\"self_attn\", \"cross_attn\"]\n\n[sweep]\nratios = [0, 0.5, 0.6, 0.7]\n"
    ));
    assert_eq!(s.skipped.len(), 2);
    assert_eq!(
        (
            s.skipped[0].config.as_str(),
            s.skipped[0].ratio,
            s.skipped[0].max_ratio
        ),
        ("a", 0.6, 0.5)
    );
    assert_eq!(s.skipped[1].ratio, 0.7);
    assert!(s.is_skipped("a", 0.6) && !s.is_skipped("a", 0.5) && !s.is_skipped("b", 0.6));
    assert_eq!(s.ratios_of("a"), vec![0.0, 0.5]);
    assert_eq!(s.ratios_of("b"), vec![0.0, 0.5, 0.6, 0.7]);
    let f = d.path("spec.toml");
    let w: Vec<String> = s.warnings.iter().map(|w| w.to_string()).collect();
    assert_eq!(
        w,
        vec![format!(
            "{f}:7:1: configs[0]: r = 0.6, 0.7 are above the maximum 0.5 of `a` (1 - 1/(sx*sy), \
             sx = 1, sy = 2); these cells are skipped and shown as \"-\""
        )]
    );
}

#[test]
fn identical_configurations_warn() {
    let (_d, s) = load_ok(&format!(
        "{MINIMAL}\n[[configs]]\nname = \"b\"\nmerge = [\"self_attn\"]\nsx = 2\n"
    ));
    assert_eq!(s.warnings.len(), 1);
    assert!(s.warnings[0]
        .to_string()
        .ends_with(":10:1: configs[1]: `b` merges exactly like `a` (configs[0]); their images are the same jobs"));
}

#[test]
fn listed_seeds_and_inline_configs() {
    let (_d, s) = load_ok(
        "configs = [{ name = \"x\", merge = [\"mlp\"] }, { name = \"y\", sx = 3, sy = 1 }]\n\
         [model]\nname = \"m\"\n[prompts]\nfile = \"p.CSV\"\n[seeds]\nlist = [1, 18446744073709551615]\n",
    );
    assert_eq!(s.seeds, SeedSource::Listed(vec![1, u64::MAX]));
    assert!(s.configs[0].tome.targets.mlp && !s.configs[0].tome.targets.self_attn);
    assert_eq!(s.configs[1].color, "#ff0000");
    assert!((s.configs[1].tome.max_ratio() - 2.0 / 3.0).abs() < 1e-12);
}

/// Jobs of a spec per prompt, with r = 0 shared by every configuration.
fn jobs_per_prompt(s: &Spec) -> usize {
    let shared = usize::from(s.ratios.contains(&0.0));
    shared
        + s.configs
            .iter()
            .map(|c| s.ratios_of(&c.name).iter().filter(|&&r| r > 0.0).count())
            .sum::<usize>()
}

#[test]
fn every_shipped_spec_loads() {
    let mut seen = 0;
    for entry in std::fs::read_dir("specs").unwrap() {
        let p = entry.unwrap().path();
        if p.extension().is_some_and(|e| e == "toml") {
            let s = spec::load(&p).unwrap_or_else(|e| panic!("{e}"));
            assert!(!s.configs.is_empty(), "{}", p.display());
            seen += 1;
        }
    }
    assert!(seen >= 11, "{seen} specs");
}

#[test]
fn thesis_specs_are_faithful() {
    // (file, size, prompts, configs, jobs per prompt, thesis table, skipped cells)
    let cases = [
        ("1_1_all_components", 768, 500, 2, 13, 7, 0),
        ("1_2_cross_or_mlp", 768, 500, 3, 19, 8, 0),
        ("1_3_without_self_attn", 768, 500, 3, 19, 9, 0),
        ("1_4_self_cross_repeat", 768, 1000, 2, 13, 10, 0),
        ("2_512", 512, 500, 2, 13, 11, 0),
        ("3_batches", 768, 500, 3, 18, 12, 1),
        ("4_all", 768, 1000, 3, 18, 13, 1),
    ];
    // The thesis's tables as tomex carries them (a copy of the thesis's own tables.csv).
    let table = Some(tomex::report::THESIS_TABLES);
    for (file, size, prompts, configs, per_prompt, thesis_table, skipped) in cases {
        let path = PathBuf::from(format!("specs/{file}.toml"));
        let s = spec::load(&path).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(s.name, file);
        assert_eq!(s.model, ModelRef::LockName("sd15".into()), "{file}");
        let g = &s.generation;
        assert_eq!((g.width, g.height, g.steps), (size, size, 50), "{file}");
        assert_eq!(
            (g.guidance, g.scheduler, g.batch_size),
            (7.5, SchedulerKind::Pndm, 1)
        );
        assert_eq!(s.prompts.sample, Some(prompts), "{file}");
        assert!(s.prompts.replace && s.prompts.cut_long_prompts);
        assert_eq!(s.ratios, spec::THESIS_RATIOS.to_vec());
        assert_eq!(s.configs.len(), configs, "{file}");
        assert_eq!(jobs_per_prompt(&s), per_prompt, "{file}");
        assert_eq!(s.report.thesis_table, Some(thesis_table));
        assert_eq!(s.skipped.len(), skipped, "{file}");
        assert_eq!(s.warnings.len(), skipped, "{file}");
        assert_eq!(s.store, PathBuf::from("results"));
        // Labels, merge targets and strides are the series of tables.csv.
        if let Some(t) = &table {
            for c in &s.configs {
                let m = &c.tome.targets;
                let merge = [
                    (m.self_attn, "self_attn"),
                    (m.cross_attn, "cross_attn"),
                    (m.mlp, "mlp"),
                ]
                .iter()
                .filter(|(on, _)| *on)
                .map(|(_, n)| *n)
                .collect::<Vec<_>>()
                .join("+");
                let row = format!(
                    "{thesis_table},{},{size},\"{}\",{merge},{},{},",
                    thesis_table - 2,
                    c.label,
                    c.tome.sx,
                    c.tome.sy
                );
                assert!(t.contains(&row), "{file}: no row starting {row}");
            }
        }
    }
    // 4_all: 1000 prompts x 18 jobs, not x 21 (r = 0 shared, 1x2's r = 0.6 skipped).
    let s = spec::load(Path::new("specs/4_all.toml")).unwrap();
    assert_eq!(s.prompts.sample.unwrap() * jobs_per_prompt(&s), 18_000);
    assert_eq!(
        s.warnings[0].to_string(),
        "specs/4_all.toml:31:1: configs[2]: r = 0.6 is above the maximum 0.5 of `self_cross_1x2` \
         (1 - 1/(sx*sy), sx = 1, sy = 2); this cell is skipped and shown as \"-\""
    );
}

#[test]
fn prompt_sets_are_shared_where_the_thesis_shared_them() {
    let set = |f: &str| {
        let s = spec::load(Path::new(&format!("specs/{f}.toml"))).unwrap();
        (s.prompts.sampling_seed, s.seeds.clone())
    };
    let first = set("1_1_all_components");
    for f in [
        "1_2_cross_or_mlp",
        "1_3_without_self_attn",
        "1_4_self_cross_repeat",
        "4_all",
    ] {
        assert_eq!(set(f), first, "{f}");
    }
    assert_ne!(set("2_512"), first);
    assert_ne!(set("3_batches"), first);
    assert_ne!(set("3_batches"), set("2_512"));
}

/// specs/demo.toml is the thesis's experiment 4 in miniature on the trained demo model:
/// 4_all's configurations (merge, strides, labels, colours), the thesis's ratios, 64 of
/// the demo world's captions, FID over the demo's own feature network.
#[test]
fn demo_spec_is_experiment_4_in_miniature() {
    let demo = spec::load(Path::new("specs/demo.toml")).unwrap_or_else(|e| panic!("{e}"));
    let four = spec::load(Path::new("specs/4_all.toml")).unwrap();
    assert_eq!(demo.model, ModelRef::LockName("demo".into()));
    assert_eq!(demo.ratios, spec::THESIS_RATIOS.to_vec());
    assert_eq!(demo.configs.len(), four.configs.len());
    for (d, f) in demo.configs.iter().zip(&four.configs) {
        assert_eq!(
            (&d.name, &d.label, &d.color, &d.tome),
            (&f.name, &f.label, &f.color, &f.tome)
        );
    }
    assert_eq!(demo.prompts.sample, Some(64));
    assert!(!demo.prompts.replace);
    assert_eq!(demo.prompts.sample.unwrap() * jobs_per_prompt(&demo), 1152);
    assert_eq!((demo.generation.width, demo.generation.height), (256, 256));
    assert_eq!(demo.metrics.inception.as_deref(), Some("demo-fid"));
    assert_eq!(spec::check_inputs(&demo), vec![]);
    let probe = spec::load(Path::new("specs/demo_probe.toml")).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(spec::check_inputs(&probe), vec![]);
    let captions = spec::read_prompts(&probe.prompts.file, &probe.prompts.column).unwrap();
    assert_eq!(captions.len(), 75);
    assert!(captions
        .iter()
        .all(|c| c.split(' ').count() == 3 && c.starts_with("a ")));
}

#[test]
fn smoke_spec_runs_the_tiny_model_and_its_inputs_are_there() {
    let s = spec::load(Path::new("specs/smoke.toml")).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(s.model, ModelRef::LockName("tiny".into()));
    assert_eq!((s.generation.width, s.generation.steps), (64, 8));
    assert_eq!(s.prompts.sample, Some(4));
    assert_eq!(s.prompts.sample.unwrap() * jobs_per_prompt(&s), 20);
    assert!(s.metrics.fid);
    assert_eq!(s.metrics.fid_dims, 64);
    let inception = PathBuf::from(s.metrics.inception.as_deref().unwrap());
    assert!(
        inception.ends_with("tests/fixtures/inception_tiny.onnx") && inception.is_file(),
        "{}",
        inception.display()
    );
    assert_eq!(spec::check_inputs(&s), vec![]);
    let prompts = spec::read_prompts(&s.prompts.file, &s.prompts.column).unwrap();
    assert_eq!(prompts.len(), 12);
    assert!(
        prompts.iter().any(|p| p.len() > 300),
        "one prompt exercises the cut"
    );
    assert!(prompts.contains(&"a neon sign that says \"open\" in a rainy alley".to_string()));
}

// ---------------------------------------------------------------- check_inputs

/// A spec over `csv` (written as `p.csv` unless `None`) with extra `[prompts]` keys.
fn inputs_problems(csv: Option<&str>, prompts_extra: &str) -> (Dir, Vec<String>) {
    let text = format!(
        "[model]\nname = \"tiny\"\n[prompts]\nfile = \"p.csv\"\n{prompts_extra}[[configs]]\nname = \"a\"\n"
    );
    let (d, s) = load_ok(&text);
    if let Some(c) = csv {
        d.write("p.csv", c);
    }
    let got = spec::check_inputs(&s)
        .iter()
        .map(|p| p.to_string())
        .collect();
    (d, got)
}

#[test]
fn prompt_file_missing_empty_or_without_rows() {
    let (d, got) = inputs_problems(None, "");
    let (f, csv) = (d.path("spec.toml"), d.path("p.csv"));
    assert_eq!(
        got,
        vec![format!(
            "{f}:4:8: prompts.file: prompt file `{csv}` does not exist"
        )]
    );
    let (d, got) = inputs_problems(Some(""), "");
    let (f, csv) = (d.path("spec.toml"), d.path("p.csv"));
    assert_eq!(
        got,
        vec![format!(
            "{f}:4:8: prompts.file: prompt file `{csv}` is empty"
        )]
    );
    let (d, got) = inputs_problems(Some("prompt\n\n"), "");
    let (f, csv) = (d.path("spec.toml"), d.path("p.csv"));
    assert_eq!(
        got,
        vec![format!(
            "{f}:4:8: prompts.file: prompt file `{csv}` has a header but no prompts"
        )]
    );
}

#[test]
fn prompt_file_lacks_the_column() {
    let (d, got) = inputs_problems(Some("Prompt,seed\na cat,1\n"), "");
    let (f, csv) = (d.path("spec.toml"), d.path("p.csv"));
    // The column took its default, so the problem points at [prompts].
    assert_eq!(
        got,
        vec![format!(
            "{f}:3:1: prompts.column: prompt file `{csv}` has no column `prompt`; did you mean \
             `Prompt`? (its columns: `Prompt`, `seed`)"
        )]
    );
    let (d, got) = inputs_problems(Some("text\na cat\n"), "column = \"caption\"\n");
    let (f, csv) = (d.path("spec.toml"), d.path("p.csv"));
    assert_eq!(
        got,
        vec![format!(
            "{f}:5:10: prompts.column: prompt file `{csv}` has no column `caption` (its columns: `text`)"
        )]
    );
}

#[test]
fn prompt_file_that_is_not_csv() {
    let (d, got) = inputs_problems(Some("prompt,x\n\"a cat, x\n"), "");
    let (f, csv) = (d.path("spec.toml"), d.path("p.csv"));
    assert_eq!(
        got,
        vec![format!(
            "{f}:4:8: prompts.file: prompt file `{csv}` is not valid CSV: line 2: a quoted field is never closed"
        )]
    );
    let (d, got) = inputs_problems(Some("prompt\na,b\n"), "");
    let (f, csv) = (d.path("spec.toml"), d.path("p.csv"));
    assert_eq!(
        got,
        vec![format!(
            "{f}:4:8: prompts.file: prompt file `{csv}` is not valid CSV: line 2: 2 fields, but the header has 1"
        )]
    );
}

#[test]
fn more_samples_than_prompts_only_without_replacement() {
    let csv = "prompt\na\nb\nc\n";
    let (_d, got) = inputs_problems(Some(csv), "sample = 5\n");
    assert_eq!(
        got,
        Vec::<String>::new(),
        "with replacement, as the thesis drew"
    );
    let (d, got) = inputs_problems(Some(csv), "sample = 5\nreplace = false\n");
    let (f, p) = (d.path("spec.toml"), d.path("p.csv"));
    assert_eq!(
        got,
        vec![format!(
            "{f}:5:10: prompts.sample: 5 prompts cannot be drawn without replacement from the 3 \
             in `{p}` (set `replace = true` to draw with replacement, as the thesis did)"
        )]
    );
}

#[test]
fn model_directory_must_exist_for_a_run_not_for_load() {
    let (d, s) = load_ok(
        "[model]\ndir = \"nowhere\"\n[prompts]\nfile = \"p.csv\"\n[[configs]]\nname = \"a\"\n",
    );
    d.write("p.csv", "prompt\na\n");
    let got: Vec<String> = spec::check_inputs(&s)
        .iter()
        .map(|p| p.to_string())
        .collect();
    assert_eq!(
        got,
        vec![format!(
            "{}:2:7: model.dir: model directory `{}` does not exist",
            d.path("spec.toml"),
            d.path("nowhere")
        )]
    );
}

#[test]
fn thesis_specs_need_the_users_prompt_collection_to_run() {
    let lexica = Path::new("specs/prompts/lexica.csv");
    if lexica.exists() {
        return; // the user brought it
    }
    let s = spec::load(Path::new("specs/4_all.toml")).unwrap();
    let got: Vec<String> = spec::check_inputs(&s)
        .iter()
        .map(|p| p.to_string())
        .collect();
    assert_eq!(
        got,
        vec![
            "specs/base_sd15.toml:29:8: prompts.file: prompt file `specs/prompts/lexica.csv` does not exist"
                .to_string()
        ]
    );
}
