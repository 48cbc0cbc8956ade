//! An opted-in Secret as levee parses it from the API server's JSON (`StoredSecret`) and as a
//! replica keeps it (`KeptSecret`, made by `trim::secret`): its name, version and host
//! annotations, and of its values only a bounded part. Every replica holds every opted-in Secret,
//! and anyone who may write Secrets in a namespace may label them: kept whole, 200 Secrets of
//! 1 MiB held 200 MiB on each replica (issue 39).
//!
//! The bounds, and why:
//! - [`VALUES_BOUND`], 64 KiB of a Secret's values, its smallest first. What levee reads of a
//!   Secret is a password, a username, an nkey seed (58 bytes), a `.creds` file (about 1 KiB) or
//!   a PEM CA bundle (1–2 KiB a certificate: 64 KiB is some 40 CAs). A backend's CA bundle names
//!   the few CAs that sign its servers' certificates; the public roots (about 220 KiB) are what
//!   levee uses when a policy names no CA. A Secret is then kept as at most 73 KiB (with 32 keys
//!   of the longest names), 200 of them 14 MiB; 200 of one 1 MiB value each, 34 KiB.
//!   A value over the bound is never decoded: its base64 text is measured as it is parsed.
//! - [`KEYS_BOUND`], 32 keys of a Secret kept by name (those of its smallest values): names are
//!   at most 253 bytes, so at most 8 KiB of names. A Secret levee reads has two to four keys.
//! - [`HOSTS_BOUND`], 4 KiB of each hosts annotation (about a hundred host names).
//!
//! What is not kept is kept as its size, so that a policy that names it is refused with
//! `SecretTooLarge` and a message that says which key, its size and the bound (`secrets.rs`);
//! other keys of the Secret, and every other Secret, resolve as before.

use crate::controller::cache::indexed_store::Indexed;
use base64::Engine;
use k8s_openapi::Metadata;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::{Deserialize, Deserializer};
use std::collections::BTreeMap;

/// The most of one Secret's values a replica keeps, its smallest values first; the most of one
/// value, too.
pub const VALUES_BOUND: usize = 64 * 1024;
/// The most keys of one Secret kept by name: those of its smallest values.
pub const KEYS_BOUND: usize = 32;
/// The most of one hosts annotation kept.
pub const HOSTS_BOUND: usize = 4 * 1024;

/// A value, or when it is not kept, its size.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Bounded<T> {
    Held(T),
    /// Not kept: `bytes` long.
    TooLarge {
        bytes: usize,
    },
}

impl<T: AsRef<[u8]>> Bounded<T> {
    /// Its length in bytes, kept or not.
    pub fn len(&self) -> usize {
        match self {
            Self::Held(value) => value.as_ref().len(),
            Self::TooLarge { bytes } => *bytes,
        }
    }
}

/// A Secret's value as parsed: its bytes, or past [`VALUES_BOUND`] its size alone.
pub type ParsedValue = Bounded<Box<[u8]>>;

impl<'de> Deserialize<'de> for ParsedValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Base64;
        impl serde::de::Visitor<'_> for Base64 {
            type Value = ParsedValue;

            fn expecting(&self, formatter: &mut std::fmt::Formatter) -> std::fmt::Result {
                formatter.write_str("a base64-encoded Secret value")
            }

            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<ParsedValue, E> {
                let padding = text.bytes().rev().take_while(|&b| b == b'=').count().min(2);
                let bytes = (text.len() / 4 * 3).saturating_sub(padding);
                if bytes > VALUES_BOUND {
                    return Ok(Bounded::TooLarge { bytes });
                }
                base64::engine::general_purpose::STANDARD
                    .decode(text)
                    .map(|value| Bounded::Held(value.into_boxed_slice()))
                    .map_err(E::custom)
            }
        }
        deserializer.deserialize_str(Base64)
    }
}

/// A Secret as levee parses it: its metadata and its values, each over [`VALUES_BOUND`] as its
/// size. A Resource of kind Secret to kube, with the full type's group, version and path.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct StoredSecret {
    #[serde(default)]
    pub metadata: ObjectMeta,
    pub data: Option<BTreeMap<String, ParsedValue>>,
}

impl k8s_openapi::Resource for StoredSecret {
    const API_VERSION: &'static str = Secret::API_VERSION;
    const GROUP: &'static str = Secret::GROUP;
    const KIND: &'static str = Secret::KIND;
    const VERSION: &'static str = Secret::VERSION;
    const URL_PATH_SEGMENT: &'static str = Secret::URL_PATH_SEGMENT;
    type Scope = <Secret as k8s_openapi::Resource>::Scope;
}

impl Metadata for StoredSecret {
    type Ty = ObjectMeta;
    fn metadata(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn metadata_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

/// An opted-in Secret as a replica keeps it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeptSecret {
    pub namespace: Box<str>,
    pub name: Box<str>,
    pub resource_version: Box<str>,
    /// Its `levee.dev/secret-hosts` annotation, if any.
    pub hosts: Option<Bounded<Box<str>>>,
    /// Its `levee.dev/redis-hosts` annotation, if any.
    pub hosts_legacy: Option<Bounded<Box<str>>>,
    /// At most [`KEYS_BOUND`] keys, sorted, each with its value or its size.
    pub values: Box<[(Box<str>, ParsedValue)]>,
    /// The bytes of all its values, kept or not.
    pub value_bytes: usize,
    /// How many of its keys are not kept, even by name.
    pub keys_left_out: usize,
}

impl KeptSecret {
    /// The value of `key`, or its size; `None` if the Secret has no such key or it was left out
    /// (see `keys_left_out`).
    pub fn value(&self, key: &str) -> Option<&ParsedValue> {
        let at = self.values.binary_search_by(|(held, _)| (**held).cmp(key)).ok()?;
        Some(&self.values[at].1)
    }

    /// The bytes it holds on the heap (what a replica keeps of it, less the allocator's rounding).
    pub fn heap_bytes(&self) -> usize {
        let hosts = [&self.hosts, &self.hosts_legacy]
            .into_iter()
            .flatten()
            .map(|hosts| match hosts {
                Bounded::Held(hosts) => hosts.len(),
                Bounded::TooLarge { .. } => 0,
            });
        let values = self.values.iter().map(|(key, value)| {
            let held = match value {
                Bounded::Held(bytes) => bytes.len(),
                Bounded::TooLarge { .. } => 0,
            };
            std::mem::size_of::<(Box<str>, ParsedValue)>() + key.len() + held
        });
        self.namespace.len()
            + self.name.len()
            + self.resource_version.len()
            + hosts.sum::<usize>()
            + values.sum::<usize>()
    }
}

impl Indexed for KeptSecret {
    fn namespace(&self) -> &str {
        &self.namespace
    }
    fn name(&self) -> &str {
        &self.name
    }
    /// None: Secrets are looked up by name, and the consent label is the watch's own selector.
    fn labels(&self) -> impl Iterator<Item = (&str, &str)> {
        std::iter::empty()
    }
    fn label(&self, _: &str) -> Option<&str> {
        None
    }
    fn resource_version(&self) -> Option<&str> {
        Some(&self.resource_version)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::Resource;
    use serde_json::json;

    #[test]
    fn a_value_over_the_bound_is_parsed_as_its_size_and_the_rest_decoded() {
        let large = base64::engine::general_purpose::STANDARD.encode(vec![7u8; VALUES_BOUND + 1]);
        let secret: StoredSecret = serde_json::from_str(
            &json!({"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                    "metadata": {"name": "s", "namespace": "jobs"},
                    "data": {"password": "cHc=", "ca.crt": large, "one": "YQ==", "empty": ""}})
            .to_string(),
        )
        .unwrap();
        let data = secret.data.unwrap();
        assert_eq!(data["password"], Bounded::Held(b"pw".to_vec().into_boxed_slice()));
        assert_eq!(data["one"], Bounded::Held(b"a".to_vec().into_boxed_slice()));
        assert_eq!(data["empty"], Bounded::Held(Box::default()));
        assert_eq!(
            data["ca.crt"],
            Bounded::TooLarge {
                bytes: VALUES_BOUND + 1
            }
        );
        assert_eq!(StoredSecret::kind(&()), "Secret");
        assert_eq!(StoredSecret::plural(&()), "secrets");
        assert_eq!(StoredSecret::api_version(&()), "v1");
    }

    #[test]
    fn a_value_that_is_not_base64_is_an_error_as_it_was() {
        let parsed = serde_json::from_value::<StoredSecret>(json!({"data": {"password": "not base64!"}}));
        assert!(parsed.is_err());
    }
}
