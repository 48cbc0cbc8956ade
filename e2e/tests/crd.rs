//! The CRD on a real API server: it is accepted, serves its printer columns, defaults like
//! `levee check`, and refuses exactly what `levee check` refuses, with the same messages.

use levee::api::validation::check_object;
use levee_e2e::*;
use serde_json::Value;

const EXAMPLE: &str = include_str!("../../examples/policy.yaml");

fn example_in(namespace: &str) -> Value {
    let mut policy: Value = serde_yaml::from_str(EXAMPLE).unwrap();
    policy["metadata"]["namespace"] = namespace.into();
    policy
}

#[test]
fn a_valid_policy_is_stored_with_levee_checks_defaults_and_shows_its_columns() {
    install_crd();
    let namespace = TestNamespace::create("levee-e2e-crd");
    let policy = example_in(&namespace.name);
    let mut minimal = policy.clone();
    for field in ["circuit", "onSampleFailure", "sampleInterval"] {
        minimal["spec"].as_object_mut().unwrap().remove(field);
    }
    minimal["metadata"]["name"] = "minimal".into();
    for object in [&policy, &minimal] {
        kubectl_ok(&["apply", "-f", "-"], Some(&object.to_string()));
        let name = object["metadata"]["name"].as_str().unwrap();
        let stored: Value = serde_json::from_str(&kubectl_ok(
            &["get", "bpp", name, "-n", &namespace.name, "-o", "json"],
            None,
        ))
        .unwrap();
        let checked = check_object(object).expect("levee check accepts it");
        let stored_spec: levee::api::BackpressurePolicySpec =
            serde_json::from_value(stored["spec"].clone()).unwrap();
        assert_eq!(stored_spec, checked.spec, "the server defaults like levee check");
    }
    let table = kubectl_ok(&["get", "bpp", "-n", &namespace.name], None);
    let header: Vec<&str> = table.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(header, ["NAME", "STATE", "LEVEL", "PENDING", "CRITICAL", "AGE"]);
    assert!(table.contains("50000"), "{table}");
}

/// A change to a valid policy.
type Edit = Box<dyn Fn(&mut Value)>;

/// Edits that make the example invalid, one rule each.
fn invalid_edits() -> Vec<(&'static str, Edit)> {
    vec![
        (
            "threshold order",
            Box::new(|p| p["spec"]["thresholds"]["recovery"] = 20000.into()),
        ),
        (
            "duplicate queues",
            Box::new(|p| p["spec"]["queues"][1]["name"] = "events".into()),
        ),
        (
            "zero duration",
            Box::new(|p| p["spec"]["redis"]["timeout"] = "0s".into()),
        ),
        (
            "negative duration",
            Box::new(|p| p["spec"]["circuit"]["minOpenDuration"] = "-5s".into()),
        ),
        (
            "password in url",
            Box::new(|p| p["spec"]["redis"]["url"] = "redis://u:pw@redis:6379/0".into()),
        ),
        (
            "url typo",
            Box::new(|p| p["spec"]["redis"]["url"] = "redis//redis:6379".into()),
        ),
        (
            "min above max",
            Box::new(|p| p["spec"]["scaleTarget"]["minReplicas"] = 30.into()),
        ),
        (
            "sentinel without master",
            Box::new(|p| p["spec"]["redis"]["mode"] = "Sentinel".into()),
        ),
        (
            "group on a list",
            Box::new(|p| p["spec"]["queues"][1]["consumerGroup"] = "g".into()),
        ),
        (
            "priority zero",
            Box::new(|p| p["spec"]["targets"][0]["priority"] = 0.into()),
        ),
        (
            "unknown queue type",
            Box::new(|p| p["spec"]["queues"][0]["type"] = "bull".into()),
        ),
        (
            "wrong type",
            Box::new(|p| p["spec"]["thresholds"]["warning"] = "many".into()),
        ),
        (
            "no queues",
            Box::new(|p| p["spec"]["queues"] = serde_json::json!([])),
        ),
        (
            "missing thresholds",
            Box::new(|p| drop(p["spec"].as_object_mut().unwrap().remove("thresholds"))),
        ),
        (
            "open above half-open",
            Box::new(|p| p["spec"]["circuit"]["openMaxPriority"] = 9.into()),
        ),
        (
            "duplicate targets",
            Box::new(|p| p["spec"]["targets"][1] = p["spec"]["targets"][0].clone()),
        ),
    ]
}

#[test]
fn the_api_server_refuses_what_levee_check_refuses_with_the_same_messages() {
    install_crd();
    let namespace = TestNamespace::create("levee-e2e-crd");
    for (what, edit) in invalid_edits() {
        let mut policy = example_in(&namespace.name);
        policy["metadata"]["name"] = "invalid".into();
        if policy["spec"]["targets"].as_array().unwrap().len() < 2 {
            policy["spec"]["targets"]
                .as_array_mut()
                .unwrap()
                .push(serde_json::json!({"kind": "Deployment", "name": "api2"}));
        }
        edit(&mut policy);
        let problems = check_object(&policy).expect_err(what);
        let output = kubectl(&["create", "-f", "-"], Some(&policy.to_string()));
        let refusal = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{what}: the API server accepted it");
        for problem in &problems {
            let line = format!("{}: {}", problem.field, problem.message).replace("u:***@", "u:pw@");
            assert!(
                refusal.contains(&line),
                "{what}: levee check says\n  {line}\nthe API server says\n  {refusal}"
            );
        }
    }
}

#[test]
fn unknown_fields_are_refused_by_both() {
    install_crd();
    let namespace = TestNamespace::create("levee-e2e-crd");
    let mut policy = example_in(&namespace.name);
    policy["spec"]["thresholds"]["critcal"] = 5.into();
    let problems = check_object(&policy).unwrap_err();
    assert_eq!(problems.len(), 1);
    assert_eq!(problems[0].field, "spec.thresholds.critcal");
    let output = kubectl(&["create", "-f", "-"], Some(&policy.to_string()));
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("unknown field \"spec.thresholds.critcal\""));
}
