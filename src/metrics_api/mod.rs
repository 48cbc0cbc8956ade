//! The `external.metrics.k8s.io` API levee serves to HorizontalPodAutoscalers. This module holds
//! the pure pieces the server builds on, starting with Kubernetes label selectors.

pub mod auth;
pub mod routes;
pub mod selector;
pub mod server;
pub mod tls;
pub mod values;
