//! One endpoint's topology and connections, shared by every policy that names the same Redis.
//!
//! No lock is held across a network call. The first caller that needs a connection (or the
//! topology) starts the dial and leaves it in the map as a flight; every other caller awaits that
//! same flight, so N policies on a Redis that does not answer wait one dial's time, not N dials
//! in a row, and a healthy endpoint is never held up by another's.

use super::endpoint::Endpoint;
use super::memory::Memory;
use super::topology::Topology;
use crate::sampler::NodeAddr;
use futures::future::{BoxFuture, FutureExt, Shared};
use redis::aio::MultiplexedConnection;
use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A dial or a discovery under way, awaited by everyone who needs its result.
type Flight<T> = Shared<BoxFuture<'static, Result<T, String>>>;

/// A result, or the flight that will bring it (with an id, so that only that flight's own
/// outcome replaces it).
enum Slot<T: Clone> {
    Ready(T),
    Flying(u64, Flight<T>),
}

#[derive(Default)]
struct State {
    topology: Option<Slot<Arc<Topology>>>,
    connections: HashMap<NodeAddr, Slot<MultiplexedConnection>>,
    /// Nodes levee loaded the latency script on (it stays in the server's script cache across
    /// connections; a restarted node answers `NOSCRIPT` and the read loads it again).
    scripted: HashSet<NodeAddr>,
    /// Each node's last `INFO memory` and when it was read, for the ticks of other policies.
    memory: HashMap<NodeAddr, (Instant, Memory)>,
    /// When each node's connection last answered a pipeline, whoever sent it.
    answered: HashMap<NodeAddr, Instant>,
    flights: u64,
}

/// The topology and connections of one endpoint.
#[derive(Default)]
pub struct EndpointConnections {
    state: Mutex<State>,
}

impl EndpointConnections {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("endpoint state lock")
    }

    /// Where the endpoint's keys live, discovered once and shared.
    pub async fn topology(&self, endpoint: &Endpoint) -> Result<Arc<Topology>, String> {
        let (id, flight) = {
            let mut state = self.state();
            match &state.topology {
                Some(Slot::Ready(topology)) => return Ok(topology.clone()),
                Some(Slot::Flying(id, flight)) => (*id, flight.clone()),
                None => {
                    let endpoint = endpoint.clone();
                    let (id, flight) = launch(&mut state, async move {
                        Topology::discover(&endpoint).await.map(Arc::new)
                    });
                    state.topology = Some(Slot::Flying(id, flight.clone()));
                    (id, flight)
                }
            }
        };
        let outcome = flight.await;
        let mut state = self.state();
        if matches!(&state.topology, Some(Slot::Flying(flying, _)) if *flying == id) {
            match &outcome {
                Ok(topology) => {
                    state.connections.retain(|node, _| topology.contains(node));
                    state.scripted.retain(|node| topology.contains(node));
                    state.memory.retain(|node, _| topology.contains(node));
                    state.answered.retain(|node, _| topology.contains(node));
                    state.topology = Some(Slot::Ready(topology.clone()));
                }
                Err(_) => state.topology = None,
            }
        }
        outcome
    }

    /// A connection to `node` (the endpoint's database, authenticated), dialled once and shared.
    pub async fn connection(
        &self,
        endpoint: &Endpoint,
        node: &NodeAddr,
    ) -> Result<MultiplexedConnection, String> {
        let (id, flight) = {
            let mut state = self.state();
            match state.connections.get(node) {
                Some(Slot::Ready(connection)) => return Ok(connection.clone()),
                Some(Slot::Flying(id, flight)) => (*id, flight.clone()),
                None => {
                    let (endpoint, dialled) = (endpoint.clone(), node.clone());
                    let dial = async move { super::connect(&endpoint, &dialled, endpoint.db(), true).await };
                    let (id, flight) = launch(&mut state, dial);
                    state
                        .connections
                        .insert(node.clone(), Slot::Flying(id, flight.clone()));
                    (id, flight)
                }
            }
        };
        let outcome = flight.await;
        let mut state = self.state();
        if matches!(state.connections.get(node), Some(Slot::Flying(flying, _)) if *flying == id) {
            match &outcome {
                Ok(connection) => {
                    state
                        .connections
                        .insert(node.clone(), Slot::Ready(connection.clone()));
                    // A new connection counts as heard from: its silence starts now.
                    state.answered.insert(node.clone(), Instant::now());
                }
                Err(_) => {
                    state.connections.remove(node);
                }
            }
        }
        outcome
    }

    /// Forgets the topology: the next caller discovers it again.
    pub fn forget_topology(&self) {
        self.state().topology = None;
    }

    /// Drops the connections to `nodes` (broken): the next caller dials again.
    pub fn forget_connections<'a>(&self, nodes: impl IntoIterator<Item = &'a NodeAddr>) {
        let mut state = self.state();
        for node in nodes {
            state.connections.remove(node);
            state.answered.remove(node);
        }
    }

    /// Notes that `node`'s connection just answered a pipeline: it is alive.
    pub fn answered(&self, node: &NodeAddr) {
        self.state().answered.insert(node.clone(), Instant::now());
    }

    /// Drops the connections to `nodes` that a pipeline waited on in vain, if they have
    /// answered nothing for `silent_for` either (nor since they were dialled): a late reply on a
    /// connection that still answers others is a busy server or a busy levee (a stall of the
    /// process times out everything in flight at once, before the replies already received
    /// are read), and a new connection would only add a dial and its commands to the load. One
    /// that answers nobody is dialled again. Returns whether any was dropped.
    pub fn forget_silent<'a>(
        &self,
        nodes: impl IntoIterator<Item = &'a NodeAddr>,
        silent_for: Duration,
    ) -> bool {
        let mut state = self.state();
        let mut dropped = false;
        for node in nodes {
            if silent(state.answered.get(node).copied(), Instant::now(), silent_for) {
                state.connections.remove(node);
                state.answered.remove(node);
                dropped = true;
            }
        }
        dropped
    }

    /// `node`'s memory as read at most `max_age` ago by any policy's tick on this endpoint.
    pub fn recent_memory(&self, node: &NodeAddr, max_age: Duration) -> Option<Memory> {
        let state = self.state();
        let (at, memory) = state.memory.get(node)?;
        (at.elapsed() <= max_age).then(|| memory.clone())
    }

    /// Keeps `memory`, just read from `node`.
    pub fn remember_memory(&self, node: &NodeAddr, memory: &Memory) {
        let mut state = self.state();
        state
            .memory
            .insert(node.clone(), (Instant::now(), memory.clone()));
    }

    /// True the first time it is asked for `node` (since its topology was learnt): the caller
    /// then loads the latency script there.
    pub fn first_script_use(&self, node: &NodeAddr) -> bool {
        self.state().scripted.insert(node.clone())
    }
}

/// Whether a connection last heard from at `answered` has been silent for `silent_for` at `now`.
fn silent(answered: Option<Instant>, now: Instant, silent_for: Duration) -> bool {
    answered.is_none_or(|at| now.saturating_duration_since(at) >= silent_for)
}

/// Starts `work` as a shared flight with a fresh id.
fn launch<T: Clone + Send + Sync + 'static>(
    state: &mut State,
    work: impl Future<Output = Result<T, String>> + Send + 'static,
) -> (u64, Flight<T>) {
    state.flights += 1;
    (state.flights, work.boxed().shared())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_heard_from_within_the_silence_is_kept() {
        let now = Instant::now();
        let silence = Duration::from_secs(2);
        assert!(silent(None, now, silence), "never heard from");
        assert!(silent(Some(now - Duration::from_secs(3)), now, silence));
        assert!(!silent(Some(now - Duration::from_secs(1)), now, silence));
        assert!(!silent(Some(now), now, silence));
    }
}
