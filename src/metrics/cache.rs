//! Statistics of image sets cached on disk, keyed by the set's content, so that a set
//! (above all the r = 0 set every configuration is compared with) is featurised once and
//! a report re-renders without featurising unchanged sets.
//!
//! A set's key is the SHA-256 of what determines its statistics: the sorted keys of its
//! images (store keys name image content), the feature size, and the Inception network's
//! digest. Files are pytorch-fid `.npz` (see [`super::stats`]), `<key>.npz`, written
//! atomically; an unreadable file is treated as absent and recomputed.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::{FidError, Statistics};

/// Bumped when anything that changes statistics for the same images changes (the
/// preprocessing, the covariance), so older files are not reused.
const KEY_VERSION: &str = "tomex-fid-set-v1";

/// The content key of a set: lowercase hex SHA-256 over [`KEY_VERSION`], the Inception
/// digest, the feature size and the image keys in sorted order (the order of images does
/// not change a set's statistics).
pub fn set_key(image_keys: &[String], dims: usize, inception_digest: &str) -> String {
    let mut keys: Vec<&str> = image_keys.iter().map(String::as_str).collect();
    keys.sort_unstable();
    let mut h = Sha256::new();
    h.update(format!(
        "{KEY_VERSION}\ninception {inception_digest}\ndims {dims}\n"
    ));
    for k in keys {
        h.update(k.as_bytes());
        h.update(b"\n");
    }
    crate::model::hex(&h.finalize())
}

/// A folder of `<set key>.npz` statistics.
#[derive(Debug, Clone)]
pub struct StatsCache {
    dir: PathBuf,
}

impl StatsCache {
    pub fn new(dir: impl AsRef<Path>) -> StatsCache {
        StatsCache {
            dir: dir.as_ref().to_path_buf(),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn path(&self, key: &str) -> PathBuf {
        self.dir.join(format!("{key}.npz"))
    }

    /// The cached statistics of `key` with `dims` dimensions, if a readable file is there.
    pub fn get(&self, key: &str, dims: usize) -> Option<Statistics> {
        Statistics::load_npz(&self.path(key))
            .ok()
            .filter(|s| s.dims() == dims)
    }

    /// Stores the statistics of `key` (the folder is created).
    pub fn put(&self, key: &str, stats: &Statistics) -> Result<(), FidError> {
        std::fs::create_dir_all(&self.dir).map_err(|e| FidError::Io {
            path: self.dir.clone(),
            reason: e.to_string(),
        })?;
        stats.save_npz(&self.path(key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    fn keys(k: &[&str]) -> Vec<String> {
        k.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn key_ignores_order_and_sees_everything_else() {
        let base = set_key(&keys(&["b", "a"]), 64, "sha256:1");
        assert_eq!(base, set_key(&keys(&["a", "b"]), 64, "sha256:1"));
        assert_eq!(base.len(), 64);
        assert_ne!(base, set_key(&keys(&["a", "c"]), 64, "sha256:1"));
        assert_ne!(base, set_key(&keys(&["a"]), 64, "sha256:1"));
        assert_ne!(base, set_key(&keys(&["a", "b"]), 192, "sha256:1"));
        assert_ne!(base, set_key(&keys(&["a", "b"]), 64, "sha256:2"));
    }

    #[test]
    fn round_trip_and_unreadable_files_are_absent() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = StatsCache::new(tmp.path().join("stats"));
        let s = Statistics::from_features(array![[1.0, 2.0], [3.0, 5.0], [4.0, 4.0]].view(), "t")
            .unwrap();
        assert_eq!(cache.get("k", 2), None);
        cache.put("k", &s).unwrap();
        assert_eq!(cache.get("k", 2), Some(s));
        assert_eq!(cache.get("k", 64), None, "another feature size is a miss");
        std::fs::write(cache.path("bad"), b"not an npz").unwrap();
        assert_eq!(cache.get("bad", 2), None);
    }
}
