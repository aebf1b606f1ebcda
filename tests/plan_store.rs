//! The plan (keys, normalisation, dedupe, thesis job counts, prompt draw against
//! numpy, shards) and the store (atomic writes, claims between threads and
//! processes, recovery of dead workers' claims, failures, manifest).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tomex::diffusion::scheduler::SchedulerKind;
use tomex::onnx::Precision;
use tomex::plan::{
    self, prompts, Cell, DrawnPrompt, Job, JobMaterial, ModelIdentity, NormalTome,
    NumpyRandomState, Plan, Shard, ShardError,
};
use tomex::spec::{
    ConfigSpec, Generation, Locations, Metrics, ModelRef, PromptSource, ReportOptions, SeedSource,
    SkippedCell, Spec,
};
use tomex::store::{Measurement, Store, StoreError, Timings, Worker};
use tomex::tome::{Targets, TomeConfig};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

// ---------------------------------------------------------------- helpers: specs

const SELF: Targets = Targets {
    self_attn: true,
    cross_attn: false,
    mlp: false,
};
const SELF_CROSS: Targets = Targets {
    self_attn: true,
    cross_attn: true,
    mlp: false,
};
const ALL: Targets = Targets {
    self_attn: true,
    cross_attn: true,
    mlp: true,
};
const THESIS_RATIOS: [f64; 7] = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6];

fn config(name: &str, targets: Targets, sx: usize, sy: usize) -> ConfigSpec {
    ConfigSpec {
        name: name.into(),
        label: name.into(),
        color: "#000000".into(),
        tome: TomeConfig {
            targets,
            sx,
            sy,
            ..TomeConfig::default()
        },
    }
}

/// A thesis-like spec; `skipped` computed as the spec module does.
fn spec(name: &str, configs: Vec<ConfigSpec>, sample: usize, size: usize) -> Spec {
    let ratios = THESIS_RATIOS.to_vec();
    let skipped = configs
        .iter()
        .flat_map(|c| {
            let max = c.tome.max_ratio();
            ratios
                .iter()
                .filter(move |&&r| r > max)
                .map(move |&r| SkippedCell {
                    config: c.name.clone(),
                    ratio: r,
                    max_ratio: max,
                })
        })
        .collect();
    Spec {
        path: PathBuf::from(format!("specs/{name}.toml")),
        name: name.into(),
        description: String::new(),
        model: ModelRef::LockName("sd15".into()),
        generation: Generation {
            width: size,
            height: size,
            steps: 50,
            guidance: 7.5,
            scheduler: SchedulerKind::Pndm,
            negative_prompt: String::new(),
            batch_size: 1,
            precision: Precision::Fp32,
            from_model: Default::default(),
        },
        prompts: PromptSource {
            file: PathBuf::from("prompts.csv"),
            column: "Prompt".into(),
            sample: Some(sample),
            sampling_seed: 42,
            replace: true,
            cut_long_prompts: true,
        },
        seeds: SeedSource::Drawn { seed: 42 },
        ratios,
        rounds: 1,
        configs,
        store: PathBuf::from("results"),
        metrics: Metrics {
            fid: true,
            inception: None,
            fid_dims: 2048,
            paired: false,
        },
        report: ReportOptions {
            grid_prompts: 4,
            formats: vec!["md".into()],
            thesis_table: None,
        },
        skipped,
        warnings: Vec::new(),
        locations: Locations::default(),
    }
}

/// Table 13 / figure 11 of the thesis ("4) putting it all together").
fn thesis_4_all() -> Spec {
    spec(
        "4_all",
        vec![
            config("setup1_self_2x2", SELF, 2, 2),
            config("setup2_self_cross_2x2", SELF_CROSS, 2, 2),
            config("setup3_self_cross_1x2", SELF_CROSS, 1, 2),
        ],
        1000,
        768,
    )
}

/// A stand-in for the thesis's 80,000-prompt collection.
fn collection(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("prompt number {i}, 4k")).collect()
}

fn model_files() -> BTreeMap<String, String> {
    [
        ("unet/model.onnx", "sha256:aa"),
        ("text_encoder/model.onnx", "sha256:bb"),
    ]
    .into_iter()
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .collect()
}

fn material() -> JobMaterial {
    JobMaterial {
        precision: None,
        format: plan::KEY_FORMAT,
        model: ModelIdentity::from_files(&model_files()),
        prompt: "a cat, 4k".into(),
        negative_prompt: String::new(),
        seed: 1234,
        width: 768,
        height: 768,
        steps: 50,
        scheduler: "pndm".into(),
        guidance: 7.5,
        batch_size: 1,
        tome: NormalTome::of(&TomeConfig::default(), 0.3),
    }
}

// ---------------------------------------------------------------- numpy

#[test]
fn numpy_randint_matches_golden() {
    let path = repo().join("golden/numpy_randint.json");
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let cases = doc["cases"].as_array().unwrap();
    assert!(cases.len() >= 8);
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let mut rs = NumpyRandomState::new(case["seed"].as_u64().unwrap()).unwrap();
        for (call, expected) in case["calls"]
            .as_array()
            .unwrap()
            .iter()
            .zip(case["outputs"].as_array().unwrap())
        {
            let expected: Vec<i64> = expected
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_i64().unwrap())
                .collect();
            let size = call[2].as_u64().unwrap() as usize;
            if call[0] == "choice" {
                let n = call[1].as_u64().unwrap() as usize;
                let got: Vec<i64> = rs
                    .choice_without_replacement(n, size)
                    .into_iter()
                    .map(|i| i as i64)
                    .collect();
                assert_eq!(got, expected, "{name}: choice({n}, {size}, replace=False)");
                continue;
            }
            let (low, high) = (call[0].as_i64().unwrap(), call[1].as_i64().unwrap());
            assert_eq!(
                rs.randint(low, high, size),
                expected,
                "{name}: randint({low}, {high}, {size})"
            );
        }
    }
}

fn golden_case(name: &str) -> serde_json::Value {
    let doc: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo().join("golden/numpy_randint.json")).unwrap(),
    )
    .unwrap();
    doc["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap()
        .clone()
}

fn golden_output<T: TryFrom<u64>>(case: &serde_json::Value, call: usize) -> Vec<T>
where
    T::Error: std::fmt::Debug,
{
    case["outputs"][call]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| T::try_from(v.as_u64().unwrap()).unwrap())
        .collect()
}

#[test]
fn prompt_draw_uses_numpy_calls_of_the_thesis() {
    // the thesis's two calls, np.random.randint(0, 80000, 1000) and
    // np.random.randint(0, 4294967295, 1000), here from the same state
    let case = golden_case("thesis_1000_seed42");
    let (rows, seeds): (Vec<usize>, Vec<u64>) = (golden_output(&case, 0), golden_output(&case, 1));
    assert_eq!(
        prompts::thesis_sequence(42, 80_000, 1000).unwrap(),
        (rows.clone(), seeds)
    );

    // a spec: rows from RandomState(sampling_seed), seeds from RandomState(draw_seed)
    let s = thesis_4_all();
    let all = collection(80_000);
    let drawn = prompts::draw(&s.prompts, &s.seeds, &all).unwrap();
    assert_eq!(drawn.iter().map(|d| d.row).collect::<Vec<_>>(), rows);
    let mut rs = NumpyRandomState::new(42).unwrap();
    assert_eq!(
        drawn.iter().map(|d| d.seed as i64).collect::<Vec<_>>(),
        rs.randint(0, 4_294_967_295, 1000)
    );
    assert_eq!(drawn[0].text, all[rows[0]]);
    let other = prompts::draw(&s.prompts, &SeedSource::Drawn { seed: 7 }, &all).unwrap();
    let mut rs = NumpyRandomState::new(7).unwrap();
    assert_eq!(
        other.iter().map(|d| d.seed as i64).collect::<Vec<_>>(),
        rs.randint(0, 4_294_967_295, 1000)
    );
    assert_eq!(other.iter().map(|d| d.row).collect::<Vec<_>>(), rows);

    // 500 prompts are the first 500 of 1000 under the same seeds (thesis 1.4)
    let mut half = s.prompts.clone();
    half.sample = Some(500);
    assert_eq!(prompts::draw(&half, &s.seeds, &all).unwrap(), drawn[..500]);

    // without replacement: numpy's choice(n, k, replace=False)
    let case = golden_case("choice_no_replace");
    let mut no_rep = s.prompts.clone();
    (no_rep.sampling_seed, no_rep.sample, no_rep.replace) = (5, Some(5), false);
    assert_eq!(
        prompts::sample_rows(&no_rep, 10).unwrap(),
        golden_output::<usize>(&case, 0)
    );
    no_rep.sample = Some(11);
    assert_eq!(
        prompts::sample_rows(&no_rep, 10).unwrap_err().to_string(),
        "cannot sample 11 prompts without replacement from 10"
    );

    // listed seeds cycle; no sample: every row in order
    let src = PromptSource {
        sample: None,
        ..s.prompts.clone()
    };
    let listed = prompts::draw(&src, &SeedSource::Listed(vec![5, 6]), &all[..5]).unwrap();
    assert_eq!(
        listed.iter().map(|d| (d.row, d.seed)).collect::<Vec<_>>(),
        [(0, 5), (1, 6), (2, 5), (3, 6), (4, 5)]
    );

    // numpy's seed range
    let bad = PromptSource {
        sampling_seed: 1 << 32,
        ..s.prompts.clone()
    };
    assert_eq!(
        prompts::draw(&bad, &s.seeds, &all).unwrap_err().to_string(),
        "prompt sampling: numpy seeds must be between 0 and 2**32 - 1 (4294967295), got 4294967296"
    );
    let e = plan::expand(&thesis_4_all(), None, &[]).unwrap_err();
    assert_eq!(
        e.to_string(),
        "spec `4_all`: cannot sample 1000 prompts from an empty prompt list"
    );
}

#[test]
fn the_cut_rule_applies_to_the_key() {
    let long = format!("{}, and more words after the cut", "word ".repeat(60));
    let all = vec!["a cat, \"cute\"".to_string(), long.clone()];
    let mut s = spec("cut", vec![config("a", SELF, 2, 2)], 2, 512);
    s.prompts.sample = None;
    s.ratios = vec![0.0];
    let p = plan::expand(&s, Some(&model_files()), &all).unwrap();
    let cut = tomex::diffusion::prompt::cut_prompt(&long, 300);
    assert!(cut.chars().count() <= 300 && cut.len() < long.len());
    assert_eq!(p.jobs()[1].material.prompt, cut);
    s.prompts.cut_long_prompts = false;
    let p2 = plan::expand(&s, Some(&model_files()), &all).unwrap();
    assert_eq!(p2.jobs()[1].material.prompt, long);
    assert_ne!(p.jobs()[1].key, p2.jobs()[1].key);
    assert_eq!(p.jobs()[0].key, p2.jobs()[0].key);
}

// ---------------------------------------------------------------- keys

#[test]
fn key_is_stable() {
    let m = material();
    assert_eq!(
        m.canonical_json(),
        format!(
            concat!(
                r#"{{"batch_size":1,"format":1,"guidance":7.5,"height":768,"model":{{"files":"{}"}},"#,
                r#""negative_prompt":"","prompt":"a cat, 4k","scheduler":"pndm","seed":1234,"steps":50,"#,
                r#""tome":{{"cross_attn":false,"max_downsample":1,"mlp":false,"random":true,"ratio":0.3,"#,
                r#""seed":0,"self_attn":true,"sx":2,"sy":2}},"width":768}}"#
            ),
            match &m.model {
                ModelIdentity::Files(d) => d.clone(),
                _ => unreachable!(),
            }
        )
    );
    assert_eq!(m.key().len(), 64);
    // pinned: a change here orphans every stored result, so it must be deliberate
    // (and come with a KEY_FORMAT bump). The same digest comes out of Python's
    // hashlib.sha256(json.dumps(m, sort_keys=True, separators=(",", ":"),
    // ensure_ascii=False).encode()) for this material.
    assert_eq!(
        m.key(),
        "4b890929a49aaa42fbf7faa016a3343f6b5b24fbe01b930139fc10e61ad0fa52"
    );
}

#[test]
fn every_determining_field_changes_the_key() {
    let base = material();
    let key = base.key();
    let tome = base.tome.clone().unwrap();
    let mut variants: Vec<(&str, JobMaterial)> = Vec::new();
    let mut files = model_files();
    files.insert("vae_decoder/model.onnx".into(), "sha256:cc".into());
    let with = |f: &dyn Fn(&mut JobMaterial)| {
        let mut m = base.clone();
        f(&mut m);
        m
    };
    variants.push((
        "model",
        with(&|m| m.model = ModelIdentity::from_files(&files)),
    ));
    variants.push((
        "model digest",
        with(&|m| {
            let mut f = model_files();
            f.insert("unet/model.onnx".into(), "sha256:ab".into());
            m.model = ModelIdentity::from_files(&f)
        }),
    ));
    variants.push(("prompt", with(&|m| m.prompt.push('!'))));
    variants.push(("negative", with(&|m| m.negative_prompt = "blurry".into())));
    variants.push(("seed", with(&|m| m.seed += 1)));
    variants.push(("width", with(&|m| m.width = 512)));
    variants.push(("height", with(&|m| m.height = 512)));
    variants.push(("steps", with(&|m| m.steps = 49)));
    variants.push(("scheduler", with(&|m| m.scheduler = "ddim".into())));
    variants.push(("guidance", with(&|m| m.guidance = 7.0)));
    variants.push(("batch", with(&|m| m.batch_size = 2)));
    variants.push(("no tome", with(&|m| m.tome = None)));
    variants.push(("precision", with(&|m| m.precision = Some("fp16".into()))));
    let t = |f: &dyn Fn(&mut NormalTome)| {
        let mut n = tome.clone();
        f(&mut n);
        with(&move |m: &mut JobMaterial| m.tome = Some(n.clone()))
    };
    variants.push(("ratio", t(&|n| n.ratio = 0.4)));
    variants.push(("self", t(&|n| n.self_attn = false)));
    variants.push(("cross", t(&|n| n.cross_attn = true)));
    variants.push(("mlp", t(&|n| n.mlp = true)));
    variants.push(("sx", t(&|n| n.sx = 1)));
    variants.push(("sy", t(&|n| n.sy = 3)));
    variants.push((
        "random",
        t(&|n| {
            n.random = false;
            n.seed = None
        }),
    ));
    variants.push(("partition seed", t(&|n| n.seed = Some(9))));
    variants.push(("max_downsample", t(&|n| n.max_downsample = 2)));
    let mut seen = HashSet::from([key.clone()]);
    for (what, m) in variants {
        assert!(
            seen.insert(m.key()),
            "changing {what} did not change the key"
        );
    }
}

#[test]
fn normalisation() {
    let cfgs = [
        TomeConfig::default(),
        TomeConfig {
            targets: ALL,
            sx: 1,
            sy: 2,
            random: false,
            seed: 5,
            max_downsample: 4,
            ..TomeConfig::default()
        },
        TomeConfig {
            targets: Targets {
                self_attn: false,
                cross_attn: false,
                mlp: false,
            },
            ..TomeConfig::default()
        },
    ];
    // r = 0 is "no ToMe" for every configuration
    for c in &cfgs {
        assert_eq!(NormalTome::of(c, 0.0), None);
        assert_eq!(NormalTome::of(c, -0.0), None);
    }
    // a configuration that targets nothing merges nothing at any r
    assert_eq!(NormalTome::of(&cfgs[2], 0.5), None);
    // a fixed partition ignores its seed; a random one keeps it
    let fixed = |seed| TomeConfig {
        random: false,
        seed,
        ..TomeConfig::default()
    };
    assert_eq!(
        NormalTome::of(&fixed(1), 0.3),
        NormalTome::of(&fixed(2), 0.3)
    );
    assert_eq!(NormalTome::of(&fixed(1), 0.3).unwrap().seed, None);
    let random = |seed| TomeConfig {
        seed,
        ..TomeConfig::default()
    };
    assert_ne!(
        NormalTome::of(&random(1), 0.3),
        NormalTome::of(&random(2), 0.3)
    );
    // the run configuration comes back from the key material
    let n = NormalTome::of(&cfgs[1], 0.4).unwrap();
    assert_eq!(
        n.to_config(),
        TomeConfig {
            ratio: 0.4,
            seed: 0,
            ..cfgs[1]
        }
    );
    assert_eq!(n.merge_label(), "self_attn+cross_attn+mlp");

    // through a plan: r = 0 is one job whatever the configuration, and f32
    // guidance keys by its decimal text
    let s = spec(
        "n",
        vec![
            config("a", SELF, 2, 2),
            config("b", ALL, 1, 2),
            config("c", SELF_CROSS, 3, 3),
        ],
        3,
        512,
    );
    let p = plan::expand(&s, Some(&model_files()), &collection(10)).unwrap();
    let zero: Vec<&Job> = p
        .jobs()
        .iter()
        .filter(|j| j.cells.iter().any(|c| c.ratio == 0.0))
        .collect();
    assert_eq!(zero.len(), 3);
    for j in zero {
        assert_eq!(j.cells.len(), 3);
        assert_eq!(j.material.tome, None);
        let configs: Vec<&str> = j.cells.iter().map(|c| c.config.as_str()).collect();
        assert_eq!(configs, ["a", "b", "c"]);
    }
    let mut s2 = s.clone();
    s2.generation.guidance = 7.3;
    let p2 = plan::expand(&s2, Some(&model_files()), &collection(10)).unwrap();
    assert_eq!(p2.jobs()[0].material.guidance, 7.3);
}

// ---------------------------------------------------------------- plans

#[test]
fn thesis_4_all_plans_1000_times_18_jobs() {
    let s = thesis_4_all();
    assert_eq!(s.skipped.len(), 1, "1x2 stops at r = 0.5");
    let all = collection(80_000);
    let p = plan::expand(&s, Some(&model_files()), &all).unwrap();
    assert_eq!(p.len(), 1000 * 18);
    assert_eq!(p.cell_count(), 1000 * 20);
    assert!(!p.is_provisional());
    assert_eq!(p.skipped.len(), 1);
    assert!(p
        .jobs()
        .iter()
        .flat_map(|j| &j.cells)
        .all(|c| !(c.config == "setup3_self_cross_1x2" && c.ratio == 0.6)));
    // the same count without the model: keys are provisional
    let q = plan::expand(&s, None, &all).unwrap();
    assert_eq!(q.len(), 18_000);
    assert!(q.is_provisional());
    assert_eq!(
        q.jobs()[0].material.model,
        ModelIdentity::Unresolved("lock:sd15".into())
    );
    // 1000 × (1 + 3·6) had every configuration reached 0.6
    let mut full = s.clone();
    full.configs[2] = config("setup3_self_cross_2x2_rand", SELF_CROSS, 2, 2);
    full.configs[2].tome.seed = 1;
    full.skipped.clear();
    assert_eq!(
        plan::expand(&full, Some(&model_files()), &all)
            .unwrap()
            .len(),
        19_000
    );
}

#[test]
fn thesis_experiment_counts() {
    let all = collection(80_000);
    let count = |s: Spec| plan::expand(&s, Some(&model_files()), &all).unwrap().len();
    // 1.1: default vs all components, 500 prompts: 1 + 2·6 per prompt
    let s11 = spec(
        "1_1",
        vec![config("default", SELF, 2, 2), config("all", ALL, 2, 2)],
        500,
        768,
    );
    assert_eq!(count(s11), 500 * 13);
    // 3: 2x2, 3x3, 1x2 batches (self+cross): 1 + 6 + 6 + 5 per prompt
    let s3 = spec(
        "3_batches",
        vec![
            config("2x2", SELF_CROSS, 2, 2),
            config("3x3", SELF_CROSS, 3, 3),
            config("1x2", SELF_CROSS, 1, 2),
        ],
        500,
        768,
    );
    assert_eq!(count(s3), 500 * 18);
}

#[test]
fn identical_jobs_across_specs_run_once() {
    let all = collection(80_000);
    // 1.4 (setups 1 and 2 at 1000 prompts) and 4 share their prompts and seeds
    let s14 = spec(
        "1_4",
        vec![
            config("default", SELF, 2, 2),
            config("self_cross", SELF_CROSS, 2, 2),
        ],
        1000,
        768,
    );
    let a = plan::expand(&s14, Some(&model_files()), &all).unwrap();
    let b = plan::expand(&thesis_4_all(), Some(&model_files()), &all).unwrap();
    assert_eq!(a.len(), 13_000);
    let mut merged = Plan::new();
    merged.merge(a.clone());
    merged.merge(b.clone());
    assert_eq!(merged.len(), 18_000);
    assert_eq!(merged.cell_count(), a.cell_count() + b.cell_count());
    let shared = merged
        .jobs()
        .iter()
        .find(|j| j.material.tome.is_none())
        .unwrap();
    let specs: HashSet<&str> = shared.cells.iter().map(|c| c.spec.as_str()).collect();
    assert_eq!(specs, HashSet::from(["1_4", "4_all"]));
    // merging a plan twice adds nothing
    merged.merge(b);
    assert_eq!(merged.cell_count(), a.cell_count() + 20_000);
    // a 512×512 spec shares nothing with them
    let mut s512 = s14.clone();
    s512.generation.width = 512;
    s512.generation.height = 512;
    let c = plan::expand(&s512, Some(&model_files()), &all).unwrap();
    merged.merge(c);
    assert_eq!(merged.len(), 18_000 + 13_000);
}

// ---------------------------------------------------------------- shards

#[test]
fn shards_cover_every_job_once() {
    let s = spec(
        "sh",
        vec![config("a", SELF, 2, 2), config("b", SELF_CROSS, 1, 2)],
        37,
        512,
    );
    let p = plan::expand(&s, Some(&model_files()), &collection(100)).unwrap();
    assert_eq!(p.len(), 37 * 12);
    for n in [1, 2, 3, 7, 64, 1000] {
        let mut seen: HashMap<&str, usize> = HashMap::new();
        let mut sizes = Vec::new();
        for i in 0..n {
            let jobs = p.shard(Shard::new(i, n).unwrap());
            sizes.push(jobs.len());
            for j in jobs {
                *seen.entry(j.key.as_str()).or_default() += 1;
            }
        }
        assert_eq!(seen.len(), p.len(), "n = {n}");
        assert!(seen.values().all(|&c| c == 1), "n = {n}");
        let (lo, hi) = (sizes.iter().min().unwrap(), sizes.iter().max().unwrap());
        assert!(hi - lo <= 1, "n = {n}: sizes {lo}..{hi}");
    }
    // deterministic and in plan order
    let a = p.shard("1/3".parse().unwrap());
    let b = p.shard(Shard::new(1, 3).unwrap());
    assert_eq!(a, b);
    let pos: Vec<usize> = a
        .iter()
        .map(|j| p.jobs().iter().position(|x| x.key == j.key).unwrap())
        .collect();
    assert!(pos.windows(2).all(|w| w[0] < w[1]));
}

#[test]
fn shard_arguments_and_slurm() {
    let ok: Shard = " 2/5 ".parse().unwrap();
    assert_eq!((ok.index, ok.count, ok.to_string()), (2, 5, "2/5".into()));
    let err = |s: &str| s.parse::<Shard>().unwrap_err().to_string();
    assert_eq!(
        err("3"),
        "shard `3` is not of the form i/n (e.g. 0/4: the first of 4 shards)"
    );
    assert_eq!(err("a/4"), "shard `a/4`: `a` is not a whole number");
    assert_eq!(
        err("1/0"),
        "shard `1/0`: the number of shards must be at least 1"
    );
    assert_eq!(
        err("4/4"),
        "shard `4/4`: index 4 is out of range for 4 shards (shards are numbered from 0 to 3)"
    );
    let env = |vars: &[(&str, &str)]| {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect();
        Shard::from_vars(|k| map.get(k).cloned())
    };
    assert_eq!(env(&[]), Ok(None));
    assert_eq!(
        env(&[
            ("SLURM_ARRAY_TASK_ID", "3"),
            ("SLURM_ARRAY_TASK_COUNT", "8")
        ]),
        Ok(Some(Shard::new(3, 8).unwrap()))
    );
    assert_eq!(
        env(&[
            ("SLURM_ARRAY_TASK_ID", "8"),
            ("SLURM_ARRAY_TASK_COUNT", "8"),
            ("SLURM_ARRAY_TASK_MIN", "1")
        ]),
        Ok(Some(Shard::new(7, 8).unwrap()))
    );
    assert_eq!(
        env(&[
            ("SLURM_ARRAY_TASK_ID", "14"),
            ("SLURM_ARRAY_TASK_COUNT", "8"),
            ("SLURM_ARRAY_TASK_STEP", "2")
        ]),
        Ok(Some(Shard::new(7, 8).unwrap()))
    );
    assert_eq!(
        env(&[("SLURM_ARRAY_TASK_ID", "3")]),
        Err(ShardError::EnvNoCount)
    );
    assert_eq!(
        env(&[("SLURM_ARRAY_TASK_ID", "9"), ("SLURM_ARRAY_TASK_COUNT", "3"), ("SLURM_ARRAY_TASK_MIN", "1")])
            .unwrap_err()
            .to_string(),
        "SLURM_ARRAY_TASK_ID 9 does not map to a shard of 3 (MIN 1, STEP 1: the array is not a plain range); pass --shard i/n"
    );
    assert_eq!(
        env(&[
            ("SLURM_ARRAY_TASK_ID", "x"),
            ("SLURM_ARRAY_TASK_COUNT", "3")
        ])
        .unwrap_err()
        .to_string(),
        "SLURM_ARRAY_TASK_ID is `x`, not a whole number"
    );
}

// ---------------------------------------------------------------- store helpers

/// `n` distinct jobs of a small plan.
fn jobs(n: usize) -> Vec<Job> {
    let mut s = spec("store", vec![config("a", SELF, 2, 2)], n, 64);
    s.ratios = vec![0.0];
    let p = plan::expand(&s, Some(&model_files()), &collection(100_000)).unwrap();
    assert_eq!(p.len(), n);
    p.jobs().to_vec()
}

fn measurement(wall: f64) -> Measurement {
    Measurement {
        timings: Timings {
            wall_s: wall,
            text_encoder_s: 0.1,
            unet_s: wall - 0.3,
            vae_s: 0.2,
        },
        device: "cpu".into(),
        onnxruntime: "1.23.0".into(),
        ..Default::default()
    }
}

fn png_of(key: &str) -> Vec<u8> {
    let mut b = b"\x89PNG\r\n\x1a\n".to_vec();
    b.extend_from_slice(key.as_bytes());
    b
}

/// A pid that certainly ran and is gone.
fn dead_pid() -> u32 {
    let mut child = Command::new("true").spawn().unwrap();
    let pid = child.id();
    child.wait().unwrap();
    pid
}

// ---------------------------------------------------------------- store

#[test]
fn complete_writes_image_then_record() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let me = Worker::current("test");
    let js = jobs(2);
    let job = &js[0];
    assert!(!store.is_done(&job.key));
    let claim = store.try_claim(&job.key, &me).unwrap().unwrap();
    assert!(store.try_claim(&job.key, &me).unwrap().is_none(), "held");
    let rec = store
        .complete(claim, job, &png_of(&job.key), measurement(2.0))
        .unwrap();
    assert!(store.is_done(&job.key));
    assert_eq!(
        std::fs::read(store.image_path(&job.key)).unwrap(),
        png_of(&job.key)
    );
    assert_eq!(store.record(&job.key).unwrap().unwrap(), rec);
    assert_eq!(rec.job, job.material);
    assert_eq!(rec.cells, job.cells);
    assert_eq!(rec.pid, std::process::id());
    assert_eq!(rec.worker, "test");
    assert!(rec.finished_at >= rec.started_at);
    // done: nobody claims it again; the claim log ends in `completed`, which
    // holds even where the record is not seen (another host's stale cache: a worker
    // on another machine, within the claim timeout)
    assert!(store.try_claim(&job.key, &me).unwrap().is_none());
    let log = dir.path().join("claims").join(&job.key);
    let last: serde_json::Value =
        serde_json::from_slice(&std::fs::read(log.join("00000001.json")).unwrap()).unwrap();
    assert_eq!(last["state"], "completed");
    let elsewhere = Worker {
        host: "another-host".into(),
        ..Worker::current("elsewhere")
    };
    std::fs::rename(store.record_path(&job.key), dir.path().join("hidden")).unwrap();
    assert!(store.try_claim(&job.key, &elsewhere).unwrap().is_none());
    std::fs::rename(dir.path().join("hidden"), store.record_path(&job.key)).unwrap();
    // no temporary files anywhere
    let object = store.object_dir(&job.key);
    let mut names: Vec<String> = std::fs::read_dir(&object)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["image.png", "record.json"]);
    // a claim for one job cannot store another
    let other = store.try_claim(&js[1].key, &me).unwrap().unwrap();
    assert!(matches!(
        store.complete(other, job, b"x", measurement(1.0)),
        Err(StoreError::WrongJob { .. })
    ));
    // reopening finds the same
    let again = Store::open(dir.path()).unwrap();
    assert_eq!(again.records().unwrap().count(), 1);
}

#[test]
fn crash_between_image_and_record_leaves_no_done_job() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let job = &jobs(1)[0];
    // what a worker killed after writing the image (and a temporary record) leaves
    let ghost = Worker {
        pid: dead_pid(),
        ..Worker::current("ghost")
    };
    let claim = store.try_claim(&job.key, &ghost).unwrap().unwrap();
    std::mem::forget(claim); // killed: no release
    let object = store.object_dir(&job.key);
    std::fs::create_dir_all(&object).unwrap();
    std::fs::write(object.join("image.png"), b"half an image").unwrap();
    std::fs::write(object.join(".tmp-host-1-2-3-record.json"), b"{\"format\":").unwrap();
    assert!(!store.is_done(&job.key));
    assert_eq!(store.records().unwrap().count(), 0);
    let (_, rows) = store.write_manifest(None).unwrap();
    assert_eq!(rows, 0);
    // the dead worker's claim is taken over at once, and the job completes cleanly
    let me = Worker::current("me");
    let claim = store
        .try_claim(&job.key, &me)
        .unwrap()
        .expect("stale claim recovered");
    assert_eq!(claim.info().generation, 1);
    store
        .complete(claim, job, &png_of(&job.key), measurement(1.0))
        .unwrap();
    assert_eq!(
        std::fs::read(store.image_path(&job.key)).unwrap(),
        png_of(&job.key)
    );
    assert!(!object.join(".tmp-host-1-2-3-record.json").exists());
}

#[test]
fn stale_claims_from_other_hosts_wait_for_the_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path())
        .unwrap()
        .with_claim_timeout(Duration::from_millis(1000));
    let js = jobs(2);
    let me = Worker::current("me");
    let remote = Worker {
        host: "node-17".into(),
        ..Worker::current("remote")
    };
    let theirs = store.try_claim(&js[0].key, &remote).unwrap().unwrap();
    // a claim of a live process on this machine: never taken over from here,
    // however old its heartbeat
    let mine = store.try_claim(&js[1].key, &me).unwrap().unwrap();
    assert!(store.try_claim(&js[0].key, &me).unwrap().is_none());
    std::thread::sleep(Duration::from_millis(600));
    theirs.heartbeat().unwrap();
    std::thread::sleep(Duration::from_millis(600));
    assert!(
        store.try_claim(&js[0].key, &me).unwrap().is_none(),
        "heartbeat kept it"
    );
    std::thread::sleep(Duration::from_millis(700));
    let taken = store
        .try_claim(&js[0].key, &me)
        .unwrap()
        .expect("timed out");
    let neighbour = Worker::current("another thread");
    assert!(store.try_claim(&js[1].key, &neighbour).unwrap().is_none());
    // the paused worker finds out and cannot write
    assert!(matches!(
        theirs.heartbeat(),
        Err(StoreError::ClaimLost { .. })
    ));
    assert!(matches!(
        store.complete(theirs, &js[0], b"late", measurement(9.0)),
        Err(StoreError::ClaimLost { .. })
    ));
    assert!(!store.is_done(&js[0].key));
    store
        .complete(taken, &js[0], &png_of(&js[0].key), measurement(1.0))
        .unwrap();
    assert_eq!(store.record(&js[0].key).unwrap().unwrap().worker, "me");
    drop(mine);
}

#[test]
fn keep_alive_refreshes_and_drop_releases() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path())
        .unwrap()
        .with_claim_timeout(Duration::from_millis(1000));
    let job = &jobs(1)[0];
    let remote = Worker {
        host: "node-2".into(),
        ..Worker::current("remote")
    };
    let me = Worker::current("me");
    let claim = store.try_claim(&job.key, &remote).unwrap().unwrap();
    let first = claim.info().heartbeat_unix_ms;
    {
        let _alive = claim.keep_alive(Duration::from_millis(50));
        for _ in 0..8 {
            std::thread::sleep(Duration::from_millis(150));
            assert!(store.try_claim(&job.key, &me).unwrap().is_none());
        }
    }
    assert!(claim.info().heartbeat_unix_ms > first);
    drop(claim); // released, e.g. by a panic unwinding through the runner
    let again = store.try_claim(&job.key, &me).unwrap().expect("released");
    assert_eq!(again.info().generation, 2);
}

#[test]
fn failures_are_recorded_and_retried() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let me = Worker::current("me");
    let js = jobs(3);
    let c = store.try_claim(&js[0].key, &me).unwrap().unwrap();
    let e = store.fail(c, &js[0], "UNet: out of memory").unwrap();
    assert_eq!(e.attempts, 1);
    let c = store.try_claim(&js[0].key, &me).unwrap().expect("retried");
    let e = store.fail(c, &js[0], "UNet: out of memory again").unwrap();
    assert_eq!(e.attempts, 2);
    let failures: Vec<_> = store.failures().unwrap().map(Result::unwrap).collect();
    assert_eq!(failures.len(), 1);
    assert_eq!(failures[0].error, "UNet: out of memory again");
    assert_eq!(failures[0].job, js[0].material);
    let c = store.try_claim(&js[1].key, &me).unwrap().unwrap();
    store
        .complete(c, &js[1], &png_of(&js[1].key), measurement(1.0))
        .unwrap();
    let counts = store.counts(&js);
    assert_eq!((counts.done, counts.failed, counts.todo), (1, 1, 1));
    // a retry that succeeds clears the error
    let c = store.try_claim(&js[0].key, &me).unwrap().unwrap();
    store
        .complete(c, &js[0], &png_of(&js[0].key), measurement(1.0))
        .unwrap();
    assert_eq!(store.failures().unwrap().count(), 0);
    assert!(store.error(&js[0].key).unwrap().is_none());
    assert!(!store.object_dir(&js[0].key).join("error.json").exists());
}

#[test]
fn threads_racing_never_run_a_job_twice() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let js = Arc::new(jobs(60));
    let runs: Arc<Mutex<Vec<(String, usize)>>> = Arc::default();
    let handles: Vec<_> = (0..6)
        .map(|t| {
            let (store, js, runs) = (store.clone(), js.clone(), runs.clone());
            std::thread::spawn(move || {
                let me = Worker::current(format!("thread {t}"));
                // each thread walks the jobs from a different place
                for i in 0..js.len() {
                    let job = &js[(i + t * 10) % js.len()];
                    if let Some(claim) = store.try_claim(&job.key, &me).unwrap() {
                        runs.lock().unwrap().push((job.key.clone(), t));
                        std::thread::sleep(Duration::from_millis(2));
                        store
                            .complete(claim, job, &png_of(&job.key), measurement(0.5))
                            .unwrap();
                    }
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let runs = runs.lock().unwrap();
    let keys: HashSet<&str> = runs.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(runs.len(), js.len(), "every job ran exactly once");
    assert_eq!(keys.len(), js.len());
    assert!(js.iter().all(|j| store.is_done(&j.key)));
    let workers: HashSet<usize> = runs.iter().map(|(_, t)| *t).collect();
    assert!(workers.len() > 1, "the work was shared");
}

// ---------------------------------------------------------------- processes

const CHILD_ENV: &str = "TOMEX_TEST_STORE_CHILD";

/// Not a test on its own: the worker process of the multi-process tests (runs
/// only with `TOMEX_TEST_STORE_CHILD=<store>|<log>|<jobs>|<sleep ms>`).
#[test]
fn store_worker_child() {
    let Ok(arg) = std::env::var(CHILD_ENV) else {
        return;
    };
    let parts: Vec<&str> = arg.split('|').collect();
    let store = Store::open(parts[0]).unwrap();
    let log = Path::new(parts[1]);
    let js = jobs(parts[2].parse().unwrap());
    let sleep = Duration::from_millis(parts[3].parse().unwrap());
    let me = Worker::current(format!("child {}", std::process::id()));
    let offset = std::process::id() as usize % js.len();
    for i in 0..js.len() {
        let job = &js[(i + offset) % js.len()];
        if let Some(claim) = store.try_claim(&job.key, &me).unwrap() {
            append(log, &format!("start {} {}\n", job.key, std::process::id()));
            std::thread::sleep(sleep);
            store
                .complete(claim, job, &png_of(&job.key), measurement(0.1))
                .unwrap();
            append(log, &format!("done {} {}\n", job.key, std::process::id()));
        }
    }
}

fn append(log: &Path, line: &str) {
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(log)
        .unwrap();
    f.write_all(line.as_bytes()).unwrap();
}

fn spawn_child(store: &Path, log: &Path, n: usize, sleep_ms: u64) -> std::process::Child {
    Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "store_worker_child",
            "--test-threads=1",
            "--quiet",
        ])
        .env(
            CHILD_ENV,
            format!("{}|{}|{n}|{sleep_ms}", store.display(), log.display()),
        )
        .stdout(Stdio::null())
        .spawn()
        .unwrap()
}

fn log_lines(log: &Path) -> Vec<(String, String, u32)> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .map(|l| {
            let v: Vec<&str> = l.split(' ').collect();
            (v[0].to_string(), v[1].to_string(), v[2].parse().unwrap())
        })
        .collect()
}

#[test]
fn processes_racing_never_run_a_job_twice() {
    let dir = tempfile::tempdir().unwrap();
    let (root, log) = (dir.path().join("results"), dir.path().join("log"));
    Store::open(&root).unwrap();
    let n = 40;
    let children: Vec<_> = (0..3).map(|_| spawn_child(&root, &log, n, 10)).collect();
    for mut c in children {
        assert!(c.wait().unwrap().success());
    }
    let lines = log_lines(&log);
    let starts: Vec<&String> = lines
        .iter()
        .filter(|l| l.0 == "start")
        .map(|l| &l.1)
        .collect();
    let unique: HashSet<&String> = starts.iter().copied().collect();
    assert_eq!(starts.len(), n, "{lines:?}");
    assert_eq!(unique.len(), n);
    let store = Store::open(&root).unwrap();
    assert_eq!(store.records().unwrap().count(), n);
    let pids: HashSet<u32> = lines.iter().map(|l| l.2).collect();
    assert!(pids.len() > 1, "the work was shared");
}

#[test]
fn kill_9_mid_run_loses_nothing_and_repeats_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (root, log) = (dir.path().join("results"), dir.path().join("log"));
    // a long claim timeout: the dead worker's claim must be seen dead by its pid
    let store = Store::open(&root)
        .unwrap()
        .with_claim_timeout(Duration::from_secs(3600));
    let n = 30;
    let mut child = spawn_child(&root, &log, n, 40);
    // let it finish some jobs, then kill it in the middle of one
    let t0 = Instant::now();
    while log_lines(&log).iter().filter(|l| l.0 == "done").count() < 3 {
        assert!(t0.elapsed() < Duration::from_secs(60), "child too slow");
        std::thread::sleep(Duration::from_millis(5));
    }
    std::thread::sleep(Duration::from_millis(15));
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let child_pid = child.id();
    let before: Vec<String> = js_done(&store, n);
    assert!(!before.is_empty() && before.len() < n);

    // resume in this process
    let me = Worker::current("resume");
    let js = jobs(n);
    let mut rerun = Vec::new();
    for job in &js {
        if let Some(claim) = store.try_claim(&job.key, &me).unwrap() {
            rerun.push(job.key.clone());
            store
                .complete(claim, job, &png_of(&job.key), measurement(0.1))
                .unwrap();
        }
    }
    assert!(js.iter().all(|j| store.is_done(&j.key)), "nothing lost");
    for key in &before {
        assert!(
            !rerun.contains(key),
            "job {key} done before the kill ran again"
        );
        assert_eq!(store.record(key).unwrap().unwrap().pid, child_pid);
    }
    assert_eq!(before.len() + rerun.len(), n);
    // every record is whole, and the logs of done jobs are gone after tidying
    assert_eq!(store.records().unwrap().filter(|r| r.is_ok()).count(), n);
    store.tidy().unwrap();
    assert_eq!(std::fs::read_dir(root.join("claims")).unwrap().count(), 0);
}

fn js_done(store: &Store, n: usize) -> Vec<String> {
    jobs(n)
        .into_iter()
        .filter(|j| store.is_done(&j.key))
        .map(|j| j.key)
        .collect()
}

// ---------------------------------------------------------------- manifest

#[test]
fn manifest_lists_every_stored_job() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let me = Worker::current("me");
    let s = spec(
        "m",
        vec![config("a", SELF, 2, 2), config("b", SELF_CROSS, 1, 2)],
        2,
        64,
    );
    let all = vec!["a cat, \"cute\", 4k".to_string(), "two\nlines".to_string()];
    let mut s = s;
    s.prompts.sample = None;
    s.seeds = SeedSource::Listed(vec![11, 22]);
    s.ratios = vec![0.0, 0.5];
    let p = plan::expand(&s, Some(&model_files()), &all).unwrap();
    assert_eq!(p.len(), 2 + 2 * 2);
    for job in p.jobs().iter().take(4) {
        let c = store.try_claim(&job.key, &me).unwrap().unwrap();
        store
            .complete(c, job, &png_of(&job.key), measurement(1.5))
            .unwrap();
    }
    let (path, rows) = store.write_manifest(None).unwrap();
    assert_eq!(path, dir.path().join("manifest.csv"));
    // r = 0 jobs appear once per configuration that uses them
    assert_eq!(rows, 2 * 2 + 2);
    // read back with the CSV reader the plan's prompts go through
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.starts_with(&tomex::store::record::MANIFEST_COLUMNS.join(",")));
    let column = |name: &str| -> Vec<String> { tomex::spec::read_prompts(&path, name).unwrap() };
    let (keys, images, prompts_, seeds, walls, devices) = (
        column("key"),
        column("image"),
        column("prompt"),
        column("seed"),
        column("wall_s"),
        column("device"),
    );
    assert_eq!(keys.len(), rows);
    for i in 0..rows {
        let key = &keys[i];
        assert_eq!(images[i], format!("objects/{key}/image.png"));
        assert!(dir.path().join(&images[i]).is_file());
        let rec = store.record(key).unwrap().unwrap();
        assert_eq!(prompts_[i], rec.job.prompt);
        assert_eq!(seeds[i], rec.job.seed.to_string());
        assert_eq!(walls[i], "1.5");
        assert_eq!(devices[i], "cpu");
    }
    let (configs, ratios, merges) = (column("config"), column("r"), column("merge"));
    let merged: Vec<(&str, &str, &str)> = (0..rows)
        .map(|i| (configs[i].as_str(), ratios[i].as_str(), merges[i].as_str()))
        .collect();
    assert!(merged.contains(&("a", "0", "none")));
    assert!(merged.contains(&("b", "0", "none")));
    assert!(merged.contains(&("a", "0.5", "self_attn")));
    assert!(prompts_.iter().any(|p| p == "a cat, \"cute\", 4k"));
    assert!(prompts_.iter().any(|p| p == "two\nlines"));

    // the plan's manifest: one row per planned cell that is stored
    let out = dir.path().join("plan.csv");
    let (_, rows) = store.write_manifest_for(&p, Some(&out)).unwrap();
    assert_eq!(rows, 4 + 2);
    let cells: Vec<&Cell> = p.jobs().iter().take(4).flat_map(|j| &j.cells).collect();
    assert_eq!(cells.len(), 6);
}

/// A run writes its own plan's manifest rows and keeps every other spec's: a spec that
/// found its jobs stored is named only in the manifest, not in their records.
#[test]
fn one_specs_manifest_keeps_the_other_specs_rows() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let me = Worker::current("me");
    let all = vec!["a red fox".to_string(), "a blue whale".to_string()];
    let plan_of = |name: &str, ratios: Vec<f64>| {
        let mut s = spec(name, vec![config("a", SELF, 2, 2)], 2, 64);
        s.prompts.sample = None;
        s.seeds = SeedSource::Listed(vec![11, 22]);
        s.ratios = ratios;
        plan::expand(&s, Some(&model_files()), &all).unwrap()
    };
    let run = |p: &Plan| {
        for job in p.jobs() {
            if let Some(c) = store.try_claim(&job.key, &me).unwrap() {
                store
                    .complete(c, job, &png_of(&job.key), measurement(1.5))
                    .unwrap();
            }
        }
        store.write_manifest_for(p, None).unwrap().1
    };
    let rows_of = |spec: &str| -> usize {
        let path = dir.path().join("manifest.csv");
        tomex::spec::read_prompts(&path, "spec")
            .unwrap()
            .iter()
            .filter(|s| *s == spec)
            .count()
    };
    // "first" runs r = 0 and 0.5; "second" shares its r = 0 jobs and adds r = 0.3
    let first = plan_of("first", vec![0.0, 0.5]);
    let second = plan_of("second", vec![0.0, 0.3]);
    assert_eq!(run(&first), 4);
    assert_eq!(run(&second), 4 + 4);
    assert_eq!((rows_of("first"), rows_of("second")), (4, 4));
    // the first spec again: its rows once, the second's kept (its r = 0 rows too,
    // though their records name the first spec's cells only)
    assert_eq!(run(&first), 4 + 4);
    assert_eq!((rows_of("first"), rows_of("second")), (4, 4));
    // a job gone from the store leaves every row that used it
    let shared = &first.jobs()[0];
    assert!(shared.material.tome.is_none());
    std::fs::remove_dir_all(dir.path().join("objects").join(&shared.key)).unwrap();
    store.write_manifest_for(&first, None).unwrap();
    assert_eq!((rows_of("first"), rows_of("second")), (3, 3));
    // without the manifest, the records still name the second spec's own jobs
    std::fs::remove_file(dir.path().join("manifest.csv")).unwrap();
    store.write_manifest_for(&first, None).unwrap();
    assert_eq!((rows_of("first"), rows_of("second")), (3, 2));
}

#[test]
fn drawn_prompts_expand_in_config_r_prompt_order() {
    let s = spec(
        "o",
        vec![config("a", SELF, 2, 2), config("b", SELF_CROSS, 2, 2)],
        2,
        64,
    );
    let drawn = vec![
        DrawnPrompt {
            row: 4,
            text: "x".into(),
            prompt: "x".into(),
            seed: 1,
        },
        DrawnPrompt {
            row: 9,
            text: "y".into(),
            prompt: "y".into(),
            seed: 2,
        },
    ];
    let p = plan::expand_drawn(&s, &ModelIdentity::from_files(&model_files()), &drawn);
    let order: Vec<(f64, &str, usize)> = p
        .jobs()
        .iter()
        .map(|j| (j.cells[0].ratio, j.cells[0].config.as_str(), j.cells[0].row))
        .collect();
    // the shared r = 0 jobs, then each configuration's merged cells, r ascending: one
    // UNet switch per configuration
    let mut expected = Vec::new();
    for (config, ratios) in [("a", &THESIS_RATIOS[..]), ("b", &THESIS_RATIOS[1..])] {
        for &r in ratios {
            expected.extend([(r, config, 4), (r, config, 9)]);
        }
    }
    assert_eq!(order, expected);
}

#[test]
fn rounds_run_every_cell_on_each_share_of_the_prompts_in_turn() {
    let mut s = spec(
        "o",
        vec![config("a", SELF, 2, 2), config("b", SELF_CROSS, 2, 2)],
        4,
        64,
    );
    s.ratios = vec![0.0, 0.5];
    let drawn: Vec<DrawnPrompt> = (0..4)
        .map(|i| DrawnPrompt {
            row: 10 + i,
            text: format!("p{i}"),
            prompt: format!("p{i}"),
            seed: i as u64,
        })
        .collect();
    let model = ModelIdentity::from_files(&model_files());
    let one_round = plan::expand_drawn(&s, &model, &drawn);
    s.rounds = 2;
    let two_rounds = plan::expand_drawn(&s, &model, &drawn);
    let order: Vec<(usize, f64, &str)> = two_rounds
        .jobs()
        .iter()
        .map(|j| {
            let c = &j.cells[0];
            (c.row, c.ratio, c.config.as_str())
        })
        .collect();
    assert_eq!(
        order,
        [
            (10, 0.0, "a"),
            (11, 0.0, "a"),
            (10, 0.5, "a"),
            (11, 0.5, "a"),
            (10, 0.5, "b"),
            (11, 0.5, "b"),
            (12, 0.0, "a"),
            (13, 0.0, "a"),
            (12, 0.5, "a"),
            (13, 0.5, "a"),
            (12, 0.5, "b"),
            (13, 0.5, "b"),
        ]
    );
    // the same jobs with the same cells: only the order moved
    let cells = |p: &plan::Plan| {
        let mut v: Vec<(String, usize)> = p
            .jobs()
            .iter()
            .map(|j| (j.key.clone(), j.cells.len()))
            .collect();
        v.sort();
        v
    };
    assert_eq!(cells(&one_round), cells(&two_rounds));
    // more rounds than prompts: one prompt per round
    s.rounds = 99;
    let rows: Vec<usize> = plan::expand_drawn(&s, &model, &drawn)
        .jobs()
        .iter()
        .map(|j| j.cells[0].row)
        .collect();
    assert_eq!(rows, [10, 10, 10, 11, 11, 11, 12, 12, 12, 13, 13, 13]);
}

#[test]
fn thesis_spec_files_plan_their_job_counts() {
    // the committed specs, with a stand-in for the 80,000-prompt collection
    let all = collection(80_000);
    let expand = |name: &str| {
        let s = tomex::spec::load(&repo().join("specs").join(name))
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        plan::expand(&s, Some(&model_files()), &all).unwrap()
    };
    let four = expand("4_all.toml");
    assert_eq!(four.len(), 1000 * 18);
    assert_eq!(four.cell_count(), 1000 * 20);
    // setups 1 and 2 of experiment 4 are 1.4's images: 1.4 adds no job to 4
    let one_four = expand("1_4_self_cross_repeat.toml");
    assert_eq!(one_four.len(), 1000 * 13);
    let mut merged = four.clone();
    merged.merge(one_four);
    assert_eq!(merged.len(), 18_000);
    // and 1.1 (500 prompts) shares its r = 0 and default-configuration images
    let one_one = expand("1_1_all_components.toml");
    assert_eq!(one_one.len(), 500 * 13);
    merged.merge(one_one);
    assert_eq!(merged.len(), 18_000 + 500 * 6);
}
