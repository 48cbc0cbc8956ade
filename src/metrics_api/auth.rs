//! Who is asking, and may they: the aggregated-API-server handshake. kube-apiserver proxies with
//! the front-proxy client certificate and names the user in `X-Remote-User`/`X-Remote-Group`;
//! those headers are trusted only after the certificate verified against
//! `requestheader-client-ca-file` and its CN is one of `requestheader-allowed-names` (both from
//! `kube-system/extension-apiserver-authentication`). Other callers (Prometheus reading
//! `/metrics`) present a bearer token, checked with a TokenReview. Metric and `/metrics` reads are
//! then authorized with a SubjectAccessReview; reviews are cached for a few seconds.

use super::tls::RequestHeaderCa;
use futures::StreamExt;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::authorization::v1::{
    NonResourceAttributes, ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

/// How long an authorization decision is reused.
const DECISION_TTL: Duration = Duration::from_secs(10);

/// The request-header settings of the cluster.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RequestHeaderConfig {
    /// CNs allowed to act as the front proxy; empty: any certificate the CA signed.
    pub allowed_names: Vec<String>,
    pub username_headers: Vec<String>,
    pub group_headers: Vec<String>,
    /// Prefixes of the headers that carry the user's extra attributes (`X-Remote-Extra-`).
    pub extra_header_prefixes: Vec<String>,
}

impl RequestHeaderConfig {
    /// Reads the settings from the ConfigMap's data (header lists are JSON arrays).
    pub fn from_config_map(data: &std::collections::BTreeMap<String, String>) -> Self {
        let list = |key: &str| -> Vec<String> {
            data.get(key)
                .and_then(|v| serde_json::from_str(v).ok())
                .unwrap_or_default()
        };
        Self {
            allowed_names: list("requestheader-allowed-names"),
            username_headers: list("requestheader-username-headers"),
            group_headers: list("requestheader-group-headers"),
            extra_header_prefixes: list("requestheader-extra-headers-prefix"),
        }
    }
}

/// An authenticated caller.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Identity {
    pub user: String,
    pub groups: Vec<String>,
    /// Extra attributes (a ServiceAccount token's `authentication.kubernetes.io/...` keys), keys in
    /// lower case as Kubernetes compares them.
    pub extra: BTreeMap<String, Vec<String>>,
}

/// Why a request is refused before authorization.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unauthenticated(pub String);

/// The caller of a request that arrived with the verified client certificate of common name
/// `client_cn` (None: no verified certificate) and these headers.
pub fn identify(
    client_cn: Option<&str>,
    headers: &http::HeaderMap,
    config: &RequestHeaderConfig,
) -> Result<Identity, Unauthenticated> {
    let Some(cn) = client_cn else {
        return Err(Unauthenticated(
            "no verified front-proxy client certificate: call the metrics through the Kubernetes API server"
                .into(),
        ));
    };
    if !config.allowed_names.is_empty() && !config.allowed_names.iter().any(|name| name == cn) {
        return Err(Unauthenticated(format!(
            "client certificate CN {cn:?} is not in requestheader-allowed-names"
        )));
    }
    let header = |name: &str| {
        headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let user = config
        .username_headers
        .iter()
        .find_map(|name| header(name).next());
    let Some(user) = user.filter(|u| !u.is_empty()) else {
        return Err(Unauthenticated("the front proxy named no user".into()));
    };
    let groups = config
        .group_headers
        .iter()
        .flat_map(|name| header(name))
        .collect();
    Ok(Identity {
        user,
        groups,
        extra: extra_from_headers(headers, &config.extra_header_prefixes),
    })
}

/// The extra attributes in headers named `<prefix><key>`: the key percent-decoded (kept as it
/// came when it does not decode) and in lower case, values in the order they came (the
/// requestheader convention the aggregator follows).
fn extra_from_headers(headers: &http::HeaderMap, prefixes: &[String]) -> BTreeMap<String, Vec<String>> {
    let mut extra: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for prefix in prefixes.iter().map(|p| p.to_ascii_lowercase()) {
        for (name, value) in headers {
            let Some(key) = name.as_str().strip_prefix(prefix.as_str()) else {
                continue;
            };
            if let Ok(value) = value.to_str() {
                let key = percent_decode(key).unwrap_or_else(|| key.to_string());
                extra
                    .entry(key.to_lowercase())
                    .or_default()
                    .push(value.to_string());
            }
        }
    }
    extra
}

/// `%XX` sequences decoded; `None` for bytes that are not UTF-8.
fn percent_decode(text: &str) -> Option<String> {
    percent_encoding::percent_decode_str(text)
        .decode_utf8()
        .ok()
        .map(|text| text.into_owned())
}

/// What a header name keeps as it is: ASCII letters, digits and `-._~`.
const HEADER_NAME_KEEPS: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// `text` percent-encoded for a header name: every byte but ASCII letters, digits and `-._~`
/// (header names travel in lower case; the hex digits decode either way).
pub fn percent_encode(text: &str) -> String {
    percent_encoding::utf8_percent_encode(text, HEADER_NAME_KEEPS).to_string()
}

/// The live request-header trust: the CA in the TLS verifier and the header settings.
#[derive(Default)]
pub struct RequestHeaderTrust {
    pub ca: Arc<RequestHeaderCa>,
    pub config: RwLock<RequestHeaderConfig>,
}

impl RequestHeaderTrust {
    /// Keeps the trust current from `kube-system/extension-apiserver-authentication`.
    pub async fn watch(self: Arc<Self>, client: Client) {
        let api: Api<ConfigMap> = Api::namespaced(client, "kube-system");
        let config = watcher::Config::default().fields("metadata.name=extension-apiserver-authentication");
        let mut changes = watcher(api, config).default_backoff().applied_objects().boxed();
        while let Some(change) = changes.next().await {
            match change {
                Ok(config_map) => self.apply(&config_map.data.unwrap_or_default()),
                Err(error) => tracing::warn!(%error, "watching extension-apiserver-authentication"),
            }
        }
    }

    /// Takes the settings of the ConfigMap's data.
    pub fn apply(&self, data: &std::collections::BTreeMap<String, String>) {
        match data.get("requestheader-client-ca-file") {
            Some(pem) => {
                if let Err(error) = self.ca.set_ca_pem(pem) {
                    tracing::warn!(%error, "the requestheader client CA cannot be used");
                }
            }
            None => tracing::warn!(
                "extension-apiserver-authentication has no requestheader-client-ca-file: aggregation is not set up"
            ),
        }
        *self.config.write().expect("config lock") = RequestHeaderConfig::from_config_map(data);
    }
}

/// What a caller asks to read.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Resource {
    /// `list` on `external.metrics.k8s.io/<metric>` in a namespace.
    Metric { namespace: String, metric: String },
    /// `get` on a non-resource path such as `/metrics`.
    Path(String),
}

/// Who asks for what.
type Question = (Identity, Resource);

/// Entries a cache keeps at most; beyond that it starts afresh (bounds memory under abuse).
const CACHE_LIMIT: usize = 4096;

/// Authenticates bearer tokens with TokenReviews, remembering the answers briefly.
pub struct Authenticator {
    client: Client,
    reviews: Mutex<HashMap<String, (Option<Identity>, Instant)>>,
}

impl Authenticator {
    pub fn new(client: Client) -> Self {
        Self {
            client,
            reviews: Mutex::new(HashMap::new()),
        }
    }

    /// The caller behind `Authorization: Bearer <token>`.
    pub async fn identify(&self, headers: &http::HeaderMap) -> Result<Identity, Unauthenticated> {
        let token = headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                Unauthenticated(
                    "no bearer token and no front-proxy client certificate: send a ServiceAccount token"
                        .into(),
                )
            })?;
        let cached = self.reviews.lock().expect("review lock").get(token).cloned();
        let identity = match cached.filter(|(_, at)| at.elapsed() < DECISION_TTL) {
            Some((identity, _)) => identity,
            None => {
                let identity = self.review(token).await?;
                let mut reviews = self.reviews.lock().expect("review lock");
                reviews.retain(|_, (_, at)| at.elapsed() < DECISION_TTL);
                if reviews.len() >= CACHE_LIMIT {
                    reviews.clear();
                }
                reviews.insert(token.to_string(), (identity.clone(), Instant::now()));
                identity
            }
        };
        identity.ok_or_else(|| Unauthenticated("the bearer token was not accepted by the API server".into()))
    }

    async fn review(&self, token: &str) -> Result<Option<Identity>, Unauthenticated> {
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.to_string()),
                ..Default::default()
            },
            ..Default::default()
        };
        let api: Api<TokenReview> = Api::all(self.client.clone());
        let reviewed = api
            .create(&Default::default(), &review)
            .await
            .map_err(|e| Unauthenticated(format!("TokenReview failed: {e}")))?;
        let status = reviewed.status.unwrap_or_default();
        if status.authenticated != Some(true) {
            return Ok(None);
        }
        let user = status.user.unwrap_or_default();
        Ok(user.username.map(|name| Identity {
            user: name,
            groups: user.groups.unwrap_or_default(),
            extra: user.extra.unwrap_or_default(),
        }))
    }
}

/// Authorizes metric reads with SubjectAccessReviews, remembering decisions briefly.
pub struct Authorizer {
    client: Client,
    decisions: Mutex<HashMap<Question, (bool, Instant)>>,
}

impl Authorizer {
    pub fn new(client: Client) -> Self {
        Self {
            client,
            decisions: Mutex::new(HashMap::new()),
        }
    }

    /// Whether `identity` may read `resource`.
    pub async fn allowed(&self, identity: &Identity, resource: &Resource) -> Result<bool, String> {
        let key = (identity.clone(), resource.clone());
        if let Some((allowed, at)) = self.decisions.lock().expect("decision lock").get(&key)
            && at.elapsed() < DECISION_TTL
        {
            return Ok(*allowed);
        }
        let (resource_attributes, non_resource_attributes) = match resource {
            Resource::Metric { namespace, metric } => (
                Some(ResourceAttributes {
                    group: Some(super::routes::GROUP.into()),
                    resource: Some(metric.clone()),
                    namespace: Some(namespace.clone()),
                    verb: Some("list".into()),
                    ..Default::default()
                }),
                None,
            ),
            Resource::Path(path) => (
                None,
                Some(NonResourceAttributes {
                    path: Some(path.clone()),
                    verb: Some("get".into()),
                }),
            ),
        };
        let review = SubjectAccessReview {
            spec: SubjectAccessReviewSpec {
                user: Some(identity.user.clone()),
                groups: Some(identity.groups.clone()),
                extra: (!identity.extra.is_empty()).then(|| identity.extra.clone()),
                resource_attributes,
                non_resource_attributes,
                ..Default::default()
            },
            ..Default::default()
        };
        let api: Api<SubjectAccessReview> = Api::all(self.client.clone());
        let reviewed = api
            .create(&Default::default(), &review)
            .await
            .map_err(|e| format!("SubjectAccessReview: {e}"))?;
        let allowed = reviewed.status.is_some_and(|s| s.allowed);
        let mut decisions = self.decisions.lock().expect("decision lock");
        decisions.retain(|_, (_, at)| at.elapsed() < DECISION_TTL);
        if decisions.len() >= CACHE_LIMIT {
            decisions.clear();
        }
        decisions.insert(key, (allowed, Instant::now()));
        Ok(allowed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> RequestHeaderConfig {
        RequestHeaderConfig {
            allowed_names: vec!["front-proxy-client".into()],
            username_headers: vec!["X-Remote-User".into()],
            group_headers: vec!["X-Remote-Group".into()],
            extra_header_prefixes: vec!["X-Remote-Extra-".into()],
        }
    }

    fn headers(pairs: &[(&str, &str)]) -> http::HeaderMap {
        let mut map = http::HeaderMap::new();
        for (k, v) in pairs {
            map.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        map
    }

    #[test]
    fn forged_headers_without_a_verified_certificate_are_refused() {
        let forged = headers(&[
            ("X-Remote-User", "system:admin"),
            ("X-Remote-Group", "system:masters"),
        ]);
        let refused = identify(None, &forged, &config()).unwrap_err();
        assert!(refused.0.contains("no verified front-proxy client certificate"));
    }

    #[test]
    fn only_allowed_names_may_speak_for_users() {
        let h = headers(&[("X-Remote-User", "alice")]);
        assert!(
            identify(Some("someone-else"), &h, &config())
                .unwrap_err()
                .0
                .contains("requestheader-allowed-names")
        );
        let anyone = RequestHeaderConfig {
            allowed_names: vec![],
            ..config()
        };
        assert_eq!(identify(Some("someone-else"), &h, &anyone).unwrap().user, "alice");
    }

    #[test]
    fn user_and_every_group_come_from_the_configured_headers() {
        let h = headers(&[
            ("x-remote-user", "system:serviceaccount:kube-system:hpa"),
            ("X-Remote-Group", "a"),
            ("X-Remote-Group", "b"),
        ]);
        let identity = identify(Some("front-proxy-client"), &h, &config()).unwrap();
        assert_eq!(
            identity,
            Identity {
                user: "system:serviceaccount:kube-system:hpa".into(),
                groups: vec!["a".into(), "b".into()],
                extra: BTreeMap::new(),
            }
        );
        assert!(
            identify(Some("front-proxy-client"), &headers(&[]), &config()).is_err(),
            "no user header"
        );
    }

    #[test]
    fn the_config_map_lists_are_json_arrays() {
        let data = [
            ("requestheader-allowed-names", r#"["front-proxy-client"]"#),
            ("requestheader-username-headers", r#"["X-Remote-User"]"#),
            ("requestheader-group-headers", r#"["X-Remote-Group"]"#),
            ("requestheader-extra-headers-prefix", r#"["X-Remote-Extra-"]"#),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!(RequestHeaderConfig::from_config_map(&data), config());
    }

    #[test]
    fn extra_attributes_come_from_the_prefixed_headers_with_their_keys_decoded() {
        let h = headers(&[
            ("X-Remote-User", "system:serviceaccount:kube-system:hpa"),
            (
                "X-Remote-Extra-Authentication.kubernetes.io%2Fcredential-id",
                "JTI=1",
            ),
            ("X-Remote-Extra-Scopes", "a"),
            ("X-Remote-Extra-Scopes", "b"),
            ("X-Remote-Extra-Broken%zz", "kept"),
            ("X-Other-Extra-Scopes", "not an extra"),
        ]);
        let identity = identify(Some("front-proxy-client"), &h, &config()).unwrap();
        let expected: BTreeMap<String, Vec<String>> = [
            ("authentication.kubernetes.io/credential-id", vec!["JTI=1"]),
            ("broken%zz", vec!["kept"]),
            ("scopes", vec!["a", "b"]),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.into_iter().map(str::to_string).collect()))
        .collect();
        assert_eq!(identity.extra, expected);
    }

    #[test]
    fn percent_encoding_a_key_round_trips_and_makes_a_valid_header_name() {
        for key in [
            "authentication.kubernetes.io/credential-id",
            "scopes",
            "a b%c",
            "ünï",
        ] {
            let encoded = percent_encode(key);
            assert!(
                http::HeaderName::from_bytes(format!("x-remote-extra-{encoded}").as_bytes()).is_ok(),
                "{encoded}"
            );
            assert_eq!(percent_decode(&encoded).as_deref(), Some(key));
        }
    }
}
