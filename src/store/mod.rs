//! The results directory: one image and one record per job, keyed by the job's
//! content key, written so that a worker killed at any instant (`kill -9`, power
//! cut) loses at most the job it was running, and several workers, on one
//! machine or many sharing a file system, never run the same job twice.
//!
//! ```text
//! <root>/tomex-store.json           layout version
//! <root>/objects/<key>/image.png    the image
//! <root>/objects/<key>/record.json  the record (Record); its presence means "done"
//! <root>/objects/<key>/error.json   the last failure (ErrorRecord) of a job not done
//! <root>/claims/<key>/<gen>.json    who runs the job (see `claim`)
//! <root>/manifest.csv               every stored job, for other tools
//! ```
//!
//! # Invariants
//!
//! 1. **Done means complete.** `record.json` exists only if the job's
//!    `image.png` was fully written before it. Every file is written to a
//!    temporary name (`.tmp-*`) in its own directory, `fsync`ed, and renamed over
//!    its final name; the directory is `fsync`ed after. A reader never sees a
//!    partial file, and `record.json` is the last write of a job.
//! 2. **Anything else is a leftover.** An object directory without `record.json`
//!    (an image, an `error.json`, `.tmp-*` files) holds an unfinished attempt; the
//!    next worker to claim the job deletes the temporary files and overwrites the
//!    rest. Such a job is run again; a failed job is retried on the next run.
//! 3. **Only the holder writes.** A worker writes `objects/<key>/` only while it
//!    holds the job's claim, and checks that it still does right before writing.
//!    A claim is taken with an exclusive create (one winner per generation), and
//!    every winner looks for `record.json` again after winning, so a job that
//!    finished meanwhile is not run again.
//! 4. **A dead worker's claim is recoverable.** Killed at any instant, a worker
//!    leaves each job it touched either done (record written; its claim log
//!    then ends in `completed`, or, killed just before that, in a claim that no
//!    one takes over because the record is seen first), or claimed by a process
//!    that no longer exists: on the same machine that is seen at once (pid gone or
//!    reused), from other machines once its heartbeat is older than the claim
//!    timeout. The next worker then claims the following generation.
//!
//! The claim protocol, and what it assumes of the file system and clocks, is in
//! [`claim`]; the primitives in [`fsx`].
//!
//! # A worker's loop
//!
//! ```no_run
//! use tomex::plan::{Job, Plan, Shard};
//! use tomex::store::{Measurement, Store, Worker, DEFAULT_HEARTBEAT};
//!
//! fn make_image(job: &Job) -> anyhow::Result<(Vec<u8>, Measurement)> {
//!     unimplemented!()
//! }
//!
//! fn run(plan: &Plan, shard: Shard) -> anyhow::Result<()> {
//!     let store = Store::open("results")?;
//!     let me = Worker::current(format!("shard {shard}"));
//!     for job in plan.shard(shard) {
//!         // None: done, or held by a live worker
//!         let Some(claim) = store.try_claim(&job.key, &me)? else { continue };
//!         let _alive = claim.keep_alive(DEFAULT_HEARTBEAT);
//!         match make_image(job) {
//!             Ok((png, measured)) => drop(store.complete(claim, job, &png, measured)?),
//!             Err(e) => drop(store.fail(claim, job, &format!("{e:#}"))?),
//!         }
//!     }
//!     store.write_manifest_for(plan, None)?;
//!     Ok(())
//! }
//! ```

pub mod claim;
pub mod fsx;
pub mod record;

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use claim::{
    Claim, ClaimInfo, ClaimState, KeepAlive, Worker, DEFAULT_CLAIM_TIMEOUT, DEFAULT_HEARTBEAT,
};
pub use record::{ErrorRecord, Measurement, PeakMemory, Record, Timings, RECORD_FORMAT};

use crate::plan::{Job, Plan};

/// Version of the directory layout (in `tomex-store.json`).
pub const STORE_FORMAT: u32 = 1;
const MARKER: &str = "tomex-store.json";
const IMAGE: &str = "image.png";
const RECORD: &str = "record.json";
const ERROR: &str = "error.json";
/// The default manifest file name, in the store's root.
pub const MANIFEST: &str = "manifest.csv";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path}: {reason}")]
    Parse { path: PathBuf, reason: String },
    #[error("{path} is a tomex store of format {found}; this tomex reads format {STORE_FORMAT}")]
    Format { path: PathBuf, found: u32 },
    #[error("`{0}` is not a job key (expected lowercase hex)")]
    BadKey(String),
    #[error("the claim on job {key} was lost: another worker took it over (this one was thought dead) or it was released")]
    ClaimLost { key: String },
    #[error("claim for job {claim} used to store job {job}")]
    WrongJob { claim: String, job: String },
}

impl StoreError {
    pub(crate) fn io(path: &Path, source: io::Error) -> StoreError {
        StoreError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

#[derive(Serialize, Deserialize)]
struct Marker {
    format: u32,
}

/// How many of some jobs are in which state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub done: usize,
    /// Not done, with an `error.json` (will be retried).
    pub failed: usize,
    /// Neither.
    pub todo: usize,
}

/// A results directory.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
    claim_timeout: Duration,
}

impl Store {
    /// Opens (creating it if needed) the store at `root`.
    pub fn open(root: impl AsRef<Path>) -> Result<Store, StoreError> {
        let root = root.as_ref().to_path_buf();
        for dir in [root.join("objects"), root.join("claims")] {
            fs::create_dir_all(&dir).map_err(|e| StoreError::io(&dir, e))?;
        }
        let marker = root.join(MARKER);
        match fs::read(&marker) {
            Ok(bytes) => {
                let m: Marker = serde_json::from_slice(&bytes).map_err(|e| StoreError::Parse {
                    path: marker.clone(),
                    reason: e.to_string(),
                })?;
                if m.format != STORE_FORMAT {
                    return Err(StoreError::Format {
                        path: root,
                        found: m.format,
                    });
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let text = serde_json::to_vec(&Marker {
                    format: STORE_FORMAT,
                })
                .expect("marker");
                // several workers may do this at once: all write the same bytes
                fsx::write_atomic(&marker, &text).map_err(|e| StoreError::io(&marker, e))?;
            }
            Err(e) => return Err(StoreError::io(&marker, e)),
        }
        Ok(Store {
            root,
            claim_timeout: DEFAULT_CLAIM_TIMEOUT,
        })
    }

    /// How old another machine's heartbeat must be before its claims are taken
    /// over (default [`DEFAULT_CLAIM_TIMEOUT`]; keep it far above the heartbeat
    /// interval).
    pub fn with_claim_timeout(mut self, timeout: Duration) -> Store {
        self.claim_timeout = timeout;
        self
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn object_dir(&self, key: &str) -> PathBuf {
        self.root.join("objects").join(key)
    }

    pub fn image_path(&self, key: &str) -> PathBuf {
        self.object_dir(key).join(IMAGE)
    }

    pub fn record_path(&self, key: &str) -> PathBuf {
        self.object_dir(key).join(RECORD)
    }

    fn claim_dir(&self, key: &str) -> PathBuf {
        self.root.join("claims").join(key)
    }

    /// Whether the job's record exists.
    pub fn is_done(&self, key: &str) -> bool {
        self.record_path(key).is_file()
    }

    /// The job's record, `None` when it is not done.
    pub fn record(&self, key: &str) -> Result<Option<Record>, StoreError> {
        read_json(&self.record_path(key))
    }

    /// The job's last failure, `None` when it never failed or is done.
    pub fn error(&self, key: &str) -> Result<Option<ErrorRecord>, StoreError> {
        if self.is_done(key) {
            return Ok(None);
        }
        read_json(&self.object_dir(key).join(ERROR))
    }

    /// Claims the job for `worker`: `None` when it is done or held by a live
    /// worker. A claim of a dead worker is taken over (see [`claim`]).
    pub fn try_claim(&self, key: &str, worker: &Worker) -> Result<Option<Claim>, StoreError> {
        check_key(key)?;
        let dir = self.claim_dir(key);
        // every failed attempt means another worker made progress on this job
        for _ in 0..16 {
            if self.is_done(key) {
                return Ok(None);
            }
            let head = claim::read_head(&dir)?;
            let generation = match claim::next_step(&head, worker, self.claim_timeout) {
                claim::Next::Held | claim::Next::Done => return Ok(None),
                claim::Next::Claim(g) => g,
            };
            let Some(info) = claim::try_create(&dir, key, generation, worker)? else {
                continue;
            };
            let claim = Claim::new(dir.clone(), info);
            if self.is_done(key) {
                claim.release_with("already done")?;
                return Ok(None);
            }
            return Ok(Some(claim));
        }
        Ok(None)
    }

    /// Stores the finished job: image, then record, then the claim log's
    /// `completed` entry. Returns the record written.
    pub fn complete(
        &self,
        claim: Claim,
        job: &Job,
        image_png: &[u8],
        measurement: Measurement,
    ) -> Result<Record, StoreError> {
        if claim.key() != job.key {
            return Err(StoreError::WrongJob {
                claim: claim.key().to_string(),
                job: job.key.clone(),
            });
        }
        let info = claim.info();
        let record = Record {
            format: RECORD_FORMAT,
            key: job.key.clone(),
            job: job.material.clone(),
            cells: job.cells.clone(),
            timings: measurement.timings,
            peak_memory: measurement.peak_memory,
            device: measurement.device,
            attention: measurement.attention,
            tomex: env!("CARGO_PKG_VERSION").to_string(),
            onnxruntime: measurement.onnxruntime,
            host: info.host.clone(),
            pid: info.pid,
            worker: info.worker.clone(),
            started_at: info.started_at.clone(),
            finished_at: claim::rfc3339(claim::now_ms()),
        };
        let dir = self.object_dir(&job.key);
        claim.check()?;
        fs::create_dir_all(&dir).map_err(|e| StoreError::io(&dir, e))?;
        fsx::remove_temporaries(&dir);
        let image = dir.join(IMAGE);
        fsx::write_atomic(&image, image_png).map_err(|e| StoreError::io(&image, e))?;
        let error = dir.join(ERROR);
        match fs::remove_file(&error) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                return Err(StoreError::io(&error, e));
            }
            _ => {}
        }
        claim.check()?;
        let path = dir.join(RECORD);
        fsx::write_atomic(&path, &to_json(&record)).map_err(|e| StoreError::io(&path, e))?;
        claim.complete()?;
        Ok(record)
    }

    /// Records the job's failure (`objects/<key>/error.json`) and releases the
    /// claim; the job is retried on the next run.
    pub fn fail(&self, claim: Claim, job: &Job, error: &str) -> Result<ErrorRecord, StoreError> {
        if claim.key() != job.key {
            return Err(StoreError::WrongJob {
                claim: claim.key().to_string(),
                job: job.key.clone(),
            });
        }
        let dir = self.object_dir(&job.key);
        let path = dir.join(ERROR);
        let attempts = read_json::<ErrorRecord>(&path)
            .ok()
            .flatten()
            .map_or(0, |e| e.attempts);
        let info = claim.info();
        let record = ErrorRecord {
            format: RECORD_FORMAT,
            key: job.key.clone(),
            job: job.material.clone(),
            cells: job.cells.clone(),
            error: error.to_string(),
            attempts: attempts + 1,
            tomex: env!("CARGO_PKG_VERSION").to_string(),
            host: info.host.clone(),
            pid: info.pid,
            worker: info.worker.clone(),
            started_at: info.started_at.clone(),
            failed_at: claim::rfc3339(claim::now_ms()),
        };
        claim.check()?;
        fs::create_dir_all(&dir).map_err(|e| StoreError::io(&dir, e))?;
        fsx::remove_temporaries(&dir);
        fsx::write_atomic(&path, &to_json(&record)).map_err(|e| StoreError::io(&path, e))?;
        claim.release_with("failed")?;
        Ok(record)
    }

    /// Keys of every object directory, sorted.
    fn object_keys(&self) -> Result<Vec<String>, StoreError> {
        let dir = self.root.join("objects");
        let mut keys: Vec<String> = fs::read_dir(&dir)
            .map_err(|e| StoreError::io(&dir, e))?
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|k| check_key(k).is_ok())
            .collect();
        keys.sort();
        Ok(keys)
    }

    /// Every stored record, in key order.
    pub fn records(
        &self,
    ) -> Result<impl Iterator<Item = Result<Record, StoreError>> + '_, StoreError> {
        let keys = self.object_keys()?;
        Ok(keys
            .into_iter()
            .filter_map(move |k| self.record(&k).transpose()))
    }

    /// The last failure of every job that is not done, in key order.
    pub fn failures(
        &self,
    ) -> Result<impl Iterator<Item = Result<ErrorRecord, StoreError>> + '_, StoreError> {
        let keys = self.object_keys()?;
        Ok(keys
            .into_iter()
            .filter_map(move |k| self.error(&k).transpose()))
    }

    /// How many of the plan's jobs are done, failed, or still to run.
    pub fn counts<'a>(&self, jobs: impl IntoIterator<Item = &'a Job>) -> Counts {
        let mut c = Counts::default();
        for job in jobs {
            if self.is_done(&job.key) {
                c.done += 1;
            } else if self.object_dir(&job.key).join(ERROR).is_file() {
                c.failed += 1;
            } else {
                c.todo += 1;
            }
        }
        c
    }

    /// Removes the claim logs of done jobs; returns how many. Run it when no
    /// worker is running on the store (e.g. after a run, or before `tar`): a
    /// log's `completed` entry is what keeps another host whose view of the
    /// directory lags from claiming a done job.
    pub fn tidy(&self) -> Result<usize, StoreError> {
        let dir = self.root.join("claims");
        let mut removed = 0;
        for entry in fs::read_dir(&dir)
            .map_err(|e| StoreError::io(&dir, e))?
            .flatten()
        {
            let key = entry.file_name().to_string_lossy().into_owned();
            if check_key(&key).is_ok() && self.is_done(&key) {
                claim::remove_log(&entry.path());
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Writes the manifest (default `<root>/manifest.csv`, atomically): one row
    /// per stored job and cell of its record ([`record::MANIFEST_COLUMNS`]), the
    /// image path relative to the store's root. Returns the path and the number
    /// of rows.
    pub fn write_manifest(&self, path: Option<&Path>) -> Result<(PathBuf, usize), StoreError> {
        let mut rows = Vec::new();
        for record in self.records()? {
            let record = record?;
            for cell in &record.cells {
                let image = format!("objects/{}/{IMAGE}", record.key);
                rows.push(record::manifest_row(&record, cell, &image));
            }
        }
        self.write_rows(path, rows)
    }

    /// The manifest of one plan: a row per cell of `plan` whose job is stored,
    /// in plan order (cells that other specs' runs stored included).
    pub fn write_manifest_for(
        &self,
        plan: &Plan,
        path: Option<&Path>,
    ) -> Result<(PathBuf, usize), StoreError> {
        let mut rows = Vec::new();
        for job in plan.jobs() {
            let Some(record) = self.record(&job.key)? else {
                continue;
            };
            let image = format!("objects/{}/{IMAGE}", record.key);
            for cell in &job.cells {
                rows.push(record::manifest_row(&record, cell, &image));
            }
        }
        self.write_rows(path, rows)
    }

    fn write_rows(
        &self,
        path: Option<&Path>,
        rows: Vec<Vec<String>>,
    ) -> Result<(PathBuf, usize), StoreError> {
        let path = path.map_or_else(|| self.root.join(MANIFEST), Path::to_path_buf);
        let mut text = record::csv_line(&record::MANIFEST_COLUMNS);
        for row in &rows {
            text.push_str(&record::csv_line(row));
        }
        fsx::write_atomic(&path, text.as_bytes()).map_err(|e| StoreError::io(&path, e))?;
        Ok((path, rows.len()))
    }
}

fn check_key(key: &str) -> Result<(), StoreError> {
    if !key.is_empty()
        && key.len() <= 128
        && key
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        Ok(())
    } else {
        Err(StoreError::BadKey(key.to_string()))
    }
}

fn to_json<T: Serialize>(value: &T) -> Vec<u8> {
    let mut text = serde_json::to_vec_pretty(value).expect("plain data");
    text.push(b'\n');
    text
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<Option<T>, StoreError> {
    match fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| StoreError::Parse {
                path: path.to_path_buf(),
                reason: e.to_string(),
            }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(StoreError::io(path, e)),
    }
}
