//! Statistics of image sets cached on disk, keyed by the set's content, so that a set
//! (above all the r = 0 set every configuration is compared with) is featurised once and
//! a report re-renders without featurising unchanged sets.
//!
//! A set's key is the SHA-256 of what determines its statistics: the sorted keys of its
//! images (store keys name image content), the feature size, and the Inception network's
//! digest. Files are `<key>.npz`, written atomically; an unreadable file is treated as
//! absent and recomputed. A set of fewer images than feature dimensions (n < d: a few
//! dozen images at 2048-d) keeps its features, `features` `[n, d]` in f64, from which
//! [`Statistics::from_features`] gives back the very statistics it gave when the set was
//! featurised (0.5 MB for 64 images, against 32 MB for a 2048 × 2048 covariance);
//! larger sets keep pytorch-fid's `mu` and `sigma` (see [`super::stats`]).

use std::path::{Path, PathBuf};

use ndarray::{Array2, ArrayView2};
use ndarray_npy::NpzReader;
use sha2::{Digest, Sha256};

use super::stats::write_npz;
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
        let path = self.path(key);
        let stats = match read_features(&path) {
            Some(features) => Statistics::from_features(features.view(), key).ok(),
            None => Statistics::load_npz(&path).ok(),
        };
        stats.filter(|s| s.dims() == dims)
    }

    /// Stores the set `key`, whose `features` gave `stats` (the folder is created): its
    /// features when it has fewer images than dimensions, else its statistics.
    pub fn put(
        &self,
        key: &str,
        features: ArrayView2<f64>,
        stats: &Statistics,
    ) -> Result<(), FidError> {
        std::fs::create_dir_all(&self.dir).map_err(|e| FidError::Io {
            path: self.dir.clone(),
            reason: e.to_string(),
        })?;
        let path = self.path(key);
        let (n, d) = features.dim();
        if n >= d {
            return stats.save_npz(&path);
        }
        write_npz(&path, |npz| npz.add_array(FEATURES, &features))
    }
}

/// The array of a cache file that holds a set's features rather than its statistics.
const FEATURES: &str = "features";

/// The features in a cache file, if it holds them.
fn read_features(path: &Path) -> Option<Array2<f64>> {
    let file = std::fs::File::open(path).ok()?;
    NpzReader::new(file).ok()?.by_name(FEATURES).ok()
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
        let f = array![[1.0, 2.0], [3.0, 5.0], [4.0, 4.0]];
        let s = Statistics::from_features(f.view(), "t").unwrap();
        assert_eq!(cache.get("k", 2), None);
        cache.put("k", f.view(), &s).unwrap();
        assert_eq!(cache.get("k", 2), Some(s));
        assert_eq!(
            read_features(&cache.path("k")),
            None,
            "n >= d keeps statistics"
        );
        assert_eq!(cache.get("k", 64), None, "another feature size is a miss");
        std::fs::write(cache.path("bad"), b"not an npz").unwrap();
        assert_eq!(cache.get("bad", 2), None);
    }

    #[test]
    fn sets_of_fewer_images_than_dimensions_keep_their_features() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = StatsCache::new(tmp.path());
        let (n, d) = (5, 64);
        let f = Array2::from_shape_fn((n, d), |(i, j)| ((i * 31 + j * 7) % 13) as f64 / 3.0);
        let s = Statistics::from_features(f.view(), "t").unwrap();
        cache.put("k", f.view(), &s).unwrap();
        assert_eq!(read_features(&cache.path("k")), Some(f));
        // Bit for bit the statistics the set gave when it was featurised.
        assert_eq!(cache.get("k", d), Some(s.clone()));
        assert_eq!(cache.get("k", 2048), None);
        // Files written before (pytorch-fid's mu and sigma) still read.
        s.save_npz(&cache.path("old")).unwrap();
        assert_eq!(cache.get("old", d), Some(s));
    }
}
