//! One connection to a NATS server, shared by every policy that names it: requests are sent at
//! once and their replies matched by inbox token, so a tick's requests are in flight together.
//! Every byte the server sends is parsed within `wire::Limits`: a message over `max_payload` is
//! dropped unread and fails its request only, anything worse breaks the connection (re-dialled
//! on the next tick); and each request has a deadline.
//!
//! At most [`MAX_IN_FLIGHT`] requests are in flight on a connection: a request takes a turn
//! before it is registered or written, so the connection's state per request (its waiter, and
//! the reply handed over) never holds more than that many, whatever the server answers or fails
//! to. A request past the cap waits for a turn in order of arrival, within its own deadline.

use super::nkey::UserKey;
use super::wire::{self, Limits, ServerOp};
use crate::sampler::NodeAddr;
use crate::sampler::tls::TlsSettings;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::TcpStream;

/// A connection's byte stream: plain TCP, or TLS over it.
trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}
type OwnedReadHalf = ReadHalf<Box<dyn Stream>>;
type OwnedWriteHalf = WriteHalf<Box<dyn Stream>>;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// How a client proves who it is.
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub enum NatsAuth {
    #[default]
    None,
    UserPassword {
        user: String,
        password: String,
    },
    Token(String),
    /// A user nkey seed (`SU…`): the public key sent, the server's nonce signed.
    Nkey {
        seed: String,
    },
    /// A `.creds` file's user JWT and seed (decentralised auth): the JWT sent, the nonce signed.
    Credentials {
        jwt: String,
        seed: String,
    },
}

impl std::fmt::Debug for NatsAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            NatsAuth::None => "None",
            NatsAuth::UserPassword { .. } => "UserPassword(redacted)",
            NatsAuth::Token(_) => "Token(redacted)",
            NatsAuth::Nkey { .. } => "Nkey(redacted)",
            NatsAuth::Credentials { .. } => "Credentials(redacted)",
        })
    }
}

/// A reply to a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    /// The header block's status (`503`: no server answers the subject), if any.
    pub status: Option<String>,
    pub payload: Vec<u8>,
    /// The size of a reply over the limit, dropped unread (`payload` is then empty).
    pub oversized: Option<usize>,
}

type Waiters = Arc<Mutex<HashMap<u64, oneshot::Sender<Reply>>>>;

/// The most requests in flight at once on one connection, shared by every policy naming the
/// server. Each may hold a reply of up to `LIMITS.max_payload` (256 KiB) between the reader and
/// its caller, so this bounds those at 16 MiB per connection, whatever the server sends. It is
/// two ticks' worth ([`super::MAX_IN_FLIGHT_PER_TICK`]), and more would not read faster: a
/// server answers JetStream API requests from a queue of its own, and at a millisecond a round
/// trip 64 in flight still carry 64,000 requests a second. Past it a request waits for a turn,
/// in order of arrival, rather than failing: a burst of policies ticking together on a healthy
/// server is then only delayed, and a request that gets no turn within its deadline fails alone
/// (on its own queue), saying why.
pub const MAX_IN_FLIGHT: usize = 64;

/// When a request (or a round of them) must be answered by, and the timeout it came from (named
/// in errors).
#[derive(Clone, Copy, Debug)]
pub struct Deadline {
    pub at: tokio::time::Instant,
    pub timeout: Duration,
}

impl Deadline {
    /// `timeout` from now.
    pub fn after(timeout: Duration) -> Self {
        Self {
            at: tokio::time::Instant::now() + timeout,
            timeout,
        }
    }
}

/// A live connection; dropping it stops its reader and closes the socket.
pub struct Connection {
    writer: Arc<tokio::sync::Mutex<OwnedWriteHalf>>,
    /// `MAX_IN_FLIGHT` turns; a request holds one from before it is registered until it is done.
    turns: tokio::sync::Semaphore,
    waiters: Waiters,
    next_token: AtomicU64,
    inbox: String,
    /// Why the connection stopped, once it has.
    broken: Arc<Mutex<Option<String>>>,
    /// When the server last sent anything (the handshake's PONG at first).
    heard: Arc<Mutex<Instant>>,
    reader: JoinHandle<()>,
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// What the server said about itself in `INFO`.
#[derive(serde::Deserialize, Default)]
struct ServerInfo {
    #[serde(default)]
    tls_required: bool,
    /// Offered beside plain connections (`allow_non_tls`).
    #[serde(default)]
    tls_available: bool,
    #[serde(default)]
    headers: bool,
    /// What an nkey or JWT user signs to prove itself.
    #[serde(default)]
    nonce: Option<String>,
}

impl Connection {
    /// Dials `server`, reads its INFO, upgrades to TLS with `tls`, authenticates and subscribes
    /// to its reply inbox, all within `timeout`.
    pub async fn connect(
        server: &NodeAddr,
        tls: Option<&TlsSettings>,
        auth: &NatsAuth,
        limits: Limits,
        timeout: Duration,
    ) -> Result<Self, String> {
        let address = server.authority();
        tokio::time::timeout(timeout, Self::handshake(server, tls, auth, limits))
            .await
            .map_err(|_| format!("no NATS handshake with {address} within {timeout:?}"))?
    }

    async fn handshake(
        server: &NodeAddr,
        tls: Option<&TlsSettings>,
        auth: &NatsAuth,
        limits: Limits,
    ) -> Result<Self, String> {
        let address = server.authority();
        let address = address.as_str();
        let mut tcp = TcpStream::connect(address)
            .await
            .map_err(|e| format!("connecting to NATS at {address}: {e}"))?;
        let _ = tcp.set_nodelay(true);
        let mut buffer = Vec::new();
        let info = match next_op(&mut tcp, &mut buffer, limits).await? {
            ServerOp::Info(json) => serde_json::from_slice::<ServerInfo>(&json).unwrap_or_default(),
            other => return Err(format!("{address} is not a NATS server: it began with {other:?}")),
        };
        let stream: Box<dyn Stream> = match tls {
            Some(_) if !info.tls_required && !info.tls_available => {
                return Err(format!(
                    "the NATS server at {address} offers no TLS: remove spec.nats.tls, or give the server a tls block"
                ));
            }
            Some(tls) => {
                // Nothing read past INFO belongs to the TLS session (the server waits for it).
                buffer.clear();
                Box::new(
                    tls.wrap(
                        tcp,
                        &server.host,
                        &format!("the NATS server at {address}"),
                        "spec.nats.tls",
                    )
                    .await?,
                )
            }
            None if info.tls_required => {
                return Err(format!(
                    "the NATS server at {address} requires TLS: set spec.nats.tls (caSecretRef: the CA that signed its certificate)"
                ));
            }
            None => Box::new(tcp),
        };
        let (mut read, mut write) = tokio::io::split(stream);
        if !info.headers {
            return Err(format!(
                "the NATS server at {address} does not support headers (NATS 2.2 or later is needed)"
            ));
        }
        let mut connect = serde_json::json!({
            "verbose": false, "pedantic": false, "lang": "rust", "name": "levee",
            "version": env!("CARGO_PKG_VERSION"), "protocol": 1, "headers": true, "no_responders": true,
        });
        match auth {
            NatsAuth::None => {}
            NatsAuth::UserPassword { user, password } => {
                connect["user"] = user.clone().into();
                connect["pass"] = password.clone().into();
            }
            NatsAuth::Token(token) => connect["auth_token"] = token.clone().into(),
            NatsAuth::Nkey { seed } => {
                let key = UserKey::from_seed(seed).map_err(|e| format!("the nkey seed: {e}"))?;
                connect["nkey"] = key.public.clone().into();
                if let Some(nonce) = &info.nonce {
                    connect["sig"] = key.sign(nonce.as_bytes()).into();
                }
            }
            NatsAuth::Credentials { jwt, seed } => {
                let key = UserKey::from_seed(seed).map_err(|e| format!("the .creds file's seed: {e}"))?;
                connect["jwt"] = jwt.clone().into();
                if let Some(nonce) = &info.nonce {
                    connect["sig"] = key.sign(nonce.as_bytes()).into();
                }
            }
        }
        let inbox = format!("_INBOX.levee.{}.", random_token());
        let hello = format!("CONNECT {connect}\r\nPING\r\nSUB {inbox}* 1\r\n");
        write
            .write_all(hello.as_bytes())
            .await
            .map_err(|e| format!("writing to NATS at {address}: {e}"))?;
        loop {
            match next_op(&mut read, &mut buffer, limits).await? {
                ServerOp::Pong => break,
                ServerOp::Ok | ServerOp::Info(_) | ServerOp::Ping => {}
                ServerOp::Err(message) => {
                    return Err(format!("the NATS server at {address} refused levee: {message}"));
                }
                ServerOp::Msg { .. } | ServerOp::Oversized { .. } => {}
            }
        }
        let writer = Arc::new(tokio::sync::Mutex::new(write));
        let waiters = Waiters::default();
        let broken = Arc::new(Mutex::new(None));
        let heard = Arc::new(Mutex::new(Instant::now()));
        let reader = tokio::spawn(read_replies(
            read,
            buffer,
            limits,
            inbox.clone(),
            writer.clone(),
            waiters.clone(),
            (broken.clone(), heard.clone()),
        ));
        Ok(Self {
            writer,
            turns: tokio::sync::Semaphore::new(MAX_IN_FLIGHT),
            waiters,
            next_token: AtomicU64::new(1),
            inbox,
            broken,
            heard,
            reader,
        })
    }

    /// Why the connection stopped, if it has.
    pub fn broken(&self) -> Option<String> {
        self.broken.lock().expect("connection state lock").clone()
    }

    /// Whether the server has sent nothing for `quiet` (nor since the handshake).
    pub fn silent_for(&self, quiet: Duration) -> bool {
        self.heard.lock().expect("connection state lock").elapsed() >= quiet
    }

    /// Sends a request with `body` on `subject` once it has a turn, and waits for its reply; all
    /// of it by `deadline`. Nothing is sent once the deadline has passed.
    pub async fn request(&self, subject: &str, body: &[u8], deadline: Deadline) -> Result<Reply, String> {
        let timeout = deadline.timeout;
        let turn = tokio::time::timeout_at(deadline.at, self.turns.acquire()).await;
        let Ok(Ok(_turn)) = turn else {
            return Err(format!(
                "no turn to send {subject} within {timeout:?}: {MAX_IN_FLIGHT} requests (levee's bound per connection) were in flight to this NATS server, or waiting before this one, all that time; the server answers the policies that name it too slowly: check its load, or raise spec.nats.timeout"
            ));
        };
        if let Some(why) = self.broken() {
            return Err(why);
        }
        if tokio::time::Instant::now() >= deadline.at {
            return Err(format!("could not send {subject} within {timeout:?}"));
        }
        let token = self.next_token.fetch_add(1, Ordering::Relaxed);
        let (sender, receiver) = oneshot::channel();
        self.waiters.lock().expect("waiters lock").insert(token, sender);
        let mut publish = format!("PUB {subject} {}{token} {}\r\n", self.inbox, body.len()).into_bytes();
        publish.extend_from_slice(body);
        publish.extend_from_slice(b"\r\n");
        let sent = tokio::time::timeout_at(deadline.at, async {
            self.writer.lock().await.write_all(&publish).await
        })
        .await;
        drop(publish);
        let outcome = match sent {
            Ok(Ok(())) => match tokio::time::timeout_at(deadline.at, receiver).await {
                Ok(Ok(reply)) => Ok(reply),
                Ok(Err(_)) => Err(self
                    .broken()
                    .unwrap_or_else(|| "the NATS connection closed".into())),
                Err(_) => Err(format!("no reply to {subject} within {timeout:?}")),
            },
            Ok(Err(error)) => Err(format!("writing to NATS: {error}")),
            Err(_) => Err(format!("could not send {subject} within {timeout:?}")),
        };
        self.waiters.lock().expect("waiters lock").remove(&token);
        outcome
    }
}

/// Reads the next operation, reading more from the socket while it is incomplete.
async fn next_op(
    read: &mut (impl AsyncRead + Unpin),
    buffer: &mut Vec<u8>,
    limits: Limits,
) -> Result<ServerOp, String> {
    loop {
        if let Some((op, used)) = wire::parse(buffer, limits).map_err(|e| e.to_string())? {
            buffer.drain(..used);
            if let ServerOp::Oversized { size, .. } = &op {
                skip(read, buffer, size + 2).await?;
            }
            return Ok(op);
        }
        let mut chunk = [0u8; 8192];
        let read = read_some(read, &mut chunk).await?;
        buffer.extend_from_slice(&chunk[..read]);
    }
}

/// Reads what the socket has (at least a byte); the server hanging up is an error.
async fn read_some(read: &mut (impl AsyncRead + Unpin), chunk: &mut [u8]) -> Result<usize, String> {
    match read.read(chunk).await {
        Ok(0) => Err("the NATS server closed the connection".into()),
        Ok(read) => Ok(read),
        Err(error) => Err(format!("reading from NATS: {error}")),
    }
}

/// Drops the next `count` bytes of the stream, the buffered ones first, keeping what follows.
async fn skip(read: &mut (impl AsyncRead + Unpin), buffer: &mut Vec<u8>, count: usize) -> Result<(), String> {
    let buffered = count.min(buffer.len());
    buffer.drain(..buffered);
    let mut remaining = count - buffered;
    let mut chunk = [0u8; 8192];
    while remaining > 0 {
        let read = read_some(read, &mut chunk).await?;
        let dropped = read.min(remaining);
        buffer.extend_from_slice(&chunk[dropped..read]);
        remaining -= dropped;
    }
    Ok(())
}

/// Hands each reply to its waiter and answers the server's PINGs, until the connection fails.
async fn read_replies(
    mut read: OwnedReadHalf,
    mut buffer: Vec<u8>,
    limits: Limits,
    inbox: String,
    writer: Arc<tokio::sync::Mutex<OwnedWriteHalf>>,
    waiters: Waiters,
    (broken, heard): (Arc<Mutex<Option<String>>>, Arc<Mutex<Instant>>),
) {
    let why = loop {
        let op = next_op(&mut read, &mut buffer, limits).await;
        if op.is_ok() {
            *heard.lock().expect("connection state lock") = Instant::now();
        }
        match op {
            Ok(ServerOp::Msg {
                subject,
                status,
                payload,
            }) => {
                let reply = Reply {
                    status,
                    payload,
                    oversized: None,
                };
                deliver(&inbox, &waiters, &subject, reply);
            }
            Ok(ServerOp::Oversized { subject, size }) => {
                let reply = Reply {
                    status: None,
                    payload: Vec::new(),
                    oversized: Some(size),
                };
                deliver(&inbox, &waiters, &subject, reply);
            }
            Ok(ServerOp::Ping) => {
                if let Err(error) = writer.lock().await.write_all(b"PONG\r\n").await {
                    break format!("writing to NATS: {error}");
                }
            }
            // The server keeps the connection after a permissions violation (the request then
            // goes unanswered); after any other error it closes it.
            Ok(ServerOp::Err(message)) if message.to_ascii_lowercase().contains("permissions violation") => {
                tracing::warn!(%message, "the NATS server refused a request of levee's");
            }
            Ok(ServerOp::Err(message)) => break format!("the NATS server closed the connection: {message}"),
            Ok(ServerOp::Pong | ServerOp::Ok | ServerOp::Info(_)) => {}
            Err(error) => break error,
        }
    };
    *broken.lock().expect("connection state lock") = Some(why);
    // Waiters find their sender gone and read why from `broken`.
    waiters.lock().expect("waiters lock").clear();
}

/// Hands `reply` to the request its inbox subject names, if it still waits.
fn deliver(inbox: &str, waiters: &Waiters, subject: &str, reply: Reply) {
    let token = subject.strip_prefix(inbox).and_then(|t| t.parse::<u64>().ok());
    let waiter = token.and_then(|t| waiters.lock().expect("waiters lock").remove(&t));
    if let Some(waiter) = waiter {
        let _ = waiter.send(reply);
    }
}

/// 16 random hex digits: the inbox is the connection's own.
fn random_token() -> String {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 8];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .expect("the system's random source");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
