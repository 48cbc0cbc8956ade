//! A policy's task: what it keeps between ticks, the tick (sample, decide), its status and
//! events, and the circuit's time.

pub mod backoff;
pub mod clock;
pub mod events;
pub mod fresh_status;
pub mod judgement;
pub mod plan;
pub mod record;
pub mod status;
pub mod task;
pub mod timing;
