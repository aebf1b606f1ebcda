//! A job's content key: the SHA-256 of a canonical JSON text of everything that
//! determines its image.
//!
//! The key material ([`JobMaterial`]) is written with object keys sorted by their
//! bytes, no whitespace, strings escaped as `serde_json` escapes them, integers in
//! decimal, and other numbers as Rust prints an `f64` (the shortest text that reads
//! back to the same value, never an exponent; a whole number has no `.0`, so `7.5`
//! and `7.50` and the `f32` guidance `7.5` all print `7.5`). This is Python's
//! `json.dumps(m, sort_keys=True, separators=(",", ":"), ensure_ascii=False)`
//! except for whole-valued floats (`7` here, `7.0` there) and tiny or huge ones
//! (no exponent here). The material carries [`KEY_FORMAT`]: changing what a key
//! means bumps it, and every earlier result is then simply not found.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::model::hex;
use crate::tome::{Targets, TomeConfig};

/// Version of the key material's layout.
pub const KEY_FORMAT: u32 = 1;

/// Which model made the image.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelIdentity {
    /// `sha256:<hex>` of the canonical JSON of the model's file map (path within
    /// the model directory → `sha256:<hex>` of the file, from `models.lock` or
    /// hashed by the caller for an unlocked directory): every file counts, and a
    /// job carries one short digest however many files the model has.
    Files(String),
    /// The model's files are not known (`lock:NAME` or `dir:PATH`); keys made
    /// with it are provisional: they count jobs but find nothing in a store.
    Unresolved(String),
}

impl ModelIdentity {
    /// The identity of a model with these files (path → `sha256:<hex>`).
    pub fn from_files(files: &BTreeMap<String, String>) -> ModelIdentity {
        let value = serde_json::to_value(files).expect("a map of strings");
        let mut text = String::new();
        write_canonical(&value, &mut text);
        ModelIdentity::Files(format!("sha256:{}", hex(&Sha256::digest(text.as_bytes()))))
    }
}

/// A ToMe configuration reduced to what changes the image at one ratio.
///
/// Built only when the configuration merges something ([`NormalTome::of`]); "no
/// ToMe" is `None` in [`JobMaterial::tome`], so `r = 0` and a configuration that
/// targets no component are the same job whatever their other fields say.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NormalTome {
    pub ratio: f64,
    pub self_attn: bool,
    pub cross_attn: bool,
    pub mlp: bool,
    pub sx: usize,
    pub sy: usize,
    /// A random dst per cell (tomesd's `use_rand`).
    pub random: bool,
    /// The partition seed, present only when `random` (a fixed partition draws
    /// nothing, so its seed cannot change the image).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    pub max_downsample: usize,
}

impl NormalTome {
    /// `config` at `ratio`, normalised; `None` when nothing is merged.
    pub fn of(config: &TomeConfig, ratio: f64) -> Option<NormalTome> {
        let at = TomeConfig { ratio, ..*config };
        if !at.merges_anything() {
            return None;
        }
        Some(NormalTome {
            ratio: canonical_f64(ratio),
            self_attn: at.targets.self_attn,
            cross_attn: at.targets.cross_attn,
            mlp: at.targets.mlp,
            sx: at.sx,
            sy: at.sy,
            random: at.random,
            seed: at.random.then_some(at.seed),
            max_downsample: at.max_downsample,
        })
    }

    /// The configuration to run (seed 0 when the partition is fixed).
    pub fn to_config(&self) -> TomeConfig {
        TomeConfig {
            ratio: self.ratio,
            targets: Targets {
                self_attn: self.self_attn,
                cross_attn: self.cross_attn,
                mlp: self.mlp,
            },
            sx: self.sx,
            sy: self.sy,
            random: self.random,
            seed: self.seed.unwrap_or(0),
            max_downsample: self.max_downsample,
        }
    }

    /// Merged components joined by `+` (`self_attn+cross_attn`), as in
    /// `thesis/tables.csv`.
    pub fn merge_label(&self) -> String {
        let mut parts = Vec::new();
        for (on, name) in [
            (self.self_attn, "self_attn"),
            (self.cross_attn, "cross_attn"),
            (self.mlp, "mlp"),
        ] {
            if on {
                parts.push(name);
            }
        }
        parts.join("+")
    }
}

/// Everything that determines one image; its canonical JSON is hashed into the
/// job's key, and it is all a runner needs to make the image.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobMaterial {
    /// [`KEY_FORMAT`].
    pub format: u32,
    pub model: ModelIdentity,
    /// The prompt as the text encoder sees it (after the cut rule, when on).
    pub prompt: String,
    pub negative_prompt: String,
    /// The image seed (`torch.Generator().manual_seed(seed)` for the latents).
    pub seed: u64,
    pub width: usize,
    pub height: usize,
    pub steps: usize,
    /// [`SchedulerKind::name`](crate::diffusion::scheduler::SchedulerKind::name).
    pub scheduler: String,
    /// The `f32` guidance scale, held as the `f64` of its shortest decimal text.
    pub guidance: f64,
    pub batch_size: usize,
    /// The UNet's precision when it is not float32 (`"fp16"`); absent for float32, so
    /// float32 keys are those made before precision could be chosen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub precision: Option<String>,
    /// `None`: the UNet runs without ToMe.
    pub tome: Option<NormalTome>,
}

impl JobMaterial {
    /// The canonical JSON text that is hashed.
    pub fn canonical_json(&self) -> String {
        let value = serde_json::to_value(self).expect("job material is plain data");
        let mut out = String::new();
        write_canonical(&value, &mut out);
        out
    }

    /// The job's key: lowercase hex SHA-256 of [`Self::canonical_json`].
    pub fn key(&self) -> String {
        hex(&Sha256::digest(self.canonical_json().as_bytes()))
    }

    /// The ToMe configuration to run, `None` for the uncut UNet.
    pub fn tome_config(&self) -> Option<TomeConfig> {
        self.tome.as_ref().map(NormalTome::to_config)
    }

    /// Whether the model's files were known when the key was made.
    pub fn is_provisional(&self) -> bool {
        matches!(self.model, ModelIdentity::Unresolved(_))
    }
}

/// The `f64` whose shortest decimal text is the `f32`'s (`7.3f32` → `7.3`, not
/// `7.300000190734863`).
pub fn f32_to_canonical_f64(x: f32) -> f64 {
    format!("{x}").parse().expect("an f32 prints as a float")
}

/// `-0.0` → `0.0`; every other value unchanged.
fn canonical_f64(x: f64) -> f64 {
    if x == 0.0 {
        0.0
    } else {
        x
    }
}

fn write_canonical(value: &Value, out: &mut String) {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => {
            if let Some(u) = n.as_u64() {
                out.push_str(&u.to_string());
            } else if let Some(i) = n.as_i64() {
                out.push_str(&i.to_string());
            } else {
                let f = canonical_f64(n.as_f64().expect("a JSON number"));
                out.push_str(&format!("{f}"));
            }
        }
        Value::String(s) => out.push_str(&serde_json::to_string(s).expect("a string")),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
            out.push('{');
            for (i, (k, v)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&serde_json::to_string(k).expect("a string"));
                out.push(':');
                write_canonical(v, out);
            }
            out.push('}');
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_json_sorts_keys_and_prints_numbers_plainly() {
        let v = serde_json::json!({"b": 1, "a": [7.5, 7.0, -0.0, 0.1, 1e-7], "c": {"z": null, "y": "é\"\n"}});
        let mut s = String::new();
        write_canonical(&v, &mut s);
        assert_eq!(
            s,
            r#"{"a":[7.5,7,0,0.1,0.0000001],"b":1,"c":{"y":"é\"\n","z":null}}"#
        );
    }

    #[test]
    fn f32_guidance_prints_as_written() {
        assert_eq!(f32_to_canonical_f64(7.3), 7.3);
        assert_eq!(f32_to_canonical_f64(7.5), 7.5);
    }
}
