//! TLS for the metrics API: the front-proxy client-certificate verifier, whose CA comes from
//! `extension-apiserver-authentication` and can change at runtime, and the server configuration
//! over the shared serving certificate (`crate::serving::cert`). A client certificate is optional
//! at the TLS layer; without a verified one a request gets 401.

use crate::serving::cert::ServingCert;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::{WebPkiSupportedAlgorithms, ring};
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme};
use std::sync::{Arc, RwLock};

/// Verifies front-proxy client certificates against the current requestheader CA.
#[derive(Debug, Default)]
pub struct RequestHeaderCa {
    verifier: RwLock<Option<Arc<dyn ClientCertVerifier>>>,
}

impl RequestHeaderCa {
    /// Trusts the CA bundle `pem` from now on.
    pub fn set_ca_pem(&self, pem: &str) -> Result<(), String> {
        let mut roots = RootCertStore::empty();
        for cert in rustls_pemfile::certs(&mut pem.as_bytes()) {
            let cert = cert.map_err(|e| format!("requestheader-client-ca-file: {e}"))?;
            roots
                .add(cert)
                .map_err(|e| format!("requestheader-client-ca-file: {e}"))?;
        }
        let verifier =
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots), Arc::new(ring::default_provider()))
                .allow_unauthenticated()
                .build()
                .map_err(|e| format!("requestheader-client-ca-file: {e}"))?;
        *self.verifier.write().expect("verifier lock") = Some(verifier);
        Ok(())
    }

    fn algorithms() -> WebPkiSupportedAlgorithms {
        ring::default_provider().signature_verification_algorithms
    }
}

impl ClientCertVerifier for RequestHeaderCa {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verifier = self.verifier.read().expect("verifier lock").clone();
        match verifier {
            Some(verifier) => verifier.verify_client_cert(end_entity, intermediates, now),
            None => Err(rustls::Error::General(
                "no requestheader client CA is known yet".into(),
            )),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &Self::algorithms())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &Self::algorithms())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        Self::algorithms().supported_schemes()
    }
}

/// The server configuration: our certificate, optional verified client certificates, HTTP/1.1.
pub fn server_config(
    cert: Arc<ServingCert>,
    client_ca: Arc<RequestHeaderCa>,
) -> Result<rustls::ServerConfig, String> {
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_client_cert_verifier(client_ca)
        .with_cert_resolver(cert);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}
