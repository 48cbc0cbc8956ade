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
//!
//! A replica keeps a bounded part of each opted-in Secret (`kept_secret.rs`): a key whose value
//! was not kept is refused with `SecretTooLarge`, naming the key, its size and the bound.

use crate::api::BackpressurePolicy;
use crate::api::labels::{
    ANNOTATION_SECRET_HOSTS, ANNOTATION_SECRET_HOSTS_LEGACY, LABEL_SECRET_CONSENT,
    LABEL_SECRET_CONSENT_LEGACY,
};
use crate::controller::cache::indexed_store::IndexedStore;
use crate::controller::cache::kept_secret::{Bounded, HOSTS_BOUND, KEYS_BOUND, KeptSecret, VALUES_BOUND};
use crate::sampler::credentials::{Credential, EndpointSource};
use crate::sampler::{BackendEndpoint, NodeAddr};
use k8s_openapi::api::core::v1::Secret;
use kube::{Api, Client, ResourceExt};
use std::sync::Arc;

/// Opted-in Secrets listed at a time. kube reads a list's whole answer before it parses it, and
/// holds it twice meanwhile (the body and its text): a Secret may be 1 MiB, 1.4 MiB as JSON, so a
/// page of 4 holds at most some 12 MiB at once (the two watches, one per consent label, list side
/// by side: 24 MiB), and 200 opted-in Secrets are 50 requests.
pub const SECRETS_PAGE: u32 = 4;

/// The watch of the Secrets labelled `label=true`, listed [`SECRETS_PAGE`] at a time. At kube's
/// default of 500 a page, 200 opted-in Secrets of 1 MiB came in one answer of 267 MiB, held twice
/// over before a byte of it was trimmed. (Given a page size, kube asks for no
/// `resourceVersion=0`, which the API server's watch cache would answer whole whatever the limit:
/// the pages are read at the latest version, as levee's other watches' are.)
pub fn watch_config(label: &str) -> kube::runtime::watcher::Config {
    kube::runtime::watcher::Config::default()
        .labels(&format!("{label}=true"))
        .page_size(SECRETS_PAGE)
}

/// The Secrets that let levee read them: one watch per consent label (a label selector cannot say
/// "this label or that one"), looked up as one.
#[derive(Clone, Default)]
pub struct OptedInSecrets {
    /// Labelled `levee.dev/secret: "true"`.
    pub labelled: IndexedStore<KeptSecret>,
    /// Labelled `levee.dev/redis-secret: "true"`.
    pub legacy: IndexedStore<KeptSecret>,
}

impl OptedInSecrets {
    pub fn get(&self, namespace: &str, name: &str) -> Option<Arc<KeptSecret>> {
        self.labelled
            .get(namespace, name)
            .or_else(|| self.legacy.get(namespace, name))
    }

    pub async fn wait_until_ready(&self) {
        self.labelled.wait_until_ready().await;
        self.legacy.wait_until_ready().await;
    }
}

pub use crate::sampler::credentials::EndpointProblem;

/// The resource versions of the (opted-in) Secrets `policy` references, as the store holds them:
/// when they change, the endpoint is rebuilt.
pub fn versions(store: &OptedInSecrets, policy: &BackpressurePolicy) -> Vec<Option<String>> {
    let namespace = policy.namespace().unwrap_or_default();
    BackendEndpoint::secrets(&policy.spec)
        .into_iter()
        .map(|name| {
            store
                .get(&namespace, name)
                .map(|secret| secret.resource_version.to_string())
        })
        .collect()
}

/// The endpoint of `policy`'s backend, from the opted-in Secrets it references (each backend
/// resolves its own: `sampler/<backend>/credentials.rs`).
pub async fn resolve_endpoint(
    client: &Client,
    store: &OptedInSecrets,
    policy: &BackpressurePolicy,
    max_reply_bytes: usize,
) -> Result<BackendEndpoint, EndpointProblem> {
    let namespace = policy.namespace().unwrap_or_default();
    let secrets = Watched {
        store,
        api: Api::namespaced(client.clone(), &namespace),
        namespace,
        max_reply_bytes,
    };
    BackendEndpoint::resolve(&policy.spec, &secrets).await
}

impl EndpointSource for Watched<'_> {
    async fn get(
        &self,
        secret: &str,
        credential: Credential<'_>,
        field: &str,
    ) -> Result<Option<String>, EndpointProblem> {
        let kept = self.read(&self.namespace, secret, field).await?;
        text_key(&kept, &self.namespace, credential.key(), field).map(Some)
    }

    async fn holds(
        &self,
        secret: &str,
        credential: Credential<'_>,
        field: &str,
    ) -> Result<bool, EndpointProblem> {
        let kept = self.read(&self.namespace, secret, field).await?;
        let key = credential.key();
        match kept.value(key) {
            Some(_) => Ok(true),
            // It may be among the keys not kept: which way to prove itself is unknown.
            None if kept.keys_left_out > 0 => Err(keys_left_out(&kept, &format!("{key:?}"), field)),
            None => Ok(false),
        }
    }

    async fn allows(&self, secret: &str, host: &NodeAddr, target: &str) -> Result<(), EndpointProblem> {
        let kept = self.read(&self.namespace, secret, target).await?;
        check_secret_hosts(&kept, host, target)
    }

    fn origin(&self, secret: &str, credential: Credential<'_>) -> String {
        format!("Secret {}/{secret} key {:?}", self.namespace, credential.key())
    }

    fn max_reply_bytes(&self) -> usize {
        self.max_reply_bytes
    }
}

/// Whether the credentials `secret` may be sent to `seed` (the host the policy's URL names), by
/// its `levee.dev/secret-hosts` annotation (or the older `levee.dev/redis-hosts`; with both, each
/// must allow it).
fn check_secret_hosts(secret: &KeptSecret, seed: &NodeAddr, target: &str) -> Result<(), EndpointProblem> {
    let (namespace, name) = (&secret.namespace, &secret.name);
    for (annotation, hosts) in [
        (ANNOTATION_SECRET_HOSTS, &secret.hosts),
        (ANNOTATION_SECRET_HOSTS_LEGACY, &secret.hosts_legacy),
    ] {
        let hosts = match hosts {
            None => continue,
            Some(Bounded::Held(hosts)) => hosts,
            Some(Bounded::TooLarge { bytes }) => {
                return Err(EndpointProblem {
                    reason: REASON_TOO_LARGE,
                    message: format!(
                        "Secret {namespace}/{name}'s {annotation} annotation is {bytes} bytes, over the {} KiB levee keeps of it, so levee cannot tell where the credentials may go and sends them nowhere ({target}): shorten the list (a *.domain entry covers a domain's hosts)",
                        HOSTS_BOUND / 1024
                    ),
                });
            }
        };
        if host_allowed(hosts, &seed.host, seed.port) {
            continue;
        }
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
/// The opted-in Secrets of one namespace, as a policy's endpoint reads them.
struct Watched<'a> {
    store: &'a OptedInSecrets,
    api: Api<Secret>,
    namespace: String,
    /// `--max-reply-bytes`.
    max_reply_bytes: usize,
}

impl Watched<'_> {
    async fn read(
        &self,
        namespace: &str,
        name: &str,
        field: &str,
    ) -> Result<Arc<KeptSecret>, EndpointProblem> {
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

/// The reason a policy gets when a value it names was not kept (`kept_secret.rs`).
const REASON_TOO_LARGE: &str = "SecretTooLarge";

/// The value of `key` in `secret`, as text.
fn text_key(secret: &KeptSecret, namespace: &str, key: &str, field: &str) -> Result<String, EndpointProblem> {
    let name = &secret.name;
    let bytes = match secret.value(key) {
        Some(Bounded::Held(bytes)) => bytes,
        Some(Bounded::TooLarge { bytes }) => return Err(too_large(secret, key, *bytes, field)),
        None if secret.keys_left_out > 0 => return Err(keys_left_out(secret, &format!("{key:?}"), field)),
        None => {
            return Err(EndpointProblem {
                reason: "SecretKeyMissing",
                message: format!(
                    "Secret {namespace}/{name} has no key {key:?}: add it or fix the key in {field}"
                ),
            });
        }
    };
    String::from_utf8(bytes.to_vec()).map_err(|_| EndpointProblem {
        reason: "SecretKeyMissing",
        message: format!("Secret {namespace}/{name} key {key:?} is not UTF-8 text ({field})"),
    })
}

/// `key`'s value was not kept: over the bound on its own, or past it with the Secret's smaller
/// values.
fn too_large(secret: &KeptSecret, key: &str, bytes: usize, field: &str) -> EndpointProblem {
    let (namespace, name) = (&secret.namespace, &secret.name);
    let bound = VALUES_BOUND / 1024;
    let what = if field.ends_with("caSecretRef") {
        "the CA bundle (only the CAs that sign the servers' certificates)"
    } else {
        "the value"
    };
    let message = if bytes > VALUES_BOUND {
        format!(
            "Secret {namespace}/{name} key {key:?} is {bytes} bytes, over the {bound} KiB levee keeps of a Secret's values ({field}); levee holds none of it: put {what} in a Secret of its own, under {bound} KiB"
        )
    } else {
        format!(
            "Secret {namespace}/{name}'s values come to {} bytes, over the {bound} KiB levee keeps of a Secret (its smallest values first), and key {key:?} ({bytes} bytes) did not fit ({field}): put {what} in a Secret of its own, under {bound} KiB",
            secret.value_bytes
        )
    };
    EndpointProblem {
        reason: REASON_TOO_LARGE,
        message,
    }
}

/// `keys` (as the message names them) may be among the keys of `secret` that were not kept.
fn keys_left_out(secret: &KeptSecret, keys: &str, field: &str) -> EndpointProblem {
    let (namespace, name) = (&secret.namespace, &secret.name);
    EndpointProblem {
        reason: REASON_TOO_LARGE,
        message: format!(
            "Secret {namespace}/{name} has {} keys, and levee keeps {KEYS_BOUND} of a Secret (those of its smallest values): key {keys} is not among them ({field}): put what levee reads in a Secret of its own",
            secret.values.len() + secret.keys_left_out
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures;
    use http::{Request, Response};
    use kube::client::Body;
    use serde_json::{Value, json};

    /// `jobs/<name>` with `annotations` and these values, as the store keeps it.
    fn secret(name: &str, annotations: Value, values: &[(&str, Vec<u8>)]) -> KeptSecret {
        use base64::Engine;
        let data: serde_json::Map<_, _> = values
            .iter()
            .map(|(key, value)| {
                let value = base64::engine::general_purpose::STANDARD.encode(value);
                (key.to_string(), json!(value))
            })
            .collect();
        let text = json!({"metadata": {"name": name, "namespace": "jobs", "resourceVersion": "3",
                                       "annotations": annotations},
                          "data": data})
        .to_string();
        crate::controller::cache::trim::secret(serde_json::from_str(&text).unwrap())
    }

    /// The endpoint `spec` (merged into the fixture policy's) resolves to from `secrets` alone:
    /// an API request (a Secret not in the store) would go unanswered.
    async fn resolve(secrets: Vec<KeptSecret>, spec: Value) -> Result<BackendEndpoint, EndpointProblem> {
        let (service, _api_server) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let client = Client::new(service, "default");
        let store = OptedInSecrets {
            labelled: IndexedStore::from_objects(secrets),
            legacy: IndexedStore::from_objects([]),
        };
        let policy = fixtures::policy_with(json!({"spec": spec}));
        tokio::time::timeout(
            std::time::Duration::from_secs(2),
            resolve_endpoint(&client, &store, &policy, crate::sampler::DEFAULT_MAX_REPLY_BYTES),
        )
        .await
        .expect("resolved from the store")
    }

    fn redis(endpoint: BackendEndpoint) -> crate::sampler::Endpoint {
        match endpoint {
            BackendEndpoint::Redis(redis) => redis,
            other => panic!("a Redis endpoint, not {other:?}"),
        }
    }

    const CA: &[u8] = b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";

    #[tokio::test]
    async fn a_key_over_the_bound_refuses_the_policy_that_names_it_and_no_other() {
        // One Secret: a password, a CA and a 1 MiB bundle.
        let bundle = secret(
            "redis-bundle",
            json!({}),
            &[
                ("password", b"s3cret".to_vec()),
                ("ca.crt", CA.to_vec()),
                ("ca-bundle.crt", vec![b'x'; 1 << 20]),
            ],
        );
        let names_bundle = json!({"redis": {
            "url": "rediss://redis.jobs.svc:6379",
            "credentialsSecretRef": {"name": "redis-bundle", "passwordKey": "password"},
            "tls": {"caSecretRef": {"name": "redis-bundle", "key": "ca-bundle.crt"}}}});
        let problem = resolve(vec![bundle.clone()], names_bundle).await.unwrap_err();
        assert_eq!(problem.reason, "SecretTooLarge");
        for part in [
            "Secret jobs/redis-bundle",
            "\"ca-bundle.crt\"",
            "1048576 bytes",
            "64 KiB",
            "spec.redis.tls.caSecretRef",
            "put the CA bundle (only the CAs that sign the servers' certificates) in a Secret of its own, under 64 KiB",
        ] {
            assert!(problem.message.contains(part), "{part:?} in {}", problem.message);
        }

        // Its other keys resolve as before.
        let names_ca = json!({"redis": {
            "url": "rediss://redis.jobs.svc:6379",
            "credentialsSecretRef": {"name": "redis-bundle", "passwordKey": "password"},
            "tls": {"caSecretRef": {"name": "redis-bundle", "key": "ca.crt"}}}});
        let endpoint = redis(resolve(vec![bundle.clone()], names_ca).await.unwrap());
        assert_eq!(endpoint.credentials.password.as_deref(), Some("s3cret"));
        assert_eq!(endpoint.ca_pem.as_deref(), Some(CA));

        // A missing key is still missing, not too large.
        let names_missing =
            json!({"redis": {"credentialsSecretRef": {"name": "redis-bundle", "passwordKey": "token"}}});
        let problem = resolve(vec![bundle], names_missing).await.unwrap_err();
        assert_eq!(problem.reason, "SecretKeyMissing");
    }

    #[tokio::test]
    async fn a_value_that_did_not_fit_beside_the_smaller_ones_says_what_the_secret_comes_to() {
        let crowded = secret(
            "crowded",
            json!({}),
            &[
                ("password", b"pw".to_vec()),
                ("a.crt", vec![b'a'; 40 << 10]),
                ("b.crt", vec![b'b'; 30 << 10]),
            ],
        );
        let spec = json!({"redis": {"credentialsSecretRef": {"name": "crowded", "passwordKey": "password"},
                                    "tls": {"caSecretRef": {"name": "crowded", "key": "a.crt"}}}});
        let problem = resolve(vec![crowded], spec).await.unwrap_err();
        assert_eq!(problem.reason, "SecretTooLarge");
        assert!(
            problem
                .message
                .contains(&format!("values come to {} bytes", 2 + (70 << 10)))
                && problem
                    .message
                    .contains("key \"a.crt\" (40960 bytes) did not fit"),
            "{}",
            problem.message
        );
    }

    #[tokio::test]
    async fn a_nats_secret_whose_creds_are_too_large_is_refused_not_taken_for_a_token() {
        let nats = |secret_name: &str| {
            json!({"redis": null, "queues": [{"name": "q", "type": "jetstream", "stream": "s", "consumer": "c"}],
                   "nats": {"url": "nats://nats.jobs.svc:4222",
                            "credentialsSecretRef": {"name": secret_name, "passwordKey": "token"}}})
        };
        let large = secret(
            "nats-creds",
            json!({}),
            &[("creds", vec![b'c'; 70 << 10]), ("token", b"t".to_vec())],
        );
        let problem = resolve(vec![large], nats("nats-creds")).await.unwrap_err();
        assert_eq!(problem.reason, "SecretTooLarge");
        assert!(
            problem.message.contains("key \"creds\" is 71680 bytes"),
            "{}",
            problem.message
        );

        let many: Vec<(String, Vec<u8>)> = (0..40).map(|n| (format!("key-{n:02}"), vec![b'k'; 8])).collect();
        let mut many: Vec<(&str, Vec<u8>)> = many
            .iter()
            .map(|(key, value)| (key.as_str(), value.clone()))
            .collect();
        many.push(("creds", vec![b'c'; 2048]));
        let problem = resolve(vec![secret("many", json!({}), &many)], nats("many"))
            .await
            .unwrap_err();
        assert_eq!(problem.reason, "SecretTooLarge");
        assert!(
            problem.message.contains("has 41 keys, and levee keeps 32"),
            "{}",
            problem.message
        );
    }

    #[tokio::test]
    async fn a_hosts_annotation_too_large_to_keep_sends_the_password_nowhere() {
        let hosts = format!("redis.jobs.svc, {}", "h".repeat(HOSTS_BOUND));
        let auth = secret(
            "redis-auth",
            json!({"levee.dev/secret-hosts": hosts}),
            &[("password", b"pw".to_vec())],
        );
        let spec = json!({"redis": {"url": "redis://redis.jobs.svc:6379",
                                    "credentialsSecretRef": {"name": "redis-auth", "passwordKey": "password"}}});
        let problem = resolve(vec![auth], spec).await.unwrap_err();
        assert_eq!(problem.reason, "SecretTooLarge");
        assert!(
            problem
                .message
                .contains("levee.dev/secret-hosts annotation is 4112 bytes"),
            "{}",
            problem.message
        );
    }

    /// Serves a list of `count` Secrets `blob-<n>` (each a 1 MiB value, labelled for levee) as the
    /// API server does: pages of `limit` items, except at `resourceVersion=0`, which its watch
    /// cache answers whole whatever the limit (its cacher's `computeListLimit`: "the limit is
    /// ignored for requests that set RV == 0"). Returns the list requests' query strings and the
    /// bytes of each answer; the watch that follows is left unanswered.
    async fn serve_secret_list(
        mut api_server: tower_test::mock::Handle<Request<Body>, Response<Body>>,
        count: usize,
    ) -> Vec<(String, usize)> {
        use base64::Engine;
        let value = base64::engine::general_purpose::STANDARD.encode(vec![b'x'; 1 << 20]);
        let item = |n: usize| {
            json!({"metadata": {"name": format!("blob-{n}"), "namespace": "jobs", "resourceVersion": "90",
                                "labels": {"levee.dev/secret": "true"}},
                   "type": "Opaque", "data": {"blob": value}})
            .to_string()
        };
        let mut served = Vec::new();
        let mut watches = Vec::new();
        while let Some((request, respond)) = api_server.next_request().await {
            let query = request.uri().query().unwrap_or_default().to_string();
            let param = |name: &str| {
                url::form_urlencoded::parse(query.as_bytes())
                    .find(|(key, _)| key == name)
                    .map(|(_, value)| value.into_owned())
            };
            if param("watch").is_some() {
                watches.push(respond);
                break;
            }
            let start: usize = param("continue").map_or(0, |at| at.parse().unwrap());
            let limit: usize = param("limit").map_or(0, |limit| limit.parse().unwrap());
            let limit = if param("resourceVersion").as_deref() == Some("0") {
                0
            } else {
                limit
            };
            let end = if limit == 0 {
                count
            } else {
                (start + limit).min(count)
            };
            let more = if end < count {
                format!(r#","continue":"{end}""#)
            } else {
                String::new()
            };
            let mut body = format!(
                r#"{{"apiVersion":"v1","kind":"SecretList","metadata":{{"resourceVersion":"100"{more}}},"items":["#
            );
            for n in start..end {
                if n > start {
                    body.push(',');
                }
                body.push_str(&item(n));
            }
            body.push_str("]}");
            served.push((query, body.len()));
            respond.send_response(Response::new(Body::from(body.into_bytes())));
        }
        served
    }

    /// Issue 39's case, listed cold: 200 Secrets of 1 MiB labelled for levee. kube holds a list's
    /// whole answer twice over before it parses it, so what one answer may hold is what the
    /// list costs at its peak.
    #[tokio::test]
    async fn the_cold_list_of_opted_in_secrets_comes_in_pages_of_4() {
        let (service, api_server) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let client = Client::new(service, "default");
        let store = IndexedStore::default();
        let watch = crate::controller::cache::reflect(
            store.clone(),
            Api::<crate::controller::cache::kept_secret::StoredSecret>::all(client),
            watch_config(LABEL_SECRET_CONSENT),
            crate::controller::cache::trim::secret,
        );
        let watch = tokio::spawn(watch);
        let served = serve_secret_list(api_server, 200).await;
        store.wait_until_ready().await;
        watch.abort();

        assert_eq!(store.len(), 200);
        let kept = store.get("jobs", "blob-199").unwrap();
        assert_eq!(kept.value("blob"), Some(&Bounded::TooLarge { bytes: 1 << 20 }));
        assert_eq!(served.len(), 50, "{served:?}");
        for (query, _) in &served {
            assert!(
                query.contains("limit=4") && query.contains("labelSelector=levee.dev%2Fsecret%3Dtrue"),
                "{query}"
            );
            assert!(
                !query.contains("resourceVersion=0"),
                "{query}: the watch cache would answer it whole"
            );
        }
        let largest = served.iter().map(|(_, bytes)| *bytes).max().unwrap();
        let all: usize = served.iter().map(|(_, bytes)| *bytes).sum();
        eprintln!(
            "figure: cold list of 200 Secrets of 1 MiB: largest answer {} KiB in {} pages (at kube's default page of 500: one answer of {} KiB)",
            largest / 1024,
            served.len(),
            all / 1024
        );
        assert!(largest < 6 << 20, "{largest} bytes in one answer");
    }

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
