//! Room tokens: refused before the upgrade with an HTTP status and a reason, carried in the
//! query, an `Authorization: Bearer` header or the `Sec-WebSocket-Protocol` header, and the token
//! decides who you are.

use orb_api::auth::{Role, RoomClaims, SigningKey, unix_now};
use serde_json::json;

use crate::common::*;

/// Presents `token` (alternately as a subprotocol and in the query, both transports must refuse
/// alike) and expects a refusal without an upgrade: the HTTP status and the reason.
async fn refused(s: &TestServer, room: &str, token: Option<&str>) -> (u16, String) {
    static TURN: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let r = match token {
        None => refused_with(&s.url(room), &[]).await,
        Some(t)
            if TURN
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                .is_multiple_of(2) =>
        {
            refused_with(&s.url(room), &[("sec-websocket-protocol", &token_protocols(t))]).await
        }
        Some(t) => refused_with(&format!("{}?token={t}", s.url(room)), &[]).await,
    };
    let expected = if r.status == 403 { "forbidden" } else { "unauthorized" };
    assert_eq!(r.body["error"], expected, "{r:?}");
    if r.status == 401 {
        assert!(r.headers.contains_key("www-authenticate"), "{r:?}");
    }
    (r.status, r.body["reason"].as_str().unwrap_or_default().to_owned())
}

#[tokio::test]
async fn missing_expired_wrong_room_and_forged_tokens_are_refused_with_a_reason() {
    let s = start(&["--auth", "jwt"]).await;
    let claims = |room: &str, exp: u64| RoomClaims {
        room: room.into(),
        sub: "coach-1".into(),
        role: Role::Coach,
        exp,
        session: None,
        iat: orb_api::auth::unix_now(),
        aud: orb_api::auth::ROOM_TOKEN_AUDIENCE.into(),
        orb: None,
    };
    let expired = key().mint(&claims("room-a", unix_now() - 3600));
    let wrong_room = key().mint(&claims("room-b", unix_now() + 600));
    let forged = SigningKey::new(vec![0x42u8; 32])
        .unwrap()
        .mint(&claims("room-a", unix_now() + 600));
    for (token, why) in [
        (None, "no room token"),
        (Some(expired.as_str()), "expired"),
        (Some(wrong_room.as_str()), "another room"),
        (Some(forged.as_str()), "signature"),
        (Some("garbage"), "malformed"),
    ] {
        let (status, message) = refused(&s, "room-a", token).await;
        let expected = if why == "another room" { 403 } else { 401 };
        assert_eq!(status, expected, "{why}");
        assert!(message.contains(why), "{why}: {message}");
    }
    assert_eq!(s.metrics.connections.get(), 0, "no refused request became a socket");
    let m = s.metrics.render();
    for reason in ["missing", "expired", "wrong_room", "bad_signature", "malformed"] {
        assert!(
            m.contains(&format!("orb_signaling_auth_failures_total{{reason=\"{reason}\"}} 1")),
            "{reason}: {m}"
        );
    }
}

/// Tokens an attacker would try: signed with the right key but never expiring, issued in the
/// future, meant for another service (no or another audience), missing claims, or with another
/// algorithm (`none`, HS512, RS256 headers). Each is refused before the join, and a room with a
/// valid token next door is not disturbed.
#[tokio::test]
async fn hostile_tokens_are_refused() {
    use base64::Engine;
    let s = start(&["--auth", "jwt"]).await;
    let (mut neighbour, _) = {
        let mut c = Client::connect(
            &format!("{}?token={}", s.url("room-n"), token("room-n", "n-1", Role::Coach)),
            None,
        )
        .await;
        c.send(json!({"type": "join"})).await;
        let d = c.recv().await;
        (c, d)
    };
    let now = unix_now();
    let raw = |header: serde_json::Value, claims: serde_json::Value, alg: jsonwebtoken::Algorithm| {
        let mut h = jsonwebtoken::Header::new(alg);
        if let Some(kid) = header.get("kid").and_then(|v| v.as_str()) {
            h.kid = Some(kid.into());
        }
        jsonwebtoken::encode(&h, &claims, &jsonwebtoken::EncodingKey::from_secret(&KEY)).unwrap()
    };
    let good =
        json!({"room": "room-a", "sub": "x", "role": "coach", "exp": now + 600, "iat": now, "aud": "orb-signaling"});
    let with = |k: &str, v: serde_json::Value| {
        let mut c = good.clone();
        c[k] = v;
        c
    };
    let without = |k: &str| {
        let mut c = good.clone();
        c.as_object_mut().unwrap().remove(k);
        c
    };
    let b64 = |v: serde_json::Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    let alg_none = format!("{}.{}.", b64(json!({"alg": "none", "typ": "JWT"})), b64(good.clone()));
    let hs = jsonwebtoken::Algorithm::HS256;
    let cases = [
        (
            raw(json!({}), with("exp", json!(1u64 << 40)), hs),
            "longer than signaling allows",
        ),
        (
            raw(json!({}), with("iat", json!(now + 3600)), hs),
            "issued in the future",
        ),
        (raw(json!({}), with("aud", json!("billing")), hs), "not a room token"),
        (raw(json!({}), without("aud"), hs), "malformed"),
        (raw(json!({}), without("iat"), hs), "malformed"),
        (raw(json!({}), without("exp"), hs), "malformed"),
        (raw(json!({}), with("role", json!("admin")), hs), "malformed"),
        (
            raw(json!({}), good.clone(), jsonwebtoken::Algorithm::HS512),
            "malformed",
        ),
        (alg_none, "malformed"),
        (
            format!(
                "{}.{}.c2ln",
                b64(json!({"alg": "RS256", "typ": "JWT"})),
                b64(good.clone())
            ),
            "malformed",
        ),
    ];
    for (token, why) in cases {
        let (status, message) = refused(&s, "room-a", Some(&token)).await;
        assert_eq!(status, 401, "{why}");
        assert!(message.contains(why), "{why}: {message}");
    }
    // The right token still works, and the neighbouring room noticed nothing.
    let mut ok = Client::connect(
        &format!(
            "{}?token={}",
            s.url("room-a"),
            key().mint(&serde_json::from_value(good).unwrap())
        ),
        None,
    )
    .await;
    ok.send(json!({"type": "join"})).await;
    assert_eq!(ok.recv().await["type"], "peer-discovery");
    neighbour.expect_nothing_pending().await;
    let m = s.metrics.render();
    for (reason, n) in [("too_long_lived", 2), ("wrong_audience", 1)] {
        assert!(
            m.contains(&format!("orb_signaling_auth_failures_total{{reason=\"{reason}\"}} {n}")),
            "{reason}: {m}"
        );
    }
}

#[tokio::test]
async fn the_token_not_the_join_message_decides_identity() {
    let s = start(&["--auth", "jwt"]).await;
    let coach_token = token("r", "coach-1", Role::Coach);
    let mut coach = Client::connect(&format!("{}?token={coach_token}", s.url("r")), None).await;
    coach
        .send(json!({"type": "join", "roomId": "r", "userId": "whoever", "userRole": "client"}))
        .await;
    assert_eq!(coach.recv().await["type"], "peer-discovery");

    // The seed's client sends its own (ignored) claims, with a user role the token contradicts.
    let client_token = token("r", "client-7", Role::Client);
    let mut client = Client::connect(&format!("{}?token={client_token}", s.url("r")), None).await;
    client
        .send(json!({"type": "join", "userId": "coach-1", "userRole": "ai", "participantType": "ai"}))
        .await;
    let discovery = client.recv().await;
    assert_eq!(
        discovery["peers"],
        json!([{"userId": "coach-1", "userRole": "coach", "participantType": "human"}])
    );
    assert_eq!(
        coach.recv().await,
        json!({"type": "user-joined", "userId": "client-7", "userRole": "client", "participantType": "human", "shouldCreateOffer": false})
    );
    client
        .send(json!({"type": "offer", "toId": "coach-1", "fromId": "coach-1", "offer": {}}))
        .await;
    assert_eq!(coach.recv().await["fromId"], "client-7");

    // The orb authenticates with a bearer header; role ai makes it the AI participant.
    let orb_token = token("r", "orb-r", Role::Ai);
    let mut orb = Client::connect(&s.url("r"), Some(&orb_token)).await;
    orb.send(json!({"type": "join", "userId": "x", "userRole": "coach"}))
        .await;
    assert_eq!(orb.recv().await["peers"].as_array().unwrap().len(), 2);
    let joined = coach.recv().await;
    assert_eq!(
        (joined["userId"].as_str(), joined["participantType"].as_str()),
        (Some("orb-r"), Some("ai"))
    );
    assert_eq!(joined["shouldCreateOffer"], true);
}

#[tokio::test]
async fn a_token_for_room_a_cannot_join_room_b() {
    let s = start(&["--auth", "jwt"]).await;
    let t = token("room-a", "coach-1", Role::Coach);
    let (status, message) = refused(&s, "room-b", Some(&t)).await;
    assert_eq!(status, 403);
    assert!(message.contains("another room"), "{message}");
}

/// `--max-token-ttl` bounds how long a token may live: a shorter setting refuses tokens a day
/// would allow.
#[tokio::test]
async fn the_longest_token_life_is_configurable() {
    let s = start(&["--auth", "jwt", "--max-token-ttl", "1h"]).await;
    let long = key().mint(&RoomClaims::new("room-t", "c", Role::Coach, 2 * 3600));
    let (status, message) = refused(&s, "room-t", Some(&long)).await;
    assert_eq!(status, 401);
    assert!(message.contains("longer than signaling allows"), "{message}");
    let short = key().mint(&RoomClaims::new("room-t", "c", Role::Coach, 1800));
    let mut ok = Client::connect(&format!("{}?token={short}", s.url("room-t")), None).await;
    ok.send(json!({"type": "join"})).await;
    assert_eq!(ok.recv().await["type"], "peer-discovery");
}

/// The token as a subprotocol: accepted, and the handshake answers with `orb-signaling` only,
/// never with the token. The token decides the identity as in the query.
#[tokio::test]
async fn a_token_in_the_subprotocol_is_accepted_and_never_echoed() {
    let s = start(&["--auth", "jwt"]).await;
    let t = token("room-p", "coach-p", Role::Coach);
    let (mut c, headers) = handshake(&s.url("room-p"), &[("sec-websocket-protocol", &token_protocols(&t))])
        .await
        .expect("upgraded");
    let answered: Vec<_> = headers.get_all("sec-websocket-protocol").iter().collect();
    assert_eq!(answered, ["orb-signaling"]);
    assert!(!format!("{headers:?}").contains(&t), "the token is echoed: {headers:?}");
    c.send(json!({"type": "join", "userId": "someone-else"})).await;
    let (mut other, _) = handshake(
        &s.url("room-p"),
        &[(
            "sec-websocket-protocol",
            &token_protocols(&token("room-p", "client-p", Role::Client)),
        )],
    )
    .await
    .expect("upgraded");
    assert_eq!(c.recv().await["type"], "peer-discovery");
    other.send(json!({"type": "join"})).await;
    assert_eq!(other.recv().await["peers"][0]["userId"], "coach-p");

    // The same token in several places is one token.
    let (mut same, _) = handshake(
        &format!("{}?token={t}", s.url("room-p")),
        &[
            ("sec-websocket-protocol", &token_protocols(&t)),
            ("authorization", &format!("Bearer {t}")),
        ],
    )
    .await
    .expect("upgraded");
    same.send(json!({"type": "ping"})).await;
    assert_eq!(same.recv().await["type"], "pong");
}

/// Two different tokens, a token subprotocol without `orb-signaling` offered beside it, or an
/// empty bearer: a bad request (400), refused before the upgrade, whichever token is valid.
#[tokio::test]
async fn conflicting_or_unreadable_token_transports_are_bad_requests() {
    let s = start(&["--auth", "jwt"]).await;
    let good = token("room-c", "coach-c", Role::Coach);
    let other = token("room-c", "client-c", Role::Client);
    let url = s.url("room-c");
    let with_query = format!("{url}?token={good}");
    let protocols = token_protocols(&other);
    let bearer_other = format!("Bearer {other}");
    let bearer_good = format!("Bearer {good}");
    let alone = format!("bearer.{good}");
    type Case<'a> = (&'a str, Vec<(&'a str, &'a str)>, &'a str);
    let cases: [Case; 5] = [
        (
            &with_query,
            vec![("sec-websocket-protocol", &protocols)],
            "different room tokens",
        ),
        (
            &with_query,
            vec![("authorization", &bearer_other)],
            "different room tokens",
        ),
        (
            &url,
            vec![("authorization", &bearer_good), ("sec-websocket-protocol", &protocols)],
            "different room tokens",
        ),
        (
            &url,
            vec![("sec-websocket-protocol", &alone)],
            "orb-signaling subprotocol",
        ),
        (&url, vec![("authorization", "Bearer ")], "Authorization"),
    ];
    for (url, headers, why) in cases {
        let r = refused_with(url, &headers).await;
        assert_eq!(
            (r.status, r.body["error"].as_str()),
            (400, Some("bad_request")),
            "{why}: {r:?}"
        );
        assert!(r.body["reason"].as_str().unwrap().contains(why), "{why}: {r:?}");
    }
    assert!(
        s.metrics
            .render()
            .contains("orb_signaling_auth_failures_total{reason=\"bad_request\"} 5"),
        "{}",
        s.metrics.render()
    );
    // With auth off (dev mode) no token is read, so nothing conflicts.
    let open = start(&[]).await;
    handshake(
        &format!("{}?token={good}", open.url("room-c")),
        &[("authorization", &bearer_other)],
    )
    .await
    .expect("auth off: upgraded");
}

/// `GET /auth/check?room=` answers what the handshake would: the web client asks it after a
/// socket that never opened, to tell a refused token from a busy or unreachable server.
#[tokio::test]
async fn the_auth_check_answers_what_the_handshake_would() {
    let s = start(&["--auth", "jwt"]).await;
    let t = token("room-k", "coach-k", Role::Coach);
    let check = |path: String, bearer: Option<String>| {
        let addr = s.addr;
        async move {
            let mut req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n");
            if let Some(b) = bearer {
                req.push_str(&format!("Authorization: Bearer {b}\r\n"));
            }
            req.push_str("\r\n");
            raw_http(addr, &req).await
        }
    };
    let (status, _) = check("/auth/check?room=room-k".into(), Some(t.clone())).await;
    assert_eq!(status, 204);
    let (status, body) = check("/auth/check?room=room-k".into(), None).await;
    assert_eq!(status, 401);
    assert!(body.contains("no room token"), "{body}");
    let (status, body) = check("/auth/check?room=room-x".into(), Some(t.clone())).await;
    assert_eq!(status, 403);
    assert!(body.contains("another room"), "{body}");
    let (status, _) = check("/auth/check?room=bad%20room".into(), Some(t)).await;
    assert_eq!(status, 400);

    // Dev mode: no tokens, everything passes.
    let open = start(&[]).await;
    assert_eq!(open.http_get("/auth/check?room=any").await.0, 204);
}
