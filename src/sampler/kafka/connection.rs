//! One connection to a Kafka broker, shared by every policy whose cluster it serves: a request
//! is written and its reply read while the connection is held, so requests on one connection go
//! one at a time (the brokers of a tick are asked at once, each on its own connection). Every
//! reply is bounded before a byte of it is allocated: its size is read first, checked against
//! what the request can bring back (`Call::reply_bound`: a ListOffsets reply for three
//! partitions is a few hundred bytes, not `MAX_FRAME_BYTES`), and then against the cluster's
//! budget of reply bytes in flight (`REPLIES_IN_FLIGHT_BYTES`, shared by all its connections), so
//! that 64 brokers answering at once cost what one does. A frame over its bound breaks the
//! connection unread; every request has the endpoint's deadline. A connection that failed in any
//! way is dropped by its owner, and dialled again when next needed.
use super::KafkaEndpoint;
use super::sasl;
use crate::sampler::NodeAddr;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, DescribeGroupsRequest, FetchRequest, FindCoordinatorRequest,
    ListOffsetsRequest, MetadataRequest, OffsetFetchRequest, RequestHeader, ResponseHeader,
    SaslAuthenticateRequest, SaslAuthenticateResponse, SaslHandshakeRequest, SaslHandshakeResponse,
};
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, StrBytes};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{Semaphore, SemaphorePermit};

/// The largest reply levee reads. The metadata of a few thousand partitions and a fetch of one
/// batch per lagging partition fit with room to spare; a broker that sends more is not one levee
/// should trust with its memory.
pub const MAX_FRAME_BYTES: usize = 8 * 1024 * 1024;

/// The reply bytes one cluster may hold read and not yet decoded at once, over all its
/// connections: two of the largest frames. Without it, a topic with a partition on each of 64
/// brokers cost 64 × 8 MiB in one tick (527 MiB resident, issue 39); with it, the brokers' replies
/// past the budget wait their turn (within the call's deadline).
pub const REPLIES_IN_FLIGHT_BYTES: usize = 2 * MAX_FRAME_BYTES;

/// What the error of a reply refused for its size says, for a caller that asks again in smaller
/// parts.
pub const OVERSIZED: &str = "over levee's bound";

/// The budget in permits of a KiB each (a semaphore counts in `u32`).
pub fn reply_budget() -> Arc<Semaphore> {
    Arc::new(Semaphore::new(REPLIES_IN_FLIGHT_BYTES / 1024))
}

/// A request levee sends: its key, the version levee speaks (every one served since Kafka 3.0
/// and still by Kafka 4.x), its reply's type and the most bytes that reply can take.
pub trait Call: Encodable + HeaderVersion {
    const KEY: ApiKey;
    const VERSION: i16;
    type Reply: Decodable + HeaderVersion;

    /// The largest reply this request can bring back from an honest broker; a larger one is
    /// refused unread.
    fn reply_bound(&self) -> usize {
        MAX_FRAME_BYTES
    }
}

macro_rules! call {
    ($request:ident, $reply:ident, $key:ident, $version:literal) => {
        impl Call for $request {
            const KEY: ApiKey = ApiKey::$key;
            const VERSION: i16 = $version;
            type Reply = kafka_protocol::messages::$reply;
        }
    };
    ($request:ident, $reply:ident, $key:ident, $version:literal, $bound:expr) => {
        impl Call for $request {
            const KEY: ApiKey = ApiKey::$key;
            const VERSION: i16 = $version;
            type Reply = kafka_protocol::messages::$reply;

            fn reply_bound(&self) -> usize {
                let bound: fn(&Self) -> usize = $bound;
                bound(self).min(MAX_FRAME_BYTES)
            }
        }
    };
}

/// A reply's fixed part (header, throttle time, error code, tagged fields) with room to spare.
const REPLY_OVERHEAD: usize = 1024;

call!(ApiVersionsRequest, ApiVersionsResponse, ApiVersions, 3, |_| 64
    * 1024);
call!(MetadataRequest, MetadataResponse, Metadata, 12);
// A coordinator is a node id, a host name (at most 255 bytes), a port and an error message.
call!(
    FindCoordinatorRequest,
    FindCoordinatorResponse,
    FindCoordinator,
    4,
    |request| REPLY_OVERHEAD
        + request
            .coordinator_keys
            .iter()
            .map(|key| key.len() + 1024)
            .sum::<usize>()
);
call!(OffsetFetchRequest, OffsetFetchResponse, OffsetFetch, 8);
// Each partition asked: its index, error code, timestamp, offset and leader epoch (27 bytes).
call!(
    ListOffsetsRequest,
    ListOffsetsResponse,
    ListOffsets,
    7,
    |request| REPLY_OVERHEAD
        + request
            .topics
            .iter()
            .map(|topic| 64 + topic.name.0.len() + 64 * topic.partitions.len())
            .sum::<usize>()
);
// What the request asks at most, and one whole batch more: a broker returns the first batch
// whole even when it is larger than the bytes asked. A topic's largest batch is its
// `max.message.bytes`, 1 MiB by default.
call!(FetchRequest, FetchResponse, Fetch, 12, |request| {
    usize::try_from(request.max_bytes).unwrap_or(0) + (1 << 20) + REPLY_OVERHEAD
});
call!(DescribeGroupsRequest, DescribeGroupsResponse, DescribeGroups, 5);
call!(
    SaslHandshakeRequest,
    SaslHandshakeResponse,
    SaslHandshake,
    1,
    |_| 64 * 1024
);
call!(
    SaslAuthenticateRequest,
    SaslAuthenticateResponse,
    SaslAuthenticate,
    2,
    |_| 64 * 1024
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
    /// The cluster's budget of reply bytes in flight.
    budget: Arc<Semaphore>,
}

impl BrokerConnection {
    /// Dials `broker` of `endpoint`'s cluster (over TLS with its `tls`), checks that the broker
    /// speaks levee's versions, and authenticates with its `sasl`, all within its `timeout`.
    pub async fn connect(
        broker: &NodeAddr,
        endpoint: &KafkaEndpoint,
        budget: Arc<Semaphore>,
    ) -> Result<Self, String> {
        let timeout = endpoint.timeout;
        tokio::time::timeout(timeout, Self::handshake(broker, endpoint, budget))
            .await
            .map_err(|_| format!("no Kafka handshake with {broker} within {timeout:?}"))?
    }

    async fn handshake(
        broker: &NodeAddr,
        endpoint: &KafkaEndpoint,
        budget: Arc<Semaphore>,
    ) -> Result<Self, String> {
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
            budget,
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
        let budget = self.budget.clone();
        let (mut reply, _held) = self.read_frame(request.reply_bound(), &budget).await?;
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

    /// One reply frame, its size checked against `bound` and room for it taken from `budget`
    /// (held until the reply is decoded) before a byte of it is read.
    async fn read_frame<'b>(
        &mut self,
        bound: usize,
        budget: &'b Semaphore,
    ) -> Result<(Bytes, SemaphorePermit<'b>), String> {
        let closed = |e: std::io::Error| format!("reading from Kafka at {}: {e}", self.address);
        let size = self.stream.read_i32().await.map_err(closed)?;
        let size =
            usize::try_from(size).map_err(|_| format!("{} sent a negative frame size", self.address))?;
        if size > bound {
            return Err(format!(
                "{} sent a reply of {size} bytes, {OVERSIZED} of {bound} for what was asked",
                self.address
            ));
        }
        let kib = u32::try_from(size.div_ceil(1024)).expect("bounded by MAX_FRAME_BYTES");
        let held = budget
            .acquire_many(kib)
            .await
            .map_err(|_| "the cluster's reply budget is closed".to_string())?;
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
        Ok((bytes, held))
    }
}

impl sasl::SaslConnection for BrokerConnection {
    fn address(&self) -> &str {
        &self.address
    }

    async fn handshake(
        &mut self,
        request: &SaslHandshakeRequest,
        timeout: Duration,
    ) -> Result<SaslHandshakeResponse, String> {
        self.call(request, timeout).await
    }

    async fn authenticate(
        &mut self,
        request: &SaslAuthenticateRequest,
        timeout: Duration,
    ) -> Result<SaslAuthenticateResponse, String> {
        self.call(request, timeout).await
    }
}
