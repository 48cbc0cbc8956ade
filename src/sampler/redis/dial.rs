//! Dials a Redis node: TCP, TLS for `rediss://` (the policy's CA, or the system's roots), and the
//! connection's reader held to the reply bound (`bounded_reply.rs`), then the client's handshake
//! (`HELLO`/`AUTH`/`SELECT`) over that stream. levee dials itself rather than let the client do
//! it because the client offers no hook for a bounded reader.

use super::bounded_reply::BoundedStream;
use super::endpoint::Endpoint;
use crate::sampler::NodeAddr;
use crate::sampler::tls::client_tls_config;
use redis::aio::MultiplexedConnection;
use rustls::pki_types::ServerName;
use std::io;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

/// A byte stream the client can run over: plain TCP or TLS.
trait Stream: AsyncRead + AsyncWrite + Send + Unpin {}
impl<S: AsyncRead + AsyncWrite + Send + Unpin> Stream for S {}

/// Why a dial failed, in words a person can act on (the caller adds the endpoint).
#[derive(Debug)]
pub enum DialError {
    Io(io::Error),
    Tls(String),
    Redis(redis::RedisError),
}

/// TCP (and TLS) to `node`, the handshake, and a multiplexed connection whose driver runs in
/// its own task; every reply bounded by `endpoint.max_reply_bytes`.
pub async fn dial(
    endpoint: &Endpoint,
    node: &NodeAddr,
    db: i64,
    authenticate: bool,
) -> Result<MultiplexedConnection, DialError> {
    let tcp = TcpStream::connect((node.host.as_str(), node.port))
        .await
        .map_err(DialError::Io)?;
    let _ = tcp.set_nodelay(true);
    let stream: Box<dyn Stream> = if endpoint.uses_tls() {
        let connector = tokio_rustls::TlsConnector::from(Arc::new(tls_config(endpoint)?));
        let name = ServerName::try_from(node.host.clone())
            .map_err(|e| DialError::Tls(format!("{} is not a name TLS can verify: {e}", node.host)))?;
        Box::new(
            connector
                .connect(name, tcp)
                .await
                .map_err(|e| DialError::Tls(format!("TLS handshake: {e}")))?,
        )
    } else {
        Box::new(tcp)
    };
    let info = endpoint.connection_info(node, db, authenticate);
    let config = redis::AsyncConnectionConfig::new().set_response_timeout(Some(endpoint.timeout));
    let (connection, driver) = MultiplexedConnection::new_with_config(
        &info,
        BoundedStream::new(stream, endpoint.max_reply_bytes),
        config,
    )
    .await
    .map_err(DialError::Redis)?;
    tokio::spawn(driver);
    Ok(connection)
}

/// The TLS settings of `endpoint`: its CA (or the system's roots), or no verification at all
/// with `insecureSkipVerify`.
fn tls_config(endpoint: &Endpoint) -> Result<rustls::ClientConfig, DialError> {
    client_tls_config(endpoint.ca_pem.as_deref(), endpoint.insecure_skip_verify).map_err(DialError::Tls)
}
