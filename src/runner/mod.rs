//! From a spec to stored images: resolve the model and prompts, expand the plan,
//! and run the jobs of a shard that the store does not hold yet, one claimed batch at
//! a time (`batch_size` jobs of one cell per pipeline call, 1 by default). A killed run resumes with nothing lost and nothing done twice (the
//! store's claims and atomic writes, see `store`). [`finish`] is what comes after, for
//! `tomex run` and `tomex report` alike: [`fid`] (FID of the stored sets), [`paired`]
//! (PSNR/SSIM of stored pairs), then the report's files.

mod error;
pub mod fid;
pub mod finish;
pub mod paired;
mod prepare;

use std::time::Instant;

use rayon::prelude::*;

use crate::diffusion::pipeline::{Request, StableDiffusion};
use crate::diffusion::scheduler::SchedulerKind;
use crate::engine::Runtime;
use crate::plan::{Job, Shard};
use crate::store::{
    Measurement, ObjectState, PeakMemory, Store, Timings, Worker, DEFAULT_HEARTBEAT,
};

pub use error::{JobError, RunnerError};
pub use prepare::{open_store, prepare, store_dir, ModelStatus, Prepared, PromptStatus};

/// What a run tells its observer (the command line's progress bar).
pub trait RunObserver {
    /// Before the first job: how many jobs this worker will try.
    fn start(&mut self, todo: usize);
    /// A job begins; `label` names its configuration and r.
    fn job_started(&mut self, label: &str);
    /// A job ended (`Err` holds the message recorded in the store).
    fn job_finished(&mut self, outcome: &Result<f64, JobError>);
    /// Something the user should know before the jobs run (a configuration that
    /// merges nothing at the spec's size).
    fn warning(&mut self, message: &str);
}

/// How a run went.
#[derive(Debug, Default)]
pub struct Summary {
    /// Jobs of this shard.
    pub planned: usize,
    /// Already in the store when the run started.
    pub already_stored: usize,
    /// Generated and stored by this run.
    pub generated: usize,
    /// Stored by another worker while this run went on.
    pub done_elsewhere: usize,
    /// Held by another worker when this one reached them (not done when it looked).
    pub held_elsewhere: usize,
    /// Failed in this run.
    pub failed: Vec<FailedJob>,
}

/// A job that failed in this run; its error is also recorded in the store.
#[derive(Debug, Clone)]
pub struct FailedJob {
    pub key: String,
    /// Its configuration and r ([`label`]).
    pub label: String,
    pub error: JobError,
}

/// The `Request` that makes a job's image.
pub fn request_for(job: &Job) -> Result<Request, JobError> {
    let m = &job.material;
    let scheduler: SchedulerKind = m
        .scheduler
        .parse()
        .map_err(|e| JobError::Scheduler(format!("{e}")))?;
    Ok(Request {
        prompt: m.prompt.clone(),
        negative_prompt: m.negative_prompt.clone(),
        seed: m.seed,
        steps: m.steps,
        guidance: m.guidance as f32,
        width: m.width,
        height: m.height,
        scheduler,
        tome: m.tome_config(),
    })
}

/// `config, r = 0.3` for progress lines: the job's first cell.
pub fn label(job: &Job) -> String {
    match job.cells.first() {
        Some(c) if c.ratio == 0.0 => "baseline, r = 0".to_string(),
        Some(c) => format!("{}, r = {}", c.config, c.ratio),
        None => job.key[..12].to_string(),
    }
}

/// Checks before the first timed image that every UNet the jobs need opens and
/// runs (making each ToMe cut once, on disk), then makes a one-step image of the
/// first job, so that its text encoder, VAE and UNet are warm.
pub fn warm_up(
    sd: &mut StableDiffusion,
    jobs: &[&Job],
    observer: &mut dyn RunObserver,
) -> Result<(), JobError> {
    let warm = |e: &dyn std::fmt::Display| JobError::WarmUp(e.to_string());
    let mut seen = Vec::new();
    for job in jobs.iter().rev() {
        let tome = job.material.tome.clone();
        if seen.contains(&tome) {
            continue;
        }
        seen.push(tome);
        let request = request_for(job)?;
        if let Some(why) = sd.tome_merges_nothing(&request).map_err(|e| warm(&e))? {
            observer.warning(&format!("{} {why}", label(job)));
        }
        sd.prepare_unet(&request).map_err(|e| warm(&e))?;
    }
    // As large a batch as the first timed one, so that it finds its buffers made.
    if let Some(batch) = batches(jobs).first() {
        let mut requests = batch
            .iter()
            .map(|job| request_for(job))
            .collect::<Result<Vec<_>, _>>()?;
        for r in &mut requests {
            r.steps = 1;
        }
        sd.generate_batch(&requests).map_err(|e| warm(&e))?;
    }
    Ok(())
}

/// The jobs in order, cut into the pipeline calls that make them: runs of consecutive
/// jobs that differ only in prompt, negative prompt and seed, at most their
/// `batch_size` long.
pub fn batches<'j>(jobs: &[&'j Job]) -> Vec<Vec<&'j Job>> {
    let mut out: Vec<Vec<&Job>> = Vec::new();
    for &job in jobs {
        match out.last_mut() {
            Some(batch)
                if batch.len() < job.material.batch_size.max(1) && same_batch(batch[0], job) =>
            {
                batch.push(job)
            }
            _ => out.push(vec![job]),
        }
    }
    out
}

/// Whether two jobs can share a pipeline call.
fn same_batch(a: &Job, b: &Job) -> bool {
    let (a, b) = (&a.material, &b.material);
    a.format == b.format
        && a.model == b.model
        && a.steps == b.steps
        && a.guidance.to_bits() == b.guidance.to_bits()
        && (a.width, a.height) == (b.width, b.height)
        && a.scheduler == b.scheduler
        && a.tome == b.tome
        && a.precision == b.precision
        && a.batch_size == b.batch_size
}

/// Runs the jobs of `shard` that `store` does not hold yet.
pub fn execute(
    prepared: &Prepared,
    store: &Store,
    shard: Shard,
    runtime: &Runtime,
    sd: &mut StableDiffusion,
    observer: &mut dyn RunObserver,
) -> Result<Summary, crate::store::StoreError> {
    let jobs = prepared.plan.shard(shard);
    // One look at each job, its image's digest included: stored, or to run (a damaged
    // one named once).
    let mut todo: Vec<&Job> = Vec::new();
    let mut damaged = false;
    let states: Vec<ObjectState> = jobs
        .par_iter()
        .map(|job| store.checked_state(&job.key))
        .collect();
    for (job, state) in jobs.iter().copied().zip(states) {
        match state {
            ObjectState::Done(_) => {}
            ObjectState::Damaged(why) => {
                observer.warning(&Store::damage_message(&job.key, &why));
                damaged = true;
                todo.push(job);
            }
            ObjectState::Absent => todo.push(job),
        }
    }
    if damaged {
        // A cached statistic may have been computed from a damaged image, as
        // `tomex store verify --repair` assumes: every set is featurised again.
        if let Err(e) = fid::drop_cached_statistics(store) {
            observer.warning(&format!("{e}: FID may reuse statistics of a damaged image"));
        }
    }
    let mut summary = Summary {
        planned: jobs.len(),
        already_stored: jobs.len() - todo.len(),
        ..Summary::default()
    };
    if todo.is_empty() {
        return Ok(summary);
    }
    if let Err(e) = warm_up(sd, &todo, observer) {
        // Every job would fail the same way; record it on the first and stop.
        if let Some(claim) = store.try_claim(&todo[0].key, &Worker::current(shard.to_string()))? {
            store.fail(claim, todo[0], &e.to_string())?;
        }
        summary.failed.push(FailedJob {
            key: todo[0].key.clone(),
            label: label(todo[0]),
            error: e,
        });
        return Ok(summary);
    }
    let worker = Worker::current(format!("shard {shard}"));
    observer.start(todo.len());
    for batch in batches(&todo) {
        // Claim what is still free; the rest is done or held elsewhere. Every job is
        // counted once, so the summary adds up across workers.
        let mut claimed = Vec::with_capacity(batch.len());
        for job in batch {
            match store.try_claim(&job.key, &worker)? {
                Some(claim) => claimed.push((job, claim)),
                None if store.is_done(&job.key) => summary.done_elsewhere += 1,
                None => summary.held_elsewhere += 1,
            }
        }
        if claimed.is_empty() {
            continue;
        }
        let _alive: Vec<_> = claimed
            .iter()
            .map(|(_, claim)| claim.keep_alive(DEFAULT_HEARTBEAT))
            .collect();
        for (job, _) in &claimed {
            observer.job_started(&label(job));
        }
        let jobs: Vec<&Job> = claimed.iter().map(|(job, _)| *job).collect();
        match make_images(&jobs, runtime, sd) {
            Ok(made) => {
                for ((job, claim), (png, measured)) in claimed.into_iter().zip(made) {
                    let wall = measured.timings.wall_s;
                    store.complete(claim, job, &png, measured)?;
                    summary.generated += 1;
                    observer.job_finished(&Ok(wall));
                }
            }
            Err(e) => {
                for (job, claim) in claimed {
                    store.fail(claim, job, &e.to_string())?;
                    summary.failed.push(FailedJob {
                        key: job.key.clone(),
                        label: label(job),
                        error: e.clone(),
                    });
                    observer.job_finished(&Err(e.clone()));
                }
            }
        }
    }
    Ok(summary)
}

/// The images of one batch, timed as the thesis timed an image (the whole pipeline
/// call; with several images per call each gets the call's times divided by their
/// number), with the process's peak host memory and, on a GPU, its peak GPU memory
/// while the call ran (the batch's, the same for each of its images).
fn make_images(
    jobs: &[&Job],
    runtime: &Runtime,
    sd: &mut StableDiffusion,
) -> Result<Vec<(Vec<u8>, Measurement)>, JobError> {
    let requests = jobs
        .iter()
        .map(|job| request_for(job))
        .collect::<Result<Vec<_>, _>>()?;
    // A batch's jobs share their precision (`same_batch`).
    let precision = sd.precision();
    let wanted = jobs[0].material.precision.as_deref().unwrap_or("fp32");
    if wanted != precision.name() {
        return Err(JobError::Precision {
            wanted: wanted.to_string(),
            runs: precision.to_string(),
        });
    }
    // Untimed: switching between the whole UNet and a ToMe split opens a session.
    sd.prepare_unet(&requests[0])
        .map_err(|e| JobError::Generate(e.to_string()))?;
    let peak_resettable = crate::host::reset_peak_rss();
    let start = Instant::now();
    let (made, device_peak) = runtime.with_device_peak(|| sd.generate_batch(&requests));
    let (images, t) = made.map_err(|e| JobError::Generate(e.to_string()))?;
    let per_image = |seconds: f64| seconds / images.len() as f64;
    let timings = Timings {
        wall_s: per_image(start.elapsed().as_secs_f64()),
        text_encoder_s: per_image(t.text_encoding.as_secs_f64()),
        unet_s: per_image(t.unet.as_secs_f64()),
        vae_s: per_image(t.vae.as_secs_f64()),
    };
    let peak_memory = PeakMemory {
        host_rss_bytes: peak_resettable.then(crate::host::peak_rss_bytes).flatten(),
        device_bytes: device_peak,
    };
    images
        .into_iter()
        .map(|image| {
            let mut png = Vec::new();
            image
                .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
                .map_err(|e| JobError::Png(e.to_string()))?;
            let measured = Measurement {
                timings,
                peak_memory,
                device: runtime.device().to_string(),
                onnxruntime: runtime.version(),
                attention: sd.attention().to_string(),
            };
            Ok((png, measured))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{JobMaterial, ModelIdentity};

    fn job(prompt: &str, seed: u64, steps: usize, batch_size: usize) -> Job {
        let material = JobMaterial {
            format: 1,
            model: ModelIdentity::Files("sha256:00".into()),
            prompt: prompt.into(),
            negative_prompt: String::new(),
            seed,
            width: 64,
            height: 64,
            steps,
            scheduler: "pndm".into(),
            guidance: 7.5,
            batch_size,
            precision: None,
            tome: None,
        };
        Job {
            key: material.key(),
            material,
            cells: Vec::new(),
        }
    }

    #[test]
    fn batches_are_runs_of_jobs_that_differ_only_in_prompt_and_seed() {
        let jobs = [
            job("a", 1, 8, 2),
            job("b", 2, 8, 2),
            job("c", 3, 8, 2),
            job("d", 4, 9, 2), // other steps: a call of its own
            job("e", 5, 8, 2),
        ];
        let refs: Vec<&Job> = jobs.iter().collect();
        let prompts: Vec<Vec<&str>> = batches(&refs)
            .iter()
            .map(|b| b.iter().map(|j| j.material.prompt.as_str()).collect())
            .collect();
        assert_eq!(prompts, [vec!["a", "b"], vec!["c"], vec!["d"], vec!["e"]]);
        let single = [job("a", 1, 8, 1), job("b", 2, 8, 1)];
        let refs: Vec<&Job> = single.iter().collect();
        assert_eq!(batches(&refs).len(), 2);
    }
}
