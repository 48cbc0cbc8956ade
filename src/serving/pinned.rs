//! A GET over TLS to a server known by the SHA-256 of its certificate rather than by a CA:
//! levee's replicas publish that of their serving certificate on their ring Lease, and a peer
//! accepts exactly that certificate, whichever way it was made (the chart's CA, cert-manager,
//! self-signed). Bounded in bytes here and in time by the caller. The verifier also serves the
//! sampler's `insecureSkipVerify` (any certificate).

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, ring};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use std::sync::Arc;

/// The SHA-256 of a DER certificate, in lower-case hex.
pub fn fingerprint(der: &[u8]) -> String {
    let digest = ::ring::digest::digest(&::ring::digest::SHA256, der);
    digest.as_ref().iter().map(|byte| format!("{byte:02x}")).collect()
}

/// Which server certificate a TLS client accepts: the one whose SHA-256 is `pinned`, or any
/// (`None`: a policy's `insecureSkipVerify`). The handshake's signatures are checked against
/// the certificate presented either way.
#[derive(Debug)]
pub struct AcceptedCertificate {
    pinned: Option<String>,
    provider: Arc<CryptoProvider>,
}

impl AcceptedCertificate {
    /// Any certificate, any name.
    pub fn any(provider: Arc<CryptoProvider>) -> Self {
        Self {
            pinned: None,
            provider,
        }
    }

    /// Only the certificate whose SHA-256 (hex) is `fingerprint`.
    pub fn pinned(fingerprint: &str, provider: Arc<CryptoProvider>) -> Self {
        Self {
            pinned: Some(fingerprint.to_ascii_lowercase()),
            provider,
        }
    }
}

impl ServerCertVerifier for AcceptedCertificate {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match &self.pinned {
            Some(pinned) if fingerprint(end_entity.as_ref()) != *pinned => Err(rustls::Error::General(
                "the server's certificate is not the one its Lease names".into(),
            )),
            _ => Ok(ServerCertVerified::assertion()),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// What a server answered.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub body: Bytes,
}

/// `GET url` with `Authorization: Bearer <bearer>` from the server whose certificate has
/// `fingerprint`; a body over `max_bytes` is an error.
pub async fn get(
    url: &http::Uri,
    fingerprint: &str,
    bearer: &str,
    max_bytes: usize,
) -> Result<Answer, String> {
    if url.scheme_str() != Some("https") {
        return Err(format!("{url} is not an https:// URL"));
    }
    let host = url.host().ok_or_else(|| format!("{url} names no host"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port = url.port_u16().unwrap_or(443);
    let tcp = tokio::net::TcpStream::connect((host, port))
        .await
        .map_err(|e| format!("connecting to {host}:{port}: {e}"))?;
    let provider = Arc::new(ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptedCertificate::pinned(fingerprint, provider)))
        .with_no_client_auth();
    // The name is not checked (the fingerprint is); it is only what the handshake carries.
    let name = ServerName::try_from("levee-peer").expect("a valid DNS name");
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|e| format!("TLS with {host}:{port}: {e}"))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .map_err(|e| e.to_string())?;
    let driver = tokio::spawn(connection);
    let path = url.path_and_query().map_or("/", |p| p.as_str());
    let request = http::Request::get(path)
        .header(http::header::HOST, url.authority().map_or(host, |a| a.as_str()))
        .header(http::header::AUTHORIZATION, format!("Bearer {bearer}"))
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    let answered = async {
        let response = sender.send_request(request).await.map_err(|e| e.to_string())?;
        let status = response.status().as_u16();
        let body = Limited::new(response.into_body(), max_bytes)
            .collect()
            .await
            .map_err(|e| format!("reading the answer (at most {max_bytes} bytes): {e}"))?
            .to_bytes();
        Ok(Answer { status, body })
    }
    .await;
    driver.abort();
    answered
}

#[cfg(test)]
mod tests {
    use super::fingerprint;

    #[test]
    fn a_fingerprint_is_the_hex_sha256() {
        assert_eq!(
            fingerprint(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
