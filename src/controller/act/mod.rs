//! The only room that writes for a policy: the fenced pass (status, the targets' marks, the
//! managed HPA, events), behind the fence of the replica's ownership.

pub mod actuator;
pub mod autoscaler;
pub mod marks;
pub mod publish;
pub mod status_io;
pub mod writes;
