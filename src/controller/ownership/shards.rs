//! Policies spread over the replicas (`--ownership=shards`): each replica holds a Lease of its own
//! (`<ring>-<identity>`, labelled `levee.dev/shards: <ring>`), renewed every third of the lease
//! duration, and lists the others' after each renewal. The live replicas form a ring
//! (`ring::owner`): a policy is acted on by the replica that wins it. As with the leader Lease,
//! time is this process's monotonic clock, never the Leases' timestamps.
//!
//! No policy is acted on by two replicas at once:
//! - a replica acts only while its last renewal and listing began within two thirds of the lease
//!   duration, so one cut off from the API server stops by itself;
//! - a replica that stopped renewing leaves the others' ring once its Lease has not changed for a
//!   whole lease duration as they observed it, after it stopped acting;
//! - a joining replica counts in the others' ring from their next listing on, but acts only a
//!   whole lease duration after its Lease was written: by then every replica still acting has
//!   listed since and let go of what the newcomer wins. A replica that finds no other Lease held
//!   acts at once (nobody else can be acting).
//!
//! A replica stopping deletes its Lease once its policy tasks are done: the others take its
//! policies on their next listing, which the watch on the Leases brings at once.
//!
//! With peers (`--peer-url`), a replica's Lease also says where the others ask it for the values
//! of the policies it owns, and the SHA-256 of the certificate it answers with
//! (`crate::controller::ownership::peers`).

use crate::controller::ownership::advert::{PeerAddress, PeerAdvert};
use crate::controller::ownership::hold::Hold;
use crate::controller::ownership::leader::{LeaseSettings, LeaseTask, Record};
use crate::controller::ownership::ring;
use crate::controller::{Result, Settings};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, OwnerReference};
use kube::api::{DeleteParams, ListParams, ObjectMeta, PostParams, Preconditions};
use kube::runtime::watcher;
use kube::{Api, Client, ResourceExt};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{Notify, oneshot, watch};

/// The label that puts a replica's Lease in a ring; its value is the ring's name.
const RING_LABEL: &str = "levee.dev/shards";

/// A Lease left unchanged this many lease durations is deleted by whoever sees it so (a replica
/// that crashed never deletes its own).
const STALE_LEASES_DELETED_AFTER: u32 = 4;

/// What a replica knows of the ring, as last listed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ShardView {
    /// The live replicas, sorted; this one among them while it holds its Lease.
    pub members: Vec<String>,
    /// Until when this replica may act (None: it may not).
    pub acting_until: Option<Instant>,
    /// The other live members that answer their peers, and where.
    pub peers: BTreeMap<String, PeerAddress>,
    /// This replica's run of holding its Lease, counted from 1 at each join. Within one run no
    /// other replica can have dropped it from their ring, so none acted on what it owns: a pause
    /// in its acting (a renewal late) is no handover, and what it held stands.
    pub run: u64,
}

/// Whether a replica acts on a policy now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Acting {
    /// It does, in this run of holding its Lease (`ShardView::run`; 0 under a leader).
    Yes(u64),
    /// It wins the policy in the ring, in this run, but may not act for the moment: its last
    /// renewal or listing is late, or it has just joined.
    Paused(u64),
    /// Another replica owns it, or nobody.
    No,
}

impl ShardView {
    /// Whether `me` acts on the policy `key` now, may again in this run, or does not own it.
    pub fn acting(&self, me: &str, key: &str) -> Acting {
        if ring::owner(key, &self.members) != Some(me) {
            Acting::No
        } else if self.acting_until.is_some_and(|until| Instant::now() < until) {
            Acting::Yes(self.run)
        } else {
            Acting::Paused(self.run)
        }
    }

    /// What changes who owns what: the members, whether this replica acts, and in which run.
    fn shape(&self) -> (&[String], bool, u64) {
        (&self.members, self.acting_until.is_some(), self.run)
    }
}

/// A replica's Lease as this replica has seen it, and since when unchanged.
#[derive(Clone, Debug)]
struct Observed {
    record: Record,
    since: Instant,
    peer: Option<PeerAddress>,
}

/// The replicas whose Leases are live at `now`: held, and changed within their duration as
/// observed here (`me` counts while `holding`).
fn live_members(
    observed: &BTreeMap<String, Observed>,
    me: &str,
    holding: bool,
    now: Instant,
    duration: Duration,
) -> Vec<String> {
    let mut members: Vec<String> = observed
        .values()
        .filter_map(|seen| {
            let holder = seen.record.holder.as_deref()?;
            let live = if holder == me {
                holding
            } else {
                now.duration_since(seen.since) < seen.record.duration.unwrap_or(duration)
            };
            live.then(|| holder.to_string())
        })
        .collect();
    members.sort();
    members.dedup();
    members
}

/// This replica's hold on its own Lease.
#[derive(Clone, Copy, Debug, Default)]
struct Holding {
    /// The hold on this replica's Lease: when the last successful renewal began.
    hold: Hold,
    /// When the last successful listing began.
    listed: Option<Instant>,
    /// When the current run of renewals began, and whether another replica held a Lease then.
    joined: Option<(Instant, bool)>,
    /// How many runs there have been (`ShardView::run`).
    run: u64,
}

impl Holding {
    /// Until when this replica may act (None: not now), given the lease settings.
    fn acting_until(&self, now: Instant, lease: &LeaseSettings) -> Option<Instant> {
        let (joined, others) = self.joined?;
        if others && now.duration_since(joined) < lease.duration {
            return None;
        }
        let oldest = self.hold.last()?.min(self.listed?);
        let until = oldest + lease.renew_deadline();
        (now < until).then_some(until)
    }

    /// Takes a renewal that began at `started` and was answered at `answered`. One answered a
    /// whole lease duration or more after the last one began may have landed after the others
    /// dropped this replica from their ring and took its policies: it joins again, and waits a
    /// lease duration before it acts, as a newcomer does, while the others let go.
    fn renewed(&mut self, started: Instant, answered: Instant, lease: &LeaseSettings) {
        if self
            .hold
            .last()
            .is_some_and(|last| answered.saturating_duration_since(last) >= lease.duration)
        {
            self.joined = None;
        }
        self.hold.renew(started);
    }

    /// Takes a listing that began at `started`, in which another replica held a Lease when
    /// `others`: the first after a renewal starts a run.
    fn listed(&mut self, started: Instant, others: bool) {
        self.listed = Some(started);
        if self.joined.is_none() && self.hold.last().is_some() {
            self.joined = Some((started, others));
            self.run += 1;
        }
    }

    /// When the wait after joining is over, if it is still running.
    fn join_wait_ends(&self, lease: &LeaseSettings) -> Option<Instant> {
        match self.joined {
            Some((joined, true)) => Some(joined + lease.duration),
            _ => None,
        }
    }
}

/// Joins the ring `lease.name`; the receiver carries what this replica knows of it. Stopping
/// the task deletes this replica's Lease.
pub async fn join(
    client: Client,
    watch_client: Client,
    settings: &Settings,
    lease: LeaseSettings,
) -> Result<(watch::Receiver<ShardView>, LeaseTask)> {
    let (sender, receiver) = watch::channel(ShardView::default());
    let selector = format!("{RING_LABEL}={}", lease.name);
    let watched: Api<Lease> = Api::namespaced(watch_client, &lease.namespace);
    let config = watcher::Config::default().labels(&selector);
    let replica = Replica {
        api: Api::namespaced(client, &lease.namespace),
        identity: settings.identity.clone(),
        lease_name: lease_name(&lease.name, &settings.identity),
        selector,
        lease,
        observed: BTreeMap::new(),
        holding: Holding::default(),
        advert: settings.peer.as_ref().map(PeerAdvert::of),
    };
    let task = LeaseTask::spawn(watched, config, |changed, stopped| {
        replica.take_part(sender, changed, stopped)
    });
    Ok((receiver, task))
}

/// Sleeps until `at` (for ever without one).
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// The name of `identity`'s Lease in `ring` (a Lease name is at most 253 characters).
fn lease_name(ring: &str, identity: &str) -> String {
    let mut name = format!("{ring}-{identity}");
    name.truncate(253);
    name
}

/// The Pod `name` (uid `uid`) as the owner of a Lease, when the Pod's uid is known: the garbage
/// collector then deletes the Lease once the Pod is gone.
fn pod_owner(name: &str, uid: Option<&str>) -> Option<Vec<OwnerReference>> {
    Some(vec![OwnerReference {
        api_version: "v1".into(),
        kind: "Pod".into(),
        name: name.into(),
        uid: uid?.into(),
        ..Default::default()
    }])
}

struct Replica {
    api: Api<Lease>,
    identity: String,
    lease_name: String,
    selector: String,
    lease: LeaseSettings,
    observed: BTreeMap<String, Observed>,
    holding: Holding,
    advert: Option<PeerAdvert>,
}

impl Replica {
    async fn take_part(
        mut self,
        view: watch::Sender<ShardView>,
        changed: Arc<Notify>,
        mut stopped: oneshot::Receiver<()>,
    ) {
        loop {
            let due = self.renewal_due();
            // A renewal that hangs (the API server cut off) must not hold the view past the
            // moment acting lapses: the view lets go then, and says so, while the step waits.
            let mut lapses = self.holding.acting_until(Instant::now(), &self.lease);
            let identity = self.identity.clone();
            let stepped = {
                let step = tokio::time::timeout(self.lease.renew_deadline(), self.step(due));
                tokio::pin!(step);
                loop {
                    tokio::select! {
                        stepped = &mut step => break stepped,
                        () = sleep_until(lapses), if lapses.is_some() => {
                            lapses = None;
                            view.send_if_modified(|current| {
                                let lapsed = current.acting_until.take().is_some();
                                if lapsed {
                                    tracing::info!(members = ?current.members, acting = false, %identity, "shard ring changed");
                                }
                                lapsed
                            });
                        }
                    }
                }
            };
            match stepped {
                Ok(Ok(())) => {}
                Ok(Err(error)) => tracing::warn!(%error, "shard lease update failed; retrying"),
                Err(_) => tracing::warn!("a shard lease request hung; retrying"),
            }
            let now = Instant::now();
            let members = self.members(now);
            let next = ShardView {
                acting_until: self.holding.acting_until(now, &self.lease),
                peers: self.peers(&members),
                members,
                run: self.holding.run,
            };
            view.send_if_modified(|current| {
                let reshaped = current.shape() != next.shape();
                if reshaped {
                    tracing::info!(
                        members = ?next.members,
                        acting = next.acting_until.is_some(),
                        identity = %self.identity,
                        "shard ring changed"
                    );
                }
                *current = next;
                reshaped
            });
            let wait = self.wait(now);
            tokio::select! {
                _ = &mut stopped => break,
                _ = tokio::time::sleep(wait) => {}
                _ = changed.notified() => {}
            }
        }
        view.send_modify(|current| current.acting_until = None);
        if let Err(error) = self.api.delete(&self.lease_name, &DeleteParams::default()).await {
            tracing::warn!(%error, "deleting this replica's shard lease failed; it goes stale by itself");
        }
    }

    fn members(&self, now: Instant) -> Vec<String> {
        let holding = self.holding.hold.holds(now, &self.lease);
        live_members(&self.observed, &self.identity, holding, now, self.lease.duration)
    }

    /// The members other than this one whose Leases say where they answer.
    fn peers(&self, members: &[String]) -> BTreeMap<String, PeerAddress> {
        self.observed
            .values()
            .filter_map(|seen| {
                let holder = seen.record.holder.as_deref()?;
                let address = seen.peer.clone()?;
                (holder != self.identity && members.iter().any(|m| m == holder))
                    .then(|| (holder.to_string(), address))
            })
            .collect()
    }

    fn renewal_due(&self) -> bool {
        self.holding.hold.renewal_due(Instant::now(), &self.lease)
    }

    /// How long to sleep: to the next renewal, the end of the join wait, or the moment acting
    /// would lapse, whichever comes first (a failed step retries after a second).
    fn wait(&self, now: Instant) -> Duration {
        let next_renewal = self.holding.hold.next_renewal(&self.lease).filter(|at| *at > now);
        let Some(next_renewal) = next_renewal else {
            return Duration::from_secs(1);
        };
        let mut wake = next_renewal;
        if let Some(ends) = self.holding.join_wait_ends(&self.lease).filter(|at| *at > now) {
            wake = wake.min(ends);
        }
        wake.duration_since(now)
    }

    /// Renews this replica's Lease when `renew`, then lists the ring.
    async fn step(&mut self, renew: bool) -> kube::Result<()> {
        if renew {
            let started = Instant::now();
            match self.renew().await {
                Ok(()) => self.holding.renewed(started, Instant::now(), &self.lease),
                Err(error) => {
                    let lapsed = !self.holding.hold.holds(Instant::now(), &self.lease);
                    if lapsed {
                        self.holding.joined = None;
                    }
                    return Err(error);
                }
            }
        }
        let started = Instant::now();
        let leases = self
            .api
            .list(&ListParams::default().labels(&self.selector))
            .await?;
        self.observe(leases.items, started).await;
        let others = self.observed.values().any(|seen| {
            seen.record
                .holder
                .as_deref()
                .is_some_and(|holder| holder != self.identity)
        });
        self.holding.listed(started, others);
        Ok(())
    }

    /// Takes a listing in; deletes the Leases stale long enough.
    async fn observe(&mut self, leases: Vec<Lease>, now: Instant) {
        let mut seen = BTreeMap::new();
        let mut stale = Vec::new();
        for lease in leases {
            let name = lease.name_any();
            let record = Record::of(&lease);
            let since = match self.observed.get(&name) {
                Some(before) if before.record == record => before.since,
                _ => now,
            };
            let duration = record.duration.unwrap_or(self.lease.duration);
            if name != self.lease_name && now.duration_since(since) >= duration * STALE_LEASES_DELETED_AFTER {
                stale.push((name.clone(), lease.resource_version()));
            }
            let peer = PeerAddress::of(&lease);
            seen.insert(name, Observed { record, since, peer });
        }
        self.observed = seen;
        for (name, version) in stale {
            let params = DeleteParams {
                preconditions: Some(Preconditions {
                    resource_version: version,
                    uid: None,
                }),
                ..DeleteParams::default()
            };
            match self.api.delete(&name, &params).await {
                Ok(_) => tracing::info!(lease = %name, "deleted a stale shard lease"),
                Err(error) => tracing::debug!(lease = %name, %error, "a stale shard lease was not deleted"),
            }
        }
    }

    /// Writes this replica's Lease as held now (creating it if missing).
    fn owner(&self) -> Option<Vec<OwnerReference>> {
        pod_owner(&self.identity, self.lease.pod_uid.as_deref())
    }

    async fn renew(&self) -> kube::Result<()> {
        let now = MicroTime(jiff::Timestamp::now());
        let seconds = i32::try_from(self.lease.duration.as_secs()).unwrap_or(i32::MAX);
        match self.api.get_opt(&self.lease_name).await? {
            None => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(self.lease_name.clone()),
                        namespace: Some(self.lease.namespace.clone()),
                        labels: Some([(RING_LABEL.to_string(), self.lease.name.clone())].into()),
                        annotations: self.advert.as_ref().map(PeerAdvert::annotations),
                        owner_references: self.owner(),
                        ..Default::default()
                    },
                    spec: Some(LeaseSpec {
                        holder_identity: Some(self.identity.clone()),
                        acquire_time: Some(now.clone()),
                        renew_time: Some(now),
                        lease_duration_seconds: Some(seconds),
                        ..Default::default()
                    }),
                };
                self.api.create(&PostParams::default(), &lease).await?;
            }
            Some(mut lease) => {
                if let Some(owner) = self.owner() {
                    lease.metadata.owner_references = Some(owner);
                }
                if let Some(advert) = &self.advert {
                    advert.write_on(&mut lease.metadata);
                }
                let spec = lease.spec.get_or_insert_with(Default::default);
                spec.holder_identity = Some(self.identity.clone());
                spec.renew_time = Some(now);
                spec.lease_duration_seconds = Some(seconds);
                self.api
                    .replace(&self.lease_name, &PostParams::default(), &lease)
                    .await?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LEASE: Duration = Duration::from_secs(15);

    fn settings() -> LeaseSettings {
        LeaseSettings {
            name: "levee".into(),
            namespace: "levee-system".into(),
            duration: LEASE,
            pod_uid: None,
        }
    }

    #[test]
    fn a_ring_lease_is_owned_by_the_replicas_pod_when_its_uid_is_known() {
        assert_eq!(pod_owner("levee-7d9f-x2k4p", None), None);
        let owner = pod_owner("levee-7d9f-x2k4p", Some("0b8e-uid")).unwrap();
        assert_eq!(owner.len(), 1);
        let pod = &owner[0];
        assert_eq!(
            (
                pod.api_version.as_str(),
                pod.kind.as_str(),
                pod.name.as_str(),
                pod.uid.as_str()
            ),
            ("v1", "Pod", "levee-7d9f-x2k4p", "0b8e-uid")
        );
        assert_eq!(
            pod.block_owner_deletion, None,
            "needs no finalizer rights on pods"
        );
    }

    fn held(holder: &str, since: Instant) -> Observed {
        let lease = Lease {
            spec: Some(LeaseSpec {
                holder_identity: Some(holder.into()),
                lease_duration_seconds: Some(i32::try_from(LEASE.as_secs()).unwrap()),
                ..LeaseSpec::default()
            }),
            ..Lease::default()
        };
        Observed {
            record: Record::of(&lease),
            since,
            peer: None,
        }
    }

    #[test]
    fn a_peer_address_needs_an_https_url_and_a_sha256() {
        use crate::controller::ownership::advert::{PEER_CERT_ANNOTATION, PEER_URL_ANNOTATION};
        let lease = |url: &str, sha: &str| Lease {
            metadata: ObjectMeta {
                annotations: Some(BTreeMap::from([
                    (PEER_URL_ANNOTATION.to_string(), url.to_string()),
                    (PEER_CERT_ANNOTATION.to_string(), sha.to_string()),
                ])),
                ..ObjectMeta::default()
            },
            ..Lease::default()
        };
        let sha = "AB".repeat(32);
        let address = PeerAddress::of(&lease("https://10.0.0.7:6443", &sha)).unwrap();
        assert_eq!(address.url.port_u16(), Some(6443));
        assert_eq!(address.fingerprint, "ab".repeat(32));
        assert_eq!(PeerAddress::of(&lease("http://10.0.0.7:6443", &sha)), None);
        assert_eq!(PeerAddress::of(&lease("https://10.0.0.7:6443", "abc")), None);
        assert_eq!(PeerAddress::of(&Lease::default()), None);
    }

    #[test]
    fn a_lease_unchanged_for_its_duration_leaves_the_ring() {
        let start = Instant::now();
        let observed: BTreeMap<String, Observed> = [
            ("levee-a".to_string(), held("a", start)),
            ("levee-b".to_string(), held("b", start + Duration::from_secs(10))),
        ]
        .into();
        let at = start + LEASE;
        assert_eq!(live_members(&observed, "me", false, at, LEASE), vec!["b"]);
        assert_eq!(
            live_members(&observed, "a", true, at, LEASE),
            vec!["a", "b"],
            "a replica's own Lease counts while it holds it"
        );
    }

    #[test]
    fn a_released_lease_is_no_member() {
        let start = Instant::now();
        let mut released = held("a", start);
        released.record.holder = None;
        let observed: BTreeMap<String, Observed> = [("levee-a".to_string(), released)].into();
        assert!(live_members(&observed, "b", false, start, LEASE).is_empty());
    }

    #[test]
    fn a_newcomer_waits_a_lease_duration_unless_alone() {
        let lease = settings();
        let start = Instant::now();
        let mut holding = Holding {
            hold: Hold::renewed_at(start),
            listed: Some(start),
            joined: Some((start, true)),
            run: 1,
        };
        assert_eq!(holding.acting_until(start + Duration::from_secs(1), &lease), None);
        holding.hold = Hold::renewed_at(start + LEASE);
        holding.listed = Some(start + LEASE);
        assert_eq!(
            holding.acting_until(start + LEASE, &lease),
            Some(start + LEASE + lease.renew_deadline())
        );
        let alone = Holding {
            joined: Some((start, false)),
            ..holding
        };
        let renewed = Holding {
            hold: Hold::renewed_at(start),
            listed: Some(start),
            ..alone
        };
        assert!(renewed.acting_until(start, &lease).is_some());
    }

    #[test]
    fn a_replica_that_cannot_renew_stops_before_the_others_drop_it() {
        let lease = settings();
        let start = Instant::now();
        let holding = Holding {
            hold: Hold::renewed_at(start),
            listed: Some(start + Duration::from_secs(1)),
            joined: Some((start, false)),
            run: 1,
        };
        let until = holding.acting_until(start, &lease).unwrap();
        assert_eq!(until, start + lease.renew_deadline());
        assert_eq!(holding.acting_until(until, &lease), None);
        // The others saw its last renewal no earlier than it began, and drop it a whole lease
        // duration after that.
        assert!(until < start + LEASE);
    }

    #[test]
    fn the_view_owns_nothing_once_acting_lapsed() {
        let members = vec!["a".to_string()];
        let lapsed = ShardView {
            members: members.clone(),
            acting_until: Some(Instant::now()),
            peers: BTreeMap::new(),
            run: 3,
        };
        assert_eq!(lapsed.acting("a", "ns/p"), Acting::Paused(3));
        let acting = ShardView {
            members,
            acting_until: Some(Instant::now() + LEASE),
            peers: BTreeMap::new(),
            run: 3,
        };
        assert_eq!(acting.acting("a", "ns/p"), Acting::Yes(3));
        assert_eq!(acting.acting("b", "ns/p"), Acting::No);
    }

    /// A renewal answered late, but before the others could drop this replica, keeps its run
    /// (what it held stands); one answered a lease duration or more after the last one began
    /// starts a new run, after a newcomer's wait.
    #[test]
    fn a_renewal_answered_after_a_lease_duration_joins_again() {
        let lease = settings();
        let start = Instant::now();
        let mut holding = Holding::default();
        let renew_on_time = |holding: &mut Holding, from: Instant, to: Instant| {
            let mut at = from;
            while at <= to {
                holding.renewed(at, at, &lease);
                holding.listed(at, true);
                at += lease.renew_every();
            }
        };
        let acting_from = start + LEASE;
        renew_on_time(&mut holding, start, acting_from);
        assert_eq!(holding.run, 1);
        assert!(holding.acting_until(acting_from, &lease).is_some());

        let late = acting_from + lease.renew_every();
        let answered = acting_from + LEASE - Duration::from_millis(1);
        holding.renewed(late, answered, &lease);
        holding.listed(answered, true);
        assert_eq!(holding.run, 1, "nobody can have dropped it");
        assert!(holding.acting_until(answered, &lease).is_some());

        let too_late = late + lease.renew_every();
        let answered = late + LEASE;
        holding.renewed(too_late, answered, &lease);
        holding.listed(answered, true);
        assert_eq!(holding.run, 2, "the others may have dropped it");
        assert_eq!(holding.acting_until(answered, &lease), None);
        renew_on_time(&mut holding, answered, answered + LEASE);
        assert!(holding.acting_until(answered + LEASE, &lease).is_some());
        assert_eq!(holding.run, 2);
    }

    #[test]
    fn a_lease_name_fits_kubernetes() {
        assert_eq!(lease_name("levee", "levee-7d9f-abcde"), "levee-levee-7d9f-abcde");
        assert_eq!(lease_name("levee", &"x".repeat(400)).len(), 253);
    }
}
