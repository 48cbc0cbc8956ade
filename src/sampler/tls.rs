//! TLS clients' settings, the same for every backend: the policy's CA bundle (or the system's
//! roots), or no verification with `insecureSkipVerify`.

use crate::serving::pinned::AcceptedCertificate;
use rustls::pki_types::ServerName;
use std::sync::Arc;
use tokio::net::TcpStream;

/// TLS to a Kafka broker or a NATS server: the CA bundle (the system's roots without it), or no
/// verification.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct TlsSettings {
    pub ca_pem: Option<Vec<u8>>,
    pub insecure_skip_verify: bool,
}

impl TlsSettings {
    /// `tcp`, dialled to `host` at `address`, wrapped in TLS; a failure names `field` (the
    /// policy's `tls`) and says what to check.
    pub async fn wrap(
        &self,
        tcp: TcpStream,
        host: &str,
        address: &str,
        field: &str,
    ) -> Result<tokio_rustls::client::TlsStream<TcpStream>, String> {
        let config = client_tls_config(self.ca_pem.as_deref(), self.insecure_skip_verify)
            .map_err(|e| format!("{field}: {e}"))?;
        let name = ServerName::try_from(host.to_string())
            .map_err(|e| format!("{host} is not a name TLS can verify: {e}"))?;
        tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
            .map_err(|e| {
                format!(
                    "TLS handshake with {address}: {e}: check {field}.caSecretRef holds the CA that signed its certificate"
                )
            })
    }
}

/// A TLS client's settings: `ca_pem`'s certificates as the roots (the system's without it), or
/// with `insecure_skip_verify` any certificate (the handshake's signatures still checked). Used
/// for Redis, Kafka and NATS alike.
pub fn client_tls_config(
    ca_pem: Option<&[u8]>,
    insecure_skip_verify: bool,
) -> Result<rustls::ClientConfig, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    if insecure_skip_verify {
        return Ok(builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptedCertificate::any(provider)))
            .with_no_client_auth());
    }
    let mut roots = rustls::RootCertStore::empty();
    match ca_pem {
        Some(mut pem) => {
            for cert in rustls_pemfile::certs(&mut pem) {
                let cert = cert.map_err(|e| format!("the CA bundle does not parse: {e}"))?;
                roots
                    .add(cert)
                    .map_err(|e| format!("the CA bundle holds an unusable certificate: {e}"))?;
            }
            if roots.is_empty() {
                return Err("the CA bundle holds no PEM certificate".into());
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(found.certs);
        }
    }
    Ok(builder.with_root_certificates(roots).with_no_client_auth())
}
