//! levee as a KEDA external scaler: KEDA's `externalscaler.proto` (`proto/`, taken from KEDA's Go
//! module) served over gRPC with TLS on a port of its own (`server`), answering from the values
//! the policy tasks publish (`crate::values`), beside the external metrics API and never through
//! it. What a trigger may ask, and the answers, are pure functions (`query`).

pub mod query;
pub mod server;

/// The messages and service generated from `proto/externalscaler.proto` (build.rs).
#[allow(clippy::all, clippy::pedantic)]
pub mod proto {
    tonic::include_proto!("externalscaler");
}
