//! The committed CRD must be exactly what the types generate, and a schema a real API server
//! accepts (structural: every node typed, no `$ref`, no type unions, no untyped `anyOf`).

use serde_json::Value;

const COMMITTED: &str = include_str!("../generated/aiorbs.hybridcoach.io.yaml");
const REGENERATE: &str = "cargo run -p orb-operator -- crd > crds/generated/aiorbs.hybridcoach.io.yaml";

#[test]
fn committed_crd_matches_the_types() {
    assert!(
        COMMITTED == orb_api::crd_yaml(),
        "crds/generated/aiorbs.hybridcoach.io.yaml is out of date; regenerate it with `{REGENERATE}`"
    );
}

fn assert_structural(path: &str, node: &Value) {
    let obj = node
        .as_object()
        .unwrap_or_else(|| panic!("{path}: schema node is not an object"));
    assert!(!obj.contains_key("$ref"), "{path}: $ref is not allowed in a CRD schema");
    let preserves = obj.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true))
        || obj.get("x-kubernetes-int-or-string") == Some(&Value::Bool(true));
    match obj.get("type") {
        Some(Value::String(_)) => {}
        Some(other) => panic!("{path}: type must be a single string, got {other}"),
        None => assert!(preserves, "{path}: every schema node needs a type"),
    }
    for combinator in ["anyOf", "oneOf", "allOf"] {
        if let Some(Value::Array(branches)) = obj.get(combinator) {
            for b in branches {
                let b = b.as_object().unwrap();
                for forbidden in ["type", "description", "default", "nullable", "additionalProperties"] {
                    assert!(
                        !b.contains_key(forbidden),
                        "{path}: {combinator} branch may not set {forbidden}"
                    );
                }
            }
        }
    }
    if let Some(Value::Object(props)) = obj.get("properties") {
        for (k, v) in props {
            assert_structural(&format!("{path}.{k}"), v);
        }
    }
    if let Some(items) = obj.get("items") {
        assert_structural(&format!("{path}[]"), items);
    }
    if let Some(ap @ Value::Object(_)) = obj.get("additionalProperties") {
        assert_structural(&format!("{path}{{}}"), ap);
    }
}

#[test]
fn schema_is_structural_with_status_subresource_and_immutable_room() {
    let crd: Value = serde_norway::from_str(COMMITTED).unwrap();
    let version = &crd["spec"]["versions"][0];
    assert_eq!(version["subresources"]["status"], serde_json::json!({}));
    let schema = &version["schema"]["openAPIV3Schema"];
    assert_structural("", schema);
    let purpose = &schema["properties"]["spec"]["properties"]["purpose"];
    assert_eq!(
        (purpose["type"].as_str(), purpose["maxLength"].as_u64()),
        (Some("string"), Some(orb_api::MAX_PURPOSE_CHARS as u64)),
        "the API server bounds the purpose as the operator and the orb do"
    );
    let room = &schema["properties"]["spec"]["properties"]["roomId"];
    assert_eq!(room["x-kubernetes-validations"][0]["rule"], "self == oldSelf");
    assert_eq!(crd["spec"]["names"]["shortNames"][0], "orb");
    let columns: Vec<&str> = version["additionalPrinterColumns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    for want in ["Room", "Phase", "Participants", "Node", "Age"] {
        assert!(columns.contains(&want), "missing printer column {want}");
    }
}
