//! The reconcile of a policy: which replica keeps its task, and the finalizer, through which
//! the policy's owner releases its producers before the policy goes away.

use crate::api::BackpressurePolicy;
use crate::controller::act::actuator;
use crate::controller::cache::trim;
use crate::controller::{Context, Error, Result};
use kube::runtime::controller::Action;
use kube::runtime::finalizer::{Event as FinalizerEvent, finalizer};
use kube::{Api, Resource, ResourceExt};
use std::sync::Arc;
use std::time::Duration;

/// The finalizer that lets levee release a policy's producers before the policy goes away.
pub const FINALIZER: &str = "levee.dev/release-targets";

/// The `result` label of `levee_reconciliations_total` for one reconcile's outcome: `ok`, the
/// cause of a failed reconcile ([`Error::metric_label`]), or what kept the controller from
/// reconciling at all.
pub(super) fn reconcile_result_label<T, Q: std::error::Error + 'static>(
    result: &std::result::Result<T, kube::runtime::controller::Error<Error, Q>>,
) -> &'static str {
    use kube::runtime::controller::Error as Run;
    match result {
        Ok(_) => "ok",
        Err(Run::ReconcilerFailed(error, _)) => error.metric_label(),
        Err(Run::QueueError(_)) => "watch",
        Err(Run::ObjectNotFound(_)) => "not_found",
        Err(Run::RunnerError(_)) => "runner",
    }
}

/// Keeps a task for each policy this replica owns (for every policy without peers) and the
/// others on standby; only the owner adds and honours the finalizer.
#[tracing::instrument(skip_all, fields(policy = %policy.name_any(), namespace = policy.namespace().unwrap_or_default()))]
pub(super) async fn reconcile(policy: Arc<BackpressurePolicy>, context: Arc<Context>) -> Result<Action> {
    if !context.owners.owns(&policy) {
        if policy.meta().deletion_timestamp.is_none() {
            context.policies.tasks.stand_by(&context, policy);
        } else {
            // The owner releases the targets; another replica stops serving the policy.
            context.policies.tasks.stop(&policy);
            forget(&context, &policy);
        }
        return Ok(Action::await_change());
    }
    let namespace = policy.namespace().unwrap_or_default();
    let api: Api<BackpressurePolicy> = Api::namespaced(context.kube.client.clone(), &namespace);
    let policy = with_finalizer(&context, &api, policy).await?;
    let for_event = context.clone();
    finalizer(&api, FINALIZER, policy, |event| async move {
        match event {
            FinalizerEvent::Apply(policy) => {
                for_event.policies.tasks.ensure(&for_event, policy);
                Ok(Action::await_change())
            }
            FinalizerEvent::Cleanup(policy) => {
                for_event.policies.tasks.stop(&policy);
                actuator::release(&for_event, &policy).await?;
                forget(&for_event, &policy);
                Ok(Action::await_change())
            }
        }
    })
    .await
    .map_err(|error| Error::Finalizer(Box::new(error)))
}

/// The policy with levee's finalizer: put on by a server-side apply of that one entry (the API
/// server keeps finalizers as a set, so the apply adds it beside any other and changes nothing
/// when it is there) when the watch's copy lacks it, and the object the API server returns
/// taken from then on. kube's own add is a JSON patch that tests the list first, which a copy
/// behind the API server fails for as long as it lags: at 5,000 policies on three replicas the
/// watch fell minutes behind and every policy a replica took over was refused (422) and retried,
/// none of it acted on.
/// A copy the watch still shows as it was when this replica put the finalizer on (the same
/// resourceVersion) is taken as having it: no second apply each time the policy is reconciled
/// before the watch catches up.
async fn with_finalizer(
    context: &Context,
    api: &Api<BackpressurePolicy>,
    policy: Arc<BackpressurePolicy>,
) -> Result<Arc<BackpressurePolicy>> {
    let has_it = policy.finalizers().iter().any(|f| f == FINALIZER);
    if has_it || policy.meta().deletion_timestamp.is_some() {
        return Ok(policy);
    }
    let uid = policy.uid().unwrap_or_default();
    let applied_to = context
        .policies
        .finalized
        .lock()
        .expect("finalized lock")
        .get(&uid)
        .cloned();
    if applied_to.is_some() && applied_to == policy.resource_version() {
        let mut known = (*policy).clone();
        known.finalizers_mut().push(FINALIZER.to_string());
        return Ok(Arc::new(known));
    }
    let entry = serde_json::json!({
        "apiVersion": BackpressurePolicy::api_version(&()),
        "kind": BackpressurePolicy::kind(&()),
        // The uid makes the apply fail rather than create a policy deleted meanwhile.
        "metadata": {"name": policy.name_any(), "uid": policy.uid(), "finalizers": [FINALIZER]},
    });
    let params = kube::api::PatchParams::apply(FINALIZER_MANAGER);
    let mut patched = api
        .patch(&policy.name_any(), &params, &kube::api::Patch::Apply(entry))
        .await?;
    trim::policy(&mut patched);
    if let Some(version) = policy.resource_version() {
        context
            .policies
            .finalized
            .lock()
            .expect("finalized lock")
            .insert(uid, version);
    }
    Ok(Arc::new(patched))
}

/// The field manager that owns levee's finalizer entry (its own, so that no other apply of levee's
/// takes the entry away by leaving it out).
const FINALIZER_MANAGER: &str = "levee-finalizer";

/// Drops a deleted policy's metric series and served values.
pub(super) fn forget(context: &Context, policy: &BackpressurePolicy) {
    let (namespace, name) = (policy.namespace().unwrap_or_default(), policy.name_any());
    context.published.metrics.forget_policy(&namespace, &name);
    context.published.values.forget(&namespace, &name);
    if let Some(uid) = policy.uid() {
        context
            .policies
            .finalized
            .lock()
            .expect("finalized lock")
            .remove(&uid);
    }
}

/// Retries a failed reconcile; the failure is counted where every outcome is, in `run`.
pub(super) fn error_policy(
    _policy: Arc<BackpressurePolicy>,
    error: &Error,
    _context: Arc<Context>,
) -> Action {
    tracing::warn!(%error, cause = error.metric_label(), "reconcile failed; retrying");
    Action::requeue(Duration::from_secs(5))
}
