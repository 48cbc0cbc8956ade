//! A Redis policy's endpoint from its spec and its credentials: the password (`passwordKey`)
//! and, with `usernameKey`, the ACL user; without them, those the URL carries.

use super::{Credentials, Endpoint};
use crate::api::RedisSpec;
use crate::sampler::credentials::{Credential, EndpointProblem, EndpointSource};

const FIELD: &str = "spec.redis.credentialsSecretRef";

/// The endpoint `spec` names (or the source's URL in its place), with the credentials `source`
/// gives.
pub async fn resolve(spec: &RedisSpec, source: &impl EndpointSource) -> Result<Endpoint, EndpointProblem> {
    let mut credentials = Credentials::default();
    if let Some(reference) = &spec.credentials_secret_ref {
        let secret = &reference.name;
        let password = Credential::Password {
            key: &reference.password_key,
        };
        credentials.password = source.get(secret, password, FIELD).await?;
        if let Some(key) = &reference.username_key {
            credentials.username = source.get(secret, Credential::Username { key }, FIELD).await?;
        }
    }
    let mut ca_pem = None;
    if let Some(ca) = spec.tls.as_ref().and_then(|tls| tls.ca_secret_ref.as_ref()) {
        let credential = Credential::CaBundle { key: &ca.key };
        ca_pem = source
            .get(&ca.name, credential, "spec.redis.tls.caSecretRef")
            .await?
            .map(String::into_bytes);
    }
    let url_field = if source.redis_url().is_some() {
        "--redis-url"
    } else {
        "spec.redis.url"
    };
    let endpoint = Endpoint::from_spec(spec, source.redis_url(), credentials, ca_pem).map_err(|error| {
        EndpointProblem {
            reason: "InvalidRedisUrl",
            message: format!("{url_field}: {error}"),
        }
    })?;
    if let Some(reference) = &spec.credentials_secret_ref {
        source
            .allows(&reference.name, &endpoint.seed(), "spec.redis.url")
            .await?;
    }
    Ok(endpoint)
}

/// The Secrets `spec` reads: its credentials and its CA.
pub fn secrets(spec: &RedisSpec) -> Vec<&str> {
    let credentials = spec.credentials_secret_ref.as_ref().map(|r| r.name.as_str());
    let ca = spec.tls.as_ref().and_then(|tls| tls.ca_secret_ref.as_ref());
    credentials
        .into_iter()
        .chain(ca.map(|r| r.name.as_str()))
        .collect()
}
