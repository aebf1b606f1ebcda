//! A Stable Diffusion model directory in the layout diffusers/optimum exports write.

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("model directory {0} does not exist")]
    MissingDir(PathBuf),
    #[error("model {dir} lacks {file} (expected the diffusers/optimum ONNX layout: model_index.json, text_encoder/model.onnx, unet/model.onnx, vae_decoder/model.onnx, tokenizer/, scheduler/scheduler_config.json)")]
    MissingFile { dir: PathBuf, file: String },
    #[error("model {dir}: tokenizer/ needs vocab.json and merges.txt, or tokenizer.json")]
    MissingTokenizer { dir: PathBuf },
    #[error("cannot read {path}: {reason}")]
    BadFile { path: PathBuf, reason: String },
}

/// Paths of the parts of one model; construction checks that each exists.
#[derive(Clone, Debug)]
pub struct ModelDir {
    pub root: PathBuf,
    pub text_encoder: PathBuf,
    pub unet: PathBuf,
    pub vae_decoder: PathBuf,
    pub tokenizer_dir: PathBuf,
    pub scheduler_config: PathBuf,
}

impl ModelDir {
    pub fn open(root: &Path) -> Result<ModelDir, ModelError> {
        if !root.is_dir() {
            return Err(ModelError::MissingDir(root.to_path_buf()));
        }
        let need = |rel: &str| {
            let path = root.join(rel);
            if path.is_file() {
                Ok(path)
            } else {
                Err(ModelError::MissingFile {
                    dir: root.to_path_buf(),
                    file: rel.to_string(),
                })
            }
        };
        need("model_index.json")?;
        let dir = ModelDir {
            root: root.to_path_buf(),
            text_encoder: need("text_encoder/model.onnx")?,
            unet: need("unet/model.onnx")?,
            vae_decoder: need("vae_decoder/model.onnx")?,
            tokenizer_dir: root.join("tokenizer"),
            scheduler_config: need("scheduler/scheduler_config.json")?,
        };
        let tok = &dir.tokenizer_dir;
        let has_bpe = tok.join("vocab.json").is_file() && tok.join("merges.txt").is_file();
        if !has_bpe && !tok.join("tokenizer.json").is_file() {
            return Err(ModelError::MissingTokenizer {
                dir: root.to_path_buf(),
            });
        }
        Ok(dir)
    }

    /// The VAE's latent scaling factor: `vae_decoder/config.json`'s `scaling_factor`
    /// when the export wrote one, else SD 1.x's 0.18215.
    pub fn vae_scaling_factor(&self) -> Result<f32, ModelError> {
        let path = self.root.join("vae_decoder/config.json");
        if !path.is_file() {
            return Ok(0.18215);
        }
        let config = read_json(&path)?;
        Ok(config
            .get("scaling_factor")
            .and_then(|v| v.as_f64())
            .map_or(0.18215, |v| v as f32))
    }

    pub fn scheduler_config_text(&self) -> Result<String, ModelError> {
        read_text(&self.scheduler_config)
    }
}

pub(crate) fn read_text(path: &Path) -> Result<String, ModelError> {
    std::fs::read_to_string(path).map_err(|e| ModelError::BadFile {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

pub(crate) fn read_json(path: &Path) -> Result<serde_json::Value, ModelError> {
    serde_json::from_str(&read_text(path)?).map_err(|e| ModelError::BadFile {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}
