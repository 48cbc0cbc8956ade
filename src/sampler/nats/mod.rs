//! Reads NATS JetStream consumers' backlogs: one `$JS.API.CONSUMER.INFO.<stream>.<consumer>`
//! request per queue, all in flight at once on the one connection levee keeps per server (and
//! credentials), shared by every policy that names it. The request is routed by the servers to
//! the consumer's leader, the only one that answers it, so the figure is the leader's: never a
//! follower's stale count, as a scrape of a monitoring page can be. The depth is the work not
//! done: `num_pending` (not yet delivered) + `num_ack_pending` (delivered, not acknowledged), as
//! `nats consumer info` shows them ("Unprocessed Messages" and "Outstanding Acks"). With latency
//! on, a consumer with work not done gets a second request, `STREAM.MSG.GET` of the next message
//! after its ack floor on its filter (the oldest it has not had acknowledged), and its latency is
//! now − that message's stored time.

mod connection;
pub mod nkey;
mod replies;
pub mod wire;

pub use connection::NatsAuth;

use crate::api::{NatsSpec, QueueSpec, QueueType};
use connection::Connection;
use futures::future::{BoxFuture, FutureExt, Shared, join_all};
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
                let replies = join_all(
                    consumers
                        .iter()
                        .map(|c| connection.request(&c.subject, b"", endpoint.timeout)),
                )
                .await;
                // No reply at all: the sample fails. A server that stopped answering (packets
                // dropped) keeps the socket open, so the connection is dialled again next tick
                // once it has sent nothing for `silence` either; one that still answers other
                // policies' requests is kept (before, every policy whose requests all came late
                // on a busy machine dropped the connection they all share).
                let unanswered = !replies.is_empty() && replies.iter().all(Result::is_err);
                let broken = connection.broken();
                let why = broken
                    .clone()
                    .or_else(|| unanswered.then(|| replies[0].clone().expect_err("all failed")));
                if let Some(why) = why {
                    if broken.is_some() || connection.silent_for(crate::sampler::silence(endpoint.timeout)) {
                        self.forget(endpoint, &connection);
                    }
                    let readings = consumers.iter().map(|c| reading(c, Err(why.clone()))).collect();
                    (readings, Some(why), 1)
                } else {
                    let states: Vec<Result<ConsumerState, String>> = consumers
                        .iter()
                        .zip(replies)
                        .map(|(c, reply)| {
                            reply.and_then(|r| replies::consumer_state(&c.stream, &c.consumer, &r))
                        })
                        .collect();
                    // The latency reads go out together, after the consumers' infos.
                    let reads_latency = consumers
                        .iter()
                        .zip(&states)
                        .any(|(c, state)| c.latency && state.as_ref().is_ok_and(|s| s.depth > 0));
                    let latencies = join_all(
                        consumers
                            .iter()
                            .zip(&states)
                            .map(|(c, state)| latency(&connection, c, state, at, endpoint.timeout)),
                    )
                    .await;
                    let readings = consumers
                        .iter()
                        .zip(states)
                        .zip(latencies)
                        .map(|((c, state), latency)| QueueReading {
                            latency,
                            ..reading(c, state.map(|s| s.depth))
                        })
                        .collect();
                    (readings, None, 1 + usize::from(reads_latency))
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

/// A consumer's latency (`None` with latency off): zero with no work not done, else the age of
/// the oldest message it has not had acknowledged.
async fn latency(
    connection: &Connection,
    consumer: &PreparedConsumer,
    state: &Result<ConsumerState, String>,
    at: jiff::Timestamp,
    timeout: Duration,
) -> Option<Result<Duration, String>> {
    if !consumer.latency {
        return None;
    }
    let state = match state {
        Ok(state) if state.depth == 0 => return Some(Ok(Duration::ZERO)),
        Ok(state) => state,
        Err(error) => return Some(Err(error.clone())),
    };
    let subject = format!("$JS.API.STREAM.MSG.GET.{}", consumer.stream);
    let found = join_all(
        replies::oldest_message_requests(state)
            .iter()
            .map(|body| connection.request(&subject, body, timeout)),
    )
    .await;
    let mut oldest: Option<(u64, jiff::Timestamp)> = None;
    for reply in found {
        let message = reply.and_then(|r| replies::message_found(&consumer.stream, &r));
        match message {
            Ok(Some(found)) if oldest.is_none_or(|(seq, _)| found.0 < seq) => oldest = Some(found),
            Ok(_) => {}
            Err(error) => return Some(Err(error)),
        }
    }
    let age = oldest.map_or(Duration::ZERO, |(_, time)| {
        let elapsed = at.duration_since(time);
        Duration::try_from(elapsed).unwrap_or(Duration::ZERO)
    });
    Some(Ok(age))
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
}
