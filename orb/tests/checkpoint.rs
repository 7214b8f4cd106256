//! Never lost, never duplicated: in dev mode (signaling's local runtime starting the real orb
//! binary), an orb checkpoints its session. SIGKILLed once the call is over, it leaves no final
//! summary, so signaling makes its last checkpoint the session's summary, marked partial;
//! SIGKILLed mid-call, it is replaced by an orb that continues the session. Either way the webhook
//! receives exactly one summary. Every wait is for a condition with a generous deadline.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::routing::post;
use orb::brain::test::GREETING_HZ;
use orb::testkit::human::Human;
use orb_protocol::UserRole;
use serde_json::Value;

#[path = "support/dev_mode.rs"]
mod dev_mode;

const WAIT: Duration = Duration::from_secs(60);
const ROOM: &str = "checkpoint-room";

fn orb_binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_orb"))
}

async fn until<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = tokio::time::Instant::now() + WAIT;
    while tokio::time::Instant::now() < deadline {
        if let Some(v) = check() {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}

/// A webhook that answers 200 and keeps every body it receives.
async fn webhook() -> (String, Arc<Mutex<Vec<Value>>>) {
    let received: Arc<Mutex<Vec<Value>>> = Arc::default();
    let store = received.clone();
    let app = axum::Router::new().route(
        "/hook",
        post(move |body: String| {
            let store = store.clone();
            async move {
                store.lock().unwrap().push(serde_json::from_str(&body).unwrap());
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, received)
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("orb-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// The pid of the room's orb process, from the runtime's note in the orb's log.
fn orb_pid(log: &str) -> Option<i32> {
    let line = log.lines().rev().find(|l| l.contains("(pid "))?;
    let after = &line[line.find("(pid ")? + 5..];
    after[..after.find(',')?].parse().ok()
}

fn checkpoints(dir: &Path) -> Vec<Value> {
    std::fs::read_dir(dir.join("checkpoints"))
        .into_iter()
        .flatten()
        .filter_map(|e| {
            let path = e.ok()?.path();
            (path.extension()? == "json")
                .then(|| serde_json::from_slice(&std::fs::read(path).ok()?).ok())
                .flatten()
        })
        .collect()
}

fn transcript_texts(summary: &Value) -> Vec<String> {
    summary["summary"]["transcript"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|l| l["text"].as_str().map(str::to_owned))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkilled_orb_s_session_reaches_the_webhook_once_as_a_partial_summary() {
    let logs = temp_dir("checkpoint-logs");
    let summaries = temp_dir("checkpoint-summaries");
    let (hook, received) = webhook().await;
    let (server, runtime) = dev_mode::start(
        0,
        &logs,
        orb_binary(),
        &[
            &format!("--summary-dir={}", summaries.display()),
            &format!("--summary-webhook-url={hook}"),
            "--empty-room-grace=30s",
        ],
    )
    .await;
    let url = format!("ws://{}", server.local_addr());
    let log_path = dev_mode_log(&logs);

    // A call: the coach hears the orb's greeting, which is in its transcript.
    let mut coach = Human::join(&url, ROOM, "coach-1", UserRole::Coach).await.unwrap();
    assert!(coach.wait_connected(WAIT).await, "coach connected to the orb");
    assert!(
        coach.wait_for_tone(GREETING_HZ, 5, WAIT).await.is_some(),
        "greeting heard"
    );
    let checkpoint = until("a checkpoint with the greeting", || {
        checkpoints(&summaries)
            .into_iter()
            .find(|c| !transcript_texts(c).is_empty())
    })
    .await;
    assert_eq!(checkpoint["roomId"], ROOM);
    let lines = transcript_texts(&checkpoint);

    // The coach leaves; once the orb has seen it go, the orb is SIGKILLed: no goodbye, no final
    // summary, and no replacement (its room is empty).
    coach.leave().await;
    until("the orb saw the coach leave", || {
        std::fs::read_to_string(&log_path)
            .ok()
            .filter(|l| l.contains("closed peer connection"))
    })
    .await;
    let pid = orb_pid(&std::fs::read_to_string(&log_path).unwrap()).expect("the orb's pid in its log");
    // SAFETY: kill(2) with a pid this test's runtime started.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);

    let posted = until("a summary at the webhook", || received.lock().unwrap().first().cloned()).await;
    assert_eq!(posted["type"], "session_summary");
    assert_eq!(posted["roomId"], ROOM);
    assert_eq!(posted["summary"]["partial"], true, "{posted}");
    let reason = posted["summary"]["reason"].as_str().unwrap();
    assert!(reason.contains("Failed"), "{reason}");
    // Everything the last checkpoint had, at least.
    let posted_lines = transcript_texts(&posted);
    assert!(posted_lines.starts_with(&lines), "{posted_lines:?} vs {lines:?}");
    // The checkpoint became the summary and is gone.
    until("the checkpoint removed", || {
        checkpoints(&summaries).is_empty().then_some(())
    })
    .await;

    // Exactly once: the summary is delivered (so nothing of it is pending), the room's orb is gone
    // (so nothing more can come from it), and the webhook has that one.
    until("the summary delivered", || {
        let stored = std::fs::read_dir(&summaries).ok()?;
        let delivered = stored
            .filter_map(|e| std::fs::read_to_string(e.ok()?.path()).ok())
            .filter(|text| text.contains("\"Delivered\""))
            .count();
        (delivered == 1).then_some(())
    })
    .await;
    dev_mode::stop(server, runtime).await;
    let all = received.lock().unwrap().clone();
    assert_eq!(all.len(), 1, "{all:?}");
    let _ = std::fs::remove_dir_all(&logs);
    let _ = std::fs::remove_dir_all(&summaries);
}

/// SIGKILLed mid-call, the orb is replaced; the replacement is handed the last checkpoint and
/// continues its transcript, and its final summary (not partial) is the session's only one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replaced_orb_continues_the_session_and_its_final_summary_is_the_only_one() {
    let logs = temp_dir("replaced-logs");
    let summaries = temp_dir("replaced-summaries");
    let (hook, received) = webhook().await;
    let (server, runtime) = dev_mode::start(
        0,
        &logs,
        orb_binary(),
        &[
            &format!("--summary-dir={}", summaries.display()),
            &format!("--summary-webhook-url={hook}"),
            "--empty-room-grace=1s",
        ],
    )
    .await;
    let url = format!("ws://{}", server.local_addr());
    let log_path = dev_mode_log(&logs);
    let log = || std::fs::read_to_string(&log_path).unwrap_or_default();

    let mut coach = Human::join(&url, ROOM, "coach-1", UserRole::Coach).await.unwrap();
    assert!(coach.wait_connected(WAIT).await, "coach connected to the orb");
    assert!(
        coach.wait_for_tone(GREETING_HZ, 5, WAIT).await.is_some(),
        "greeting heard"
    );
    let checkpoint = until("a checkpoint with the greeting", || {
        checkpoints(&summaries)
            .into_iter()
            .find(|c| !transcript_texts(c).is_empty())
    })
    .await;
    let lines = transcript_texts(&checkpoint);

    // Killed while the coach is in the room: replaced, and the replacement continues.
    let first = orb_pid(&log()).expect("the orb's pid in its log");
    // SAFETY: kill(2) with a pid this test's runtime started.
    assert_eq!(unsafe { libc::kill(first, libc::SIGKILL) }, 0);
    until("the replacement continuing the session", || {
        log()
            .contains("continuing the session of the orb before this one")
            .then_some(())
    })
    .await;
    assert_ne!(orb_pid(&log()), Some(first), "another process");

    // The coach leaves; the replacement ends after the empty-room grace with its final summary.
    coach.leave().await;
    let posted = until("a summary at the webhook", || received.lock().unwrap().first().cloned()).await;
    assert!(posted["summary"]["partial"].is_null(), "a final summary: {posted}");
    let own_id = posted["summaryId"].as_str().unwrap();
    assert!(own_id.starts_with("sum-"), "the replacement's own summary: {posted}");
    let posted_lines = transcript_texts(&posted);
    assert!(posted_lines.starts_with(&lines), "{posted_lines:?} vs {lines:?}");
    until("the orb ended", || log().contains("orb ended:").then_some(())).await;
    assert!(
        checkpoints(&summaries).is_empty(),
        "the final summary superseded the checkpoint"
    );
    until("the summary delivered", || {
        let delivered = std::fs::read_dir(&summaries)
            .ok()?
            .filter_map(|e| std::fs::read_to_string(e.ok()?.path()).ok())
            .filter(|text| text.contains("\"Delivered\""))
            .count();
        (delivered == 1).then_some(())
    })
    .await;
    dev_mode::stop(server, runtime).await;
    let all = received.lock().unwrap().clone();
    assert_eq!(all.len(), 1, "{all:?}");
    let _ = std::fs::remove_dir_all(&logs);
    let _ = std::fs::remove_dir_all(&summaries);
}

fn dev_mode_log(logs: &Path) -> PathBuf {
    orb_signaling::orb_runtime::local::log_path(logs, ROOM)
}
