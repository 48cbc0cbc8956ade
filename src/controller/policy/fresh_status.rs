//! The policies' status as the API server holds it now, for a replica about to act on policies
//! it did not act on at its last tick (a handover, its own start, acting again after a lapse).
//! What its tick mirrored, or the watch's copy, can be older than the previous owner's last
//! write. One GET per policy reads it right, and is what a few policies taken over do here; but a
//! replica that gains a third of 5,000 policies at once sent 1,667 GETs to an API server already
//! busy with the handover, slowing the renewals that keep it acting. So once more than
//! [`CROWD`] wait at once, each further one shares a consistent LIST begun after it asked: the
//! same freshness as its own GET, one request for the crowd. (A LIST for every policy starting
//! one by one, as a lone replica's cold start does, listed all 5,000 policies back to back.)

use crate::api::{BackpressurePolicy, BackpressurePolicyStatus};
use kube::{Api, ResourceExt};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::sync::Mutex;
use tokio::time::Instant;

/// Status by `namespace/name`, as one LIST found it.
type Listed = HashMap<String, Option<BackpressurePolicyStatus>>;

/// Reads in flight past which the next ones share a LIST.
const CROWD: usize = 16;

#[derive(Default)]
pub struct FreshStatus {
    /// The last LIST and when it began, while reads are in flight (only a read that asked
    /// before it began can take from it); a LIST runs at a time.
    last: Mutex<Option<(Instant, Arc<Listed>)>>,
    /// Reads in flight now.
    waiting: AtomicUsize,
}

/// Counts a read in flight while alive; the last one out lets the LIST go (every policy's
/// status, held for nothing until the next handover otherwise).
struct Waiting<'a>(&'a FreshStatus);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        if self.0.waiting.fetch_sub(1, Ordering::SeqCst) == 1
            && let Ok(mut last) = self.0.last.try_lock()
        {
            *last = None;
        }
    }
}

impl FreshStatus {
    /// The status of `namespace/name` read by a GET in its namespace, or with a crowd by a LIST
    /// over `scope` (every namespace, or the one levee watches), that began after this call:
    /// `None` when the policy is not there (deleted), `Some(None)` when it has no status yet.
    pub async fn read(
        &self,
        scope: &Api<BackpressurePolicy>,
        namespace: &str,
        name: &str,
    ) -> Result<Option<Option<BackpressurePolicyStatus>>, kube::Error> {
        let asked = Instant::now();
        let _waiting = Waiting(self);
        if self.waiting.fetch_add(1, Ordering::SeqCst) < CROWD {
            let own = Api::<BackpressurePolicy>::namespaced(scope.clone().into_client(), namespace);
            return Ok(own.get_opt(name).await?.map(|policy| policy.status));
        }
        let mut last = self.last.lock().await;
        let listed = match last.as_ref() {
            Some((began, listed)) if *began >= asked => listed.clone(),
            _ => {
                let began = Instant::now();
                let listed = Arc::new(list_all(scope).await?);
                *last = Some((began, listed.clone()));
                listed
            }
        };
        drop(last);
        Ok(listed.get(&crate::controller::ring_key(namespace, name)).cloned())
    }
}

/// Every policy's status, by pages of [`PAGE`]: a consistent read from etcd (no
/// resourceVersion, as a GET), its later pages from the same snapshot. One page is a request
/// within the client's timeout even on a slow API server; 5,000 policies in one were not.
async fn list_all(api: &Api<BackpressurePolicy>) -> Result<Listed, kube::Error> {
    let mut listed = Listed::new();
    let mut params = kube::api::ListParams::default().limit(PAGE);
    loop {
        let page = api.list(&params).await?;
        listed.extend(page.items.into_iter().map(|policy| {
            let key =
                crate::controller::ring_key(&policy.namespace().unwrap_or_default(), &policy.name_any());
            (key, policy.status)
        }));
        match page.metadata.continue_.filter(|token| !token.is_empty()) {
            Some(token) => params = params.continue_token(&token),
            None => return Ok(listed),
        }
    }
}

/// Policies a page of that LIST holds.
const PAGE: u32 = 500;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures;
    use http::{Request, Response};
    use kube::client::Body;
    use serde_json::json;

    fn policy(name: &str) -> BackpressurePolicy {
        fixtures::policy_with(json!({
            "metadata": {"name": name, "namespace": "jobs"},
            "status": {"state": "Open", "transitions": name.len()},
        }))
    }

    /// A few reads at once are a GET each; past the crowd the others share LISTs, each begun after
    /// they asked, and every read gets its own policy's status.
    #[tokio::test]
    async fn a_crowd_of_reads_shares_lists_and_a_few_get_each_its_own() {
        let (service, mut server) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let api: Api<BackpressurePolicy> = Api::all(kube::Client::new(service, "default"));
        let names: Vec<String> = (0..40).map(|i| format!("p{}", "x".repeat(i))).collect();
        let all: Vec<BackpressurePolicy> = names.iter().map(|name| policy(name)).collect();
        let answering = tokio::spawn(async move {
            let (mut gets, mut lists) = (0, 0);
            while let Ok(Some((request, respond))) =
                tokio::time::timeout(std::time::Duration::from_millis(500), server.next_request()).await
            {
                let path = request.uri().path().to_string();
                let body = if path == "/apis/levee.dev/v1alpha1/backpressurepolicies" {
                    lists += 1;
                    json!({"apiVersion": "levee.dev/v1alpha1", "kind": "BackpressurePolicyList", "metadata": {}, "items": all})
                } else {
                    gets += 1;
                    let name = path.rsplit('/').next().unwrap();
                    json!(all.iter().find(|p| p.name_any() == name).unwrap())
                };
                // Slow answers, so that the reads pile up as a handover's do.
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                respond.send_response(Response::new(Body::from(serde_json::to_vec(&body).unwrap())));
            }
            (gets, lists)
        });
        let fresh = Arc::new(FreshStatus::default());
        let reads = names.iter().map(|name| {
            let (fresh, api, name) = (fresh.clone(), api.clone(), name.clone());
            tokio::spawn(async move { fresh.read(&api, "jobs", &name).await.unwrap() })
        });
        let read = futures::future::join_all(reads).await;
        for (name, status) in names.iter().zip(read) {
            let status = status
                .unwrap()
                .expect("the policy is there")
                .expect("with a status");
            assert_eq!(status.transitions, name.len() as u64, "{name}");
        }
        assert!(
            fresh.last.try_lock().unwrap().is_none(),
            "the LIST is let go once no read is in flight"
        );
        let (gets, lists) = answering.await.unwrap();
        assert!(gets <= CROWD, "{gets} GETs");
        assert!(
            lists >= 1 && gets + lists < names.len(),
            "{gets} GETs, {lists} LISTs"
        );
    }
}
