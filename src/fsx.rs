//! The file operations tomex writes with, each with what it relies on. Every file
//! tomex writes (store, caches, models.lock, reports, generated images) goes through
//! [`write_atomic`]: one way, with one set of guarantees.
//!
//! * [`write_atomic`]: write a temporary file in the target's directory (a name unique
//!   per host, process, time and call), `fsync`
//!   it, `rename` it over the target, `fsync` the directory. POSIX `rename`
//!   within a directory is atomic (readers see the old file or the new one,
//!   never a mix), also on NFS, Lustre, GPFS and BeeGFS.
//! * [`create_exclusive`]: the same temporary file, then `link` it to the target
//!   name, which fails when the name exists. `link` is the classic lock primitive
//!   of NFS (`open(O_EXCL)` was unreliable on NFSv2 clients); the file appears
//!   with its whole content at once. An NFS client that retransmits a `LINK`
//!   whose reply was lost gets `EEXIST` for its own success, so on `EEXIST` the
//!   temporary file's link count is checked (2 means the link is ours). Where a
//!   file system has no hard links, `open(O_CREAT | O_EXCL)` is used instead;
//!   then the file exists, empty, for a moment before its content is written,
//!   and readers treat an unreadable claim as fresh until its modification time
//!   is older than the claim timeout.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Prefix of every temporary file tomex writes.
pub const TMP_PREFIX: &str = ".tmp-";

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// A name no other writer (thread, process or host) picks: pid, time, counter.
pub fn unique_suffix() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{}-{:x}-{n}", std::process::id(), nanos)
}

/// A temporary name beside `target` that no other writer picks (host, pid, time,
/// counter), starting with [`TMP_PREFIX`].
pub fn tmp_path(target: &Path) -> PathBuf {
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    target.with_file_name(format!(
        "{TMP_PREFIX}{}-{}-{name}",
        crate::host::host_name_for_files(),
        unique_suffix()
    ))
}

fn write_synced(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut f = OpenOptions::new().write(true).create_new(true).open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

/// `fsync` of a directory, so a rename or link in it survives a power cut.
/// Errors are ignored: some file systems (and all of Windows) refuse it, and
/// there the rename is as durable as the system makes it.
pub fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

/// Replaces `target` with `bytes` atomically.
pub fn write_atomic(target: &Path, bytes: &[u8]) -> io::Result<()> {
    write_atomic_with(target, |f| f.write_all(bytes))
}

/// Replaces `target` atomically with what `write` writes to a fresh temporary file
/// (for contents too large to hold in memory); the file is `fsync`ed before the rename.
pub fn write_atomic_with(
    target: &Path,
    write: impl FnOnce(&mut File) -> io::Result<()>,
) -> io::Result<()> {
    let tmp = tmp_path(target);
    let result = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&tmp)
        .and_then(|mut f| {
            write(&mut f)?;
            f.sync_all()
        })
        .and_then(|()| fs::rename(&tmp, target));
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result?;
    if let Some(dir) = target.parent() {
        sync_dir(dir);
    }
    Ok(())
}

/// Writes `image` as a PNG to `target` atomically.
pub fn write_png(target: &Path, image: &image::RgbImage) -> io::Result<()> {
    let mut png = io::Cursor::new(Vec::new());
    image
        .write_to(&mut png, image::ImageFormat::Png)
        .map_err(io::Error::other)?;
    write_atomic(target, png.get_ref())
}

/// Creates `target` with `bytes` unless it exists: `Ok(true)` when this call
/// created it, `Ok(false)` when the name was taken.
pub fn create_exclusive(target: &Path, bytes: &[u8]) -> io::Result<bool> {
    let tmp = tmp_path(target);
    write_synced(&tmp, bytes)?;
    let result = match fs::hard_link(&tmp, target) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(link_count(&tmp) == Some(2)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Err(e),
        Err(_) => create_new(target, bytes),
    };
    let _ = fs::remove_file(&tmp);
    if let (Ok(true), Some(dir)) = (&result, target.parent()) {
        sync_dir(dir);
    }
    result
}

/// The `O_EXCL` fallback of [`create_exclusive`].
fn create_new(target: &Path, bytes: &[u8]) -> io::Result<bool> {
    match OpenOptions::new().write(true).create_new(true).open(target) {
        Ok(mut f) => {
            f.write_all(bytes)?;
            f.sync_all()?;
            Ok(true)
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(e),
    }
}

#[cfg(unix)]
fn link_count(path: &Path) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    fs::metadata(path).ok().map(|m| m.nlink())
}

#[cfg(not(unix))]
fn link_count(_path: &Path) -> Option<u64> {
    None
}

/// Removes the temporary files left in `dir` by writers that died.
pub fn remove_temporaries(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        if entry.file_name().to_string_lossy().starts_with(TMP_PREFIX) {
            let _ = fs::remove_file(entry.path());
        }
    }
}
