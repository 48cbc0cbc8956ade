//! Resolves a policy's endpoint (Redis, NATS or Kafka): its credentials and CA from Secrets in its
//! namespace.
//! Each failure says which Secret or key is missing and which field names it.
//!
//! Secrets by consent: levee reads a Secret only when it carries the label
//! `levee.dev/secret: "true"` (or the label it had while Redis was the only backend,
//! `levee.dev/redis-secret: "true"`, which keeps working). The label is part of the watch itself
//! (only labelled Secrets are watched, into [`OptedInSecrets`]), so the value of any other Secret
//! never reaches levee, and someone who may only edit policies cannot make levee send an arbitrary
//! Secret to a host of their choosing. Being watched, a rotated Secret is seen at once: `versions`
//! tells the policy task to rebuild its endpoint, with no failure needed and no read per tick.

use super::indexed_store::IndexedStore;
use crate::api::{BackendSpec, BackpressurePolicy, KafkaSpec, NatsSpec, RedisSpec, SecretKeyRef};
use crate::sampler::kafka::{KafkaEndpoint, SaslAuth};
use crate::sampler::nats::{NatsAuth, NatsEndpoint, nkey};
use crate::sampler::{BackendEndpoint, Credentials, Endpoint, NodeAddr};
use k8s_openapi::api::core::v1::Secret;
use kube::{Api, Client, ResourceExt};
use std::sync::Arc;

/// The label a Secret carries to let levee read it, for every backend.
pub const LABEL_SECRET_CONSENT: &str = "levee.dev/secret";
/// The consent label from before there were other backends than Redis; still honoured.
pub const LABEL_SECRET_CONSENT_LEGACY: &str = "levee.dev/redis-secret";

/// The annotation with which a credentials Secret names the only hosts its password may be sent
/// to: comma-separated `host`, `host:port` or `*.domain` entries. Without it, any policy of the
/// Secret's namespace may send it wherever its URL points.
pub const ANNOTATION_SECRET_HOSTS: &str = "levee.dev/secret-hosts";
/// The hosts annotation's name from before there were other backends; still honoured.
pub const ANNOTATION_SECRET_HOSTS_LEGACY: &str = "levee.dev/redis-hosts";

/// The Secrets that let levee read them: one watch per consent label (a label selector cannot say
/// "this label or that one"), looked up as one.
#[derive(Clone, Default)]
pub struct OptedInSecrets {
    /// Labelled `levee.dev/secret: "true"`.
    pub labelled: IndexedStore<Secret>,
    /// Labelled `levee.dev/redis-secret: "true"`.
    pub legacy: IndexedStore<Secret>,
}

impl OptedInSecrets {
    pub fn get(&self, namespace: &str, name: &str) -> Option<Arc<Secret>> {
        self.labelled
            .get(namespace, name)
            .or_else(|| self.legacy.get(namespace, name))
    }

    pub async fn wait_until_ready(&self) {
        self.labelled.wait_until_ready().await;
        self.legacy.wait_until_ready().await;
    }
}

/// Why a policy's endpoint cannot be built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointProblem {
    /// A condition reason (`SecretNotFound`, `SecretKeyMissing`, `InvalidRedisUrl`, ...).
    pub reason: &'static str,
    pub message: String,
}

/// The names of the Secrets `policy` references.
fn referenced(policy: &BackpressurePolicy) -> Vec<&str> {
    let (credentials, ca) = match policy.spec.backend() {
        Some(BackendSpec::Redis(redis)) => (
            redis.credentials_secret_ref.as_ref().map(|r| r.name.as_str()),
            redis.tls.as_ref().and_then(|tls| tls.ca_secret_ref.as_ref()),
        ),
        Some(BackendSpec::Nats(nats)) => (
            nats.credentials_secret_ref.as_ref().map(|r| r.name.as_str()),
            nats.tls.as_ref().and_then(|tls| tls.ca_secret_ref.as_ref()),
        ),
        Some(BackendSpec::Kafka(kafka)) => (
            kafka
                .sasl
                .as_ref()
                .map(|sasl| sasl.credentials_secret_ref.name.as_str()),
            kafka.tls.as_ref().and_then(|tls| tls.ca_secret_ref.as_ref()),
        ),
        None => (None, None),
    };
    credentials
        .into_iter()
        .chain(ca.map(|r| r.name.as_str()))
        .collect()
}

/// The PEM CA bundle that `reference` (a `tls.caSecretRef`, named `field`) holds, if any.
async fn ca_bundle(
    secrets: &Watched<'_>,
    namespace: &str,
    reference: Option<&SecretKeyRef>,
    field: &str,
) -> Result<Option<Vec<u8>>, EndpointProblem> {
    let Some(reference) = reference else {
        return Ok(None);
    };
    let secret = secrets.read(namespace, &reference.name, field).await?;
    Ok(Some(
        text_key(&secret, namespace, &reference.key, field)?.into_bytes(),
    ))
}

/// The resource versions of the (opted-in) Secrets `policy` references, as the store holds them:
/// when they change, the endpoint is rebuilt.
pub fn versions(store: &OptedInSecrets, policy: &BackpressurePolicy) -> Vec<Option<String>> {
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

/// The endpoint of `policy`'s backend, from the opted-in Secrets it references.
pub async fn resolve_endpoint(
    client: &Client,
    store: &OptedInSecrets,
    policy: &BackpressurePolicy,
) -> Result<BackendEndpoint, EndpointProblem> {
    let namespace = policy.namespace().unwrap_or_default();
    let secrets = Watched {
        store,
        api: Api::namespaced(client.clone(), &namespace),
    };
    match policy.spec.backend() {
        Some(BackendSpec::Redis(redis)) => resolve_redis(&secrets, &namespace, redis)
            .await
            .map(BackendEndpoint::Redis),
        Some(BackendSpec::Nats(nats)) => resolve_nats(&secrets, &namespace, nats)
            .await
            .map(BackendEndpoint::Nats),
        Some(BackendSpec::Kafka(kafka)) => resolve_kafka(&secrets, &namespace, kafka)
            .await
            .map(BackendEndpoint::Kafka),
        None => Err(EndpointProblem {
            reason: "NoBackend",
            message: "the policy names no backend: set spec.redis, spec.nats or spec.kafka".into(),
        }),
    }
}

/// A NATS endpoint. The Secret's keys say how levee proves itself: `creds` (a `.creds` file, as
/// `nsc generate creds` writes it), else `nkey` (a user nkey seed, `SU…`), else with `usernameKey`
/// a user and password, else the password key's value is the server's token.
async fn resolve_nats(
    secrets: &Watched<'_>,
    namespace: &str,
    nats: &NatsSpec,
) -> Result<NatsEndpoint, EndpointProblem> {
    let mut auth = NatsAuth::None;
    let mut credentials_secret = None;
    if let Some(reference) = &nats.credentials_secret_ref {
        let field = "spec.nats.credentialsSecretRef";
        let secret = secrets.read(namespace, &reference.name, field).await?;
        let has = |key: &str| secret.data.as_ref().is_some_and(|data| data.contains_key(key));
        let invalid = |message: String| EndpointProblem {
            reason: "InvalidNatsCredentials",
            message: format!("{field}: Secret {namespace}/{}: {message}", reference.name),
        };
        auth = if has("creds") {
            let text = text_key(&secret, namespace, "creds", field)?;
            let (jwt, seed) = nkey::parse_creds(&text).map_err(|e| invalid(format!("key creds: {e}")))?;
            nkey::UserKey::from_seed(&seed).map_err(|e| invalid(format!("key creds: the seed: {e}")))?;
            NatsAuth::Credentials { jwt, seed }
        } else if has("nkey") {
            let seed = text_key(&secret, namespace, "nkey", field)?;
            nkey::UserKey::from_seed(&seed).map_err(|e| invalid(format!("key nkey: {e}")))?;
            NatsAuth::Nkey { seed }
        } else {
            let password = text_key(&secret, namespace, &reference.password_key, field)?;
            match &reference.username_key {
                Some(username_key) => NatsAuth::UserPassword {
                    user: text_key(&secret, namespace, username_key, field)?,
                    password,
                },
                None => NatsAuth::Token(password),
            }
        };
        credentials_secret = Some(secret);
    }
    let mut endpoint = NatsEndpoint::from_spec(nats, auth).map_err(|error| EndpointProblem {
        reason: "InvalidNatsUrl",
        message: format!("spec.nats.url: {error}"),
    })?;
    let reference = nats.tls.as_ref().and_then(|tls| tls.ca_secret_ref.as_ref());
    if let Some(ca_pem) = ca_bundle(secrets, namespace, reference, "spec.nats.tls.caSecretRef").await? {
        endpoint = endpoint.with_ca(ca_pem);
    }
    if let Some(secret) = credentials_secret {
        check_secret_hosts(&secret, &endpoint.server, "spec.nats.url")?;
    }
    Ok(endpoint)
}

/// A Kafka endpoint: the SASL username (`usernameKey`, default `username`) and password from the
/// Secret. The password goes to the bootstrap servers (checked against the Secret's hosts
/// annotation) and to the brokers the cluster's own metadata names.
async fn resolve_kafka(
    secrets: &Watched<'_>,
    namespace: &str,
    kafka: &KafkaSpec,
) -> Result<KafkaEndpoint, EndpointProblem> {
    let mut sasl = None;
    let mut credentials_secret = None;
    if let Some(config) = &kafka.sasl {
        let field = "spec.kafka.sasl.credentialsSecretRef";
        let reference = &config.credentials_secret_ref;
        let secret = secrets.read(namespace, &reference.name, field).await?;
        let username_key = reference.username_key.as_deref().unwrap_or("username");
        sasl = Some(SaslAuth {
            mechanism: config.mechanism,
            username: text_key(&secret, namespace, username_key, field)?,
            password: text_key(&secret, namespace, &reference.password_key, field)?,
        });
        credentials_secret = Some(secret);
    }
    let mut endpoint = KafkaEndpoint::from_spec(kafka, sasl).map_err(|error| EndpointProblem {
        reason: "InvalidKafkaServers",
        message: format!("spec.kafka.bootstrapServers: {error}"),
    })?;
    let reference = kafka.tls.as_ref().and_then(|tls| tls.ca_secret_ref.as_ref());
    if let Some(ca_pem) = ca_bundle(secrets, namespace, reference, "spec.kafka.tls.caSecretRef").await? {
        endpoint = endpoint.with_ca(ca_pem);
    }
    if let Some(secret) = credentials_secret {
        for server in &endpoint.bootstrap {
            check_secret_hosts(&secret, server, "spec.kafka.bootstrapServers")?;
        }
    }
    Ok(endpoint)
}

async fn resolve_redis(
    secrets: &Watched<'_>,
    namespace: &str,
    redis: &RedisSpec,
) -> Result<Endpoint, EndpointProblem> {
    let mut credentials = Credentials::default();
    let mut credentials_secret = None;
    if let Some(reference) = &redis.credentials_secret_ref {
        let field = "spec.redis.credentialsSecretRef";
        let secret = secrets.read(namespace, &reference.name, field).await?;
        credentials_secret = Some(secret.clone());
        credentials.password = Some(text_key(&secret, namespace, &reference.password_key, field)?);
        if let Some(username_key) = &reference.username_key {
            credentials.username = Some(text_key(&secret, namespace, username_key, field)?);
        }
    }
    let reference = redis.tls.as_ref().and_then(|tls| tls.ca_secret_ref.as_ref());
    let ca_pem = ca_bundle(secrets, namespace, reference, "spec.redis.tls.caSecretRef").await?;
    let endpoint =
        Endpoint::from_spec(redis, None, credentials, ca_pem).map_err(|error| EndpointProblem {
            reason: "InvalidRedisUrl",
            message: format!("spec.redis.url: {error}"),
        })?;
    if let Some(secret) = credentials_secret {
        check_secret_hosts(&secret, &endpoint.seed(), "spec.redis.url")?;
    }
    Ok(endpoint)
}

/// Whether the credentials `secret` may be sent to `seed` (the host the policy's URL names), by
/// its `levee.dev/secret-hosts` annotation (or the older `levee.dev/redis-hosts`; with both, each
/// must allow it).
fn check_secret_hosts(secret: &Secret, seed: &NodeAddr, target: &str) -> Result<(), EndpointProblem> {
    for annotation in [ANNOTATION_SECRET_HOSTS, ANNOTATION_SECRET_HOSTS_LEGACY] {
        let Some(hosts) = secret.annotations().get(annotation) else {
            continue;
        };
        if host_allowed(hosts, &seed.host, seed.port) {
            continue;
        }
        let (namespace, name) = (secret.namespace().unwrap_or_default(), secret.name_any());
        return Err(EndpointProblem {
            reason: "SecretHostNotAllowed",
            message: format!(
                "Secret {namespace}/{name} may be sent only to {hosts:?} (its {annotation} annotation), and {target} names {}: fix the address, or add the host to the annotation if it is yours to give",
                seed.authority()
            ),
        });
    }
    Ok(())
}

/// Whether `host:port` matches one of the comma-separated entries: `host` (any port),
/// `host:port`, `[v6]:port`, or `*.domain` (any host under the domain, any port); hosts compare
/// without case.
pub fn host_allowed(entries: &str, host: &str, port: u16) -> bool {
    let host = host.trim_matches(['[', ']']).to_ascii_lowercase();
    entries
        .split(',')
        .map(|entry| entry.trim().to_ascii_lowercase())
        .filter(|entry| !entry.is_empty())
        .any(|entry| {
            let (pattern, wanted_port) = split_host_port(&entry);
            let host_matches = match pattern.strip_prefix("*.") {
                Some(domain) => host.strip_suffix(domain).is_some_and(|sub| sub.ends_with('.')),
                None => host == pattern,
            };
            host_matches && wanted_port.is_none_or(|wanted| wanted == port)
        })
}

/// `host:port`, `[v6]:port`, `[v6]`, a bare IPv6 address or a name: the host, and the port if
/// the entry gives one.
fn split_host_port(entry: &str) -> (&str, Option<u16>) {
    if let Some(rest) = entry.strip_prefix('[') {
        return match rest.split_once(']') {
            Some((host, tail)) => (host, tail.strip_prefix(':').and_then(|port| port.parse().ok())),
            None => (rest, None),
        };
    }
    match entry.split_once(':') {
        Some((host, port)) if !port.contains(':') => match port.parse::<u16>() {
            Ok(port) => (host, Some(port)),
            Err(_) => (entry, None),
        },
        _ => (entry, None),
    }
}

/// The opted-in Secrets, and the API to tell a missing Secret from one that did not opt in.
struct Watched<'a> {
    store: &'a OptedInSecrets,
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
                    "Secret {namespace}/{name} ({field}) does not let levee read it: levee reads only Secrets labelled {LABEL_SECRET_CONSENT}=true (or the older {LABEL_SECRET_CONSENT_LEGACY}=true); label it (kubectl label secret {name} -n {namespace} {LABEL_SECRET_CONSENT}=true) or fix {field}.name"
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_match_by_name_port_and_domain() {
        let entries =
            "redis.jobs.svc:6379, Cache.Jobs.svc, *.redis.prod.svc, 10.0.0.5:6380, [fd00::1]:6379, ::2";
        assert!(host_allowed(entries, "redis.jobs.svc", 6379));
        assert!(
            !host_allowed(entries, "redis.jobs.svc", 6380),
            "the port is part of the entry"
        );
        assert!(
            host_allowed(entries, "cache.jobs.svc", 1234),
            "no port: any port; no case"
        );
        assert!(host_allowed(entries, "node-0.redis.prod.svc", 6379));
        assert!(
            !host_allowed(entries, "redis.prod.svc", 6379),
            "*. is a subdomain"
        );
        assert!(!host_allowed(entries, "evil.redis.prod.svc.attacker.io", 6379));
        assert!(host_allowed(entries, "10.0.0.5", 6380));
        assert!(!host_allowed(entries, "10.0.0.5", 6379));
        assert!(host_allowed(entries, "fd00::1", 6379));
        assert!(host_allowed(entries, "[fd00::1]", 6379));
        assert!(
            host_allowed(entries, "::2", 6379),
            "a bare IPv6 address: any port"
        );
        assert!(!host_allowed(entries, "127.0.0.1", 6379));
        assert!(
            !host_allowed("", "127.0.0.1", 6379),
            "an empty annotation allows nothing"
        );
    }
}
