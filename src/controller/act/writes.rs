//! A policy's writes, apart from its ticks: a tick decides and hands over what to write (its
//! status, the targets to bring to the saved decision, its events); one pass at a time writes
//! them, in that order, in a task of its own. A tick that comes while a pass runs replaces what
//! the next pass writes, keeping the events. So an API server that is slow or saturated delays
//! what reaches it, never the sampling and deciding: 200 policies on a Redis that stops
//! answering all decide on time however long their writes take, and the writes that were
//! overtaken by a newer status are never sent.

use crate::api::{BackpressurePolicy, BackpressurePolicyStatus};
use crate::controller::Context;
use crate::controller::act::actuator;
use crate::controller::act::autoscaler;
use crate::controller::act::marks::{Intent, Release};
use crate::controller::act::publish::publish;
use crate::controller::act::status_io::write;
use crate::controller::ownership::fence::{Fence, Fenced};
use crate::controller::ownership::shards::Acting;
use crate::controller::policy::plan::{Failures, Job};
use crate::controller::policy::status::{moved, worth_writing};
use crate::controller::policy::timing::{phase_of, task_key};
use kube::ResourceExt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;

/// A heartbeat (a status write with nothing new in it) is sent only when one of these is free,
/// else on a later tick: heartbeats then never queue up in front of a transition's write,
/// however many policies there are (5,000 policies owe the API server 167 a second).
static HEARTBEAT_SLOTS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(8);

/// Events kept for passes not yet run, at most; older ones are dropped first.
const MAX_PENDING_EVENTS: usize = 32;

/// A policy's writes: what was last written, and the pass that writes the next.
pub struct Writes {
    shared: Arc<Mutex<Shared>>,
    /// The task running passes, if one was started; aborted with the policy's task.
    running: Option<JoinHandle<()>>,
}

struct Shared {
    written: BackpressurePolicyStatus,
    last_write: Option<Instant>,
    failures: Failures,
    /// What the next pass writes.
    pending: Option<Job>,
    /// Whether a task is running passes (it takes `pending` until there is none).
    in_flight: bool,
}

impl Writes {
    /// Starting from `status`, the policy's status as the API server holds it.
    pub fn new(status: BackpressurePolicyStatus) -> Self {
        Self {
            shared: Arc::new(Mutex::new(Shared {
                written: status,
                last_write: None,
                failures: Failures::default(),
                pending: None,
                in_flight: false,
            })),
            running: None,
        }
    }

    fn shared(&self) -> std::sync::MutexGuard<'_, Shared> {
        self.shared.lock().expect("policy writes lock")
    }

    /// What the last pass failed to write.
    pub fn failures(&self) -> Failures {
        self.shared().failures.clone()
    }

    /// `compute` run on the status last written (the lock held, nothing awaited).
    pub fn with_written<T>(&self, compute: impl FnOnce(&BackpressurePolicyStatus) -> T) -> T {
        compute(&self.shared().written)
    }

    /// A follower, or a replica taking the policy over (a handover, a restart), takes the status
    /// the API server holds as what was written, with its heartbeat next due at the policy's
    /// phase point of the period (as after a first write), and at the latest two periods after
    /// its `lastSampleTime`: a takeover writes nothing that did not change, and the heartbeats
    /// of the policies it took stay spread over the period. (Before, every policy taken over was
    /// written again at once: three replicas taking 5,000 policies from one wrote some 3,300
    /// statuses over four minutes. Counting the status as written at its `lastSampleTime`
    /// instead lined the heartbeats up behind a start's writes, all due in the same minute.)
    pub fn follow(&self, status: BackpressurePolicyStatus, heartbeat: Duration, phase: f64) {
        let last_write = status.last_sample_time.as_ref().and_then(|sampled| {
            let age =
                Duration::try_from(jiff::Timestamp::now().duration_since(sampled.0)).unwrap_or_default();
            last_write_taken_over(Instant::now(), age, heartbeat, phase)
        });
        let mut shared = self.shared();
        shared.written = status;
        shared.last_write = last_write;
        // What a pass held back while acting paused is not this status's to write.
        shared.pending = None;
    }

    /// Hands `job` over: written by the running pass's successor, or by a pass started now.
    pub fn submit(&mut self, context: &Arc<Context>, job: Job) {
        let mut shared = self.shared();
        shared.queue(job);
        if shared.in_flight {
            return;
        }
        shared.in_flight = true;
        drop(shared);
        self.running = Some(tokio::spawn(passes(context.clone(), self.shared.clone())));
    }

    /// Waits for the running pass and those queued behind it (a graceful stop).
    pub async fn finish(&mut self) {
        if let Some(running) = self.running.take() {
            let _ = running.await;
        }
    }
}

impl Shared {
    /// Makes `job` the next pass's, keeping the events of the one it overtakes (the newest
    /// [`MAX_PENDING_EVENTS`]).
    fn queue(&mut self, mut job: Job) {
        if let Some(overtaken) = self.pending.take() {
            let mut kept = overtaken.events;
            kept.append(&mut job.events);
            let excess = kept.len().saturating_sub(MAX_PENDING_EVENTS);
            kept.drain(..excess);
            job.events = kept;
        }
        self.pending = Some(job);
    }

    /// Puts back a job no pass may write yet (acting paused), ahead of any newer one, and ends
    /// the passes: the next tick's pass writes the newest status with all their events.
    fn hold_back(&mut self, job: Job) {
        let newer = self.pending.take();
        self.queue(job);
        if let Some(newer) = newer {
            self.queue(newer);
        }
        self.in_flight = false;
    }
}

impl Drop for Writes {
    fn drop(&mut self) {
        self.running.take().inspect(JoinHandle::abort);
    }
}

/// When a status taken over `age` ago (by its `lastSampleTime`; a clock ahead counts as 0) is
/// counted as written, so that its heartbeat falls due at `phase` of the period from `now` and
/// never more than two periods after it was sampled; `None` (due at once) where this machine's
/// clock cannot count that far back.
fn last_write_taken_over(now: Instant, age: Duration, heartbeat: Duration, phase: f64) -> Option<Instant> {
    let wait = heartbeat
        .mul_f64(phase.clamp(0.0, 1.0))
        .min((heartbeat * 2).saturating_sub(age));
    now.checked_sub(heartbeat.saturating_sub(wait))
}

/// How often the policy's status is rewritten when nothing moved: its `statusHeartbeat`, else
/// levee's `--status-heartbeat`.
pub(in crate::controller) fn heartbeat_of(
    context: &Context,
    policy: &BackpressurePolicy,
) -> std::time::Duration {
    policy
        .spec
        .status_heartbeat
        .map_or(context.settings.status_heartbeat, Into::into)
}

/// Runs passes while there is something to write.
async fn passes(context: Arc<Context>, shared: Arc<Mutex<Shared>>) {
    loop {
        let job = {
            let mut state = shared.lock().expect("policy writes lock");
            match state.pending.take() {
                Some(job) => job,
                None => {
                    state.in_flight = false;
                    return;
                }
            }
        };
        // At most `concurrent_writers` passes over all policies write at once.
        let Ok(_slot) = context.kube.writers.acquire().await else {
            shared.lock().expect("policy writes lock").in_flight = false;
            return;
        };
        // The fence of a handover: a replica that no longer acts on the policy writes nothing,
        // and what it started ends when it stops (`fence.rs`).
        let Some(fence) = context.owners.fence(&job.policy) else {
            match context.owners.acting_on(&job.policy) {
                // Acting paused within its run: the job waits for the next tick's, which takes
                // its events (a transition's event is not lost to a late renewal).
                Acting::Paused(_) => {
                    shared.lock().expect("policy writes lock").hold_back(job);
                    return;
                }
                Acting::Yes(_) | Acting::No => continue,
            }
        };
        Box::pin(pass(&context, &fence, &shared, job)).await;
    }
}

/// One pass: the status, then the targets brought to what status holds, then the managed HPA,
/// then the events (producers are held back before anything is reported), each write behind
/// the policy's fence.
async fn pass(context: &Context, fence: &Fence, shared: &Mutex<Shared>, job: Job) {
    save_status(context, fence, shared, &job.policy, job.next).await;
    // Lost while the status was written: the new owner acts on the targets from that status.
    if !fence.holds() {
        return;
    }
    let saved = shared
        .lock()
        .expect("policy writes lock")
        .written
        .state
        .unwrap_or_default();
    let (namespace, name) = (job.policy.namespace().unwrap_or_default(), job.policy.name_any());
    if saved != job.decided {
        tracing::warn!(%namespace, policy = %name, decided = %job.decided, %saved, "the decision is not saved in status yet; producers keep the saved one");
    }
    let intent = if job.policy.spec.dry_run {
        Intent::Release(Release::DryRun)
    } else {
        Intent::Follow(saved)
    };
    let acted = actuator::act(context, fence, &job.policy, intent, &job.rules).await;
    if acted.fenced > 0 {
        tracing::info!(%namespace, policy = %name, fenced = acted.fenced, "stopped acting on the policy during a pass; its new owner writes the rest");
        return;
    }
    shared.lock().expect("policy writes lock").failures.targets = acted.errors;
    let throttled = crate::telemetry::Change::ThrottledTargets(acted.throttled);
    context
        .published
        .metrics
        .policies
        .record(&namespace, &name, throttled);
    // The HPA found in place needs no apply, and has no failure to report.
    let autoscaler_failure = match job.autoscaler {
        None => None,
        Some(sync) => match fence
            .write(autoscaler::sync(
                &context.kube,
                &context.published.metrics,
                &job.policy,
                sync.partitions,
            ))
            .await
        {
            Err(Fenced) => return,
            Ok(applied) => applied.err().map(|error| {
                tracing::warn!(%namespace, policy = %name, %error, "managing the HPA failed; retrying");
                error.to_string()
            }),
        },
    };
    shared.lock().expect("policy writes lock").failures.autoscaler = autoscaler_failure;
    for (type_, reason, note) in job.events {
        let published = publish(
            &context.kube,
            &context.published.metrics,
            &job.policy,
            type_,
            reason,
            note,
        );
        if fence.write(published).await.is_err() {
            return;
        }
    }
}

/// Writes `next` when it differs in substance from what was written (at once), or when a live
/// number moved far from what status shows or the heartbeat is due (when a slot is free).
async fn save_status(
    context: &Context,
    fence: &Fence,
    shared: &Mutex<Shared>,
    policy: &BackpressurePolicy,
    next: BackpressurePolicyStatus,
) {
    let heartbeat = heartbeat_of(context, policy);
    let (worth, due, first) = {
        let state = shared.lock().expect("policy writes lock");
        (
            worth_writing(&state.written, &next),
            moved(&state.written, &next) || state.last_write.is_none_or(|at| at.elapsed() >= heartbeat),
            state.last_write.is_none(),
        )
    };
    if !due && !worth {
        return;
    }
    // Only a heartbeat or a moved number waits for a free slot, and never in a queue.
    let _slot = if worth {
        None
    } else {
        match HEARTBEAT_SLOTS.try_acquire() {
            Ok(slot) => Some(slot),
            Err(_) => return,
        }
    };
    let (namespace, name) = (policy.namespace().unwrap_or_default(), policy.name_any());
    let fenced = |_: Fenced| {
        tracing::info!(%namespace, policy = %name, "stopped acting on the policy; its status is left to the new owner");
    };
    let written = match fence
        .write(write(&context.kube, &context.published.metrics, policy, &next))
        .await
    {
        Err(lost) => return fenced(lost),
        Ok(Err(error)) if refused_as_too_large(&error) => {
            // The decision first: producers follow only a saved one, so a status the API
            // server will not store must not keep the circuit from acting.
            tracing::warn!(%namespace, policy = %name, %error, "the API server refused the status; writing the decision alone");
            let decision = next.decision_only();
            match fence
                .write(write(
                    &context.kube,
                    &context.published.metrics,
                    policy,
                    &decision,
                ))
                .await
            {
                Err(lost) => return fenced(lost),
                Ok(written) => written.map(|()| decision),
            }
        }
        Ok(written) => written.map(|()| next),
    };
    match written {
        Ok(next) => {
            let now = Instant::now();
            // The first heartbeat comes a fraction of the period later (the policy's phase):
            // policies started together then send their heartbeats spread over the whole
            // period, not a thousand in the same second, and none waits more than one period.
            let written_at = if first {
                let early = heartbeat.mul_f64(1.0 - phase_of(&task_key(policy)));
                now.checked_sub(early).unwrap_or(now)
            } else {
                now
            };
            let mut state = shared.lock().expect("policy writes lock");
            state.written = next;
            state.last_write = Some(written_at);
        }
        Err(error) => {
            tracing::warn!(%namespace, policy = %name, %error, "writing status failed; retrying next tick")
        }
    }
}

/// Whether the API server refused a status for its size or content (413, 422, or a 500 from
/// etcd: "request is too large", or its client's "trying to send message larger than max"),
/// not for being unreachable.
fn refused_as_too_large(error: &kube::Error) -> bool {
    match error {
        kube::Error::Api(status) => {
            matches!(status.code, 413 | 422)
                || ["request is too large", "larger than max"]
                    .iter()
                    .any(|said| status.message.contains(said))
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::circuit::State;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    const PERIOD: Duration = Duration::from_secs(300);

    fn job(decided: State, reason: &'static str) -> Job {
        let policy = crate::fixtures::policy_with(serde_json::json!({}));
        Job {
            rules: policy.spec.circuit_rules(),
            policy: Arc::new(policy),
            next: BackpressurePolicyStatus::default(),
            decided,
            events: vec![(kube::runtime::events::EventType::Normal, reason, String::new())],
            autoscaler: None,
        }
    }

    fn reasons(job: &Job) -> Vec<&'static str> {
        job.events.iter().map(|(_, reason, _)| *reason).collect()
    }

    /// A job held back while acting paused keeps its events for the next pass, behind none
    /// that is newer; a status taken over (a handover, a resume) drops what was held.
    #[test]
    fn a_job_held_back_while_acting_paused_keeps_its_events_until_a_takeover() {
        let writes = Writes::new(BackpressurePolicyStatus::default());
        {
            let mut shared = writes.shared();
            shared.in_flight = true;
            shared.queue(job(State::Open, "Later"));
            shared.hold_back(job(State::Open, "CircuitOpened"));
            assert!(!shared.in_flight, "the passes end");
            let next = shared.pending.as_ref().expect("held");
            assert_eq!(reasons(next), ["CircuitOpened", "Later"], "oldest first");
            shared.pending = None;
            shared.hold_back(job(State::HalfOpen, "CircuitHalfOpen"));
            shared.queue(job(State::HalfOpen, "Tick"));
            assert_eq!(
                reasons(shared.pending.as_ref().unwrap()),
                ["CircuitHalfOpen", "Tick"]
            );
        }
        writes.follow(BackpressurePolicyStatus::default(), PERIOD, 0.5);
        assert!(writes.shared().pending.is_none());
    }

    /// When the heartbeat of a status taken over `age` ago at `phase` falls due, from now.
    fn due_in(age: Duration, phase: f64) -> Duration {
        let now = Instant::now() + PERIOD * 4;
        let last = last_write_taken_over(now, age, PERIOD, phase).expect("counted back");
        (last + PERIOD) - now
    }

    #[test]
    fn a_status_taken_over_is_due_at_its_phase_point_and_never_over_two_periods_old() {
        let secs = |d: Duration| d.as_secs();
        assert_eq!(
            secs(due_in(Duration::from_secs(10), 0.5)),
            150,
            "its phase of the period"
        );
        assert_eq!(secs(due_in(Duration::from_secs(10), 0.0)), 0, "phase 0: due now");
        assert_eq!(
            secs(due_in(Duration::from_secs(500), 0.9)),
            100,
            "sampled 500 s ago: due when it is two periods old, before its phase point"
        );
        assert_eq!(
            secs(due_in(Duration::from_secs(900), 0.5)),
            0,
            "older than two periods: due now"
        );
    }

    #[test]
    fn a_followed_status_waits_for_its_heartbeat_one_never_sampled_is_due_at_once() {
        let writes = Writes::new(BackpressurePolicyStatus::default());
        writes.follow(BackpressurePolicyStatus::default(), PERIOD, 0.5);
        assert!(writes.shared().last_write.is_none(), "never sampled: due at once");
        let sampled = BackpressurePolicyStatus {
            last_sample_time: Some(Time(jiff::Timestamp::now() - jiff::SignedDuration::from_secs(10))),
            ..BackpressurePolicyStatus::default()
        };
        writes.follow(sampled, PERIOD, 0.5);
        let due = writes.shared().last_write.expect("counted as written") + PERIOD;
        let wait = due.saturating_duration_since(Instant::now()).as_secs();
        assert!((148..=150).contains(&wait), "due in {wait} s");
    }

    #[test]
    fn a_status_refused_for_its_size_is_told_from_an_api_server_that_is_away() {
        let api = |code: u16, message: &str| {
            kube::Error::Api(kube::core::Status::failure(message, "").with_code(code).boxed())
        };
        let etcd = "rpc error: code = ResourceExhausted desc = trying to send message larger than max (2543583 vs. 2097152)";
        assert!(refused_as_too_large(&api(500, etcd)));
        assert!(refused_as_too_large(&api(
            500,
            "etcdserver: request is too large"
        )));
        assert!(refused_as_too_large(&api(
            422,
            "status.conditions[0].message: Too long"
        )));
        assert!(refused_as_too_large(&api(413, "request entity too large")));
        assert!(!refused_as_too_large(&api(500, "etcdserver: leader changed")));
        assert!(!refused_as_too_large(&api(429, "too many requests")));
        assert!(!refused_as_too_large(&api(409, "conflict")));
    }
}
