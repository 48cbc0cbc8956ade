//! Which Redis node holds a key: the URL's node (Standalone), the master a sentinel names
//! (Sentinel), or the master that owns the key's hash slot (Cluster, from `CLUSTER SLOTS`).

use super::endpoint::Endpoint;
use super::slot::slot_of;
use crate::api::RedisMode;
use crate::sampler::NodeAddr;
use redis::Value;

/// At most this many masters in a cluster's layout: levee dials each, so a `CLUSTER SLOTS` that
/// names more (Redis Cluster's own guidance stops at 1,000 nodes, masters and replicas) is
/// refused rather than followed.
pub const MAX_MASTERS: usize = 500;

/// Where keys live.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Topology {
    /// Every key on one node.
    Single(NodeAddr),
    /// `(first slot, last slot, master)`, sorted by first slot.
    Slots(Vec<(u16, u16, NodeAddr)>),
}

impl Topology {
    /// Finds the topology of `endpoint` (one round trip in Cluster and Sentinel mode).
    pub async fn discover(endpoint: &Endpoint) -> Result<Self, String> {
        let seed = endpoint.seed();
        match endpoint.mode {
            RedisMode::Standalone => Ok(Topology::Single(seed)),
            RedisMode::Sentinel => {
                let master = endpoint.sentinel_master.as_deref().unwrap_or_default();
                // Sentinels listen on their own port and usually without the data nodes' ACL.
                let mut sentinel = super::connect(endpoint, &seed, 0, false).await?;
                let reply: Value = redis::cmd("SENTINEL")
                    .arg("get-master-addr-by-name")
                    .arg(master)
                    .query_async(&mut sentinel)
                    .await
                    .map_err(|e| format!("{endpoint}: asking the sentinel for master {master:?}: {e}"))?;
                master_addr(&reply).map(Topology::Single).ok_or_else(|| {
                    format!("{endpoint}: the sentinel knows no master named {master:?}: check sentinelMaster")
                })
            }
            RedisMode::Cluster => {
                let mut node = super::connect(endpoint, &seed, 0, true).await?;
                let reply: Value = redis::cmd("CLUSTER")
                    .arg("SLOTS")
                    .query_async(&mut node)
                    .await
                    .map_err(|e| format!("{endpoint}: CLUSTER SLOTS failed (is this a Redis Cluster? set mode: Standalone if not): {e}"))?;
                let slots = slot_ranges(&reply, &seed.host);
                if slots.is_empty() {
                    return Err(format!("{endpoint}: the cluster has no slots assigned yet"));
                }
                let topology = Topology::Slots(slots);
                if topology.nodes().len() > MAX_MASTERS {
                    return Err(format!(
                        "{endpoint}: CLUSTER SLOTS names more than {MAX_MASTERS} masters: levee dials at most that many per endpoint"
                    ));
                }
                Ok(topology)
            }
        }
    }

    /// The node that holds `key`.
    pub fn node_for(&self, key: &[u8]) -> &NodeAddr {
        match self {
            Topology::Single(node) => node,
            Topology::Slots(ranges) => {
                let slot = slot_of(key);
                let index = ranges
                    .partition_point(|(first, _, _)| *first <= slot)
                    .saturating_sub(1);
                // An unassigned slot falls to the nearest range; its node answers MOVED or
                // CLUSTERDOWN, which is reported for the queue.
                &ranges[index].2
            }
        }
    }

    /// Every node that holds keys (each master once).
    pub fn nodes(&self) -> Vec<NodeAddr> {
        match self {
            Topology::Single(node) => vec![node.clone()],
            Topology::Slots(ranges) => {
                let mut nodes: Vec<NodeAddr> = ranges.iter().map(|(_, _, n)| n.clone()).collect();
                nodes.sort();
                nodes.dedup();
                nodes
            }
        }
    }

    /// Whether `node` is part of this topology.
    pub fn contains(&self, node: &NodeAddr) -> bool {
        match self {
            Topology::Single(single) => single == node,
            Topology::Slots(ranges) => ranges.iter().any(|(_, _, n)| n == node),
        }
    }
}

fn master_addr(reply: &Value) -> Option<NodeAddr> {
    let Value::Array(parts) = reply else { return None };
    let host = text(parts.first()?)?;
    let port = text(parts.get(1)?)?.parse().ok()?;
    Some(NodeAddr { host, port })
}

/// Parses `CLUSTER SLOTS`: `[[first, last, [host, port, id, ...], replicas...], ...]`. An empty
/// host means "the node you asked".
fn slot_ranges(reply: &Value, seed_host: &str) -> Vec<(u16, u16, NodeAddr)> {
    let Value::Array(entries) = reply else {
        return Vec::new();
    };
    let mut ranges: Vec<_> = entries
        .iter()
        .filter_map(|entry| {
            let Value::Array(parts) = entry else { return None };
            let first = int(parts.first()?)?;
            let last = int(parts.get(1)?)?;
            let Value::Array(master) = parts.get(2)? else {
                return None;
            };
            let host = text(master.first()?)
                .filter(|h| !h.is_empty() && h != "?")
                .unwrap_or_else(|| seed_host.to_string());
            let port = int(master.get(1)?)?;
            Some((first, last, NodeAddr { host, port }))
        })
        .collect();
    ranges.sort();
    ranges
}

fn int(value: &Value) -> Option<u16> {
    match value {
        Value::Int(n) => u16::try_from(*n).ok(),
        _ => None,
    }
}

fn text(value: &Value) -> Option<String> {
    match value {
        Value::BulkString(bytes) => Some(String::from_utf8_lossy(bytes).into_owned()),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    fn node(host: &str, port: u16) -> NodeAddr {
        NodeAddr {
            host: host.into(),
            port,
        }
    }

    #[test]
    fn cluster_slots_map_keys_to_their_master() {
        let reply = Value::Array(vec![
            Value::Array(vec![
                Value::Int(5461),
                Value::Int(10922),
                Value::Array(vec![bulk("10.0.0.2"), Value::Int(7001), bulk("id2")]),
            ]),
            Value::Array(vec![
                Value::Int(0),
                Value::Int(5460),
                Value::Array(vec![bulk(""), Value::Int(7000), bulk("id1")]),
            ]),
            Value::Array(vec![
                Value::Int(10923),
                Value::Int(16383),
                Value::Array(vec![bulk("10.0.0.3"), Value::Int(7002), bulk("id3")]),
            ]),
        ]);
        let topology = Topology::Slots(slot_ranges(&reply, "seed"));
        assert_eq!(topology.node_for(b"bar"), &node("seed", 7000)); // slot 5061
        assert_eq!(topology.node_for(b"foo"), &node("10.0.0.3", 7002)); // slot 12182
        assert_eq!(topology.node_for(b"{foo}:wait"), &node("10.0.0.3", 7002));
        assert!(topology.contains(&node("10.0.0.2", 7001)));
        assert!(!topology.contains(&node("10.0.0.9", 7001)));
    }

    #[test]
    fn sentinel_reply_names_the_master() {
        let reply = Value::Array(vec![bulk("10.1.1.1"), bulk("6380")]);
        assert_eq!(master_addr(&reply), Some(node("10.1.1.1", 6380)));
        assert_eq!(master_addr(&Value::Nil), None);
    }
}
