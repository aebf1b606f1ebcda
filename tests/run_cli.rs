//! `tomex run` and `tomex plan` end to end on the tiny model: resume after `kill -9`,
//! concurrent workers, shards, and plans of the thesis specs without their model.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

fn tomex() -> Command {
    common::tomex_command()
}

/// A spec of 12 jobs (6 prompts x r in {0, 0.5}) on the tiny model, in `dir`.
fn write_spec(dir: &Path, width: usize, steps: usize) -> PathBuf {
    common::write_tiny_spec(
        dir,
        "test",
        r#"name = "test""#,
        &[
            "a red fox",
            "a blue whale",
            "\"a city, at night\"",
            "a bowl of soup",
            "mountains",
            "a clock",
        ],
        (width, steps),
        r#"[sweep]
ratios = [0.0, 0.5]
[[configs]]
name = "self"
merge = ["self_attn"]
random = false
[metrics]
fid = false
"#,
    )
}

fn run(spec: &Path, extra: &[&str]) -> Output {
    tomex()
        .arg("run")
        .arg(spec)
        .arg("--quiet")
        .args(extra)
        .output()
        .unwrap()
}

fn spawn(spec: &Path, extra: &[&str]) -> Child {
    tomex()
        .arg("run")
        .arg(spec)
        .arg("--quiet")
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn stdout(o: &Output) -> String {
    common::succeeded(o.clone())
}

/// `N generated` out of a run's summary line.
fn generated(out: &str) -> usize {
    let before = out.split(" generated").next().unwrap();
    before.rsplit(' ').next().unwrap().parse().unwrap()
}

fn records(store: &Path) -> Vec<serde_json::Value> {
    let Ok(dirs) = std::fs::read_dir(store.join("objects")) else {
        return vec![];
    };
    dirs.filter_map(|d| std::fs::read_to_string(d.unwrap().path().join("record.json")).ok())
        .map(|t| serde_json::from_str(&t).unwrap())
        .collect()
}

#[test]
fn a_second_run_does_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let spec = write_spec(dir.path(), 64, 4);
    let first = stdout(&run(&spec, &[]));
    assert!(
        first.contains("12 jobs: 12 generated, 0 already stored"),
        "{first}"
    );
    let second = stdout(&run(&spec, &[]));
    assert!(
        second.contains("12 jobs: 0 generated, 12 already stored"),
        "{second}"
    );
    let store = dir.path().join("results");
    assert_eq!(records(&store).len(), 12);
    let manifest = std::fs::read_to_string(store.join("manifest.csv")).unwrap();
    assert_eq!(
        manifest.lines().count(),
        1 + 12,
        "header + one row per cell"
    );
}

/// `[generation] precision = "fp16"` makes images of its own (the precision is in
/// the key), recorded as such; `--precision` cannot overrule the spec.
#[test]
fn half_precision_is_a_spec_setting_with_its_own_keys() {
    let dir = tempfile::tempdir().unwrap();
    let spec = write_spec(dir.path(), 64, 2);
    assert!(stdout(&run(&spec, &[])).contains("12 jobs: 12 generated"));
    let text = std::fs::read_to_string(&spec).unwrap();
    std::fs::write(
        &spec,
        text.replace("steps = 2\n", "steps = 2\nprecision = \"fp16\"\n"),
    )
    .unwrap();
    let half = stdout(&run(&spec, &[]));
    assert!(
        half.contains("12 jobs: 12 generated, 0 already stored"),
        "{half}"
    );
    let all = records(&dir.path().join("results"));
    let fp16 = all
        .iter()
        .filter(|r| r["job"]["precision"] == "fp16")
        .count();
    assert_eq!((all.len(), fp16), (24, 12));

    let report = tomex().arg("report").arg(&spec).output().unwrap();
    common::succeeded(report);
    let summary =
        std::fs::read_to_string(dir.path().join("results/reports/test/summary.md")).unwrap();
    assert!(summary.contains("the UNet computed in fp16"), "{summary}");

    let refused = run(&spec, &["--precision", "fp32"]);
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success());
    assert!(
        err.contains("--precision fp32 contradicts") && err.contains("test.toml"),
        "{err}"
    );
}

#[test]
fn resumes_after_kill_9_with_nothing_lost_or_done_twice() {
    let dir = tempfile::tempdir().unwrap();
    let spec = write_spec(dir.path(), 128, 12);
    let store = dir.path().join("results");
    let mut child = spawn(&spec, &[]);
    let first_pid = child.id() as u64;
    let start = Instant::now();
    while records(&store).len() < 3 {
        assert!(start.elapsed() < Duration::from_secs(300), "no progress");
        assert!(
            child.try_wait().unwrap().is_none(),
            "the run finished before it could be killed"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let before = records(&store).len();
    assert!(before < 12, "killed too late to test anything");

    let out = stdout(&run(&spec, &[]));
    let after = records(&store);
    assert_eq!(after.len(), 12, "nothing lost");
    let by_first = after
        .iter()
        .filter(|r| r["pid"].as_u64() == Some(first_pid))
        .count();
    assert_eq!(by_first, before, "the killed run's records are kept");
    assert_eq!(generated(&out), 12 - before, "nothing done twice: {out}");
}

#[test]
fn two_workers_on_one_store_never_run_the_same_job() {
    let dir = tempfile::tempdir().unwrap();
    let spec = write_spec(dir.path(), 96, 8);
    let a = spawn(&spec, &[]);
    let b = spawn(&spec, &[]);
    let (pa, pb) = (a.id() as u64, b.id() as u64);
    let (oa, ob) = (
        stdout(&a.wait_with_output().unwrap()),
        stdout(&b.wait_with_output().unwrap()),
    );
    let (ga, gb) = (generated(&oa), generated(&ob));
    assert_eq!(ga + gb, 12, "each job generated once:\n{oa}\n{ob}");
    // Each worker's summary accounts for every job once.
    for out in [&oa, &ob] {
        let line = out.lines().find(|l| l.contains(" jobs: ")).unwrap();
        let counts: Vec<usize> = line
            .split(" jobs: ")
            .nth(1)
            .unwrap()
            .split(", ")
            .map(|part| part.split(' ').next().unwrap().parse().unwrap())
            .collect();
        assert_eq!(counts.len(), 5, "{line}");
        assert_eq!(counts.iter().sum::<usize>(), 12, "{line}");
    }
    let recs = records(&dir.path().join("results"));
    assert_eq!(recs.len(), 12);
    assert_eq!(
        recs.iter()
            .filter(|r| r["pid"].as_u64() == Some(pa))
            .count(),
        ga
    );
    assert_eq!(
        recs.iter()
            .filter(|r| r["pid"].as_u64() == Some(pb))
            .count(),
        gb
    );
}

#[test]
fn shards_cover_every_job_once() {
    let dir = tempfile::tempdir().unwrap();
    let spec = write_spec(dir.path(), 64, 2);
    let outs: Vec<String> = (0..3)
        .map(|i| stdout(&run(&spec, &["--shard", &format!("{i}/3")])))
        .collect();
    assert_eq!(
        outs.iter().map(|o| generated(o)).sum::<usize>(),
        12,
        "{outs:?}"
    );
    assert!(outs.iter().all(|o| generated(o) == 4), "{outs:?}");
    let last = stdout(&run(&spec, &[]));
    assert_eq!(generated(&last), 0, "{last}");
    let slurm = tomex()
        .args(["run", spec.to_str().unwrap(), "--quiet"])
        .env("SLURM_ARRAY_TASK_ID", "1")
        .env("SLURM_ARRAY_TASK_COUNT", "3")
        .output()
        .unwrap();
    assert!(
        stdout(&slurm).contains("(shard 1/3): 4 jobs"),
        "{}",
        String::from_utf8_lossy(&slurm.stdout)
    );
}

#[test]
fn plan_says_how_many_rounds_a_spec_runs() {
    let out = stdout(
        &tomex()
            .args(["plan", "specs/demo.toml", "--store", "/nonexistent-store"])
            .output()
            .unwrap(),
    );
    assert!(
        out.contains("jobs: 1152 unique for 1280 cells (3 configurations x 7 ratios x 64 prompts, r = 0 shared), in 16 rounds (sweep.rounds)"),
        "{out}"
    );
}

#[test]
fn plan_counts_every_thesis_spec_without_the_model() {
    let specs = common::repo().join("specs");
    let mut seen = 0;
    for entry in std::fs::read_dir(&specs).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        // smoke and demo specs run embedded models or test fixtures, which are here
        if !name.ends_with(".toml")
            || name.ends_with("smoke.toml")
            || name.starts_with("demo")
            || name.starts_with("base")
        {
            continue;
        }
        let out = tomex()
            .args([
                "plan",
                path.to_str().unwrap(),
                "--store",
                "/nonexistent-store",
            ])
            .output()
            .unwrap();
        let text = stdout(&out);
        assert!(
            text.contains("is not in") && text.contains("provisional"),
            "{name}: {text}"
        );
        assert!(text.contains("jobs: "), "{name}: {text}");
        seen += 1;
    }
    assert!(seen >= 7, "only {seen} thesis specs");
    let out = stdout(
        &tomex()
            .args(["plan", "specs/4_all.toml", "--store", "/nonexistent-store"])
            .output()
            .unwrap(),
    );
    assert!(out.contains("jobs: 18000 unique for 20000 cells"), "{out}");
}

#[test]
fn a_bad_spec_names_file_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let spec = write_spec(dir.path(), 64, 2);
    let text = std::fs::read_to_string(&spec)
        .unwrap()
        .replace("steps = 2", "stepz = 2");
    std::fs::write(&spec, text).unwrap();
    let out = run(&spec, &[]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("test.toml:8:1: generation.stepz: unknown key `stepz`; did you mean `steps`?"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
}

/// Rows of a CSV file with a header, as maps from column to value.
fn csv_rows(path: &Path) -> Vec<std::collections::HashMap<String, String>> {
    let text = std::fs::read_to_string(path).unwrap();
    tomex::csv_text::rows(&text)
        .unwrap()
        .into_iter()
        .map(|(_, row)| row)
        .collect()
}

#[test]
fn smoke_spec_ends_with_fid_figure_table_grids_and_summaries() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let out = stdout(&run(
        Path::new("specs/smoke.toml"),
        &["--store", store.to_str().unwrap()],
    ));
    assert!(out.contains("20 jobs: 20 generated"), "{out}");
    assert!(out.contains("FID: 4 of 4 (config, r > 0) values"), "{out}");
    let report = store.join("reports/smoke");
    for f in [
        "fid.csv",
        "figure.png",
        "figure.svg",
        "table.md",
        "table.csv",
        "table.tex",
        "results.csv",
        "grid_self.png",
        "grid_self_cross_1x2.png",
        "summary.md",
    ] {
        assert!(report.join(f).is_file(), "no {f}");
    }
    // Stored images per (config, r), from the manifest.
    let mut stored = std::collections::BTreeMap::<(String, String), usize>::new();
    for row in csv_rows(&store.join("manifest.csv")) {
        if row["spec"] == "smoke" {
            *stored
                .entry((row["config"].clone(), row["r"].clone()))
                .or_default() += 1;
        }
    }
    let fid: std::collections::BTreeMap<(String, String), f64> = csv_rows(&report.join("fid.csv"))
        .into_iter()
        .map(|r| {
            (
                (r["config"].clone(), r["r"].clone()),
                r["fid"].parse().unwrap(),
            )
        })
        .collect();
    let mut checked = 0;
    for ((config, r), n) in &stored {
        if r != "0" && *n >= 2 {
            let v = fid
                .get(&(config.clone(), r.clone()))
                .unwrap_or_else(|| panic!("no FID for {config} r = {r}: {fid:?}"));
            assert!(v.is_finite(), "{config} r = {r}: {v}");
            checked += 1;
        }
    }
    assert_eq!(checked, 4, "{stored:?}");
    let md = std::fs::read_to_string(report.join("table.md")).unwrap();
    assert!(
        !md.contains("n/a"),
        "every FID and time cell has a value:\n{md}"
    );
}

/// specs/sdxl_smoke.toml on the tiny SDXL export: `plan`, `run` and `generate` say that
/// tomesd's default merges nothing on SDXL (no transformer block at the full-resolution
/// level) and name the max_downsample that would; the run completes every job and its
/// FID and report.
#[test]
fn sdxl_smoke_spec_runs_and_names_the_configuration_that_merges_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let repo = common::repo();
    let spec_text = std::fs::read_to_string(repo.join("specs/sdxl_smoke.toml"))
        .unwrap()
        .replace(r#"store = "../results""#, r#"store = "store""#)
        .replace("\"../tests/", &format!("\"{}/tests/", repo.display()))
        .replace(
            "\"prompts/smoke.csv\"",
            &format!("\"{}/specs/prompts/smoke.csv\"", repo.display()),
        );
    let spec = dir.path().join("sdxl_smoke.toml");
    std::fs::write(&spec, spec_text).unwrap();
    let warning = "merges nothing at a 16x16 latent: no transformer block at downsample <= 1; use max_downsample = 2";

    let plan = tomex().arg("plan").arg(&spec).output().unwrap();
    let plan_err = String::from_utf8_lossy(&plan.stderr).to_string();
    let plan_out = stdout(&plan);
    assert!(
        plan_err.contains(&format!("configuration `default_md1` {warning}")),
        "{plan_err}"
    );
    assert!(!plan_err.contains("self_md2"), "{plan_err}");
    assert!(plan_out.contains("to run: 12"), "{plan_out}");

    let out = run(&spec, &[]);
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    let text = stdout(&out);
    assert!(
        err.contains(&format!("default_md1, r = 0.5 {warning}")),
        "{err}"
    );
    assert!(text.contains("12 jobs: 12 generated"), "{text}");
    assert!(text.contains("FID: 2 of 2"), "{text}");

    let png = dir.path().join("xl.png");
    let gen = tomex()
        .args(["generate", "--model"])
        .arg(repo.join("tests/fixtures/tiny_sdxl"))
        .args(["--prompt", "a red circle", "--seed", "1", "--steps", "3"])
        .args(["--tome-ratio", "0.5", "--out"])
        .arg(&png)
        .output()
        .unwrap();
    let gen_err = String::from_utf8_lossy(&gen.stderr).to_string();
    common::succeeded(gen);
    assert!(
        gen_err.contains(&format!("--tome-ratio 0.5 {warning}")),
        "{gen_err}"
    );
    assert_eq!(
        image::open(&png).unwrap().to_rgb8().dimensions(),
        (128, 128)
    );
}

/// `tomex run SPEC | head -1`: a closed stdout ends nothing; the run still stores
/// every image and writes its report, exits 0, and panics nowhere.
#[test]
fn a_closed_stdout_ends_quietly_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let spec = write_spec(dir.path(), 32, 2);
    let mut child = tomex()
        .arg("run")
        .arg(&spec)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take()); // the reader goes away before the first line
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(records(&dir.path().join("results")).len(), 12);
    assert!(dir.path().join("results/reports/test/summary.md").is_file());
}
