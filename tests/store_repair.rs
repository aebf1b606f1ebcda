//! A store damaged from outside: `plan` and `run` treat damaged objects as not stored
//! (one warning line each) and regenerate them byte-identical; a deleted object is
//! regenerated although its claim log says completed; an image changed at the same size
//! passes `plan`'s cheap checks but not the digest `run` and `tomex store verify` check,
//! and `verify --repair` makes the store consistent, so that the next run regenerates
//! exactly what was lost.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Output;

fn spec(dir: &Path) -> PathBuf {
    common::write_tiny_spec(
        dir,
        "repair",
        r#"name = "repair""#,
        &["a red fox", "a blue whale", "a bowl of soup"],
        (32, 2),
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

fn tomex(args: &[&str], spec_or_store: &Path) -> Output {
    common::tomex_command()
        .args(args)
        .arg(spec_or_store)
        .output()
        .unwrap()
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).to_string(),
        String::from_utf8_lossy(&o.stderr).to_string(),
    )
}

/// Every object's image bytes, by key.
fn images(store: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(store.join("objects"))
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let image = std::fs::read(e.path().join("image.png")).ok()?;
            Some((e.file_name().to_string_lossy().to_string(), image))
        })
        .collect()
}

#[test]
fn a_damaged_store_is_found_repaired_and_regenerated_byte_identical() {
    let dir = tempfile::tempdir().unwrap();
    let spec = spec(dir.path());
    let store = dir.path().join("results");
    let first = tomex(&["run", "--quiet"], &spec);
    assert!(first.status.success(), "{:?}", text(&first));
    let before = images(&store);
    assert_eq!(before.len(), 6);
    let keys: Vec<&String> = before.keys().collect();
    let object = |i: usize| store.join("objects").join(keys[i]);

    // Damage from outside: a truncated record, garbage of another size in place of an
    // image, a deleted object, an image changed at the same size.
    let record = object(0).join("record.json");
    let bytes = std::fs::read(&record).unwrap();
    std::fs::write(&record, &bytes[..bytes.len() / 2]).unwrap();
    std::fs::write(object(1).join("image.png"), b"not a png at all").unwrap();
    std::fs::remove_dir_all(object(2)).unwrap();
    let mut same_size = before[keys[3]].clone();
    let n = same_size.len();
    same_size[n - 20] ^= 0xff;
    std::fs::write(object(3).join("image.png"), &same_size).unwrap();

    // plan: one line per damaged object; 3 to run (the same-size change passes plan's
    // cheap checks).
    let (out, err) = text(&tomex(&["plan"], &spec));
    assert!(
        err.contains(&format!(
            "objects/{} is damaged (record.json does not parse",
            keys[0]
        )),
        "{err}"
    );
    assert!(
        err.contains(&format!(
            "objects/{} is damaged (image.png is not a PNG)",
            keys[1]
        )),
        "{err}"
    );
    assert_eq!(err.matches("is damaged").count(), 2, "{err}");
    assert!(out.contains("to run: 3"), "{out}");

    // verify finds all four and the completed claim of the deleted object; exit 1.
    let verify = tomex(&["store", "verify"], &store);
    let (out, _) = text(&verify);
    assert_eq!(verify.status.code(), Some(1), "{out}");
    assert!(out.contains("digest"), "{out}");
    assert!(out.contains("its claim log says completed"), "{out}");
    assert!(out.contains("4 problem(s)"), "{out}");

    // run: the three damaged objects (the same-size change found by its digest) and the
    // deleted one are regenerated, byte-identical, with the damage moved aside; the
    // cached FID statistics, which may hold a damaged image, are dropped.
    let stats = store.join("reports/fid-stats");
    std::fs::create_dir_all(&stats).unwrap();
    std::fs::write(stats.join("0123.npz"), b"a cached set").unwrap();
    let second = tomex(&["run", "--quiet"], &spec);
    let (out, err) = text(&second);
    assert!(second.status.success(), "{out}\n{err}");
    assert!(
        out.contains("6 jobs: 4 generated, 2 already stored"),
        "{out}"
    );
    assert_eq!(err.matches("is damaged").count(), 3, "{err}");
    assert!(
        err.contains(&format!(
            "objects/{} is damaged (image.png's digest",
            keys[3]
        )),
        "{err}"
    );
    assert!(out.contains("report: "), "{out}\n{err}");
    assert_eq!(
        std::fs::read_dir(store.join("damaged")).unwrap().count(),
        3,
        "every damaged object kept aside"
    );
    assert!(
        !stats.join("0123.npz").exists(),
        "cached statistics dropped"
    );
    assert_eq!(
        images(&store),
        before,
        "every image as the first run made it"
    );
    let clean = tomex(&["store", "verify"], &store);
    let (out, _) = text(&clean);
    assert!(clean.status.success(), "{out}");
    assert!(out.contains("6 objects, 6 intact, 0 problem(s)"), "{out}");

    // verify --repair does the same without a run: it moves a same-size change aside,
    // and the next run regenerates it.
    std::fs::write(object(3).join("image.png"), &same_size).unwrap();
    let repair = tomex(&["store", "verify", "--repair"], &store);
    let (out, _) = text(&repair);
    assert!(repair.status.success(), "{out}");
    assert!(out.contains(&format!("objects/{}", keys[3])), "{out}");
    assert!(out.contains("1 problem(s); repaired"), "{out}");
    let third = tomex(&["run", "--quiet"], &spec);
    let (out, _) = text(&third);
    assert!(
        out.contains("6 jobs: 1 generated, 5 already stored"),
        "{out}"
    );
    assert_eq!(images(&store), before);

    // Cached FID statistics: verify names an unreadable file and --repair removes it;
    // once --repair moves an image aside, readable statistics go too (they may hold it).
    std::fs::write(stats.join("0456.npz"), b"not an npz").unwrap();
    let found = tomex(&["store", "verify"], &store);
    let (out, _) = text(&found);
    assert_eq!(found.status.code(), Some(1), "{out}");
    assert!(out.contains("0456.npz: unreadable FID statistics"), "{out}");
    let repair = tomex(&["store", "verify", "--repair"], &store);
    assert!(repair.status.success(), "{:?}", text(&repair));
    assert!(!stats.join("0456.npz").exists());
    let readable = stats.join("0789.npz");
    std::fs::copy(common::golden("fid").join("stats_a_64.npz"), &readable).unwrap();
    std::fs::write(object(3).join("image.png"), &same_size).unwrap();
    let repair = tomex(&["store", "verify", "--repair"], &store);
    let (out, _) = text(&repair);
    assert!(out.contains("1 problem(s); repaired"), "{out}");
    assert!(
        !readable.exists(),
        "statistics dropped after an image was repaired"
    );
}
