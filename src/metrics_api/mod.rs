//! The `external.metrics.k8s.io` API levee serves to HorizontalPodAutoscalers: the HTTPS server
//! (`server`, over the accept loop in `crate::serving`), who may call it (`auth`, within a budget of
//! TokenReviews: `review_budget`), its front-proxy client certificates (`tls`), the answers as pure functions of the request (`routes`,
//! `selector`) over the values the policy tasks publish (`crate::values`), and forwarding of the
//! metrics it does not serve to another adapter (`delegate`).

pub mod auth;
pub mod delegate;
pub mod review_budget;
pub mod routes;
pub mod selector;
pub mod server;
pub mod tls;
