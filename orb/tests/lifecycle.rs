//! The orb process's own deadlines and its signaling reconnects.

use std::path::Path;
use std::time::Duration;

use orb::testkit::OrbProcess;
use orb::testkit::human::{Human, Voice};
use orb::testkit::relay::TestRelay;
use orb_protocol::UserRole;

const WAIT: Duration = Duration::from_secs(30);

fn orb_binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_orb"))
}

async fn count_control(relay: &TestRelay, kind: &str, at_least: usize) -> bool {
    let deadline = tokio::time::Instant::now() + WAIT;
    while tokio::time::Instant::now() < deadline {
        if relay.control_messages().iter().filter(|(k, _)| k == kind).count() >= at_least {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

async fn exit_message(orb: &mut OrbProcess) -> (Option<i32>, String) {
    let status = tokio::time::timeout(WAIT, orb.child.wait())
        .await
        .expect("orb exits")
        .unwrap();
    let message = std::fs::read_to_string(&orb.termination_log).unwrap_or_default();
    let _ = std::fs::remove_file(&orb.termination_log);
    (status.code(), message)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_room_ends_on_the_idle_timeout_with_a_summary() {
    let relay = TestRelay::start().await.unwrap();
    let mut orb = OrbProcess::spawn(orb_binary(), &relay.url(), "idle-room", &["--idle-timeout=300ms"]).unwrap();
    let (code, message) = exit_message(&mut orb).await;
    assert_eq!(code, Some(0));
    assert!(message.starts_with("IdleTimeout "), "{message}");
    assert!(count_control(&relay, "session_summary", 1).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lifetime_ends_the_orb_even_while_people_talk() {
    let relay = TestRelay::start().await.unwrap();
    let mut orb = OrbProcess::spawn(orb_binary(), &relay.url(), "life-room", &["--max-lifetime=2s"]).unwrap();
    let mut coach = Human::join(&relay.url(), "life-room", "coach-1", UserRole::Coach)
        .await
        .unwrap();
    assert!(coach.wait_connected(WAIT).await);
    coach.set_voice(Voice::Tone(1000.0));
    let (code, message) = exit_message(&mut orb).await;
    assert_eq!(code, Some(0));
    assert!(message.starts_with("MaxLifetime "), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_signaling_socket_is_rejoined_and_the_session_goes_on() {
    let relay = TestRelay::start().await.unwrap();
    let mut orb = OrbProcess::spawn(orb_binary(), &relay.url(), "flaky-room", &[]).unwrap();
    assert!(count_control(&relay, "orb_ready", 1).await);
    relay.kick("ai-orb-flaky-room");
    assert!(count_control(&relay, "orb_ready", 2).await, "the orb joined again");
    assert!(orb.wait_metric("orb_room_reconnects_total 1", WAIT).await);
    assert!(orb.wait_metric("orb_room_connected 1", WAIT).await);

    let mut coach = Human::join(&relay.url(), "flaky-room", "coach-1", UserRole::Coach)
        .await
        .unwrap();
    assert!(coach.wait_connected(WAIT).await);
    coach.set_voice(Voice::Tone(1000.0));
    assert!(coach.wait_for_tone(1000.0, 5, WAIT).await.is_some());
    orb.terminate().unwrap();
    let (code, message) = exit_message(&mut orb).await;
    assert_eq!(code, Some(0));
    assert!(message.starts_with("SessionComplete "), "{message}");
}

/// The summary is kept until signaling acknowledges it: a server that received it but lost it
/// (closed the socket before storing it) gets it again after the orb's reconnect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unacknowledged_summary_is_sent_again_after_a_reconnect() {
    let relay = TestRelay::start().await.unwrap();
    let mut orb = OrbProcess::spawn(orb_binary(), &relay.url(), "lossy-room", &[]).unwrap();
    assert!(count_control(&relay, "orb_ready", 1).await);
    relay.withhold_summary_acks(true);
    orb.terminate().unwrap();
    assert!(count_control(&relay, "session_summary", 1).await);
    // The server "restarts" before storing it: the socket drops, the next server acks.
    relay.withhold_summary_acks(false);
    relay.kick("ai-orb-lossy-room");
    assert!(count_control(&relay, "session_summary", 2).await, "sent again");
    let (code, _) = exit_message(&mut orb).await;
    assert_eq!(code, Some(0));
    let sent: Vec<_> = relay
        .control_messages()
        .into_iter()
        .filter(|(k, _)| k == "session_summary")
        .map(|(_, v)| v["summaryId"].clone())
        .collect();
    assert_eq!(sent.len(), 2);
    assert_eq!(sent[0], sent[1], "the same summary id: one idempotency key");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_configuration_exits_with_the_usage_code() {
    let log = std::env::temp_dir().join(format!("orb-bad-config-{}", std::process::id()));
    let out = tokio::process::Command::new(orb_binary())
        .args([
            "--room=has space",
            "--test-mode",
            &format!("--termination-log={}", log.display()),
        ])
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let message = std::fs::read_to_string(&log).unwrap();
    assert!(message.starts_with("Error "), "{message}");
    let _ = std::fs::remove_file(log);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_mode_from_the_environment_accepts_one() {
    // No signaling at all: the orb keeps retrying until its idle timeout ends it cleanly.
    let log = std::env::temp_dir().join(format!("orb-env-test-mode-{}", std::process::id()));
    let out = tokio::process::Command::new(orb_binary())
        .env("ORB_ROOM", "env-room")
        .env("ORB_TEST_MODE", "1")
        .env("ORB_IDLE_TIMEOUT", "300ms")
        .env("SIGNALING_URL", "ws://127.0.0.1:9")
        .env("ORB_HTTP_ADDR", "127.0.0.1:0")
        .env("ORB_TERMINATION_LOG", &log)
        .env_remove("OPENAI_API_KEY")
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let message = std::fs::read_to_string(&log).unwrap();
    assert!(message.starts_with("IdleTimeout "), "{message}");
    let _ = std::fs::remove_file(log);
}

/// A deny list that does not parse stops the orb before it joins (exit 2, the message names the
/// setting): a typo never silently leaves the orb without its deny list.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_candidate_deny_list_exits_with_the_usage_code() {
    let log = std::env::temp_dir().join(format!("orb-bad-cidrs-{}", std::process::id()));
    let out = tokio::process::Command::new(orb_binary())
        .args([
            "--room=cidr-room",
            "--test-mode",
            &format!("--termination-log={}", log.display()),
        ])
        .env("ORB_DENIED_CANDIDATE_CIDRS", "169.254.0.0/16,10.96.0.0/33")
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let message = std::fs::read_to_string(&log).unwrap();
    assert!(
        message.starts_with("Error ") && message.contains("--denied-candidate-cidrs"),
        "{message}"
    );
    let _ = std::fs::remove_file(log);
}
