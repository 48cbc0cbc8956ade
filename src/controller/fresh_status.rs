//! The policies' status as the API server holds it now, for a replica about to act on policies
//! it did not act on at its last tick (a handover, its own start, acting again after a lapse).
//! What its tick mirrored, or the watch's copy, can be older than the previous owner's last
//! write. One GET per policy read it right, but a replica that gains a third of 5,000 policies
//! at once sent 1,667 GETs to an API server already busy with the handover, slowing the
//! renewals that keep it acting. Here every policy waiting for its status shares one
//! consistent LIST begun after it asked: the same freshness as its own GET, one request for all.

use crate::api::{BackpressurePolicy, BackpressurePolicyStatus};
use kube::{Api, ResourceExt};
use std::collections::HashMap;
use std::sync::Arc;
use tokio::sync::Mutex;
use tokio::time::Instant;

/// Status by `namespace/name`, as one LIST found it.
type Listed = HashMap<String, Option<BackpressurePolicyStatus>>;

/// The last LIST and when it began; a LIST runs at a time.
#[derive(Default)]
pub struct FreshStatus {
    last: Mutex<Option<(Instant, Arc<Listed>)>>,
}

impl FreshStatus {
    /// The status of `namespace/name` read by a LIST of `api` that began after this call:
    /// `None` when the policy is not there (deleted), `Some(None)` when it has no status yet.
    pub async fn read(
        &self,
        api: &Api<BackpressurePolicy>,
        namespace: &str,
        name: &str,
    ) -> Result<Option<Option<BackpressurePolicyStatus>>, kube::Error> {
        let asked = Instant::now();
        let mut last = self.last.lock().await;
        let listed = match last.as_ref() {
            Some((began, listed)) if *began >= asked => listed.clone(),
            _ => {
                let began = Instant::now();
                // No resourceVersion: a consistent read from etcd, as a GET is.
                let list = api.list(&kube::api::ListParams::default()).await?;
                let listed: Arc<Listed> = Arc::new(
                    list.items
                        .into_iter()
                        .map(|policy| {
                            let key =
                                super::ring_key(&policy.namespace().unwrap_or_default(), &policy.name_any());
                            (key, policy.status)
                        })
                        .collect(),
                );
                *last = Some((began, listed.clone()));
                listed
            }
        };
        drop(last);
        Ok(listed.get(&super::ring_key(namespace, name)).cloned())
    }
}
