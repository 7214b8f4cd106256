//! End to end: signaling, an orb process in test mode and two scripted humans (coach and
//! client) talking WebRTC over loopback. Every wait is for an event with a generous timeout;
//! nothing asserts on timing.

use std::path::Path;
use std::time::Duration;

use orb::brain::test::GREETING_HZ;
use orb::testkit::OrbProcess;
use orb::testkit::human::{Human, Voice};
use orb::testkit::relay::TestRelay;
use orb_protocol::{ServerMessage, UserRole};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(30);

fn orb_binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_orb"))
}

async fn wait_for_control(relay: &TestRelay, kind: &str, pred: impl Fn(&serde_json::Value) -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + WAIT;
    while tokio::time::Instant::now() < deadline {
        if relay.control_messages().iter().any(|(k, v)| k == kind && pred(v)) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

/// Waits until the orb reports ready (joined, brain ready).
async fn wait_ready(orb: &OrbProcess) -> bool {
    let deadline = tokio::time::Instant::now() + WAIT;
    while tokio::time::Instant::now() < deadline {
        if let Some((200, _)) = orb.http_get("/readyz").await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

/// The tri-party call of the issue, against any signaling server at `url`.
async fn tri_party_call(url: &str, room: &str) -> Vec<String> {
    let mut orb = OrbProcess::spawn(orb_binary(), url, room, &[]).unwrap();
    assert!(wait_ready(&orb).await, "orb joined and ready");

    // The coach connects first and is greeted with the known tone.
    let mut coach = Human::join(url, room, "coach-1", UserRole::Coach).await.unwrap();
    assert!(coach.wait_connected(WAIT).await, "coach connected over loopback ICE");
    assert!(
        coach.wait_for_tone(GREETING_HZ, 5, WAIT).await.is_some(),
        "coach heard the greeting"
    );

    let mut client = Human::join(url, room, "client-1", UserRole::Client).await.unwrap();
    assert!(client.wait_connected(WAIT).await, "client connected");
    assert!(
        orb.wait_metric("orb_peer_connections{state=\"connected\"} 2", WAIT)
            .await
    );
    // Loopback: both connections run directly between the hosts, none through a relay or a
    // server-reflexive address, and none failed. A remote address that answered a check before its
    // candidate was signalled (a busy machine) is peer-reflexive: still the host itself.
    let direct = |metrics: &str| {
        ["host", "prflx"]
            .iter()
            .map(|path| metric_value(metrics, &format!("orb_peer_media_paths_total{{path=\"{path}\"}}")))
            .sum::<u64>()
    };
    let deadline = tokio::time::Instant::now() + WAIT;
    let metrics = loop {
        let metrics = orb.http_get("/metrics").await.map(|(_, body)| body).unwrap_or_default();
        if direct(&metrics) >= 2 || tokio::time::Instant::now() > deadline {
            break metrics;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(direct(&metrics), 2, "{metrics}");
    for path in ["relay", "srflx"] {
        assert_eq!(
            metric_value(&metrics, &format!("orb_peer_media_paths_total{{path=\"{path}\"}}")),
            0
        );
    }
    assert!(
        orb.wait_metric("orb_peer_connect_failures_total{stage=\"ice\"} 0", WAIT)
            .await
    );

    // The coach speaks a known tone; the orb echoes it to both humans.
    coach.drain_audio();
    client.drain_audio();
    coach.set_voice(Voice::Tone(1000.0));
    assert!(
        coach.wait_for_tone(1000.0, 5, WAIT).await.is_some(),
        "coach heard the echo"
    );
    assert!(
        client.wait_for_tone(1000.0, 5, WAIT).await.is_some(),
        "client heard the echo"
    );
    coach.set_voice(Voice::Silence);

    // The client leaves: its peer closes, the coach keeps working.
    client.leave().await;
    assert!(
        orb.wait_metric("orb_peer_connections{state=\"connected\"} 1", WAIT)
            .await,
        "client peer closed"
    );
    assert!(orb.wait_metric("orb_participants 1", WAIT).await);
    coach.drain_audio();
    coach.set_voice(Voice::Tone(700.0));
    assert!(
        coach.wait_for_tone(700.0, 5, WAIT).await.is_some(),
        "coach still echoed after the client left"
    );
    let metrics = orb.http_get("/metrics").await.unwrap().1;
    for name in [
        "orb_audio_packets_received_total",
        "orb_audio_packets_sent_total",
        "orb_ice_connect_seconds_count 2",
    ] {
        assert!(metrics.contains(name), "{name} in\n{metrics}");
    }

    // SIGTERM: final status, the summary reaches the coach, clean exit, termination message.
    orb.terminate().unwrap();
    let mut statuses = Vec::new();
    let summary = coach
        .wait_signal(WAIT, |m| {
            if let ServerMessage::AiStatus { status, .. } = m {
                statuses.push(serde_json::to_value(status).unwrap().as_str().unwrap().to_owned());
            }
            matches!(m, ServerMessage::SessionSummary(_))
        })
        .await
        .expect("session summary delivered to the coach");
    let ServerMessage::SessionSummary(summary) = summary else {
        unreachable!()
    };
    assert_eq!(summary["roomId"], room);
    assert_eq!(summary["summary"]["reason"], "SessionComplete");
    let people = summary["summary"]["participants"].to_string();
    assert!(people.contains("coach-1") && people.contains("client-1"), "{people}");
    assert!(
        summary["summary"]["transcript"]
            .as_array()
            .is_some_and(|t| !t.is_empty())
    );
    assert!(statuses.iter().any(|s| s == "speaking"), "{statuses:?}");
    assert_eq!(statuses.last().map(String::as_str), Some("ended"), "{statuses:?}");
    let status = tokio::time::timeout(WAIT, orb.child.wait()).await.unwrap().unwrap();
    assert_eq!(status.code(), Some(0));
    let message = std::fs::read_to_string(&orb.termination_log).unwrap();
    assert!(message.starts_with("SessionComplete "), "{message}");
    let _ = std::fs::remove_file(&orb.termination_log);
    statuses
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coach_and_client_talk_to_the_orb_until_sigterm() {
    let relay = TestRelay::start().await.unwrap();
    tri_party_call(&relay.url(), "e2e-room").await;
    let control = relay.control_messages();
    let ready = control.iter().find(|(k, _)| k == "orb_ready").expect("orb_ready");
    assert_eq!(ready.1["roomId"], "e2e-room");
    let statuses: Vec<&str> = control
        .iter()
        .filter(|(k, _)| k == "ai_status")
        .map(|(_, v)| v["status"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(statuses.first(), Some(&"ready"), "{statuses:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_call_through_orb_signaling() {
    use orb_signaling::{config::Config, metrics::Metrics, orb_runtime, server::Server};
    use std::sync::Arc;
    let argv = [
        "orb-signaling",
        "--listen=127.0.0.1:0",
        "--auth=none",
        "--orb-runtime=none",
    ];
    let config = Config::parse_from(argv, None).unwrap();
    let metrics = Arc::new(Metrics::new());
    let (events, events_rx) = orb_runtime::OrbEvents::new(metrics.clone());
    let runtime = Arc::new(orb_runtime::NoOrbRuntime::new(events));
    let server = Server::start(&config, runtime, events_rx, metrics).await.unwrap();
    tri_party_call(&format!("ws://{}", server.local_addr()), "e2e-signaling-room").await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_sdp_or_candidate_only_affects_that_peer() {
    let relay = TestRelay::start().await.unwrap();
    let mut orb = OrbProcess::spawn(orb_binary(), &relay.url(), "bad-input", &[]).unwrap();
    assert!(wait_for_control(&relay, "orb_ready", |_| true).await);
    let mut coach = Human::join(&relay.url(), "bad-input", "coach-1", UserRole::Coach)
        .await
        .unwrap();
    assert!(coach.wait_connected(WAIT).await);

    // A second participant connects properly, then sends garbage through the same signaling.
    let mut mallory = Human::join(&relay.url(), "bad-input", "mallory", UserRole::Client)
        .await
        .unwrap();
    assert!(mallory.wait_connected(WAIT).await);
    let ai = "ai-orb-bad-input";
    mallory.send_raw(json!({"type": "ice-candidate", "toId": ai,
        "candidate": {"candidate": "candidate:garbage", "sdpMid": "0", "sdpMLineIndex": 0}}));
    assert!(
        wait_for_control(&relay, "orb_error", |v| v["toId"] == "mallory"
            && v["code"] == "invalid_candidate")
        .await,
        "the bad candidate is refused for mallory only"
    );
    mallory.send_raw(json!({"type": "offer", "toId": ai, "offer": {"type": "offer", "sdp": "v=0\r\nthis is not sdp"}}));
    assert!(
        wait_for_control(&relay, "orb_error", |v| v["toId"] == "mallory"
            && v["code"] == "invalid_offer")
        .await,
        "the bad offer is refused for mallory only"
    );
    mallory.send_raw(json!({"type": "offer", "toId": ai}));
    assert!(
        orb.wait_metric("orb_peer_errors_total{kind=\"invalid_offer\"} 2", WAIT)
            .await
    );

    // The coach's connection is untouched and the orb still answers.
    coach.drain_audio();
    coach.set_voice(Voice::Tone(1000.0));
    assert!(coach.wait_for_tone(1000.0, 5, WAIT).await.is_some());
    assert_eq!(orb.http_get("/healthz").await.unwrap().0, 200);
    assert!(orb.child.try_wait().unwrap().is_none(), "the orb is still running");
    orb.terminate().unwrap();
    let status = tokio::time::timeout(WAIT, orb.child.wait()).await.unwrap().unwrap();
    assert_eq!(status.code(), Some(0));
    let _ = std::fs::remove_file(&orb.termination_log);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_orb_joins_with_its_room_token_and_a_refused_token_is_final() {
    use orb_api::auth::{Role, RoomClaims, SigningKey, unix_now};
    use orb_signaling::{config::Config, metrics::Metrics, orb_runtime, server::Server};
    use std::sync::Arc;
    let key = "k".repeat(32);
    let argv = [
        "orb-signaling",
        "--listen=127.0.0.1:0",
        "--auth=jwt",
        "--orb-runtime=none",
    ];
    let config = Config::parse_from(argv, Some(key.clone())).unwrap();
    let metrics = Arc::new(Metrics::new());
    let (events, events_rx) = orb_runtime::OrbEvents::new(metrics.clone());
    let server = Server::start(
        &config,
        Arc::new(orb_runtime::NoOrbRuntime::new(events)),
        events_rx,
        metrics,
    )
    .await
    .unwrap();
    let url = format!("ws://{}", server.local_addr());
    let claims = RoomClaims {
        room: "jwt-room".into(),
        sub: "ai-orb-jwt-room".into(),
        role: Role::Ai,
        exp: unix_now() + 600,
        session: None,
        iat: orb_api::auth::unix_now(),
        aud: orb_api::auth::ROOM_TOKEN_AUDIENCE.into(),
        orb: None,
    };
    let token = SigningKey::new(key.into_bytes()).unwrap().mint(&claims);

    let mut orb =
        OrbProcess::spawn_with_env(orb_binary(), &url, "jwt-room", &[], &[("ORB_SIGNALING_TOKEN", &token)]).unwrap();
    assert!(wait_ready(&orb).await, "joined with the token");
    orb.terminate().unwrap();
    let status = tokio::time::timeout(WAIT, orb.child.wait()).await.unwrap().unwrap();
    assert_eq!(status.code(), Some(0));
    let _ = std::fs::remove_file(&orb.termination_log);

    let forged = SigningKey::new(vec![b'x'; 32]).unwrap().mint(&claims);
    let mut orb =
        OrbProcess::spawn_with_env(orb_binary(), &url, "jwt-room", &[], &[("ORB_SIGNALING_TOKEN", &forged)]).unwrap();
    let status = tokio::time::timeout(WAIT, orb.child.wait()).await.unwrap().unwrap();
    assert_eq!(
        status.code(),
        Some(1),
        "a refused token ends the orb instead of retrying forever"
    );
    let message = std::fs::read_to_string(&orb.termination_log).unwrap();
    assert!(
        message.starts_with("Error signaling refused the orb's token"),
        "{message}"
    );
    let _ = std::fs::remove_file(&orb.termination_log);
    server.shutdown().await;
}

/// The value of one sample in Prometheus text exposition, 0 when it is absent.
fn metric_value(metrics: &str, sample: &str) -> u64 {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(sample)?.trim().parse().ok())
        .unwrap_or(0)
}
