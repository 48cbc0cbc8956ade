//! Finds the queues a policy's `keyPattern` entries name: the libraries' registries (a set read
//! with `SMEMBERS`) or the keys of a type (`SCAN`, on every master in Cluster mode). Runs in the
//! background at `discovery.interval`, never in a tick; bounded in calls, in keys and bytes
//! collected, and in time.

use super::connections::EndpointConnections;
use super::endpoint::Endpoint;
use super::registry::{Source, expand};
use crate::api::QueueSpec;
use redis::aio::MultiplexedConnection;
use std::time::Duration;

/// Keys one `SCAN` call asks for.
const SCAN_COUNT: usize = 1000;
/// A scan of one node stops after this many calls (10 million keys looked at).
const MAX_SCAN_CALLS: usize = 10_000;
/// What one pattern's scan may collect, over every node: ten times the most queues a policy may
/// discover, and the bytes of their names. A server that answers every SCAN with a full reply of
/// new names (up to `--max-reply-bytes` each) stops here, not at the end of the process's memory.
pub const MAX_SCANNED_KEYS: usize = 100_000;
pub const MAX_SCANNED_BYTES: usize = 16 * 1024 * 1024;

/// What a discovery found.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Discovered {
    /// The entries to sample, sorted by name, at most the cap.
    pub queues: Vec<QueueSpec>,
    /// How many the patterns matched before the cap.
    pub matched: usize,
    /// The first failure (the entries that could be read are kept).
    pub error: Option<String>,
    /// Names found that cannot name a queue (too long, or characters status and metrics do not
    /// take), left out, and the first of them.
    pub refused: usize,
    pub first_refused: Option<String>,
}

impl Discovered {
    /// The queues a policy samples: its own entries (a `keyPattern` entry is left out by
    /// `PreparedQueues`) and the ones found.
    pub fn with_spec_queues(&self, spec_queues: &[QueueSpec]) -> Vec<QueueSpec> {
        spec_queues.iter().chain(&self.queues).cloned().collect()
    }

    /// What a person should know about this discovery: a failure, or patterns that matched more
    /// than `cap` queues; `None` when it found everything.
    pub fn problem(&self, cap: usize) -> Option<String> {
        match (&self.error, self.matched > cap) {
            (Some(error), _) => Some(format!(
                "discovery failed (the queues found before are kept): {error}"
            )),
            (None, true) => Some(format!(
                "keyPattern matched {} queues; the first {cap} by name are sampled (discovery.maxQueues)",
                self.matched
            )),
            (None, false) if self.refused > 0 => Some(format!(
                "{} discovered names were left out: they cannot name a queue ({})",
                self.refused,
                self.first_refused.as_deref().unwrap_or_default()
            )),
            (None, false) => None,
        }
    }
}

impl super::RedisSampler {
    /// The queues that `entries` (those with a `keyPattern`) name, at most `cap` of them.
    pub async fn discover(&self, endpoint: &Endpoint, entries: &[QueueSpec], cap: usize) -> Discovered {
        let state = self.state_of(endpoint);
        let mut found = Vec::new();
        let mut error = None;
        for entry in entries {
            let Some(source) = Source::for_entry(entry) else {
                continue;
            };
            match candidates(endpoint, &state, &source).await {
                Ok(candidates) => {
                    let names = candidates
                        .iter()
                        .filter_map(|c| source.queue_name(c).map(str::to_string));
                    found.extend(expand(entry, names));
                }
                Err(message) => {
                    error.get_or_insert(format!("queue {}: {message}", entry.name));
                }
            }
        }
        found.sort_by(|a, b| a.name.cmp(&b.name));
        // A key name is a tenant's data: one that cannot name a queue never reaches status.
        let (mut found, refused): (Vec<QueueSpec>, Vec<QueueSpec>) = found
            .into_iter()
            .partition(|queue| crate::api::names::check_queue_name(&queue.name).is_ok());
        let first_refused = refused
            .first()
            .and_then(|queue| crate::api::names::check_queue_name(&queue.name).err());
        let matched = found.len();
        found.truncate(cap);
        Discovered {
            queues: found,
            matched,
            error,
            refused: refused.len(),
            first_refused,
        }
    }
}

/// The set members or keys `source` reads.
async fn candidates(
    endpoint: &Endpoint,
    state: &EndpointConnections,
    source: &Source,
) -> Result<Vec<String>, String> {
    let topology = state.topology(endpoint).await?;
    let deadline = endpoint.timeout.max(Duration::from_secs(1)) * 10;
    let read = async {
        match source {
            Source::SetMembers { key, .. } => {
                let node = topology.node_for(key.as_bytes()).clone();
                let mut connection = state.connection(endpoint, &node).await?;
                redis::cmd("SMEMBERS")
                    .arg(key)
                    .query_async::<Vec<String>>(&mut connection)
                    .await
                    .map_err(|e| format!("SMEMBERS {key}: {e}"))
            }
            Source::Scan { pattern, type_, .. } => {
                let mut found = Scanned::default();
                for node in topology.nodes() {
                    let mut connection = state.connection(endpoint, &node).await?;
                    scan(&mut connection, pattern, *type_, &mut found).await?;
                }
                Ok(found.keys)
            }
        }
    };
    tokio::time::timeout(deadline, read)
        .await
        .map_err(|_| format!("{endpoint}: discovery took longer than {deadline:?}"))?
}

/// The keys a pattern's scan collected so far, over the nodes.
#[derive(Default)]
struct Scanned {
    keys: Vec<String>,
    bytes: usize,
}

impl Scanned {
    /// Adds `batch`; an error once the scan holds more than `MAX_SCANNED_KEYS` keys or
    /// `MAX_SCANNED_BYTES` of names.
    fn add(&mut self, pattern: &str, batch: Vec<String>) -> Result<(), String> {
        self.bytes += batch.iter().map(String::len).sum::<usize>();
        self.keys.extend(batch);
        if self.keys.len() > MAX_SCANNED_KEYS || self.bytes > MAX_SCANNED_BYTES {
            return Err(format!(
                "SCAN MATCH {pattern} matched more than {MAX_SCANNED_KEYS} keys or {} MiB of names: narrow keyPattern",
                MAX_SCANNED_BYTES >> 20
            ));
        }
        Ok(())
    }
}

async fn scan(
    connection: &mut MultiplexedConnection,
    pattern: &str,
    type_: Option<&str>,
    found: &mut Scanned,
) -> Result<(), String> {
    let mut cursor: u64 = 0;
    for _ in 0..MAX_SCAN_CALLS {
        let mut command = redis::cmd("SCAN");
        command
            .arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(SCAN_COUNT);
        if let Some(type_) = type_ {
            command.arg("TYPE").arg(type_);
        }
        let (next, batch): (u64, Vec<String>) = command
            .query_async(connection)
            .await
            .map_err(|e| format!("SCAN MATCH {pattern}: {e}"))?;
        found.add(pattern, batch)?;
        cursor = next;
        if cursor == 0 {
            return Ok(());
        }
    }
    Err(format!(
        "SCAN MATCH {pattern} did not finish within {MAX_SCAN_CALLS} calls: narrow keyPattern"
    ))
}
