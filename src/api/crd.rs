//! The CRD levee installs and `levee crd` prints: derived from the Rust types, with unsigned
//! integer formats (`uint32`, `uint64`, which the API server warns about as unrecognized) written
//! as the Kubernetes format `int64`; the bounds stay in `minimum`/`maximum`.

use super::BackpressurePolicy;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;
use serde_json::Value;

/// The `backpressurepolicies.levee.dev` CRD.
pub fn crd() -> CustomResourceDefinition {
    let mut value = serde_json::to_value(BackpressurePolicy::crd()).expect("a CRD serializes to JSON");
    normalize_formats(&mut value);
    serde_json::from_value(value).expect("a normalized CRD is still a CRD")
}

/// The CRD as YAML, exactly what `levee crd` prints and `crds/` holds.
pub fn crd_yaml() -> String {
    serde_yaml::to_string(&crd()).expect("the CRD serializes to YAML")
}

fn normalize_formats(value: &mut Value) {
    match value {
        Value::Object(map) => {
            if map
                .get("format")
                .and_then(Value::as_str)
                .is_some_and(|f| f.starts_with("uint"))
            {
                map.insert("format".into(), "int64".into());
            }
            map.values_mut().for_each(normalize_formats);
        }
        Value::Array(items) => items.iter_mut().for_each(normalize_formats),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_kubernetes_integer_formats_remain() {
        let yaml = crd_yaml();
        assert!(!yaml.contains("format: uint"), "unsigned formats are rewritten");
        assert!(yaml.contains("format: int64"));
    }
}
