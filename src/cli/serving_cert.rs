//! `levee serving-cert`: a CA and a serving certificate for the metrics API, printed as the
//! Kubernetes objects that use them, for installs without Helm (`manifests/`):
//! `levee serving-cert --namespace levee-system | kubectl apply -f -` creates the TLS Secret the
//! pods mount and gives the APIService the CA in its `caBundle`, so the aggregator verifies levee
//! (no `insecureSkipTLSVerify`). The CA's key is never printed: nothing can sign with it later.

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use serde_json::{Value, json};
use std::process::ExitCode;

/// The flags of `levee serving-cert`.
#[derive(Clone, Debug, clap::Args)]
pub struct ServingCertArgs {
    /// Namespace levee runs in (its Service and the Secret live there).
    #[arg(long, short = 'n', default_value = "levee-system")]
    pub namespace: String,
    /// Name of levee's Service; the Secret is `<name>-tls`.
    #[arg(long, default_value = "levee")]
    pub name: String,
    /// Days the certificates are valid.
    #[arg(long, default_value_t = 3650)]
    pub days: u32,
}

/// Prints the Secret and the APIService as YAML; exit 1 when the certificates cannot be made.
pub fn run(args: &ServingCertArgs, out: &mut impl std::io::Write) -> ExitCode {
    match objects(args) {
        Ok(objects) => {
            let list = json!({"apiVersion": "v1", "kind": "List", "items": objects});
            let yaml = serde_yaml::to_string(&list).expect("JSON values serialize as YAML");
            let _ = write!(out, "{yaml}");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("levee serving-cert: {error}");
            ExitCode::from(super::EXIT_PROBLEM)
        }
    }
}

/// The service's DNS names the aggregator may dial.
pub fn service_names(name: &str, namespace: &str) -> Vec<String> {
    vec![
        name.to_string(),
        format!("{name}.{namespace}"),
        format!("{name}.{namespace}.svc"),
        format!("{name}.{namespace}.svc.cluster.local"),
    ]
}

fn objects(args: &ServingCertArgs) -> Result<Vec<Value>, rcgen::Error> {
    use base64::Engine;
    let (ca_pem, cert_pem, key_pem) = certificates(args)?;
    let b64 = |pem: &str| base64::engine::general_purpose::STANDARD.encode(pem);
    let labels = json!({"app.kubernetes.io/name": "levee", "app.kubernetes.io/instance": args.name});
    Ok(vec![
        json!({
            "apiVersion": "v1",
            "kind": "Secret",
            "type": "kubernetes.io/tls",
            "metadata": {"name": format!("{}-tls", args.name), "namespace": args.namespace, "labels": labels},
            "data": {"ca.crt": b64(&ca_pem), "tls.crt": b64(&cert_pem), "tls.key": b64(&key_pem)},
        }),
        json!({
            "apiVersion": "apiregistration.k8s.io/v1",
            "kind": "APIService",
            "metadata": {"name": "v1beta1.external.metrics.k8s.io", "labels": labels},
            "spec": {
                "group": "external.metrics.k8s.io",
                "version": "v1beta1",
                "groupPriorityMinimum": 100,
                "versionPriority": 100,
                "service": {"name": args.name, "namespace": args.namespace, "port": 443},
                "caBundle": b64(&ca_pem),
            },
        }),
    ])
}

/// `(CA certificate, serving certificate, serving key)` as PEM.
fn certificates(args: &ServingCertArgs) -> Result<(String, String, String), rcgen::Error> {
    let now = jiff::Timestamp::now();
    let until = now + jiff::SignedDuration::from_hours(24 * i64::from(args.days));
    let date = |t: jiff::Timestamp| {
        let d = t.to_zoned(jiff::tz::TimeZone::UTC).date();
        rcgen::date_time_ymd(i32::from(d.year()), d.month() as u8, d.day() as u8)
    };
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.distinguished_name
        .push(DnType::CommonName, format!("{}-ca", args.name));
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca.not_before = date(now);
    ca.not_after = date(until);
    let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate()?)?;
    let names = service_names(&args.name, &args.namespace);
    let mut serving = CertificateParams::new(names.clone())?;
    serving
        .distinguished_name
        .push(DnType::CommonName, names.last().cloned().unwrap_or_default());
    serving.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    serving.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    serving.not_before = date(now);
    serving.not_after = date(until);
    let key = KeyPair::generate()?;
    let cert = serving.signed_by(&key, &ca)?;
    Ok((ca.pem(), cert.pem(), key.serialize_pem()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ca_in_the_api_service_signed_the_secret_certificate_for_the_service_names() {
        let args = ServingCertArgs {
            namespace: "levee-system".into(),
            name: "levee".into(),
            days: 30,
        };
        let mut out = Vec::new();
        assert_eq!(run(&args, &mut out), ExitCode::SUCCESS);
        let list: Value = serde_yaml::from_slice(&out).unwrap();
        let (secret, service) = (&list["items"][0], &list["items"][1]);
        assert_eq!(secret["metadata"]["name"], "levee-tls");
        assert_eq!(secret["data"]["ca.crt"], service["spec"]["caBundle"]);
        assert!(service["spec"].get("insecureSkipTLSVerify").is_none());
        use base64::Engine;
        let decode = |v: &Value| {
            String::from_utf8(
                base64::engine::general_purpose::STANDARD
                    .decode(v.as_str().unwrap())
                    .unwrap(),
            )
            .unwrap()
        };
        let ca_der = rustls_pemfile::certs(&mut decode(&secret["data"]["ca.crt"]).as_bytes())
            .next()
            .unwrap()
            .unwrap();
        let cert_der = rustls_pemfile::certs(&mut decode(&secret["data"]["tls.crt"]).as_bytes())
            .next()
            .unwrap()
            .unwrap();
        let (_, ca) = x509_parser::parse_x509_certificate(&ca_der).unwrap();
        assert!(ca.is_ca());
        // What the aggregator does: verify the serving certificate for the Service's name,
        // trusting only the caBundle.
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca_der).unwrap();
        use rustls::client::danger::ServerCertVerifier;
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(roots.into(), provider)
            .build()
            .unwrap();
        let name = rustls::pki_types::ServerName::try_from("levee.levee-system.svc").unwrap();
        let now = rustls::pki_types::UnixTime::now();
        verifier
            .verify_server_cert(&cert_der, &[], &name, &[], now)
            .expect("the aggregator accepts it");
        let other = rustls::pki_types::ServerName::try_from("evil.example.com").unwrap();
        assert!(
            verifier
                .verify_server_cert(&cert_der, &[], &other, &[], now)
                .is_err()
        );
        assert!(decode(&secret["data"]["tls.key"]).contains("PRIVATE KEY"));
    }
}
