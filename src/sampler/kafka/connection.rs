//! One connection to a Kafka broker, shared by every policy whose cluster it serves: a request
//! is written and its reply read while the connection is held, so requests on one connection go
//! one at a time (the brokers of a tick are asked at once, each on its own connection). Every
//! reply is bounded: its size is read first and a frame over `MAX_FRAME_BYTES` breaks the
//! connection unread; every request has the endpoint's deadline. A connection that failed in any
//! way is dropped by its owner, and dialled again when next needed.

use super::KafkaEndpoint;
use super::sasl;
use crate::sampler::NodeAddr;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, DescribeGroupsRequest, FetchRequest, FindCoordinatorRequest,
    ListOffsetsRequest, MetadataRequest, OffsetFetchRequest, RequestHeader, ResponseHeader,
    SaslAuthenticateRequest, SaslHandshakeRequest,
};
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, StrBytes};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The largest reply levee reads. The metadata of a few thousand partitions and a fetch of one
/// batch per lagging partition fit with room to spare; a broker that sends more is not one levee
/// should trust with its memory.
pub const MAX_FRAME_BYTES: usize = 8 * 1024 * 1024;

/// A request levee sends: its key, the version levee speaks (every one served since Kafka 3.0
/// and still by Kafka 4.x) and its reply's type.
pub trait Call: Encodable + HeaderVersion {
    const KEY: ApiKey;
    const VERSION: i16;
    type Reply: Decodable + HeaderVersion;
}

macro_rules! call {
    ($request:ident, $reply:ident, $key:ident, $version:literal) => {
        impl Call for $request {
            const KEY: ApiKey = ApiKey::$key;
            const VERSION: i16 = $version;
            type Reply = kafka_protocol::messages::$reply;
        }
    };
}

call!(ApiVersionsRequest, ApiVersionsResponse, ApiVersions, 3);
call!(MetadataRequest, MetadataResponse, Metadata, 12);
call!(
    FindCoordinatorRequest,
    FindCoordinatorResponse,
    FindCoordinator,
    4
);
call!(OffsetFetchRequest, OffsetFetchResponse, OffsetFetch, 8);
call!(ListOffsetsRequest, ListOffsetsResponse, ListOffsets, 7);
call!(FetchRequest, FetchResponse, Fetch, 12);
call!(DescribeGroupsRequest, DescribeGroupsResponse, DescribeGroups, 5);
call!(SaslHandshakeRequest, SaslHandshakeResponse, SaslHandshake, 1);
call!(
    SaslAuthenticateRequest,
    SaslAuthenticateResponse,
    SaslAuthenticate,
    2
);

/// The keys levee needs a broker to serve at levee's version, with the Kafka release that first
/// did (for the message to a user of an older one).
const NEEDED: [(ApiKey, i16, &str); 6] = [
    (ApiKey::Metadata, MetadataRequest::VERSION, "2.8"),
    (ApiKey::FindCoordinator, FindCoordinatorRequest::VERSION, "3.0"),
    (ApiKey::OffsetFetch, OffsetFetchRequest::VERSION, "3.0"),
    (ApiKey::ListOffsets, ListOffsetsRequest::VERSION, "2.8"),
    (ApiKey::Fetch, FetchRequest::VERSION, "2.8"),
    (ApiKey::DescribeGroups, DescribeGroupsRequest::VERSION, "2.4"),
];

/// A byte stream to a broker: plain TCP or TLS.
trait Stream: AsyncRead + AsyncWrite + Send + Unpin {}
impl<S: AsyncRead + AsyncWrite + Send + Unpin> Stream for S {}

/// A live connection to one broker.
pub struct BrokerConnection {
    stream: Box<dyn Stream>,
    address: String,
    next_correlation: i32,
}

impl BrokerConnection {
    /// Dials `broker` of `endpoint`'s cluster (over TLS with its `tls`), checks that the broker
    /// speaks levee's versions, and authenticates with its `sasl`, all within its `timeout`.
    pub async fn connect(broker: &NodeAddr, endpoint: &KafkaEndpoint) -> Result<Self, String> {
        let timeout = endpoint.timeout;
        tokio::time::timeout(timeout, Self::handshake(broker, endpoint))
            .await
            .map_err(|_| format!("no Kafka handshake with {broker} within {timeout:?}"))?
    }

    async fn handshake(broker: &NodeAddr, endpoint: &KafkaEndpoint) -> Result<Self, String> {
        let (tls, sasl, timeout) = (endpoint.tls.as_ref(), endpoint.sasl.as_ref(), endpoint.timeout);
        let address = broker.authority();
        let address = address.as_str();
        let tcp = TcpStream::connect(address).await.map_err(|e| {
            if e.kind() == std::io::ErrorKind::ConnectionRefused {
                format!("connection refused: is a Kafka broker listening at {address}?")
            } else {
                format!("connecting to Kafka at {address}: {e}")
            }
        })?;
        let _ = tcp.set_nodelay(true);
        let stream: Box<dyn Stream> = match tls {
            Some(tls) => Box::new(
                tls.wrap(
                    tcp,
                    &broker.host,
                    &format!("the broker at {address}"),
                    "spec.kafka.tls",
                )
                .await?,
            ),
            None => Box::new(tcp),
        };
        let mut connection = Self {
            stream,
            address: address.to_string(),
            next_correlation: 1,
        };
        let mut hello = ApiVersionsRequest::default();
        hello.client_software_name = StrBytes::from_static_str("levee");
        hello.client_software_version = StrBytes::from_static_str(env!("CARGO_PKG_VERSION"));
        let versions = connection.call(&hello, timeout).await?;
        if versions.error_code != 0 {
            return Err(format!(
                "{address} refused ApiVersions v3 (error {}): levee needs Kafka 3.0 or later",
                versions.error_code
            ));
        }
        for (key, version, release) in NEEDED {
            let served = versions.api_keys.iter().find(|k| k.api_key == key as i16);
            if !served.is_some_and(|k| (k.min_version..=k.max_version).contains(&version)) {
                return Err(format!(
                    "the broker at {address} does not serve {key:?} v{version}: levee needs Kafka {release} or later"
                ));
            }
        }
        if let Some(auth) = sasl {
            sasl::authenticate(&mut connection, auth, timeout).await?;
        }
        Ok(connection)
    }

    /// The broker's address, for messages.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// Sends `request` and reads its reply, within `timeout`. Any error leaves the connection
    /// unusable (a reply may be half read): the caller drops it.
    pub async fn call<R: Call>(&mut self, request: &R, timeout: Duration) -> Result<R::Reply, String> {
        let name = format!("{:?}", R::KEY);
        tokio::time::timeout(timeout, self.exchange(request))
            .await
            .map_err(|_| format!("no {name} reply from {} within {timeout:?}", self.address))?
    }

    async fn exchange<R: Call>(&mut self, request: &R) -> Result<R::Reply, String> {
        let correlation = self.next_correlation;
        self.next_correlation = self.next_correlation.wrapping_add(1);
        let mut header = RequestHeader::default();
        header.request_api_key = R::KEY as i16;
        header.request_api_version = R::VERSION;
        header.correlation_id = correlation;
        header.client_id = Some(StrBytes::from_static_str("levee"));
        let mut frame = BytesMut::new();
        frame.put_i32(0);
        let encoded = header
            .encode(&mut frame, R::header_version(R::VERSION))
            .and_then(|()| request.encode(&mut frame, R::VERSION));
        encoded.map_err(|e| format!("encoding {:?}: {e}", R::KEY))?;
        let length = i32::try_from(frame.len() - 4).map_err(|_| "request too large".to_string())?;
        frame[..4].copy_from_slice(&length.to_be_bytes());
        self.stream
            .write_all(&frame)
            .await
            .map_err(|e| format!("writing to Kafka at {}: {e}", self.address))?;
        let mut reply = self.read_frame().await?;
        let header = ResponseHeader::decode(&mut reply, R::Reply::header_version(R::VERSION))
            .map_err(|e| format!("{} sent a malformed reply header: {e}", self.address))?;
        if header.correlation_id != correlation {
            return Err(format!(
                "{} answered request {} to request {correlation}",
                self.address, header.correlation_id
            ));
        }
        let decoded = R::Reply::decode(&mut reply, R::VERSION)
            .map_err(|e| format!("{} sent a malformed {:?} reply: {e}", self.address, R::KEY))?;
        Ok(decoded)
    }

    /// One reply frame, its size checked before a byte of it is read.
    async fn read_frame(&mut self) -> Result<Bytes, String> {
        let closed = |e: std::io::Error| format!("reading from Kafka at {}: {e}", self.address);
        let size = self.stream.read_i32().await.map_err(closed)?;
        let size =
            usize::try_from(size).map_err(|_| format!("{} sent a negative frame size", self.address))?;
        if size > MAX_FRAME_BYTES {
            return Err(format!(
                "{} sent a reply of {size} bytes, over levee's bound of {MAX_FRAME_BYTES}",
                self.address
            ));
        }
        let mut buffer = vec![0u8; size];
        self.stream
            .read_exact(&mut buffer)
            .await
            .map_err(|e| format!("reading from Kafka at {}: {e}", self.address))?;
        let bytes = Bytes::from(buffer);
        if bytes.remaining() < 4 {
            return Err(format!(
                "{} sent a reply of {size} bytes, too short",
                self.address
            ));
        }
        Ok(bytes)
    }
}
