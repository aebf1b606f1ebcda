//! The FID step as `tomex run` and `tomex report` show it: progress on stderr, a one-line
//! result, and the notes the report's summary carries.

use std::path::Path;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::engine::Runtime;
use crate::runner::fid::{measure_fid, FidObserver, InceptionSource};
use crate::runner::Prepared;
use crate::store::Store;

/// Runs the FID step; returns the notes for the summary and the error that stopped it,
/// if any (the report is rendered either way, with what was computed).
pub fn run_fid_step(
    prepared: &Prepared,
    store: &Store,
    runtime: &Runtime,
    inception: &InceptionSource,
    report_dir: &Path,
    quiet: bool,
) -> (Vec<String>, Option<anyhow::Error>) {
    let dims = prepared.spec.metrics.fid_dims;
    if !quiet {
        let path = inception.path.display().to_string();
        let network = if path == inception.name {
            path
        } else {
            format!("`{}` ({path})", inception.name)
        };
        eprintln!("FID: {dims}-d features with {network}");
    }
    let mut observer = Progress::new(quiet);
    match measure_fid(
        prepared,
        store,
        runtime,
        inception,
        report_dir,
        &mut observer,
    ) {
        Ok(o) => {
            say!(
                "FID: {} of {} (config, r > 0) values in {} ({} set(s) featurised, {} from the cache)",
                o.measured,
                o.cells,
                o.file.display(),
                o.featurised,
                o.cached
            );
            for note in &o.notes {
                say!("  {note}");
            }
            (o.notes, None)
        }
        Err(e) => {
            eprintln!("error: the FID step stopped: {e:#}");
            (vec![format!("the FID step stopped: {e:#}")], Some(e))
        }
    }
}

/// One progress bar per featurised set, on stderr.
struct Progress {
    quiet: bool,
    bar: ProgressBar,
}

impl Progress {
    fn new(quiet: bool) -> Progress {
        Progress {
            quiet,
            bar: ProgressBar::hidden(),
        }
    }
}

impl FidObserver for Progress {
    fn set_started(&mut self, label: &str, images: usize, cached: bool) {
        if self.quiet {
            return;
        }
        if cached {
            eprintln!("FID: statistics of the {label} from the cache");
            return;
        }
        self.bar = ProgressBar::with_draw_target(Some(images as u64), ProgressDrawTarget::stderr());
        self.bar.set_style(
            ProgressStyle::with_template(
                "FID: {msg} {bar:30} {pos}/{len} images [{elapsed}<{eta}]",
            )
            .expect("a valid template"),
        );
        self.bar.set_message(format!("featurising the {label}"));
    }

    fn images_done(&mut self, done: usize) {
        self.bar.set_position(done as u64);
    }

    fn set_finished(&mut self) {
        if !self.bar.is_hidden() {
            let msg = self.bar.message();
            let secs = self.bar.elapsed().as_secs_f64();
            self.bar.finish_and_clear();
            eprintln!("FID: {msg}: done in {secs:.1} s");
            self.bar = ProgressBar::hidden();
        }
    }
}
