//! ONNX Runtime: finding and loading its library, execution providers, sessions, and
//! the three Stable Diffusion graphs, each adapting to its export's input types.

pub mod cuda_libraries;
mod device;
pub mod device_memory;
mod fixed_buffers;
mod flash_operator;
mod graph_token_ops;
mod io;
mod library;
mod lone_attention;
mod one_graph_unet;
mod resident;
mod runtime;
mod split_unet;
mod text_encoder;
mod tome_unet;
mod unet;
mod vae;

pub use cuda_libraries::CudaLibraryError;
pub use device::Device;
pub use graph_token_ops::{GraphMerge, GraphTokenOps};
pub use library::{find_library, LibrarySearch, FETCH_HINT};
pub use lone_attention::LoneAttention;
pub use one_graph_unet::{Binding, OneGraphUnet};
pub use runtime::{EngineError, Runtime};
pub use split_unet::{transformer_blocks, NoHooks, ResidentHooks, SplitUnet, TokenHooks};
pub use text_encoder::{TextEncoder, TextStates};
pub use tome_unet::{merges_nothing, TokenOps, TomeUnet};
pub use unet::{AddedConditions, Conditioning, Unet};
pub use vae::VaeDecoder;
