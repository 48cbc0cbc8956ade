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

/// The policies' tasks and what they share: the circuit's clock, the status read afresh for
/// takeovers, and the finalizer applies made.
pub struct Policies {
    pub tasks: task::PolicyTasks,
    /// The circuit's time: wall time at start, advanced monotonically.
    pub clock: clock::CircuitClock,
    /// Status read afresh for the policies about to be taken over, one LIST for all of them.
    pub fresh_status: fresh_status::FreshStatus,
    /// The policies this replica put the finalizer on, by UID, and the resourceVersion of the
    /// watch's copy then (`reconcile.rs::with_finalizer`).
    pub finalized: std::sync::Mutex<std::collections::HashMap<String, String>>,
}

impl Default for Policies {
    /// No task yet, the clock started now.
    fn default() -> Self {
        Self {
            tasks: task::PolicyTasks::default(),
            clock: clock::CircuitClock::start(),
            fresh_status: fresh_status::FreshStatus::default(),
            finalized: Default::default(),
        }
    }
}
