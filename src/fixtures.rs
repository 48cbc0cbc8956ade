//! What the unit tests build their inputs from: a minimal valid policy (as JSON or parsed), the
//! circuit rules a policy yields, and the pods and Deployments a policy targets. Each builder
//! gives the least that is valid; a test states what it relies on beyond that (its thresholds,
//! names, labels) where it does so, as a JSON merge patch or a struct update.

use crate::api::BackpressurePolicy;
use crate::circuit::{Bands, CircuitRules, OnSampleFailure};
use jiff::SignedDuration;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use serde_json::{Value, json};

/// A minimal valid policy `jobs/p`: one list queue `q` on `redis://127.0.0.1:6379`, thresholds
/// 20/50/5 (warning/critical/recovery) and the Deployment `api` as its target; everything else
/// is left to the defaults.
pub fn policy_json() -> Value {
    json!({
        "apiVersion": "levee.dev/v1alpha1",
        "kind": "BackpressurePolicy",
        "metadata": {"name": "p", "namespace": "jobs"},
        "spec": {
            "redis": {"url": "redis://127.0.0.1:6379"},
            "queues": [{"name": "q", "type": "list", "key": "q"}],
            "thresholds": {"warning": 20, "critical": 50, "recovery": 5},
            "targets": [{"kind": "Deployment", "name": "api"}]
        }
    })
}

/// [`policy_json`], parsed.
pub fn policy() -> BackpressurePolicy {
    policy_with(json!({}))
}

/// [`policy_json`] with `patch` merged in as a JSON merge patch (see [`merge`]), parsed.
pub fn policy_with(patch: Value) -> BackpressurePolicy {
    let mut object = policy_json();
    merge(&mut object, patch);
    serde_json::from_value(object).expect("the fixture policy with its patch parses")
}

/// The circuit rules of a policy with these thresholds and every other setting at its default
/// (checked below): Open at least 30 s, Prolonged after 10 min, half-open lets priorities up to
/// 5 through, open none, and three failed samples in a row hold the state. Built here rather
/// than from a parsed policy so that the circuit's tests do not go through the API.
pub fn rules(warning: u64, critical: u64, recovery: u64) -> CircuitRules {
    CircuitRules {
        depth: Some(Bands {
            warning,
            critical,
            recovery,
        }),
        latency: None,
        memory: None,
        open_ahead: None,
        min_open: SignedDuration::from_secs(30),
        alert_after: SignedDuration::from_secs(600),
        half_open_max_priority: 5,
        open_max_priority: 0,
        on_failure: OnSampleFailure::default(),
    }
}

/// The pod `namespace/name` with `labels`, and nothing else.
pub fn pod(namespace: &str, name: &str, labels: &[(&str, &str)]) -> Pod {
    let mut pod = Pod::default();
    pod.metadata.namespace = Some(namespace.into());
    pod.metadata.name = Some(name.into());
    pod.metadata.labels = Some(
        labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    );
    pod
}

/// The Deployment `namespace/name` selecting the pods labelled `app: <name>`, with an empty pod
/// template (what the controller's store keeps of one).
pub fn deployment(namespace: &str, name: &str) -> Deployment {
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"selector": {"matchLabels": {"app": name}}, "template": {}}
    }))
    .expect("a valid Deployment")
}

/// Merges `patch` into `target` as a JSON merge patch (RFC 7386) does: objects merge key by key,
/// `null` removes a key, anything else (arrays included) replaces what was there.
pub fn merge(target: &mut Value, patch: Value) {
    let Value::Object(patch) = patch else {
        *target = patch;
        return;
    };
    if !target.is_object() {
        *target = json!({});
    }
    let Value::Object(target) = target else {
        unreachable!("made an object above")
    };
    for (key, value) in patch {
        if value.is_null() {
            target.remove(&key);
        } else {
            merge(target.entry(key).or_insert(Value::Null), value);
        }
    }
}

/// Sets (or adds) the field at a JSON pointer; its parent must exist.
pub fn set(object: &mut Value, pointer: &str, value: Value) {
    let (parent, field) = pointer.rsplit_once('/').unwrap();
    let parent = object.pointer_mut(parent).unwrap_or_else(|| panic!("{pointer}"));
    match parent {
        Value::Object(map) => {
            map.insert(field.to_string(), value);
        }
        Value::Array(items) => items[field.parse::<usize>().unwrap()] = value,
        _ => panic!("{pointer} has no parent container"),
    }
}

#[test]
fn the_fixture_policy_is_valid_and_its_rules_are_the_fixture_rules() {
    crate::api::validation::check_object(&policy_json()).expect("valid");
    assert_eq!(policy().spec.circuit_rules(), rules(20, 50, 5));
}

#[test]
fn a_merge_patch_merges_objects_removes_nulls_and_replaces_the_rest() {
    let mut object = json!({"a": {"b": 1, "c": 2}, "list": [1, 2], "gone": true});
    merge(
        &mut object,
        json!({"a": {"c": 3, "d": {"e": null, "f": 4}}, "list": [3], "gone": null}),
    );
    assert_eq!(object, json!({"a": {"b": 1, "c": 3, "d": {"f": 4}}, "list": [3]}));
}
