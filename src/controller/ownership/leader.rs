//! Leader election on a `coordination.k8s.io` Lease: every replica samples, only the holder
//! writes. Time is measured on this process's monotonic clock, never read from the Lease's
//! timestamps, so skewed or stepped clocks cannot cut a lease short or stretch it:
//! - the holder renews every third of the lease duration and steps down by itself when no renewal
//!   succeeded for two thirds of it (before any follower may take over);
//! - a follower watches the Lease: a holder that released it on shutdown is replaced at once, a
//!   holder that stopped renewing (crash, lost node) once the Lease has not changed for a whole
//!   lease duration.

use crate::controller::ownership::advert::{PeerAddress, PeerAdvert, Peers};
use crate::controller::ownership::hold::Hold;
use crate::controller::{Result, Settings};
use futures::StreamExt;
use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{ObjectMeta, PostParams};
use kube::runtime::watcher;
use kube::{Api, Client};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{Notify, oneshot, watch};
use tokio::task::JoinHandle;

/// Where the Lease lives and how long it lasts.
#[derive(Clone, Debug)]
pub struct LeaseSettings {
    pub name: String,
    pub namespace: String,
    /// How long a holder keeps the Lease without renewing it.
    pub duration: Duration,
    /// The uid of this replica's Pod, whose name is the replica's identity. A ring Lease
    /// (`--ownership=shards`) names that Pod as its owner, so that the garbage collector deletes
    /// the Lease with the Pod even when the replica could not (`helm uninstall` removes the Role
    /// while the pods are still stopping).
    pub pod_uid: Option<String>,
}

impl LeaseSettings {
    pub(super) fn renew_every(&self) -> Duration {
        self.duration / 3
    }

    /// A holder that could not renew for this long steps down.
    pub(super) fn renew_deadline(&self) -> Duration {
        self.duration * 2 / 3
    }
}

/// The parts of a Lease the election (and the shards' ring) reads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Record {
    pub(super) holder: Option<String>,
    renewed: Option<Timestamp>,
    transitions: i32,
    pub(super) duration: Option<Duration>,
}

impl Record {
    pub(super) fn of(lease: &Lease) -> Self {
        let spec = lease.spec.clone().unwrap_or_default();
        Self {
            holder: spec.holder_identity.filter(|h| !h.is_empty()),
            renewed: spec.renew_time.map(|t| t.0),
            transitions: spec.lease_transitions.unwrap_or(0),
            duration: spec
                .lease_duration_seconds
                .and_then(|s| u64::try_from(s).ok())
                .map(Duration::from_secs),
        }
    }
}

/// What to do next with the Lease.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Move {
    /// We hold it: renew.
    Renew,
    /// Nobody holds it (or the holder stopped renewing): take it.
    Acquire,
    /// Someone else holds it: look again after this long at the latest.
    Follow(Duration),
}

/// The next move, given the Lease (None: it does not exist) and how long it has been unchanged
/// as this process observed it.
fn next_move(record: Option<&Record>, me: &str, unchanged_for: Duration, lease: Duration) -> Move {
    let Some(record) = record else {
        return Move::Acquire;
    };
    match record.holder.as_deref() {
        Some(holder) if holder == me => Move::Renew,
        None => Move::Acquire,
        Some(_) => {
            let duration = record.duration.unwrap_or(lease);
            match duration.checked_sub(unchanged_for) {
                Some(left) if !left.is_zero() => Move::Follow(left),
                _ => Move::Acquire,
            }
        }
    }
}

/// A loop over Leases running in the background, beside a watch on them that wakes it; `stop`
/// lets the loop give its Lease up and waits for that to be written.
pub struct LeaseTask {
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

impl LeaseTask {
    /// Spawns `lease_loop(changed, stopped)` and a watch of the Leases `config` selects in `api`
    /// that notifies `changed`; the watch ends with the loop.
    pub(super) fn spawn<F>(
        api: Api<Lease>,
        config: watcher::Config,
        lease_loop: impl FnOnce(Arc<Notify>, oneshot::Receiver<()>) -> F,
    ) -> Self
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        let (stop, stopped) = oneshot::channel();
        let changed = Arc::new(Notify::new());
        let watch_task = tokio::spawn(notify_changes(api, config, changed.clone()));
        let running = lease_loop(changed, stopped);
        let task = tokio::spawn(async move {
            running.await;
            watch_task.abort();
        });
        Self { stop, task }
    }

    pub async fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.task.await;
    }
}

/// Starts the election; the receiver says whether this replica leads. Without lease settings the
/// replica always leads.
/// Also returns the leader as a peer while another replica leads and its Lease says where it
/// answers (`peers.rs`).
pub async fn elect(
    client: Client,
    watch_client: Client,
    settings: &Settings,
) -> Result<(watch::Receiver<bool>, Option<LeaseTask>, watch::Receiver<Peers>)> {
    let (peers_sender, peers) = watch::channel(Peers::new());
    let Some(lease) = settings.lease.clone() else {
        // Always leading: the receiver keeps this value after the sender is dropped.
        let (_, receiver) = watch::channel(true);
        return Ok((receiver, None, peers));
    };
    let (sender, receiver) = watch::channel(false);
    let watched: Api<Lease> = Api::namespaced(watch_client, &lease.namespace);
    let config = watcher::Config::default().fields(&format!("metadata.name={}", lease.name));
    let candidate = Candidate {
        api: Api::namespaced(client, &lease.namespace),
        identity: settings.identity.clone(),
        lease,
        observed: None,
        hold: Hold::default(),
        advert: settings.peer.as_ref().map(PeerAdvert::of),
        peers: peers_sender,
    };
    let task = LeaseTask::spawn(watched, config, |changed, stopped| {
        candidate.campaign(sender, changed, stopped)
    });
    Ok((receiver, Some(task), peers))
}

/// Wakes the loop whenever a Lease `config` selects changes.
async fn notify_changes(api: Api<Lease>, config: watcher::Config, changed: Arc<Notify>) {
    let mut events = watcher(api, config).boxed();
    while let Some(event) = events.next().await {
        match event {
            Ok(_) => changed.notify_one(),
            Err(error) => {
                tracing::debug!(%error, "watching the lease failed; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

struct Candidate {
    api: Api<Lease>,
    identity: String,
    lease: LeaseSettings,
    /// The Lease as last seen, and when it was first seen like that.
    observed: Option<(Record, Instant)>,
    /// Our hold on the Lease: when our last renewal (or acquisition) was written.
    hold: Hold,
    /// What this replica writes on the Lease while it leads, for its followers.
    advert: Option<PeerAdvert>,
    /// The leader, for a follower, when its Lease says where it answers.
    peers: watch::Sender<Peers>,
}

impl Candidate {
    async fn campaign(
        mut self,
        leading: watch::Sender<bool>,
        changed: Arc<Notify>,
        mut stopped: oneshot::Receiver<()>,
    ) {
        loop {
            let wait = match tokio::time::timeout(self.step_budget(), self.step()).await {
                Ok(Ok(wait)) => wait,
                Ok(Err(error)) => {
                    tracing::warn!(%error, "lease update failed; retrying");
                    Duration::from_secs(1)
                }
                Err(_) => {
                    tracing::warn!("the lease request hung; retrying");
                    Duration::from_secs(1)
                }
            };
            let holding = self.hold.holds(Instant::now(), &self.lease);
            if holding != *leading.borrow() {
                tracing::info!(leading = holding, identity = %self.identity, "leadership changed");
                leading.send_replace(holding);
            }
            let wait = if holding {
                // Step down exactly at the deadline if renewals keep failing.
                let left = self.hold.step_budget(Instant::now(), &self.lease);
                wait.min(left)
            } else {
                wait
            };
            tokio::select! {
                _ = &mut stopped => break,
                _ = tokio::time::sleep(wait) => {}
                _ = changed.notified(), if !holding => {}
            }
        }
        let held = *leading.borrow();
        leading.send_replace(false);
        if held && let Err(error) = self.release().await {
            tracing::warn!(%error, "releasing the lease failed; it expires by itself");
        }
    }

    /// How long the next step may take: while this replica holds the Lease, only until its hold
    /// lapses (`Hold::step_budget`).
    fn step_budget(&self) -> Duration {
        self.hold.step_budget(Instant::now(), &self.lease)
    }

    /// Reads the Lease, renews or takes it when due; how long to wait before the next step.
    async fn step(&mut self) -> kube::Result<Duration> {
        let lease = self.api.get_opt(&self.lease.name).await?;
        let record = lease.as_ref().map(Record::of);
        let now = Instant::now();
        let unchanged_since = match (&self.observed, &record) {
            (Some((seen, since)), Some(current)) if seen == current => *since,
            _ => now,
        };
        self.observed = record.clone().map(|r| (r, unchanged_since));
        let decided = next_move(
            record.as_ref(),
            &self.identity,
            now - unchanged_since,
            self.lease.duration,
        );
        let leader = match (decided, &record, &lease) {
            (Move::Follow(_), Some(record), Some(lease)) => record
                .holder
                .clone()
                .zip(PeerAddress::of(lease))
                .into_iter()
                .collect(),
            _ => Peers::new(),
        };
        self.peers.send_if_modified(|peers| {
            let changed = *peers != leader;
            *peers = leader;
            changed
        });
        match decided {
            Move::Follow(left) => {
                self.hold.release();
                Ok(left)
            }
            Move::Renew | Move::Acquire => {
                let taking_over = decided == Move::Acquire;
                match self.write(lease, taking_over).await {
                    Ok(()) => {
                        self.hold.renew(now);
                        Ok(self.lease.renew_every())
                    }
                    // Someone else wrote the Lease first: look again at once.
                    Err(kube::Error::Api(status)) if status.code == 409 => {
                        if taking_over {
                            self.hold.release();
                        }
                        Ok(Duration::ZERO)
                    }
                    Err(error) => Err(error),
                }
            }
        }
    }

    /// Writes the Lease as ours (optimistically: a concurrent writer gets a conflict).
    async fn write(&self, current: Option<Lease>, taking_over: bool) -> kube::Result<()> {
        let now = MicroTime(Timestamp::now());
        let seconds = i32::try_from(self.lease.duration.as_secs()).unwrap_or(i32::MAX);
        match current {
            None => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(self.lease.name.clone()),
                        namespace: Some(self.lease.namespace.clone()),
                        annotations: self.advert.as_ref().map(PeerAdvert::annotations),
                        ..Default::default()
                    },
                    spec: Some(LeaseSpec {
                        holder_identity: Some(self.identity.clone()),
                        acquire_time: Some(now.clone()),
                        renew_time: Some(now),
                        lease_duration_seconds: Some(seconds),
                        lease_transitions: Some(0),
                        ..Default::default()
                    }),
                };
                self.api.create(&PostParams::default(), &lease).await?;
            }
            Some(mut lease) => {
                if let Some(advert) = &self.advert {
                    advert.write_on(&mut lease.metadata);
                }
                let spec = lease.spec.get_or_insert_with(Default::default);
                if taking_over {
                    spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
                    spec.acquire_time = Some(now.clone());
                }
                spec.holder_identity = Some(self.identity.clone());
                spec.renew_time = Some(now);
                spec.lease_duration_seconds = Some(seconds);
                self.api
                    .replace(&self.lease.name, &PostParams::default(), &lease)
                    .await?;
            }
        }
        Ok(())
    }

    /// Gives the Lease up so a follower takes over at once.
    async fn release(&self) -> kube::Result<()> {
        let Some(mut lease) = self.api.get_opt(&self.lease.name).await? else {
            return Ok(());
        };
        let spec = lease.spec.get_or_insert_with(Default::default);
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return Ok(());
        }
        spec.holder_identity = None;
        spec.renew_time = Some(MicroTime(Timestamp::now()));
        spec.lease_duration_seconds = Some(1);
        self.api
            .replace(&self.lease.name, &PostParams::default(), &lease)
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{Request, Response};
    use kube::client::Body;
    use serde_json::json;

    const LEASE: Duration = Duration::from_secs(15);

    fn held_by(holder: Option<&str>) -> Record {
        Record {
            holder: holder.map(str::to_string),
            renewed: None,
            transitions: 0,
            duration: Some(LEASE),
        }
    }

    #[test]
    fn a_missing_or_released_lease_is_taken_at_once() {
        assert_eq!(next_move(None, "me", Duration::ZERO, LEASE), Move::Acquire);
        let released = held_by(None);
        assert_eq!(
            next_move(Some(&released), "me", Duration::ZERO, LEASE),
            Move::Acquire
        );
    }

    #[test]
    fn the_holder_renews() {
        let mine = held_by(Some("me"));
        assert_eq!(
            next_move(Some(&mine), "me", Duration::from_secs(60), LEASE),
            Move::Renew
        );
    }

    #[test]
    fn a_follower_waits_for_a_whole_lease_without_change() {
        let theirs = held_by(Some("other"));
        assert_eq!(
            next_move(Some(&theirs), "me", Duration::from_secs(5), LEASE),
            Move::Follow(Duration::from_secs(10))
        );
        assert_eq!(next_move(Some(&theirs), "me", LEASE, LEASE), Move::Acquire);
    }

    #[test]
    fn the_lease_own_duration_wins_over_ours() {
        let mut short = held_by(Some("other"));
        short.duration = Some(Duration::from_secs(4));
        assert_eq!(
            next_move(Some(&short), "me", Duration::from_secs(4), LEASE),
            Move::Acquire
        );
    }

    /// Answers the mock API server's next request with `status` and `body`; the request's method.
    async fn answer(api_server: &mut ApiServer, status: u16, body: serde_json::Value) -> http::Method {
        let (request, respond) = api_server.next_request().await.expect("a request");
        let response = Response::builder()
            .status(status)
            .body(Body::from(body.to_string().into_bytes()))
            .unwrap();
        respond.send_response(response);
        request.method().clone()
    }

    type ApiServer = tower_test::mock::Handle<Request<Body>, Response<Body>>;

    /// Issue 40: a leader whose renewal hung kept leading until the request's own timeout, a whole
    /// renew deadline after the renewal began (6.0 s after its last renewal with a 6 s lease, when
    /// a follower may take over): two leaders. It steps down at the renew deadline now.
    #[tokio::test]
    async fn a_leader_whose_renewal_hangs_steps_down_at_the_renew_deadline() {
        let (service, mut api_server) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let lease = LeaseSettings {
            name: "levee".into(),
            namespace: "levee-system".into(),
            duration: Duration::from_secs(6),
            pod_uid: None,
        };
        let candidate = Candidate {
            api: Api::namespaced(Client::new(service, "default"), "levee-system"),
            identity: "me".into(),
            lease: lease.clone(),
            observed: None,
            hold: Hold::default(),
            advert: None,
            peers: watch::channel(Peers::new()).0,
        };
        let (leading_sender, mut leading) = watch::channel(false);
        let (_stop, stopped) = oneshot::channel();
        tokio::spawn(candidate.campaign(leading_sender, Arc::new(Notify::new()), stopped));

        let not_found = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                               "reason": "NotFound", "code": 404});
        assert_eq!(answer(&mut api_server, 404, not_found).await, http::Method::GET);
        let created = json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                             "metadata": {"name": "levee", "namespace": "levee-system", "resourceVersion": "1"},
                             "spec": {"holderIdentity": "me", "leaseDurationSeconds": 6}});
        let renewal_began = Instant::now();
        assert_eq!(answer(&mut api_server, 201, created).await, http::Method::POST);
        leading.wait_for(|leads| *leads).await.unwrap();

        // The renewal a third of the lease later: its read never answers.
        let (_hung, _never_answered) = api_server.next_request().await.expect("the renewal's read");
        let hung_at = Instant::now();
        leading.wait_for(|leads| !*leads).await.unwrap();
        let stepped_down = renewal_began.elapsed();
        let after_hang = hung_at.elapsed();
        eprintln!(
            "stepped down {stepped_down:?} after the last renewal began, {after_hang:?} after the hung read"
        );
        assert!(
            stepped_down < lease.duration,
            "still leading {stepped_down:?} after the last renewal: a follower may lead by now"
        );
        assert!(
            after_hang < lease.renew_deadline() - Duration::from_secs(1),
            "a hung renewal kept the lease {after_hang:?} (the renew deadline counts from the last renewal)"
        );
    }

    #[test]
    fn the_holder_steps_down_before_a_follower_may_take_over() {
        let settings = LeaseSettings {
            name: "levee".into(),
            namespace: "levee-system".into(),
            duration: LEASE,
            pod_uid: None,
        };
        assert!(settings.renew_every() < settings.renew_deadline());
        assert!(settings.renew_deadline() < settings.duration);
    }
}
