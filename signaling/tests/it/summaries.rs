//! Session summaries: stored before the orb is told so, delivered to the webhook at least once
//! with a verifiable signature and an idempotency key, across webhook outages and a SIGKILL of
//! signaling between the orb's send and the webhook's receipt.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use orb_signaling::summary::signature;
use serde_json::{Value, json};

use crate::common::*;

const SECRET: &[u8] = b"whsec-test-secret";

/// One POST the webhook received.
#[derive(Clone, Debug)]
struct Received {
    key: String,
    signature: Option<String>,
    body: Bytes,
    /// What the receiver answered.
    accepted: bool,
}

/// A webhook receiver on loopback that can be "down" (503) and records every POST.
#[derive(Clone)]
struct Webhook {
    url: String,
    up: Arc<AtomicBool>,
    received: Arc<Mutex<Vec<Received>>>,
}

impl Webhook {
    async fn start(up: bool) -> Self {
        let hook = Webhook {
            url: String::new(),
            up: Arc::new(AtomicBool::new(up)),
            received: Arc::default(),
        };
        let state = hook.clone();
        let app = axum::Router::new().route(
            "/hook",
            post(move |headers: HeaderMap, body: Bytes| {
                let state = state.clone();
                async move {
                    let accepted = state.up.load(Ordering::SeqCst);
                    let header = |n: &str| headers.get(n).and_then(|v| v.to_str().ok()).map(String::from);
                    state.received.lock().unwrap().push(Received {
                        key: header(signature::IDEMPOTENCY_HEADER).unwrap_or_default(),
                        signature: header(signature::HEADER),
                        body,
                        accepted,
                    });
                    if accepted {
                        StatusCode::NO_CONTENT
                    } else {
                        StatusCode::SERVICE_UNAVAILABLE
                    }
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Webhook { url, ..hook }
    }

    fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    fn delivered(&self) -> Vec<Received> {
        self.received().into_iter().filter(|r| r.accepted).collect()
    }
}

fn secret_file(dir: &std::path::Path) -> PathBuf {
    let path = dir.join("webhook-secret");
    // A trailing line break, as `echo` and editors leave it, is not part of the key.
    std::fs::write(&path, [SECRET, b"\n"].concat()).unwrap();
    path
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("orb-signaling-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A transcript of at least `bytes` of text: a long session's.
fn long_summary(id: &str, bytes: usize) -> Value {
    let line = "We practised slow breathing and noticed where the tension sits. ";
    let lines: Vec<Value> = (0..bytes / line.len() + 1)
        .map(|i| json!({"speaker": if i % 2 == 0 { "coach" } else { "client" }, "text": line, "offsetMs": i * 1000}))
        .collect();
    json!({"type": "session_summary", "summaryId": id, "sessionId": "s-1", "summary": {"reason": "SessionComplete", "transcript": lines}})
}

/// The receiver's side of the contract, as docs/summaries.md tells receivers to check it.
fn verify(r: &Received) {
    let header = r.signature.as_deref().expect("signed");
    let now = jiff::Timestamp::now().as_second();
    signature::verify(SECRET, header, &r.body, now, 300).expect("a valid signature");
    let mut tampered = r.body.to_vec();
    tampered[10] ^= 1;
    assert_eq!(
        signature::verify(SECRET, header, &tampered, now, 300),
        Err(signature::SignatureError::Mismatch),
        "a receiver detects a changed body"
    );
    assert!(signature::verify(b"another key", header, &r.body, now, 300).is_err());
}

/// In process: a transcript of nearly `--max-summary-bytes` (1 MiB of JSON) is acknowledged once stored, reaches the coach live, and the
/// webhook, down at first, receives it whole when it comes back — one key, verifiable.
#[tokio::test]
async fn a_large_summary_survives_a_webhook_outage() {
    let hook = Webhook::start(false).await;
    let dir = temp_dir("outage");
    let secret = secret_file(&dir);
    let store = dir.join("summaries");
    let s = start(&[
        "--summary-webhook-url",
        &hook.url,
        "--summary-webhook-secret-file",
        secret.to_str().unwrap(),
        "--summary-dir",
        store.to_str().unwrap(),
    ])
    .await;
    let (mut coach, _) = s.join("r", "coach", "coach").await;
    let (mut orb, _) = s.join("r", "ai", "ai").await;
    coach.recv().await;

    let summary = long_summary("sum-large", 512 << 10);
    let text = summary.to_string();
    assert!(text.len() > 900 << 10 && text.len() <= orb_signaling::summary::DEFAULT_MAX_BYTES);
    orb.send_text(&text).await;
    assert_eq!(
        orb.recv().await,
        json!({"type": "session_summary_ack", "summaryId": "sum-large"})
    );
    let live = coach.recv().await;
    assert_eq!(live["summary"]["transcript"], summary["summary"]["transcript"]);

    // The webhook refuses (503) until it is back; then the summary arrives, once.
    eventually("a refused attempt", || !hook.received().is_empty()).await;
    hook.up.store(true, Ordering::SeqCst);
    eventually_for("the delivery after the outage", Duration::from_secs(60), || {
        !hook.delivered().is_empty()
    })
    .await;
    let all = hook.received();
    assert!(
        all.iter().all(|r| r.key == "sum-large"),
        "one idempotency key for every attempt"
    );
    let delivered = hook.delivered();
    assert_eq!(delivered.len(), 1);
    let body: Value = serde_json::from_slice(&delivered[0].body).unwrap();
    assert_eq!(body["summary"]["transcript"], summary["summary"]["transcript"], "whole");
    assert_eq!(
        (body["roomId"].as_str(), body["fromId"].as_str()),
        (Some("r"), Some("ai"))
    );
    verify(&delivered[0]);

    let (_, metrics) = s.http_get("/metrics").await;
    for needle in [
        "orb_signaling_summaries_delivery_attempts_total{result=\"delivered\"} 1",
        "orb_signaling_summaries_stored_total{result=\"stored\"} 1",
        "orb_signaling_summaries_oldest_pending_seconds 0",
    ] {
        assert!(metrics.contains(needle), "{needle} in\n{metrics}");
    }
    // A human's frames stay capped: only the orb's socket carries a transcript.
    coach.send_text(&long_summary("x", 100_000).to_string()).await;
    assert_eq!(coach.recv().await["code"], "frame_too_large");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The orb re-sends an unacknowledged summary (a reconnect): it is stored and delivered once.
#[tokio::test]
async fn a_resent_summary_is_stored_once() {
    let hook = Webhook::start(true).await;
    let s = start(&["--summary-webhook-url", &hook.url]).await;
    let (mut orb, _) = s.join("r", "ai", "ai").await;
    for _ in 0..3 {
        orb.send(json!({"type": "session_summary", "summaryId": "sum-again", "summary": {}}))
            .await;
        assert_eq!(orb.recv().await["type"], "session_summary_ack");
    }
    eventually("the delivery", || !hook.delivered().is_empty()).await;
    let (_, metrics) = s.http_get("/metrics").await;
    assert!(
        metrics.contains("orb_signaling_summaries_stored_total{result=\"duplicate\"} 2"),
        "{metrics}"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(hook.received().len(), 1, "delivered once, not per copy");
}

struct Signaling {
    child: Child,
    addr: SocketAddr,
}

impl Signaling {
    /// The real binary: no orb runtime, summaries in `store`, the webhook at `hook`.
    async fn start(store: &std::path::Path, secret: &std::path::Path, hook: &str) -> Self {
        Self::start_with(store, secret, hook, &[]).await
    }

    /// [`Signaling::start`] with more flags.
    async fn start_with(store: &std::path::Path, secret: &std::path::Path, hook: &str, args: &[&str]) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_orb-signaling"))
            .args(["--listen", &addr.to_string(), "--orb-runtime", "none", "--auth", "none"])
            .args(["--summary-webhook-url", hook])
            .arg("--summary-webhook-secret-file")
            .arg(secret)
            .arg("--summary-dir")
            .arg(store)
            .args(args)
            .env_remove("ORB_SUMMARY_WEBHOOK_SECRET")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("orb-signaling starts");
        let deadline = tokio::time::Instant::now() + WAIT;
        while tokio::net::TcpStream::connect(addr).await.is_err() {
            assert!(tokio::time::Instant::now() < deadline, "orb-signaling did not listen");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Signaling { child, addr }
    }

    /// Joins `room` as its orb (no auth: the join says so).
    async fn join_orb(&self, room: &str) -> Client {
        let mut orb = Client::connect(&format!("ws://{}/ws-simple/{room}", self.addr), None).await;
        orb.send(json!({"type": "join", "roomId": room, "userId": "ai", "userRole": "ai", "participantType": "ai"}))
            .await;
        orb.recv_type("peer-discovery").await;
        orb
    }

    fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

/// The orb's summary is acknowledged, then signaling is SIGKILLed before the webhook has it
/// (the webhook is down). The restarted signaling delivers it from its store: the webhook
/// receives it exactly once (one successful POST, one idempotency key), and a further restart
/// does not send it again.
#[tokio::test]
async fn a_summary_survives_sigkill_of_signaling() {
    let hook = Webhook::start(false).await;
    let dir = temp_dir("sigkill");
    let secret = secret_file(&dir);
    let store = dir.join("summaries");

    let first = Signaling::start(&store, &secret, &hook.url).await;
    let url = format!("ws://{}/ws-simple/r", first.addr);
    let mut orb = Client::connect(&url, None).await;
    orb.send(json!({"type": "join", "roomId": "r", "userId": "ai", "userRole": "ai", "participantType": "ai"}))
        .await;
    orb.recv_type("peer-discovery").await;
    let summary = long_summary("sum-kill", 256 * 1024);
    orb.send(summary.clone()).await;
    assert_eq!(orb.recv_type("session_summary_ack").await["summaryId"], "sum-kill");
    eventually("an attempt while the webhook is down", || !hook.received().is_empty()).await;
    first.kill();
    orb.abort();

    hook.up.store(true, Ordering::SeqCst);
    let second = Signaling::start(&store, &secret, &hook.url).await;
    eventually_for("delivery after the restart", Duration::from_secs(60), || {
        !hook.delivered().is_empty()
    })
    .await;
    second.kill();
    let third = Signaling::start(&store, &secret, &hook.url).await;
    // Give the third a pass; a delivered summary is not pending, so nothing is posted.
    tokio::time::sleep(Duration::from_secs(1)).await;
    third.kill();

    let delivered = hook.delivered();
    assert_eq!(delivered.len(), 1, "exactly one successful delivery");
    assert!(hook.received().iter().all(|r| r.key == "sum-kill"));
    let body: Value = serde_json::from_slice(&delivered[0].body).unwrap();
    assert_eq!(body["summary"]["transcript"], summary["summary"]["transcript"]);
    verify(&delivered[0]);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// An orb's checkpoint outlives a SIGKILL of signaling; the orb dies with it (no final summary).
/// The restarted signaling stores the checkpoint as the session's partial summary and the webhook
/// receives it once; a third start finds nothing left to store.
#[tokio::test]
async fn a_checkpoint_left_by_a_killed_signaling_becomes_one_partial_summary() {
    let hook = Webhook::start(true).await;
    let dir = temp_dir("checkpoint-kill");
    let secret = secret_file(&dir);
    let store = dir.join("summaries");

    let first = Signaling::start(&store, &secret, &hook.url).await;
    let mut orb = first.join_orb("r").await;
    let transcript = json!([{"speaker": "coach-1", "role": "coach", "text": "where were we", "offsetMs": 5}]);
    orb.send(json!({"type": "session_checkpoint", "summaryId": "ignored", "summary": {"reason": "InProgress", "transcript": transcript}}))
        .await;
    let records = || {
        std::fs::read_dir(store.join("checkpoints"))
            .into_iter()
            .flatten()
            .filter(|e| {
                e.as_ref()
                    .is_ok_and(|e| e.path().extension().is_some_and(|x| x == "json"))
            })
            .count()
    };
    eventually("the checkpoint stored", || records() == 1).await;
    first.kill();
    orb.abort();
    assert!(hook.received().is_empty(), "nothing posted while the orb lived");

    let second = Signaling::start(&store, &secret, &hook.url).await;
    eventually_for("the partial summary delivered", Duration::from_secs(60), || {
        !hook.delivered().is_empty()
    })
    .await;
    second.kill();
    let third = Signaling::start(&store, &secret, &hook.url).await;
    // The third finds no checkpoint and nothing pending; a second id would be a second POST.
    eventually("the checkpoint gone", || records() == 0).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    third.kill();

    let delivered = hook.delivered();
    assert_eq!(delivered.len(), 1, "exactly one summary");
    assert!(delivered[0].key.starts_with("partial-"), "{}", delivered[0].key);
    let body: Value = serde_json::from_slice(&delivered[0].body).unwrap();
    assert_eq!(body["roomId"], "r");
    assert_eq!(body["summary"]["partial"], true);
    assert_eq!(body["summary"]["transcript"], transcript);
    assert!(
        body["summary"]["reason"]
            .as_str()
            .unwrap()
            .contains("signaling stopped"),
        "{body}"
    );
    verify(&delivered[0]);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// What the server answered a summary: acknowledged, or refused with the reason.
#[derive(Debug, PartialEq)]
enum Answer {
    Ack(String),
    Refused(String),
}

/// The next answer to a summary (acks arrive when stored, refusals at once; in any order).
async fn answer(orb: &mut Client) -> Answer {
    loop {
        let m = orb.recv().await;
        match m["type"].as_str() {
            Some("session_summary_ack") => return Answer::Ack(m["summaryId"].as_str().unwrap().to_owned()),
            Some("error") => {
                assert_eq!(m["code"], "summary_refused", "{m}");
                return Answer::Refused(m["message"].as_str().unwrap().to_owned());
            }
            _ => {}
        }
    }
}

async fn send_summary(orb: &mut Client, id: &str) -> Answer {
    orb.send(json!({"type": "session_summary", "summaryId": id, "summary": {"reason": "SessionComplete"}}))
        .await;
    answer(orb).await
}

/// A hostile orb floods the real binary with summaries under new ids. Its orb attempt (without
/// auth, the room) stores `MAX_PER_ORB` of them and the rest are refused (`summary_refused`): on
/// the same socket, on a new socket and after a restart of signaling, since the count is the
/// store's. A re-send of a stored one is still acknowledged, and a summary above
/// `--max-summary-bytes` is refused without counting.
#[tokio::test]
async fn a_summary_flood_stores_a_few_and_refuses_the_rest() {
    use orb_signaling::summary::MAX_PER_ORB;

    let hook = Webhook::start(true).await;
    let dir = temp_dir("flood");
    let secret = secret_file(&dir);
    let store = dir.join("summaries");
    let args = ["--max-summary-bytes", "65536"];
    let first = Signaling::start_with(&store, &secret, &hook.url, &args).await;

    let mut orb = first.join_orb("r").await;
    for i in 0..20 {
        orb.send(json!({"type": "session_summary", "summaryId": format!("flood-{i:02}"), "summary": {}}))
            .await;
    }
    let mut answers = Vec::new();
    for _ in 0..20 {
        answers.push(answer(&mut orb).await);
    }
    let acked: Vec<&Answer> = answers.iter().filter(|a| matches!(a, Answer::Ack(_))).collect();
    assert_eq!(acked.len(), MAX_PER_ORB, "{answers:?}");
    let refused = answers.iter().find(|a| matches!(a, Answer::Refused(_))).unwrap();
    assert!(
        matches!(refused, Answer::Refused(m) if m.contains("as many as it may")),
        "{refused:?}"
    );
    let Answer::Ack(stored) = acked[0] else { unreachable!() };
    let stored = stored.clone();
    orb.close().await;

    // A new socket of the same orb: the store counts what it holds.
    let mut orb = first.join_orb("r").await;
    assert!(matches!(send_summary(&mut orb, "flood-new").await, Answer::Refused(_)));
    assert_eq!(send_summary(&mut orb, &stored).await, Answer::Ack(stored.clone()));
    first.kill();
    orb.abort();

    // A restarted signaling over the same store still counts them.
    let second = Signaling::start_with(&store, &secret, &hook.url, &args).await;
    let mut orb = second.join_orb("r").await;
    assert!(matches!(
        send_summary(&mut orb, "flood-after-restart").await,
        Answer::Refused(_)
    ));
    assert_eq!(send_summary(&mut orb, &stored).await, Answer::Ack(stored.clone()));

    // Another room's orb: one above the size cap is refused and does not count.
    let mut other = second.join_orb("r2").await;
    other.send(long_summary("too-big", 100_000)).await;
    match answer(&mut other).await {
        Answer::Refused(m) => assert!(m.contains("too-big") && m.contains("65536"), "{m}"),
        a => panic!("an oversized summary was stored: {a:?}"),
    }
    for i in 0..MAX_PER_ORB {
        let id = format!("r2-{i}");
        assert_eq!(send_summary(&mut other, &id).await, Answer::Ack(id));
    }

    let (_, metrics) = http_get(second.addr, "/metrics").await;
    for needle in [
        "orb_signaling_summaries_stored_total{result=\"too_many\"} 1",
        "orb_signaling_summaries_stored_total{result=\"too_large\"} 1",
        "orb_signaling_summaries_stored_total{result=\"duplicate\"} 1",
        "orb_signaling_messages_rejected_total{reason=\"summary_refused\"} 2",
    ] {
        assert!(metrics.contains(needle), "{needle} in\n{metrics}");
    }
    second.kill();
    // Records only: a SIGKILL mid-write may leave a temporary file next to them.
    let stored_files: Vec<_> = std::fs::read_dir(&store)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    assert_eq!(
        stored_files.len(),
        2 * MAX_PER_ORB,
        "only the accepted summaries are stored: {stored_files:?}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The webhook receives the summary the orb sent as the protocol's type defines it (the schema
/// of docs/session-summary.schema.json), with signaling's `roomId`, `fromId` and `type`; the coach
/// receives the same live.
#[tokio::test]
async fn the_webhook_body_is_the_protocols_summary() {
    use orb_protocol::UserRole;
    use orb_protocol::summary::{
        DeliveredSummary, SessionSummary, SessionSummaryMessage, SummaryContent, SummaryMessageType,
        SummaryParticipant, TranscriptLine,
    };
    let hook = Webhook::start(true).await;
    let s = start(&["--summary-webhook-url", &hook.url]).await;
    let (mut coach, _) = s.join("r", "coach-1", "coach").await;
    let (mut orb, _) = s.join("r", "ai", "ai").await;
    coach.recv().await;
    let sent = SessionSummaryMessage {
        summary_id: "sum-typed".into(),
        room_id: "whatever-the-orb-says".into(),
        session_id: "s-1".into(),
        coach_id: "coach-1".into(),
        client_id: "client-1".into(),
        from_id: None,
        summary: SessionSummary {
            duration: 60_000,
            participants: vec![SummaryParticipant {
                user_id: "coach-1".into(),
                user_role: UserRole::Coach,
            }],
            content: SummaryContent {
                key_topics: vec!["sleep".into()],
                progress: "Sleeps better.".into(),
                recommendations: vec!["Keep the routine.".into()],
            },
            transcript: vec![TranscriptLine {
                speaker: "coach-1".into(),
                role: UserRole::Coach,
                text: "How did you sleep?".into(),
                offset_ms: 1200,
                overlap: true,
            }],
            reason: "SessionComplete".into(),
            summary_error: Some("partial".into()),
        },
    };
    let mut frame = serde_json::to_value(&sent).unwrap();
    frame["type"] = json!("session_summary");
    orb.send(frame).await;
    assert_eq!(orb.recv().await["type"], "session_summary_ack");
    let expected = DeliveredSummary {
        kind: SummaryMessageType::SessionSummary,
        message: SessionSummaryMessage {
            room_id: "r".into(),
            from_id: Some("ai".into()),
            ..sent
        },
    };
    let live: DeliveredSummary = serde_json::from_value(coach.recv().await).unwrap();
    assert_eq!(live, expected);
    eventually("the delivery", || !hook.delivered().is_empty()).await;
    let body: DeliveredSummary = serde_json::from_slice(&hook.delivered()[0].body).expect("the protocol's type");
    assert_eq!(body, expected);
}
