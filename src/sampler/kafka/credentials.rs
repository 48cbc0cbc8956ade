//! A Kafka policy's endpoint from its spec and its credentials: the SASL username
//! (`usernameKey`, default `username`) and password. The password goes to the bootstrap servers
//! (each allowed by the source: a Secret's hosts annotation) and to the brokers the cluster's
//! own metadata names.

use super::{KafkaEndpoint, SaslAuth};
use crate::api::KafkaSpec;
use crate::sampler::credentials::{Credential, EndpointProblem, EndpointSource};

const FIELD: &str = "spec.kafka.sasl.credentialsSecretRef";

/// The endpoint `spec` names, with the credentials `source` gives.
pub async fn resolve(
    spec: &KafkaSpec,
    source: &impl EndpointSource,
) -> Result<KafkaEndpoint, EndpointProblem> {
    let mut sasl = None;
    if let Some(config) = &spec.sasl {
        let reference = &config.credentials_secret_ref;
        let secret = &reference.name;
        let key = reference.username_key.as_deref().unwrap_or("username");
        let username = source.get(secret, Credential::Username { key }, FIELD).await?;
        let password = Credential::Password {
            key: &reference.password_key,
        };
        let Some(password) = source.get(secret, password, FIELD).await? else {
            return Err(EndpointProblem {
                reason: "SecretKeyMissing",
                message: format!(
                    "{FIELD}: SASL {:?} needs a password: {}",
                    config.mechanism,
                    source.origin(secret, password)
                ),
            });
        };
        sasl = Some(SaslAuth {
            mechanism: config.mechanism,
            username: username.unwrap_or_default(),
            password,
        });
    }
    let mut endpoint = KafkaEndpoint::from_spec(spec, sasl).map_err(|error| EndpointProblem {
        reason: "InvalidKafkaServers",
        message: format!("spec.kafka.bootstrapServers: {error}"),
    })?;
    if let Some(ca) = spec.tls.as_ref().and_then(|tls| tls.ca_secret_ref.as_ref()) {
        let credential = Credential::CaBundle { key: &ca.key };
        if let Some(pem) = source
            .get(&ca.name, credential, "spec.kafka.tls.caSecretRef")
            .await?
        {
            endpoint = endpoint.with_ca(pem.into_bytes());
        }
    }
    if let Some(config) = &spec.sasl {
        for server in &endpoint.bootstrap {
            let secret = &config.credentials_secret_ref.name;
            source
                .allows(secret, server, "spec.kafka.bootstrapServers")
                .await?;
        }
    }
    Ok(endpoint)
}

/// The Secrets `spec` reads: its SASL credentials and its CA.
pub fn secrets(spec: &KafkaSpec) -> Vec<&str> {
    let credentials = spec
        .sasl
        .as_ref()
        .map(|sasl| sasl.credentials_secret_ref.name.as_str());
    let ca = spec.tls.as_ref().and_then(|tls| tls.ca_secret_ref.as_ref());
    credentials
        .into_iter()
        .chain(ca.map(|r| r.name.as_str()))
        .collect()
}

/// Policies of one cluster tick together, on one grid, so that the sampler reads them in one
/// cluster tick (`batch.rs`): what names the cluster.
pub fn tick_grid(spec: &KafkaSpec) -> String {
    spec.bootstrap_servers.join(",")
}
