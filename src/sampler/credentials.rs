//! What a backend's endpoint is built from besides its spec: the credentials the spec's Secrets
//! hold, and the few settings of the process that reach an endpoint (a reply's bound). Each backend turns its spec and an [`EndpointSource`] into its endpoint in its own
//! folder (`redis/credentials.rs`, `nats/credentials.rs`, `kafka/credentials.rs`), once: the
//! controller answers from the opted-in Secrets (`controller/cache/secrets.rs`), `levee sample`
//! from its flags (`cli/sample.rs`), and both get the same endpoint for the same credentials.

use std::future::Future;

/// Why a policy's endpoint cannot be built: a condition reason and what to change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointProblem {
    /// A condition reason (`SecretNotFound`, `SecretKeyMissing`, `SecretTooLarge`,
    /// `InvalidRedisUrl`, ...).
    pub reason: &'static str,
    pub message: String,
}

/// A credential, named by what it is for and the Secret key the spec gives it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Credential<'a> {
    Username {
        key: &'a str,
    },
    Password {
        key: &'a str,
    },
    /// A NATS `.creds` file, as `nsc generate creds` writes it (key `creds`).
    NatsCreds,
    /// A NATS user nkey seed, `SU…` (key `nkey`).
    NatsNkey,
    /// A PEM CA bundle (`tls.caSecretRef`).
    CaBundle {
        key: &'a str,
    },
}

impl Credential<'_> {
    /// The Secret key it is read from.
    pub fn key(&self) -> &str {
        match self {
            Self::Username { key } | Self::Password { key } | Self::CaBundle { key } => key,
            Self::NatsCreds => "creds",
            Self::NatsNkey => "nkey",
        }
    }
}

/// Where the credentials of a policy's endpoint come from.
pub trait EndpointSource: Sync {
    /// `credential` from the Secret `secret`, which the spec field `field` names. `Ok(None)`
    /// when this source cannot give it and the endpoint is built without it (a flag not passed
    /// to `levee sample`); the Secrets refuse instead, saying what to change.
    fn get(
        &self,
        secret: &str,
        credential: Credential<'_>,
        field: &str,
    ) -> impl Future<Output = Result<Option<String>, EndpointProblem>> + Send;

    /// Whether the Secret `secret` holds `credential` (for a backend that accepts one of
    /// several): an error when it cannot be told.
    fn holds(
        &self,
        secret: &str,
        credential: Credential<'_>,
        field: &str,
    ) -> impl Future<Output = Result<bool, EndpointProblem>> + Send;

    /// Refuses when the Secret `secret` may not be sent to `host:port` (a Secret's hosts
    /// annotation); `target` is the spec field naming where it would go.
    fn allows(
        &self,
        secret: &str,
        host: &crate::sampler::NodeAddr,
        target: &str,
    ) -> impl Future<Output = Result<(), EndpointProblem>> + Send;

    /// Where `credential` of `secret` came from, for messages (`Secret jobs/nats key creds`,
    /// `--nats-creds ./user.creds`).
    fn origin(&self, secret: &str, credential: Credential<'_>) -> String;

    /// A Redis URL to read instead of the spec's (`levee sample --redis-url`).
    fn redis_url(&self) -> Option<&str> {
        None
    }

    /// The most bytes one reply from Redis may hold (`--max-reply-bytes`).
    fn max_reply_bytes(&self) -> usize {
        crate::sampler::DEFAULT_MAX_REPLY_BYTES
    }
}
