//! Who is asking, and may they: the aggregated-API-server handshake. kube-apiserver proxies with
//! the front-proxy client certificate and names the user in `X-Remote-User`/`X-Remote-Group`;
//! those headers are trusted only after the certificate verified against
//! `requestheader-client-ca-file` and its CN is one of `requestheader-allowed-names` (both from
//! `kube-system/extension-apiserver-authentication`). Other callers (Prometheus reading
//! `/metrics`) present a bearer token, checked with a TokenReview. Metric and `/metrics` reads are
//! then authorized with a SubjectAccessReview; reviews are cached for a few seconds.

use super::review_budget::{ReviewBudget, ReviewLimits};
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

/// How long a token the API server accepted is still known: reviewed again every
/// `DECISION_TTL`, but outside the review budget.
const KNOWN_TOKEN_TTL: Duration = Duration::from_secs(300);

/// Bearer tokens longer than this are refused unread: a ServiceAccount token is about 1 KiB, and
/// nothing past this is reviewed or cached.
pub const MAX_TOKEN_BYTES: usize = 4096;

/// The results `levee_token_reviews_total` counts (all exported from the start, at 0).
pub const TOKEN_REVIEW_RESULTS: [&str; 5] =
    ["authenticated", "rejected", "failed", "over_budget", "too_long"];

/// Why a bearer token did not identify its caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TokenRefusal {
    /// No token, a token past `MAX_TOKEN_BYTES`, or one the API server did not accept: a 401.
    Unauthenticated(String),
    /// The token is new and the review budget is spent: a 429, try again after the seconds given.
    OverBudget(String, u64),
}

/// Authenticates bearer tokens with TokenReviews, remembering the answers briefly by the token's
/// SHA-256 (the cache never holds a token), within a budget of reviews (`review_budget`).
pub struct Authenticator {
    client: Client,
    reviews: Mutex<HashMap<TokenKey, (Option<Identity>, Instant)>>,
    budget: ReviewBudget,
    /// How long an answer is reused before the token is reviewed again (`DECISION_TTL`).
    fresh_for: Duration,
    /// `levee_token_reviews_total`, by result.
    counted: prometheus::IntCounterVec,
    /// The audience a token must be good for (`None`: the API server's own).
    audience: Option<String>,
}

impl Authenticator {
    pub fn new(client: Client, limits: ReviewLimits, counted: prometheus::IntCounterVec) -> Self {
        for result in TOKEN_REVIEW_RESULTS {
            counted.with_label_values(&[result]);
        }
        Self {
            client,
            reviews: Mutex::new(HashMap::new()),
            budget: ReviewBudget::new(limits),
            fresh_for: DECISION_TTL,
            counted,
            audience: None,
        }
    }

    /// Accepts only tokens made for `audience` (a projected ServiceAccount token's), which the
    /// API server itself refuses.
    pub fn for_audience(mut self, audience: &str) -> Self {
        self.audience = Some(audience.to_string());
        self
    }

    fn count(&self, result: &str) {
        self.counted.with_label_values(&[result]).inc();
    }

    /// The caller behind `Authorization: Bearer <token>`.
    pub async fn identify(&self, headers: &http::HeaderMap) -> Result<Identity, TokenRefusal> {
        let token = headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                TokenRefusal::Unauthenticated(
                    "no bearer token and no front-proxy client certificate: send a ServiceAccount token"
                        .into(),
                )
            })?;
        if token.len() > MAX_TOKEN_BYTES {
            self.count("too_long");
            return Err(TokenRefusal::Unauthenticated(format!(
                "the bearer token is {} bytes, over the {MAX_TOKEN_BYTES} levee reviews: send a ServiceAccount token",
                token.len()
            )));
        }
        let key = token_key(token);
        let cached = self.reviews.lock().expect("review lock").get(&key).cloned();
        let identity = match cached {
            Some((identity, at)) if at.elapsed() < self.fresh_for => identity,
            cached => {
                // A token the API server accepted a little while ago is reviewed again outside
                // the budget: a flood of new tokens never locks out a scraper it already knows.
                let known =
                    cached.is_some_and(|(identity, at)| identity.is_some() && at.elapsed() < KNOWN_TOKEN_TTL);
                let permit = match known {
                    true => None,
                    false => Some(self.budget.admit().map_err(|over| {
                        self.count("over_budget");
                        TokenRefusal::OverBudget(
                            "too many new bearer tokens to review at once: try again shortly".into(),
                            over.retry_after_seconds,
                        )
                    })?),
                };
                let reviewed = self.review(token).await;
                drop(permit);
                let identity = reviewed.inspect_err(|_| self.count("failed"))?;
                self.count(if identity.is_some() {
                    "authenticated"
                } else {
                    "rejected"
                });
                let mut reviews = self.reviews.lock().expect("review lock");
                reviews.retain(|_, (identity, at)| {
                    at.elapsed()
                        < if identity.is_some() {
                            KNOWN_TOKEN_TTL
                        } else {
                            DECISION_TTL
                        }
                });
                if reviews.len() >= CACHE_LIMIT {
                    reviews.retain(|_, (identity, _)| identity.is_some());
                }
                if reviews.len() >= CACHE_LIMIT {
                    reviews.clear();
                }
                reviews.insert(key, (identity.clone(), Instant::now()));
                identity
            }
        };
        identity.ok_or_else(|| {
            TokenRefusal::Unauthenticated("the bearer token was not accepted by the API server".into())
        })
    }

    async fn review(&self, token: &str) -> Result<Option<Identity>, TokenRefusal> {
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.to_string()),
                audiences: self.audience.clone().map(|audience| vec![audience]),
            },
            ..Default::default()
        };
        let api: Api<TokenReview> = Api::all(self.client.clone());
        let reviewed = api
            .create(&Default::default(), &review)
            .await
            .map_err(|e| TokenRefusal::Unauthenticated(format!("TokenReview failed: {e}")))?;
        let status = reviewed.status.unwrap_or_default();
        if status.authenticated != Some(true) {
            return Ok(None);
        }
        // The API server answers with the audiences the token is good for of those asked.
        if let Some(audience) = &self.audience
            && !status.audiences.unwrap_or_default().contains(audience)
        {
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

/// The SHA-256 of a token: what the cache keeps in its place.
type TokenKey = [u8; 32];

/// The cache's key for a token.
fn token_key(token: &str) -> TokenKey {
    let digest = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    digest.as_ref().try_into().expect("SHA-256 is 32 bytes")
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

    /// An authenticator whose API server accepts only the token `good`, counting its TokenReviews.
    fn authenticator(limits: ReviewLimits) -> (Authenticator, Arc<std::sync::atomic::AtomicUsize>) {
        let reviews = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = reviews.clone();
        let service = tower::service_fn(move |request: http::Request<kube::client::Body>| {
            let counter = counter.clone();
            async move {
                use http_body_util::BodyExt;
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let body = request.into_body().collect().await.unwrap().to_bytes();
                let review: TokenReview = serde_json::from_slice(&body).unwrap();
                let good = review.spec.token.as_deref() == Some("good");
                let answer = serde_json::json!({
                    "apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": {},
                    "status": {"authenticated": good, "user": {"username": "scraper"}}
                });
                Ok::<_, std::convert::Infallible>(http::Response::new(kube::client::Body::from(
                    serde_json::to_vec(&answer).unwrap(),
                )))
            }
        });
        let counted =
            prometheus::IntCounterVec::new(prometheus::Opts::new("reviews", "reviews"), &["result"]).unwrap();
        let authenticator = Authenticator::new(Client::new(service, "default"), limits, counted);
        (authenticator, reviews)
    }

    fn bearer(token: &str) -> http::HeaderMap {
        headers(&[("Authorization", &format!("Bearer {token}"))])
    }

    #[tokio::test]
    async fn new_tokens_past_the_budget_are_refused_without_a_review() {
        let limits = ReviewLimits {
            concurrent: 4,
            per_second: 0.001,
            burst: 3.0,
        };
        let (authenticator, reviews) = authenticator(limits);
        let mut over_budget = 0;
        for i in 0..10 {
            match authenticator.identify(&bearer(&format!("made-up-{i}"))).await {
                Err(TokenRefusal::OverBudget(_, retry)) => {
                    assert!(retry >= 1);
                    over_budget += 1;
                }
                Err(TokenRefusal::Unauthenticated(_)) => {}
                Ok(identity) => panic!("a made-up token identified {identity:?}"),
            }
        }
        assert_eq!(
            reviews.load(std::sync::atomic::Ordering::SeqCst),
            3,
            "the burst only"
        );
        assert_eq!(over_budget, 7);
        assert_eq!(authenticator.counted.with_label_values(&["over_budget"]).get(), 7);
        assert!(
            matches!(
                authenticator.identify(&bearer("made-up-0")).await,
                Err(TokenRefusal::Unauthenticated(_))
            ),
            "a token already rejected is answered from the cache, budget or not"
        );
        assert_eq!(reviews.load(std::sync::atomic::Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn a_known_token_is_reviewed_again_outside_the_budget() {
        let limits = ReviewLimits {
            concurrent: 4,
            per_second: 0.001,
            burst: 2.0,
        };
        let (mut authenticator, reviews) = authenticator(limits);
        authenticator.fresh_for = Duration::from_millis(1);
        assert_eq!(
            authenticator.identify(&bearer("good")).await.unwrap().user,
            "scraper"
        );
        let _ = authenticator.identify(&bearer("made-up")).await;
        assert!(matches!(
            authenticator.identify(&bearer("another")).await,
            Err(TokenRefusal::OverBudget(..))
        ));
        tokio::time::sleep(Duration::from_millis(5)).await;
        assert_eq!(
            authenticator.identify(&bearer("good")).await.unwrap().user,
            "scraper",
            "the scraper is reviewed again though the budget is spent"
        );
        assert_eq!(reviews.load(std::sync::atomic::Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn a_token_over_4_kib_is_refused_unread() {
        let (authenticator, reviews) = authenticator(ReviewLimits::default());
        let refused = authenticator
            .identify(&bearer(&"x".repeat(MAX_TOKEN_BYTES + 1)))
            .await;
        assert!(matches!(refused, Err(TokenRefusal::Unauthenticated(reason)) if reason.contains("4096")));
        assert_eq!(reviews.load(std::sync::atomic::Ordering::SeqCst), 0);
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
