//! The docs must match the code: every CRD field is in docs/policy-reference.md with its default.

use serde_json::Value;
use std::collections::BTreeMap;

/// `(path, schema)` of every leaf field below `path`.
fn leaves(schema: &Value, path: &str, out: &mut BTreeMap<String, Value>) {
    if let Some(properties) = schema.get("properties").and_then(Value::as_object) {
        for (name, child) in properties {
            leaves(child, &format!("{path}.{name}"), out);
        }
    } else if let Some(items) = schema.get("items") {
        if items.get("properties").is_some() {
            leaves(items, &format!("{path}[]"), out);
        } else {
            out.insert(path.to_string(), schema.clone());
        }
    } else {
        out.insert(path.to_string(), schema.clone());
    }
}

fn documented_rows() -> BTreeMap<String, Vec<String>> {
    let doc =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/policy-reference.md")).unwrap();
    doc.lines()
        .filter(|l| l.starts_with("| `"))
        .map(|l| {
            let cells: Vec<String> = l
                .split(" | ")
                .map(|c| c.trim_matches(|ch| ch == '|' || ch == ' ').to_string())
                .collect();
            (cells[0].trim_matches('`').to_string(), cells)
        })
        .collect()
}

#[test]
fn every_crd_field_is_documented_with_its_default() {
    let schema = levee::api::validation::policy_schema();
    let mut fields = BTreeMap::new();
    leaves(&schema["properties"]["spec"], "spec", &mut fields);
    leaves(&schema["properties"]["status"], "status", &mut fields);
    // Conditions are the standard metav1.Condition; documented as one row.
    fields.retain(|path, _| !path.starts_with("status.conditions"));
    fields.insert("status.conditions".into(), Value::Null);
    let rows = documented_rows();
    let mut missing = Vec::new();
    for (path, field) in &fields {
        match rows.get(path) {
            None => missing.push(format!("{path}: not in docs/policy-reference.md")),
            Some(cells) => {
                let spec_row = cells.len() >= 5;
                if let Some(default) = field
                    .get("default")
                    .filter(|d| spec_row && !d.is_array() && !d.is_object())
                {
                    let text = default
                        .as_str()
                        .map(str::to_string)
                        .unwrap_or_else(|| default.to_string());
                    if !cells[2].contains(&format!("`{text}`")) {
                        missing.push(format!("{path}: default `{text}` not in its row ({})", cells[2]));
                    }
                }
            }
        }
    }
    let extra: Vec<&String> = rows.keys().filter(|p| !fields.contains_key(*p)).collect();
    assert!(missing.is_empty(), "{missing:#?}");
    assert!(extra.is_empty(), "documented but not in the CRD: {extra:?}");
}
