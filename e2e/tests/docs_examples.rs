//! Every example a user may copy is applied: the files in `examples/` for real, and each YAML
//! block of the README and `docs/` by what it is — Kubernetes objects with
//! `kubectl apply --dry-run=server`, chart values with `helm template`, a Prometheus scrape
//! configuration with `promtool check config`, and a fragment must be a piece of an example file
//! (which is applied). KEDA's CRDs are installed for the KEDA pages.

use levee_e2e::*;
use serde_json::Value;
use std::path::PathBuf;
use std::process::Command;

/// The YAML blocks of the README and docs/, with the file each came from.
fn yaml_blocks() -> Vec<(String, String)> {
    let root = repo_root();
    let mut files: Vec<PathBuf> = vec![root.join("README.md")];
    let mut docs: Vec<PathBuf> = std::fs::read_dir(root.join("docs"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "md"))
        .collect();
    docs.sort();
    files.extend(docs);
    let mut blocks = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        let name = file.strip_prefix(&root).unwrap().display().to_string();
        let mut rest = text.as_str();
        while let Some(start) = rest.find("```yaml\n") {
            let body = &rest[start + 8..];
            let end = body.find("```").expect("a closed code block");
            blocks.push((name.clone(), body[..end].to_string()));
            rest = &body[end..][3..];
        }
    }
    blocks
}

/// The documents of every file in examples/.
fn example_documents() -> Vec<(String, Vec<Value>)> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(repo_root().join("examples"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|path| {
            let text = std::fs::read_to_string(&path).unwrap();
            (
                path.file_name().unwrap().to_string_lossy().into_owned(),
                yaml_documents(&text),
            )
        })
        .collect()
}

/// Whether `fragment` is a part of `node`: every key of a mapping present with a matching value,
/// every item of a list matched by some item.
fn contains(node: &Value, fragment: &Value) -> bool {
    match (node, fragment) {
        (Value::Object(node), Value::Object(fragment)) => fragment
            .iter()
            .all(|(key, value)| node.get(key).is_some_and(|child| contains(child, value))),
        (Value::Array(node), Value::Array(fragment)) => fragment
            .iter()
            .all(|item| node.iter().any(|candidate| contains(candidate, item))),
        _ => node == fragment,
    }
}

/// Whether `fragment` is a part of `node` or of anything below it.
fn somewhere(node: &Value, fragment: &Value) -> bool {
    contains(node, fragment)
        || match node {
            Value::Object(map) => map.values().any(|child| somewhere(child, fragment)),
            Value::Array(items) => items.iter().any(|child| somewhere(child, fragment)),
            _ => false,
        }
}

/// The block with its common indentation removed (fragments are cut out of deeper objects).
fn dedent(block: &str) -> String {
    let indent = block
        .lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| line.len() - line.trim_start().len())
        .min()
        .unwrap_or(0);
    block
        .lines()
        .map(|line| line.get(indent..).unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n")
}

fn chart_value_keys() -> Vec<String> {
    let values: Value =
        serde_yaml::from_str(&std::fs::read_to_string(repo_root().join("charts/levee/values.yaml")).unwrap())
            .unwrap();
    values.as_object().unwrap().keys().cloned().collect()
}

#[test]
fn the_example_files_are_accepted_by_the_api_server() {
    install_crd();
    levee_e2e::keda::install_keda_crds();
    let namespace = TestNamespace::create("levee-e2e-examples");
    let mut kinds = Vec::new();
    for (file, documents) in example_documents() {
        let objects: Vec<Value> = documents
            .into_iter()
            .map(|mut object| {
                object["metadata"]["namespace"] = namespace.name.clone().into();
                kinds.push(format!("{file}: {}", object["kind"].as_str().unwrap()));
                object
            })
            .collect();
        let list = serde_json::json!({"apiVersion": "v1", "kind": "List", "items": objects});
        let output = kubectl(&["apply", "-f", "-"], Some(&list.to_string()));
        assert!(
            output.status.success(),
            "examples/{file} refused: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    for expected in [
        "policy.yaml: BackpressurePolicy",
        "demo-policy.yaml: BackpressurePolicy",
        "producer.yaml: Deployment",
        "producer.yaml: Service",
        "producer-exec-probe.yaml: Deployment",
        "worker.yaml: Deployment",
        "keda-scaledobject.yaml: ScaledObject",
    ] {
        assert!(
            kinds.iter().any(|kind| kind == expected),
            "{expected} not in {kinds:?}"
        );
    }
}

#[test]
fn every_yaml_block_in_the_docs_is_applied_or_checked() {
    install_crd();
    // The KEDA pages' ScaledObjects and TriggerAuthentications are checked against KEDA's CRDs.
    levee_e2e::keda::install_keda_crds();
    let namespace = TestNamespace::create("levee-e2e-docs");
    let examples = example_documents();
    let value_keys = chart_value_keys();
    let blocks = yaml_blocks();
    let mut checked = std::collections::BTreeMap::<&str, usize>::new();
    for (file, block) in &blocks {
        let documents = yaml_documents(&dedent(block));
        let first = documents.first().cloned().unwrap_or_default();
        let keys: Vec<&String> = first
            .as_object()
            .map(|map| map.keys().collect())
            .unwrap_or_default();
        if first["apiVersion"].is_string() && first["kind"].is_string() {
            let objects: Vec<Value> = documents
                .into_iter()
                .map(|mut object| {
                    object["metadata"]["namespace"] = namespace.name.clone().into();
                    object
                })
                .collect();
            let list = serde_json::json!({"apiVersion": "v1", "kind": "List", "items": objects});
            let output = kubectl(&["apply", "--dry-run=server", "-f", "-"], Some(&list.to_string()));
            assert!(
                output.status.success(),
                "{file}: the API server refuses\n{block}\n{}",
                String::from_utf8_lossy(&output.stderr)
            );
            *checked.entry("objects").or_default() += 1;
        } else if !keys.is_empty() && keys.iter().all(|key| value_keys.contains(key)) {
            let dir = tempfile::tempdir().unwrap();
            let values = dir.path().join("values.yaml");
            std::fs::write(&values, block).unwrap();
            let output = helm(&[
                "template",
                "levee",
                "charts/levee",
                "-f",
                values.to_str().unwrap(),
            ]);
            assert!(
                output.status.success(),
                "{file}: helm refuses these values\n{block}\n{}",
                String::from_utf8_lossy(&output.stderr)
            );
            *checked.entry("chart values").or_default() += 1;
        } else if keys.iter().any(|key| *key == "scrape_configs") {
            let dir = tempfile::tempdir().unwrap();
            let config = dir.path().join("prometheus.yml");
            std::fs::write(&config, block).unwrap();
            let output = Command::new("promtool")
                .args(["check", "config", "--syntax-only", config.to_str().unwrap()])
                .output()
                .expect("promtool is on PATH (make e2e builds it into .cache/bin)");
            assert!(
                output.status.success(),
                "{file}: promtool refuses\n{block}\n{}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
            *checked.entry("prometheus config").or_default() += 1;
        } else {
            let found = examples
                .iter()
                .any(|(_, documents)| documents.iter().any(|document| somewhere(document, &first)));
            assert!(
                found,
                "{file}: this block is not a Kubernetes object, chart values, a Prometheus \
                 configuration, or a piece of a file in examples/:\n{block}"
            );
            *checked.entry("fragments of examples/").or_default() += 1;
        }
    }
    eprintln!("checked {} YAML blocks: {checked:?}", blocks.len());
    assert!(checked.get("objects").copied().unwrap_or(0) >= 3, "{checked:?}");
    assert!(checked.contains_key("fragments of examples/"), "{checked:?}");
}

#[test]
fn a_fragment_that_is_not_in_the_examples_is_caught() {
    let examples = example_documents();
    let real = yaml_documents("readinessGates:\n  - conditionType: levee.dev/accepting\n");
    let invented = yaml_documents("readinessGates:\n  - conditionType: levee.dev/accepted\n");
    let anywhere = |fragment: &Value| {
        examples
            .iter()
            .any(|(_, documents)| documents.iter().any(|document| somewhere(document, fragment)))
    };
    assert!(anywhere(&real[0]));
    assert!(!anywhere(&invented[0]));
}
