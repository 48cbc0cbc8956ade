//! A NATS policy's endpoint from its spec and its credentials. The Secret's keys say how levee
//! proves itself: `creds` (a `.creds` file, as `nsc generate creds` writes it), else `nkey` (a
//! user nkey seed, `SU…`), else with `usernameKey` a user and password, else the password key's
//! value is the server's token.

use super::{NatsAuth, NatsEndpoint, nkey};
use crate::api::NatsSpec;
use crate::sampler::credentials::{Credential, EndpointProblem, EndpointSource};

const FIELD: &str = "spec.nats.credentialsSecretRef";

/// The endpoint `spec` names, with the credentials `source` gives.
pub async fn resolve(spec: &NatsSpec, source: &impl EndpointSource) -> Result<NatsEndpoint, EndpointProblem> {
    let auth = match &spec.credentials_secret_ref {
        Some(reference) => auth(&reference.name, reference, source).await?,
        None => NatsAuth::None,
    };
    let mut endpoint = NatsEndpoint::from_spec(spec, auth).map_err(|error| EndpointProblem {
        reason: "InvalidNatsUrl",
        message: format!("spec.nats.url: {error}"),
    })?;
    if let Some(ca) = spec.tls.as_ref().and_then(|tls| tls.ca_secret_ref.as_ref()) {
        let credential = Credential::CaBundle { key: &ca.key };
        if let Some(pem) = source
            .get(&ca.name, credential, "spec.nats.tls.caSecretRef")
            .await?
        {
            endpoint = endpoint.with_ca(pem.into_bytes());
        }
    }
    if let Some(reference) = &spec.credentials_secret_ref {
        source
            .allows(&reference.name, &endpoint.server, "spec.nats.url")
            .await?;
    }
    Ok(endpoint)
}

async fn auth(
    secret: &str,
    reference: &crate::api::CredentialsSecretRef,
    source: &impl EndpointSource,
) -> Result<NatsAuth, EndpointProblem> {
    let invalid = |credential: Credential<'_>, message: String| EndpointProblem {
        reason: "InvalidNatsCredentials",
        message: format!("{FIELD}: {}: {message}", source.origin(secret, credential)),
    };
    if source.holds(secret, Credential::NatsCreds, FIELD).await? {
        let Some(text) = source.get(secret, Credential::NatsCreds, FIELD).await? else {
            return Ok(NatsAuth::None);
        };
        let (jwt, seed) =
            nkey::parse_creds(&text).map_err(|e| invalid(Credential::NatsCreds, e.to_string()))?;
        nkey::UserKey::from_seed(&seed)
            .map_err(|e| invalid(Credential::NatsCreds, format!("the seed: {e}")))?;
        return Ok(NatsAuth::Credentials { jwt, seed });
    }
    if source.holds(secret, Credential::NatsNkey, FIELD).await? {
        let Some(seed) = source.get(secret, Credential::NatsNkey, FIELD).await? else {
            return Ok(NatsAuth::None);
        };
        let seed = seed.trim().to_string();
        nkey::UserKey::from_seed(&seed).map_err(|e| invalid(Credential::NatsNkey, e.to_string()))?;
        return Ok(NatsAuth::Nkey { seed });
    }
    let password = Credential::Password {
        key: &reference.password_key,
    };
    let Some(password) = source.get(secret, password, FIELD).await? else {
        return Ok(NatsAuth::None);
    };
    Ok(match &reference.username_key {
        Some(key) => match source.get(secret, Credential::Username { key }, FIELD).await? {
            Some(user) => NatsAuth::UserPassword { user, password },
            None => NatsAuth::Token(password),
        },
        None => NatsAuth::Token(password),
    })
}

/// The Secrets `spec` reads: its credentials and its CA.
pub fn secrets(spec: &NatsSpec) -> Vec<&str> {
    let credentials = spec.credentials_secret_ref.as_ref().map(|r| r.name.as_str());
    let ca = spec.tls.as_ref().and_then(|tls| tls.ca_secret_ref.as_ref());
    credentials
        .into_iter()
        .chain(ca.map(|r| r.name.as_str()))
        .collect()
}
