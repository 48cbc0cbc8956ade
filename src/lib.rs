//! levee: backpressure for Redis job queues on Kubernetes.
//!
//! The core (`api`, `circuit`, `forecast`) is pure; the shell (`sampler`, `cli`) does the I/O and depends on
//! the core, never the other way round.

pub mod api;
pub mod circuit;
pub mod cli;
pub mod controller;
pub mod external_scaler;
#[cfg(test)]
pub(crate) mod fixtures;
pub mod forecast;
pub mod metrics_api;
pub mod sampler;
pub mod serving;
pub mod telemetry;
pub mod values;
