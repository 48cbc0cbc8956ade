//! Who acts on which policy: the leader Lease or the ring of replica Leases, and the peers that
//! serve a policy's values from its owner.

pub mod advert;
pub mod leader;
pub mod peers;
pub mod ring;
pub mod shards;

use futures::StreamExt;
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
