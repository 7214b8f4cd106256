//! Warm orbs: an orb started in no room, brain ready, bound to a room by an assignment; and the
//! local runtime's warm pool, which binds a room's orb to one instead of starting a process.
//! Every wait is for an event with a generous timeout; nothing asserts on timing.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::Duration;

use orb::brain::test::GREETING_HZ;
use orb::testkit::OrbProcess;
use orb::testkit::fake_openai::FakeOpenAi;
use orb::testkit::human::Human;
use orb::testkit::relay::TestRelay;
use orb_api::assignment::Assignment;
use orb_protocol::UserRole;

#[path = "support/dev_mode.rs"]
mod dev_mode;

const WAIT: Duration = Duration::from_secs(30);

fn orb_binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_orb"))
}

async fn until(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while tokio::time::Instant::now() < deadline {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("timed out waiting for {what}");
}

fn assignment(room: &str, signaling_url: &str) -> Assignment {
    Assignment {
        room: room.into(),
        session: Some("session-1".into()),
        coach: Some("coach-1".into()),
        client: Some("client-1".into()),
        purpose: None,
        max_lifetime_seconds: 120,
        idle_timeout_seconds: 120,
        signaling_url: signaling_url.into(),
        token: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warm_orb_waits_in_no_room_then_joins_the_room_it_is_assigned() {
    let relay = TestRelay::start().await.unwrap();
    let orb = OrbProcess::spawn_warm(orb_binary(), "the-credential").unwrap();
    until("warm readiness", async || {
        matches!(orb.http_get("/readyz").await, Some((200, _)))
    })
    .await;
    assert!(relay.control_messages().is_empty(), "a warm orb is in no room");

    let body = serde_json::to_string(&assignment("warm-room", &relay.url())).unwrap();
    // Refusals leave it warm and unbound.
    let (status, _) = orb.assign("wrong-credential", &body).await.unwrap();
    assert_eq!(status, 401, "a wrong credential");
    let (status, _) = orb.assign("", &body).await.unwrap();
    assert_eq!(status, 401, "no credential");
    let (status, text) = orb.assign("the-credential", "{not json").await.unwrap();
    assert_eq!(status, 400, "malformed JSON: {text}");
    let (status, text) = orb
        .assign("the-credential", r#"{"room":"r","unknown":1}"#)
        .await
        .unwrap();
    assert_eq!(status, 400, "unknown fields: {text}");
    let bad_room = serde_json::to_string(&assignment("a b", &relay.url())).unwrap();
    let (status, text) = orb.assign("the-credential", &bad_room).await.unwrap();
    assert_eq!(status, 400, "an invalid room id: {text}");
    assert!(text.contains("room"), "{text}");
    let huge = format!(r#"{{"room":"{}"}}"#, "x".repeat(20_000));
    assert_eq!(orb.assign("the-credential", &huge).await.unwrap().0, 413);
    assert_eq!(orb.http_get("/readyz").await.map(|r| r.0), Some(200), "still warm");
    assert!(relay.control_messages().is_empty());

    let (status, text) = orb.assign("the-credential", &body).await.unwrap();
    assert_eq!(status, 200, "{text}");
    assert!(text.contains("joined"), "{text}");
    let ready = relay.control_messages();
    let (_, orb_ready) = ready.iter().find(|(k, _)| k == "orb_ready").expect("joined the room");
    assert_eq!(orb_ready["roomId"], "warm-room");
    // A retry of the same assignment (a lost answer) is the same answer; another room is refused.
    assert_eq!(orb.assign("the-credential", &body).await.unwrap().0, 200);
    let other = serde_json::to_string(&assignment("other-room", &relay.url())).unwrap();
    let (status, text) = orb.assign("the-credential", &other).await.unwrap();
    assert_eq!(status, 409, "{text}");

    // The brain prepared while warm speaks in the room.
    let mut coach = Human::join(&relay.url(), "warm-room", "coach-1", UserRole::Coach)
        .await
        .unwrap();
    assert!(coach.wait_connected(WAIT).await, "coach connected over loopback ICE");
    assert!(
        coach.wait_for_tone(GREETING_HZ, 5, WAIT).await.is_some(),
        "coach heard the greeting"
    );
}

/// A warm orb's model was set up before its room was known: the assignment's context reaches it
/// in a new `session.update`, the configured instructions followed by the coach, the client and
/// the purpose.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warm_orbs_model_learns_its_sessions_context_from_the_assignment() {
    let relay = TestRelay::start().await.unwrap();
    let service = FakeOpenAi::start().await.unwrap();
    let orb = OrbProcess::spawn_warm_openai(orb_binary(), "the-credential", &service.base_url()).unwrap();
    until("warm readiness", async || {
        matches!(orb.http_get("/readyz").await, Some((200, _)))
    })
    .await;
    // Readiness may come with the service's `session.created`, before its update arrived there.
    until("the warm session.update", async || {
        !service.session_instructions().is_empty()
    })
    .await;
    let warm = service.session_instructions();
    assert_eq!(warm.len(), 1, "{warm:?}");
    assert!(!warm[0].contains("coach-1"), "no session known while warm: {warm:?}");

    let body = serde_json::to_string(&Assignment {
        purpose: Some("Quarterly goals review".into()),
        ..assignment("context-room", &relay.url())
    })
    .unwrap();
    let (status, text) = orb.assign("the-credential", &body).await.unwrap();
    assert!(status == 200 || status == 202, "{status} {text}");
    until("a session.update with the session's context", async || {
        service.session_instructions().len() > 1
    })
    .await;
    let instructions = service.session_instructions().pop().unwrap();
    assert!(instructions.starts_with(&warm[0]), "{instructions}");
    for fact in [
        r#""coachUserId":"coach-1""#,
        r#""clientUserId":"client-1""#,
        r#""purpose":"Quarterly goals review""#,
    ] {
        assert!(instructions.contains(fact), "{fact} missing: {instructions}");
    }
}

fn read(path: impl AsRef<Path>) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_pool_of_one_a_rooms_orb_joins_without_starting_a_process() {
    let logs = std::env::temp_dir().join(format!("orb-warm-dev-{}", std::process::id()));
    let (server, runtime) = dev_mode::start(1, &logs, orb_binary(), &[]).await;
    let stats = runtime.stats();
    until("a ready warm orb", async || {
        stats.warm_ready.load(Ordering::Relaxed) == 1
    })
    .await;
    assert_eq!(
        stats.processes_started.load(Ordering::Relaxed),
        1,
        "only the warm orb runs"
    );

    let url = format!("ws://{}", server.local_addr());
    let mut coach = Human::join(&url, "pool-room", "coach-1", UserRole::Coach)
        .await
        .unwrap();
    assert!(
        coach.wait_connected(WAIT).await,
        "the orb joined and connected to the coach"
    );
    assert!(coach.wait_for_tone(GREETING_HZ, 5, WAIT).await.is_some(), "and greeted");
    assert_eq!(stats.warm_bound.load(Ordering::Relaxed), 1);
    let room_log = read(logs.join("orb-pool-room.log"));
    assert!(room_log.contains("bound to warm orb warm-1"), "{room_log}");
    assert!(
        !room_log.contains("started "),
        "no process was started for the room: {room_log}"
    );
    assert!(read(logs.join("orb-warm-1.log")).contains("joining the assigned room"));
    // The pool refills: a second warm orb, the only other process.
    until("the pool refilled", async || {
        stats.warm_ready.load(Ordering::Relaxed) == 1
    })
    .await;
    assert_eq!(stats.processes_started.load(Ordering::Relaxed), 2);
    dev_mode::stop(server, runtime).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_assignment_falls_back_to_a_cold_start() {
    let logs = std::env::temp_dir().join(format!("orb-warm-fallback-{}", std::process::id()));
    std::fs::create_dir_all(&logs).unwrap();
    // Warm orbs that never accept the runtime's credential.
    let wrapper = logs.with_extension("orb-wrapper");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\ncase \"$*\" in *--warm*) ORB_ASSIGN_TOKEN=not-the-runtimes; export ORB_ASSIGN_TOKEN;; esac\nexec {} \"$@\"\n",
            orb_binary().display()
        ),
    )
    .unwrap();
    let mode = <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o755);
    std::fs::set_permissions(&wrapper, mode).unwrap();
    let (server, runtime) = dev_mode::start(1, &logs, &wrapper, &[]).await;
    let stats = runtime.stats();
    until("a ready warm orb", async || {
        stats.warm_ready.load(Ordering::Relaxed) == 1
    })
    .await;

    let url = format!("ws://{}", server.local_addr());
    let mut coach = Human::join(&url, "fallback-room", "coach-1", UserRole::Coach)
        .await
        .unwrap();
    assert!(coach.wait_connected(WAIT).await, "the cold orb joined and connected");
    let room_log = read(logs.join("orb-fallback-room.log"));
    assert!(room_log.contains("bound to warm orb warm-1"), "{room_log}");
    assert!(room_log.contains("failed (HTTP 401"), "{room_log}");
    assert!(room_log.contains("starting the orb cold"), "{room_log}");
    assert!(room_log.contains("--room=fallback-room"), "started cold: {room_log}");
    dev_mode::stop(server, runtime).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_tokens_on_the_orb_gets_in_by_its_aiorbs_token_and_an_earlier_orbs_token_does_not() {
    use futures::{SinkExt, StreamExt};
    use orb_api::auth::{Role, RoomClaims, SigningKey};
    use tokio_tungstenite::tungstenite::{Error as WsError, Message};
    const KEY: &str = "0123456789abcdef0123456789abcdef";
    let key = SigningKey::new(KEY.as_bytes().to_vec()).unwrap();
    let logs = std::env::temp_dir().join(format!("orb-warm-tokens-{}", std::process::id()));
    let (server, runtime) = dev_mode::start_with_key(1, &logs, orb_binary(), &[], Some(KEY)).await;
    until("a ready warm orb", async || {
        runtime.stats().warm_ready.load(Ordering::Relaxed) == 1
    })
    .await;
    let url = format!("ws://{}/ws-simple/token-room", server.local_addr());

    // The coach's arrival binds the warm orb, whose token (from its assignment) names its orb.
    let coach = key.mint(&RoomClaims::new("token-room", "coach-1", Role::Coach, 600));
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("{url}?token={coach}"))
        .await
        .unwrap();
    let join = serde_json::json!({"type": "join", "roomId": "token-room", "userRole": "coach"});
    ws.send(Message::text(join.to_string())).await.unwrap();
    let ai_joined = async {
        while let Some(Ok(Message::Text(text))) = ws.next().await {
            let v: serde_json::Value = serde_json::from_str(&text).unwrap();
            if v["type"] == "user-joined" && v["participantType"] == "ai" {
                return v;
            }
        }
        panic!("the socket closed before the AI joined");
    };
    let joined = tokio::time::timeout(WAIT, ai_joined)
        .await
        .expect("the warm orb joined with its token");
    assert_eq!(joined["userId"], "ai-orb-token-room");

    // An orb token naming another AiOrb of the room (an earlier one's, leaked): refused.
    let mut stale = RoomClaims::new("token-room", "ai-orb-token-room", Role::Ai, 600);
    stale.orb = Some("an-earlier-orb".into());
    let err = tokio_tungstenite::connect_async(format!("{url}?token={}", key.mint(&stale)))
        .await
        .expect_err("refused before the upgrade");
    let WsError::Http(response) = err else {
        panic!("not an HTTP refusal: {err}")
    };
    assert_eq!(response.status().as_u16(), 403);
    dev_mode::stop(server, runtime).await;
}
