//! The accept loop of levee's servers: a cap on open connections (a new one evicts the oldest
//! anonymous one, else the oldest still in its TLS handshake of the client address with the most
//! handshakes), a deadline on the handshake, a low cap on anonymous connections (no client
//! certificate: past it the oldest goes), and counts of what was closed and why. So the clients
//! that present a certificate the server trusts (the aggregator's front-proxy certificate, KEDA's)
//! always find room, however many connections anyone else holds open. Handshakes take turns,
//! shared fairly between client addresses (`handshake_turns`), so a flood of new connections from
//! elsewhere does not queue the aggregator's behind all of its own. Each server then speaks its
//! own protocol over the stream (HTTP/1.1 for the metrics API and the plain port, HTTP/2 gRPC for
//! the external scaler). The plain port (`PlainTcp`) has no handshake and no client
//! certificates: every connection is anonymous.

use prometheus::{IntCounterVec, IntGauge};
use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use super::handshake_turns::HandshakeTurns;

/// What turns an accepted TCP connection into the stream a server speaks over.
pub trait Handshake: Clone + Send + Sync + 'static {
    type Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    fn handshake(&self, tcp: TcpStream) -> impl Future<Output = std::io::Result<Self::Stream>> + Send;
    /// Whether the client presented a certificate the server's verifier trusts.
    fn verified_client(stream: &Self::Stream) -> bool;
}

impl Handshake for TlsAcceptor {
    type Stream = TlsStream<TcpStream>;

    fn handshake(&self, tcp: TcpStream) -> impl Future<Output = std::io::Result<Self::Stream>> + Send {
        self.accept(tcp)
    }

    fn verified_client(stream: &Self::Stream) -> bool {
        stream
            .get_ref()
            .1
            .peer_certificates()
            .is_some_and(|c| !c.is_empty())
    }
}

/// Plain TCP: no handshake, no client certificate.
#[derive(Clone, Copy, Debug)]
pub struct PlainTcp;

impl Handshake for PlainTcp {
    type Stream = TcpStream;

    fn handshake(&self, tcp: TcpStream) -> impl Future<Output = std::io::Result<Self::Stream>> + Send {
        std::future::ready(Ok(tcp))
    }

    fn verified_client(_: &Self::Stream) -> bool {
        false
    }
}

/// What keeps idle, slow or oversized clients from holding a server's memory and file
/// descriptors: real clients (the aggregator, KEDA) keep a few connections alive and send small
/// headers, so these never touch them.
#[derive(Clone, Copy, Debug)]
pub struct ConnectionLimits {
    /// Connections open at once. At the cap a new connection evicts the oldest anonymous one,
    /// else one still in its TLS handshake (`Connections::make_room`); with none to evict, the
    /// new one is closed.
    pub max_connections: usize,
    /// Time to complete the TLS handshake.
    pub handshake_timeout: Duration,
    /// Time to send a request's headers, counted from the end of the previous request on a
    /// kept-alive connection too: it is also the idle limit between requests (HTTP/1.1).
    pub header_read_timeout: Duration,
    /// Largest request head (HTTP/1.1) or header list (HTTP/2).
    pub max_header_bytes: usize,
    /// Connections past their handshake without a client certificate, at most: a new one past
    /// it closes the oldest. The rest of `max_connections` is kept for verified clients.
    pub max_anonymous: usize,
    /// TLS handshakes run at once; past it a connection waits for a turn, and the next turn goes
    /// to the waiting client address with the fewest handshakes running (`handshake_turns`).
    /// The wait counts towards `handshake_timeout`.
    pub handshakes_at_once: usize,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self {
            max_connections: 1024,
            handshake_timeout: Duration::from_secs(5),
            // Longer than the HPA controller's 15 s sync, so its kept-alive connection lives on.
            header_read_timeout: Duration::from_secs(30),
            max_header_bytes: 32 * 1024,
            max_anonymous: 64,
            handshakes_at_once: 64,
        }
    }
}

/// Where a server counts its connections.
#[derive(Clone)]
pub struct ConnectionMetrics {
    /// Connections open now.
    pub open: IntGauge,
    /// Connections closed by a limit, by reason (`limit`, `evicted`, `handshake_timeout`).
    pub closed: IntCounterVec,
}

/// A connection past its handshake.
pub struct Accepted<S> {
    pub stream: S,
    pub peer: SocketAddr,
    /// Whether the client presented a certificate the server's verifier trusts.
    pub verified_client: bool,
}

impl Accepted<TlsStream<TcpStream>> {
    /// The common name of the client's certificate, if it presented one (the server's verifier
    /// let through only certificates it trusts).
    pub fn client_common_name(&self) -> Option<String> {
        self.stream
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|chain| chain.first())
            .and_then(super::common_name)
    }
}

/// Connections that may be closed to make room (oldest first): id, since when, and the means to
/// close it.
type Evictable = Mutex<VecDeque<(u64, Instant, oneshot::Sender<()>)>>;

/// Connections in their TLS handshake (oldest first): as `Evictable`, with the client's address.
type Handshaking = Mutex<VecDeque<(u64, Instant, oneshot::Sender<()>, IpAddr)>>;

/// A handshake younger than this is never closed to make room: a real client (the aggregator)
/// finishes its handshake in milliseconds on an idle server, so a flood of new connections cannot
/// keep evicting it before it is through; one that has not finished by then may be closed, the
/// busiest client address's first (`Connections::make_room`).
const HANDSHAKE_GRACE: Duration = Duration::from_millis(250);

/// How long a new connection at the cap waits for the one closed to make room to give its slot
/// back (it does as soon as its task next runs).
const EVICTED_CLOSE: Duration = Duration::from_secs(1);

/// The open connections; those still in their TLS handshake and those past it without a client
/// certificate (oldest first) with the means to close them.
struct Connections {
    /// One per open connection, `max_connections` in all.
    slots: Arc<Semaphore>,
    next_id: AtomicU64,
    handshaking: Handshaking,
    anonymous: Evictable,
    turns: Arc<HandshakeTurns>,
}

impl Connections {
    fn new(limits: &ConnectionLimits) -> Self {
        Self {
            slots: Arc::new(Semaphore::new(limits.max_connections)),
            next_id: AtomicU64::new(0),
            handshaking: Handshaking::default(),
            anonymous: Evictable::default(),
            turns: HandshakeTurns::new(limits.handshakes_at_once),
        }
    }

    /// A slot for a new connection: a free one, else the one of the oldest anonymous connection,
    /// else of the oldest handshake past its grace, once that connection has closed. None when
    /// there is neither (the new one must go). Waiting for the closed connection's slot keeps
    /// the connections open at most `max_connections`, however fast a flood reconnects.
    async fn slot(&self) -> Option<OwnedSemaphorePermit> {
        if let Ok(slot) = self.slots.clone().try_acquire_owned() {
            return Some(slot);
        }
        if !self.make_room() {
            return None;
        }
        tokio::time::timeout(EVICTED_CLOSE, self.slots.clone().acquire_owned())
            .await
            .ok()?
            .ok()
    }

    /// Closes the oldest anonymous connection, else a handshake past its grace: the oldest of
    /// the client address with the most handshakes that has one. So a flood from a few addresses
    /// gives up its own handshakes, never the one the aggregator is in the middle of (its
    /// handshake can take seconds on a server busy with the flood's). False when there is none.
    fn make_room(&self) -> bool {
        if let Some((_, _, evict)) = self.anonymous.lock().expect("connection table lock").pop_front() {
            let _ = evict.send(());
            return true;
        }
        let mut handshaking = self.handshaking.lock().expect("connection table lock");
        let mut by_address: HashMap<IpAddr, usize> = HashMap::new();
        for (_, _, _, source) in handshaking.iter() {
            *by_address.entry(*source).or_default() += 1;
        }
        let mut addresses: Vec<(IpAddr, usize)> = by_address.into_iter().collect();
        addresses.sort_by_key(|&(_, count)| std::cmp::Reverse(count));
        // Each address's first entry is its oldest: past its grace, or none of that address is.
        let victim = addresses.iter().find_map(|(address, _)| {
            handshaking
                .iter()
                .position(|(_, _, _, source)| source == address)
                .filter(|&at| handshaking[at].1.elapsed() >= HANDSHAKE_GRACE)
        });
        let Some(at) = victim else {
            return false;
        };
        let (_, _, evict, _) = handshaking.remove(at).expect("found above");
        let _ = evict.send(());
        true
    }

    /// Lists an anonymous connection, closing the oldest one when there are already `max`;
    /// returns its id and what closes it.
    fn anonymous_started(&self, max: usize) -> (u64, oneshot::Receiver<()>) {
        let id = self.next_id.fetch_add(1, Ordering::SeqCst);
        let (evict, evicted) = oneshot::channel();
        let mut anonymous = self.anonymous.lock().expect("connection table lock");
        while anonymous.len() >= max.max(1) {
            if let Some((_, _, oldest)) = anonymous.pop_front() {
                let _ = oldest.send(());
            }
        }
        anonymous.push_back((id, Instant::now(), evict));
        (id, evicted)
    }

    fn anonymous_ended(&self, id: u64) {
        self.anonymous
            .lock()
            .expect("connection table lock")
            .retain(|(other, _, _)| *other != id);
    }

    fn handshake_started(&self, source: IpAddr) -> (u64, oneshot::Receiver<()>) {
        let id = self.next_id.fetch_add(1, Ordering::SeqCst);
        let (evict, evicted) = oneshot::channel();
        self.handshaking
            .lock()
            .expect("connection table lock")
            .push_back((id, Instant::now(), evict, source.to_canonical()));
        (id, evicted)
    }

    fn handshake_ended(&self, id: u64) {
        self.handshaking
            .lock()
            .expect("connection table lock")
            .retain(|(other, _, _, _)| *other != id);
    }
}

/// Accepts on `listener` until `shutdown` resolves; each connection that completes its
/// handshake is handed to `serve` on a task of its own. `server` names the server in logs.
pub async fn accept_loop<H, S, F>(
    server: &'static str,
    listener: TcpListener,
    acceptor: H,
    limits: ConnectionLimits,
    metrics: ConnectionMetrics,
    shutdown: impl std::future::Future<Output = ()>,
    serve: S,
) -> Result<(), String>
where
    H: Handshake,
    S: Fn(Accepted<H::Stream>) -> F + Clone + Send + 'static,
    F: std::future::Future<Output = Result<(), String>> + Send + 'static,
{
    let connections = Arc::new(Connections::new(&limits));
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            _ = &mut shutdown => return Ok(()),
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, "{server}: accept failed");
                    continue;
                }
            },
        };
        let Some(slot) = connections.slot().await else {
            metrics.closed.with_label_values(&["limit"]).inc();
            tracing::debug!(%peer, "{server}: too many connections; closing this one");
            drop(stream);
            continue;
        };
        // Listed as handshaking before its task first runs: the next connection over the cap can
        // evict it even if no task has had a turn since (a burst of connections in the backlog).
        let handshaking = connections.handshake_started(peer.ip());
        let (acceptor, connections, metrics, serve) = (
            acceptor.clone(),
            connections.clone(),
            metrics.clone(),
            serve.clone(),
        );
        tokio::spawn(async move {
            metrics.open.inc();
            let accepted = handshake(
                &connections,
                &metrics,
                handshaking,
                acceptor,
                stream,
                peer,
                limits,
            );
            let served = match accepted.await {
                Ok(stream) => {
                    let verified_client = H::verified_client(&stream);
                    let accepted = Accepted {
                        stream,
                        peer,
                        verified_client,
                    };
                    if verified_client {
                        serve(accepted).await
                    } else {
                        let (id, evicted) = connections.anonymous_started(limits.max_anonymous);
                        let served = tokio::select! {
                            served = serve(accepted) => served,
                            _ = evicted => {
                                metrics.closed.with_label_values(&["evicted_anonymous"]).inc();
                                Err(format!("{peer}: closed to make room (anonymous connections)"))
                            }
                        };
                        connections.anonymous_ended(id);
                        served
                    }
                }
                Err(error) => Err(error),
            };
            if let Err(error) = served {
                tracing::debug!(%peer, %error, "{server} connection ended");
            }
            metrics.open.dec();
            drop(slot);
        });
    }
}

async fn handshake<H: Handshake>(
    connections: &Connections,
    metrics: &ConnectionMetrics,
    (id, evicted): (u64, oneshot::Receiver<()>),
    acceptor: H,
    stream: TcpStream,
    peer: SocketAddr,
    limits: ConnectionLimits,
) -> Result<H::Stream, String> {
    let closed = |reason: &str| metrics.closed.with_label_values(&[reason]).inc();
    let handshake = tokio::select! {
        handshake = tokio::time::timeout(limits.handshake_timeout, async {
            let _turn = connections.turns.wait(peer.ip()).await;
            acceptor.handshake(stream).await
        }) => handshake,
        _ = evicted => {
            closed("evicted");
            return Err(format!("{peer} evicted during its TLS handshake: too many connections"));
        }
    };
    connections.handshake_ended(id);
    match handshake {
        Ok(handshake) => handshake.map_err(|e| format!("TLS handshake with {peer}: {e}")),
        Err(_) => {
            closed("handshake_timeout");
            Err(format!(
                "no TLS handshake from {peer} within {:?}",
                limits.handshake_timeout
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn address(last: u8) -> IpAddr {
        IpAddr::from([127, 0, 0, last])
    }

    /// Whether the connection was told to close (now or before).
    fn closed(evicted: &mut oneshot::Receiver<()>) -> bool {
        !matches!(evicted.try_recv(), Err(oneshot::error::TryRecvError::Empty))
    }

    #[test]
    fn a_handshake_is_closed_to_make_room_from_the_address_with_the_most() {
        let connections = Connections::new(&ConnectionLimits::default());
        let (_, mut aggregator) = connections.handshake_started(address(1));
        let mut flood: Vec<_> = (0..3)
            .map(|_| connections.handshake_started(address(2)).1)
            .collect();
        std::thread::sleep(HANDSHAKE_GRACE + Duration::from_millis(50));
        let (_, mut young) = connections.handshake_started(address(2));

        assert!(connections.make_room());
        assert!(
            !closed(&mut aggregator),
            "the aggregator's handshake, the oldest, is not the one closed"
        );
        assert!(closed(&mut flood[0]), "the flood's oldest is");
        assert!(connections.make_room() && connections.make_room());
        assert!(flood.iter_mut().all(closed) && !closed(&mut aggregator));
        assert!(
            connections.make_room() && closed(&mut aggregator),
            "the flood's last one is within its grace: the aggregator's goes now"
        );
        assert!(!connections.make_room(), "nothing past its grace is left");
        assert!(!closed(&mut young));
    }
}
