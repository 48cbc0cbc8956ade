//! Offline validation of policies with the API server's rules: the CRD's OpenAPI schema
//! (types, required fields, enums, bounds, patterns, unknown fields), its defaults, and its CEL
//! rules, evaluated from the very CRD that `levee crd` prints. Each problem says which policy,
//! which field, and what to change.

use super::BackpressurePolicy;
use regex::Regex;
use serde::Deserialize;
use serde_json::Value;
use std::fmt;
use std::sync::OnceLock;

/// One thing wrong with one policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// The policy's `namespace/name` (or its place in the file when it has no name).
    pub policy: String,
    /// The field path, e.g. `spec.thresholds`.
    pub field: String,
    /// What is wrong and what to change.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}: {}", self.policy, self.field, self.message)
    }
}

/// The policies found in a multi-document YAML text, and the problems of those that are invalid.
/// Documents of other kinds are skipped, so a file may mix policies with the workloads they name.
#[derive(Debug, Default)]
pub struct CheckedDocuments {
    pub policies: Vec<BackpressurePolicy>,
    pub problems: Vec<Problem>,
}

/// Parses and validates every `BackpressurePolicy` in `text`; `source` names the file in messages.
pub fn check_documents(source: &str, text: &str) -> CheckedDocuments {
    let mut checked = CheckedDocuments::default();
    for (index, document) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let place = format!("{source} document {}", index + 1);
        let value = match Value::deserialize(document) {
            Ok(value) => value,
            Err(error) => {
                checked.problems.push(Problem {
                    policy: place,
                    field: "(yaml)".into(),
                    message: format!("invalid YAML: {error}"),
                });
                // The parser cannot resynchronise after a syntax error.
                break;
            }
        };
        if value.is_null() || value.get("kind").and_then(Value::as_str) != Some(KIND) {
            continue;
        }
        match check_object(&value) {
            Ok(policy) => checked.policies.push(policy),
            Err(mut problems) => {
                for problem in &mut problems {
                    if problem.policy.is_empty() {
                        problem.policy.clone_from(&place);
                    }
                }
                checked.problems.extend(problems);
            }
        }
    }
    checked
}

const ROOT_FIELDS: [&str; 3] = ["apiVersion", "kind", "metadata"];
const KIND: &str = "BackpressurePolicy";
const API_VERSION: &str = "levee.dev/v1alpha1";

/// Validates one object (already parsed) the way the API server would admit it.
pub fn check_object(object: &Value) -> Result<BackpressurePolicy, Vec<Problem>> {
    let policy = policy_name(object);
    let problem = |field: &str, message: String| Problem {
        policy: policy.clone(),
        field: field.into(),
        message,
    };
    let mut problems = Vec::new();
    match object.get("apiVersion").and_then(Value::as_str) {
        Some(API_VERSION) => {}
        other => problems.push(problem(
            "apiVersion",
            format!(
                "Unsupported value: {}: supported values: \"{API_VERSION}\"",
                quoted(other)
            ),
        )),
    }
    if object
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .is_none_or(str::is_empty)
    {
        problems.push(problem("metadata.name", "Required value: name the policy".into()));
    }
    let schema = policy_schema();
    let mut structural = Vec::new();
    check_schema(schema, object, "", &mut structural);
    problems.extend(
        structural
            .into_iter()
            .map(|(field, message)| problem(&field, message)),
    );
    if !problems.is_empty() {
        return Err(problems);
    }
    let defaulted = kube::core::cel::apply_defaults(schema, object);
    if let Err(errors) = kube::core::cel::Validator::new().validate(schema, &defaulted, None) {
        return Err(errors
            .into_iter()
            .map(|error| {
                let value = value_at(&defaulted, &error.field_path);
                problem(&error.field_path, invalid_value(value, &error.message))
            })
            .collect());
    }
    serde_json::from_value(defaulted).map_err(|error| vec![problem("(object)", error.to_string())])
}

/// The API server's wording for a failed CEL rule: scalars show their value, objects and lists
/// do not.
fn invalid_value(value: Option<&Value>, message: &str) -> String {
    match value {
        Some(Value::String(text)) => {
            format!("Invalid value: \"{}\": {message}", super::redact_password(text))
        }
        Some(scalar @ (Value::Number(_) | Value::Bool(_))) => format!("Invalid value: {scalar}: {message}"),
        _ => format!("Invalid value: {message}"),
    }
}

/// The value at a field path such as `spec.queues[1].name`.
fn value_at<'a>(object: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(object, |value, segment| {
        let mut parts = segment.split('[');
        let name = parts.next()?;
        let mut value = if name.is_empty() { value } else { value.get(name)? };
        for index in parts {
            value = value.get(index.trim_end_matches(']').parse::<usize>().ok()?)?;
        }
        Some(value)
    })
}

fn policy_name(object: &Value) -> String {
    let name = object
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("");
    match object.pointer("/metadata/namespace").and_then(Value::as_str) {
        Some(namespace) if !name.is_empty() => format!("{namespace}/{name}"),
        _ => name.to_string(),
    }
}

fn quoted(value: Option<&str>) -> String {
    value.map_or_else(|| "(missing)".into(), |v| format!("\"{v}\""))
}

/// The openAPIV3Schema of the CRD `levee crd` prints.
pub fn policy_schema() -> &'static Value {
    static SCHEMA: OnceLock<Value> = OnceLock::new();
    SCHEMA.get_or_init(|| {
        let crd = super::crd();
        let schema = crd.spec.versions[0]
            .schema
            .as_ref()
            .and_then(|s| s.open_api_v3_schema.as_ref())
            .expect("the derived CRD has an openAPIV3Schema");
        serde_json::to_value(schema).expect("a schema serializes to JSON")
    })
}

/// Checks `value` against the structural parts of an OpenAPI v3 `schema`, collecting
/// `(field path, message)` pairs worded like the API server's field errors.
fn check_schema(schema: &Value, value: &Value, path: &str, problems: &mut Vec<(String, String)>) {
    let field = if path.is_empty() {
        "(root)".to_string()
    } else {
        path.to_string()
    };
    if value.is_null() {
        if schema.get("nullable").and_then(Value::as_bool) != Some(true) {
            problems.push((field, "Invalid value: \"null\": must not be null".into()));
        }
        return;
    }
    if let Some(expected) = schema.get("type").and_then(Value::as_str) {
        let actual = json_type(value);
        let matches = actual == expected || (expected == "number" && actual == "integer");
        if !matches {
            let message = format!(
                "Invalid value: \"{actual}\": {field} in body must be of type {expected}: \"{actual}\""
            );
            problems.push((field, message));
            return;
        }
    }
    if let Some(allowed) = schema.get("enum").and_then(Value::as_array)
        && !allowed.contains(value)
    {
        let list: Vec<String> = allowed.iter().map(Value::to_string).collect();
        let message = format!(
            "Unsupported value: {value}: supported values: {}",
            list.join(", ")
        );
        problems.push((field.clone(), message));
    }
    check_bounds(schema, value, &field, problems);
    match value {
        Value::Object(map) => {
            let properties = schema.get("properties").and_then(Value::as_object);
            if let Some(required) = schema.get("required").and_then(Value::as_array) {
                for name in required.iter().filter_map(Value::as_str) {
                    if !map.contains_key(name) {
                        problems.push((join(path, name), "Required value".into()));
                    }
                }
            }
            let preserves = schema
                .get("x-kubernetes-preserve-unknown-fields")
                .and_then(Value::as_bool)
                == Some(true);
            let Some(properties) = properties else { return };
            for (name, child) in map {
                match properties.get(name) {
                    Some(child_schema) => check_schema(child_schema, child, &join(path, name), problems),
                    // Every object has these; the API server checks them itself.
                    None if path.is_empty() && ROOT_FIELDS.contains(&name.as_str()) => {}
                    None if !preserves => problems.push((
                        join(path, name),
                        "unknown field: remove it or check its spelling against `levee crd`".into(),
                    )),
                    None => {}
                }
            }
        }
        Value::Array(items) => {
            if let Some(item_schema) = schema.get("items") {
                for (index, item) in items.iter().enumerate() {
                    check_schema(item_schema, item, &format!("{path}[{index}]"), problems);
                }
            }
        }
        _ => {}
    }
}

fn check_bounds(schema: &Value, value: &Value, field: &str, problems: &mut Vec<(String, String)>) {
    let bound = |key: &str| schema.get(key).and_then(Value::as_f64);
    let mut push = |message: String| problems.push((field.to_string(), message));
    match value {
        Value::Number(number) => {
            let n = number.as_f64().unwrap_or(f64::NAN);
            if let Some(min) = bound("minimum").filter(|min| n < *min) {
                push(format!(
                    "Invalid value: {number}: {field} in body should be greater than or equal to {min}"
                ));
            }
            if let Some(max) = bound("maximum").filter(|max| n > *max) {
                push(format!(
                    "Invalid value: {number}: {field} in body should be less than or equal to {max}"
                ));
            }
        }
        Value::String(text) => {
            let chars = text.chars().count() as f64;
            if let Some(min) = bound("minLength").filter(|min| chars < *min) {
                push(format!(
                    "Invalid value: \"{text}\": {field} in body should be at least {min} chars long"
                ));
            }
            if let Some(max) = bound("maxLength").filter(|max| chars > *max) {
                push(format!("Too long: may not be more than {max} bytes"));
            }
            if let Some(pattern) = schema.get("pattern").and_then(Value::as_str) {
                let matches = Regex::new(pattern).map(|re| re.is_match(text)).unwrap_or(true);
                if !matches {
                    push(format!(
                        "Invalid value: \"{shown}\": {field} in body should match '{pattern}'",
                        shown = super::redact_password(text)
                    ));
                }
            }
        }
        Value::Array(items) => {
            let len = items.len() as f64;
            if let Some(min) = bound("minItems").filter(|min| len < *min) {
                push(format!(
                    "Invalid value: {len}: {field} in body should have at least {min} items"
                ));
            }
            if let Some(max) = bound("maxItems").filter(|max| len > *max) {
                push(format!("Too many: {len}: must have at most {max} items"));
            }
        }
        _ => {}
    }
}

fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn join(path: &str, name: &str) -> String {
    if path.is_empty() {
        name.to_string()
    } else {
        format!("{path}.{name}")
    }
}

#[cfg(test)]
mod tests;
