//! Mocked-API scenarios: the reconciler and the admitter run against a scripted API server
//! (kube-rs' `ApiServerVerifier` pattern with tower-test). Each script lists the exact requests
//! expected, in order; a missing, different or extra request fails the test.

use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use k8s_openapi::jiff::Timestamp;
use kube::client::Body;
use kube::runtime::controller::Action;
use kube::runtime::events::{Recorder, Reporter};
use kube::{Api, Client};
use orb_api::AiOrb;
use orb_api::auth::SigningKey;
use orb_operator::admission::Admitter;
use orb_operator::config::PodSettings;
use orb_operator::controller::{Context, Error, error_policy, reconcile};
use orb_operator::metrics::Metrics;
use orb_operator::policy::Limits;
use serde_json::{Value, json};

mod support;

use support::{Handle, NS, assert_granted};

const ORBS: &str = "/apis/hybridcoach.io/v1alpha1/namespaces/calls/aiorbs";
const PODS: &str = "/api/v1/namespaces/calls/pods";
const SECRETS: &str = "/api/v1/namespaces/calls/secrets";
const EVENTS: &str = "/apis/events.k8s.io/v1/namespaces/calls/events?";
const LEDGER: &str = "/api/v1/namespaces/orb-system/configmaps";
/// The admission pass's list: unfinished orbs only, in pages.
const UNFINISHED: &str =
    "/apis/hybridcoach.io/v1alpha1/aiorbs?&labelSelector=hybridcoach.io%2Ffinished%21%3Dtrue&limit=500";

/// 2027-01-15T08:00:00Z: every scenario runs at this instant.
fn now() -> Timestamp {
    "2027-01-15T08:00:00Z".parse().unwrap()
}

fn ago(secs: i64) -> String {
    now()
        .checked_sub(k8s_openapi::jiff::SignedDuration::from_secs(secs))
        .unwrap()
        .to_string()
}

/// One expected request and the canned response.
struct Exchange {
    method: &'static str,
    uri: String,
    status: u16,
    /// `None` echoes the request body back (what the API server does for creates and applies).
    response: Option<Value>,
}

fn expect(method: &'static str, uri: impl Into<String>, response: Option<Value>) -> Exchange {
    Exchange {
        method,
        uri: uri.into(),
        status: 200,
        response,
    }
}

fn not_found(method: &'static str, uri: impl Into<String>) -> Exchange {
    let status = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404, "message": "not found"});
    Exchange {
        method,
        uri: uri.into(),
        status: 404,
        response: Some(status),
    }
}

fn conflict(method: &'static str, uri: impl Into<String>) -> Exchange {
    let status = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Conflict", "code": 409, "message": "the object has been modified"});
    Exchange {
        method,
        uri: uri.into(),
        status: 409,
        response: Some(status),
    }
}

fn event() -> Exchange {
    expect("POST", EVENTS, None)
}

#[derive(Debug)]
struct Seen {
    uri: String,
    body: Value,
}

async fn verify(mut handle: Handle, script: Vec<Exchange>) -> Vec<Seen> {
    let mut seen: Vec<Seen> = Vec::new();
    for (i, want) in script.into_iter().enumerate() {
        let made: Vec<String> = seen.iter().map(|s| s.uri.clone()).collect();
        let (request, reply) = handle.next_request().await.unwrap_or_else(|| {
            panic!(
                "request #{i} {} {} was never made; made: {made:#?}",
                want.method, want.uri
            )
        });
        let (method, uri) = (request.method().to_string(), request.uri().to_string());
        assert_granted(&method, request.uri());
        let bytes = request.into_body().collect_bytes().await.unwrap();
        let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        assert_eq!(
            (method.as_str(), uri.as_str()),
            (want.method, want.uri.as_str()),
            "request #{i}; before it: {made:#?}"
        );
        let response = want.response.unwrap_or_else(|| body.clone());
        reply.send_response(
            Response::builder()
                .status(want.status)
                .body(Body::from(serde_json::to_vec(&response).unwrap()))
                .unwrap(),
        );
        seen.push(Seen { uri, body });
    }
    if let Some((request, _)) = handle.next_request().await {
        panic!("unexpected extra request {} {}", request.method(), request.uri());
    }
    seen
}

fn context(client: Client, cap: usize) -> Context {
    Context {
        recorder: Recorder::new(
            client.clone(),
            Reporter {
                controller: "orb-operator".into(),
                instance: None,
            },
        ),
        client,
        limits: Limits {
            max_concurrent_orbs: cap,
            ..Limits::default()
        },
        pod: PodSettings {
            image: "orb:test".into(),
            image_pull_policy: "IfNotPresent".into(),
            signaling_url: "ws://orb-signaling:8080".into(),
            gpu_resource: "nvidia.com/gpu".into(),
            gpu_count: 1,
            ..Default::default()
        },
        signing_key: SigningKey::new(vec![7u8; 32]).unwrap(),
        metrics: Arc::new(Metrics::default()),
        admission: Default::default(),
        now,
    }
}

/// Runs one reconcile of `orb` against `script`.
async fn reconcile_with(orb: Value, script: Vec<Exchange>) -> (Result<Action, Error>, Vec<Seen>) {
    let (result, seen, _) = reconcile_waking(orb, script).await;
    (result, seen)
}

/// [`reconcile_with`], also telling whether the reconcile woke the admitter.
async fn reconcile_waking(orb: Value, script: Vec<Exchange>) -> (Result<Action, Error>, Vec<Seen>, bool) {
    use futures::FutureExt;
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let verifier = tokio::spawn(verify(handle, script));
    let ctx = Arc::new(context(Client::new(service, "default"), 8));
    let orb: AiOrb = serde_json::from_value(orb).unwrap();
    let result = reconcile(Arc::new(orb), ctx.clone()).await;
    let woke = [&ctx.admission.freed, &ctx.admission.queued]
        .iter()
        .any(|n| n.notified().now_or_never().is_some());
    drop(ctx);
    (result, finish(verifier).await, woke)
}

/// Runs one admission pass with `cap` against `script`.
async fn admission_pass(
    cap: usize,
    script: Vec<Exchange>,
) -> (
    Result<orb_operator::admission::PassOutcome, orb_operator::admission::AdmissionError>,
    Vec<Seen>,
) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let verifier = tokio::spawn(verify(handle, script));
    let client = Client::new(service, "default");
    let ctx = context(client.clone(), cap);
    let admitter = admitter(client, &ctx, cap, 10);
    let result = admitter.pass().await;
    drop((admitter, ctx));
    (result, finish(verifier).await)
}

/// The admitter of `ctx`'s world, with no finished orbs in its cache.
fn admitter(client: Client, ctx: &Context, cap: usize, shown_positions: usize) -> Admitter {
    Admitter {
        ledger: Api::namespaced(client.clone(), "orb-system"),
        orbs: Api::all(client.clone()),
        client,
        cap,
        shown_positions,
        limits: Default::default(),
        cache: kube::runtime::reflector::store().0,
        metrics: ctx.metrics.clone(),
        recorder: ctx.recorder.clone(),
        wake: ctx.admission.clone(),
        now,
    }
}

async fn admit_with(cap: usize, script: Vec<Exchange>) -> Vec<Seen> {
    let (result, seen) = admission_pass(cap, script).await;
    result.expect("admission pass");
    seen
}

async fn finish(verifier: tokio::task::JoinHandle<Vec<Seen>>) -> Vec<Seen> {
    // Generous: this only guards against a hang, it measures nothing.
    tokio::time::timeout(Duration::from_secs(60), verifier)
        .await
        .expect("the scripted API server hung")
        .unwrap()
}

// ---- fixtures ----

fn orb(name: &str, uid: &str, created_ago: i64, status: Value) -> Value {
    let mut o = json!({
        "apiVersion": "hybridcoach.io/v1alpha1",
        "kind": "AiOrb",
        "metadata": {
            "name": name, "namespace": NS, "uid": uid, "resourceVersion": "100", "generation": 1,
            "creationTimestamp": ago(created_ago), "finalizers": ["hybridcoach.io/orb-cleanup"]
        },
        "spec": {"roomId": name, "coachId": "coach-1"},
    });
    if !status.is_null() {
        o["status"] = status;
    }
    o
}

fn running(admitted_ago: i64) -> Value {
    json!({"phase": "Ready", "admittedAt": ago(admitted_ago), "podName": "orb-room-1-0", "nodeName": "gpu-1",
        "participants": 2, "lastActivityTime": ago(10)})
}

fn pod(phase: &str, ready: bool, message: Option<&str>) -> Value {
    let mut p = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "orb-room-1-0", "namespace": NS},
        "spec": {"nodeName": "gpu-1", "containers": [{"name": "orb"}]},
        "status": {"phase": phase, "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]}
    });
    if let Some(m) = message {
        p["status"]["containerStatuses"] = json!([{"name": "orb", "image": "orb", "imageID": "", "ready": false,
            "restartCount": 0, "state": {"terminated": {"exitCode": 1, "message": m}}}]);
    }
    p
}

fn status_of(seen: &Seen) -> &Value {
    assert!(seen.uri.contains("/status?"), "not a status write: {}", seen.uri);
    assert_eq!(
        seen.body["metadata"]["resourceVersion"], "100",
        "status writes carry a resourceVersion precondition"
    );
    &seen.body["status"]
}

/// A status apply; the API server answers with the whole object.
fn status_write(name: &str) -> Exchange {
    expect("PATCH", status_uri(name), Some(orb(name, "uid", 0, Value::Null)))
}

/// The finished label, applied to the AiOrb itself once its terminal status is written.
fn label_finished(name: &str) -> Exchange {
    expect(
        "PATCH",
        format!("{ORBS}/{name}?&force=true&fieldManager=orb-operator"),
        Some(orb(name, "uid", 0, Value::Null)),
    )
}

fn assert_finished_label(seen: &Seen, uid: &str) {
    assert_eq!(seen.body["metadata"]["labels"]["hybridcoach.io/finished"], "true");
    assert_eq!(
        seen.body["metadata"]["uid"], uid,
        "a precondition: never the label of another AiOrb of the same name"
    );
    assert!(seen.body.get("spec").is_none() && seen.body.get("status").is_none());
}

fn status_uri(name: &str) -> String {
    format!("{ORBS}/{name}/status?&force=true&fieldManager=orb-operator")
}

// ---- scenarios ----

#[tokio::test]
async fn first_reconcile_adds_the_finalizer_then_queues_then_admission_then_the_pod() {
    // 1. No finalizer yet: add it, nothing else.
    let mut fresh = orb("room-1", "uid-1", 5, Value::Null);
    fresh["metadata"].as_object_mut().unwrap().remove("finalizers");
    let (result, seen) = reconcile_with(
        fresh,
        vec![expect(
            "PATCH",
            format!("{ORBS}/room-1?"),
            Some(orb("room-1", "uid-1", 5, Value::Null)),
        )],
    )
    .await;
    assert_eq!(result.unwrap(), Action::await_change());
    assert_eq!(seen[0].body[1]["path"], "/metadata/finalizers");

    // 2. Not admitted: the orb shows Queued and wakes the admitter; no pod is looked up.
    let (result, seen, woke) =
        reconcile_waking(orb("room-1", "uid-1", 5, Value::Null), vec![status_write("room-1")]).await;
    assert!(result.is_ok() && woke);
    let status = status_of(&seen[0]);
    assert_eq!(status["phase"], "Queued");
    assert!(
        status.get("participants").is_none(),
        "the operator never writes signaling's fields"
    );

    // 3. The admitter: ledger, fresh list, ledger write (create), status, event.
    let queued = orb("room-1", "uid-1", 5, json!({"phase": "Queued"}));
    let seen = admit_with(
        8,
        vec![
            not_found("GET", format!("{LEDGER}/orb-operator-admission")),
            expect(
                "GET",
                UNFINISHED,
                Some(json!({"apiVersion": "v1", "kind": "List", "metadata": {}, "items": [queued]})),
            ),
            expect("POST", format!("{LEDGER}?"), None),
            status_write("room-1"),
            event(),
        ],
    )
    .await;
    assert_eq!(seen[2].body["data"]["admitted"], "calls/room-1 uid-1\n");
    let status = status_of(&seen[3]);
    assert_eq!(status["phase"], "Starting");
    assert_eq!(status["admittedAt"], now().to_string());
    assert_eq!(seen[4].body["reason"], "Admitted");

    // 4. Admitted, no pod: token Secret (looked up first: none), pod, event, status.
    let admitted = orb("room-1", "uid-1", 5, json!({"phase": "Starting", "admittedAt": ago(1)}));
    let (result, seen) = reconcile_with(
        admitted,
        vec![
            not_found("GET", format!("{PODS}/orb-room-1-0")),
            not_found("GET", format!("{SECRETS}/orb-room-1-token")),
            expect("POST", format!("{SECRETS}?&fieldManager=orb-operator"), None),
            expect("POST", format!("{PODS}?&fieldManager=orb-operator"), None),
            event(),
            status_write("room-1"),
        ],
    )
    .await;
    assert!(result.is_ok());
    let seen = &seen[1..];
    assert_eq!(seen[1].body["metadata"]["ownerReferences"][0]["uid"], "uid-1");
    let token = String::from_utf8(k8s_openapi::ByteString::deserialize_from(&seen[1].body["data"]["token"]).0).unwrap();
    let claims = SigningKey::new(vec![7u8; 32])
        .unwrap()
        .verify_at(
            &token,
            "room-1",
            now().as_second() as u64,
            orb_api::auth::MAX_TOKEN_TTL_SECONDS,
        )
        .expect("a valid room token");
    assert_eq!(claims.role, orb_api::auth::Role::Ai);
    let pod = &seen[2].body;
    assert_eq!(pod["metadata"]["name"], "orb-room-1-0");
    assert_eq!(
        pod["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"],
        "1"
    );
    assert_eq!(seen[3].body["reason"], "PodCreated");
    assert_eq!(status_of(&seen[4])["podName"], "orb-room-1-0");
}

/// `ByteString` reads base64 from JSON.
trait FromJson {
    fn deserialize_from(v: &Value) -> Self;
}
impl FromJson for k8s_openapi::ByteString {
    fn deserialize_from(v: &Value) -> Self {
        serde_json::from_value(v.clone()).unwrap()
    }
}

#[tokio::test]
async fn a_queued_orb_gets_its_position_in_status_and_no_pod() {
    let holder = orb("room-0", "uid-0", 100, running(90));
    let waiting = orb("room-1", "uid-1", 5, json!({"phase": "Queued"}));
    let ledger = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "orb-operator-admission", "resourceVersion": "7"},
        "data": {"admitted": "calls/room-0 uid-0\n"}});
    let seen = admit_with(
        1,
        vec![
            expect("GET", format!("{LEDGER}/orb-operator-admission"), Some(ledger)),
            expect(
                "GET",
                UNFINISHED,
                Some(json!({"apiVersion": "v1", "kind": "List", "metadata": {}, "items": [holder, waiting.clone()]})),
            ),
            status_write("room-1"),
        ],
    )
    .await;
    let status = status_of(&seen[2]);
    assert_eq!(
        (status["phase"].as_str(), status["queuePosition"].as_i64()),
        (Some("Queued"), Some(1))
    );
    assert!(status.get("admittedAt").is_none());

    // Its own reconcile then has nothing to do: no pod lookup, no write, and no new admission
    // pass (a pass per position written would make every pass cause the next).
    let mut positioned = waiting;
    positioned["status"] = status.clone();
    let (result, seen, woke) = reconcile_waking(positioned, vec![]).await;
    assert!(result.is_ok());
    assert!(seen.is_empty());
    assert!(!woke, "a queued orb's reconcile does not wake the admitter again");
}

#[tokio::test]
async fn capacity_freed_admits_the_head_of_the_queue_with_a_compare_and_swap() {
    let done = orb(
        "room-0",
        "uid-0",
        100,
        json!({"phase": "Succeeded", "admittedAt": ago(90), "finishedAt": ago(1)}),
    );
    let waiting = orb("room-1", "uid-1", 5, json!({"phase": "Queued", "queuePosition": 1}));
    let ledger = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "orb-operator-admission", "resourceVersion": "7"},
        "data": {"admitted": "calls/room-0 uid-0\n"}});
    let seen = admit_with(
        1,
        vec![
            expect("GET", format!("{LEDGER}/orb-operator-admission"), Some(ledger)),
            expect(
                "GET",
                UNFINISHED,
                Some(json!({"apiVersion": "v1", "kind": "List", "metadata": {}, "items": [done, waiting]})),
            ),
            expect("PUT", format!("{LEDGER}/orb-operator-admission?"), None),
            status_write("room-1"),
            event(),
        ],
    )
    .await;
    assert_eq!(
        seen[2].body["metadata"]["resourceVersion"], "7",
        "the ledger write is conditional on what was read"
    );
    assert_eq!(seen[2].body["data"]["admitted"], "calls/room-1 uid-1\n");
    // The new orb's session starts its lifetime budget, in the same compare-and-swap.
    let spec: orb_api::AiOrbSpec = serde_json::from_value(waiting_spec()).unwrap();
    let key = orb_operator::policy::session_key(NS, &spec);
    assert_eq!(
        seen[2].body["data"]["sessions"],
        format!("{key} {}\n", now().as_second())
    );
    assert_eq!(status_of(&seen[3])["phase"], "Starting");
    assert_eq!(status_of(&seen[3])["sessionStartedAt"], now().to_string());
}

fn waiting_spec() -> Value {
    orb("room-1", "uid-1", 5, Value::Null)["spec"].clone()
}

/// The lifetime is the session's: an AiOrb re-created for a session whose budget started 2 h 1 min
/// ago (the page reloaded after the orb ended with MaxLifetime) inherits that start from the
/// ledger, and its first reconcile ends it with MaxLifetime instead of starting a pod. Budgets
/// older than their retention are dropped from the ledger in the same write.
#[tokio::test]
async fn a_recreated_aiorb_of_a_spent_session_gets_no_fresh_lifetime() {
    let spec: orb_api::AiOrbSpec = serde_json::from_value(waiting_spec()).unwrap();
    let key = orb_operator::policy::session_key(NS, &spec);
    let started = now().as_second() - 7260;
    let forgotten = now().as_second() - 5 * 3600;
    let waiting = orb("room-1", "uid-2", 5, json!({"phase": "Queued", "queuePosition": 1}));
    let ledger = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "orb-operator-admission", "resourceVersion": "7"},
        "data": {"admitted": "", "sessions": format!("0123456789abcdef {forgotten}\n{key} {started}\n")}});
    let seen = admit_with(
        8,
        vec![
            expect("GET", format!("{LEDGER}/orb-operator-admission"), Some(ledger)),
            expect(
                "GET",
                UNFINISHED,
                Some(json!({"apiVersion": "v1", "kind": "List", "metadata": {}, "items": [waiting]})),
            ),
            expect("PUT", format!("{LEDGER}/orb-operator-admission?"), None),
            status_write("room-1"),
            event(),
        ],
    )
    .await;
    assert_eq!(seen[2].body["data"]["sessions"], format!("{key} {started}\n"));
    let status = status_of(&seen[3]).clone();
    let session_start = k8s_openapi::jiff::Timestamp::from_second(started).unwrap().to_string();
    assert_eq!(status["sessionStartedAt"], session_start);

    // Its first reconcile: the budget is spent, so no pod — the orb ends with MaxLifetime.
    let (result, seen) = reconcile_with(
        orb("room-1", "uid-2", 5, status),
        vec![
            not_found("GET", format!("{PODS}/orb-room-1-0")),
            // Terminating deletes the (absent) pod idempotently.
            not_found("DELETE", format!("{PODS}/orb-room-1-0?")),
            event(),
            status_write("room-1"),
        ],
    )
    .await;
    assert!(result.is_ok(), "{result:?}");
    let status = status_of(&seen[3]);
    // The script has no pod create: a request for one would fail the scenario.
    assert_eq!(
        (status["phase"].as_str(), status["terminationReason"].as_str()),
        (Some("Terminating"), Some("MaxLifetime"))
    );
}

#[tokio::test]
async fn a_ledger_conflict_aborts_the_pass_before_any_admission() {
    let waiting = orb("room-1", "uid-1", 5, json!({"phase": "Queued"}));
    let (result, _) = admission_pass(
        8,
        vec![
            not_found("GET", format!("{LEDGER}/orb-operator-admission")),
            expect(
                "GET",
                UNFINISHED,
                Some(json!({"apiVersion": "v1", "kind": "List", "metadata": {}, "items": [waiting]})),
            ),
            conflict("POST", format!("{LEDGER}?")),
        ],
    )
    .await;
    assert!(
        matches!(result, Err(orb_operator::admission::AdmissionError::Conflict)),
        "{result:?}"
    );
}

#[tokio::test]
async fn a_reached_deadline_terminates_and_deletes_the_pod() {
    let (result, seen) = reconcile_with(
        orb("room-1", "uid-1", 7300, running(7200)),
        vec![
            expect("GET", format!("{PODS}/orb-room-1-0"), Some(pod("Running", true, None))),
            expect(
                "DELETE",
                format!("{PODS}/orb-room-1-0?"),
                Some(pod("Running", true, None)),
            ),
            event(),
            status_write("room-1"),
        ],
    )
    .await;
    assert!(result.is_ok());
    assert_eq!(seen[1].body["gracePeriodSeconds"], 10);
    assert_eq!(seen[2].body["reason"], "Terminating");
    let status = status_of(&seen[3]);
    assert_eq!(
        (status["phase"].as_str(), status["terminationReason"].as_str()),
        (Some("Terminating"), Some("MaxLifetime"))
    );
}

#[tokio::test]
async fn a_succeeded_pod_finishes_the_orb_with_its_reason() {
    let (result, seen) = reconcile_with(
        orb("room-1", "uid-1", 600, running(500)),
        vec![
            expect(
                "GET",
                format!("{PODS}/orb-room-1-0"),
                Some(pod("Succeeded", false, Some("SessionComplete: summary sent"))),
            ),
            event(),
            status_write("room-1"),
            label_finished("room-1"),
        ],
    )
    .await;
    assert_finished_label(&seen[3], "uid-1");
    // Finished orbs come back after the TTL to be deleted.
    assert_eq!(result.unwrap(), Action::requeue(Duration::from_secs(3601)));
    let status = status_of(&seen[2]);
    assert_eq!(status["phase"], "Succeeded");
    assert_eq!(status["terminationReason"], "SessionComplete");
    assert_eq!(status["finishedAt"], now().to_string());
    assert_eq!(status["message"], "SessionComplete: summary sent");
}

/// A pass woken before the finished status lands could list the orb as it was, admit nobody into
/// the slot it frees and leave the slot empty until the resync: the admitter is woken only once
/// the write is done.
#[tokio::test]
async fn the_admitter_is_woken_only_once_the_finished_status_is_written() {
    let succeeded = || {
        expect(
            "GET",
            format!("{PODS}/orb-room-1-0"),
            Some(pod("Succeeded", false, Some("SessionComplete"))),
        )
    };
    let running_orb = || orb("room-1", "uid-1", 600, running(500));
    let (result, _, woke) = reconcile_waking(
        running_orb(),
        vec![succeeded(), event(), conflict("PATCH", status_uri("room-1"))],
    )
    .await;
    assert!(result.is_err() && !woke, "the write failed: the slot is not free yet");
    let (result, _, woke) = reconcile_waking(
        running_orb(),
        vec![succeeded(), event(), status_write("room-1"), label_finished("room-1")],
    )
    .await;
    assert!(result.is_ok() && woke);
}

#[tokio::test]
async fn deleting_an_orb_stops_its_pod_then_removes_the_finalizer() {
    let mut deleting = orb("room-1", "uid-1", 600, running(500));
    deleting["metadata"]["deletionTimestamp"] = json!(ago(1));
    // First pass: the pod still runs; delete it, record Terminating, keep the finalizer.
    let (result, seen) = reconcile_with(
        deleting.clone(),
        vec![
            expect("GET", format!("{PODS}/orb-room-1-0"), Some(pod("Running", true, None))),
            expect(
                "DELETE",
                format!("{PODS}/orb-room-1-0?"),
                Some(pod("Running", true, None)),
            ),
            status_write("room-1"),
            event(),
        ],
    )
    .await;
    assert!(result.is_err(), "the finalizer stays while the pod runs");
    assert_eq!(status_of(&seen[2])["terminationReason"], "Deleted");

    // Second pass: the pod is gone; record the end, then remove the finalizer.
    deleting["status"]["phase"] = json!("Terminating");
    deleting["status"]["terminationReason"] = json!("Deleted");
    let (result, seen) = reconcile_with(
        deleting,
        vec![
            not_found("GET", format!("{PODS}/orb-room-1-0")),
            status_write("room-1"),
            event(),
            expect(
                "PATCH",
                format!("{ORBS}/room-1?"),
                Some(orb("room-1", "uid-1", 600, Value::Null)),
            ),
        ],
    )
    .await;
    assert!(result.is_ok());
    assert_eq!(status_of(&seen[1])["phase"], "Succeeded");
    assert_eq!(
        seen[3].body[1],
        json!({"op": "remove", "path": "/metadata/finalizers/0"})
    );
}

#[tokio::test]
async fn a_failed_pod_in_an_occupied_room_is_replaced_after_the_backoff() {
    // First: record the failure and wait out the backoff.
    let (result, seen) = reconcile_with(
        orb("room-1", "uid-1", 600, running(500)),
        vec![
            expect(
                "GET",
                format!("{PODS}/orb-room-1-0"),
                Some(pod("Failed", false, Some("Error: brain crashed"))),
            ),
            event(),
            status_write("room-1"),
        ],
    )
    .await;
    assert_eq!(result.unwrap(), Action::requeue(Duration::from_secs(11)));
    assert_eq!(seen[1].body["reason"], "PodFailed");
    let status = status_of(&seen[2]).clone();
    assert_eq!(status["message"], "Error: brain crashed");
    let replacing = status["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Replacing")
        .unwrap();
    assert_eq!(replacing["status"], "True");

    // After the backoff: the old pod goes, attempt 1 comes with a fresh token.
    let mut waited = orb("room-1", "uid-1", 600, status);
    // The operator's write carried none of signaling's presence fields; the object still has them.
    waited["status"]["participants"] = json!(2);
    waited["status"]["lastActivityTime"] = json!(ago(10));
    for c in waited["status"]["conditions"].as_array_mut().unwrap() {
        c["lastTransitionTime"] = json!(ago(11));
    }
    let (result, seen) = reconcile_with(
        waited,
        vec![
            expect(
                "GET",
                format!("{PODS}/orb-room-1-0"),
                Some(pod("Failed", false, Some("Error: brain crashed"))),
            ),
            expect(
                "DELETE",
                format!("{PODS}/orb-room-1-0?"),
                Some(pod("Failed", false, None)),
            ),
            // The Secret of attempt 0 is the orb's own: a fresh token is applied over it.
            expect(
                "GET",
                format!("{SECRETS}/orb-room-1-token"),
                Some(secret_meta("orb-room-1-token", Some(("AiOrb", "room-1", "uid-1")))),
            ),
            expect(
                "PATCH",
                format!("{SECRETS}/orb-room-1-token?&force=true&fieldManager=orb-operator"),
                None,
            ),
            expect("POST", format!("{PODS}?&fieldManager=orb-operator"), None),
            event(),
            status_write("room-1"),
        ],
    )
    .await;
    assert!(result.is_ok());
    assert_eq!(seen[4].body["metadata"]["name"], "orb-room-1-1");
    assert_eq!(seen[5].body["reason"], "PodReplaced");
    let status = status_of(&seen[6]);
    assert_eq!(
        (status["restarts"].as_i64(), status["podName"].as_str()),
        (Some(1), Some("orb-room-1-1"))
    );
}

#[tokio::test]
async fn an_invalid_spec_fails_once_with_a_warning_and_no_pod() {
    let mut bad = orb("room-1", "uid-1", 5, Value::Null);
    bad["spec"]["roomId"] = json!("no spaces allowed");
    let (result, seen) = reconcile_with(
        bad.clone(),
        vec![event(), status_write("room-1"), label_finished("room-1")],
    )
    .await;
    assert!(result.is_ok());
    assert_eq!(
        (seen[0].body["type"].as_str(), seen[0].body["reason"].as_str()),
        (Some("Warning"), Some("Failed"))
    );
    let status = status_of(&seen[1]).clone();
    assert_eq!(
        (status["phase"].as_str(), status["terminationReason"].as_str()),
        (Some("Failed"), Some("InvalidSpec"))
    );
    assert!(status["message"].as_str().unwrap().contains("spec.roomId"));
    // Reconciling the failed (and labelled) orb again writes nothing: no hot loop.
    bad["status"] = status;
    bad["metadata"]["labels"] = json!({"hybridcoach.io/finished": "true"});
    let (result, seen) = reconcile_with(bad, vec![]).await;
    assert!(result.is_ok() && seen.is_empty());
}

#[tokio::test]
async fn after_a_restart_the_admitter_rebuilds_from_the_api_and_admits_nothing_over_the_cap() {
    let mut items: Vec<Value> = (0..8)
        .map(|i| orb(&format!("room-{i}"), &format!("uid-{i}"), 1000 - i, running(900)))
        .collect();
    items.push(orb(
        "room-8",
        "uid-8",
        5,
        json!({"phase": "Queued", "queuePosition": 1}),
    ));
    // The ledger ConfigMap was lost too: the status alone must hold the line.
    let seen = admit_with(
        8,
        vec![
            not_found("GET", format!("{LEDGER}/orb-operator-admission")),
            expect(
                "GET",
                UNFINISHED,
                Some(json!({"apiVersion": "v1", "kind": "List", "metadata": {}, "items": items})),
            ),
            expect("POST", format!("{LEDGER}?"), None),
        ],
    )
    .await;
    assert_eq!(seen[2].body["data"]["admitted"].as_str().unwrap().lines().count(), 8);
}

#[tokio::test]
async fn conflicts_retry_soon_and_other_errors_back_off() {
    let o: AiOrb = serde_json::from_value(orb("room-1", "uid-1", 5, Value::Null)).unwrap();
    let (service, _handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let ctx = Arc::new(context(Client::new(service, "default"), 8));
    let conflict = Error::Kube(kube::Error::Api(
        kube::core::Status::failure("modified", "Conflict")
            .with_code(409)
            .boxed(),
    ));
    assert_eq!(
        error_policy(Arc::new(o.clone()), &conflict, ctx.clone()),
        Action::requeue(Duration::from_secs(1))
    );
    let other = Error::Kube(kube::Error::Api(
        kube::core::Status::failure("boom", "InternalError")
            .with_code(500)
            .boxed(),
    ));
    assert_eq!(
        error_policy(Arc::new(o), &other, ctx),
        Action::requeue(Duration::from_secs(15))
    );
}

// ---- at platform scale ----

/// 10 000 unfinished AiOrbs — 100 holding the cap, 9 900 queued with the first 10 places shown,
/// the last 1 000 of them so new they have no status yet — and 1 000 finished ones kept for their
/// TTL. One admitted orb has just finished: the pass that fills its slot writes the ledger, the
/// admitted orb's status and its event, and the 10 shown positions that moved up: at most
/// `shown_positions + 3` writes, whatever the queue's length (before, every queued orb's position
/// was rewritten: 9 900 writes). The finished orbs are never listed.
#[tokio::test]
async fn a_freed_slot_in_a_queue_of_9900_costs_a_bounded_number_of_writes() {
    const SHOWN: usize = 10;
    let mut platform = support::platform(now(), 100, 9_900, 1_000, SHOWN);
    // One running orb has just ended; its label is not written yet, so the pass still lists it.
    platform.orbs[42]["status"]["phase"] = json!("Succeeded");
    // A burst of new orbs at the back, not reconciled yet: no status at all.
    for new in &mut platform.orbs[9_000..10_000] {
        new.as_object_mut().unwrap().remove("status");
    }
    let stored = support::store(&platform.orbs);
    drop(platform.orbs);
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let server = tokio::spawn(support::serve_store(handle, platform.ledger, stored));
    let client = Client::new(service, "default");
    let ctx = context(client.clone(), 100);
    let admitter = admitter(client, &ctx, 100, SHOWN);
    let outcome = admitter.pass().await.expect("admission pass");
    let metrics = ctx.metrics.encode();
    drop((admitter, ctx));
    let (seen, listed) = tokio::time::timeout(Duration::from_secs(120), server)
        .await
        .expect("the API server hung")
        .unwrap();

    assert_eq!(outcome.admitted, vec!["q-00000"]);
    assert_eq!(outcome.queued, 9_899);
    assert_eq!(listed, 10_000, "the 1 000 finished orbs are not listed");
    let writes: Vec<&(String, String)> = seen.iter().filter(|(m, _)| m != "GET").collect();
    let status_writes = writes.iter().filter(|(_, u)| u.contains("/status?")).count();
    assert!(
        writes.len() <= SHOWN + 3,
        "{} writes for one freed slot: {writes:#?}",
        writes.len()
    );
    // Exactly: the ledger, the admitted orb's status and event, and the 10 positions shown.
    assert_eq!((writes.len(), status_writes), (SHOWN + 3, 1 + SHOWN));
    let reads = seen.len() - writes.len();
    assert_eq!(reads, 1 + 10_000 / orb_operator::admission::LIST_PAGE as usize);
    assert!(metrics.contains("orb_operator_namespace_queue_length{namespace=\"calls\"} 9899"));
}

// ---- objects with the orb's names that are not the orb's ----

/// An object's metadata as the API server returns it, controlled by `controller`
/// (`(kind, name, uid)`) or by nothing.
fn owned_meta(name: &str, controller: Option<(&str, &str, &str)>) -> Value {
    let mut meta = json!({"name": name, "namespace": NS, "resourceVersion": "5"});
    if let Some((kind, owner, uid)) = controller {
        let api_version = if kind == "AiOrb" {
            "hybridcoach.io/v1alpha1"
        } else {
            "apps/v1"
        };
        meta["ownerReferences"] =
            json!([{"apiVersion": api_version, "kind": kind, "name": owner, "uid": uid, "controller": true}]);
    }
    meta
}

fn secret_meta(name: &str, controller: Option<(&str, &str, &str)>) -> Value {
    json!({"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata", "metadata": owned_meta(name, controller)})
}

fn admitted_orb() -> Value {
    orb("room-1", "uid-1", 5, json!({"phase": "Starting", "admittedAt": ago(1)}))
}

fn assert_name_conflict(seen: &[Seen], what: &str) {
    let event = &seen[seen.len() - 2].body;
    assert_eq!(
        (event["type"].as_str(), event["reason"].as_str()),
        (Some("Warning"), Some("NameConflict"))
    );
    let status = status_of(seen.last().unwrap());
    assert_eq!(status["phase"], "Failed");
    assert_eq!(status["terminationReason"], "NameConflict");
    let message = status["message"].as_str().unwrap();
    assert!(
        message.starts_with(what) && message.ends_with("it was left untouched"),
        "{message}"
    );
    let ready = status["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Ready")
        .unwrap();
    assert_eq!(
        (ready["status"].as_str(), ready["reason"].as_str()),
        (Some("False"), Some("NameConflict"))
    );
}

/// A Secret named like the orb's token Secret that the orb does not control (someone's own, or
/// one planted to catch the token): never written, no pod, the orb fails with NameConflict and
/// frees its slot; nothing is retried.
#[tokio::test]
async fn a_foreign_secret_with_the_token_s_name_is_never_overwritten() {
    for controller in [
        None,
        Some(("Deployment", "someone", "uid-x")),
        Some(("AiOrb", "room-2", "uid-2")),
    ] {
        let (result, seen, woke) = reconcile_waking(
            admitted_orb(),
            vec![
                not_found("GET", format!("{PODS}/orb-room-1-0")),
                expect(
                    "GET",
                    format!("{SECRETS}/orb-room-1-token"),
                    Some(secret_meta("orb-room-1-token", controller)),
                ),
                event(),
                status_write("room-1"),
                label_finished("room-1"),
            ],
        )
        .await;
        assert!(woke, "the slot is freed");
        assert!(
            matches!(result, Ok(ref a) if *a != Action::requeue(Duration::from_secs(1))),
            "{result:?}"
        );
        assert_name_conflict(
            &seen[..4],
            "Secret orb-room-1-token already exists and is not this AiOrb's",
        );
        let message = status_of(&seen[3])["message"].as_str().unwrap().to_owned();
        match controller {
            None => assert!(message.contains("(no controller)"), "{message}"),
            Some((kind, name, _)) => assert!(message.contains(&format!("controlled by {kind} {name}")), "{message}"),
        }
    }
}

/// A pod with the orb's pod name that the orb does not control is not adopted: the create's
/// 409 is checked, not taken as the orb's own pod.
#[tokio::test]
async fn a_foreign_pod_with_the_orb_s_name_is_not_adopted() {
    let mut foreign = pod("Running", true, None);
    foreign["metadata"] = owned_meta("orb-room-1-0", None);
    let (result, seen, woke) = reconcile_waking(
        admitted_orb(),
        vec![
            not_found("GET", format!("{PODS}/orb-room-1-0")),
            not_found("GET", format!("{SECRETS}/orb-room-1-token")),
            expect("POST", format!("{SECRETS}?&fieldManager=orb-operator"), None),
            conflict("POST", format!("{PODS}?&fieldManager=orb-operator")),
            expect("GET", format!("{PODS}/orb-room-1-0"), Some(foreign)),
            event(),
            status_write("room-1"),
            label_finished("room-1"),
        ],
    )
    .await;
    assert!(result.is_ok() && woke);
    assert_name_conflict(
        &seen[..7],
        "Pod orb-room-1-0 already exists and is not this AiOrb's (no controller)",
    );
}

/// The orb's own pod from a reconcile whose status write was lost: the 409 is checked and the pod
/// adopted, as before.
#[tokio::test]
async fn the_orb_s_own_leftover_pod_is_still_adopted() {
    let mut own = pod("Pending", false, None);
    own["metadata"] = owned_meta("orb-room-1-0", Some(("AiOrb", "room-1", "uid-1")));
    let (result, seen) = reconcile_with(
        admitted_orb(),
        vec![
            not_found("GET", format!("{PODS}/orb-room-1-0")),
            expect(
                "GET",
                format!("{SECRETS}/orb-room-1-token"),
                Some(secret_meta("orb-room-1-token", Some(("AiOrb", "room-1", "uid-1")))),
            ),
            expect(
                "PATCH",
                format!("{SECRETS}/orb-room-1-token?&force=true&fieldManager=orb-operator"),
                None,
            ),
            conflict("POST", format!("{PODS}?&fieldManager=orb-operator")),
            expect("GET", format!("{PODS}/orb-room-1-0"), Some(own)),
            event(),
            status_write("room-1"),
        ],
    )
    .await;
    assert!(result.is_ok());
    assert_eq!(seen[5].body["reason"], "PodCreated");
    let status = status_of(&seen[6]);
    assert_eq!(
        (status["phase"].as_str(), status["podName"].as_str()),
        (Some("Starting"), Some("orb-room-1-0"))
    );
}

/// A Secret of an earlier AiOrb of the same name (the room used again before the garbage collector
/// removed it): not written over, not a conflict; the reconcile retries shortly.
#[tokio::test]
async fn an_earlier_aiorb_s_leftover_secret_is_waited_for() {
    let (result, _) = reconcile_with(
        admitted_orb(),
        vec![
            not_found("GET", format!("{PODS}/orb-room-1-0")),
            expect(
                "GET",
                format!("{SECRETS}/orb-room-1-token"),
                Some(secret_meta("orb-room-1-token", Some(("AiOrb", "room-1", "uid-0")))),
            ),
        ],
    )
    .await;
    let error = result.unwrap_err();
    assert!(error.to_string().contains("orb-room-1-token"), "{error}");
    assert_eq!(error.metric_label(), "waiting_for_pod");
}
