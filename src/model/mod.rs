//! Models: the standard ONNX export layout on disk, and `models.lock`, which names
//! models and pins every file by digest.

mod digest;
mod layout;
mod lock;

pub use digest::{hex, sha256_bytes, sha256_file, DigestCache};
pub use layout::{LatentStats, ModelDir, ModelError};
pub use lock::{digest_files, LockEntry, LockError, ModelsLock, Problem, LOCK_FILE};
