//! A Redis endpoint as a policy names it: mode, URL, credentials and TLS. Equal endpoints share
//! their connections. The password never appears in `Debug`, `Display` or error messages.

use crate::api::{RedisMode, RedisSpec, redact_password};
use crate::sampler::NodeAddr;
use redis::{IntoConnectionInfo, RedisConnectionInfo};
use std::fmt;
use std::time::Duration;

/// Username and password for Redis AUTH.
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct Credentials {
    pub username: Option<String>,
    pub password: Option<String>,
}

/// Everything needed to reach one Redis deployment.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Endpoint {
    pub mode: RedisMode,
    url: url::Url,
    pub sentinel_master: Option<String>,
    pub credentials: Credentials,
    /// PEM CA bundle that signed the server certificate (`rediss://` only).
    pub ca_pem: Option<Vec<u8>>,
    pub insecure_skip_verify: bool,
    pub timeout: Duration,
    /// The bound on one reply, whatever the server sends (`--max-reply-bytes`).
    pub max_reply_bytes: usize,
}

/// A Redis URL that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("redis url {url}: {reason}")]
pub struct UrlError {
    url: String,
    reason: String,
}

impl Endpoint {
    /// The endpoint of a policy's `spec.redis`, with credentials and CA resolved by the caller.
    /// `url_override` replaces `spec.redis.url` (it may carry a password, e.g. on the CLI).
    pub fn from_spec(
        spec: &RedisSpec,
        url_override: Option<&str>,
        credentials: Credentials,
        ca_pem: Option<Vec<u8>>,
    ) -> Result<Self, UrlError> {
        let text = url_override.unwrap_or(&spec.url);
        let url = parse_url(text)?;
        let mut credentials = credentials;
        if credentials.password.is_none()
            && let Some(password) = url.password()
        {
            credentials.password = Some(percent_decode(password));
            if !url.username().is_empty() {
                credentials.username = Some(percent_decode(url.username()));
            }
        }
        Ok(Self {
            mode: spec.mode,
            url,
            sentinel_master: spec.sentinel_master.clone(),
            credentials,
            ca_pem,
            insecure_skip_verify: spec.tls.as_ref().is_some_and(|tls| tls.insecure_skip_verify),
            timeout: spec.timeout.into(),
            max_reply_bytes: super::bounded_reply::DEFAULT_MAX_REPLY_BYTES,
        })
    }

    /// The host and port the URL names (a sentinel in Sentinel mode, a seed node in Cluster mode).
    pub fn seed(&self) -> NodeAddr {
        NodeAddr {
            host: self
                .url
                .host_str()
                .unwrap_or("127.0.0.1")
                .trim_matches(['[', ']'])
                .to_string(),
            port: self.url.port().unwrap_or(6379),
        }
    }

    pub(super) fn uses_tls(&self) -> bool {
        self.url.scheme() == "rediss"
    }

    /// The database number from the URL path.
    pub fn db(&self) -> i64 {
        self.url.path().trim_start_matches('/').parse().unwrap_or(0)
    }

    /// The client's handshake settings for `node`: this endpoint's database and credentials
    /// (the transport, TCP or TLS, is `dial.rs`'s).
    pub fn connection_info(&self, node: &NodeAddr, db: i64, authenticate: bool) -> RedisConnectionInfo {
        let base = format!("redis://{}/", node.authority())
            .into_connection_info()
            .expect("a host:port URL is a valid connection info");
        let mut redis = base.redis_settings().clone().set_db(db);
        if authenticate {
            if let Some(username) = &self.credentials.username {
                redis = redis.set_username(username);
            }
            if let Some(password) = &self.credentials.password {
                redis = redis.set_password(password);
            }
        }
        redis
    }
}

/// The URL without userinfo: safe for logs, status and error messages.
impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut shown = self.url.clone();
        let _ = shown.set_password(None);
        let _ = shown.set_username("");
        f.write_str(shown.as_str())
    }
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Endpoint({:?} {self})", self.mode)
    }
}

fn parse_url(text: &str) -> Result<url::Url, UrlError> {
    let error = |reason: &str| UrlError {
        url: redact_password(text),
        reason: reason.to_string(),
    };
    let url = url::Url::parse(text).map_err(|e| error(&format!("{e}: expected redis://host:port/db")))?;
    if !matches!(url.scheme(), "redis" | "rediss") {
        return Err(error(&format!(
            "scheme {:?} is not redis or rediss",
            url.scheme()
        )));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(error("it names no host: expected redis://host:port/db"));
    }
    let path = url.path().trim_start_matches('/');
    if !path.is_empty() && path.parse::<u16>().is_err() {
        return Err(error(&format!("database {path:?} is not a number")));
    }
    Ok(url)
}

/// A URL's user or password as it was before percent-encoding. Not form decoding: in a URL's
/// userinfo `+` is a plus and `&` an ampersand, as redis-cli and redis-rs read them.
fn percent_decode(text: &str) -> String {
    percent_encoding::percent_decode_str(text)
        .decode_utf8_lossy()
        .into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(url: &str) -> RedisSpec {
        serde_json::from_value(serde_json::json!({ "url": url })).unwrap()
    }

    #[test]
    fn display_and_errors_never_show_the_password() {
        let endpoint = Endpoint::from_spec(
            &spec("redis://x"),
            Some("redis://bob:s3cret@10.0.0.1:7000/2"),
            Credentials::default(),
            None,
        )
        .unwrap();
        assert_eq!(endpoint.to_string(), "redis://10.0.0.1:7000/2");
        assert!(!format!("{endpoint:?}").contains("s3cret"));
        assert_eq!(endpoint.credentials.password.as_deref(), Some("s3cret"));
        assert_eq!(endpoint.credentials.username.as_deref(), Some("bob"));
        assert_eq!(endpoint.db(), 2);
        let error = Endpoint::from_spec(
            &spec("redis://x"),
            Some("redis://bob:s3cret@host:99999"),
            Credentials::default(),
            None,
        )
        .unwrap_err()
        .to_string();
        assert!(!error.contains("s3cret"), "{error}");
        assert!(error.contains("bob:***@"), "{error}");
    }

    #[test]
    fn typos_in_the_url_are_named() {
        for (url, needle) in [
            ("redis//localhost:6379", "expected redis://host:port/db"),
            ("http://localhost:6379", "is not redis or rediss"),
            ("redis://localhost:6379/zero", "database \"zero\" is not a number"),
            ("redis://localhost:99999", "invalid port"),
        ] {
            let error = Endpoint::from_spec(&spec(url), None, Credentials::default(), None)
                .unwrap_err()
                .to_string();
            assert!(error.contains(needle), "{url}: {error}");
        }
    }

    #[test]
    fn ipv6_hosts_keep_their_brackets_in_authority_only() {
        let endpoint =
            Endpoint::from_spec(&spec("redis://[::1]:6380"), None, Credentials::default(), None).unwrap();
        let seed = endpoint.seed();
        assert_eq!(seed.host, "::1");
        assert_eq!(seed.to_string(), "[::1]:6380");
    }
}
