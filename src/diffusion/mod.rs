//! The numerics of one Stable Diffusion image: tokenizer, torch-compatible noise,
//! schedulers, the guidance loop and the conversion to pixels.

pub mod pipeline;
pub mod pixels;
pub mod prompt;
pub mod rng;
pub mod scheduler;
pub mod tokenizer;
