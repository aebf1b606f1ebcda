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
//! <root>/damaged/<key>-<unix ms>/   a damaged object, moved aside before its job reruns
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
//! 5. **Damage from outside is not "done".** A record that does not parse or names
//!    another key, or an image that is missing, is not a PNG or has another size than
//!    its record says, makes the object *damaged* ([`ObjectState`]): it counts as not
//!    stored, and the next worker to claim the job moves it to `damaged/` (nothing is
//!    deleted) and runs it again. A deleted object is simply missing. A claim log that
//!    ends in `completed` does not hold such a job back once the completing worker is
//!    seen to be on this machine, or its entry is older than the claim timeout (the
//!    window in which another host's view of the directory may lag). The image's
//!    digest is checked by a run for the jobs it needs ([`Store::checked_state`],
//!    [`Store::try_claim`]) and by [`Store::verify`] (`tomex store verify`), which also
//!    finds leftovers and, with `repair`, makes the store consistent.
//!
//! The claim protocol, and what it assumes of the file system and clocks, is in
//! [`claim`]; the primitives in [`crate::fsx`].
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
pub mod record;

use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::fsx;

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
const DAMAGED: &str = "damaged";
const PNG_SIGNATURE: &[u8; 8] = b"\x89PNG\r\n\x1a\n";

/// What [`Store::verify`] found.
#[derive(Debug, Default)]
pub struct VerifyReport {
    /// Object directories looked at, and how many hold an intact job.
    pub objects: usize,
    pub intact: usize,
    pub findings: Vec<Finding>,
    /// Whether the findings were repaired.
    pub repaired: bool,
}

/// One problem [`Store::verify`] found, and what the repair did about it.
#[derive(Debug)]
pub struct Finding {
    pub key: String,
    pub problem: String,
    pub action: Option<String>,
}

/// What the store holds for a job.
#[derive(Debug, Clone, PartialEq)]
pub enum ObjectState {
    /// Nothing finished (a failure, a leftover, or no directory at all).
    Absent,
    Done(Box<Record>),
    /// A record that cannot be trusted, and why.
    Damaged(String),
}
/// The default manifest file name, in the store's root.
pub const MANIFEST: &str = "manifest.csv";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Not a `#[source]`: the message says the OS error once.
    #[error("{path}: {error}")]
    Io { path: PathBuf, error: io::Error },
    #[error("store {0} is a file, not a folder; a spec's `store` names a folder")]
    NotAFolder(PathBuf),
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
            error: source,
        }
    }
}

#[derive(Serialize, Deserialize)]
struct Marker {
    format: u32,
}

/// How many of some jobs are in which state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counts {
    pub done: usize,
    /// Not done, with an `error.json` (will be retried).
    pub failed: usize,
    /// Neither (damaged objects included).
    pub todo: usize,
    /// The damaged objects among them (key, why): each also counts in `todo`.
    pub damaged: Vec<(String, String)>,
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
        if root.exists() && !root.is_dir() {
            return Err(StoreError::NotAFolder(root));
        }
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

    /// Whether the job is stored: its record reads and its image is there, a PNG of
    /// the size the record says (see [`ObjectState`]).
    pub fn is_done(&self, key: &str) -> bool {
        matches!(self.state(key), ObjectState::Done(_))
    }

    /// The job's record, `None` when it is not done (or damaged).
    pub fn record(&self, key: &str) -> Result<Option<Record>, StoreError> {
        Ok(match self.state(key) {
            ObjectState::Done(record) => Some(*record),
            _ => None,
        })
    }

    /// What the store holds for the job, with the cheap checks: the record parses and
    /// names this key; the image exists, starts as a PNG does, and has the size the
    /// record says. The image's digest is [`Store::checked_state`]'s.
    pub fn state(&self, key: &str) -> ObjectState {
        let path = self.record_path(key);
        let record: Record = match fs::read(&path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => return ObjectState::Absent,
            Err(e) => return ObjectState::Damaged(format!("record.json cannot be read: {e}")),
            Ok(bytes) => match serde_json::from_slice(&bytes) {
                Ok(r) => r,
                Err(e) => return ObjectState::Damaged(format!("record.json does not parse: {e}")),
            },
        };
        if record.key != key {
            return ObjectState::Damaged(format!("record.json names key {}", record.key));
        }
        let image = self.image_path(key);
        let mut head = [0u8; 8];
        let read = fs::File::open(&image).and_then(|mut f| {
            use std::io::Read;
            let len = f.metadata()?.len();
            f.read_exact(&mut head).map(|_| len)
        });
        match read {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                ObjectState::Damaged("image.png is missing".into())
            }
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                ObjectState::Damaged("image.png is truncated (under 8 bytes)".into())
            }
            Err(e) => ObjectState::Damaged(format!("image.png cannot be read: {e}")),
            Ok(_) if &head != PNG_SIGNATURE => {
                ObjectState::Damaged("image.png is not a PNG".into())
            }
            Ok(len) if record.image_bytes.is_some_and(|b| b != len) => {
                ObjectState::Damaged(format!(
                    "image.png has {len} bytes, its record says {}",
                    record.image_bytes.unwrap_or_default()
                ))
            }
            Ok(_) => ObjectState::Done(Box::new(record)),
        }
    }

    /// [`Store::state`] with the image's digest checked too (what `verify` checks; for
    /// records without a digest, whether it decodes): a done job whose image is not what
    /// its record says is damaged. What a run uses for the jobs it needs, so a
    /// same-size damaged image is set aside and regenerated before anything reads it.
    pub fn checked_state(&self, key: &str) -> ObjectState {
        match self.state(key) {
            ObjectState::Done(record) => match self.image_problem(key, &record) {
                Some(why) => ObjectState::Damaged(why),
                None => ObjectState::Done(record),
            },
            other => other,
        }
    }

    /// The one line `plan` and `run` say about a damaged object.
    pub fn damage_message(key: &str, why: &str) -> String {
        format!(
            "objects/{key} is damaged ({why}): it counts as not stored and runs again \
             (its files move to damaged/)"
        )
    }

    /// Moves a damaged object aside (`damaged/<key>-<unix ms>/`); nothing is deleted.
    fn quarantine(&self, key: &str) -> Result<Option<PathBuf>, StoreError> {
        let from = self.object_dir(key);
        if !from.exists() {
            return Ok(None);
        }
        let aside = self.root.join(DAMAGED);
        fs::create_dir_all(&aside).map_err(|e| StoreError::io(&aside, e))?;
        let to = aside.join(format!("{key}-{}", claim::now_ms()));
        fs::rename(&from, &to).map_err(|e| StoreError::io(&from, e))?;
        fsx::sync_dir(&aside);
        Ok(Some(to))
    }

    /// The job's last failure, `None` when it never failed or is done.
    pub fn error(&self, key: &str) -> Result<Option<ErrorRecord>, StoreError> {
        if self.is_done(key) {
            return Ok(None);
        }
        // An unreadable error.json (damage) is no failure to show: the job reruns.
        Ok(read_json(&self.object_dir(key).join(ERROR)).unwrap_or(None))
    }

    /// Claims the job for `worker`: `None` when it is done (its image checked against
    /// the record, [`Store::checked_state`]) or held by a live worker. A claim of a dead
    /// worker is taken over (see [`claim`]); a damaged object is moved aside once claimed.
    pub fn try_claim(&self, key: &str, worker: &Worker) -> Result<Option<Claim>, StoreError> {
        check_key(key)?;
        let dir = self.claim_dir(key);
        // every failed attempt means another worker made progress on this job
        for _ in 0..16 {
            let state = self.checked_state(key);
            if matches!(state, ObjectState::Done(_)) {
                return Ok(None);
            }
            let head = claim::read_head(&dir)?;
            let generation = match claim::next_step(&head, worker, self.claim_timeout) {
                claim::Next::Held => return Ok(None),
                // Completed, but the object is gone or damaged: see invariant 5.
                claim::Next::Done => match &head {
                    claim::Head::Info(info)
                        if claim::completion_is_settled(info, worker, self.claim_timeout) =>
                    {
                        info.generation + 1
                    }
                    _ => return Ok(None),
                },
                claim::Next::Claim(g) => g,
            };
            let Some(info) = claim::try_create(&dir, key, generation, worker)? else {
                continue;
            };
            let claim = Claim::new(dir.clone(), info);
            match self.checked_state(key) {
                ObjectState::Done(_) => {
                    claim.release_with("already done")?;
                    return Ok(None);
                }
                ObjectState::Damaged(_) => {
                    self.quarantine(key)?;
                }
                ObjectState::Absent => {}
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
            image_sha256: Some(crate::model::sha256_bytes(image_png)),
            image_bytes: Some(image_png.len() as u64),
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
            match self.state(&job.key) {
                ObjectState::Done(_) => c.done += 1,
                ObjectState::Damaged(why) => {
                    c.damaged.push((job.key.clone(), why));
                    c.todo += 1;
                }
                ObjectState::Absent if self.object_dir(&job.key).join(ERROR).is_file() => {
                    c.failed += 1
                }
                ObjectState::Absent => c.todo += 1,
            }
        }
        c
    }

    /// Checks every object and claim log, the image digests included (`tomex store
    /// verify`); with `repair`, makes the store consistent so that the next run
    /// regenerates exactly what was lost: damaged objects are moved to `damaged/`, and
    /// claim logs that hold back a job the store does not have are removed. Run it
    /// with no worker on the store (a repair would take a live worker's claim for dead
    /// once its heartbeat is older than the claim timeout).
    pub fn verify(&self, repair: bool) -> Result<VerifyReport, StoreError> {
        let mut report = VerifyReport::default();
        for key in self.object_keys()? {
            report.objects += 1;
            let problem = match self.checked_state(&key) {
                ObjectState::Absent => continue,
                ObjectState::Damaged(why) => why,
                ObjectState::Done(_) => {
                    report.intact += 1;
                    continue;
                }
            };
            let action = if repair {
                let to = self.quarantine(&key)?;
                claim::remove_log(&self.claim_dir(&key));
                to.map(|to| format!("moved to {}", to.display()))
            } else {
                None
            };
            report.findings.push(Finding {
                key,
                problem,
                action,
            });
        }
        let claims = self.root.join("claims");
        let me = Worker::current("verify");
        for entry in fs::read_dir(&claims)
            .map_err(|e| StoreError::io(&claims, e))?
            .flatten()
        {
            let key = entry.file_name().to_string_lossy().into_owned();
            let reported = report.findings.iter().any(|f| f.key == key);
            if check_key(&key).is_err() || reported || self.is_done(&key) {
                continue;
            }
            let dir = entry.path();
            let problem = match claim::read_head(&dir)? {
                claim::Head::Info(info) if info.state == ClaimState::Completed => {
                    "its claim log says completed, but the object is not stored".to_string()
                }
                claim::Head::Info(info)
                    if info.state == ClaimState::Claimed
                        && claim::is_stale(&info, &me, self.claim_timeout) =>
                {
                    format!(
                        "claimed by a worker that is gone ({} pid {})",
                        info.host, info.pid
                    )
                }
                claim::Head::Unreadable { age, .. } if age > self.claim_timeout => {
                    "its claim log's last entry does not parse".to_string()
                }
                _ => continue,
            };
            let action = repair.then(|| {
                claim::remove_log(&dir);
                "claim log removed".to_string()
            });
            report.findings.push(Finding {
                key,
                problem,
                action,
            });
        }
        report.repaired = repair;
        Ok(report)
    }

    /// A done job's image, read once and checked as [`Store::checked_state`] checks it;
    /// `Err(why)` when the job is not stored or its image is damaged. For readers that
    /// must never see a damaged image (the paired metrics).
    pub fn checked_image(&self, key: &str) -> Result<Vec<u8>, String> {
        match self.state(key) {
            ObjectState::Done(record) => self.read_checked_image(key, &record),
            ObjectState::Damaged(why) => Err(why),
            ObjectState::Absent => Err("not stored".into()),
        }
    }

    /// What is wrong with a done job's image beyond the cheap checks: its digest
    /// differs from the record's, or (records without one) it does not decode.
    fn image_problem(&self, key: &str, record: &Record) -> Option<String> {
        self.read_checked_image(key, record).err()
    }

    fn read_checked_image(&self, key: &str, record: &Record) -> Result<Vec<u8>, String> {
        let path = self.image_path(key);
        let bytes = fs::read(&path).map_err(|e| format!("image.png cannot be read: {e}"))?;
        match &record.image_sha256 {
            Some(want) => {
                let got = crate::model::sha256_bytes(&bytes);
                if &got != want {
                    return Err(format!(
                        "image.png's digest {got} is not its record's {want}"
                    ));
                }
            }
            None => {
                image::load_from_memory_with_format(&bytes, image::ImageFormat::Png)
                    .map_err(|e| format!("image.png does not decode: {e}"))?;
            }
        }
        Ok(bytes)
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

    /// The manifest after a run of `plan` (default `<root>/manifest.csv`,
    /// atomically): a row per cell of `plan` whose job is stored, in plan order, then
    /// the other specs' rows, so that one spec's run does not drop another's: those the
    /// manifest already lists (a spec that found its jobs stored is named there, not in
    /// their records), then those the stored records name; each row once, only while
    /// its job is stored, with the record's current measurements. An old manifest that
    /// does not parse, or has other columns, is rebuilt from the records.
    pub fn write_manifest_for(
        &self,
        plan: &Plan,
        path: Option<&Path>,
    ) -> Result<(PathBuf, usize), StoreError> {
        let path = path.map_or_else(|| self.root.join(MANIFEST), Path::to_path_buf);
        let stored: BTreeMap<String, Record> = self
            .records()?
            .map(|r| r.map(|r| (r.key.clone(), r)))
            .collect::<Result<_, _>>()?;
        let image = |key: &str| format!("objects/{key}/{IMAGE}");
        let mut rows = Vec::new();
        let mut listed = HashSet::new();
        let mut ours = HashSet::new();
        for job in plan.jobs() {
            for cell in &job.cells {
                ours.insert(cell.spec.clone());
                if let Some(record) = stored.get(&job.key) {
                    let row = record::manifest_row(record, cell, &image(&record.key));
                    listed.insert(row_identity(&row));
                    rows.push(row);
                }
            }
        }
        let old = fs::read_to_string(&path).unwrap_or_default();
        for old_row in previous_manifest_rows(&old) {
            let Some(record) = stored.get(&old_row[4]) else {
                continue;
            };
            if ours.contains(&old_row[0]) || !listed.insert(row_identity(&old_row)) {
                continue;
            }
            // The row's cell (spec, config, r, prompt index) with the record as it is now.
            let mut row = old_row[..4].to_vec();
            row.extend(record::manifest_job_columns(record, &image(&record.key)));
            rows.push(row);
        }
        for record in stored.values() {
            for cell in record.cells.iter().filter(|c| !ours.contains(&c.spec)) {
                let row = record::manifest_row(record, cell, &image(&record.key));
                if listed.insert(row_identity(&row)) {
                    rows.push(row);
                }
            }
        }
        self.write_rows(Some(&path), rows)
    }

    fn write_rows(
        &self,
        path: Option<&Path>,
        rows: Vec<Vec<String>>,
    ) -> Result<(PathBuf, usize), StoreError> {
        let path = path.map_or_else(|| self.root.join(MANIFEST), Path::to_path_buf);
        let text = crate::csv_text::to_string(&record::MANIFEST_COLUMNS, &rows);
        fsx::write_atomic(&path, text.as_bytes()).map_err(|e| StoreError::io(&path, e))?;
        Ok((path, rows.len()))
    }
}

/// What names a manifest row: spec, configuration, r, prompt index and key.
fn row_identity(row: &[String]) -> Vec<String> {
    row[..5].to_vec()
}

/// The rows of an earlier manifest, or none when it does not parse or its columns are
/// not today's.
fn previous_manifest_rows(text: &str) -> Vec<Vec<String>> {
    let Ok(records) = crate::csv_text::records(text) else {
        return Vec::new();
    };
    let mut records = records.into_iter().map(|(_, row)| row);
    match records.next() {
        Some(header) if header == record::MANIFEST_COLUMNS => records
            .filter(|row| row.len() == record::MANIFEST_COLUMNS.len())
            .collect(),
        _ => Vec::new(),
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
