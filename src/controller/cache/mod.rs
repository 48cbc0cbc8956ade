//! What levee keeps of the cluster: the watched objects in indexed stores (pods, workloads,
//! HPAs, opted-in Secrets, policies) and the matching over them (selectors, shared targets).

pub mod indexed_store;
pub mod kept;
pub mod kept_secret;
pub mod secrets;
pub mod sharing;
pub mod stored;
pub mod trim;
pub mod watch_problem;
