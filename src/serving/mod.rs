//! What levee's TLS servers (the external metrics API, the KEDA external scaler) share: the
//! serving certificate (`cert`) and the accept loop with its connection limits (`listener`),
//! its handshakes taking turns fairly between client addresses (`handshake_turns`); and the
//! client of a peer known by its certificate's fingerprint (`pinned`).

pub mod cert;
pub mod handshake_turns;
pub mod listener;
pub mod pinned;

use rustls::pki_types::CertificateDer;

/// The common name of a (verified) client certificate.
pub fn common_name(cert: &CertificateDer<'_>) -> Option<String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let name = parsed
        .subject()
        .iter_common_name()
        .next()?
        .as_str()
        .ok()?
        .to_string();
    Some(name)
}
