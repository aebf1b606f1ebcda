//! The paired-metric and memory summary (Markdown): per configuration and r,
//! PSNR and SSIM against the r = 0 twin (mean and worst), peak memory, the worst
//! prompts, the grids' keys, and what is missing.

use std::fmt::Write;

use super::markdown::escape;
use super::model::{ratio_pct, ReportModel};

fn opt(v: Option<f64>, digits: usize) -> String {
    match v {
        Some(v) if v.is_infinite() => "∞".into(),
        Some(v) => format!("{v:.digits$}"),
        None => "n/a".into(),
    }
}

fn mib(bytes: Option<f64>) -> String {
    bytes.map_or("n/a".into(), |b| format!("{:.0}", b / (1024.0 * 1024.0)))
}

/// The summary of `model` as Markdown.
pub fn summary_markdown(model: &ReportModel) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "# {}\n", escape(&model.title));
    let planned: usize = model.cells.iter().map(|c| c.planned).sum();
    let done: usize = model.cells.iter().map(|c| c.done).sum();
    let _ = writeln!(
        out,
        "Spec `{}`: {done} of {planned} planned image cells stored{}.\n",
        model.name,
        if model.is_complete() {
            ""
        } else {
            " (partial results: the tables show what exists)"
        }
    );
    for note in &model.notes {
        let _ = writeln!(out, "* {}", escape(note));
    }
    if let Some(network) = &model.fid_network {
        let _ = writeln!(out, "* {}", escape(&fid_network_note(model, network)));
    }
    if !model.notes.is_empty() {
        out.push('\n');
    }

    let _ = writeln!(out, "## Paired metrics and memory\n");
    let _ = writeln!(
        out,
        "Each r > 0 image against its r = 0 twin (same prompt and seed). PSNR in dB \
         (data range 255); SSIM as Wang et al. 2004 (Gaussian window σ 1.5, 11 taps, \
         K1 0.01, K2 0.03, mean over RGB; skimage's `structural_similarity(channel_axis=2, \
         gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255)`). \
         Worst = lowest. Memory: mean peak per image, MiB.\n"
    );
    out.push_str(
        "| config | r% | images | s/im | PSNR mean | PSNR worst | SSIM mean | SSIM worst | host MiB | device MiB |\n",
    );
    out.push_str("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for c in &model.cells {
        if !c.possible {
            let _ = writeln!(
                out,
                "| {} | {} | - | - | - | - | - | - | - | - |",
                escape(&label(model, &c.config)),
                ratio_pct(c.ratio)
            );
            continue;
        }
        let _ = writeln!(
            out,
            "| {} | {} | {}/{} | {} | {} | {} | {} | {} | {} | {} |",
            escape(&label(model, &c.config)),
            ratio_pct(c.ratio),
            c.done,
            c.planned,
            opt(c.s_per_image, 2),
            opt(c.psnr.map(|m| m.mean), 2),
            opt(c.psnr.map(|m| m.worst), 2),
            opt(c.ssim.map(|m| m.mean), 4),
            opt(c.ssim.map(|m| m.worst), 4),
            mib(c.peak_host_bytes),
            mib(c.peak_device_bytes),
        );
    }

    let _ = writeln!(out, "\n## Worst prompts\n");
    let mut any = false;
    for c in model.cells.iter().filter(|c| !c.worst.is_empty()) {
        any = true;
        let _ = writeln!(
            out,
            "* {} at r = {}%:",
            escape(&label(model, &c.config)),
            ratio_pct(c.ratio)
        );
        for w in &c.worst {
            let _ = writeln!(
                out,
                "  * prompt {} (seed {}): SSIM {:.4}, PSNR {}: {}",
                w.prompt_index,
                w.seed,
                w.ssim,
                opt(Some(w.psnr), 2),
                escape(&w.prompt)
            );
        }
    }
    if !any {
        out.push_str("None yet: no r > 0 image with its r = 0 twin is stored.\n");
    }

    if !model.grids.is_empty() {
        let _ = writeln!(out, "\n## Image grids\n");
        for g in &model.grids {
            let cols: Vec<String> = g
                .ratios
                .iter()
                .map(|r| format!("{}%", ratio_pct(*r)))
                .collect();
            let _ = writeln!(
                out,
                "* `grid_{}.png`: columns r = {}; rows:",
                g.config,
                cols.join(", ")
            );
            for (i, p) in &g.prompts {
                let _ = writeln!(out, "  * prompt {i}: {}", escape(p));
            }
        }
        out.push_str("\nGrey tiles: images not stored yet.\n");
    }

    if !model.missing.is_empty() {
        let _ = writeln!(
            out,
            "\n## Missing ({} images, {} table cells)\n",
            model.missing_images(),
            model.missing.len()
        );
        for m in &model.missing {
            let _ = writeln!(
                out,
                "* {} r = {}% prompt {}: {} (`{}`)",
                escape(&label(model, &m.config)),
                ratio_pct(m.ratio),
                m.prompt_index,
                escape(&m.status),
                m.key
            );
        }
    }
    let fid_missing = model
        .cells
        .iter()
        .filter(|c| c.possible && c.fid.is_none())
        .count();
    if fid_missing > 0 || !model.fid_notes.is_empty() {
        let _ = writeln!(out, "\n## FID\n");
        if fid_missing > 0 {
            let _ = writeln!(
                out,
                "{fid_missing} (config, r) value(s) not computed (`n/a`).\n"
            );
        }
        for note in &model.fid_notes {
            let _ = writeln!(out, "* {}", escape(note));
        }
    }
    out
}

/// Which network the FIDs come from, and, when it is not pytorch-fid's Inception, that
/// they compare only with FIDs over the same network.
fn fid_network_note(model: &ReportModel, network: &str) -> String {
    if model.fid_label() == "FID" {
        format!("FID over the features of `{network}` (pytorch-fid's Inception)")
    } else {
        format!(
            "{} is computed over the features of `{network}`, not pytorch-fid's Inception: \
             its values compare only with FIDs over the same network, never with published FIDs",
            model.fid_label()
        )
    }
}

fn label(model: &ReportModel, config: &str) -> String {
    model
        .configs
        .iter()
        .find(|c| c.name == config)
        .map_or(config.to_string(), |c| c.label.clone())
}
