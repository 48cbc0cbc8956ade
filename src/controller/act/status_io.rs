//! The status subresource's write: a server-side apply of the whole status levee owns.

use crate::api::{BackpressurePolicy, BackpressurePolicyStatus};
use crate::controller::{FIELD_MANAGER, Kube};
use crate::telemetry::Metrics;
use kube::api::{Patch, PatchParams};
use kube::{Api, ResourceExt};

/// The server-side apply body of a status: serialized straight to the request's bytes, without
/// a JSON tree in between.
#[derive(Debug, serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct StatusApply<'a> {
    api_version: &'static str,
    kind: &'static str,
    status: &'a BackpressurePolicyStatus,
}

/// Server-side applies `status` to the policy's status subresource.
pub async fn write(
    kube: &Kube,
    metrics: &Metrics,
    policy: &BackpressurePolicy,
    status: &BackpressurePolicyStatus,
) -> kube::Result<()> {
    let api: Api<BackpressurePolicy> =
        Api::namespaced(kube.client.clone(), &policy.namespace().unwrap_or_default());
    let body = StatusApply {
        api_version: "levee.dev/v1alpha1",
        kind: "BackpressurePolicy",
        status,
    };
    api.patch_status(
        &policy.name_any(),
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&body),
    )
    .await?;
    metrics.api_writes.with_label_values(&["status"]).inc();
    Ok(())
}
