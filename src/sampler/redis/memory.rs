//! Redis memory as `INFO memory` reports it: what is used (`used_memory`), the limit
//! (`maxmemory`, 0 for none) and what Redis does when it reaches it (`maxmemory_policy`), read
//! from every master in the tick's own pipeline. Pure: the reply is parsed here.

use crate::sampler::NodeAddr;

/// One node's memory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Memory {
    /// The node, `host:port`.
    pub node: String,
    pub used_bytes: u64,
    /// `maxmemory`, `None` when it is 0 (no limit).
    pub max_bytes: Option<u64>,
    pub eviction_policy: String,
    /// Under a `volatile-*` policy with a limit: the policy's queue keys that carry a TTL (what
    /// such a Redis may evict), at most `MAX_TTL_KEYS` of them; `None` when not read.
    pub queue_keys_with_ttl: Option<Vec<String>>,
}

/// The most keys with a TTL a reading names.
pub const MAX_TTL_KEYS: usize = 5;

/// The `INFO memory` command.
pub fn command() -> redis::Cmd {
    let mut command = redis::cmd("INFO");
    command.arg("memory");
    command
}

impl Memory {
    /// The fields of an `INFO memory` reply of `node`.
    pub fn parse(node: &NodeAddr, reply: &redis::Value) -> Result<Self, String> {
        let text = match reply {
            redis::Value::BulkString(bytes) => String::from_utf8_lossy(bytes).into_owned(),
            redis::Value::VerbatimString { text, .. } => text.clone(),
            redis::Value::SimpleString(text) => text.clone(),
            other => return Err(format!("INFO memory answered {other:?}, not a text")),
        };
        let field = |name: &str| {
            text.lines()
                .find_map(|line| line.trim_end().strip_prefix(name)?.strip_prefix(':'))
                .ok_or_else(|| format!("INFO memory of {node} has no {name}"))
        };
        let number = |name: &str| {
            field(name)?
                .parse::<u64>()
                .map_err(|_| format!("INFO memory of {node}: {name} is not a number"))
        };
        let max = number("maxmemory")?;
        Ok(Self {
            node: node.authority(),
            used_bytes: number("used_memory")?,
            max_bytes: (max > 0).then_some(max),
            eviction_policy: field("maxmemory_policy")?.to_string(),
            queue_keys_with_ttl: None,
        })
    }

    /// When a full Redis would delete keys (queued jobs among them) rather than refuse writes:
    /// which policy does so and what to set instead. `None` under `noeviction` or without a
    /// `maxmemory` (Redis then evicts nothing).
    pub fn eviction_warning(&self) -> Option<String> {
        let (node, policy) = (&self.node, self.eviction_policy.as_str());
        let max = self.max_bytes?;
        if policy == "noeviction" {
            return None;
        }
        let what = match (policy.starts_with("volatile-"), &self.queue_keys_with_ttl) {
            (false, _) => "deletes keys, queued jobs among them".to_string(),
            // No queue key carries a TTL: this policy evicts none of them.
            (true, Some(keys)) if keys.is_empty() => return None,
            (true, Some(keys)) => format!(
                "deletes keys that carry a TTL, and queue keys of this policy do: {}",
                keys.join(", ")
            ),
            (true, None) => {
                "deletes keys that carry a TTL, queued jobs among them when their keys have one (their TTLs could not be read)"
                    .to_string()
            }
        };
        Some(format!(
            "{node} has maxmemory-policy {policy} with maxmemory {max} bytes: when full it {what}. Set maxmemory-policy noeviction (CONFIG SET maxmemory-policy noeviction, and in redis.conf), as BullMQ requires"
        ))
    }

    /// How full it is: used / max, when a limit is set.
    pub fn ratio(&self) -> Option<f64> {
        self.max_bytes.map(|max| self.used_bytes as f64 / max as f64)
    }
}

/// The fullest of the masters: the highest used / max where limits are set (a node with a limit
/// before one without), else the most used.
pub fn fullest(nodes: Vec<Memory>) -> Option<Memory> {
    nodes.into_iter().max_by(|a, b| match (a.ratio(), b.ratio()) {
        (Some(x), Some(y)) => x.total_cmp(&y),
        (Some(_), None) => std::cmp::Ordering::Greater,
        (None, Some(_)) => std::cmp::Ordering::Less,
        (None, None) => a.used_bytes.cmp(&b.used_bytes),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node() -> NodeAddr {
        NodeAddr {
            host: "127.0.0.1".into(),
            port: 6379,
        }
    }

    fn info(used: u64, max: u64, policy: &str) -> redis::Value {
        redis::Value::BulkString(
            format!(
                "# Memory\r\nused_memory:{used}\r\nused_memory_human:1M\r\nmaxmemory:{max}\r\nmaxmemory_human:0B\r\nmaxmemory_policy:{policy}\r\n"
            )
            .into_bytes(),
        )
    }

    #[test]
    fn the_fields_are_read_from_the_reply() {
        let memory = Memory::parse(&node(), &info(1_048_576, 0, "noeviction")).unwrap();
        assert_eq!(memory.used_bytes, 1_048_576);
        assert_eq!(memory.max_bytes, None, "maxmemory 0 is no limit");
        assert_eq!(memory.eviction_policy, "noeviction");
        let limited = Memory::parse(&node(), &info(50, 200, "allkeys-lru")).unwrap();
        assert_eq!((limited.max_bytes, limited.ratio()), (Some(200), Some(0.25)));
        assert!(Memory::parse(&node(), &redis::Value::Int(3)).is_err());
        let cut = redis::Value::BulkString(b"used_memory:1\r\n".to_vec());
        assert!(Memory::parse(&node(), &cut).unwrap_err().contains("maxmemory"));
    }

    #[test]
    fn only_a_limit_with_an_evicting_policy_warns() {
        let warning = |max, policy| {
            Memory::parse(&node(), &info(10, max, policy))
                .unwrap()
                .eviction_warning()
        };
        assert_eq!(warning(100, "noeviction"), None);
        assert_eq!(
            warning(0, "allkeys-lru"),
            None,
            "without maxmemory nothing is evicted"
        );
        let lru = warning(100, "allkeys-lru").unwrap();
        assert!(
            lru.contains("allkeys-lru") && lru.contains("Set maxmemory-policy noeviction"),
            "{lru}"
        );
        assert!(
            warning(100, "volatile-ttl")
                .unwrap()
                .contains("could not be read")
        );
        let volatile = |keys: Vec<&str>| {
            let mut memory = Memory::parse(&node(), &info(10, 100, "volatile-lru")).unwrap();
            memory.queue_keys_with_ttl = Some(keys.into_iter().map(String::from).collect());
            memory.eviction_warning()
        };
        assert_eq!(
            volatile(Vec::new()),
            None,
            "no queue key has a TTL: none is evicted"
        );
        assert!(
            volatile(vec!["bull:mail:wait"])
                .unwrap()
                .contains("bull:mail:wait")
        );
    }

    #[test]
    fn the_fullest_is_the_highest_ratio_then_the_most_used() {
        let at = |used, max: Option<u64>| Memory {
            node: format!("n{used}"),
            used_bytes: used,
            max_bytes: max,
            eviction_policy: "noeviction".into(),
            queue_keys_with_ttl: None,
        };
        let picked = fullest(vec![at(900, Some(1000)), at(50, Some(60)), at(5000, None)]).unwrap();
        assert_eq!(picked.node, "n900", "90 % beats 83 % and a node with no limit");
        assert_eq!(fullest(vec![at(1, None), at(7, None)]).unwrap().used_bytes, 7);
        assert_eq!(fullest(Vec::new()), None);
    }
}
