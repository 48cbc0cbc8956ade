//! Resolves a policy's Redis endpoint: its credentials and CA from Secrets in its namespace.
//! Each failure says which Secret or key is missing and which field names it.
//!
//! Secrets by consent: levee reads a Secret only when it carries the label
//! `levee.dev/redis-secret: "true"`. The label is part of the watch itself (only labelled
//! Secrets are watched, into the `secrets` store), so the value of any other Secret never reaches
//! levee, and someone who may only edit policies cannot make levee send an arbitrary Secret to a
//! host of their choosing. Being watched, a rotated Secret is seen at once: `versions` tells the
//! policy task to rebuild its endpoint, with no failure needed and no read per tick.

use super::indexed_store::IndexedStore;
use crate::api::BackpressurePolicy;
use crate::sampler::{Credentials, Endpoint};
use k8s_openapi::api::core::v1::Secret;
use kube::{Api, Client, ResourceExt};
use std::sync::Arc;

/// The label a Secret carries to let levee read it.
pub const LABEL_SECRET_CONSENT: &str = "levee.dev/redis-secret";

/// Why a policy's endpoint cannot be built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointProblem {
    /// A condition reason (`SecretNotFound`, `SecretKeyMissing`, `InvalidRedisUrl`, ...).
    pub reason: &'static str,
    pub message: String,
}

/// The names of the Secrets `policy` references.
fn referenced(policy: &BackpressurePolicy) -> Vec<&str> {
    let redis = &policy.spec.redis;
    let credentials = redis.credentials_secret_ref.as_ref().map(|r| r.name.as_str());
    let ca = redis
        .tls
        .as_ref()
        .and_then(|tls| tls.ca_secret_ref.as_ref())
        .map(|r| r.name.as_str());
    credentials.into_iter().chain(ca).collect()
}

/// The resource versions of the (opted-in) Secrets `policy` references, as the store holds them:
/// when they change, the endpoint is rebuilt.
pub fn versions(store: &IndexedStore<Secret>, policy: &BackpressurePolicy) -> Vec<Option<String>> {
    let namespace = policy.namespace().unwrap_or_default();
    referenced(policy)
        .into_iter()
        .map(|name| {
            store
                .get(&namespace, name)
                .and_then(|secret| secret.resource_version())
        })
        .collect()
}

/// The endpoint of `policy`, from the opted-in Secrets it references.
pub async fn resolve_endpoint(
    client: &Client,
    store: &IndexedStore<Secret>,
    policy: &BackpressurePolicy,
) -> Result<Endpoint, EndpointProblem> {
    let namespace = policy.namespace().unwrap_or_default();
    let secrets = Watched {
        store,
        api: Api::namespaced(client.clone(), &namespace),
    };
    let redis = &policy.spec.redis;
    let mut credentials = Credentials::default();
    if let Some(reference) = &redis.credentials_secret_ref {
        let field = "spec.redis.credentialsSecretRef";
        let secret = secrets.read(&namespace, &reference.name, field).await?;
        credentials.password = Some(text_key(&secret, &namespace, &reference.password_key, field)?);
        if let Some(username_key) = &reference.username_key {
            credentials.username = Some(text_key(&secret, &namespace, username_key, field)?);
        }
    }
    let mut ca_pem = None;
    if let Some(reference) = redis.tls.as_ref().and_then(|tls| tls.ca_secret_ref.as_ref()) {
        let field = "spec.redis.tls.caSecretRef";
        let secret = secrets.read(&namespace, &reference.name, field).await?;
        ca_pem = Some(text_key(&secret, &namespace, &reference.key, field)?.into_bytes());
    }
    Endpoint::from_spec(redis, None, credentials, ca_pem).map_err(|error| EndpointProblem {
        reason: "InvalidRedisUrl",
        message: format!("spec.redis.url: {error}"),
    })
}

/// The opted-in Secrets, and the API to tell a missing Secret from one that did not opt in.
struct Watched<'a> {
    store: &'a IndexedStore<Secret>,
    api: Api<Secret>,
}

impl Watched<'_> {
    async fn read(&self, namespace: &str, name: &str, field: &str) -> Result<Arc<Secret>, EndpointProblem> {
        if let Some(secret) = self.store.get(namespace, name) {
            return Ok(secret);
        }
        // Only the metadata, to say which of the two it is.
        let found = self
            .api
            .get_metadata_opt(name)
            .await
            .map_err(|error| EndpointProblem {
                reason: "SecretUnreadable",
                message: format!("reading Secret {namespace}/{name} ({field}) failed: {error}"),
            })?;
        match found {
            Some(_) => Err(EndpointProblem {
                reason: "SecretNotOptedIn",
                message: format!(
                    "Secret {namespace}/{name} ({field}) does not let levee read it: levee reads only Secrets labelled {LABEL_SECRET_CONSENT}=true; label it (kubectl label secret {name} -n {namespace} {LABEL_SECRET_CONSENT}=true) or fix {field}.name"
                ),
            }),
            None => Err(EndpointProblem {
                reason: "SecretNotFound",
                message: format!("Secret {namespace}/{name} not found: create it or fix {field}.name"),
            }),
        }
    }
}

fn text_key(secret: &Secret, namespace: &str, key: &str, field: &str) -> Result<String, EndpointProblem> {
    let name = secret.name_any();
    let bytes = secret
        .data
        .as_ref()
        .and_then(|data| data.get(key))
        .map(|value| value.0.clone())
        .or_else(|| {
            secret
                .string_data
                .as_ref()
                .and_then(|data| data.get(key))
                .map(|s| s.clone().into_bytes())
        });
    let Some(bytes) = bytes else {
        return Err(EndpointProblem {
            reason: "SecretKeyMissing",
            message: format!(
                "Secret {namespace}/{name} has no key {key:?}: add it or fix the key in {field}"
            ),
        });
    };
    String::from_utf8(bytes).map_err(|_| EndpointProblem {
        reason: "SecretKeyMissing",
        message: format!("Secret {namespace}/{name} key {key:?} is not UTF-8 text ({field})"),
    })
}
