//! Forwarding to another external metrics server (`--delegate-external-metrics`: KEDA's metrics
//! adapter, prometheus-adapter) for the metrics levee does not serve, so that levee can own the
//! cluster's one `v1beta1.external.metrics.k8s.io` APIService without taking the other server's
//! metrics away.
//!
//! levee authorizes the caller first (the same SubjectAccessReview the delegate would make: `list`
//! on the metric in the namespace), then asks the delegate in one of two ways:
//! - as the caller (`--delegate-client-cert-file`): levee presents a client certificate the
//!   delegate trusts as a front proxy and names the caller it authenticated in the
//!   `X-Remote-User`/`-Group`/`-Extra-*` headers, as the aggregator does; the delegate sees and
//!   authorizes the original caller. The headers are built from the authenticated identity only,
//!   never copied from the request.
//! - as levee (the default): with its own ServiceAccount token, refreshed as kube-rs refreshes it;
//!   the delegate sees levee as the caller.
//!
//! Whatever the delegate answers, error statuses included, goes back to the caller as it came; a
//! delegate that cannot be reached is a 503 naming it. levee's own metrics never go through here.

use super::auth::{Identity, RequestHeaderConfig, percent_encode};
use super::routes::{self, Body, Reply};
use bytes::Bytes;
use http::{HeaderName, HeaderValue};
use http_body_util::BodyExt;
use serde_json::Value;
use std::time::Duration;

/// How long the delegate may take to answer a metric request, and a discovery request (the
/// aggregator's availability check gives levee 5 s for the whole of discovery).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
const DISCOVERY_TIMEOUT: Duration = Duration::from_secs(2);
/// The largest answer levee takes from the delegate (an external metric list is kilobytes).
pub const MAX_RESPONSE_BYTES: usize = 4 * 1024 * 1024;

/// The client certificate levee presents to the delegate as a front proxy: PEM files.
#[derive(Clone, Debug)]
pub struct FrontProxyCertificate {
    pub cert_file: std::path::PathBuf,
    pub key_file: std::path::PathBuf,
}

/// The server levee forwards to.
#[derive(Clone)]
pub struct Delegate {
    client: kube::Client,
    url: String,
    /// Whether levee names the caller (front proxy) rather than asking as itself.
    as_caller: bool,
}

impl Delegate {
    /// A delegate at `url` (https), verified with the PEM CA bundle `ca` (else with the CA that
    /// `base` trusts the API server with), asked as the caller with `front_proxy`, else with the
    /// credentials of `base` (levee's own).
    pub fn new(
        url: &str,
        ca: Option<&[u8]>,
        base: kube::Config,
        front_proxy: Option<&FrontProxyCertificate>,
    ) -> Result<Self, String> {
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
        if let Some(certificate) = front_proxy {
            check_pem(
                &certificate.cert_file,
                "--delegate-client-cert-file",
                "CERTIFICATE",
            )?;
            check_pem(&certificate.key_file, "--delegate-client-key-file", "PRIVATE KEY")?;
            config.auth_info = kube::config::AuthInfo {
                client_certificate: Some(certificate.cert_file.display().to_string()),
                client_key: Some(certificate.key_file.display().to_string()),
                ..Default::default()
            };
        }
        let client = kube::Client::try_from(config).map_err(|e| format!("the delegate's client: {e}"))?;
        Ok(Self {
            client,
            url: url.trim_end_matches('/').to_string(),
            as_caller: front_proxy.is_some(),
        })
    }

    /// Forwards a GET of `path_and_query` for `caller` (authenticated and authorized by levee)
    /// and returns the delegate's answer as it came. `names` are the cluster's requestheader
    /// settings: the caller goes under the first header name of each list.
    pub async fn forward(
        &self,
        path_and_query: &str,
        caller: &Identity,
        names: &RequestHeaderConfig,
    ) -> Reply {
        match self.get(path_and_query, caller, names, REQUEST_TIMEOUT).await {
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
    pub async fn resources(&self, caller: &Identity, names: &RequestHeaderConfig) -> Option<Vec<Value>> {
        let path = format!("/apis/{}/{}", routes::GROUP, routes::VERSION);
        match self.get(&path, caller, names, DISCOVERY_TIMEOUT).await {
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

    async fn get(
        &self,
        path_and_query: &str,
        caller: &Identity,
        names: &RequestHeaderConfig,
        timeout: Duration,
    ) -> Result<(u16, String, Bytes), String> {
        let mut request = http::Request::get(path_and_query)
            .header(http::header::ACCEPT, "application/json")
            .body(kube::client::Body::empty())
            .map_err(|e| e.to_string())?;
        if self.as_caller {
            request.headers_mut().extend(caller_headers(caller, names)?);
        }
        let exchange = async {
            let response = self.client.send(request).await.map_err(|e| e.to_string())?;
            let status = response.status().as_u16();
            let content_type = response
                .headers()
                .get(http::header::CONTENT_TYPE)
                .and_then(|value| value.to_str().ok())
                .unwrap_or("application/json")
                .to_string();
            let bytes = http_body_util::Limited::new(response.into_body(), MAX_RESPONSE_BYTES)
                .collect()
                .await
                .map_err(|e| format!("its answer: {e} (at most {MAX_RESPONSE_BYTES} bytes)"))?
                .to_bytes();
            Ok((status, content_type, bytes))
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| format!("no answer within {timeout:?}"))?
    }
}

/// Refuses a delegate client certificate that the cluster's requestheader CA signed (the PEM
/// bundle `requestheader_ca`, from `kube-system/extension-apiserver-authentication`):
/// kube-apiserver trusts any certificate of that CA to name any user in `X-Remote-User`,
/// `system:masters` included, so whoever read it from levee's Secret would own the cluster.
pub fn check_not_issued_by_requestheader_ca(cert_pem: &[u8], requestheader_ca: &[u8]) -> Result<(), String> {
    let leaf_der = rustls_pemfile::certs(&mut &cert_pem[..])
        .next()
        .ok_or("--delegate-client-cert-file holds no CERTIFICATE block")?
        .map_err(|e| format!("--delegate-client-cert-file: {e}"))?;
    let (_, leaf) = x509_parser::parse_x509_certificate(&leaf_der)
        .map_err(|e| format!("--delegate-client-cert-file does not parse: {e}"))?;
    for ca_der in rustls_pemfile::certs(&mut &requestheader_ca[..]).flatten() {
        let Ok((_, ca)) = x509_parser::parse_x509_certificate(&ca_der) else {
            continue;
        };
        if leaf.issuer() == ca.subject() && leaf.verify_signature(Some(ca.public_key())).is_ok() {
            return Err(format!(
                "--delegate-client-cert-file is issued by the cluster's requestheader CA ({}): kube-apiserver trusts any certificate of that CA to name any user, system:masters included, so it must never sit in a Secret. Give the delegate a CA of its own and this certificate from it (docs/operations.md#forwarding-as-the-caller)",
                ca.subject()
            ));
        }
    }
    Ok(())
}

/// Reads `path` (the file of `flag`) and checks it holds a PEM block whose label ends in `label`.
fn check_pem(path: &std::path::Path, flag: &str, label: &str) -> Result<(), String> {
    let pem = std::fs::read_to_string(path).map_err(|e| format!("reading {flag} {}: {e}", path.display()))?;
    let holds = pem
        .lines()
        .any(|line| line.starts_with("-----BEGIN ") && line.trim_end().ends_with(&format!("{label}-----")));
    if holds {
        Ok(())
    } else {
        Err(format!("{flag} {} holds no PEM {label} block", path.display()))
    }
}

/// The front-proxy headers naming `caller`: the user, each group and each extra attribute, under
/// the first names the cluster's requestheader settings give (the usual `X-Remote-User`,
/// `X-Remote-Group` and `X-Remote-Extra-` where they give none), extra keys percent-encoded.
pub fn caller_headers(
    caller: &Identity,
    names: &RequestHeaderConfig,
) -> Result<Vec<(HeaderName, HeaderValue)>, String> {
    let first = |list: &[String], default: &str| list.first().cloned().unwrap_or_else(|| default.to_string());
    let user_header = first(&names.username_headers, "X-Remote-User");
    let group_header = first(&names.group_headers, "X-Remote-Group");
    let extra_prefix = first(&names.extra_header_prefixes, "X-Remote-Extra-");
    let header = |name: &str, value: &str| -> Result<(HeaderName, HeaderValue), String> {
        let name =
            HeaderName::from_bytes(name.as_bytes()).map_err(|e| format!("header name {name:?}: {e}"))?;
        let value =
            HeaderValue::from_str(value).map_err(|e| format!("the caller's {name} {value:?}: {e}"))?;
        Ok((name, value))
    };
    let mut headers = vec![header(&user_header, &caller.user)?];
    for group in &caller.groups {
        headers.push(header(&group_header, group)?);
    }
    for (key, values) in &caller.extra {
        let name = format!("{extra_prefix}{}", percent_encode(key));
        for value in values {
            headers.push(header(&name, value)?);
        }
    }
    Ok(headers)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn caller() -> Identity {
        Identity {
            user: "system:serviceaccount:kube-system:horizontal-pod-autoscaler".into(),
            groups: vec!["system:serviceaccounts".into(), "system:authenticated".into()],
            extra: BTreeMap::from([(
                "authentication.kubernetes.io/credential-id".to_string(),
                vec!["JTI=abc".to_string()],
            )]),
        }
    }

    fn pairs(headers: &[(HeaderName, HeaderValue)]) -> Vec<(String, String)> {
        headers
            .iter()
            .map(|(k, v)| (k.as_str().to_string(), v.to_str().unwrap().to_string()))
            .collect()
    }

    #[test]
    fn the_caller_goes_under_the_standard_names_by_default() {
        let headers = caller_headers(&caller(), &RequestHeaderConfig::default()).unwrap();
        assert_eq!(
            pairs(&headers),
            [
                (
                    "x-remote-user",
                    "system:serviceaccount:kube-system:horizontal-pod-autoscaler"
                ),
                ("x-remote-group", "system:serviceaccounts"),
                ("x-remote-group", "system:authenticated"),
                (
                    "x-remote-extra-authentication.kubernetes.io%2fcredential-id",
                    "JTI=abc"
                ),
            ]
            .map(|(k, v)| (k.to_string(), v.to_string()))
        );
    }

    #[test]
    fn the_clusters_first_header_names_are_used() {
        let names = RequestHeaderConfig {
            username_headers: vec!["X-Proxy-User".into(), "X-Remote-User".into()],
            group_headers: vec!["X-Proxy-Group".into()],
            extra_header_prefixes: vec!["X-Proxy-Extra-".into()],
            ..Default::default()
        };
        let names_sent: Vec<String> = pairs(&caller_headers(&caller(), &names).unwrap())
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(
            names_sent,
            [
                "x-proxy-user",
                "x-proxy-group",
                "x-proxy-group",
                "x-proxy-extra-authentication.kubernetes.io%2fcredential-id"
            ]
        );
    }

    #[test]
    fn what_the_delegate_reads_back_is_the_caller() {
        let names = RequestHeaderConfig {
            username_headers: vec!["X-Remote-User".into()],
            group_headers: vec!["X-Remote-Group".into()],
            extra_header_prefixes: vec!["X-Remote-Extra-".into()],
            ..Default::default()
        };
        let mut map = http::HeaderMap::new();
        map.extend(caller_headers(&caller(), &names).unwrap());
        let read = super::super::auth::identify(Some("levee"), &map, &names).unwrap();
        assert_eq!(read, caller());
    }

    #[test]
    fn a_caller_that_cannot_be_a_header_value_is_an_error_not_a_forged_header() {
        let broken = Identity {
            user: "alice\r\nX-Remote-Group: system:masters".into(),
            ..Default::default()
        };
        let error = caller_headers(&broken, &RequestHeaderConfig::default()).unwrap_err();
        assert!(error.contains("x-remote-user"), "{error}");
    }

    #[test]
    fn a_client_certificate_file_without_a_certificate_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("tls.key");
        std::fs::write(
            &key,
            "-----BEGIN PRIVATE KEY-----\nAA==\n-----END PRIVATE KEY-----\n",
        )
        .unwrap();
        let error = check_pem(&key, "--delegate-client-cert-file", "CERTIFICATE").unwrap_err();
        assert!(
            error.contains("--delegate-client-cert-file") && error.contains("no PEM CERTIFICATE"),
            "{error}"
        );
        assert!(check_pem(&key, "--delegate-client-key-file", "PRIVATE KEY").is_ok());
        let missing = check_pem(
            &dir.path().join("nope"),
            "--delegate-client-key-file",
            "PRIVATE KEY",
        )
        .unwrap_err();
        assert!(
            missing.contains("reading --delegate-client-key-file"),
            "{missing}"
        );
    }
}
