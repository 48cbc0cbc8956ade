//! The `BackpressurePolicy` API: types, defaults, schema and offline validation. No I/O.

mod crd;
pub mod labels;
pub mod names;
mod policy;
mod redact;
pub mod status;
mod status_size;
pub mod validation;

pub use crd::{crd, crd_yaml};
pub use policy::*;
pub use redact::redact_password;
