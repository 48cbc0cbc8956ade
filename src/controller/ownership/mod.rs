//! Who acts on which policy: the leader Lease or the ring of replica Leases, and the peers that
//! serve a policy's values from its owner.

pub mod advert;
pub mod fence;
pub mod hold;
pub mod leader;
pub mod peers;
pub mod ring;
pub mod shards;

use crate::api::BackpressurePolicy;
use futures::StreamExt;
use kube::ResourceExt;
use shards::Acting;
use std::time::Instant;
use tokio::sync::watch;

/// How this replica learns which policies it acts on.
#[derive(Clone)]
pub enum Ownership {
    /// Every policy while this replica holds the leader Lease (always, without one).
    Leader(watch::Receiver<bool>),
    /// The policies it wins in the ring of the live replicas.
    Shards(watch::Receiver<shards::ShardView>),
}

impl Ownership {
    /// Whether `identity` acts on the policy at `key` now, may again without a handover, or
    /// does not own it. Under a leader there is no pause: acting or not.
    pub fn acting(&self, identity: &str, key: &str) -> shards::Acting {
        match self {
            Self::Leader(leader) if *leader.borrow() => shards::Acting::Yes(0),
            Self::Leader(_) => shards::Acting::No,
            Self::Shards(view) => view.borrow().acting(identity, key),
        }
    }

    /// Fires whenever this replica may have gained policies: becoming leader, or the ring's
    /// members or this replica's acting changing.
    pub fn gains(&self) -> futures::stream::BoxStream<'static, ()> {
        match self {
            Self::Leader(leader) => tokio_stream::wrappers::WatchStream::from_changes(leader.clone())
                .filter(|leading| futures::future::ready(*leading))
                .map(|_| ())
                .boxed(),
            // Only a change after which this replica acts can gain it a policy: acting lapsing
            // (an API server too slow to renew against) reconciles nothing.
            Self::Shards(view) => tokio_stream::wrappers::WatchStream::from_changes(view.clone())
                .filter(|view| futures::future::ready(view.acting_until.is_some()))
                .map(|_| ())
                .boxed(),
        }
    }
}

/// What places a policy in the ring: the same on every replica, and stable over its life.
pub fn ring_key(namespace: &str, name: &str) -> String {
    format!("{namespace}/{name}")
}

/// Who acts on which policy, as this replica sees it: its ownership, its identity, and when each
/// peer last answered.
pub struct Owners {
    ownership: Ownership,
    identity: String,
    /// When each peer last answered (the standby rule leaves an answering owner alone).
    pub peer_answers: peers::PeerAnswers,
}

impl Owners {
    pub fn new(ownership: Ownership, identity: String) -> Self {
        Self {
            ownership,
            identity,
            peer_answers: peers::PeerAnswers::default(),
        }
    }

    /// Whether this replica acts on `policy`: decides, writes its status and events, marks its
    /// producers and honours its finalizer (every replica samples and serves it). Every call
    /// site that acts asks this per policy: with `--ownership=leader` the holder of the leader
    /// Lease owns every policy, with `--ownership=shards` the replica that wins the policy in the
    /// ring of live replicas, while its own Lease is held.
    pub fn owns(&self, policy: &BackpressurePolicy) -> bool {
        self.owns_key(&policy.namespace().unwrap_or_default(), &policy.name_any())
    }

    /// `owns` for the policy `name` in `namespace`.
    pub fn owns_key(&self, namespace: &str, name: &str) -> bool {
        self.owns_ring_key(&ring_key(namespace, name))
    }

    /// `owns` for the policy at `key` in the ring ([`ring_key`]).
    pub fn owns_ring_key(&self, key: &str) -> bool {
        matches!(self.ownership.acting(&self.identity, key), Acting::Yes(_))
    }

    /// Whether this replica acts on `policy` now, may again without a handover (its acting
    /// paused within one run of its ring Lease: nobody else acted meanwhile), or does not own
    /// it. Under a leader there is no pause: acting or not.
    pub fn acting_on(&self, policy: &BackpressurePolicy) -> Acting {
        let key = ring_key(&policy.namespace().unwrap_or_default(), &policy.name_any());
        self.ownership.acting(&self.identity, &key)
    }

    /// The fence every write for `policy` passes (`fence.rs`); `None` when this replica does
    /// not act on it now.
    pub fn fence(&self, policy: &BackpressurePolicy) -> Option<fence::Fence> {
        let key = ring_key(&policy.namespace().unwrap_or_default(), &policy.name_any());
        fence::Fence::take(&self.ownership, &self.identity, key)
    }

    /// Whether the owner of the policy at `key` (another replica) answered its peers at `since`
    /// or later: alive and reachable, so its values will come. Under a leader, whether the
    /// leader (a follower's one peer) did.
    pub fn owner_answered_since(&self, key: &str, since: Instant) -> bool {
        match &self.ownership {
            Ownership::Leader(_) => self.peer_answers.any_answered_since(since),
            Ownership::Shards(view) => {
                let view = view.borrow();
                ring::owner(key, &view.members).is_some_and(|owner| {
                    owner != self.identity && self.peer_answers.answered_since(owner, since)
                })
            }
        }
    }

    /// Fires whenever this replica may have gained policies (`Ownership::gains`).
    pub fn gains(&self) -> futures::stream::BoxStream<'static, ()> {
        self.ownership.gains()
    }
}
