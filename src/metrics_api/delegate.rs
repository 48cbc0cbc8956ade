//! Forwarding to another external metrics server (`--delegate-external-metrics`: KEDA's metrics
//! adapter, prometheus-adapter) for the metrics levee does not serve, so that levee can own the
//! cluster's one `v1beta1.external.metrics.k8s.io` APIService without taking the other server's
//! metrics away.
//!
//! levee authorizes the caller first (the same SubjectAccessReview the delegate would make: `list`
//! on the metric in the namespace), then asks the delegate with levee's own credentials (its
//! ServiceAccount token, refreshed as kube-rs refreshes it): the delegate sees levee as the
//! caller. Whatever the delegate answers, error statuses included, goes back to the caller as it
//! came; a delegate that cannot be reached is a 503 naming it. levee's own metrics never go
//! through here.

use super::routes::{self, Body, Reply};
use bytes::Bytes;
use http_body_util::BodyExt;
use serde_json::Value;
use std::time::Duration;

/// How long the delegate may take to answer a metric request, and a discovery request (the
/// aggregator's availability check gives levee 5 s for the whole of discovery).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
const DISCOVERY_TIMEOUT: Duration = Duration::from_secs(2);

/// The server levee forwards to.
#[derive(Clone)]
pub struct Delegate {
    client: kube::Client,
    url: String,
}

impl Delegate {
    /// A delegate at `url` (https), verified with the PEM CA bundle `ca` (else with the CA that
    /// `base` trusts the API server with), asked with the credentials of `base` (levee's own).
    pub fn new(url: &str, ca: Option<&[u8]>, base: kube::Config) -> Result<Self, String> {
        let parsed: http::Uri = url
            .parse()
            .map_err(|e| format!("--delegate-external-metrics {url:?} is not a URL: {e}"))?;
        if parsed.scheme_str() != Some("https") || parsed.host().is_none() {
            return Err(format!(
                "--delegate-external-metrics {url:?} must be an https:// URL such as https://keda-metrics-apiserver.keda.svc:443"
            ));
        }
        let mut config = base;
        config.cluster_url = parsed;
        config.read_timeout = Some(REQUEST_TIMEOUT);
        if let Some(pem) = ca {
            let certs = rustls_pemfile::certs(&mut &pem[..])
                .map(|cert| cert.map(|der| der.to_vec()))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("--delegate-ca-file: {e}"))?;
            if certs.is_empty() {
                return Err("--delegate-ca-file holds no CERTIFICATE block".into());
            }
            config.root_cert = Some(certs);
        }
        let client = kube::Client::try_from(config).map_err(|e| format!("the delegate's client: {e}"))?;
        Ok(Self {
            client,
            url: url.trim_end_matches('/').to_string(),
        })
    }

    /// Forwards a GET of `path_and_query` and returns the delegate's answer as it came.
    pub async fn forward(&self, path_and_query: &str) -> Reply {
        match self.get(path_and_query, REQUEST_TIMEOUT).await {
            Ok((status, content_type, bytes)) => Reply {
                status,
                body: Body::Raw { content_type, bytes },
            },
            Err(error) => routes::status(
                503,
                "ServiceUnavailable",
                &format!(
                    "levee forwards this metric to {}, which cannot be reached: {error}",
                    self.url
                ),
            ),
        }
    }

    /// The resources of the delegate's `external.metrics.k8s.io/v1beta1` discovery; `None` when
    /// it does not answer in time (discovery then lists levee's own, so that the APIService
    /// stays Available and levee's metrics keep working).
    pub async fn resources(&self) -> Option<Vec<Value>> {
        let path = format!("/apis/{}/{}", routes::GROUP, routes::VERSION);
        match self.get(&path, DISCOVERY_TIMEOUT).await {
            Ok((200, _, bytes)) => {
                let list: Value = serde_json::from_slice(&bytes).ok()?;
                list["resources"].as_array().cloned()
            }
            Ok((status, _, _)) => {
                tracing::debug!(status, delegate = %self.url, "the delegate's discovery failed");
                None
            }
            Err(error) => {
                tracing::debug!(%error, delegate = %self.url, "the delegate's discovery failed");
                None
            }
        }
    }

    async fn get(&self, path_and_query: &str, timeout: Duration) -> Result<(u16, String, Bytes), String> {
        let request = http::Request::get(path_and_query)
            .header(http::header::ACCEPT, "application/json")
            .body(kube::client::Body::empty())
            .map_err(|e| e.to_string())?;
        let exchange = async {
            let response = self.client.send(request).await.map_err(|e| e.to_string())?;
            let status = response.status().as_u16();
            let content_type = response
                .headers()
                .get(http::header::CONTENT_TYPE)
                .and_then(|value| value.to_str().ok())
                .unwrap_or("application/json")
                .to_string();
            let bytes = response
                .into_body()
                .collect()
                .await
                .map_err(|e| e.to_string())?
                .to_bytes();
            Ok((status, content_type, bytes))
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| format!("no answer within {timeout:?}"))?
    }
}
