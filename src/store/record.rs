//! What the store keeps about a job: the record of a finished one, the error of
//! a failed one, and the manifest that lists them for other tools.

use serde::{Deserialize, Serialize};

use crate::plan::{Cell, JobMaterial};

/// Version of the record layout.
pub const RECORD_FORMAT: u32 = 1;

/// Seconds spent on one image, measured as the thesis did: `wall_s` around the
/// whole pipeline call (text encoding, denoising loop, VAE decode, conversion to
/// an image), and its stages separately.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Timings {
    pub wall_s: f64,
    pub text_encoder_s: f64,
    pub unet_s: f64,
    pub vae_s: f64,
}

/// Peak memory while making the image.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct PeakMemory {
    /// Peak resident set of the process (`VmHWM`).
    pub host_rss_bytes: Option<u64>,
    /// Peak memory of the accelerator, where the execution provider reports it.
    pub device_bytes: Option<u64>,
}

/// What the runner measured and knows about where it ran.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Measurement {
    pub timings: Timings,
    pub peak_memory: PeakMemory,
    /// Execution provider and device, e.g. `cuda:0 (NVIDIA H100 80GB HBM3)` or `cpu`.
    pub device: String,
    /// ONNX Runtime version.
    pub onnxruntime: String,
    /// How the UNet computed attention: `flash`, `fused` or `exported`.
    pub attention: String,
}

/// `objects/<key>/record.json`: a finished job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub format: u32,
    pub key: String,
    /// The key material: everything that determined the image.
    pub job: JobMaterial,
    /// The cells of the plan that ran it (other specs may use the job too).
    pub cells: Vec<Cell>,
    pub timings: Timings,
    pub peak_memory: PeakMemory,
    pub device: String,
    /// `flash`, `fused` or `exported` (records older than the choice: `exported`).
    #[serde(default = "exported")]
    pub attention: String,
    pub tomex: String,
    pub onnxruntime: String,
    pub host: String,
    pub pid: u32,
    pub worker: String,
    /// When the claim was made (the job started).
    pub started_at: String,
    pub finished_at: String,
    /// `sha256:<hex>` of `image.png` and its size, checked by `tomex store verify`
    /// (the size also by every run); absent in records written before they were kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_sha256: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_bytes: Option<u64>,
}

/// `objects/<key>/error.json`: the last failure of a job not yet done.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorRecord {
    pub format: u32,
    pub key: String,
    pub job: JobMaterial,
    pub cells: Vec<Cell>,
    pub error: String,
    /// Failures so far, this one included.
    pub attempts: u32,
    pub tomex: String,
    pub host: String,
    pub pid: u32,
    pub worker: String,
    pub started_at: String,
    pub failed_at: String,
}

/// Columns of the manifest, in order.
pub const MANIFEST_COLUMNS: [&str; 31] = [
    "spec",
    "config",
    "r",
    "prompt_index",
    "key",
    "image",
    "prompt",
    "negative_prompt",
    "seed",
    "width",
    "height",
    "steps",
    "scheduler",
    "guidance",
    "batch_size",
    "merge",
    "sx",
    "sy",
    "random",
    "max_downsample",
    "wall_s",
    "text_encoder_s",
    "unet_s",
    "vae_s",
    "peak_host_rss_bytes",
    "peak_device_bytes",
    "device",
    "host",
    "tomex",
    "onnxruntime",
    "finished_at",
];

/// One manifest row: the record of a job as used by one cell.
pub(crate) fn manifest_row(record: &Record, cell: &Cell, image: &str) -> Vec<String> {
    let mut row = vec![
        cell.spec.clone(),
        cell.config.clone(),
        cell.ratio.to_string(),
        cell.prompt_index.to_string(),
    ];
    row.extend(manifest_job_columns(record, image));
    row
}

/// The manifest's columns from `key` on: what the record says of its job, whichever
/// cell uses it.
pub(crate) fn manifest_job_columns(record: &Record, image: &str) -> Vec<String> {
    let j = &record.job;
    let opt = |v: Option<u64>| v.map(|v| v.to_string()).unwrap_or_default();
    let (merge, sx, sy, random, max_ds) = match &j.tome {
        Some(t) => (
            t.merge_label(),
            t.sx.to_string(),
            t.sy.to_string(),
            t.random.to_string(),
            t.max_downsample.to_string(),
        ),
        None => ("none".into(), "".into(), "".into(), "".into(), "".into()),
    };
    vec![
        record.key.clone(),
        image.to_string(),
        j.prompt.clone(),
        j.negative_prompt.clone(),
        j.seed.to_string(),
        j.width.to_string(),
        j.height.to_string(),
        j.steps.to_string(),
        j.scheduler.clone(),
        j.guidance.to_string(),
        j.batch_size.to_string(),
        merge,
        sx,
        sy,
        random,
        max_ds,
        record.timings.wall_s.to_string(),
        record.timings.text_encoder_s.to_string(),
        record.timings.unet_s.to_string(),
        record.timings.vae_s.to_string(),
        opt(record.peak_memory.host_rss_bytes),
        opt(record.peak_memory.device_bytes),
        record.device.clone(),
        record.host.clone(),
        record.tomex.clone(),
        record.onnxruntime.clone(),
        record.finished_at.clone(),
    ]
}

/// The attention of records made before tomex could fuse it.
fn exported() -> String {
    "exported".into()
}
