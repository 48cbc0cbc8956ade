//! The `BackpressurePolicy` API: types, defaults, schema and offline validation. No I/O.

mod policy;
pub mod validation;

pub use policy::*;
