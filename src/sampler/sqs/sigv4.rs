//! AWS Signature Version 4 for the few requests levee sends (SQS's `GetQueueAttributes`, STS's
//! web-identity exchange): the canonical request, the string to sign, the signing key derived
//! from the secret by date, region and service, and the `Authorization` header. Written with
//! `ring` (levee's one crypto library) rather than the `aws-sigv4` crate, which brings 22 crates
//! of its own, a second crypto stack among them. Checked against cases of AWS's signing test
//! suite (below) and, with the backend, against an SQS-compatible server's own verification.

use ring::{digest, hmac};
use std::fmt::Write as _;

/// An AWS identity: an access key, its secret, and for temporary credentials the session token.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: Option<String>,
}

impl std::fmt::Debug for Credentials {
    /// The key id only: never the secret or the token.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("access_key_id", &self.access_key_id)
            .finish_non_exhaustive()
    }
}

/// What is signed of a request.
pub struct Request<'a> {
    pub method: &'a str,
    /// The path, already in canonical form (`/`, or `/123456789012/orders`).
    pub path: &'a str,
    /// The query parameters, unencoded.
    pub query: &'a [(&'a str, &'a str)],
    /// The headers to sign, `host` among them (names in any case).
    pub headers: &'a [(&'a str, &'a str)],
    pub body: &'a [u8],
}

/// Where the signature is valid: the region and the service (`sqs`, `sts`).
pub struct Scope<'a> {
    pub region: &'a str,
    pub service: &'a str,
}

/// The headers to add to `request` to sign it at `at`: `x-amz-date`, `x-amz-security-token`
/// (with temporary credentials) and `authorization`.
pub fn sign(
    request: &Request<'_>,
    credentials: &Credentials,
    scope: &Scope<'_>,
    at: jiff::Timestamp,
) -> Vec<(&'static str, String)> {
    let time = at.strftime("%Y%m%dT%H%M%SZ").to_string();
    let date = &time[..8];
    let mut added = vec![("x-amz-date", time.clone())];
    if let Some(token) = &credentials.session_token {
        added.push(("x-amz-security-token", token.clone()));
    }
    let mut headers: Vec<(String, String)> = request
        .headers
        .iter()
        .map(|(name, value)| (name.to_ascii_lowercase(), canonical_value(value)))
        .chain(
            added
                .iter()
                .map(|(name, value)| (name.to_string(), value.clone())),
        )
        .collect();
    headers.sort();
    let signed_headers = headers
        .iter()
        .map(|(name, _)| name.as_str())
        .collect::<Vec<_>>()
        .join(";");
    let canonical = canonical_request(request, &headers, &signed_headers);
    let credential_scope = format!("{date}/{}/{}/aws4_request", scope.region, scope.service);
    let to_sign = format!(
        "AWS4-HMAC-SHA256\n{time}\n{credential_scope}\n{}",
        hex(digest::digest(&digest::SHA256, canonical.as_bytes()).as_ref())
    );
    let key = signing_key(&credentials.secret_access_key, date, scope);
    let signature = hex(hmac::sign(&key, to_sign.as_bytes()).as_ref());
    added.push((
        "authorization",
        format!(
            "AWS4-HMAC-SHA256 Credential={}/{credential_scope}, SignedHeaders={signed_headers}, Signature={signature}",
            credentials.access_key_id
        ),
    ));
    added
}

/// The canonical request: method, path, sorted and encoded query, the headers as
/// `name:value` lines, the signed header names, and the body's SHA-256.
fn canonical_request(request: &Request<'_>, headers: &[(String, String)], signed_headers: &str) -> String {
    let mut query: Vec<(String, String)> = request
        .query
        .iter()
        .map(|(name, value)| (encode(name), encode(value)))
        .collect();
    query.sort();
    let query = query
        .iter()
        .map(|(name, value)| format!("{name}={value}"))
        .collect::<Vec<_>>()
        .join("&");
    let mut text = format!("{}\n{}\n{query}\n", request.method, request.path);
    for (name, value) in headers {
        let _ = writeln!(text, "{name}:{value}");
    }
    let _ = write!(
        text,
        "\n{signed_headers}\n{}",
        hex(digest::digest(&digest::SHA256, request.body).as_ref())
    );
    text
}

/// A header's value as signed: trimmed, inner runs of spaces as one.
fn canonical_value(value: &str) -> String {
    value.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// RFC 3986 percent-encoding: the unreserved characters kept, every other byte `%XX`.
fn encode(text: &str) -> String {
    let mut encoded = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            encoded.push(char::from(byte));
        } else {
            let _ = write!(encoded, "%{byte:02X}");
        }
    }
    encoded
}

/// The key that signs requests of `date` (YYYYMMDD) for `scope`.
fn signing_key(secret: &str, date: &str, scope: &Scope<'_>) -> hmac::Key {
    let step = |key: &[u8], data: &str| hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), data.as_bytes());
    let k_date = step(format!("AWS4{secret}").as_bytes(), date);
    let k_region = step(k_date.as_ref(), scope.region);
    let k_service = step(k_region.as_ref(), scope.service);
    let k_signing = step(k_service.as_ref(), "aws4_request");
    hmac::Key::new(hmac::HMAC_SHA256, k_signing.as_ref())
}

fn hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut text, byte| {
            let _ = write!(text, "{byte:02x}");
            text
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The identity, scope and time of AWS's signing test suite (`aws-signing-test-suite/v4`).
    fn example(session_token: Option<&str>) -> (Credentials, Scope<'static>, jiff::Timestamp) {
        (
            Credentials {
                access_key_id: "AKIDEXAMPLE".into(),
                secret_access_key: "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY".into(),
                session_token: session_token.map(str::to_string),
            },
            Scope {
                region: "us-east-1",
                service: "service",
            },
            "2015-08-30T12:36:00Z".parse().unwrap(),
        )
    }

    fn authorization(added: &[(&'static str, String)]) -> String {
        added
            .iter()
            .find(|(name, _)| *name == "authorization")
            .map(|(_, value)| value.clone())
            .unwrap()
    }

    /// The suite's `get-vanilla`.
    #[test]
    fn get_vanilla_signs_as_aws_does() {
        let (credentials, scope, at) = example(None);
        let request = Request {
            method: "GET",
            path: "/",
            query: &[],
            headers: &[("Host", "example.amazonaws.com")],
            body: b"",
        };
        let added = sign(&request, &credentials, &scope, at);
        assert_eq!(added[0], ("x-amz-date", "20150830T123600Z".to_string()));
        assert_eq!(
            authorization(&added),
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date, Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"
        );
    }

    /// The suite's `post-x-www-form-urlencoded` (the body's hash signed as a header, as the
    /// suite does), and its canonical request line by line.
    #[test]
    fn a_post_with_a_body_signs_as_aws_does() {
        let (credentials, scope, at) = example(None);
        let body_hash = "9095672bbd1f56dfc5b65f3e153adc8731a4a654192329106275f4c7b24d0b6e";
        let headers = [
            ("Content-Type", "application/x-www-form-urlencoded"),
            ("Host", "example.amazonaws.com"),
            ("Content-Length", "13"),
            ("x-amz-content-sha256", body_hash),
        ];
        let request = Request {
            method: "POST",
            path: "/",
            query: &[],
            headers: &headers,
            body: b"Param1=value1",
        };
        let added = sign(&request, &credentials, &scope, at);
        assert!(
            authorization(&added).ends_with("SignedHeaders=content-length;content-type;host;x-amz-content-sha256;x-amz-date, Signature=d3875051da38690788ef43de4db0d8f280229d82040bfac253562e56c3f20e0b"),
            "{}",
            authorization(&added)
        );
        let mut all: Vec<(String, String)> = headers
            .iter()
            .map(|(n, v)| (n.to_ascii_lowercase(), v.to_string()))
            .chain([("x-amz-date".to_string(), "20150830T123600Z".to_string())])
            .collect();
        all.sort();
        let signed = "content-length;content-type;host;x-amz-content-sha256;x-amz-date";
        assert_eq!(
            canonical_request(&request, &all, signed),
            format!(
                "POST\n/\n\ncontent-length:13\ncontent-type:application/x-www-form-urlencoded\nhost:example.amazonaws.com\nx-amz-content-sha256:{body_hash}\nx-amz-date:20150830T123600Z\n\n{signed}\n{body_hash}"
            )
        );
    }

    /// The suite's `get-vanilla-with-session-token`: the token is signed and sent.
    #[test]
    fn a_session_token_is_signed_as_aws_does() {
        let token = "6e86291e8372ff2a2260956d9b8aae1d763fbf315fa00fa31553b73ebf194267";
        let (credentials, scope, at) = example(Some(token));
        let request = Request {
            method: "GET",
            path: "/",
            query: &[],
            headers: &[("Host", "example.amazonaws.com")],
            body: b"",
        };
        let added = sign(&request, &credentials, &scope, at);
        assert!(added.contains(&("x-amz-security-token", token.to_string())));
        assert!(
            authorization(&added).ends_with("SignedHeaders=host;x-amz-date;x-amz-security-token, Signature=07ec1639c89043aa0e3e2de82b96708f198cceab042d4a97044c66dd9f74e7f8")
        );
    }

    #[test]
    fn query_parameters_are_encoded_and_sorted_and_the_secret_never_printed() {
        let request = Request {
            method: "GET",
            path: "/",
            query: &[("b", "x y"), ("a", "1/2")],
            headers: &[],
            body: b"",
        };
        let text = canonical_request(&request, &[], "");
        assert!(text.starts_with("GET\n/\na=1%2F2&b=x%20y\n"), "{text}");
        let (credentials, _, _) = example(Some("token"));
        let shown = format!("{credentials:?}");
        assert!(
            !shown.contains("EXAMPLEKEY") && !shown.contains("token"),
            "{shown}"
        );
    }
}
