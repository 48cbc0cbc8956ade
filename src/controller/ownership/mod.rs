//! Who acts on which policy: the leader Lease or the ring of replica Leases, and the peers that
//! serve a policy's values from its owner.

pub mod leader;
pub mod peers;
pub mod ring;
pub mod shards;
