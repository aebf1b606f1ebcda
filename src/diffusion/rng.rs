//! Placeholder: torch-compatible CPU RNG (being written).
