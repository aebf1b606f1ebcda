//! tomex: declarative Token Merging experiments on Stable Diffusion through ONNX Runtime.
//!
//! Module map (ARCHITECTURE.md has each module's job and the decisions behind them),
//! from the command line down:
//!
//! * `cli`: command lines into calls of the rest;
//! * `runner`: spec → plan → jobs against the store, and the FID step;
//! * `report`, `metrics` (FID, PSNR/SSIM), `store` (results, claims, integrity),
//!   `plan` (job keys, prompt and seed draws), `spec` (the experiment TOML);
//! * `diffusion` (tokenizer, RNG, schedulers, the guidance loop) and `engine` (ONNX
//!   Runtime: sessions, the UNet whole and split, ToMe's hooks);
//! * `onnx` (graph rewrites, cuts, caches), `tome` (tomesd's algorithm), `kernel` (CPU
//!   kernels run as custom operators), `model` (export layout, models.lock, digests);
//! * `fsx` (the one atomic write), `csv_text` (the one CSV reader and writer), `host`
//!   (facts about the process and machine) and `choice` (the error of an unknown name).

pub mod choice;
pub mod cli;
pub mod csv_text;
pub mod diffusion;
pub mod engine;
pub mod fsx;
pub mod host;
pub mod kernel;
pub mod metrics;
pub mod model;
pub mod onnx;
pub mod plan;
pub mod report;
pub mod runner;
pub mod spec;
pub mod store;
pub mod tome;
