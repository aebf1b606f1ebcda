//! FID inside `tomex run` and `tomex report`: the values are the Fréchet distance of the
//! stored sets (checked against the metrics code over the same files, which
//! tests/fid_parity.rs checks against pytorch-fid), set statistics are cached, partial
//! sets are compared prompt for prompt, too-small sets are `n/a` with the reason, the
//! report never generates, and the Inception resolves through models.lock with clear
//! errors. Network: tests/fixtures/inception_tiny.onnx (random weights, machinery only).

mod common;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use tomex::metrics::{frechet_distance, Inception, Statistics};

fn tomex() -> Command {
    common::tomex_command()
}

fn ok(o: Output) -> String {
    common::succeeded(o)
}

fn tiny_inception() -> PathBuf {
    common::repo().join("tests/fixtures/inception_tiny.onnx")
}

/// 4 prompts x r in {0, 0.5}, one configuration, 2 steps: 8 images of 64x64. `inception`
/// is the `[metrics]` line naming the network (none: the default `inception-fid`).
fn write_spec(dir: &Path, inception: Option<&Path>, dims: usize) -> PathBuf {
    let inception = inception.map_or(String::new(), |p| {
        format!("inception = \"{}\"\n", p.display())
    });
    common::write_tiny_spec(
        dir,
        "fidtest",
        r#"name = "fidtest""#,
        &[
            "a red fox",
            "a blue whale",
            "a bowl of soup",
            "mountains at dawn",
        ],
        (64, 2),
        &format!(
            r#"[sweep]
ratios = [0.0, 0.5]
[[configs]]
name = "self"
merge = ["self_attn"]
random = false
[metrics]
fid = true
{inception}fid_dims = {dims}
"#
        ),
    )
}

/// (config, r) -> [(prompt index, image path)] from the store's manifest.
fn stored_sets(store: &Path) -> BTreeMap<(String, String), Vec<(usize, PathBuf)>> {
    #[derive(serde::Deserialize)]
    struct Row {
        config: String,
        r: String,
        prompt_index: usize,
        image: String,
    }
    let text = std::fs::read_to_string(store.join("manifest.csv")).unwrap();
    let mut sets = BTreeMap::<(String, String), Vec<(usize, PathBuf)>>::new();
    for (_, row) in tomex::csv_text::rows::<Row>(&text).unwrap() {
        sets.entry((row.config, row.r))
            .or_default()
            .push((row.prompt_index, store.join(row.image)));
    }
    sets
}

fn fid_csv(path: &Path) -> HashMap<(String, String), f64> {
    #[derive(serde::Deserialize)]
    struct Row {
        config: String,
        r: String,
        fid: f64,
    }
    let text = std::fs::read_to_string(path).unwrap();
    tomex::csv_text::rows::<Row>(&text)
        .unwrap()
        .into_iter()
        .map(|(_, row)| ((row.config, row.r), row.fid))
        .collect()
}

/// The FID of two lists of files by the metrics code (tests/fid_parity.rs ties it to
/// pytorch-fid).
fn fid_of_files(a: &[PathBuf], b: &[PathBuf], dims: usize) -> f64 {
    let runtime = common::runtime();
    let mut net = Inception::load(&runtime, &tiny_inception()).unwrap();
    let mut stats = |files: &[PathBuf]| {
        let f = net.features_of_files(files, dims, 50, &mut |_| {}).unwrap();
        Statistics::from_features(f.view(), "set").unwrap()
    };
    let (sa, sb) = (stats(a), stats(b));
    frechet_distance(&sa, &sb).unwrap()
}

fn rel_err(got: f64, want: f64) -> f64 {
    (got - want).abs() / want.abs().max(1e-300)
}

fn object_count(store: &Path) -> usize {
    std::fs::read_dir(store.join("objects")).unwrap().count()
}

#[test]
fn run_and_report_compute_cache_and_degrade_fid() {
    let dir = tempfile::tempdir().unwrap();
    let spec = write_spec(dir.path(), Some(&tiny_inception()), 192);
    let store = dir.path().join("results");
    let report = store.join("reports/fidtest");

    let out = ok(tomex()
        .args(["run", spec.to_str().unwrap(), "--quiet"])
        .output()
        .unwrap());
    // One r = 0 set and one r = 0.5 set featurised.
    assert!(
        out.contains("FID: 1 of 1 (config, r > 0) values")
            && out.contains("(2 set(s) featurised, 0 from the cache)"),
        "{out}"
    );
    let sets = stored_sets(&store);
    let files = |r: &str| -> Vec<PathBuf> {
        sets[&("self".to_string(), r.to_string())]
            .iter()
            .map(|(_, p)| p.clone())
            .collect()
    };
    let want = fid_of_files(&files("0"), &files("0.5"), 192);
    let got = fid_csv(&report.join("fid.csv"));
    assert_eq!(got[&("self".into(), "0".into())], 0.0);
    let value = got[&("self".into(), "0.5".into())];
    println!("FID in fid.csv {value}, metrics over the same files {want}");
    // The same arithmetic in another image order: equal to round-off.
    assert!(rel_err(value, want) < 1e-9, "{value} vs {want}");
    let md = std::fs::read_to_string(report.join("table.md")).unwrap();
    assert!(
        md.lines()
            .any(|l| l.starts_with("| 50 | ") && !l.contains("n/a")),
        "{md}"
    );
    // Not pytorch-fid's Inception: every place a value appears names the network.
    assert!(md.contains("| FID (inception_tiny.onnx): "), "{md}");
    let tex = std::fs::read_to_string(report.join("table.tex")).unwrap();
    assert!(tex.contains("{FID (inception\\_tiny.onnx)}"), "{tex}");
    let summary = std::fs::read_to_string(report.join("summary.md")).unwrap();
    assert!(
        summary.contains("FID (inception_tiny.onnx) is computed over the features of")
            && summary.contains("never with published FIDs"),
        "{summary}"
    );

    // A report re-renders from the cache: nothing featurised, the same value.
    let out = ok(tomex()
        .args(["report", spec.to_str().unwrap()])
        .output()
        .unwrap());
    assert!(
        out.contains("(0 set(s) featurised, 2 from the cache)"),
        "{out}"
    );
    assert_eq!(fid_csv(&report.join("fid.csv")), got);
    let cached = std::fs::read_dir(store.join("reports/fid-stats"))
        .unwrap()
        .count();
    assert_eq!(cached, 2);

    // An image changed at the same size that still decodes (only its digest tells) in a
    // set that must be featurised: its pair is left out and named, never featurised.
    let mut changed: Vec<(usize, PathBuf)> = sets[&("self".to_string(), "0.5".to_string())].clone();
    changed.sort();
    let (bad_prompt, bad_image) = changed[0].clone();
    let original = std::fs::read(&bad_image).unwrap();
    common::damage_keeping_size(&bad_image);
    std::fs::remove_dir_all(store.join("reports/fid-stats")).unwrap();
    let out = ok(tomex()
        .args(["report", spec.to_str().unwrap()])
        .output()
        .unwrap());
    assert!(
        out.contains("1 stored image(s) do not match their records and are left out")
            && out.contains("over 3 of 4 prompts"),
        "{out}"
    );
    let others = |r: &str| -> Vec<PathBuf> {
        sets[&("self".to_string(), r.to_string())]
            .iter()
            .filter(|(p, _)| *p != bad_prompt)
            .map(|(_, f)| f.clone())
            .collect()
    };
    let want = fid_of_files(&others("0"), &others("0.5"), 192);
    let value = fid_csv(&report.join("fid.csv"))[&("self".into(), "0.5".into())];
    assert!(rel_err(value, want) < 1e-9, "{value} vs {want}");
    std::fs::write(&bad_image, &original).unwrap();

    // Two r = 0.5 images lost: FID over the 2 prompts with both images, against the
    // r = 0 images of those prompts; the report generates nothing.
    let half = &sets[&("self".to_string(), "0.5".to_string())];
    let mut by_prompt: Vec<(usize, PathBuf)> = half.clone();
    by_prompt.sort();
    for (_, image) in &by_prompt[..2] {
        std::fs::remove_file(image.parent().unwrap().join("record.json")).unwrap();
    }
    let objects = object_count(&store);
    let out = ok(tomex()
        .args(["report", spec.to_str().unwrap()])
        .output()
        .unwrap());
    assert_eq!(object_count(&store), objects);
    assert!(out.contains("over 2 of 4 prompts"), "{out}");
    let kept: Vec<usize> = by_prompt[2..].iter().map(|(p, _)| *p).collect();
    let pick = |r: &str| -> Vec<PathBuf> {
        sets[&("self".to_string(), r.to_string())]
            .iter()
            .filter(|(p, _)| kept.contains(p))
            .map(|(_, f)| f.clone())
            .collect()
    };
    let want = fid_of_files(&pick("0"), &pick("0.5"), 192);
    let value = fid_csv(&report.join("fid.csv"))[&("self".into(), "0.5".into())];
    assert!(rel_err(value, want) < 1e-9, "{value} vs {want}");
    let summary = std::fs::read_to_string(report.join("summary.md")).unwrap();
    assert!(summary.contains("over 2 of 4 prompts"), "{summary}");

    // One more lost: 1 pair, no value, the reason in the summary and on the console.
    std::fs::remove_file(by_prompt[2].1.parent().unwrap().join("record.json")).unwrap();
    let out = ok(tomex()
        .args(["report", spec.to_str().unwrap()])
        .output()
        .unwrap());
    assert!(out.contains("FID: 0 of 1"), "{out}");
    assert!(out.contains("FID needs at least 2"), "{out}");
    let fid = fid_csv(&report.join("fid.csv"));
    assert!(!fid.contains_key(&("self".into(), "0.5".into())), "{fid:?}");
    let summary = std::fs::read_to_string(report.join("summary.md")).unwrap();
    assert!(
        summary.contains("## FID")
            && summary.contains("1 of 4 prompts have both the r > 0 image and its r = 0 twin stored; FID needs at least 2"),
        "{summary}"
    );
    let md = std::fs::read_to_string(report.join("table.md")).unwrap();
    assert!(md.lines().any(|l| l.starts_with("| 50 | n/a |")), "{md}");
}

#[test]
fn an_unregistered_inception_is_a_clear_error_before_generating() {
    let dir = tempfile::tempdir().unwrap();
    let spec = write_spec(dir.path(), None, 64);
    let lock = dir.path().join("models.lock");
    ok(tomex()
        .arg("models")
        .arg("add")
        .arg("tiny")
        .arg(common::tiny_model())
        .args(["--source", "test", "--lock"])
        .arg(&lock)
        .output()
        .unwrap());
    let out = tomex()
        .args(["run", spec.to_str().unwrap(), "--quiet", "--lock"])
        .arg(&lock)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    for want in [
        "fidtest.toml:",
        "metrics.inception: the FID Inception `inception-fid` is not registered in",
        "tools/export_inception.py --weights pt_inception-2015-12-05-6726825d.pth",
        "tomex models add inception-fid models/inception/pt_inception.onnx",
        "[metrics] fid = false",
    ] {
        assert!(stderr.contains(want), "missing `{want}` in:\n{stderr}");
    }
    assert!(
        !dir.path().join("results/objects").exists()
            || object_count(&dir.path().join("results")) == 0,
        "nothing may be generated"
    );

    // tomex report renders without FID, says why, and fails.
    let out = tomex()
        .args(["report", spec.to_str().unwrap(), "--lock"])
        .arg(&lock)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let summary =
        std::fs::read_to_string(dir.path().join("results/reports/fidtest/summary.md")).unwrap();
    assert!(summary.contains("FID not computed:"), "{summary}");
    assert!(summary.contains("is not registered"), "{summary}");
}

#[test]
fn a_registered_inception_resolves_through_the_lock_and_is_verified() {
    let dir = tempfile::tempdir().unwrap();
    let spec = write_spec(dir.path(), None, 64);
    let lock = dir.path().join("models.lock");
    let net_dir = dir.path().join("inception");
    std::fs::create_dir_all(&net_dir).unwrap();
    let net = net_dir.join("pt_inception.onnx");
    std::fs::copy(tiny_inception(), &net).unwrap();
    let out = ok(tomex()
        .args(["models", "add", "inception-fid"])
        .arg(&net)
        .args([
            "--source",
            "tools/export_inception.py --tiny --random-seed 0",
            "--lock",
        ])
        .arg(&lock)
        .output()
        .unwrap());
    assert!(out.contains("inception-fid: 1 files recorded"), "{out}");
    let text = std::fs::read_to_string(&lock).unwrap();
    assert!(text.contains("[models.inception-fid]"), "{text}");
    assert!(text.contains("path = \"inception\""), "{text}");
    assert!(text.contains("\"pt_inception.onnx\" = \"sha256:"), "{text}");
    // Anything else is not a network.
    let out = tomex()
        .args(["models", "add", "x"])
        .arg(dir.path().join("prompts.csv"))
        .args(["--source", "s", "--lock"])
        .arg(&lock)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("is a file but not an .onnx network"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let out = ok(tomex()
        .args(["run", spec.to_str().unwrap(), "--quiet", "--lock"])
        .arg(&lock)
        .output()
        .unwrap());
    assert!(out.contains("FID: 1 of 1 (config, r > 0) values"), "{out}");
    let fid = fid_csv(&dir.path().join("results/reports/fidtest/fid.csv"));
    assert!(fid[&("self".into(), "0.5".into())].is_finite());
    // Registered as pytorch-fid's Inception: plain "FID", and the summary says over what.
    let md = std::fs::read_to_string(dir.path().join("results/reports/fidtest/table.md")).unwrap();
    assert!(md.contains("| FID: "), "{md}");
    let summary =
        std::fs::read_to_string(dir.path().join("results/reports/fidtest/summary.md")).unwrap();
    assert!(
        summary.contains("FID over the features of `inception-fid` (pytorch-fid's Inception)"),
        "{summary}"
    );

    // `tomex fid` takes the lock name too.
    let out = ok(tomex()
        .arg("fid")
        .arg(common::golden("fid/images/a"))
        .arg(common::golden("fid/images/b"))
        .args(["--dims", "64", "--inception", "inception-fid", "--lock"])
        .arg(&lock)
        .output()
        .unwrap());
    assert!(out.starts_with("FID:  "), "{out}");

    // A changed network no longer matches the lock: named, and the report still renders.
    std::fs::write(&net, b"not the registered network").unwrap();
    let out = tomex()
        .args(["report", spec.to_str().unwrap(), "--lock"])
        .arg(&lock)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("the FID Inception `inception-fid` does not match")
            && stderr.contains("pt_inception.onnx: wrong digest"),
        "{stderr}"
    );
    assert!(dir
        .path()
        .join("results/reports/fidtest/table.md")
        .is_file());
    let out = tomex()
        .arg("fid")
        .arg(common::golden("fid/images/a"))
        .arg(common::golden("fid/images/b"))
        .args(["--inception", "inception-fid", "--lock"])
        .arg(&lock)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("model `inception-fid` does not match"),
        "{stderr}"
    );
}
