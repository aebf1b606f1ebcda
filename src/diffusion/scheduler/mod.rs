//! Placeholder: schedulers (being written).
