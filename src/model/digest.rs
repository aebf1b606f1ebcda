//! SHA-256 digests of model files, with a cache keyed by (path, size, mtime) so a
//! multi-GB UNet is hashed once, not on every run.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use sha2::{Digest, Sha256};

/// `sha256:<hex>` of a file's bytes.
pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(prefixed_hex(hasher))
}

/// `sha256:<hex>` of `bytes`.
pub fn sha256_bytes(bytes: &[u8]) -> String {
    let mut hasher = Sha256::new();
    hasher.update(bytes);
    prefixed_hex(hasher)
}

fn prefixed_hex(hasher: Sha256) -> String {
    format!("sha256:{}", hex(&hasher.finalize()))
}

/// Lowercase hex of `bytes` (digests in keys, file names and records).
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Digests already computed, stored as JSON in the user's cache folder.
pub struct DigestCache {
    path: Option<PathBuf>,
    entries: BTreeMap<String, String>,
    dirty: bool,
}

impl DigestCache {
    /// The cache at `$XDG_CACHE_HOME/tomex/digests.json` (or `~/.cache/...`); an
    /// unreadable cache is simply empty.
    pub fn open_default() -> DigestCache {
        let dir = std::env::var_os("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")));
        let path = dir.map(|d| d.join("tomex").join("digests.json"));
        let entries = path
            .as_ref()
            .and_then(|p| std::fs::read_to_string(p).ok())
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or_default();
        DigestCache {
            path,
            entries,
            dirty: false,
        }
    }

    /// A cache that is never written (tests).
    pub fn in_memory() -> DigestCache {
        DigestCache {
            path: None,
            entries: BTreeMap::new(),
            dirty: false,
        }
    }

    pub fn digest(&mut self, path: &Path) -> std::io::Result<String> {
        let meta = std::fs::metadata(path)?;
        let mtime = meta
            .modified()?
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let abs = path.canonicalize()?;
        // The inode and the status-change time as well: an edit that keeps the size and
        // restores the modification time (`touch -d`) still changes the ctime, which no
        // tool can set back, so the file is hashed again.
        use std::os::unix::fs::MetadataExt;
        let key = format!(
            "{}|{}|{}|{}|{}.{}",
            abs.display(),
            meta.len(),
            mtime,
            meta.ino(),
            meta.ctime(),
            meta.ctime_nsec()
        );
        if let Some(d) = self.entries.get(&key) {
            return Ok(d.clone());
        }
        let d = sha256_file(path)?;
        self.entries.insert(key, d.clone());
        self.dirty = true;
        Ok(d)
    }

    /// Writes the cache back (atomically); failures only cost a re-hash next time.
    pub fn save(&mut self) {
        let (Some(path), true) = (&self.path, self.dirty) else {
            return;
        };
        let Some(dir) = path.parent() else { return };
        if std::fs::create_dir_all(dir).is_err() {
            return;
        }
        if let Ok(text) = serde_json::to_string(&self.entries) {
            if crate::fsx::write_atomic(path, text.as_bytes()).is_ok() {
                self.dirty = false;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_of_known_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("abc");
        std::fs::write(&p, b"abc").unwrap();
        assert_eq!(
            sha256_file(&p).unwrap(),
            "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let mut cache = DigestCache::in_memory();
        assert_eq!(cache.digest(&p).unwrap(), sha256_file(&p).unwrap());
    }

    /// Bytes changed at the same size with the modification time put back are hashed
    /// again (the status-change time moved), not taken from the cache.
    #[test]
    fn a_same_size_edit_with_the_mtime_restored_is_rehashed() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("w");
        std::fs::write(&p, b"abc").unwrap();
        let mut cache = DigestCache::in_memory();
        let first = cache.digest(&p).unwrap();
        let mtime = std::fs::metadata(&p).unwrap().modified().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(&p, b"abd").unwrap();
        std::fs::File::options()
            .write(true)
            .open(&p)
            .unwrap()
            .set_modified(mtime)
            .unwrap();
        assert_eq!(std::fs::metadata(&p).unwrap().modified().unwrap(), mtime);
        let second = cache.digest(&p).unwrap();
        assert_ne!(first, second);
        assert_eq!(second, sha256_file(&p).unwrap());
    }
}
