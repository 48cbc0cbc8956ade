//! What a replica publishes on its Lease for its peers (where it answers, its serving
//! certificate's fingerprint) and reads from theirs: the one thing the Lease loops and the peer
//! sync share.

use k8s_openapi::api::coordination::v1::Lease;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Where a replica answers its peers (`levee.dev/peer-url`), and the SHA-256 of its serving
/// certificate (`levee.dev/peer-cert-sha256`).
pub const PEER_URL_ANNOTATION: &str = "levee.dev/peer-url";
pub const PEER_CERT_ANNOTATION: &str = "levee.dev/peer-cert-sha256";

/// Where a peer answers, as its Lease says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerAddress {
    pub url: http::Uri,
    /// The SHA-256 of its serving certificate, lower-case hex.
    pub fingerprint: String,
}

impl PeerAddress {
    /// The address a Lease's annotations give, when both are there and well formed.
    pub fn of(lease: &Lease) -> Option<Self> {
        let annotations = lease.metadata.annotations.as_ref()?;
        let url = annotations
            .get(PEER_URL_ANNOTATION)
            .filter(|url| url.len() <= 2048)?;
        let fingerprint = annotations.get(PEER_CERT_ANNOTATION)?.to_ascii_lowercase();
        let url: http::Uri = url.parse().ok()?;
        let hex = fingerprint.len() == 64 && fingerprint.bytes().all(|b| b.is_ascii_hexdigit());
        (url.scheme_str() == Some("https") && url.host().is_some() && hex)
            .then_some(Self { url, fingerprint })
    }
}

/// What this replica writes on its Lease for its peers: its `--peer-url`, and its serving
/// certificate's fingerprint (read at each renewal: a rotated certificate is published with it).
#[derive(Clone)]
pub struct PeerAdvert {
    pub url: String,
    pub cert: Arc<crate::serving::cert::ServingCert>,
}

impl PeerAdvert {
    pub fn of(settings: &PeerSettings) -> Self {
        Self {
            url: settings.url.clone(),
            cert: settings.cert.clone(),
        }
    }

    /// Puts the annotations on an existing Lease's metadata, keeping its others.
    pub fn write_on(&self, metadata: &mut kube::api::ObjectMeta) {
        metadata
            .annotations
            .get_or_insert_with(Default::default)
            .extend(self.annotations());
    }

    pub fn annotations(&self) -> BTreeMap<String, String> {
        BTreeMap::from([
            (PEER_URL_ANNOTATION.to_string(), self.url.clone()),
            (PEER_CERT_ANNOTATION.to_string(), self.cert.fingerprint()),
        ])
    }
}

/// The other replicas that answer their peers, by identity: under shards the other live
/// members, under a leader the leader (for a follower).
pub type Peers = BTreeMap<String, PeerAddress>;

/// This replica as a peer.
#[derive(Clone, Debug)]
pub struct PeerSettings {
    /// Where the others reach this replica's metrics API (`--peer-url`).
    pub url: String,
    /// The certificate it answers with, whose fingerprint its Lease publishes.
    pub cert: Arc<crate::serving::cert::ServingCert>,
    /// The token it presents (`--peer-token-file`).
    pub token_file: PathBuf,
    /// How often it asks each peer (`--peer-sync-interval`).
    pub sync_every: Duration,
}
