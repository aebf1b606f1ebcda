//! The steps after the jobs (`crate::runner::finish`) as `tomex run` and `tomex report`
//! show them: FID progress on stderr, one line per step's result, and the report's folder.

use std::path::Path;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::runner::fid::FidObserver;
use crate::runner::finish::{finish, FidResult, FidStep, Finished};
use crate::runner::Prepared;
use crate::store::Store;

/// Runs [`finish`] with a progress bar (unless `quiet`) and says how each step went.
pub fn finish_and_say(
    prepared: &Prepared,
    store: &Store,
    dir: &Path,
    fid: FidStep<'_>,
    quiet: bool,
) -> Finished {
    if let (FidStep::Measure { inception, .. }, false) = (&fid, quiet) {
        let path = inception.path.display().to_string();
        let network = if path == inception.name {
            path
        } else {
            format!("`{}` ({path})", inception.name)
        };
        eprintln!(
            "FID: {}-d features with {network}",
            prepared.spec.metrics.fid_dims
        );
    }
    let mut observer = Progress::new(quiet);
    let finished = finish(prepared, store, dir, fid, &mut observer);
    match &finished.fid {
        FidResult::NotAsked => {}
        FidResult::Deferred(note) => say!("{note}"),
        FidResult::Unavailable(e) => eprintln!("error: FID: {e:#}"),
        FidResult::Measured(o) => {
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
        }
        FidResult::Stopped(e) => eprintln!("error: the FID step stopped: {e:#}"),
    }
    match &finished.paired {
        Ok(u) if u.damaged > 0 => eprintln!(
            "warning: {} image pair(s) hold a damaged image (not what its record says) and have no PSNR/SSIM; `tomex run` regenerates it",
            u.damaged
        ),
        Ok(_) => {}
        Err(e) => eprintln!("error: paired metrics: {e:#}"),
    }
    finished
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
