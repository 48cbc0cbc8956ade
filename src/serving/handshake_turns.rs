//! Turns at the TLS handshake, shared fairly between client addresses. Before its handshake a
//! connection cannot be told apart from any other, but its address can: when more handshakes are
//! waiting than may run at once, the next turn goes to a waiting address with the fewest
//! handshakes running (the oldest waiter of that address first). So a flood from one address (or
//! a few) cannot make a client elsewhere (the API server's aggregator) queue behind all of its
//! connections; without contention every connection starts its handshake at once.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use tokio::sync::oneshot;

/// Handshakes that may run at once, and who waits for a turn.
pub struct HandshakeTurns {
    at_once: usize,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    running: usize,
    sources: HashMap<IpAddr, Source>,
}

#[derive(Default)]
struct Source {
    running: usize,
    waiting: VecDeque<oneshot::Sender<Turn>>,
}

/// A running handshake's turn: dropping it hands the turn on.
pub struct Turn {
    turns: Arc<HandshakeTurns>,
    source: IpAddr,
    /// False for a turn that was never taken (its waiter had gone): nothing to hand on.
    held: bool,
}

impl Drop for Turn {
    fn drop(&mut self) {
        if self.held {
            self.turns.hand_on(self.source);
        }
    }
}

impl HandshakeTurns {
    /// At most `at_once` handshakes at a time (at least one).
    pub fn new(at_once: usize) -> Arc<Self> {
        Arc::new(Self {
            at_once: at_once.max(1),
            state: Mutex::new(State::default()),
        })
    }

    /// Waits for a turn for a connection from `source`. Cancelling the wait (the connection's
    /// deadline or its eviction) gives up its place.
    pub async fn wait(self: &Arc<Self>, source: IpAddr) -> Turn {
        let source = source.to_canonical();
        let waiting = {
            let mut state = self.state.lock().expect("handshake turns lock");
            if state.running < self.at_once {
                state.take(source);
                None
            } else {
                let (sender, receiver) = oneshot::channel();
                state.sources.entry(source).or_default().waiting.push_back(sender);
                Some(receiver)
            }
        };
        match waiting {
            None => self.turn(source),
            // The sender goes only with a turn in it (`hand_on`), and `self` keeps the state alive.
            Some(receiver) => receiver.await.expect("a waiter is handed its turn"),
        }
    }

    /// Handshakes running now, and connections waiting for a turn.
    pub fn counts(&self) -> (usize, usize) {
        let state = self.state.lock().expect("handshake turns lock");
        let waiting = state.sources.values().map(|s| s.waiting.len()).sum();
        (state.running, waiting)
    }

    fn turn(self: &Arc<Self>, source: IpAddr) -> Turn {
        Turn {
            turns: self.clone(),
            source,
            held: true,
        }
    }

    /// A handshake from `source` ended: its turn goes to the waiting address with the fewest
    /// running, skipping waiters that have gone.
    fn hand_on(self: &Arc<Self>, source: IpAddr) {
        let mut gone = Vec::new();
        {
            let mut state = self.state.lock().expect("handshake turns lock");
            state.release(source);
            while let Some(next) = state.fairest_waiting() {
                let sender = state
                    .sources
                    .get_mut(&next)
                    .and_then(|s| s.waiting.pop_front())
                    .expect("fairest_waiting names an address with a waiter");
                state.take(next);
                match sender.send(self.turn(next)) {
                    Ok(()) => break,
                    Err(mut unclaimed) => {
                        state.release(next);
                        unclaimed.held = false;
                        gone.push(unclaimed);
                    }
                }
            }
        }
        drop(gone);
    }
}

impl State {
    fn take(&mut self, source: IpAddr) {
        self.running += 1;
        self.sources.entry(source).or_default().running += 1;
    }

    fn release(&mut self, source: IpAddr) {
        self.running -= 1;
        if let Some(entry) = self.sources.get_mut(&source) {
            entry.running -= 1;
            if entry.running == 0 && entry.waiting.is_empty() {
                self.sources.remove(&source);
            }
        }
    }

    /// The waiting address with the fewest handshakes running.
    fn fairest_waiting(&mut self) -> Option<IpAddr> {
        self.sources
            .retain(|_, s| s.running > 0 || s.waiting.iter().any(|w| !w.is_closed()));
        for source in self.sources.values_mut() {
            source.waiting.retain(|w| !w.is_closed());
        }
        self.sources
            .iter()
            .filter(|(_, s)| !s.waiting.is_empty())
            .min_by_key(|(_, s)| s.running)
            .map(|(address, _)| *address)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn address(last: u8) -> IpAddr {
        IpAddr::from([127, 0, 0, last])
    }

    async fn settled() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    #[tokio::test]
    async fn without_contention_every_handshake_starts_at_once() {
        let turns = HandshakeTurns::new(3);
        let held: Vec<Turn> = futures::future::join_all((0..3).map(|_| turns.wait(address(2)))).await;
        assert_eq!(turns.counts(), (3, 0));
        drop(held);
        assert_eq!(turns.counts(), (0, 0));
        assert!(
            turns.state.lock().unwrap().sources.is_empty(),
            "no address kept once idle"
        );
    }

    #[tokio::test]
    async fn a_turn_goes_to_the_address_with_the_fewest_running_before_a_floods_backlog() {
        let turns = HandshakeTurns::new(2);
        let mut flood_running = vec![turns.wait(address(2)).await, turns.wait(address(2)).await];
        let flood_waiting: Vec<_> = (0..50)
            .map(|_| {
                tokio::spawn({
                    let turns = turns.clone();
                    async move { turns.wait(address(2)).await }
                })
            })
            .collect();
        settled().await;
        let aggregator = tokio::spawn({
            let turns = turns.clone();
            async move { turns.wait(address(1)).await }
        });
        settled().await;
        assert_eq!(turns.counts(), (2, 51));
        drop(flood_running.pop());
        let aggregator = tokio::time::timeout(Duration::from_secs(1), aggregator)
            .await
            .expect("the other address's handshake has the next turn, ahead of 50 older ones")
            .unwrap();
        assert_eq!(aggregator.source, address(1));
        assert_eq!(turns.counts(), (2, 50));
        drop(aggregator);
        drop(flood_running);
        settled().await;
        assert_eq!(
            turns.counts().0,
            2,
            "the flood's waiters take the freed turns in order"
        );
        for waiter in flood_waiting {
            waiter.abort();
        }
    }

    #[tokio::test]
    async fn a_waiter_that_gave_up_is_skipped_and_its_turn_not_lost() {
        let turns = HandshakeTurns::new(1);
        let running = turns.wait(address(2)).await;
        let gone = tokio::spawn({
            let turns = turns.clone();
            async move { turns.wait(address(3)).await }
        });
        let next = tokio::spawn({
            let turns = turns.clone();
            async move { turns.wait(address(2)).await }
        });
        settled().await;
        gone.abort();
        settled().await;
        drop(running);
        let next = tokio::time::timeout(Duration::from_secs(1), next)
            .await
            .expect("the remaining waiter is handed the turn")
            .unwrap();
        assert_eq!(turns.counts(), (1, 0));
        drop(next);
        assert_eq!(turns.counts(), (0, 0));
    }
}
