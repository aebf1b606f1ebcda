//! tomex: declarative Token Merging experiments on Stable Diffusion through ONNX Runtime.
//!
//! Module map (see ARCHITECTURE.md): `model` finds and verifies model files, `engine`
//! owns ONNX Runtime (`kernel` holds the CPU kernels it runs as custom operators),
//! `diffusion` holds the numerics of a Stable Diffusion run, `cli` turns command lines
//! into calls of the above.

pub mod cli;
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
