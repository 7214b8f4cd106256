//! An API server of AiOrbs at platform scale, in memory: the orbs an API server would return
//! (`managedFields` and all) and a fake server paging them. Shared by the scenarios at scale and
//! the scale benchmark (`benches/scale.rs`), so both measure the same objects.
#![allow(dead_code)]

use http::{Request, Response};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::client::Body;
use orb_api::{AiOrbStatus, OrbPhase};
use serde_json::{Value, json};

pub type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

pub const NS: &str = "calls";

/// A platform's AiOrbs: `running` admitted and ready (holding the cap), `queued` waiting (the
/// first `shown` with their place written), `finished` ended a minute ago, labelled and kept for
/// their TTL. Queued orbs are created one second apart in name order, so the queue's order is the
/// names' order. Returns the orbs and the ledger holding the running ones.
pub struct Platform {
    pub orbs: Vec<Value>,
    pub ledger: Value,
}

pub fn platform(now: Timestamp, running: usize, queued: usize, finished: usize, shown: usize) -> Platform {
    let ago = |secs: usize| Time(now - SignedDuration::from_secs(secs as i64));
    let mut orbs = Vec::with_capacity(running + queued + finished);
    let mut held = String::new();
    for i in 0..running {
        let status = AiOrbStatus {
            phase: Some(OrbPhase::Ready),
            admitted_at: Some(ago(900)),
            session_started_at: Some(ago(900)),
            ready_at: Some(ago(880)),
            pod_name: Some(format!("orb-run-{i:05}-0")),
            node_name: Some(format!("gpu-{}", i % 16)),
            participants: Some(2),
            last_activity_time: Some(ago(5)),
            ..Default::default()
        };
        let name = format!("run-{i:05}");
        held.push_str(&format!("{NS}/{name} {}\n", uid("run", i)));
        orbs.push(aiorb(&name, &uid("run", i), ago(1000), status, now, false));
    }
    for i in 0..queued {
        let status = AiOrbStatus {
            phase: Some(OrbPhase::Queued),
            queue_position: (i < shown).then_some(i as i32 + 1),
            participants: Some(1),
            last_activity_time: Some(ago(5)),
            ..Default::default()
        };
        let created = ago(queued + 100 - i);
        orbs.push(aiorb(&format!("q-{i:05}"), &uid("q", i), created, status, now, false));
    }
    for i in 0..finished {
        let status = AiOrbStatus {
            phase: Some(OrbPhase::Succeeded),
            admitted_at: Some(ago(1900)),
            finished_at: Some(ago(60)),
            termination_reason: Some(orb_api::TerminationReason::SessionComplete),
            pod_name: Some(format!("orb-done-{i:05}-0")),
            participants: Some(0),
            last_activity_time: Some(ago(70)),
            ..Default::default()
        };
        orbs.push(aiorb(
            &format!("done-{i:05}"),
            &uid("done", i),
            ago(2000),
            status,
            now,
            true,
        ));
    }
    let ledger = json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "orb-operator-admission", "namespace": "orb-system", "resourceVersion": "7"},
        "data": {"admitted": held}});
    Platform { orbs, ledger }
}

fn uid(kind: &str, i: usize) -> String {
    let kind = kind
        .bytes()
        .fold(0u32, |h, b| h.wrapping_mul(31).wrapping_add(b as u32));
    format!("{kind:08x}-5a1e-4c0b-9d3f-{i:012x}")
}

/// One AiOrb as an API server returns it: the conditions the operator derives, and a
/// `managedFields` entry per writer (signaling's create and presence, the operator's finalizer,
/// status and label).
fn aiorb(name: &str, uid: &str, created: Time, mut status: AiOrbStatus, now: Timestamp, finished: bool) -> Value {
    orb_operator::status::derive_conditions(&mut status, Some(1), None, created.0);
    let at = created.0.to_string();
    let entry = |manager: &str, operation: &str, fields: Value, subresource: Option<&str>| {
        let mut e = json!({"manager": manager, "operation": operation, "apiVersion": "hybridcoach.io/v1alpha1",
            "time": at, "fieldsType": "FieldsV1", "fieldsV1": fields});
        if let Some(s) = subresource {
            e["subresource"] = json!(s);
        }
        e
    };
    let conditions: serde_json::Map<String, Value> = status
        .conditions
        .iter()
        .map(|c| {
            (
                format!("k:{{\"type\":\"{}\"}}", c.type_),
                json!({".": {}, "f:lastTransitionTime": {}, "f:message": {}, "f:observedGeneration": {},
                    "f:reason": {}, "f:status": {}, "f:type": {}}),
            )
        })
        .collect();
    let status_fields: serde_json::Map<String, Value> = serde_json::to_value(&status)
        .unwrap()
        .as_object()
        .unwrap()
        .keys()
        .filter(|k| !["participants", "lastActivityTime", "conditions"].contains(&k.as_str()))
        .map(|k| (format!("f:{k}"), json!({})))
        .chain([("f:conditions".to_owned(), Value::Object(conditions))])
        .collect();
    let mut managed = vec![
        entry(
            "orb-signaling",
            "Update",
            json!({"f:metadata": {"f:labels": {".": {}, "f:app.kubernetes.io/created-by": {}}},
                "f:spec": {".": {}, "f:clientId": {}, "f:coachId": {}, "f:roomId": {}, "f:sessionId": {}, "f:testMode": {}}}),
            None,
        ),
        entry(
            "orb-operator",
            "Update",
            json!({"f:metadata": {"f:finalizers": {".": {}, "v:\"hybridcoach.io/orb-cleanup\"": {}}}}),
            None,
        ),
        entry(
            "orb-operator",
            "Apply",
            json!({"f:status": status_fields}),
            Some("status"),
        ),
        entry(
            "orb-signaling",
            "Apply",
            json!({"f:status": {"f:lastActivityTime": {}, "f:participants": {}}}),
            Some("status"),
        ),
    ];
    let mut labels = json!({"app.kubernetes.io/created-by": "orb-signaling"});
    if finished {
        labels[orb_api::FINISHED_LABEL] = json!("true");
        managed.push(entry(
            "orb-operator",
            "Apply",
            json!({"f:metadata": {"f:labels": {"f:hybridcoach.io/finished": {}}}}),
            None,
        ));
    }
    let mut status = serde_json::to_value(&status).unwrap();
    status["observedGeneration"] = json!(1);
    json!({
        "apiVersion": "hybridcoach.io/v1alpha1",
        "kind": "AiOrb",
        "metadata": {
            "name": name, "namespace": NS, "uid": uid,
            "resourceVersion": format!("{}", 48_000_000 + now.as_second() % 1000),
            "generation": 1, "creationTimestamp": at,
            "finalizers": ["hybridcoach.io/orb-cleanup"],
            "labels": labels,
            "managedFields": managed,
        },
        "spec": {
            "roomId": name, "sessionId": format!("session-{uid}"),
            "coachId": "coach-7f3e2a", "clientId": format!("client-{}", &uid[uid.len() - 8..]),
        },
        "status": status,
    })
}

/// The orbs a fake API server holds, encoded once (the unfinished ones: the label selector's
/// answer).
pub struct Stored {
    unfinished: Vec<Vec<u8>>,
}

impl Stored {
    /// Unfinished orbs already encoded, one JSON object each.
    pub fn encoded(unfinished: Vec<Vec<u8>>) -> Stored {
        Stored { unfinished }
    }
}

pub fn store(orbs: &[Value]) -> Stored {
    Stored {
        unfinished: orbs
            .iter()
            .filter(|o| o["metadata"]["labels"][orb_api::FINISHED_LABEL] != "true")
            .map(|o| serde_json::to_vec(o).unwrap())
            .collect(),
    }
}

/// An API server holding `store` and the ledger: it pages the AiOrb list as asked,
/// applies its label selector, refuses a list without the unfinished-orb selector, answers writes
/// with the object, and returns every request it saw as `(method, uri)` and how many orbs it
/// listed. Serving a page costs next to nothing, so a benchmark's time is the operator's.
pub async fn serve_store(mut handle: Handle, ledger: Value, store: Stored) -> (Vec<(String, String)>, usize) {
    let Stored { unfinished } = store;
    let mut seen = Vec::new();
    let mut listed = 0;
    while let Some((request, reply)) = handle.next_request().await {
        let (method, uri) = (request.method().to_string(), request.uri().clone());
        let bytes = request.into_body().collect_bytes().await.unwrap();
        let query: std::collections::HashMap<String, String> = uri
            .query()
            .unwrap_or_default()
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| {
                (
                    k.to_owned(),
                    v.replace("%2F", "/").replace("%21", "!").replace("%3D", "="),
                )
            })
            .collect();
        let response = match (method.as_str(), uri.path()) {
            ("GET", p) if p.ends_with("/orb-operator-admission") => serde_json::to_vec(&ledger).unwrap(),
            ("GET", "/apis/hybridcoach.io/v1alpha1/aiorbs") => {
                assert_eq!(
                    query.get("labelSelector").map(String::as_str),
                    Some(orb_api::UNFINISHED_SELECTOR),
                    "an admission list must exclude finished orbs"
                );
                let from: usize = query.get("continue").map_or(0, |c| c.parse().unwrap());
                let limit: usize = query["limit"].parse().unwrap();
                let page: Vec<&[u8]> = unfinished.iter().skip(from).take(limit).map(Vec::as_slice).collect();
                listed += page.len();
                let next = (from + limit < unfinished.len()).then(|| (from + limit).to_string());
                let head = json!({"apiVersion": "v1", "kind": "List", "metadata": {"continue": next}});
                let head = serde_json::to_string(&head).unwrap();
                let mut list = format!("{},\"items\":[", head.strip_suffix('}').unwrap()).into_bytes();
                list.extend_from_slice(&page.join(&b","[..]));
                list.extend_from_slice(b"]}");
                list
            }
            ("PATCH", p) if p.ends_with("/status") => serde_json::to_vec(&json!({
                "apiVersion": "hybridcoach.io/v1alpha1", "kind": "AiOrb",
                "metadata": {"name": "any", "namespace": NS}, "spec": {"roomId": "any"}}))
            .unwrap(),
            // Creates and applies: the object as sent.
            _ => bytes.to_vec(),
        };
        reply.send_response(Response::builder().body(Body::from(response)).unwrap());
        seen.push((method, uri.to_string()));
    }
    (seen, listed)
}
