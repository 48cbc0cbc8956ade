//! The values a replica shares with its peers (`GET /peer/values` on the metrics API's port):
//! those of the policies it acts on, as JSON. Each process has its own monotonic clock, so an
//! age crosses the wire, not an instant: the receiver places a sample at the moment it sent its
//! request minus the age the owner gave, which makes the sample look older by the transit time,
//! never younger. What a peer sends is untrusted: the caller bounds the bytes and the time, and
//! `decode` bounds the counts and checks every name.
//!
//! A peer asks for what changed: `?epoch=E&since=N` returns the policies published after the
//! owner's publication `N` when `E` is the owner's process (its `epoch`), else all of them; the
//! answer says up to which publication it goes (`upto`). Every tick publishes, but a policy
//! whose values did not change since `N` (nothing but when they were sampled: `changed` <= `N`)
//! is only confirmed: its name, the publication its values stand at, and when it was sampled
//! again, about a tenth of its values' bytes. A receiver that does not hold those values asks
//! for everything next time. So the bytes a peer reads follow what moved, not how many
//! policies tick nor how often it asks.

use super::{CircuitValues, MemoryValues, PolicyValues, QueueValues, Source};
use crate::api::names::{check_dns_label, check_queue_name};
use crate::circuit::{Level, State};
use crate::forecast::Forecast;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The most policies one answer may carry.
pub const MAX_POLICIES: usize = 100_000;
/// The most queues one policy may carry (discovery's own cap is lower).
pub const MAX_QUEUES: usize = 100_000;
/// A sample older than this, or an interval longer, is refused as nonsense.
const MAX_AGE: Duration = Duration::from_secs(24 * 3600);

/// One answer of `GET /peer/values`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PeerValues {
    /// The replica that answered (its `--identity`).
    pub replica: String,
    /// Its process: publication numbers start again with another.
    pub epoch: u64,
    /// The last publication the answer includes: ask `since` it next.
    pub upto: u64,
    pub policies: Vec<WirePolicy>,
    /// The policies sampled again since `since` whose values did not change.
    #[serde(default)]
    pub confirmed: Vec<WireConfirmed>,
}

/// A policy sampled again, its values as they stood at the owner's publication `changed`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WireConfirmed {
    namespace: String,
    policy: String,
    changed: u64,
    sampled_at_ms: i64,
    age_ms: u64,
}

/// A confirmation, checked and placed on this process's clock.
#[derive(Clone, Debug, PartialEq)]
pub struct Confirmed {
    pub namespace: String,
    pub policy: String,
    pub changed: u64,
    pub sampled_at: Timestamp,
    pub sampled: Instant,
    /// The peer that sent it, as the values it renews name it.
    pub source: Source,
}

/// What an answer carries once checked.
#[derive(Debug, Default)]
pub struct Received {
    pub values: Vec<PolicyValues>,
    pub confirmed: Vec<Confirmed>,
}

/// What identifies this process among a replica's restarts.
pub fn process_epoch() -> u64 {
    static EPOCH: std::sync::LazyLock<u64> = std::sync::LazyLock::new(|| {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        nanos ^ u64::from(std::process::id()).rotate_left(48)
    });
    *EPOCH
}

/// `since` of a request's query when its `epoch` is this process's, else 0 (everything).
pub fn since(query: Option<&str>, epoch: u64) -> u64 {
    let mut asked_epoch = None;
    let mut since = 0;
    for pair in query.unwrap_or_default().split('&') {
        match pair.split_once('=') {
            Some(("epoch", value)) => asked_epoch = value.parse::<u64>().ok(),
            Some(("since", value)) => since = value.parse().unwrap_or(0),
            _ => {}
        }
    }
    if asked_epoch == Some(epoch) { since } else { 0 }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WirePolicy {
    namespace: String,
    policy: String,
    pending: u64,
    queues: Vec<WireQueue>,
    latency_ms: Option<u64>,
    forecast: Option<WireForecast>,
    sampled_at_ms: i64,
    /// How long before the answer was built the sample was taken.
    age_ms: u64,
    /// The owner's publication at which the values last changed.
    #[serde(default)]
    changed: u64,
    failed: bool,
    interval_ms: u64,
    circuit: Option<WireCircuit>,
    memory: Option<WireMemory>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireQueue {
    name: String,
    depth: Option<u64>,
    latency_ms: Option<u64>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireForecast {
    growth_per_second: f64,
    critical_in_ms: Option<u64>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireCircuit {
    state: State,
    level: Level,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireMemory {
    used: u64,
    max: Option<u64>,
    warning: Option<u64>,
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// The answer of `replica` (process `epoch`) holding `owned` up to publication `upto`, at `now`,
/// to a peer that has what was published up to `since`: values that changed after it go whole,
/// the others are confirmed.
pub fn encode(
    replica: &str,
    epoch: u64,
    (since, upto): (u64, u64),
    owned: &[Arc<PolicyValues>],
    now: Instant,
) -> PeerValues {
    let (changed, unchanged): (Vec<&Arc<PolicyValues>>, Vec<&Arc<PolicyValues>>) = owned
        .iter()
        .partition(|values| since == 0 || values.changed > since);
    let confirmed = unchanged
        .into_iter()
        .map(|values| WireConfirmed {
            namespace: values.namespace.clone(),
            policy: values.policy.clone(),
            changed: values.changed,
            sampled_at_ms: values.sampled_at.as_millisecond(),
            age_ms: millis(now.saturating_duration_since(values.sampled)),
        })
        .collect();
    let policies = changed
        .into_iter()
        .map(|values| WirePolicy {
            namespace: values.namespace.clone(),
            policy: values.policy.clone(),
            pending: values.pending,
            queues: values
                .queues
                .iter()
                .map(|queue| WireQueue {
                    name: queue.name.clone(),
                    depth: queue.depth,
                    latency_ms: queue.latency.map(millis),
                })
                .collect(),
            latency_ms: values.latency.map(millis),
            forecast: values.forecast.map(|forecast| WireForecast {
                growth_per_second: forecast.growth_per_second,
                critical_in_ms: forecast.critical_in.map(millis),
            }),
            sampled_at_ms: values.sampled_at.as_millisecond(),
            age_ms: millis(now.saturating_duration_since(values.sampled)),
            changed: values.changed,
            failed: values.failed,
            interval_ms: millis(values.interval),
            circuit: values.circuit.map(|circuit| WireCircuit {
                state: circuit.state,
                level: circuit.level,
            }),
            memory: values.memory.map(|memory| WireMemory {
                used: memory.used,
                max: memory.max,
                warning: memory.warning,
            }),
        })
        .collect();
    PeerValues {
        replica: replica.to_string(),
        epoch,
        upto,
        policies,
        confirmed,
    }
}

/// The policies of an answer to a request sent at `asked` (on this process's clock), each
/// checked; an answer over the counts is refused whole, a bad entry alone is left out.
pub fn decode(answer: PeerValues, asked: Instant) -> Result<Received, String> {
    let count = answer.policies.len().saturating_add(answer.confirmed.len());
    if count > MAX_POLICIES {
        return Err(format!(
            "{count} policies in one answer, over the {MAX_POLICIES} levee takes"
        ));
    }
    if answer.replica.is_empty() || answer.replica.len() > 253 {
        return Err("the answer names no replica (1 to 253 characters)".into());
    }
    let replica = answer.replica;
    Ok(Received {
        values: answer
            .policies
            .into_iter()
            .filter_map(|policy| checked(policy, &replica, asked).ok())
            .collect(),
        confirmed: answer
            .confirmed
            .into_iter()
            .filter_map(|confirmed| checked_confirmation(confirmed, &replica, asked).ok())
            .collect(),
    })
}

fn checked_confirmation(wire: WireConfirmed, replica: &str, asked: Instant) -> Result<Confirmed, String> {
    check_dns_label("the namespace", &wire.namespace)?;
    check_dns_label("the policy", &wire.policy)?;
    let age = Duration::from_millis(wire.age_ms);
    if age > MAX_AGE {
        return Err(format!("age {age:?}"));
    }
    Ok(Confirmed {
        namespace: wire.namespace,
        policy: wire.policy,
        changed: wire.changed,
        sampled_at: Timestamp::from_millisecond(wire.sampled_at_ms).map_err(|e| e.to_string())?,
        sampled: asked.checked_sub(age).ok_or("an age before this process began")?,
        source: Source::Peer(replica.to_string()),
    })
}

fn checked(wire: WirePolicy, replica: &str, asked: Instant) -> Result<PolicyValues, String> {
    check_dns_label("the namespace", &wire.namespace)?;
    check_dns_label("the policy", &wire.policy)?;
    if wire.queues.len() > MAX_QUEUES {
        return Err(format!("{} queues", wire.queues.len()));
    }
    let age = Duration::from_millis(wire.age_ms);
    let interval = Duration::from_millis(wire.interval_ms);
    if age > MAX_AGE || interval.is_zero() || interval > MAX_AGE {
        return Err(format!("age {age:?}, interval {interval:?}"));
    }
    let sampled = asked.checked_sub(age).ok_or("an age before this process began")?;
    let mut queues = wire
        .queues
        .into_iter()
        .map(|queue| {
            check_queue_name(&queue.name)?;
            Ok(QueueValues {
                name: queue.name,
                depth: queue.depth,
                latency: queue.latency_ms.map(Duration::from_millis),
            })
        })
        .collect::<Result<Vec<_>, String>>()?;
    // Collected in place, the list keeps the room parsing left (16 for 10 queues); a replica
    // holds the values of every policy its peers own.
    queues.shrink_to_fit();
    let forecast = match wire.forecast {
        Some(forecast) if !forecast.growth_per_second.is_finite() => {
            return Err("a forecast that is not a number".into());
        }
        Some(forecast) => Some(Forecast {
            growth_per_second: forecast.growth_per_second,
            critical_in: forecast.critical_in_ms.map(Duration::from_millis),
        }),
        None => None,
    };
    Ok(PolicyValues {
        namespace: wire.namespace,
        policy: wire.policy,
        pending: wire.pending,
        queues,
        latency: wire.latency_ms.map(Duration::from_millis),
        forecast,
        sampled_at: Timestamp::from_millisecond(wire.sampled_at_ms).map_err(|e| e.to_string())?,
        sampled,
        failed: wire.failed,
        interval,
        circuit: wire.circuit.map(|circuit| CircuitValues {
            state: circuit.state,
            level: circuit.level,
        }),
        memory: wire.memory.map(|memory| MemoryValues {
            used: memory.used,
            max: memory.max,
            warning: memory.warning,
        }),
        source: Source::Peer(replica.to_string()),
        published: 0,
        changed: wire.changed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owned(policy: &str, sampled: Instant) -> PolicyValues {
        PolicyValues {
            namespace: "jobs".into(),
            policy: policy.into(),
            pending: 42,
            queues: vec![
                QueueValues::new("billing", Some(40), Some(Duration::from_millis(1_500))),
                QueueValues::new("mail", Some(2), None),
            ],
            latency: Some(Duration::from_millis(1_500)),
            forecast: Some(Forecast {
                growth_per_second: 3.5,
                critical_in: Some(Duration::from_secs(20)),
            }),
            sampled_at: Timestamp::from_millisecond(1_780_000_000_123).unwrap(),
            sampled,
            failed: false,
            interval: Duration::from_secs(1),
            circuit: Some(CircuitValues {
                state: State::Open,
                level: Level::Critical,
            }),
            memory: Some(MemoryValues {
                used: 700,
                max: Some(1_000),
                warning: Some(700),
            }),
            source: Source::Owner,
            published: 0,
            changed: 0,
        }
    }

    fn round_trip(answer: &PeerValues) -> PeerValues {
        serde_json::from_slice(&serde_json::to_vec(answer).unwrap()).unwrap()
    }

    #[test]
    fn a_policy_crosses_the_wire_whole_and_no_younger_than_it_was() {
        let start = Instant::now();
        let sampled = start + Duration::from_secs(10);
        let sent = sampled + Duration::from_millis(300);
        let answer = round_trip(&encode(
            "shard-a",
            1,
            (0, 1),
            &[Arc::new(owned("p", sampled))],
            sent,
        ));
        let asked = sent;
        let received = decode(answer, asked).unwrap().values;
        assert_eq!(received.len(), 1);
        let mut expected = owned("p", sampled);
        expected.source = Source::Peer("shard-a".into());
        assert_eq!(received[0], expected);
        // Asked 50 ms before the owner answered: the sample is placed 50 ms earlier (older).
        let answer = round_trip(&encode(
            "shard-a",
            1,
            (0, 1),
            &[Arc::new(owned("p", sampled))],
            sent,
        ));
        let received = decode(answer, sent - Duration::from_millis(50)).unwrap().values;
        assert_eq!(received[0].sampled, sampled - Duration::from_millis(50));
    }

    #[test]
    fn since_counts_only_for_the_same_process() {
        assert_eq!(since(Some("epoch=7&since=40"), 7), 40);
        assert_eq!(since(Some("since=40&epoch=7"), 7), 40);
        assert_eq!(
            since(Some("epoch=8&since=40"), 7),
            0,
            "another process: everything"
        );
        assert_eq!(since(Some("since=40"), 7), 0);
        assert_eq!(since(None, 7), 0);
        assert_eq!(since(Some("epoch=7&since=nonsense"), 7), 0);
    }

    #[test]
    fn bad_entries_are_left_out_and_too_many_refuse_the_answer() {
        let now = Instant::now() + Duration::from_secs(5);
        let mut answer = round_trip(&encode(
            "shard-a",
            1,
            (0, 1),
            &[Arc::new(owned("good", now)), Arc::new(owned("bad", now))],
            now,
        ));
        answer.policies[1].namespace = "Not A Label".into();
        let mut nonsense = round_trip(&encode(
            "shard-a",
            1,
            (0, 1),
            &[Arc::new(owned("zero", now))],
            now,
        ));
        nonsense.policies[0].interval_ms = 0;
        answer.policies.append(&mut nonsense.policies);
        let mut queue = round_trip(&encode(
            "shard-a",
            1,
            (0, 1),
            &[Arc::new(owned("queue", now))],
            now,
        ));
        queue.policies[0].queues[0].name = "spaces are not allowed".into();
        answer.policies.append(&mut queue.policies);
        let received = decode(answer, now).unwrap().values;
        let names: Vec<&str> = received.iter().map(|v| v.policy.as_str()).collect();
        assert_eq!(names, ["good"]);

        let many = PeerValues {
            replica: "shard-a".into(),
            epoch: 1,
            upto: 1,
            policies: vec![
                round_trip(&encode("shard-a", 1, (0, 1), &[Arc::new(owned("p", now))], now))
                    .policies
                    .remove(0);
                MAX_POLICIES + 1
            ],
            confirmed: Vec::new(),
        };
        assert!(decode(many, now).unwrap_err().contains("over the 100000"));
    }

    #[test]
    fn values_that_did_not_change_are_only_confirmed_and_renew_what_the_peer_holds() {
        use crate::values::MetricValues;
        let owner = MetricValues::default();
        let start = Instant::now() + Duration::from_secs(5);
        owner.publish(owned("quiet", start));
        owner.publish(owned("busy", start));
        let (first, upto) = owner.owned_since(0);
        let whole = round_trip(&encode("shard-a", 1, (0, upto), &first, start));
        assert_eq!(
            (whole.policies.len(), whole.confirmed.len()),
            (2, 0),
            "a first answer is whole"
        );
        let receiver = MetricValues::default();
        for values in decode(whole, start).unwrap().values {
            assert!(receiver.take_from_peer(values));
        }

        // A tick later: "busy" moved, "quiet" was sampled again with the same figures.
        let later = start + Duration::from_secs(1);
        owner.publish(owned("quiet", later));
        let mut busy = owned("busy", later);
        busy.pending = 43;
        owner.publish(busy);
        let (next, upto_next) = owner.owned_since(upto);
        let answer = round_trip(&encode("shard-a", 1, (upto, upto_next), &next, later));
        let whole_bytes = serde_json::to_vec(&answer.policies[0]).unwrap().len();
        let confirmed_bytes = serde_json::to_vec(&answer.confirmed[0]).unwrap().len();
        assert_eq!(answer.policies.len(), 1);
        assert_eq!(answer.policies[0].policy, "busy");
        assert_eq!(answer.confirmed.len(), 1);
        assert!(
            confirmed_bytes * 3 < whole_bytes,
            "{confirmed_bytes} vs {whole_bytes} bytes"
        );
        let received = decode(answer, later).unwrap();
        for values in received.values {
            assert!(receiver.take_from_peer(values));
        }
        let confirmed = &received.confirmed[0];
        assert!(receiver.confirm_from_peer(confirmed));
        let quiet = receiver.get("jobs", "quiet").unwrap();
        assert_eq!(quiet.sampled, later, "renewed");
        assert_eq!(quiet.pending, 42);
        assert_eq!(receiver.get("jobs", "busy").unwrap().pending, 43);

        // Another replica's values, or values of another publication, are not renewed by it.
        let mut stranger = confirmed.clone();
        stranger.source = Source::Peer("shard-b".into());
        assert!(!receiver.confirm_from_peer(&stranger));
        let mut other = confirmed.clone();
        other.changed += 100;
        assert!(!receiver.confirm_from_peer(&other));
        let mut unknown = confirmed.clone();
        unknown.policy = "never-sent".into();
        assert!(!receiver.confirm_from_peer(&unknown));
    }
}
