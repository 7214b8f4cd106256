//! Seed 001's protocol, message by message, as a browser written for the seed speaks it; run
//! against one replica and against three sharing rooms through Redis (each room's members spread
//! over them), with the same expectations.

use orb_api::auth::{Role, RoomClaims};
use serde_json::json;

use crate::common::*;
use orb_signaling::protocol::AiStatus;

async fn join_order_ai_first_then_coach_then_client(setup: Setup) {
    let s = setup.start(&[]).await;
    let (mut orb, discovery) = s.join("room1", "ai-orb-1", "ai").await;
    assert_eq!(discovery, json!({"type": "peer-discovery", "peers": []}));

    let (mut coach, discovery) = s.join("room1", "coach-1", "coach").await;
    assert_eq!(
        discovery["peers"],
        json!([{"userId": "ai-orb-1", "userRole": "ai", "participantType": "ai"}])
    );
    assert_eq!(
        orb.recv().await,
        json!({"type": "user-joined", "userId": "coach-1", "userRole": "coach", "participantType": "human", "shouldCreateOffer": false})
    );

    let (mut client, discovery) = s.join("room1", "user-9", "client").await;
    assert_eq!(
        discovery["peers"],
        json!([
            {"userId": "ai-orb-1", "userRole": "ai", "participantType": "ai"},
            {"userId": "coach-1", "userRole": "coach", "participantType": "human"}
        ])
    );
    assert_eq!(orb.recv().await["shouldCreateOffer"], false, "the AI never offers");
    let joined = coach.recv().await;
    assert_eq!(
        (joined["type"].as_str(), joined["userId"].as_str()),
        (Some("user-joined"), Some("user-9"))
    );
    assert_eq!(joined["shouldCreateOffer"], true, "coach-1 < user-9: the coach offers");
    for c in [&mut orb, &mut coach, &mut client] {
        c.expect_nothing_pending().await;
    }
    assert!(s.runtime.requests().is_empty(), "the orb was already there");
}

async fn join_order_coach_first_then_ai_then_client_last(setup: Setup) {
    let s = setup.start(&[]).await;
    let (mut coach, discovery) = s.join("room2", "coach-1", "coach").await;
    assert_eq!(discovery["peers"], json!([]));
    let requests = s.runtime.requests();
    assert_eq!(requests.len(), 1, "the first human asks for an orb");
    assert_eq!(requests[0].coach_id.as_deref(), Some("coach-1"));

    let (mut orb, discovery) = s.join("room2", "ai-1", "ai").await;
    assert_eq!(discovery["peers"][0]["userId"], "coach-1");
    let joined = coach.recv().await;
    assert_eq!(joined["participantType"], "ai");
    assert_eq!(joined["shouldCreateOffer"], true, "humans offer to the AI");

    let (mut client, discovery) = s.join("room2", "a-client", "client").await;
    assert_eq!(discovery["peers"].as_array().unwrap().len(), 2);
    assert_eq!(orb.recv().await["shouldCreateOffer"], false);
    assert_eq!(
        coach.recv().await["shouldCreateOffer"],
        false,
        "a-client < coach-1: the client offers"
    );
    for c in [&mut orb, &mut coach, &mut client] {
        c.expect_nothing_pending().await;
    }
    assert_eq!(s.runtime.requests().len(), 1);
}

async fn targeted_relay_reaches_only_the_target_with_the_servers_from_id(setup: Setup) {
    let s = setup.start(&[]).await;
    let (mut coach, _) = s.join("r", "coach", "coach").await;
    let (mut client, _) = s.join("r", "client", "client").await;
    let (mut orb, _) = s.join("r", "ai", "ai").await;
    coach.recv().await;
    coach.recv().await;
    client.recv().await;

    let offer = json!({"type": "offer", "sdp": "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\n"});
    coach
        .send(json!({"type": "offer", "toId": "ai", "fromId": "client", "offer": offer, "extra": [1, 2]}))
        .await;
    assert_eq!(
        orb.recv().await,
        json!({"type": "offer", "toId": "ai", "fromId": "coach", "offer": offer, "extra": [1, 2]}),
        "every field is relayed; the claimed fromId is replaced"
    );
    orb.send(json!({"type": "answer", "targetId": "coach", "answer": {"type": "answer", "sdp": "v=0"}}))
        .await;
    let answer = coach.recv().await;
    assert_eq!(
        (answer["type"].as_str(), answer["fromId"].as_str()),
        (Some("answer"), Some("ai"))
    );
    let candidate =
        json!({"candidate": "candidate:1 1 udp 2122260223 10.0.0.2 54321 typ host", "sdpMid": "0", "sdpMLineIndex": 0});
    client
        .send(json!({"type": "ice-candidate", "toId": "coach", "candidate": candidate}))
        .await;
    let got = coach.recv().await;
    assert_eq!(got["candidate"], candidate);
    assert_eq!(got["fromId"], "client");
    for c in [&mut orb, &mut coach, &mut client] {
        c.expect_nothing_pending().await;
    }
}

async fn untargeted_relay_is_broadcast_to_everyone_else(setup: Setup) {
    let s = setup.start(&[]).await;
    let (mut a, _) = s.join("r", "a", "coach").await;
    let (mut b, _) = s.join("r", "b", "client").await;
    let (mut c, _) = s.join("r", "c", "ai").await;
    a.recv().await;
    a.recv().await;
    b.recv().await;
    a.send(json!({"type": "ice-candidate", "candidate": {"candidate": ""}}))
        .await;
    for peer in [&mut b, &mut c] {
        let m = peer.recv().await;
        assert_eq!(
            (m["type"].as_str(), m["fromId"].as_str()),
            (Some("ice-candidate"), Some("a"))
        );
    }
    for peer in [&mut a, &mut b, &mut c] {
        peer.expect_nothing_pending().await;
    }
}

async fn relay_to_an_unknown_peer_is_an_error_for_the_sender_only(setup: Setup) {
    let s = setup.start(&[]).await;
    let (mut a, _) = s.join("r", "a", "coach").await;
    let (mut b, _) = s.join("r", "b", "client").await;
    a.recv().await;
    a.send(json!({"type": "offer", "toId": "ghost", "offer": {}})).await;
    let e = a.recv().await;
    assert_eq!(
        (e["type"].as_str(), e["code"].as_str()),
        (Some("error"), Some("unknown_peer"))
    );
    b.expect_nothing_pending().await;
}

async fn leave_and_abrupt_close_both_notify_user_left(setup: Setup) {
    let s = setup.start(&[]).await;
    let (mut coach, _) = s.join("r", "coach", "coach").await;
    let (mut client, _) = s.join("r", "client", "client").await;
    let (orb, _) = s.join("r", "ai", "ai").await;
    coach.recv().await;
    coach.recv().await;
    client.recv().await;

    client.send(json!({"type": "leave"})).await;
    let expected = json!({"type": "user-left", "userId": "client", "userRole": "client"});
    assert_eq!(coach.recv().await, expected);
    // After leaving, the socket is no longer in the room.
    client.send(json!({"type": "offer", "offer": {}})).await;
    assert_eq!(client.recv().await["code"], "not_joined");

    orb.abort();
    assert_eq!(
        coach.recv().await,
        json!({"type": "user-left", "userId": "ai", "userRole": "ai"})
    );
    coach.close().await;
    eventually("the empty room to be removed", || {
        s.server.as_ref().unwrap().state().registry.room_count() == 0
    })
    .await;
    eventually("presence to say the room emptied", || {
        s.runtime.last_presence("r").is_some_and(|p| p.humans == 0)
    })
    .await;
}

async fn rejoin_with_the_same_user_id_replaces_the_old_socket(setup: Setup) {
    let s = setup.start(&[]).await;
    let (mut coach, _) = s.join("r", "coach", "coach").await;
    let (mut old, _) = s.join("r", "client", "client").await;
    coach.recv().await;
    let (mut new, discovery) = s.join("r", "client", "client").await;
    assert_eq!(
        discovery["peers"],
        json!([{"userId": "coach", "userRole": "coach", "participantType": "human"}])
    );
    let (code, reason, _) = old.closed().await;
    assert_eq!(code, 4409, "{reason}");
    assert_eq!(coach.recv().await["type"], "user-left");
    let joined = coach.recv().await;
    assert_eq!(
        (joined["type"].as_str(), joined["userId"].as_str()),
        (Some("user-joined"), Some("client"))
    );
    coach
        .send(json!({"type": "offer", "toId": "client", "offer": {}}))
        .await;
    assert_eq!(new.recv().await["fromId"], "coach", "relay goes to the new socket");
    coach.expect_nothing_pending().await;
}

/// A full room refuses a newcomer, but not a member rejoining: that replaces, it does not add.
async fn full_rooms_refuse_newcomers_with_a_reason_but_not_a_rejoin(setup: Setup) {
    let s = setup.start(&["--max-participants-per-room", "2"]).await;
    let (mut a, _) = s.join("r", "a", "coach").await;
    let (_b, _) = s.join("r", "b", "client").await;
    let (_a2, discovery) = s.join("r", "a", "coach").await;
    assert_eq!(
        discovery["peers"],
        json!([{"userId": "b", "userRole": "client", "participantType": "human"}])
    );
    assert_eq!(a.closed().await.0, 4409);
    let mut c = Client::connect(&s.next_url("r"), None).await;
    c.send(json!({"type": "join", "userId": "c", "userRole": "client"}))
        .await;
    let (code, _, texts) = c.closed().await;
    assert_eq!(code, 4429);
    assert_eq!(texts[0]["code"], "room_full", "{texts:?}");
}

/// Configured ICE servers reach each joiner with the join's acceptance, first (a client creating
/// its peer connections on `peer-discovery` has them by then): STUN URLs bare, TURN URLs with a
/// credential for the user id (the claimed one with auth off) expiring after
/// `--turn-credential-ttl`. A join the room refuses gets none.
async fn ice_servers_come_first_with_an_accepted_join(setup: Setup) {
    let secret = secret_file("north\n");
    let s = setup
        .start(&[
            "--ice-servers",
            "stun:stun.example.org,turn:turn.example.org?transport=udp",
            "--turn-secret-file",
            secret.to_str().unwrap(),
            "--max-participants-per-room",
            "2",
        ])
        .await;
    let mut members = vec![];
    for user in ["a", "b"] {
        let before = orb_api::auth::unix_now();
        let mut c = Client::connect(&s.next_url("r"), None).await;
        c.send(json!({"type": "join", "userId": user, "userRole": "coach"}))
            .await;
        let ice = c.recv().await;
        let after = orb_api::auth::unix_now();
        assert_eq!(ice["type"], "ice-servers", "{ice}");
        assert_eq!(ice["iceServers"][0], json!({"urls": ["stun:stun.example.org"]}));
        let turn = &ice["iceServers"][1];
        assert_eq!(turn["urls"], json!(["turn:turn.example.org?transport=udp"]));
        let username = turn["username"].as_str().unwrap();
        let (expiry, id) = username.split_once(':').unwrap();
        assert_eq!(id, user);
        let expiry: u64 = expiry.parse().unwrap();
        assert!((before + 12 * 3600..=after + 12 * 3600).contains(&expiry), "{ice}");
        assert_eq!(turn["credential"], turn_rest_credential("north", username));
        assert!(ice["ttl"].as_u64().unwrap() <= 12 * 3600, "{ice}");
        assert_eq!(c.recv().await["type"], "peer-discovery");
        members.push(c);
    }
    let mut full = Client::connect(&s.next_url("r"), None).await;
    full.send(json!({"type": "join", "userId": "c", "userRole": "client"}))
        .await;
    let (code, _, texts) = full.closed().await;
    assert_eq!(code, 4429);
    assert_eq!(texts.len(), 1, "only the refusal: {texts:?}");
    assert_eq!(texts[0]["code"], "room_full");
}

/// The first human asks for an orb and later ones do not while it is on its way or there; a
/// human arriving after the attempt came to nothing (unavailable, ended) asks again, and is not
/// told how the last attempt ended (another is on its way, whose statuses are news again).
async fn an_orb_is_asked_for_once_and_again_after_it_came_to_nothing(setup: Setup) {
    let s = setup.start(&["--max-participants-per-room", "8"]).await;
    // On the first replica, whose orb events the fixture sends.
    let (mut coach, _) = s.join("r", "coach", "coach").await;
    let (_client, _) = s.join("r", "client", "client").await;
    coach.recv_type("user-joined").await;
    eventually("the first human's request", || s.runtime.requests().len() == 1).await;
    let mut humans = vec![];
    for (status, human) in [
        (AiStatus::Unavailable, "friend"),
        (AiStatus::Unavailable, "late"),
        (AiStatus::Ended, "later"),
    ] {
        s.events.status("r", status);
        // Seen by a member: the room's status is recorded (with Redis, in the same step).
        assert_eq!(coach.recv_type("ai_status").await["status"], json!(status));
        let asked = s.runtime.requests().len();
        let (mut joiner, _) = s.join("r", human, "client").await;
        eventually("a request after the orb came to nothing", || {
            s.runtime.requests().len() == asked + 1
        })
        .await;
        joiner.expect_nothing_pending().await;
        // The first replica has the join (with Redis, from the join's event).
        assert_eq!(coach.recv_type("user-joined").await["userId"], human);
        humans.push(joiner);
    }
    let requests = s.runtime.requests();
    assert_eq!(requests.len(), 4, "{requests:?}");
    assert_eq!(requests[3].coach_id.as_deref(), Some("coach"));
    assert_eq!(requests[3].client_id.as_deref(), Some("later"), "the latest client");
    // With the orb in the room, a human asks for none, whatever the last status said.
    let (_orb, _) = s.join("r", "ai", "ai").await;
    let (_after, _) = s.join("r", "after", "client").await;
    assert_eq!(s.runtime.requests().len(), 4);
}

/// A token of an earlier orb of the room cannot replace the live orb: of two orb tokens the newer
/// (`iat`) wins, whichever joins first and wherever. The earlier one may be an earlier attempt of
/// the same AiOrb (the same user id, e.g. a pod on a partitioned node) or an earlier AiOrb.
async fn an_earlier_orbs_token_cannot_replace_the_live_orb(setup: Setup) {
    let s = setup.start(&["--auth", "jwt"]).await;
    let orb_token = |orb: &str, age: u64| {
        let mut c = RoomClaims::new("room-o", &format!("ai-orb-{orb}"), Role::Ai, 600);
        c.iat -= age;
        c.orb = Some(format!("uid-of-{orb}"));
        key().mint(&c)
    };
    let (old, new, earlier_orb) = (orb_token("o", 100), orb_token("o", 0), orb_token("before", 200));
    let connect = |t: String| {
        let url = format!("{}?token={t}", s.next_url("room-o"));
        async move {
            let mut c = Client::connect(&url, None).await;
            c.send(json!({"type": "join"})).await;
            c
        }
    };
    let mut coach = connect(token("room-o", "coach-1", Role::Coach)).await;
    coach.recv_type("peer-discovery").await;

    // The old attempt first: the new one replaces it.
    let mut first = connect(old.clone()).await;
    first.recv_type("peer-discovery").await;
    assert_eq!(coach.recv().await["type"], "user-joined");
    let mut live = connect(new.clone()).await;
    live.recv_type("peer-discovery").await;
    assert_eq!(first.closed().await.0, 4409, "the earlier attempt is replaced");
    assert_eq!(coach.recv().await["type"], "user-left");
    assert_eq!(coach.recv().await["type"], "user-joined");

    // The old attempt again, and an earlier AiOrb: refused as final, and the live orb stays.
    for stale in [old, earlier_orb] {
        let mut stale = connect(stale).await;
        let refusal = stale.recv().await;
        assert_eq!(refusal["code"], "unauthorized", "{refusal}");
        assert!(refusal["message"].as_str().unwrap().contains("newer orb"), "{refusal}");
        assert_eq!(stale.closed().await.0, 4409);
    }
    live.expect_nothing_pending().await;
    coach.expect_nothing_pending().await;

    // The live orb reconnecting with its own token is fine.
    let mut again = connect(new).await;
    again.recv_type("peer-discovery").await;
    assert_eq!(live.closed().await.0, 4409);
}

async fn ping_pong_before_and_after_join(setup: Setup) {
    let s = setup.start(&[]).await;
    let mut c = s.connect("r").await;
    c.send(json!({"type": "ping", "timestamp": 1})).await;
    assert_eq!(c.recv().await, json!({"type": "pong"}));
    c.send(json!({"type": "join", "userId": "u", "userRole": "client"}))
        .await;
    c.recv().await;
    c.send(json!({"type": "ping"})).await;
    assert_eq!(c.recv().await, json!({"type": "pong"}));
}

async fn ai_status_from_the_orb_reaches_humans_and_humans_cannot_send_it(setup: Setup) {
    let s = setup.start(&[]).await;
    let (mut coach, _) = s.join("r", "coach", "coach").await;
    let (mut orb, _) = s.join("r", "ai", "ai").await;
    coach.recv().await;
    orb.send(json!({"type": "ai_status", "status": "speaking", "sessionId": "s1"}))
        .await;
    assert_eq!(
        coach.recv().await,
        json!({"type": "ai_status", "status": "speaking", "sessionId": "s1", "fromId": "ai"})
    );
    coach.send(json!({"type": "ai_status", "status": "ready"})).await;
    assert_eq!(coach.recv().await["code"], "invalid_message");
    orb.expect_nothing_pending().await;
}

async fn orb_control_messages(setup: Setup) {
    let s = setup.start(&[]).await;
    let (mut coach, _) = s.join("r", "coach", "coach").await;
    let (mut client, _) = s.join("r", "client", "client").await;
    let (mut orb, _) = s.join("r", "ai", "ai").await;
    coach.recv().await;
    coach.recv().await;
    client.recv().await;

    orb.send(
        json!({"type": "orb_ready", "roomId": "r", "webrtcStatus": "connected", "participants": ["coach", "client"]}),
    )
    .await;
    for human in [&mut coach, &mut client] {
        assert_eq!(human.recv().await, json!({"type": "ai_status", "status": "ready"}));
    }
    orb.send(json!({"type": "orb_heartbeat", "roomId": "r", "timestamp": 1, "metrics": {"cpu": 45}}))
        .await;
    orb.send(json!({"type": "orb_error", "roomId": "r", "error": "tts failed"}))
        .await;
    // Addressed to a peer, the error concerns that peer's input: it goes to that peer only.
    orb.send(
        json!({"type": "orb_error", "roomId": "x", "toId": "client", "code": "invalid_offer", "error": "bad sdp"}),
    )
    .await;
    assert_eq!(
        client.recv().await,
        json!({"type": "orb_error", "roomId": "r", "toId": "client", "code": "invalid_offer", "error": "bad sdp", "fromId": "ai"})
    );
    client
        .send(json!({"type": "orb_error", "toId": "coach", "error": "forged"}))
        .await;
    assert_eq!(client.recv().await["code"], "invalid_message");
    let summary = json!({"duration": 1500000, "keyTopics": ["anxiety", "breathing"]});
    orb.send(json!({"type": "session_summary", "summaryId": "sum-1", "roomId": "elsewhere", "sessionId": "s", "clientId": "client", "summary": summary}))
        .await;
    assert_eq!(
        coach.recv().await,
        json!({"type": "session_summary", "summaryId": "sum-1", "roomId": "r", "sessionId": "s", "clientId": "client", "summary": summary, "fromId": "ai"}),
        "the summary goes to the coach, with the orb's real room"
    );
    assert_eq!(
        orb.recv().await,
        json!({"type": "session_summary_ack", "summaryId": "sum-1"}),
        "stored: the orb may forget it"
    );
    // An id that could not be a header value or a name is refused, and nothing is stored.
    orb.send(json!({"type": "session_summary", "summaryId": "a b\r\n", "summary": {}}))
        .await;
    assert_eq!(orb.recv().await["code"], "invalid_message");
    client
        .send(json!({"type": "session_summary", "summary": "forged"}))
        .await;
    assert_eq!(client.recv().await["code"], "invalid_message");
    // Voice activity is the orb's to report: it hears the media. Humans cannot keep a room alive
    // (or make it look idle) with it; a malformed one is refused.
    orb.send(json!({"type": "orb_activity", "lastVoiceActivity": 1_700_000_000_000u64}))
        .await;
    client
        .send(json!({"type": "orb_activity", "lastVoiceActivity": 1_700_000_000_000u64}))
        .await;
    assert_eq!(client.recv().await["code"], "invalid_message");
    orb.send(json!({"type": "orb_activity", "lastVoiceActivity": "soon"}))
        .await;
    assert_eq!(orb.recv().await["code"], "invalid_message");
    for c in [&mut orb, &mut coach, &mut client] {
        c.expect_nothing_pending().await;
    }
}

async fn runtime_status_reaches_the_room_and_late_joiners(setup: Setup) {
    let s = setup.start(&[]).await;
    let (mut coach, _) = s.join("r", "coach", "coach").await;
    s.events.status("r", AiStatus::Queued);
    assert_eq!(coach.recv().await, json!({"type": "ai_status", "status": "queued"}));
    s.events.status("r", AiStatus::Starting);
    assert_eq!(coach.recv().await["status"], "starting");
    let (mut client, _) = s.join("r", "client", "client").await;
    assert_eq!(client.recv().await, json!({"type": "ai_status", "status": "starting"}));
    assert_eq!(coach.recv().await["type"], "user-joined");
    s.events.status("r", AiStatus::Unavailable);
    assert_eq!(client.recv().await["status"], "unavailable");
    assert_eq!(coach.recv().await["status"], "unavailable");
    // The call goes on without the AI.
    coach
        .send(json!({"type": "offer", "toId": "client", "offer": {}}))
        .await;
    assert_eq!(client.recv().await["type"], "offer");
}

async fn bad_input_gets_an_error_for_that_socket_only(setup: Setup) {
    let s = setup.start(&[]).await;
    let (mut bystander, _) = s.join("r", "coach", "coach").await;
    let mut c = s.connect("r").await;
    let cases: Vec<(&str, &str)> = vec![
        ("{not json", "malformed_json"),
        ("[1,2]", "invalid_message"),
        (r#"{"no": "type"}"#, "invalid_message"),
        (r#"{"type": "teleport"}"#, "unknown_type"),
        (r#"{"type": "offer", "offer": {}}"#, "not_joined"),
        (r#"{"type": "answer", "toId": "coach"}"#, "not_joined"),
        (r#"{"type": "ice-candidate", "candidate": {}}"#, "not_joined"),
        (r#"{"type": "leave"}"#, "not_joined"),
        (r#"{"type": "ai_status", "status": "ready"}"#, "not_joined"),
        (r#"{"type": "session_summary"}"#, "not_joined"),
        (r#"{"type": "ai_status", "status": "dancing"}"#, "invalid_message"),
        (r#"{"type": "join", "userRole": "client"}"#, "invalid_message"),
        (r#"{"type": "join", "userId": "x"}"#, "invalid_message"),
        (r#"{"type": "offer", "toId": {"a": 1}}"#, "invalid_message"),
    ];
    for (frame, code) in &cases {
        c.send_text(frame).await;
        let e = c.recv().await;
        assert_eq!(
            (e["type"].as_str(), e["code"].as_str()),
            (Some("error"), Some(*code)),
            "{frame}"
        );
        assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    c.send_raw(tokio_tungstenite::tungstenite::Message::binary(vec![1, 2, 3]))
        .await;
    assert_eq!(c.recv().await["code"], "binary_not_supported");
    c.send(json!({"type": "join", "userId": "k", "userRole": "client"}))
        .await;
    assert_eq!(c.recv().await["type"], "peer-discovery");
    c.send(json!({"type": "join", "userId": "k", "userRole": "client"}))
        .await;
    assert_eq!(c.recv().await["code"], "already_joined");
    assert_eq!(
        bystander.recv().await["type"],
        "user-joined",
        "the bystander saw only the join"
    );
    bystander.expect_nothing_pending().await;
    let metrics = s.metrics.render();
    assert!(
        metrics.contains("orb_signaling_messages_rejected_total{reason=\"not_joined\"} 6"),
        "{metrics}"
    );
}

async fn invalid_room_ids_are_refused_before_the_upgrade(setup: Setup) {
    let s = setup.start(&[]).await;
    let (status, body) = s.http_get("/ws-simple/-bad").await;
    assert_eq!(status, 400);
    assert!(body.contains("room id"), "{body}");
}

macro_rules! suite {
    ($($name:ident),* $(,)?) => {
        mod one_replica {
            use crate::common::Setup;
            $(#[tokio::test]
            async fn $name() {
                super::$name(Setup::One).await
            })*
        }
        mod three_replicas {
            use crate::common::Setup;
            $(#[tokio::test]
            async fn $name() {
                super::$name(Setup::Three).await
            })*
        }
    };
}

suite!(
    join_order_ai_first_then_coach_then_client,
    join_order_coach_first_then_ai_then_client_last,
    targeted_relay_reaches_only_the_target_with_the_servers_from_id,
    untargeted_relay_is_broadcast_to_everyone_else,
    relay_to_an_unknown_peer_is_an_error_for_the_sender_only,
    leave_and_abrupt_close_both_notify_user_left,
    rejoin_with_the_same_user_id_replaces_the_old_socket,
    full_rooms_refuse_newcomers_with_a_reason_but_not_a_rejoin,
    an_orb_is_asked_for_once_and_again_after_it_came_to_nothing,
    an_earlier_orbs_token_cannot_replace_the_live_orb,
    ping_pong_before_and_after_join,
    ai_status_from_the_orb_reaches_humans_and_humans_cannot_send_it,
    orb_control_messages,
    runtime_status_reaches_the_room_and_late_joiners,
    bad_input_gets_an_error_for_that_socket_only,
    invalid_room_ids_are_refused_before_the_upgrade,
    ice_servers_come_first_with_an_accepted_join,
);
