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
use kube::runtime::reflector::{Store, store::Writer};
use kube::runtime::watcher;
use kube::{Api, Client};
use orb_api::AiOrb;
use orb_api::auth::SigningKey;
use orb_operator::admission::Admitter;
use orb_operator::config::PodSettings;
use orb_operator::controller::{Context, Error, error_policy, reconcile};
use orb_operator::metrics::Metrics;
use orb_operator::policy::Limits;
use orb_operator::pool::Assigner;
use serde_json::{Value, json};

mod support;

use support::{Handle, NS};

const ORBS: &str = "/apis/hybridcoach.io/v1alpha1/namespaces/calls/aiorbs";
const PODS: &str = "/api/v1/namespaces/calls/pods";
const SECRETS: &str = "/api/v1/namespaces/calls/secrets";
const EVENTS: &str = "/apis/events.k8s.io/v1/namespaces/calls/events?";
const LEDGER: &str = "/api/v1/namespaces/orb-system/configmaps";

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
        pool: None,
        assigner: Arc::new(ScriptedAssigner::default()),
        now,
    }
}

/// A warm pod's answers to assignments, in order, and the assignments it got.
#[derive(Default)]
struct ScriptedAssigner {
    answers: std::sync::Mutex<Vec<std::io::Result<(u16, String)>>>,
    calls: std::sync::Mutex<Vec<(std::net::SocketAddr, String, String)>>,
}

impl ScriptedAssigner {
    fn answering(answer: std::io::Result<(u16, String)>) -> Arc<Self> {
        Arc::new(Self {
            answers: std::sync::Mutex::new(vec![answer]),
            calls: Default::default(),
        })
    }
}

impl Assigner for ScriptedAssigner {
    fn assign(
        &self,
        addr: std::net::SocketAddr,
        credential: String,
        body: String,
    ) -> futures::future::BoxFuture<'static, std::io::Result<(u16, String)>> {
        self.calls.lock().unwrap().push((addr, credential, body));
        let mut answers = self.answers.lock().unwrap();
        let answer = if answers.is_empty() {
            Err(std::io::Error::other(
                "no scripted answer: the test did not expect an assignment",
            ))
        } else {
            answers.remove(0)
        };
        Box::pin(async move { answer })
    }
}

/// Runs one reconcile of `orb` against `script`.
async fn reconcile_with(orb: Value, script: Vec<Exchange>) -> (Result<Action, Error>, Vec<Seen>) {
    let (result, seen, _) = reconcile_waking(orb, script).await;
    (result, seen)
}

/// [`reconcile_with`], also telling whether the reconcile woke the admitter.
async fn reconcile_waking(orb: Value, script: Vec<Exchange>) -> (Result<Action, Error>, Vec<Seen>, bool) {
    reconcile_holding(orb, script, None).await
}

/// [`reconcile_waking`] in an operator whose last admission pass left `held` in the ledger
/// (`None`: no pass yet).
async fn reconcile_holding(
    orb: Value,
    script: Vec<Exchange>,
    held: Option<&[&str]>,
) -> (Result<Action, Error>, Vec<Seen>, bool) {
    use futures::FutureExt;
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let verifier = tokio::spawn(verify(handle, script));
    let ctx = Arc::new(context(Client::new(service, "default"), 8));
    if let Some(held) = held {
        ctx.admission.set_held(held.iter().map(|u| u.to_string()).collect());
    }
    let orb: AiOrb = serde_json::from_value(orb).unwrap();
    let result = reconcile(Arc::new(orb), ctx.clone()).await;
    let woke = [&ctx.admission.freed, &ctx.admission.queued]
        .iter()
        .any(|n| n.notified().now_or_never().is_some());
    drop(ctx);
    (result, finish(verifier).await, woke)
}

/// Runs one admission pass with `cap`, the operator's store holding `cached`, against `script`:
/// a pass reads the orbs from the store, never lists them.
async fn admission_pass(
    cap: usize,
    cached: Vec<Value>,
    script: Vec<Exchange>,
) -> (
    Result<orb_operator::admission::PassOutcome, orb_operator::admission::AdmissionError>,
    Vec<Seen>,
) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let verifier = tokio::spawn(verify(handle, script));
    let client = Client::new(service, "default");
    let ctx = context(client.clone(), cap);
    let admitter = admitter(client, &ctx, cap, 10, store_of(cached));
    let result = admitter.pass().await;
    drop((admitter, ctx));
    (result, finish(verifier).await)
}

/// A filled store holding `orbs`, as the controller's watch leaves it after its initial list.
fn store_of(orbs: Vec<Value>) -> Store<AiOrb> {
    let mut writer: Writer<AiOrb> = Writer::default();
    writer.apply_watcher_event(&watcher::Event::Init);
    for orb in orbs {
        writer.apply_watcher_event(&watcher::Event::InitApply(serde_json::from_value(orb).unwrap()));
    }
    writer.apply_watcher_event(&watcher::Event::InitDone);
    writer.as_reader()
}

/// The admitter of `ctx`'s world, planning from `cache`.
fn admitter(client: Client, ctx: &Context, cap: usize, shown_positions: usize, cache: Store<AiOrb>) -> Admitter {
    Admitter {
        ledger: Api::namespaced(client.clone(), "orb-system"),
        client,
        cap,
        shown_positions,
        limits: Default::default(),
        cache,
        metrics: ctx.metrics.clone(),
        recorder: ctx.recorder.clone(),
        wake: ctx.admission.clone(),
        now,
    }
}

async fn admit_with(cap: usize, cached: Vec<Value>, script: Vec<Exchange>) -> Vec<Seen> {
    let (result, seen) = admission_pass(cap, cached, script).await;
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

    // 3. The admitter: ledger, then from its store: ledger write (create), status, event.
    let queued = orb("room-1", "uid-1", 5, json!({"phase": "Queued"}));
    let seen = admit_with(
        8,
        vec![queued],
        vec![
            not_found("GET", format!("{LEDGER}/orb-operator-admission")),
            expect("POST", format!("{LEDGER}?"), None),
            status_write("room-1"),
            event(),
        ],
    )
    .await;
    assert_eq!(seen[1].body["data"]["admitted"], "calls/room-1 uid-1\n");
    let status = status_of(&seen[2]);
    assert_eq!(status["phase"], "Starting");
    assert_eq!(status["admittedAt"], now().to_string());
    assert_eq!(seen[3].body["reason"], "Admitted");

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
    assert_eq!(claims.orb.as_deref(), Some("uid-1"), "the token names its AiOrb");
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
        vec![holder, waiting.clone()],
        vec![
            expect("GET", format!("{LEDGER}/orb-operator-admission"), Some(ledger)),
            status_write("room-1"),
        ],
    )
    .await;
    let status = status_of(&seen[1]);
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
        vec![done, waiting],
        vec![
            expect("GET", format!("{LEDGER}/orb-operator-admission"), Some(ledger)),
            expect("PUT", format!("{LEDGER}/orb-operator-admission?"), None),
            status_write("room-1"),
            event(),
        ],
    )
    .await;
    assert_eq!(
        seen[1].body["metadata"]["resourceVersion"], "7",
        "the ledger write is conditional on what was read"
    );
    assert_eq!(seen[1].body["data"]["admitted"], "calls/room-1 uid-1\n");
    // The new orb's session starts its lifetime budget, in the same compare-and-swap.
    let spec: orb_api::AiOrbSpec = serde_json::from_value(waiting_spec()).unwrap();
    let key = orb_operator::policy::session_key(NS, &spec);
    assert_eq!(
        seen[1].body["data"]["sessions"],
        format!("{key} {}\n", now().as_second())
    );
    assert_eq!(status_of(&seen[2])["phase"], "Starting");
    assert_eq!(status_of(&seen[2])["sessionStartedAt"], now().to_string());
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
        vec![waiting],
        vec![
            expect("GET", format!("{LEDGER}/orb-operator-admission"), Some(ledger)),
            expect("PUT", format!("{LEDGER}/orb-operator-admission?"), None),
            status_write("room-1"),
            event(),
        ],
    )
    .await;
    assert_eq!(seen[1].body["data"]["sessions"], format!("{key} {started}\n"));
    let status = status_of(&seen[2]).clone();
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

/// A room without a session id is one call at a time. The pass that frees the slot of a room's
/// finished orb reads how it ended and, when it ended the call — everyone left (`RoomCleanup`) —
/// forgets the room's budget in the same compare-and-swap, so the room's next call starts a fresh
/// lifetime. An orb that ended by `MaxLifetime` leaves the budget for the orb asked for next in
/// the room.
#[tokio::test]
async fn the_pass_freeing_a_room_s_finished_orb_ends_the_room_s_budget_only_with_the_call() {
    let spec: orb_api::AiOrbSpec = serde_json::from_value(waiting_spec()).unwrap();
    let key = orb_operator::policy::session_key(NS, &spec);
    let started = now().as_second() - 30;
    for (reason, sessions_after) in [
        ("RoomCleanup", String::new()),
        ("MaxLifetime", format!("{key} {started}\n")),
    ] {
        let mut ended = orb(
            "room-1",
            "uid-0",
            40,
            json!({"phase": "Succeeded", "admittedAt": ago(30), "sessionStartedAt": ago(30),
                "finishedAt": ago(1), "terminationReason": reason}),
        );
        ended["metadata"]["labels"] = json!({"hybridcoach.io/finished": "true"});
        let ledger = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "orb-operator-admission", "resourceVersion": "7"},
            "data": {"admitted": "calls/room-1 uid-0\n", "sessions": format!("{key} {started}\n")}});
        // From the store; or, where the store does not have it (gone from it, or not yet in it),
        // read back by the name its ledger line gives.
        for in_store in [true, false] {
            let mut script = vec![expect(
                "GET",
                format!("{LEDGER}/orb-operator-admission"),
                Some(ledger.clone()),
            )];
            if !in_store {
                script.push(expect("GET", format!("{ORBS}/room-1"), Some(ended.clone())));
            }
            script.push(expect("PUT", format!("{LEDGER}/orb-operator-admission?"), None));
            let cached = if in_store { vec![ended.clone()] } else { vec![] };
            let seen = admit_with(8, cached, script).await;
            let written = &seen.last().unwrap().body["data"];
            assert_eq!(written["admitted"], "", "{reason}: the slot is freed");
            assert_eq!(
                written["sessions"], sessions_after,
                "{reason}, in the store: {in_store}"
            );
        }
    }
}

#[tokio::test]
async fn a_ledger_conflict_aborts_the_pass_before_any_admission() {
    let waiting = orb("room-1", "uid-1", 5, json!({"phase": "Queued"}));
    let (result, _) = admission_pass(
        8,
        vec![waiting],
        vec![
            not_found("GET", format!("{LEDGER}/orb-operator-admission")),
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
    // The conflict is another operator write (the orb as read again differs in the operator's
    // fields), so the decision is not applied over it.
    let (result, _, woke) = reconcile_waking(
        running_orb(),
        vec![
            succeeded(),
            event(),
            conflict("PATCH", status_uri("room-1")),
            expect(
                "GET",
                format!("{ORBS}/room-1"),
                Some(orb("room-1", "uid-1", 600, running(400))),
            ),
        ],
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

    // Second pass: the pod is gone; record the end, and keep the finalizer while the ledger
    // holds the orb: the admission pass that frees its slot reads how it ended.
    deleting["status"]["phase"] = json!("Terminating");
    deleting["status"]["terminationReason"] = json!("Deleted");
    let (result, seen, woke) = reconcile_holding(
        deleting.clone(),
        vec![
            not_found("GET", format!("{PODS}/orb-room-1-0")),
            status_write("room-1"),
            event(),
        ],
        Some(&["uid-1"]),
    )
    .await;
    assert!(
        matches!(result, Err(Error::Finalizer(_))) && woke,
        "the finalizer stays until a pass frees the slot: {result:?}"
    );
    assert_eq!(status_of(&seen[1])["phase"], "Succeeded");

    // Third pass: the slot is freed; remove the finalizer.
    deleting["status"]["phase"] = json!("Succeeded");
    deleting["status"]["finishedAt"] = json!(ago(0));
    let (result, seen, _) = reconcile_holding(
        deleting,
        vec![expect(
            "PATCH",
            format!("{ORBS}/room-1?"),
            Some(orb("room-1", "uid-1", 600, Value::Null)),
        )],
        Some(&[]),
    )
    .await;
    assert!(result.is_ok(), "{result:?}");
    assert_eq!(
        seen[0].body[1],
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
        items,
        vec![
            not_found("GET", format!("{LEDGER}/orb-operator-admission")),
            expect("POST", format!("{LEDGER}?"), None),
        ],
    )
    .await;
    assert_eq!(seen[1].body["data"]["admitted"].as_str().unwrap().lines().count(), 8);
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
/// TTL, all in the operator's store. One admitted orb has just finished: the pass that fills its
/// slot reads the ledger and nothing else (it used to list every unfinished orb: 21 reads), and
/// writes the ledger, the admitted orb's status and its event, and the 10 shown positions that
/// moved up: at most `shown_positions + 3` writes, whatever the queue's length (before, every
/// queued orb's position was rewritten: 9 900 writes).
#[tokio::test]
async fn a_freed_slot_in_a_queue_of_9900_costs_one_read_and_a_bounded_number_of_writes() {
    const SHOWN: usize = 10;
    let mut platform = support::platform(now(), 100, 9_900, 1_000, SHOWN);
    // One running orb has just ended (its label is not written yet).
    platform.orbs[42]["status"]["phase"] = json!("Succeeded");
    // A burst of new orbs at the back, not reconciled yet: no status at all.
    for new in &mut platform.orbs[9_000..10_000] {
        new.as_object_mut().unwrap().remove("status");
    }
    let cache = store_of(platform.orbs);
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let server = tokio::spawn(support::serve_store(handle, platform.ledger, support::store(&[])));
    let client = Client::new(service, "default");
    let ctx = context(client.clone(), 100);
    let admitter = admitter(client, &ctx, 100, SHOWN, cache);
    let outcome = admitter.pass().await.expect("admission pass");
    let metrics = ctx.metrics.encode();
    drop((admitter, ctx));
    let (seen, listed) = tokio::time::timeout(Duration::from_secs(120), server)
        .await
        .expect("the API server hung")
        .unwrap();

    assert_eq!(outcome.admitted, vec!["q-00000"]);
    assert_eq!(outcome.queued, 9_899);
    assert_eq!(listed, 0, "nothing is listed");
    let writes: Vec<&(String, String)> = seen.iter().filter(|(m, _)| m != "GET").collect();
    let status_writes = writes.iter().filter(|(_, u)| u.contains("/status?")).count();
    assert!(
        writes.len() <= SHOWN + 3,
        "{} writes for one freed slot: {writes:#?}",
        writes.len()
    );
    // Exactly: the ledger, the admitted orb's status and event, and the 10 positions shown.
    assert_eq!((writes.len(), status_writes), (SHOWN + 3, 1 + SHOWN));
    let reads: Vec<&(String, String)> = seen.iter().filter(|(m, _)| m == "GET").collect();
    assert_eq!(reads.len(), 1, "the ledger only: {reads:#?}");
    assert!(metrics.contains("orb_operator_namespace_queue_length{namespace=\"calls\"} 9899"));
    assert!(metrics.contains("orb_operator_orbs{phase=\"Succeeded\"} 1001"));
}

/// The store lags behind the operator's own writes. A pass right after one that admitted an orb
/// (woken by the next freed slot, say) plans from the orb as the admission wrote it, not as the
/// store still shows it: it neither admits it again nor reads it back. A ledger holder the store
/// shows waiting that the operator did not admit itself (a previous leader did) is read back: the
/// API says it is admitted, and it keeps its slot.
#[tokio::test]
async fn a_store_behind_the_operator_s_writes_admits_no_one_twice_and_never_past_the_cap() {
    let queued = orb("room-1", "uid-1", 5, json!({"phase": "Queued", "queuePosition": 1}));
    let mut admitted = orb("room-1", "uid-1", 5, json!({"phase": "Starting", "admittedAt": ago(0)}));
    admitted["metadata"]["resourceVersion"] = json!("101");
    let ledger = |holders: &str, rv: &str| {
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "orb-operator-admission", "resourceVersion": rv},
            "data": {"admitted": holders}})
    };
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let verifier = tokio::spawn(verify(
        handle,
        vec![
            // First pass: room-1 is admitted.
            expect("GET", format!("{LEDGER}/orb-operator-admission"), Some(ledger("", "7"))),
            expect("PUT", format!("{LEDGER}/orb-operator-admission?"), None),
            expect("PATCH", status_uri("room-1"), Some(admitted.clone())),
            event(),
            // Second pass, the store unchanged: the ledger, and nothing else.
            expect(
                "GET",
                format!("{LEDGER}/orb-operator-admission"),
                Some(ledger("calls/room-1 uid-1\n", "8")),
            ),
        ],
    ));
    let client = Client::new(service, "default");
    let ctx = context(client.clone(), 1);
    let admitter = admitter(client, &ctx, 1, 10, store_of(vec![queued.clone()]));
    assert_eq!(admitter.pass().await.unwrap().admitted, ["room-1"]);
    let second = admitter.pass().await.unwrap();
    assert!(second.admitted.is_empty(), "{second:?}");
    drop((admitter, ctx));
    finish(verifier).await;

    // Another admitter, whose store shows room-1 waiting (and room-0, created earlier, too).
    let older = orb("room-0", "uid-0", 50, json!({"phase": "Queued", "queuePosition": 1}));
    let seen = admit_with(
        1,
        vec![older, queued],
        vec![
            expect(
                "GET",
                format!("{LEDGER}/orb-operator-admission"),
                Some(ledger("calls/room-1 uid-1\n", "8")),
            ),
            expect("GET", format!("{ORBS}/room-1"), Some(admitted)),
        ],
    )
    .await;
    assert_eq!(seen.len(), 2, "room-0 is not admitted past the cap, room-1 not again");
}

// ---- the warm pool ----

const WARM_PODS: &str = "/api/v1/namespaces/calls/pods?&labelSelector=hybridcoach.io%2Fpool%3Dwarm";

/// The binder first looks for a pod this attempt claimed before (its status write lost): none.
fn no_earlier_claim(attempt: i32) -> Exchange {
    expect(
        "GET",
        format!(
            "/api/v1/namespaces/calls/pods?&labelSelector=hybridcoach.io%2Fpool%3Dbound%2Chybridcoach.io%2Forb%3Droom-1%2Chybridcoach.io%2Fattempt%3D{attempt}"
        ),
        pod_list(vec![]),
    )
}

/// A warm pool pod, created `started_ago` seconds ago, running for as long.
/// A pod of the pool (sealed by the operator under the scenarios' key).
fn warm_pod(name: &str, started_ago: i64, ready: bool) -> Value {
    let uid = format!("pod-{name}");
    let seal = orb_api::assignment::warm_seal(&SigningKey::new(vec![7u8; 32]).unwrap(), &uid);
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": NS, "uid": uid, "resourceVersion": "77",
            "creationTimestamp": ago(started_ago), "labels": {"hybridcoach.io/pool": "warm"},
            "annotations": {"hybridcoach.io/warm-seal": seal}},
        "spec": {"containers": [{"name": "orb"}]},
        "status": {"phase": "Running", "podIP": "10.1.2.3", "startTime": ago(started_ago),
            "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]}
    })
}

fn pod_list(items: Vec<Value>) -> Option<Value> {
    Some(json!({"apiVersion": "v1", "kind": "PodList", "metadata": {"resourceVersion": "90"}, "items": items}))
}

/// One reconcile of `orb` with a warm pool of `calls` and warm pods answering with `assigner`.
async fn reconcile_in_pool(
    orb: Value,
    assigner: Arc<ScriptedAssigner>,
    script: Vec<Exchange>,
) -> (Result<Action, Error>, Vec<Seen>, Arc<Metrics>) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let verifier = tokio::spawn(verify(handle, script));
    let mut ctx = context(Client::new(service, "default"), 8);
    ctx.pool = Some(orb_operator::config::PoolSettings {
        size: 2,
        namespace: NS.into(),
    });
    ctx.assigner = assigner;
    let ctx = Arc::new(ctx);
    let orb: AiOrb = serde_json::from_value(orb).unwrap();
    let result = reconcile(Arc::new(orb), ctx.clone()).await;
    let metrics = ctx.metrics.clone();
    drop(ctx);
    (result, finish(verifier).await, metrics)
}

fn admitted(name: &str) -> Value {
    orb(name, "uid-1", 5, json!({"phase": "Starting", "admittedAt": ago(1)}))
}

fn assignments(metrics: &Metrics, result: &str) -> bool {
    metrics
        .encode()
        .contains(&format!("orb_operator_warm_assignments_total{{result=\"{result}\"}} 1"))
}

#[tokio::test]
async fn an_admitted_orb_is_bound_to_the_oldest_ready_warm_pod_instead_of_a_new_pod() {
    let assigner = ScriptedAssigner::answering(Ok((200, r#"{"outcome":"joined"}"#.into())));
    let (result, seen, metrics) = reconcile_in_pool(
        admitted("room-1"),
        assigner.clone(),
        vec![
            not_found("GET", format!("{PODS}/orb-room-1-0")),
            no_earlier_claim(0),
            expect(
                "GET",
                WARM_PODS,
                pod_list(vec![
                    warm_pod("orb-warm-young", 60, true),
                    warm_pod("orb-warm-cold", 600, false),
                    warm_pod("orb-warm-old", 300, true),
                ]),
            ),
            expect("PATCH", format!("{PODS}/orb-warm-old?&fieldManager=orb-operator"), None),
            event(),
            status_write("room-1"),
        ],
    )
    .await;
    assert!(result.is_ok());
    // The claim: guarded by the listed resourceVersion, owned by the AiOrb from now on, the orb's
    // deadline counted from the pod's start (300 s warm + what is left of the 2 h lifetime, admitted
    // a second ago, + the margin).
    let claim = &seen[3].body;
    assert_eq!(claim["metadata"]["resourceVersion"], "77");
    assert_eq!(claim["metadata"]["labels"]["hybridcoach.io/pool"], "bound");
    assert_eq!(claim["metadata"]["labels"]["hybridcoach.io/orb"], "room-1");
    assert_eq!(claim["metadata"]["labels"]["hybridcoach.io/attempt"], "0");
    assert_eq!(claim["metadata"]["ownerReferences"][0]["uid"], "uid-1");
    assert_eq!(claim["metadata"]["ownerReferences"][0]["controller"], true);
    assert_eq!(claim["spec"]["activeDeadlineSeconds"], 300 + 7199 + 60);
    // The assignment went to the pod with the pod's own credential and a token for the room.
    let calls = assigner.calls.lock().unwrap().clone();
    assert_eq!(calls.len(), 1);
    let (addr, credential, body) = &calls[0];
    assert_eq!(addr.to_string(), "10.1.2.3:9090");
    let key = SigningKey::new(vec![7u8; 32]).unwrap();
    assert_eq!(
        credential,
        &orb_api::assignment::assign_credential(&key, "orb-warm-old")
    );
    let assignment: orb_api::assignment::Assignment = serde_json::from_str(body).unwrap();
    assert_eq!(
        (assignment.room.as_str(), assignment.coach.as_deref()),
        ("room-1", Some("coach-1"))
    );
    assert_eq!(assignment.max_lifetime_seconds, 7199);
    let claims = key
        .verify_at(
            assignment.token.as_deref().unwrap(),
            "room-1",
            now().as_second() as u64,
            orb_api::auth::MAX_TOKEN_TTL_SECONDS,
        )
        .expect("a valid room token");
    assert_eq!(claims.role, orb_api::auth::Role::Ai);
    assert_eq!(claims.orb.as_deref(), Some("uid-1"), "the token names its AiOrb");
    assert_eq!(seen[4].body["reason"], "WarmPodBound");
    let status = status_of(&seen[5]);
    assert_eq!(status["podName"], "orb-warm-old");
    assert_eq!(status["podStart"], "Warm");
    assert_eq!(status["phase"], "Starting");
    assert!(assignments(&metrics, "bound"));

    // Reconciled again, the orb reads its bound pod by the name in its status; Ready now.
    let mut bound = warm_pod("orb-warm-old", 301, true);
    bound["metadata"]["labels"]["hybridcoach.io/pool"] = json!("bound");
    let status = json!({"phase": "Starting", "admittedAt": ago(2), "podName": "orb-warm-old", "podStart": "Warm"});
    let (result, seen, metrics) = reconcile_in_pool(
        orb("room-1", "uid-1", 5, status),
        Arc::default(),
        vec![
            expect("GET", format!("{PODS}/orb-warm-old"), Some(bound)),
            event(),
            status_write("room-1"),
        ],
    )
    .await;
    assert!(result.is_ok());
    assert_eq!(seen[1].body["reason"], "Ready");
    assert_eq!(status_of(&seen[2])["phase"], "Ready");
    assert!(
        metrics
            .encode()
            .contains("orb_operator_time_to_ready_seconds_count{start=\"warm\"} 1"),
        "{}",
        metrics.encode()
    );
}

#[tokio::test]
async fn a_refused_assignment_deletes_the_claimed_pod_and_starts_the_orb_cold() {
    let assigner = ScriptedAssigner::answering(Ok((401, "wrong credential".into())));
    let (result, seen, metrics) = reconcile_in_pool(
        admitted("room-1"),
        assigner,
        vec![
            not_found("GET", format!("{PODS}/orb-room-1-0")),
            no_earlier_claim(0),
            expect("GET", WARM_PODS, pod_list(vec![warm_pod("orb-warm-a", 60, true)])),
            expect("PATCH", format!("{PODS}/orb-warm-a?&fieldManager=orb-operator"), None),
            event(),
            expect(
                "DELETE",
                format!("{PODS}/orb-warm-a?"),
                Some(warm_pod("orb-warm-a", 60, true)),
            ),
            not_found("GET", format!("{SECRETS}/orb-room-1-token")),
            expect("POST", format!("{SECRETS}?&fieldManager=orb-operator"), None),
            expect("POST", format!("{PODS}?&fieldManager=orb-operator"), None),
            event(),
            status_write("room-1"),
        ],
    )
    .await;
    assert!(result.is_ok());
    assert_eq!(seen[4].body["reason"], "AssignmentFailed");
    assert!(seen[4].body["note"].as_str().unwrap().contains("HTTP 401"));
    assert_eq!(seen[5].body["gracePeriodSeconds"], 10);
    assert_eq!(seen[8].body["metadata"]["name"], "orb-room-1-0");
    assert_eq!(seen[9].body["reason"], "PodCreated");
    let status = status_of(&seen[10]);
    assert_eq!(
        (status["podName"].as_str(), status["podStart"].as_str()),
        (Some("orb-room-1-0"), Some("Cold"))
    );
    assert!(assignments(&metrics, "failed"));
}

#[tokio::test]
async fn without_a_ready_warm_pod_or_when_another_orb_claims_it_first_the_orb_starts_cold() {
    let cold_start = || {
        vec![
            not_found("GET", format!("{SECRETS}/orb-room-1-token")),
            expect("POST", format!("{SECRETS}?&fieldManager=orb-operator"), None),
            expect("POST", format!("{PODS}?&fieldManager=orb-operator"), None),
            event(),
            status_write("room-1"),
        ]
    };
    // Only a pod still starting: cold, and nothing is claimed.
    let mut script = vec![
        not_found("GET", format!("{PODS}/orb-room-1-0")),
        no_earlier_claim(0),
        expect("GET", WARM_PODS, pod_list(vec![warm_pod("orb-warm-a", 5, false)])),
    ];
    script.extend(cold_start());
    let (result, _, metrics) = reconcile_in_pool(admitted("room-1"), Arc::default(), script).await;
    assert!(result.is_ok());
    assert!(assignments(&metrics, "empty"));

    // The claim conflicts (another orb's reconcile took the pod): cold, no assignment sent.
    let mut script = vec![
        not_found("GET", format!("{PODS}/orb-room-1-0")),
        no_earlier_claim(0),
        expect("GET", WARM_PODS, pod_list(vec![warm_pod("orb-warm-a", 60, true)])),
        conflict("PATCH", format!("{PODS}/orb-warm-a?&fieldManager=orb-operator")),
    ];
    script.extend(cold_start());
    let assigner = Arc::new(ScriptedAssigner::default());
    let (result, _, metrics) = reconcile_in_pool(admitted("room-1"), assigner.clone(), script).await;
    assert!(result.is_ok());
    assert!(assigner.calls.lock().unwrap().is_empty());
    assert!(assignments(&metrics, "failed"));

    // A test-mode orb runs the test brain, which warm pods do not: cold without looking.
    let mut test_mode = admitted("room-1");
    test_mode["spec"]["testMode"] = json!(true);
    let mut script = vec![not_found("GET", format!("{PODS}/orb-room-1-0"))];
    script.extend(cold_start());
    let (result, _, _) = reconcile_in_pool(test_mode, Arc::default(), script).await;
    assert!(result.is_ok());
}

#[tokio::test]
async fn a_failed_bound_pod_is_replaced_like_any_other_and_deleted_by_its_status_name() {
    // A warm-bound orb whose pod failed in an occupied room, past its backoff: replaced.
    let mut failed = warm_pod("orb-warm-old", 400, false);
    failed["status"]["phase"] = json!("Failed");
    let status = json!({"phase": "Ready", "admittedAt": ago(300), "podName": "orb-warm-old", "podStart": "Warm",
        "participants": 2, "lastActivityTime": ago(5),
        "conditions": [{"type": "Replacing", "status": "True", "reason": "Error", "message": "",
            "lastTransitionTime": ago(60)}]});
    let (result, seen, _) = reconcile_in_pool(
        orb("room-1", "uid-1", 400, status),
        Arc::default(),
        vec![
            expect("GET", format!("{PODS}/orb-warm-old"), Some(failed)),
            expect(
                "DELETE",
                format!("{PODS}/orb-warm-old?"),
                Some(warm_pod("orb-warm-old", 400, false)),
            ),
            no_earlier_claim(1),
            expect("GET", WARM_PODS, pod_list(vec![])),
            not_found("GET", format!("{SECRETS}/orb-room-1-token")),
            expect("POST", format!("{SECRETS}?&fieldManager=orb-operator"), None),
            expect("POST", format!("{PODS}?&fieldManager=orb-operator"), None),
            event(),
            status_write("room-1"),
        ],
    )
    .await;
    assert!(result.is_ok(), "{result:?}");
    assert_eq!(seen[6].body["metadata"]["name"], "orb-room-1-1");
    let status = status_of(&seen[8]);
    assert_eq!(status["podName"], "orb-room-1-1");
    assert_eq!(status["restarts"], 1);
    assert_eq!(status["podStart"], "Cold");
}

// ---- the pool keeper ----

/// One keeper pass with `size` warm orbs, `cap`, the ledger holding `serving` orbs.
async fn pool_pass(
    size: usize,
    cap: usize,
    serving: usize,
    script: Vec<Exchange>,
) -> (orb_operator::policy::PoolPlan, Vec<Seen>, Arc<Metrics>) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let ledger: String = (0..serving).map(|i| format!("calls/o{i} u{i}\n")).collect();
    let mut full = vec![expect(
        "GET",
        format!("{LEDGER}/orb-operator-admission"),
        Some(
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "orb-operator-admission"},
            "data": {"admitted": ledger}}),
        ),
    )];
    full.extend(script);
    let verifier = tokio::spawn(verify(handle, full));
    let client = Client::new(service, "default");
    let ctx = context(client.clone(), cap);
    let keeper = orb_operator::pool::PoolKeeper {
        pods: Api::namespaced(client.clone(), NS),
        secrets: Api::namespaced(client.clone(), NS),
        ledger: Api::namespaced(client, "orb-system"),
        settings: orb_operator::config::PoolSettings {
            size,
            namespace: NS.into(),
        },
        cap,
        pod: ctx.pod.clone(),
        signing_key: ctx.signing_key.clone(),
        metrics: ctx.metrics.clone(),
        wake: ctx.admission.clone(),
        now,
        name: || "orb-warm-new".into(),
    };
    let plan = keeper.pass().await.expect("a pool pass");
    let metrics = keeper.metrics.clone();
    drop((keeper, ctx));
    (plan, finish(verifier).await, metrics)
}

/// A created pod as the API server returns it: with its uid.
fn created_warm_pod() -> Option<Value> {
    Some(warm_pod("orb-warm-new", 0, false))
}

#[tokio::test]
async fn the_keeper_fills_the_pool_each_pod_with_its_own_credential_secret() {
    let (plan, seen, metrics) = pool_pass(
        2,
        8,
        3,
        vec![
            expect("GET", WARM_PODS, pod_list(vec![warm_pod("orb-warm-a", 60, true)])),
            expect("POST", format!("{PODS}?&fieldManager=orb-operator"), created_warm_pod()),
            expect(
                "PATCH",
                format!("{PODS}/orb-warm-new?&fieldManager=orb-operator"),
                created_warm_pod(),
            ),
            expect(
                "POST",
                "/api/v1/namespaces/calls/secrets?&fieldManager=orb-operator",
                None,
            ),
        ],
    )
    .await;
    assert_eq!(plan.start, 1);
    let pod = &seen[2].body;
    assert_eq!(pod["metadata"]["name"], "orb-warm-new");
    assert_eq!(pod["metadata"]["labels"]["hybridcoach.io/pool"], "warm");
    assert!(pod["metadata"].get("ownerReferences").is_none(), "unowned until bound");
    assert!(
        pod["spec"].get("activeDeadlineSeconds").is_none(),
        "no deadline until bound"
    );
    assert_eq!(pod["spec"]["containers"][0]["args"], json!(["--warm"]));
    assert_eq!(
        pod["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"],
        "1"
    );
    let env = &pod["spec"]["containers"][0]["env"][0];
    assert_eq!(env["name"], "ORB_ASSIGN_TOKEN");
    assert_eq!(env["valueFrom"]["secretKeyRef"]["name"], "orb-warm-new-assign");
    // Sealed with the uid the server gave it: only the operator can make that seal.
    let seal = &seen[3].body["metadata"];
    assert_eq!(seal["uid"], "pod-orb-warm-new");
    let key = SigningKey::new(vec![7u8; 32]).unwrap();
    assert_eq!(
        seal["annotations"]["hybridcoach.io/warm-seal"],
        orb_api::assignment::warm_seal(&key, "pod-orb-warm-new")
    );
    let secret = &seen[4].body;
    assert_eq!(secret["metadata"]["name"], "orb-warm-new-assign");
    assert_eq!(
        secret["metadata"]["ownerReferences"][0]["uid"], "pod-orb-warm-new",
        "goes with its pod"
    );
    let credential = String::from_utf8(k8s_openapi::ByteString::deserialize_from(&secret["data"]["token"]).0).unwrap();
    assert_eq!(credential, orb_api::assignment::assign_credential(&key, "orb-warm-new"));
    let text = metrics.encode();
    assert!(text.contains("orb_operator_warm_orbs_available 1"), "{text}");
    assert!(text.contains("orb_operator_warm_orbs 2"), "{text}");
    assert!(text.contains("orb_operator_warm_orbs_target 2"), "{text}");
}

#[tokio::test]
async fn the_pool_shrinks_as_the_cap_fills_and_replaces_a_lost_warm_pod() {
    // 7 of 8 slots taken: one warm pod is all the cap can still use; the youngest goes.
    let (plan, seen, _) = pool_pass(
        2,
        8,
        7,
        vec![
            expect(
                "GET",
                WARM_PODS,
                pod_list(vec![
                    warm_pod("orb-warm-a", 600, true),
                    warm_pod("orb-warm-b", 60, true),
                ]),
            ),
            expect(
                "DELETE",
                format!("{PODS}/orb-warm-b?"),
                Some(warm_pod("orb-warm-b", 60, true)),
            ),
        ],
    )
    .await;
    assert_eq!((plan.start, plan.stop.clone()), (0, vec!["orb-warm-b".to_owned()]));
    assert_eq!(seen[2].body["gracePeriodSeconds"], 10);

    // The cap is full: no warm pod at all.
    let (plan, _, metrics) = pool_pass(
        2,
        8,
        8,
        vec![
            expect("GET", WARM_PODS, pod_list(vec![warm_pod("orb-warm-a", 600, true)])),
            expect(
                "DELETE",
                format!("{PODS}/orb-warm-a?"),
                Some(warm_pod("orb-warm-a", 600, true)),
            ),
        ],
    )
    .await;
    assert_eq!(plan.stop.len(), 1);
    assert!(metrics.encode().contains("orb_operator_warm_orbs_target 0"));

    // A warm pod lost (its node gone, the pod Failed): deleted and replaced at once.
    let mut lost = warm_pod("orb-warm-a", 600, false);
    lost["status"]["phase"] = json!("Failed");
    let (plan, _, _) = pool_pass(
        1,
        8,
        0,
        vec![
            expect("GET", WARM_PODS, pod_list(vec![lost.clone()])),
            expect("DELETE", format!("{PODS}/orb-warm-a?"), Some(lost)),
            expect("POST", format!("{PODS}?&fieldManager=orb-operator"), created_warm_pod()),
            expect(
                "PATCH",
                format!("{PODS}/orb-warm-new?&fieldManager=orb-operator"),
                created_warm_pod(),
            ),
            expect(
                "POST",
                "/api/v1/namespaces/calls/secrets?&fieldManager=orb-operator",
                None,
            ),
        ],
    )
    .await;
    assert_eq!(plan.start, 1);
}

// ---- scheduled prewarm ----

/// A queued orb booked to start `in_secs` from now.
fn booked(name: &str, uid: &str, in_secs: i64) -> Value {
    let mut o = orb(name, uid, 3600, json!({"phase": "Queued"}));
    o["spec"]["startAt"] = json!(ago(-in_secs));
    o
}

#[tokio::test]
async fn a_booked_orb_is_admitted_its_prewarm_lead_before_its_start_and_not_before() {
    // Ten minutes ahead (lead: two): nothing is written; the next pass is due in eight minutes.
    let (result, seen) = admission_pass(
        8,
        vec![booked("booked-1", "uid-b", 600)],
        vec![not_found("GET", format!("{LEDGER}/orb-operator-admission"))],
    )
    .await;
    assert_eq!(seen.len(), 1, "no ledger write: it holds no slot");
    let outcome = result.expect("admission pass");
    assert!(outcome.admitted.is_empty());
    assert_eq!(outcome.queued, 0, "not in the queue either");
    let due = outcome.next_due.expect("a wake-up for the booking");
    assert_eq!(
        due,
        now()
            .checked_add(k8s_openapi::jiff::SignedDuration::from_secs(480))
            .unwrap()
    );

    // Someone is already in the room, early for the booking: due at once.
    let mut early = booked("booked-1", "uid-b", 600);
    early["status"]["participants"] = json!(1);
    let (result, _) = admission_pass(
        8,
        vec![early],
        vec![
            not_found("GET", format!("{LEDGER}/orb-operator-admission")),
            expect("POST", format!("{LEDGER}?"), None),
            status_write("booked-1"),
            event(),
        ],
    )
    .await;
    assert_eq!(result.expect("admission pass").admitted, ["booked-1"]);

    // Within the lead: admitted now, ahead of a walk-in created later.
    let walk_in = orb("walk-in", "uid-w", 60, json!({"phase": "Queued"}));
    let (result, seen) = admission_pass(
        1,
        vec![booked("booked-1", "uid-b", 90), walk_in],
        vec![
            not_found("GET", format!("{LEDGER}/orb-operator-admission")),
            expect("POST", format!("{LEDGER}?"), None),
            status_write("booked-1"),
            event(),
            status_write("walk-in"),
        ],
    )
    .await;
    let outcome = result.expect("admission pass");
    assert_eq!(outcome.admitted, ["booked-1"]);
    assert_eq!(outcome.next_due, None);
    assert_eq!(status_of(&seen[2])["phase"], "Starting");
    // The lead is not the call's time: the session's lifetime starts at the booked start.
    assert_eq!(status_of(&seen[2])["admittedAt"], now().to_string());
    assert_eq!(status_of(&seen[2])["sessionStartedAt"], ago(-90));
    assert_eq!(status_of(&seen[4])["queuePosition"], 1);
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
