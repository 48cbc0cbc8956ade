//! The serving certificate of levee's TLS servers (the external metrics API, the KEDA external
//! scaler): from PEM files, re-read when they change as cert-manager rotates them, or self-signed
//! at start.

use rustls::crypto::ring;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

/// How often the certificate files are checked for a change.
const RELOAD_CHECK: Duration = Duration::from_secs(1);

/// Where the serving certificate comes from.
#[derive(Debug)]
pub struct ServingCert {
    files: Option<(PathBuf, PathBuf)>,
    current: Mutex<LoadedCert>,
}

#[derive(Debug)]
struct LoadedCert {
    key: Arc<CertifiedKey>,
    modified: Option<SystemTime>,
    checked: Instant,
}

impl ServingCert {
    /// A certificate and key from PEM files, re-read when the files change.
    pub fn from_files(cert: PathBuf, key: PathBuf) -> Result<Self, String> {
        let loaded = load_files(&cert, &key)?;
        Ok(Self {
            files: Some((cert, key)),
            current: Mutex::new(loaded),
        })
    }

    /// A self-signed certificate for `names` (DNS names or IP addresses).
    pub fn self_signed(names: &[String]) -> Result<Self, String> {
        let key_pair = rcgen::KeyPair::generate().map_err(|e| e.to_string())?;
        let params = rcgen::CertificateParams::new(names.to_vec()).map_err(|e| e.to_string())?;
        let cert = params.self_signed(&key_pair).map_err(|e| e.to_string())?;
        let key = certified_key(cert.pem().as_bytes(), key_pair.serialize_pem().as_bytes())?;
        Ok(Self {
            files: None,
            current: Mutex::new(LoadedCert {
                key,
                modified: None,
                checked: Instant::now(),
            }),
        })
    }

    /// The certificate chain in use, as PEM (for an APIService `caBundle` when self-signed).
    pub fn pem(&self) -> String {
        let current = self.current.lock().expect("cert lock");
        current
            .key
            .cert
            .iter()
            .map(|der| pem_block("CERTIFICATE", der.as_ref()))
            .collect()
    }

    /// The SHA-256 of the certificate in use (`super::pinned`): what peers pin.
    pub fn fingerprint(&self) -> String {
        let key = self.current();
        key.cert
            .first()
            .map(|der| super::pinned::fingerprint(der.as_ref()))
            .unwrap_or_default()
    }

    fn current(&self) -> Arc<CertifiedKey> {
        let mut current = self.current.lock().expect("cert lock");
        if let Some((cert, key)) = &self.files
            && current.checked.elapsed() >= RELOAD_CHECK
        {
            current.checked = Instant::now();
            let modified = modified(cert).max(modified(key));
            if modified != current.modified {
                match load_files(cert, key) {
                    Ok(loaded) => {
                        tracing::info!(cert = %cert.display(), "serving certificate reloaded");
                        *current = loaded;
                    }
                    Err(error) => {
                        tracing::warn!(%error, "serving certificate changed but cannot be loaded; keeping the old one")
                    }
                }
            }
        }
        current.key.clone()
    }
}

impl ResolvesServerCert for ServingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

fn modified(path: &PathBuf) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

fn load_files(cert_path: &PathBuf, key_path: &PathBuf) -> Result<LoadedCert, String> {
    let cert_pem = std::fs::read(cert_path)
        .map_err(|e| format!("reading --tls-cert-file {}: {e}", cert_path.display()))?;
    let key_pem =
        std::fs::read(key_path).map_err(|e| format!("reading --tls-key-file {}: {e}", key_path.display()))?;
    let key = certified_key(&cert_pem, &key_pem)?;
    Ok(LoadedCert {
        key,
        modified: modified(cert_path).max(modified(key_path)),
        checked: Instant::now(),
    })
}

fn certified_key(cert_pem: &[u8], key_pem: &[u8]) -> Result<Arc<CertifiedKey>, String> {
    let chain: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut &cert_pem[..])
        .collect::<Result<_, _>>()
        .map_err(|e| format!("certificate PEM: {e}"))?;
    if chain.is_empty() {
        return Err("the certificate file holds no CERTIFICATE block".into());
    }
    let key: PrivateKeyDer<'static> = rustls_pemfile::private_key(&mut &key_pem[..])
        .map_err(|e| format!("key PEM: {e}"))?
        .ok_or("the key file holds no private key")?;
    let signing_key = ring::sign::any_supported_type(&key).map_err(|e| format!("private key: {e}"))?;
    Ok(Arc::new(CertifiedKey::new(chain, signing_key)))
}

fn pem_block(label: &str, der: &[u8]) -> String {
    use base64::Engine;
    let encoded = base64::engine::general_purpose::STANDARD.encode(der);
    let lines: Vec<&str> = encoded
        .as_bytes()
        .chunks(64)
        .map(|line| std::str::from_utf8(line).expect("base64 is ASCII"))
        .collect();
    format!(
        "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
        lines.join("\n")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_self_signed(dir: &std::path::Path, name: &str) -> Vec<u8> {
        let key_pair = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec![name.to_string()])
            .unwrap()
            .self_signed(&key_pair)
            .unwrap();
        std::fs::write(dir.join("tls.crt"), cert.pem()).unwrap();
        std::fs::write(dir.join("tls.key"), key_pair.serialize_pem()).unwrap();
        cert.der().to_vec()
    }

    #[test]
    fn rotated_certificate_files_are_picked_up() {
        let dir = tempfile::tempdir().unwrap();
        let first = write_self_signed(dir.path(), "first.example");
        let serving =
            ServingCert::from_files(dir.path().join("tls.crt"), dir.path().join("tls.key")).unwrap();
        assert_eq!(serving.current().cert[0].as_ref(), &first[..]);
        std::thread::sleep(Duration::from_millis(1100));
        let second = write_self_signed(dir.path(), "second.example");
        std::thread::sleep(RELOAD_CHECK + Duration::from_millis(100));
        assert_eq!(
            serving.current().cert[0].as_ref(),
            &second[..],
            "the new files are served"
        );
    }

    #[test]
    fn broken_files_are_reported_and_never_replace_a_good_certificate() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("tls.crt"), "not a certificate").unwrap();
        std::fs::write(dir.path().join("tls.key"), "not a key").unwrap();
        let error =
            ServingCert::from_files(dir.path().join("tls.crt"), dir.path().join("tls.key")).unwrap_err();
        assert!(error.contains("no CERTIFICATE"), "{error}");
        let good = write_self_signed(dir.path(), "good.example");
        let serving =
            ServingCert::from_files(dir.path().join("tls.crt"), dir.path().join("tls.key")).unwrap();
        std::thread::sleep(Duration::from_millis(1100));
        std::fs::write(dir.path().join("tls.crt"), "half-written").unwrap();
        std::thread::sleep(RELOAD_CHECK + Duration::from_millis(100));
        assert_eq!(serving.current().cert[0].as_ref(), &good[..]);
    }

    #[test]
    fn self_signed_certificates_cover_the_service_names() {
        let serving =
            ServingCert::self_signed(&["levee.levee-system.svc".into(), "127.0.0.1".into()]).unwrap();
        let pem = serving.pem();
        let der = rustls_pemfile::certs(&mut pem.as_bytes())
            .next()
            .unwrap()
            .unwrap();
        let (_, parsed) = x509_parser::parse_x509_certificate(der.as_ref()).unwrap();
        let names = format!(
            "{:?}",
            parsed
                .subject_alternative_name()
                .unwrap()
                .unwrap()
                .value
                .general_names
        );
        assert!(
            names.contains("DNSName(\"levee.levee-system.svc\")")
                && names.contains("IPAddress([127, 0, 0, 1])"),
            "{names}"
        );
    }
}
