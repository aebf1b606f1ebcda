//! A Stable Diffusion model directory in the layout diffusers/optimum exports write.

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("model directory {0} does not exist")]
    MissingDir(PathBuf),
    #[error("model {dir} lacks {file} (expected the diffusers/optimum ONNX layout: model_index.json, text_encoder/model.onnx, unet/model.onnx, vae_decoder/model.onnx, tokenizer/, scheduler/scheduler_config.json)")]
    MissingFile { dir: PathBuf, file: String },
    #[error("model {dir}: {name}/ needs vocab.json and merges.txt, or tokenizer.json")]
    MissingTokenizer { dir: PathBuf, name: String },
    #[error("cannot read {path}: {reason}")]
    BadFile { path: PathBuf, reason: String },
    #[error("model {dir} is a {class} export (model_index.json's _class_name); tomex runs Stable Diffusion 1.x, 2.x and XL exports ({supported})", supported = SUPPORTED_PIPELINES.join(", "))]
    UnsupportedPipeline { dir: PathBuf, class: String },
}

/// The pipeline classes of the exports tomex runs (model_index.json's `_class_name`): the
/// diffusers pipeline optimum's exporter copies, and the ONNX pipelines of diffusers and
/// optimum. SD 3, Flux and the rest are refused before anything loads.
pub const SUPPORTED_PIPELINES: [&str; 5] = [
    "StableDiffusionPipeline",
    "OnnxStableDiffusionPipeline",
    "ORTStableDiffusionPipeline",
    "StableDiffusionXLPipeline",
    "ORTStableDiffusionXLPipeline",
];

/// SDXL's second text encoder (OpenCLIP bigG's layout: `CLIPTextModelWithProjection`)
/// and its tokenizer.
#[derive(Clone, Debug)]
pub struct SecondTextEncoder {
    pub text_encoder: PathBuf,
    pub tokenizer_dir: PathBuf,
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
    /// SDXL's `text_encoder_2/` and `tokenizer_2/`; `None` for SD 1.x and 2.x.
    pub text_encoder_2: Option<SecondTextEncoder>,
    /// model_index.json's `force_zeros_for_empty_prompt` (SDXL: an empty negative prompt
    /// conditions on zeros, not on the encoded empty string).
    pub force_zeros_for_empty_prompt: bool,
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
        let index = read_json(&need("model_index.json")?)?;
        let class = class_name(&index);
        if let Some(class) = &class {
            if !SUPPORTED_PIPELINES.contains(&class.as_str()) {
                return Err(ModelError::UnsupportedPipeline {
                    dir: root.to_path_buf(),
                    class: class.clone(),
                });
            }
        }
        // SDXL by its class, or (an index without one) by its second encoder.
        let xl = class.as_deref().map_or_else(
            || root.join("text_encoder_2").is_dir(),
            |c| c.contains("XL"),
        );
        let text_encoder_2 = if xl {
            Some(SecondTextEncoder {
                text_encoder: need("text_encoder_2/model.onnx")?,
                tokenizer_dir: root.join("tokenizer_2"),
            })
        } else {
            None
        };
        let dir = ModelDir {
            root: root.to_path_buf(),
            text_encoder: need("text_encoder/model.onnx")?,
            unet: need("unet/model.onnx")?,
            vae_decoder: need("vae_decoder/model.onnx")?,
            tokenizer_dir: root.join("tokenizer"),
            scheduler_config: need("scheduler/scheduler_config.json")?,
            force_zeros_for_empty_prompt: index
                .get("force_zeros_for_empty_prompt")
                .and_then(|v| v.as_bool())
                .unwrap_or(false),
            text_encoder_2,
        };
        let tokenizers = std::iter::once(&dir.tokenizer_dir)
            .chain(dir.text_encoder_2.as_ref().map(|t| &t.tokenizer_dir));
        for tok in tokenizers {
            let has_bpe = tok.join("vocab.json").is_file() && tok.join("merges.txt").is_file();
            if !has_bpe && !tok.join("tokenizer.json").is_file() {
                return Err(ModelError::MissingTokenizer {
                    dir: root.to_path_buf(),
                    name: tok
                        .file_name()
                        .map_or_else(String::new, |n| n.to_string_lossy().into_owned()),
                });
            }
        }
        Ok(dir)
    }

    /// Whether this is a Stable Diffusion XL model (two text encoders, added conditions).
    pub fn is_xl(&self) -> bool {
        self.text_encoder_2.is_some()
    }

    /// The VAE's latent scaling factor: `vae_decoder/config.json`'s `scaling_factor`
    /// when the export wrote one, else SD 1.x's 0.18215.
    pub fn vae_scaling_factor(&self) -> Result<f32, ModelError> {
        let Some((_, config)) = self.vae_config()? else {
            return Ok(0.18215);
        };
        Ok(config
            .get("scaling_factor")
            .and_then(|v| v.as_f64())
            .map_or(0.18215, |v| v as f32))
    }

    /// The VAE's per-channel latent statistics, `vae_decoder/config.json`'s `latents_mean`
    /// and `latents_std` (both set, one number per latent channel), which diffusers' SDXL
    /// pipeline undoes before decoding; `None` where the config leaves them null or out.
    pub fn vae_latents_stats(&self) -> Result<Option<LatentStats>, ModelError> {
        let Some((path, config)) = self.vae_config()? else {
            return Ok(None);
        };
        let numbers = |key: &str| -> Result<Option<Vec<f32>>, ModelError> {
            match config.get(key) {
                None | Some(serde_json::Value::Null) => Ok(None),
                Some(serde_json::Value::Array(items)) => items
                    .iter()
                    .map(|v| v.as_f64().map(|v| v as f32))
                    .collect::<Option<Vec<f32>>>()
                    .map(Some)
                    .ok_or_else(|| ModelError::BadFile {
                        path: path.clone(),
                        reason: format!("`{key}` holds something other than numbers"),
                    }),
                Some(_) => Err(ModelError::BadFile {
                    path: path.clone(),
                    reason: format!("`{key}` is not a list of numbers"),
                }),
            }
        };
        let (Some(mean), Some(std)) = (numbers("latents_mean")?, numbers("latents_std")?) else {
            return Ok(None);
        };
        let channels = config
            .get("latent_channels")
            .and_then(|v| v.as_u64())
            .unwrap_or(4) as usize;
        if mean.len() != channels || std.len() != channels {
            return Err(ModelError::BadFile {
                path,
                reason: format!(
                    "`latents_mean` has {} and `latents_std` {} numbers; the VAE has {channels} latent channels",
                    mean.len(),
                    std.len()
                ),
            });
        }
        Ok(Some(LatentStats { mean, std }))
    }

    /// `vae_decoder/config.json` and its path, `None` when the export wrote none.
    fn vae_config(&self) -> Result<Option<(PathBuf, serde_json::Value)>, ModelError> {
        let path = self.root.join("vae_decoder/config.json");
        if !path.is_file() {
            return Ok(None);
        }
        let config = read_json(&path)?;
        Ok(Some((path, config)))
    }

    pub fn scheduler_config_text(&self) -> Result<String, ModelError> {
        read_text(&self.scheduler_config)
    }

    /// The scheduler class the model was saved with (`scheduler_config.json`'s
    /// `_class_name`), which diffusers' pipeline runs by default.
    pub fn scheduler_class(&self) -> Result<Option<String>, ModelError> {
        Ok(class_name(&read_json(&self.scheduler_config)?))
    }

    /// The image side diffusers' pipeline defaults to: the UNet's `sample_size` times the
    /// VAE's scale factor, 2^(len(block_out_channels) - 1). `None` when the export lacks
    /// either config (diffusers' own ONNX exports do not always write them).
    pub fn default_image_size(&self) -> Result<Option<usize>, ModelError> {
        let config = |rel: &str| {
            let path = self.root.join(rel);
            path.is_file().then(|| read_json(&path)).transpose()
        };
        let (Some(unet), Some(vae)) = (
            config("unet/config.json")?,
            config("vae_decoder/config.json")?,
        ) else {
            return Ok(None);
        };
        let sample = unet.get("sample_size").and_then(|v| v.as_u64());
        let levels = vae
            .get("block_out_channels")
            .and_then(|v| v.as_array())
            .map(|a| a.len());
        Ok(match (sample, levels) {
            (Some(sample), Some(levels)) if (1..=8).contains(&levels) => {
                Some(sample as usize * (1 << (levels - 1)))
            }
            _ => None,
        })
    }
}

fn class_name(config: &serde_json::Value) -> Option<String> {
    config.get("_class_name")?.as_str().map(str::to_string)
}

pub(crate) fn read_text(path: &Path) -> Result<String, ModelError> {
    std::fs::read_to_string(path).map_err(|e| ModelError::BadFile {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

/// A VAE's per-channel latent mean and standard deviation (SDXL-family configs).
#[derive(Debug, Clone, PartialEq)]
pub struct LatentStats {
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
}

pub(crate) fn read_json(path: &Path) -> Result<serde_json::Value, ModelError> {
    serde_json::from_str(&read_text(path)?).map_err(|e| ModelError::BadFile {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repo_model(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("models")
            .join(name)
    }

    /// A copy of the tiny model's small files (configs, tokenizer) with empty graphs.
    fn tiny_copy() -> tempfile::TempDir {
        let tmp = tempfile::tempdir().unwrap();
        let tiny = repo_model("tiny");
        for rel in [
            "model_index.json",
            "scheduler/scheduler_config.json",
            "unet/config.json",
            "vae_decoder/config.json",
            "tokenizer/vocab.json",
            "tokenizer/merges.txt",
        ] {
            let to = tmp.path().join(rel);
            std::fs::create_dir_all(to.parent().unwrap()).unwrap();
            std::fs::copy(tiny.join(rel), to).unwrap();
        }
        for rel in ["text_encoder", "unet", "vae_decoder"] {
            std::fs::create_dir_all(tmp.path().join(rel)).unwrap();
            std::fs::write(tmp.path().join(rel).join("model.onnx"), b"").unwrap();
        }
        tmp
    }

    fn set_key(path: &Path, key: &str, value: serde_json::Value) {
        let mut config = read_json(path).unwrap();
        config[key] = value;
        std::fs::write(path, config.to_string()).unwrap();
    }

    #[test]
    fn defaults_come_from_the_models_own_configs() {
        // tiny: sample_size 8, four VAE levels (x8); demo: 32 latents -> 256.
        let tiny = ModelDir::open(&repo_model("tiny")).unwrap();
        assert_eq!(tiny.default_image_size().unwrap(), Some(64));
        assert_eq!(
            tiny.scheduler_class().unwrap().as_deref(),
            Some("PNDMScheduler")
        );
        let demo = ModelDir::open(&repo_model("demo")).unwrap();
        assert_eq!(demo.default_image_size().unwrap(), Some(256));

        let tmp = tiny_copy();
        let root = tmp.path();
        set_key(&root.join("unet/config.json"), "sample_size", 96.into());
        set_key(
            &root.join("scheduler/scheduler_config.json"),
            "_class_name",
            "DDIMScheduler".into(),
        );
        let dir = ModelDir::open(root).unwrap();
        assert_eq!(dir.default_image_size().unwrap(), Some(768));
        assert_eq!(
            dir.scheduler_class().unwrap().as_deref(),
            Some("DDIMScheduler")
        );

        std::fs::remove_file(root.join("vae_decoder/config.json")).unwrap();
        assert_eq!(dir.default_image_size().unwrap(), None);
    }

    #[test]
    fn other_pipeline_families_are_refused_by_name() {
        let tmp = tiny_copy();
        let index = tmp.path().join("model_index.json");
        for class in SUPPORTED_PIPELINES.iter().filter(|c| !c.contains("XL")) {
            set_key(&index, "_class_name", (*class).into());
            ModelDir::open(tmp.path()).unwrap();
        }
        // An SDXL index needs the second encoder, and says which file is missing.
        set_key(&index, "_class_name", "StableDiffusionXLPipeline".into());
        let message = ModelDir::open(tmp.path()).unwrap_err().to_string();
        assert!(message.contains("text_encoder_2/model.onnx"), "{message}");
        for class in ["StableDiffusion3Pipeline", "FluxPipeline"] {
            set_key(&index, "_class_name", class.into());
            let message = ModelDir::open(tmp.path()).unwrap_err().to_string();
            assert!(message.contains(class), "{message}");
            assert!(message.contains("StableDiffusionPipeline"), "{message}");
        }
        // An index without a class name (some hand-made exports) is taken as SD 1.x/2.x.
        std::fs::write(&index, b"{}").unwrap();
        ModelDir::open(tmp.path()).unwrap();
        std::fs::write(&index, b"{not json").unwrap();
        let message = ModelDir::open(tmp.path()).unwrap_err().to_string();
        assert!(message.contains("model_index.json"), "{message}");
    }
}
