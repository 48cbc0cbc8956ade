//! What the in-memory stores keep of a policy, a managed HPA and an opted-in Secret: what levee
//! reads of them, without their managed fields and kubectl's copy of the last applied object,
//! and of a Secret a bounded part of its values (`kept_secret.rs`). Pods and workloads are kept
//! in a form of their own (`kept.rs`).

use crate::api::BackpressurePolicy;
use crate::api::labels::{ANNOTATION_SECRET_HOSTS, ANNOTATION_SECRET_HOSTS_LEGACY};
use crate::controller::cache::kept_secret::{
    Bounded, HOSTS_BOUND, KEYS_BOUND, KeptSecret, StoredSecret, VALUES_BOUND,
};
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;

/// A policy: everything but its managed fields and kubectl's copy of the last applied object,
/// its lists without the room their parsing left over (a list of 10 queues grows to room for 16
/// as it is parsed, 1.5 KiB of 4 in the spec's), and of its status only the circuit: a replica
/// reads the rest of a status afresh from the API server when it takes a policy over
/// (`fresh_status.rs`), and writes what it computes, never the watch's copy. Every replica holds
/// every policy: at 10 queues the status's queues and conditions were about 2.5 KiB of each.
pub fn policy(policy: &mut BackpressurePolicy) {
    policy.metadata.managed_fields = None;
    if let Some(annotations) = policy.metadata.annotations.as_mut() {
        annotations.remove(LAST_APPLIED);
    }
    // An empty map still holds its first node, room for eleven pairs.
    if policy.metadata.annotations.as_ref().is_some_and(|a| a.is_empty()) {
        policy.metadata.annotations = None;
    }
    policy.spec.queues.shrink_to_fit();
    policy.spec.targets.shrink_to_fit();
    if let Some(status) = policy.status.as_mut() {
        status.keep_circuit_only();
    }
}

/// kubectl's copy of the last applied object, as large as the object itself.
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// A managed HPA: its metadata (owner) and spec, compared with the policy's.
pub fn autoscaler(mut hpa: HorizontalPodAutoscaler) -> HorizontalPodAutoscaler {
    hpa.metadata.managed_fields = None;
    hpa.status = None;
    hpa
}

/// An opted-in Secret: its name, version and host annotations, and of its values at most
/// [`KEYS_BOUND`] keys, those of its smallest values, holding at most [`VALUES_BOUND`] in all; a
/// value that does not fit is kept as its size, a key past the count not at all (counted).
/// Smallest first, so that the credentials and CAs levee reads (bytes, a few KiB) are kept
/// beside anything else the Secret holds, and what is large is what is refused.
pub fn secret(secret: StoredSecret) -> KeptSecret {
    let meta = secret.metadata;
    let mut annotations = meta.annotations.unwrap_or_default();
    let mut hosts = |name: &str| {
        annotations.remove(name).map(|hosts| match hosts.len() {
            bytes if bytes > HOSTS_BOUND => Bounded::TooLarge { bytes },
            _ => Bounded::Held(hosts.into_boxed_str()),
        })
    };
    let (hosts, hosts_legacy) = (
        hosts(ANNOTATION_SECRET_HOSTS),
        hosts(ANNOTATION_SECRET_HOSTS_LEGACY),
    );
    let mut values: Vec<_> = secret.data.into_iter().flatten().collect();
    let value_bytes = values.iter().map(|(_, value)| value.len()).sum();
    values.sort_by(|(a, a_value), (b, b_value)| a_value.len().cmp(&b_value.len()).then_with(|| a.cmp(b)));
    let keys_left_out = values.len().saturating_sub(KEYS_BOUND);
    values.truncate(KEYS_BOUND);
    let mut room = VALUES_BOUND;
    let mut kept: Vec<_> = values
        .into_iter()
        .map(|(key, value)| {
            let value = match value {
                Bounded::Held(bytes) if bytes.len() <= room => {
                    room -= bytes.len();
                    Bounded::Held(bytes)
                }
                other => Bounded::TooLarge { bytes: other.len() },
            };
            (key.into_boxed_str(), value)
        })
        .collect();
    kept.sort_by(|(a, _), (b, _)| a.cmp(b));
    let text = |value: Option<String>| value.unwrap_or_default().into_boxed_str();
    KeptSecret {
        namespace: text(meta.namespace),
        name: text(meta.name),
        resource_version: text(meta.resource_version),
        hosts,
        hosts_legacy,
        values: kept.into_boxed_slice(),
        value_bytes,
        keys_left_out,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_policy_keeps_no_spare_room_in_its_lists_and_of_its_status_the_circuit() {
        let queues: Vec<_> = (0..10)
            .map(|q| json!({"name": format!("q{q}"), "type": "list", "key": format!("k{q}")}))
            .collect();
        let statuses: Vec<_> = (0..10)
            .map(|q| json!({"name": format!("q{q}"), "depth": 0}))
            .collect();
        let condition = |type_: &str, reason: &str| {
            json!({"type": type_, "status": "True", "reason": reason, "message": "m".repeat(200),
                   "lastTransitionTime": "2026-12-07T09:00:00Z"})
        };
        let parsed = crate::fixtures::policy_with(json!({
            "metadata": {"managedFields": [{"manager": "kubectl", "operation": "Update"}]},
            "spec": {"queues": queues},
            "status": {
                "state": "Open", "level": "Critical", "openedSince": "2026-12-07T09:00:00Z",
                "lastTransitionTime": "2026-12-07T09:00:00Z", "transitions": 3,
                "lastSampleTime": "2026-12-07T09:01:00Z", "pending": 70,
                "queues": statuses,
                "memory": {"usedBytes": 1, "maxBytes": 2, "evictionPolicy": "noeviction"},
                "conditions": [condition("Ready", "Sampling"), condition("BackendReachable", "Answered"),
                               condition("Throttling", "CriticalForecast"), condition("Prolonged", "OpenTooLong")],
            },
        }));
        // From text, as the watch parses it (a parsed JSON value knows its lengths; text does not).
        let mut policy: BackpressurePolicy =
            serde_json::from_str(&serde_json::to_string(&parsed).unwrap()).unwrap();
        assert!(
            policy.spec.queues.capacity() > 10,
            "parsing leaves room: nothing to check"
        );
        let circuit = policy.status.as_ref().unwrap().circuit();
        super::policy(&mut policy);
        assert_eq!(policy.spec.queues.capacity(), 10);
        assert!(policy.metadata.managed_fields.is_none());
        let status = policy.status.as_ref().unwrap();
        assert_eq!(status.circuit(), circuit, "the circuit reads the same");
        assert!(circuit.prolonged && circuit.opened_on_forecast && circuit.throttling_since.is_some());
        assert!(status.last_sample_time.is_some());
        assert!(status.queues.is_empty() && status.memory.is_none());
        assert_eq!(status.conditions.len(), 2);
    }

    /// A Secret as the API server sends it: each value `bytes` long, base64-encoded.
    fn secret_json(name: &str, annotations: serde_json::Value, values: &[(&str, usize)]) -> String {
        use base64::Engine;
        let data: serde_json::Map<_, _> = values
            .iter()
            .map(|(key, bytes)| {
                let value = base64::engine::general_purpose::STANDARD.encode(vec![b'x'; *bytes]);
                (key.to_string(), json!(value))
            })
            .collect();
        json!({"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
               "metadata": {"name": name, "namespace": "jobs", "resourceVersion": "7",
                            "labels": {"levee.dev/secret": "true"}, "annotations": annotations,
                            "managedFields": [{"manager": "kubectl", "operation": "Update"}]},
               "data": data})
        .to_string()
    }

    /// The Secret as the store keeps it, from the API server's text.
    fn kept(text: &str) -> KeptSecret {
        super::secret(serde_json::from_str(text).unwrap())
    }

    fn held(bytes: usize) -> Bounded<Box<[u8]>> {
        Bounded::Held(vec![b'x'; bytes].into_boxed_slice())
    }

    #[test]
    fn a_secret_keeps_its_small_values_and_of_a_large_one_its_size() {
        let secret = kept(&secret_json(
            "redis-auth",
            json!({"levee.dev/secret-hosts": "redis.jobs.svc", "note": "n".repeat(1000)}),
            &[("username", 5), ("password", 24), ("ca.crt", 1 << 20)],
        ));
        assert_eq!(
            (&*secret.namespace, &*secret.name, &*secret.resource_version),
            ("jobs", "redis-auth", "7")
        );
        assert_eq!(secret.value("username"), Some(&held(5)));
        assert_eq!(secret.value("password"), Some(&held(24)));
        assert_eq!(
            secret.value("ca.crt"),
            Some(&Bounded::TooLarge { bytes: 1 << 20 })
        );
        assert_eq!(secret.value("token"), None);
        assert_eq!((secret.value_bytes, secret.keys_left_out), ((1 << 20) + 29, 0));
        assert_eq!(secret.hosts, Some(Bounded::Held("redis.jobs.svc".into())));
        assert_eq!(secret.hosts_legacy, None);
        assert!(secret.heap_bytes() < 256, "{} bytes", secret.heap_bytes());
    }

    #[test]
    fn a_secret_keeps_64_kib_of_its_values_smallest_first() {
        let secret = kept(&secret_json(
            "mixed",
            json!({}),
            &[
                ("a-bundle", 40 << 10),
                ("b-bundle", 30 << 10),
                ("z-password", 8),
                ("exact", 0),
            ],
        ));
        assert_eq!(secret.value("z-password"), Some(&held(8)));
        assert_eq!(secret.value("exact"), Some(&held(0)));
        assert_eq!(secret.value("b-bundle"), Some(&held(30 << 10)));
        assert_eq!(
            secret.value("a-bundle"),
            Some(&Bounded::TooLarge { bytes: 40 << 10 }),
            "30 KiB and 40 KiB come to more than 64 KiB: the larger is kept as its size"
        );
        let whole = kept(&secret_json("ca", json!({}), &[("ca.crt", VALUES_BOUND)]));
        assert_eq!(
            whole.value("ca.crt"),
            Some(&held(VALUES_BOUND)),
            "exactly the bound is kept"
        );
    }

    #[test]
    fn a_secret_keeps_32_keys_by_name_and_counts_the_rest() {
        let names: Vec<String> = (0..40).map(|n| format!("key-{n:02}")).collect();
        let values: Vec<(&str, usize)> = names
            .iter()
            .enumerate()
            .map(|(n, name)| (name.as_str(), n))
            .collect();
        let secret = kept(&secret_json("many", json!({}), &values));
        assert_eq!(secret.values.len(), KEYS_BOUND);
        assert_eq!(secret.keys_left_out, 8);
        assert_eq!(secret.value("key-00"), Some(&held(0)));
        assert_eq!(secret.value("key-31"), Some(&held(31)));
        assert_eq!(
            secret.value("key-32"),
            None,
            "the largest values' keys are the ones left out"
        );
    }

    #[test]
    fn a_hosts_annotation_over_4_kib_is_kept_as_its_size() {
        let long = "h".repeat(HOSTS_BOUND + 1);
        let secret = kept(&secret_json(
            "hosts",
            json!({"levee.dev/secret-hosts": "redis.jobs.svc", "levee.dev/redis-hosts": long}),
            &[("password", 8)],
        ));
        assert_eq!(secret.hosts, Some(Bounded::Held("redis.jobs.svc".into())));
        assert_eq!(
            secret.hosts_legacy,
            Some(Bounded::TooLarge {
                bytes: HOSTS_BOUND + 1
            })
        );
    }

    /// Issue 39's case: 200 Secrets of 1 MiB, labelled for levee in one namespace. Kept whole
    /// (k8s-openapi's `Secret` less its managed fields, as before) they held 200 MiB.
    #[test]
    fn two_hundred_secrets_of_1_mib_are_kept_as_their_sizes() {
        let text = |n: usize| secret_json(&format!("blob-{n}"), json!({}), &[("blob", 1 << 20)]);
        let whole: k8s_openapi::api::core::v1::Secret = serde_json::from_str(&text(0)).unwrap();
        let whole: usize = whole
            .data
            .iter()
            .flatten()
            .map(|(key, value)| key.len() + value.0.len())
            .sum();
        let now: usize = (0..200)
            .map(|n| kept(&text(n)))
            .map(|secret| std::mem::size_of::<KeptSecret>() + secret.heap_bytes())
            .sum();
        eprintln!(
            "figure: 200 Secrets of 1 MiB: kept whole {} KiB, kept now {} KiB",
            200 * whole / 1024,
            now / 1024
        );
        assert!(now < 64 << 10, "{now} bytes kept");

        // The most one Secret's MiB can make a replica keep: 32 keys of the longest names, 64 KiB
        // of values that fit, the rest too large to.
        let names: Vec<String> = (0..KEYS_BOUND)
            .map(|n| format!("{n:02}{}", "k".repeat(251)))
            .collect();
        let values: Vec<(&str, usize)> = names
            .iter()
            .enumerate()
            .map(|(n, name)| (name.as_str(), if n < 16 { 4 << 10 } else { 60 << 10 }))
            .collect();
        let most = kept(&secret_json("most", json!({}), &values));
        let most = std::mem::size_of::<KeptSecret>() + most.heap_bytes();
        eprintln!(
            "figure: the most a Secret is kept as: {} KiB (200 such Secrets: {} MiB)",
            most / 1024,
            (200 * most) >> 20
        );
        assert!(most < 80 << 10, "{most} bytes kept");
    }
}
