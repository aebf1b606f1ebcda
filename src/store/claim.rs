//! Claims: which worker runs which job, as a log of generations per job.
//!
//! `claims/<key>/` holds files `00000000.json`, `00000001.json`, … Each is created
//! with [`crate::fsx::create_exclusive`], so for every
//! generation number exactly one worker succeeds. The file with the highest
//! number (the head) says who holds the job:
//!
//! * no directory or no file: nobody; the next claim is generation 0;
//! * head `"state": "claimed"`: its worker holds the job, unless the claim is
//!   stale; whoever sees it stale claims generation head + 1;
//! * head `"state": "released"`: nobody; the next claim is head + 1;
//! * head `"state": "completed"`: the job is done; nobody claims it again.
//!
//! A claim is stale when its worker is dead: on the same machine (same host name,
//! boot id and pid namespace) when its process is gone (pid absent, or the pid
//! now belongs to a process that started at another time); on another machine
//! when its heartbeat is older than the store's claim timeout. A holder rewrites
//! its own file with a fresh heartbeat (write and rename, so readers see the old
//! or the new text) and checks on every heartbeat, and before completing, that
//! no later generation exists; if one does, the job was taken over and the claim
//! is lost. Files are never removed while workers run, so a generation, once
//! seen, stays, and a worker can only ever win the generation after the true
//! head. The `completed` entry (written right after the job's record) keeps a
//! done job from being claimed again even where another host's view of the
//! object directory lags (NFS attribute caching can hide a new `record.json` for
//! a while; the `link` that creates a generation always goes to the server).
//! [`Store::tidy`](super::Store::tidy) removes the logs of done jobs when no
//! worker runs.
//!
//! Why a log rather than one `claims/<key>.json`: taking over a stale claim
//! means replacing a file that other workers may be replacing at the same
//! moment, and no file system operation replaces a file only if it is still the
//! one you read. Creating the next generation is such an operation: of all the
//! workers that saw the same stale head, one wins.
//!
//! What this relies on: atomic `link` (or `O_EXCL` create) and `rename` within a
//! directory, true of local file systems and of NFSv3+, Lustre, GPFS, BeeGFS and
//! CephFS; clocks on different hosts that agree to well within the claim
//! timeout (NTP), since heartbeats are compared with the reader's clock; and a
//! timeout much longer than any pause of a live worker (heartbeats every
//! [`DEFAULT_HEARTBEAT`], timeout [`DEFAULT_CLAIM_TIMEOUT`]). A live worker
//! paused past the timeout (suspended, or cut off from the file server) loses
//! its claim to another worker, and both may compute the image; the paused one
//! finds out at its next heartbeat or at completion and does not write.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::StoreError;
use crate::fsx::{create_exclusive, write_atomic};

/// How often [`Claim::keep_alive`] refreshes a heartbeat by default.
pub const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(30);
/// How old a heartbeat from another machine must be for its claim to be taken over.
pub const DEFAULT_CLAIM_TIMEOUT: Duration = Duration::from_secs(600);
/// Version of the claim file layout.
pub const CLAIM_FORMAT: u32 = 1;

/// Who is working: this process on this machine, and a label for people.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Worker {
    /// Free text (e.g. `shard 3/8`).
    pub label: String,
    pub host: String,
    /// `/proc/sys/kernel/random/boot_id` (empty where unknown): a reboot
    /// changes it, and every claim made before is then known dead.
    pub boot_id: String,
    /// The pid namespace (`/proc/self/ns/pid` link text, empty where unknown):
    /// containers on one host share its name and boot id, not their pids.
    pub pid_ns: String,
    pub pid: u32,
    /// Start time of the process in clock ticks since boot (`/proc/<pid>/stat`
    /// field 22), so that a recycled pid is not mistaken for the worker.
    pub pid_start: Option<u64>,
}

impl Worker {
    /// This process.
    pub fn current(label: impl Into<String>) -> Worker {
        let pid = std::process::id();
        Worker {
            label: label.into(),
            host: host_name(),
            boot_id: read_trimmed("/proc/sys/kernel/random/boot_id"),
            pid_ns: std::fs::read_link("/proc/self/ns/pid")
                .map(|p| p.to_string_lossy().into_owned())
                .unwrap_or_default(),
            pid,
            pid_start: process_start(pid),
        }
    }

    /// Whether `other`'s pid can be looked up here.
    fn same_machine(&self, other: &ClaimInfo) -> bool {
        !self.host.is_empty()
            && !self.boot_id.is_empty()
            && !self.pid_ns.is_empty()
            && self.host == other.host
            && self.boot_id == other.boot_id
            && self.pid_ns == other.pid_ns
    }
}

fn read_trimmed(path: &str) -> String {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

pub use crate::host::host_name;

/// Field 22 (`starttime`) of `/proc/<pid>/stat`; `None` where there is no such
/// file or the process is a zombie (dead, not yet reaped by its parent).
fn process_start(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // `pid (comm) state ...`: comm may hold spaces and parentheses
    let mut fields = stat[stat.rfind(')')? + 1..].split_whitespace();
    let state = fields.next()?;
    if state == "Z" || state == "X" {
        return None;
    }
    fields.nth(18)?.parse().ok()
}

/// Whether the process is alive: `Some(false)` when it is certainly gone,
/// `None` where this system cannot tell (no `/proc`).
fn process_alive(pid: u32, start: Option<u64>) -> Option<bool> {
    if !Path::new("/proc/self/stat").exists() {
        return None;
    }
    match process_start(pid) {
        None => Some(false),
        Some(now) => Some(start.is_none_or(|s| s == now)),
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ` of milliseconds since the Unix epoch.
pub fn rfc3339(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, tod) = (secs / 86_400, secs % 86_400);
    // Howard Hinnant's civil_from_days
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        tod / 3600,
        tod / 60 % 60,
        tod % 60,
        ms % 1000
    )
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClaimState {
    Claimed,
    Released,
    Completed,
}

/// One generation file of a claim log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClaimInfo {
    pub format: u32,
    pub key: String,
    pub generation: u64,
    pub state: ClaimState,
    /// For `released`: `failed`, `released`, or `already done`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
    pub worker: String,
    pub host: String,
    pub boot_id: String,
    pub pid_ns: String,
    pub pid: u32,
    pub pid_start: Option<u64>,
    pub started_at: String,
    pub started_unix_ms: u64,
    pub heartbeat_at: String,
    pub heartbeat_unix_ms: u64,
}

impl ClaimInfo {
    fn new(key: &str, generation: u64, state: ClaimState, worker: &Worker) -> ClaimInfo {
        let now = now_ms();
        ClaimInfo {
            format: CLAIM_FORMAT,
            key: key.to_string(),
            generation,
            state,
            reason: String::new(),
            worker: worker.label.clone(),
            host: worker.host.clone(),
            boot_id: worker.boot_id.clone(),
            pid_ns: worker.pid_ns.clone(),
            pid: worker.pid,
            pid_start: worker.pid_start,
            started_at: rfc3339(now),
            started_unix_ms: now,
            heartbeat_at: rfc3339(now),
            heartbeat_unix_ms: now,
        }
    }

    fn to_json(&self) -> Vec<u8> {
        let mut text = serde_json::to_vec_pretty(self).expect("claim info is plain data");
        text.push(b'\n');
        text
    }
}

/// The head of a claim log as read.
#[derive(Debug)]
pub(crate) enum Head {
    /// No log (never claimed, or cleaned up after completion).
    Empty,
    Info(Box<ClaimInfo>),
    /// A head file that does not parse (being written with the `O_EXCL`
    /// fallback, or damaged), with its age.
    Unreadable {
        generation: u64,
        age: Duration,
    },
}

fn generation_name(generation: u64) -> String {
    format!("{generation:08}.json")
}

fn parse_generation(name: &str) -> Option<u64> {
    let stem = name.strip_suffix(".json")?;
    (!stem.is_empty() && stem.bytes().all(|b| b.is_ascii_digit()))
        .then(|| stem.parse().ok())
        .flatten()
}

/// Reads the head of the log in `dir`.
pub(crate) fn read_head(dir: &Path) -> Result<Head, StoreError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Head::Empty),
        Err(e) => return Err(StoreError::io(dir, e)),
    };
    let top = entries
        .flatten()
        .filter_map(|e| parse_generation(&e.file_name().to_string_lossy()))
        .max();
    let Some(generation) = top else {
        return Ok(Head::Empty);
    };
    let path = dir.join(generation_name(generation));
    let unreadable = |path: &Path| {
        let age = std::fs::metadata(path)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .unwrap_or_default();
        Head::Unreadable { generation, age }
    };
    match std::fs::read(&path) {
        Ok(bytes) => Ok(match serde_json::from_slice::<ClaimInfo>(&bytes) {
            Ok(info) if info.generation == generation => Head::Info(Box::new(info)),
            _ => unreadable(&path),
        }),
        // the whole log was removed between listing and reading (job completed)
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Head::Empty),
        Err(e) => Err(StoreError::io(&path, e)),
    }
}

/// What a worker may do next with a log whose head is `head`.
pub(crate) enum Next {
    /// Claim this generation.
    Claim(u64),
    /// Someone holds the job.
    Held,
    /// The job is done.
    Done,
}

pub(crate) fn next_step(head: &Head, me: &Worker, timeout: Duration) -> Next {
    match head {
        Head::Empty => Next::Claim(0),
        Head::Info(info) => match info.state {
            ClaimState::Released => Next::Claim(info.generation + 1),
            ClaimState::Completed => Next::Done,
            ClaimState::Claimed if is_stale(info, me, timeout) => Next::Claim(info.generation + 1),
            ClaimState::Claimed => Next::Held,
        },
        Head::Unreadable { generation, age } if *age > timeout => Next::Claim(generation + 1),
        Head::Unreadable { .. } => Next::Held,
    }
}

/// Whether a `completed` entry can no longer be ahead of the object it stands for: the
/// completing worker is on this machine (one file system view), or the entry is older
/// than `timeout` (another host's lagging view has caught up by then). A store that
/// then lacks the object, or holds it damaged, lost it after the fact.
pub(crate) fn completion_is_settled(info: &ClaimInfo, me: &Worker, timeout: Duration) -> bool {
    info.state == ClaimState::Completed
        && (me.same_machine(info)
            || now_ms().saturating_sub(info.heartbeat_unix_ms) > timeout.as_millis() as u64)
}

/// Whether the worker of `info` is dead (see the module docs).
pub fn is_stale(info: &ClaimInfo, me: &Worker, timeout: Duration) -> bool {
    if me.same_machine(info) {
        if let Some(alive) = process_alive(info.pid, info.pid_start) {
            return !alive;
        }
    }
    now_ms().saturating_sub(info.heartbeat_unix_ms) > timeout.as_millis() as u64
}

/// Tries to create generation `generation` of the log in `dir` for `worker`;
/// `Ok(None)` when another worker created it first.
pub(crate) fn try_create(
    dir: &Path,
    key: &str,
    generation: u64,
    worker: &Worker,
) -> Result<Option<ClaimInfo>, StoreError> {
    if generation == 0 {
        std::fs::create_dir_all(dir).map_err(|e| StoreError::io(dir, e))?;
    }
    let info = ClaimInfo::new(key, generation, ClaimState::Claimed, worker);
    let path = dir.join(generation_name(generation));
    match create_exclusive(&path, &info.to_json()) {
        Ok(true) => Ok(Some(info)),
        Ok(false) => Ok(None),
        // the log was removed (job completed meanwhile): not ours
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(StoreError::io(&path, e)),
    }
}

struct Shared {
    info: ClaimInfo,
    released: bool,
}

/// A job this worker holds. Dropping it releases the job (for another worker,
/// or a later run, to retry); [`Store::complete`](super::Store::complete) and
/// [`Store::fail`](super::Store::fail) release it with their reason.
pub struct Claim {
    dir: PathBuf,
    key: String,
    shared: Arc<Mutex<Shared>>,
}

impl std::fmt::Debug for Claim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Claim")
            .field("key", &self.key)
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

impl Claim {
    pub(crate) fn new(dir: PathBuf, info: ClaimInfo) -> Claim {
        Claim {
            dir,
            key: info.key.clone(),
            shared: Arc::new(Mutex::new(Shared {
                info,
                released: false,
            })),
        }
    }

    pub fn key(&self) -> &str {
        &self.key
    }

    /// The claim as last written.
    pub fn info(&self) -> ClaimInfo {
        self.shared.lock().expect("claim lock").info.clone()
    }

    /// Refreshes the heartbeat; [`StoreError::ClaimLost`] when another worker
    /// has taken the job over (this worker was thought dead) or it was released.
    pub fn heartbeat(&self) -> Result<(), StoreError> {
        heartbeat(&self.dir, &self.shared)
    }

    /// Whether this worker still holds the job (no later generation exists).
    pub fn check(&self) -> Result<(), StoreError> {
        let shared = self.shared.lock().expect("claim lock");
        check_owned(&self.dir, &shared)
    }

    /// A thread that refreshes the heartbeat every `every` until the returned
    /// guard is dropped.
    pub fn keep_alive(&self, every: Duration) -> KeepAlive {
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let (dir, shared, stop2) = (self.dir.clone(), self.shared.clone(), stop.clone());
        let lost = Arc::new(Mutex::new(None));
        let lost2 = lost.clone();
        let handle = std::thread::spawn(move || {
            let (flag, cv) = &*stop2;
            let mut stopped = flag.lock().expect("keep-alive lock");
            loop {
                let (guard, _) = cv
                    .wait_timeout_while(stopped, every, |s| !*s)
                    .expect("keep-alive lock");
                stopped = guard;
                if *stopped {
                    return;
                }
                if let Err(e) = heartbeat(&dir, &shared) {
                    let done = matches!(e, StoreError::ClaimLost { .. });
                    *lost2.lock().expect("keep-alive lock") = Some(e.to_string());
                    if done {
                        return;
                    }
                }
            }
        });
        KeepAlive {
            stop,
            handle: Some(handle),
            last_error: lost,
        }
    }

    /// Ends the claim without a result: the job is free for the next worker.
    pub fn release(self) -> Result<(), StoreError> {
        self.release_with("released")
    }

    pub(crate) fn release_with(&self, reason: &str) -> Result<(), StoreError> {
        self.end(ClaimState::Released, reason)
    }

    /// Ends the claim of a job whose record is written.
    pub(crate) fn complete(&self) -> Result<(), StoreError> {
        self.end(ClaimState::Completed, "")
    }

    fn end(&self, state: ClaimState, reason: &str) -> Result<(), StoreError> {
        let mut shared = self.shared.lock().expect("claim lock");
        if shared.released {
            return Ok(());
        }
        shared.released = true;
        let mut info = shared.info.clone();
        info.generation += 1;
        info.state = state;
        info.reason = reason.to_string();
        let now = now_ms();
        info.heartbeat_unix_ms = now;
        info.heartbeat_at = rfc3339(now);
        let path = self.dir.join(generation_name(info.generation));
        match create_exclusive(&path, &info.to_json()) {
            // Ok(false): a later generation exists, the job was taken over already
            Ok(_) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(StoreError::io(&path, e)),
        }
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        let _ = self.release_with("released");
    }
}

fn check_owned(dir: &Path, shared: &Shared) -> Result<(), StoreError> {
    let lost = || StoreError::ClaimLost {
        key: shared.info.key.clone(),
    };
    if shared.released {
        return Err(lost());
    }
    match read_head(dir)? {
        Head::Info(h) if h.generation == shared.info.generation => Ok(()),
        Head::Unreadable { generation, .. } if generation == shared.info.generation => Ok(()),
        _ => Err(lost()),
    }
}

fn heartbeat(dir: &Path, shared: &Mutex<Shared>) -> Result<(), StoreError> {
    let mut shared = shared.lock().expect("claim lock");
    check_owned(dir, &shared)?;
    let now = now_ms();
    shared.info.heartbeat_unix_ms = now;
    shared.info.heartbeat_at = rfc3339(now);
    let path = dir.join(generation_name(shared.info.generation));
    write_atomic(&path, &shared.info.to_json()).map_err(|e| StoreError::io(&path, e))
}

/// The heartbeat thread of [`Claim::keep_alive`]; dropping it stops the thread.
pub struct KeepAlive {
    stop: Arc<(Mutex<bool>, Condvar)>,
    handle: Option<JoinHandle<()>>,
    last_error: Arc<Mutex<Option<String>>>,
}

impl KeepAlive {
    /// The last heartbeat error, if any (a lost claim stops the thread).
    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().expect("keep-alive lock").clone()
    }
}

impl Drop for KeepAlive {
    fn drop(&mut self) {
        let (flag, cv) = &*self.stop;
        *flag.lock().expect("keep-alive lock") = true;
        cv.notify_all();
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// Removes a claim log (best effort).
pub(crate) fn remove_log(dir: &Path) {
    let _ = std::fs::remove_dir_all(dir);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(951_782_400_123), "2000-02-29T00:00:00.123Z");
        assert_eq!(rfc3339(1_764_156_645_000), "2025-11-26T11:30:45.000Z");
    }

    #[test]
    fn generation_names() {
        assert_eq!(generation_name(12), "00000012.json");
        assert_eq!(parse_generation("00000012.json"), Some(12));
        assert_eq!(parse_generation(".tmp-x-00000012.json"), None);
        assert_eq!(parse_generation(".json"), None);
    }

    #[test]
    fn this_process_is_alive() {
        let me = Worker::current("t");
        if cfg!(target_os = "linux") {
            assert!(me.pid_start.is_some() && !me.boot_id.is_empty());
            assert_eq!(process_alive(me.pid, me.pid_start), Some(true));
            assert_eq!(
                process_alive(me.pid, me.pid_start.map(|s| s + 1)),
                Some(false)
            );
        }
    }
}
