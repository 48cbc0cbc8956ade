//! Reads NATS JetStream consumers' backlogs: one `$JS.API.CONSUMER.INFO.<stream>.<consumer>`
//! request per queue, all in flight at once on the one connection levee keeps per server (and
//! credentials), shared by every policy that names it. The request is routed by the servers to
//! the consumer's leader, the only one that answers it, so the figure is the leader's: never a
//! follower's stale count, as a scrape of a monitoring page can be. The depth is the work not
//! done: `num_pending` (not yet delivered) + `num_ack_pending` (delivered, not acknowledged), as
//! `nats consumer info` shows them ("Unprocessed Messages" and "Outstanding Acks"). With latency
//! on, a consumer with work not done gets one more request per filter subject (one for the whole
//! stream without any), `STREAM.MSG.GET` of the next message after its ack floor on that subject
//! (the oldest it has not had acknowledged), and its latency is now − the oldest such message's
//! stored time.
//!
//! A server is untrusted, whatever it answers: what levee spends on it is bounded before it is
//! spent, and the reasons for each value are at its constant.
//!
//! | bound | value |
//! | --- | --- |
//! | bytes of one reply ([`LIMITS`]) | 256 KiB (a message read for latency: dropped unread up to 64 MiB, and only that read fails) |
//! | filter subjects read for latency, per consumer ([`replies::MAX_LATENCY_FILTERS`]) | 32: past it no request is made, the latency is an error naming the bound, the depth is still read, and the subjects are counted as they are parsed, not kept |
//! | requests in flight per tick of a policy ([`MAX_IN_FLIGHT_PER_TICK`]) | 32, each reply parsed as it comes: at most 8 MiB of replies held by a tick |
//! | requests in flight per connection ([`MAX_IN_FLIGHT`]) | 64: at most 16 MiB of replies held on it; a request past it waits for a turn within its deadline, and nothing is kept for it meanwhile |
//! | time | `spec.nats.timeout` (at most 10 s) for the dial, for the infos and for the latency reads, however many rounds they take |
//!
//! So one tick sends at most 64 + 64 × 32 = 2,112 requests (a policy has at most 64 queues),
//! and when every consumer lists 60,000 filter subjects it sends 64: before these bounds it made
//! one `STREAM.MSG.GET` per filter subject, 3.84 million a tick, all at once, and levee's RSS
//! passed 3.5 GiB (`tests/nats_abuse.rs`).

mod connection;
pub mod credentials;
pub mod nkey;
pub mod replies;
pub mod wire;

pub use connection::{MAX_IN_FLIGHT, NatsAuth, Reply};

use crate::api::{NatsSpec, QueueSpec, QueueType};
use connection::{Connection, Deadline};
use futures::future::{BoxFuture, FutureExt, Shared};
use futures::stream::{FuturesUnordered, StreamExt};
use replies::ConsumerState;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::tls::TlsSettings;
use super::{NodeAddr, QueueReading, Sample};

/// What one reply (or protocol line) from a NATS server may take: a consumer's info is a few
/// KiB of JSON; the server's INFO lists its cluster's URLs.
pub const LIMITS: wire::Limits = wire::Limits {
    max_line: 64 * 1024,
    max_payload: 256 * 1024,
    // A job message (read for latency) may be larger: up to the server's largest max_payload
    // (64 MiB) it is dropped unread and only that read fails.
    max_skip: 64 * 1024 * 1024,
};

/// The most requests one tick of one policy has in flight at once: its CONSUMER.INFO requests
/// (a policy has at most 64 queues: one or two rounds), then its latency reads (at most 32 a
/// consumer) in rounds, each request made when its turn comes and each reply parsed into a few
/// numbers as it comes. So a tick holds at most 32 replies (8 MiB at the 256 KiB bound) and
/// half of a connection's [`MAX_IN_FLIGHT`], leaving the other half to another policy's tick on
/// a shared connection; at a millisecond a round trip, a policy's largest tick (64 + 64 × 32
/// requests) takes 66 ms.
pub const MAX_IN_FLIGHT_PER_TICK: usize = 32;

/// A NATS server (any of its cluster) with the credentials to present.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct NatsEndpoint {
    pub server: NodeAddr,
    pub auth: NatsAuth,
    pub tls: Option<TlsSettings>,
    pub timeout: Duration,
}

impl NatsEndpoint {
    /// The endpoint of a policy's `spec.nats`, with its credentials resolved by the caller.
    pub fn from_spec(spec: &NatsSpec, auth: NatsAuth) -> Result<Self, String> {
        let url = url::Url::parse(&spec.url).map_err(|e| format!("{:?} is not a URL: {e}", spec.url))?;
        if url.scheme() != "nats" {
            return Err(format!("{:?}: use a nats://host:port URL", spec.url));
        }
        let host = url
            .host_str()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| format!("{:?} names no host: use nats://host:port", spec.url))?;
        Ok(Self {
            server: NodeAddr {
                host: host.trim_matches(['[', ']']).to_string(),
                port: url.port().unwrap_or(4222),
            },
            auth,
            tls: spec.tls.as_ref().map(|tls| TlsSettings {
                ca_pem: None,
                insecure_skip_verify: tls.insecure_skip_verify,
            }),
            timeout: spec.timeout.into(),
        })
    }

    /// The endpoint with the CA bundle of `spec.nats.tls.caSecretRef`.
    pub fn with_ca(mut self, ca_pem: Vec<u8>) -> Self {
        if let Some(tls) = &mut self.tls {
            tls.ca_pem = Some(ca_pem);
        }
        self
    }
}

/// One JetStream consumer to read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PreparedConsumer {
    pub name: String,
    pub weight: u32,
    pub subject: String,
    stream: String,
    consumer: String,
    /// Whether its latency is read.
    latency: bool,
}

/// The policy's JetStream queues, prepared once per generation; with `read_latency`, their
/// latencies too.
pub fn prepare(queues: &[QueueSpec], read_latency: bool) -> Vec<PreparedConsumer> {
    queues
        .iter()
        .filter(|q| q.queue_type == QueueType::Jetstream)
        .filter_map(|q| {
            let (stream, consumer) = (
                q.stream.as_deref()?.to_string(),
                q.consumer.as_deref()?.to_string(),
            );
            Some(PreparedConsumer {
                name: q.name.clone(),
                weight: q.weight,
                subject: format!("$JS.API.CONSUMER.INFO.{stream}.{consumer}"),
                stream,
                consumer,
                latency: read_latency,
            })
        })
        .collect()
}

/// A dial under way, awaited by every policy that needs it.
type Dial = Shared<BoxFuture<'static, Result<Arc<Connection>, String>>>;

enum Slot {
    Ready(Arc<Connection>),
    Dialing(u64, Dial),
}

/// Each endpoint's connection (or dial) and when a policy last used it; and the last dial's id.
type Slots = (HashMap<NatsEndpoint, (Slot, Instant)>, u64);

/// The connections to NATS servers; cheap to clone, shared by every policy.
#[derive(Clone)]
pub struct NatsSampler {
    slots: Arc<Mutex<Slots>>,
    /// A connection no policy used for this long is dropped (a rotated password or a changed URL
    /// leaves the old one behind).
    idle_eviction: Duration,
}

impl NatsSampler {
    pub fn new(idle_eviction: Duration) -> Self {
        Self {
            slots: Arc::default(),
            idle_eviction,
        }
    }

    /// Reads every consumer of one policy, all requests at once.
    pub async fn sample(&self, endpoint: &NatsEndpoint, consumers: &[PreparedConsumer]) -> Sample {
        let started = Instant::now();
        let at = jiff::Timestamp::now();
        let (queues, unreachable, round_trips) = match self.connection(endpoint).await {
            Ok(connection) => {
                let deadline = Deadline::after(endpoint.timeout);
                // Each reply is parsed as it comes: a tick holds at most
                // MAX_IN_FLIGHT_PER_TICK of them.
                let mut infos: Vec<Result<Result<ConsumerState, String>, String>> =
                    consumers.iter().map(|_| Err(String::new())).collect();
                let requests = consumers
                    .iter()
                    .enumerate()
                    .map(|(index, consumer)| consumer_info(&connection, index, consumer, deadline));
                in_rounds(requests, |(index, info)| infos[index] = info).await;
                // No reply at all: the sample fails. A server that stopped answering (packets
                // dropped) keeps the socket open, so the connection is dialled again next tick
                // once it has sent nothing for `silence` either; one that still answers other
                // policies' requests is kept (before, every policy whose requests all came late
                // on a busy machine dropped the connection they all share).
                let unanswered = !infos.is_empty() && infos.iter().all(Result::is_err);
                let broken = connection.broken();
                let why = broken
                    .clone()
                    .or_else(|| unanswered.then(|| infos[0].clone().expect_err("all failed")));
                if let Some(why) = why {
                    if broken.is_some() || connection.silent_for(crate::sampler::silence(endpoint.timeout)) {
                        self.forget(endpoint, &connection);
                    }
                    let readings = consumers.iter().map(|c| reading(c, Err(why.clone()))).collect();
                    (readings, Some(why), 1)
                } else {
                    let states: Vec<Result<ConsumerState, String>> = infos
                        .into_iter()
                        .map(|info| info.and_then(|state| state))
                        .collect();
                    // The latency reads go out after the consumers' infos.
                    let (latencies, latency_rounds) =
                        latencies(&connection, consumers, &states, at, endpoint.timeout).await;
                    let readings = consumers
                        .iter()
                        .zip(states)
                        .zip(latencies)
                        .map(|((c, state), latency)| QueueReading {
                            latency,
                            ..reading(c, state.map(|s| s.depth))
                        })
                        .collect();
                    let info_rounds = consumers.len().div_ceil(MAX_IN_FLIGHT_PER_TICK).max(1);
                    (readings, None, info_rounds + latency_rounds)
                }
            }
            Err(why) => {
                let readings = consumers.iter().map(|c| reading(c, Err(why.clone()))).collect();
                (readings, Some(why), 0)
            }
        };
        Sample {
            at,
            queues,
            round_trips,
            unreachable,
            memory: None,
            duration: started.elapsed(),
        }
    }

    /// The endpoint's connection: the live one, the dial under way, or a new dial.
    async fn connection(&self, endpoint: &NatsEndpoint) -> Result<Arc<Connection>, String> {
        let (id, dial) = {
            let mut slots = self.slots.lock().expect("nats connections lock");
            let (map, flights) = &mut *slots;
            map.retain(|_, (_, used)| used.elapsed() < self.idle_eviction);
            match map.get_mut(endpoint) {
                Some((Slot::Ready(connection), used)) if connection.broken().is_none() => {
                    *used = Instant::now();
                    return Ok(connection.clone());
                }
                Some((Slot::Dialing(id, dial), _)) => (*id, dial.clone()),
                _ => {
                    *flights += 1;
                    let dialled = endpoint.clone();
                    let dial = async move {
                        Connection::connect(
                            &dialled.server,
                            dialled.tls.as_ref(),
                            &dialled.auth,
                            LIMITS,
                            dialled.timeout,
                        )
                        .await
                        .map(Arc::new)
                    }
                    .boxed()
                    .shared();
                    map.insert(
                        endpoint.clone(),
                        (Slot::Dialing(*flights, dial.clone()), Instant::now()),
                    );
                    (*flights, dial)
                }
            }
        };
        let outcome = dial.await;
        let mut slots = self.slots.lock().expect("nats connections lock");
        if matches!(slots.0.get(endpoint), Some((Slot::Dialing(flying, _), _)) if *flying == id) {
            match &outcome {
                Ok(connection) => {
                    slots.0.insert(
                        endpoint.clone(),
                        (Slot::Ready(connection.clone()), Instant::now()),
                    );
                }
                Err(_) => {
                    slots.0.remove(endpoint);
                }
            }
        }
        outcome
    }

    /// Forgets `connection` (broken), unless another has replaced it already.
    fn forget(&self, endpoint: &NatsEndpoint, connection: &Arc<Connection>) {
        let mut slots = self.slots.lock().expect("nats connections lock");
        if matches!(slots.0.get(endpoint), Some((Slot::Ready(held), _)) if Arc::ptr_eq(held, connection)) {
            slots.0.remove(endpoint);
        }
    }
}

/// The sequence and stored time of the message a `STREAM.MSG.GET` found, if any.
type Found = Option<(u64, jiff::Timestamp)>;

/// Each consumer's latency (`None` with latency off): zero with no work not done, else the age
/// of the oldest message it has not had acknowledged; and the rounds of requests that took. The
/// reads of all the consumers share one deadline and go out at most `MAX_IN_FLIGHT_PER_TICK` at
/// a time, each made when its turn comes and its reply parsed as it comes.
async fn latencies(
    connection: &Connection,
    consumers: &[PreparedConsumer],
    states: &[Result<ConsumerState, String>],
    at: jiff::Timestamp,
    timeout: Duration,
) -> (Vec<Option<Result<Duration, String>>>, usize) {
    // The oldest message found so far of each consumer (`None`: none, an age of zero).
    let mut oldest: Vec<Option<Result<Found, String>>> = Vec::new();
    let mut reads = Vec::new();
    let mut count = 0;
    for (index, (consumer, state)) in consumers.iter().zip(states).enumerate() {
        oldest.push(match state {
            _ if !consumer.latency => None,
            Err(error) => Some(Err(error.clone())),
            Ok(state) if state.depth == 0 => Some(Ok(None)),
            Ok(state) => {
                match replies::oldest_message_requests(&consumer.stream, &consumer.consumer, state) {
                    Ok(bodies) => {
                        count += bodies.len();
                        reads.push((index, bodies));
                        Some(Ok(None))
                    }
                    Err(error) => Some(Err(error)),
                }
            }
        });
    }
    let deadline = Deadline::after(timeout);
    let requests = reads
        .into_iter()
        .flat_map(|(index, bodies)| bodies.map(move |body| (index, body)))
        .map(|(index, body)| oldest_message(connection, index, &consumers[index].stream, body, deadline));
    in_rounds(requests, |(index, message)| {
        let Some(Ok(so_far)) = &mut oldest[index] else {
            return;
        };
        match message {
            Ok(Some(message)) if so_far.is_none_or(|(seq, _)| message.0 < seq) => *so_far = Some(message),
            Ok(_) => {}
            Err(error) => oldest[index] = Some(Err(error)),
        }
    })
    .await;
    let latencies = oldest
        .into_iter()
        .map(|latency| {
            latency.map(|found| {
                found.map(|found| {
                    found.map_or(Duration::ZERO, |(_, time)| {
                        Duration::try_from(at.duration_since(time)).unwrap_or(Duration::ZERO)
                    })
                })
            })
        })
        .collect();
    (latencies, count.div_ceil(MAX_IN_FLIGHT_PER_TICK))
}

/// Runs the requests `requests` makes, at most `MAX_IN_FLIGHT_PER_TICK` at once: each is made
/// only when a turn is free, and its outcome handed to `take` as soon as it comes.
async fn in_rounds<T>(mut requests: impl Iterator<Item = impl Future<Output = T>>, mut take: impl FnMut(T)) {
    let mut flying = FuturesUnordered::new();
    loop {
        while flying.len() < MAX_IN_FLIGHT_PER_TICK
            && let Some(request) = requests.next()
        {
            flying.push(request);
        }
        match flying.next().await {
            Some(outcome) => take(outcome),
            None => return,
        }
    }
}

/// The `index`th consumer's CONSUMER.INFO: `Err` when it got no reply, else the reply read.
async fn consumer_info(
    connection: &Connection,
    index: usize,
    consumer: &PreparedConsumer,
    deadline: Deadline,
) -> (usize, Result<Result<ConsumerState, String>, String>) {
    let reply = connection.request(&consumer.subject, b"", deadline).await;
    let state = reply.map(|r| replies::consumer_state(&consumer.stream, &consumer.consumer, &r));
    (index, state)
}

/// One `STREAM.MSG.GET` of `stream` for the `index`th consumer: the message found, if any.
async fn oldest_message(
    connection: &Connection,
    index: usize,
    stream: &str,
    body: Vec<u8>,
    deadline: Deadline,
) -> (usize, Result<Found, String>) {
    let subject = format!("$JS.API.STREAM.MSG.GET.{stream}");
    let reply = connection.request(&subject, &body, deadline).await;
    (index, reply.and_then(|r| replies::message_found(stream, &r)))
}

fn reading(consumer: &PreparedConsumer, depth: Result<u64, String>) -> QueueReading {
    QueueReading {
        name: consumer.name.clone(),
        weight: consumer.weight,
        depth,
        latency: None,
        partitions: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_come_from_nats_urls_only() {
        let spec = |url: &str| NatsSpec {
            url: url.into(),
            credentials_secret_ref: None,
            tls: None,
            timeout: Default::default(),
        };
        let endpoint = NatsEndpoint::from_spec(&spec("nats://nats.jobs.svc"), NatsAuth::None).unwrap();
        assert_eq!(endpoint.server.authority(), "nats.jobs.svc:4222");
        assert_eq!(
            NatsEndpoint::from_spec(&spec("nats://[fd00::1]:4223"), NatsAuth::None)
                .unwrap()
                .server
                .authority(),
            "[fd00::1]:4223"
        );
        assert!(NatsEndpoint::from_spec(&spec("redis://x:6379"), NatsAuth::None).is_err());
    }

    /// A tick's requests are made only as turns come free: never more than the bound exist at
    /// once, and every outcome is handed over.
    #[tokio::test]
    async fn a_ticks_requests_are_made_as_turns_come_free() {
        use std::cell::Cell;
        let (made, running, most) = (Cell::new(0), Cell::new(0usize), Cell::new(0));
        let requests = (0..1000).map(|i| {
            made.set(made.get() + 1);
            let (running, most) = (&running, &most);
            async move {
                running.set(running.get() + 1);
                most.set(most.get().max(running.get()));
                tokio::task::yield_now().await;
                running.set(running.get() - 1);
                i
            }
        });
        let mut taken = Vec::new();
        in_rounds(requests, |i| {
            assert!(made.get() - taken.len() <= MAX_IN_FLIGHT_PER_TICK);
            taken.push(i);
        })
        .await;
        taken.sort_unstable();
        assert_eq!(taken, (0..1000).collect::<Vec<_>>());
        assert_eq!(most.get(), MAX_IN_FLIGHT_PER_TICK);
    }
}
