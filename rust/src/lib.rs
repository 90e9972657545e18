//! Decision math of l4_sglang: no I/O, no clocks, plain Rust types.
//!
//! - [`cost_model`]: step time of one engine iteration from its batch.
//! - [`partition`]: the DP that splits N instances into length stages.
//! - [`balance`]: in-stage pick, boundary diffusion, pairwise migration.
//!
//! The Python bindings live in `py.rs`, built only with the `python` feature.

pub mod balance;
pub mod cost_model;
pub mod error;
pub mod partition;
mod rng;

#[cfg(feature = "python")]
mod py;

pub use cost_model::{BatchItem, CostModel, CostModelParams, DecodeSummary};
pub use error::CoreError;
