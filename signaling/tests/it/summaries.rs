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

/// In process: a 1 MiB transcript is acknowledged once stored, reaches the coach live, and the
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

    let summary = long_summary("sum-large", 1 << 20);
    let text = summary.to_string();
    assert!(text.len() > (1 << 20) && text.len() > 65536);
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
