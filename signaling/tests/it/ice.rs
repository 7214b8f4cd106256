//! `GET /ice-servers`: the room token decides as for the socket (same transports, refusals and
//! counts), TURN credentials follow the TURN REST convention and never outlive the token, CORS
//! only for the configured origins; and the `ice-servers` message a joiner gets on the socket.

use orb_api::auth::{Role, RoomClaims, SigningKey, unix_now};
use serde_json::{Value, json};

use crate::common::*;

const STUN: &str = "stun:stun.example.org:3478";
const TURN_UDP: &str = "turn:turn.example.org:3478?transport=udp";
const TURNS: &str = "turns:turn.example.org:443?transport=tcp";
/// The secret as its file holds it; the relay's secret is the trimmed value.
const SECRET_FILE_CONTENT: &str = "  north-wind \n";
const SECRET: &str = "north-wind";

fn token_until(room: &str, sub: &str, role: Role, exp: u64) -> String {
    key().mint(&RoomClaims {
        room: room.into(),
        sub: sub.into(),
        role,
        exp,
        session: None,
        iat: unix_now(),
        aud: orb_api::auth::ROOM_TOKEN_AUDIENCE.into(),
        orb: None,
    })
}

/// A server with tokens, one STUN and two TURN URLs, credentials valid for an hour at most, and
/// `extra` flags.
async fn turn_server(extra: &[&str]) -> TestServer {
    let secret = secret_file(SECRET_FILE_CONTENT);
    let ice = format!("{STUN},{TURN_UDP},{TURNS}");
    let mut args = vec![
        "--auth",
        "jwt",
        "--ice-servers",
        &ice,
        "--turn-secret-file",
        secret.to_str().unwrap(),
        "--turn-credential-ttl",
        "1h",
    ];
    args.extend_from_slice(extra);
    start(&args).await
}

async fn get(s: &TestServer, path: &str, headers: &[(&str, &str)]) -> HttpAnswer {
    http_request(s.addr, "GET", path, headers).await
}

fn counter(s: &TestServer, series: &str) -> u64 {
    s.metrics
        .render()
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {series}"))
}

const ISSUED: &str = "orb_signaling_turn_credentials_issued_total";

/// The TURN entry of an answer: its URLs, and the expiry and user id of its username, after
/// checking the credential against the secret.
fn turn_entry(list: &Value) -> (Value, u64, String) {
    let turn = &list["iceServers"][1];
    let username = turn["username"].as_str().expect("a username");
    assert_eq!(turn["credential"], turn_rest_credential(SECRET, username), "{list}");
    let (expiry, user) = username.split_once(':').unwrap();
    (turn["urls"].clone(), expiry.parse().unwrap(), user.to_owned())
}

#[tokio::test]
async fn the_tokens_user_gets_turn_credentials_that_never_outlive_the_token() {
    let s = turn_server(&[]).await;
    let exp = unix_now() + 600;
    let short = token_until("room-a", "coach-1", Role::Coach, exp);
    let answer = get(
        &s,
        "/ice-servers?room=room-a",
        &[("Authorization", &format!("Bearer {short}"))],
    )
    .await;
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(answer.header("cache-control"), Some("no-store"));
    assert_eq!(answer.header("content-type"), Some("application/json"));
    assert_eq!(answer.header("access-control-allow-origin"), None, "no CORS configured");
    assert_eq!(answer.header("vary"), None);
    let list = answer.json();
    assert_eq!(list["iceServers"][0], json!({"urls": [STUN]}), "STUN comes bare");
    let (urls, expiry, user) = turn_entry(&list);
    assert_eq!(urls, json!([TURN_UDP, TURNS]));
    assert_eq!((expiry, user.as_str()), (exp, "coach-1"), "capped by the token: {list}");
    let ttl = list["ttl"].as_u64().unwrap();
    assert!(ttl <= 600 && ttl + 60 > 600, "seconds until the token's expiry: {list}");
    assert_eq!(counter(&s, ISSUED), 1);

    // Every transport of the socket carries the token here too.
    for (path, headers) in [
        (format!("/ice-servers?room=room-a&token={short}"), vec![]),
        (
            "/ice-servers?room=room-a".to_owned(),
            vec![("Sec-WebSocket-Protocol", token_protocols(&short))],
        ),
    ] {
        let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let answer = get(&s, &path, &headers).await;
        assert_eq!(answer.status, 200, "{path}: {answer:?}");
        assert_eq!(turn_entry(&answer.json()).1, exp);
    }

    // A token living longer than the credential TTL: the credential lives the TTL.
    let long = token_until("room-a", "client-1", Role::Client, unix_now() + 3 * 3600);
    let before = unix_now();
    let answer = get(
        &s,
        "/ice-servers?room=room-a",
        &[("Authorization", &format!("Bearer {long}"))],
    )
    .await;
    let after = unix_now();
    let (_, expiry, user) = turn_entry(&answer.json());
    assert_eq!(user, "client-1");
    assert!((before + 3600..=after + 3600).contains(&expiry), "{answer:?}");
    assert!(answer.json()["ttl"].as_u64().unwrap() <= 3600);
    assert_eq!(counter(&s, ISSUED), 4);
}

/// Every refusal of the socket's handshake, on `/ice-servers` with the same token in the same
/// transport: the same status, body and challenge, counted alike.
#[tokio::test]
async fn a_token_is_refused_exactly_as_the_socket_refuses_it() {
    let s = turn_server(&[]).await;
    let claims = |room: &str, exp: u64| RoomClaims {
        room: room.into(),
        sub: "coach-1".into(),
        role: Role::Coach,
        exp,
        session: None,
        iat: unix_now(),
        aud: orb_api::auth::ROOM_TOKEN_AUDIENCE.into(),
        orb: None,
    };
    let expired = key().mint(&claims("room-a", unix_now() - 3600));
    let foreign = key().mint(&claims("room-b", unix_now() + 600));
    let forged = SigningKey::new(vec![0x42u8; 32])
        .unwrap()
        .mint(&claims("room-a", unix_now() + 600));
    let good = token("room-a", "coach-1", Role::Coach);
    let bearer_good = format!("Bearer {good}");
    let cases = [
        ("missing", None, vec![], 401),
        ("expired", Some(expired.as_str()), vec![], 401),
        ("wrong_room", Some(foreign.as_str()), vec![], 403),
        ("bad_signature", Some(forged.as_str()), vec![], 401),
        ("malformed", Some("garbage"), vec![], 401),
        (
            "bad_request",
            Some(expired.as_str()),
            vec![("Authorization", bearer_good.as_str())],
            400,
        ),
    ];
    for (reason, query_token, headers, status) in &cases {
        let query = query_token.map(|t| format!("token={t}")).unwrap_or_default();
        let socket = refused_with(&format!("{}?{query}", s.url("room-a")), headers).await;
        let http = get(&s, &format!("/ice-servers?room=room-a&{query}"), headers).await;
        assert_eq!((socket.status, http.status), (*status, *status), "{reason}: {http:?}");
        assert_eq!(http.json(), socket.body, "{reason}");
        assert_eq!(
            http.header("www-authenticate"),
            socket.headers.get("www-authenticate").map(|v| v.to_str().unwrap()),
            "{reason}"
        );
        assert_eq!(http.header("cache-control"), Some("no-store"), "{reason}");
        let series = format!("orb_signaling_auth_failures_total{{reason=\"{reason}\"}}");
        assert_eq!(counter(&s, &series), 2, "{reason}: the socket's and this one");
    }
    assert_eq!(counter(&s, ISSUED), 0);
    // The room is part of the question, as in the socket's path.
    assert_eq!(get(&s, "/ice-servers", &[]).await.status, 400);
    assert_eq!(get(&s, "/ice-servers?room=-bad", &[]).await.status, 400);
}

/// A browser's preflight of a GET with `Authorization` from `origin`.
async fn preflight(s: &TestServer, origin: &str) -> HttpAnswer {
    http_request(
        s.addr,
        "OPTIONS",
        "/ice-servers?room=room-a",
        &[
            ("Origin", origin),
            ("Access-Control-Request-Method", "GET"),
            ("Access-Control-Request-Headers", "authorization"),
        ],
    )
    .await
}

/// A page's GET from `origin`, with the `Authorization` value `auth`.
async fn get_from(s: &TestServer, origin: &str, auth: Option<&str>) -> HttpAnswer {
    let mut headers = vec![("Origin", origin)];
    headers.extend(auth.map(|a| ("Authorization", a)));
    get(s, "/ice-servers?room=room-a", &headers).await
}

#[tokio::test]
async fn cors_headers_go_to_the_configured_origins_only() {
    let s = turn_server(&[
        "--cors-allowed-origins",
        "https://app.example.com,http://localhost:3000",
    ])
    .await;
    let allowed = preflight(&s, "https://app.example.com").await;
    assert_eq!(allowed.status, 204, "{allowed:?}");
    assert_eq!(
        allowed.header("access-control-allow-origin"),
        Some("https://app.example.com")
    );
    assert_eq!(allowed.header("access-control-allow-methods"), Some("GET"));
    assert_eq!(allowed.header("access-control-allow-headers"), Some("Authorization"));
    assert_eq!(allowed.header("vary"), Some("Origin"));
    let other = preflight(&s, "https://evil.example.com").await;
    assert!(
        !other.headers.iter().any(|(n, _)| n.starts_with("access-control-")),
        "{other:?}"
    );

    let bearer = format!("Bearer {}", token("room-a", "coach-1", Role::Coach));
    let answer = get_from(&s, "http://localhost:3000", Some(&bearer)).await;
    assert_eq!(answer.status, 200);
    assert_eq!(
        answer.header("access-control-allow-origin"),
        Some("http://localhost:3000")
    );
    assert_eq!(answer.header("vary"), Some("Origin"));
    // A refusal is readable too, so the page can say why.
    let refused = get_from(&s, "https://app.example.com", None).await;
    assert_eq!(refused.status, 401);
    assert_eq!(
        refused.header("access-control-allow-origin"),
        Some("https://app.example.com")
    );
    let other = get_from(&s, "https://evil.example.com", Some(&bearer)).await;
    assert_eq!(other.header("access-control-allow-origin"), None, "{other:?}");
    assert_eq!(other.header("vary"), Some("Origin"));
    for answer in [&allowed, &answer, &refused] {
        assert_eq!(answer.header("access-control-allow-credentials"), None);
    }

    // No origins configured: no CORS headers at all.
    let plain = turn_server(&[]).await;
    let answer = http_request(
        plain.addr,
        "OPTIONS",
        "/ice-servers?room=room-a",
        &[
            ("Origin", "https://app.example.com"),
            ("Access-Control-Request-Method", "GET"),
        ],
    )
    .await;
    assert!(
        !answer
            .headers
            .iter()
            .any(|(n, _)| n.starts_with("access-control-") || n == "vary"),
        "{answer:?}"
    );
}

/// Nothing configured (dev mode on one machine: host candidates suffice): an empty list over
/// HTTP, and no message on the socket.
#[tokio::test]
async fn without_ice_servers_the_list_is_empty_and_the_socket_says_nothing() {
    let s = start(&[]).await;
    let answer = get(&s, "/ice-servers?room=r", &[]).await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.json(), json!({"iceServers": [], "ttl": 0}));
    let (mut c, _) = s.join("r", "coach-1", "coach").await;
    c.expect_nothing_pending().await;
    assert_eq!(counter(&s, ISSUED), 0);
}

/// `--auth none` knows nobody: `/ice-servers` mints for the user `anonymous`, valid for the
/// credential TTL; the socket mints for the user id the join claims.
#[tokio::test]
async fn with_auth_off_credentials_are_anonymous_over_http() {
    let secret = secret_file(SECRET_FILE_CONTENT);
    let s = start(&[
        "--ice-servers",
        TURN_UDP,
        "--turn-secret-file",
        secret.to_str().unwrap(),
    ])
    .await;
    let before = unix_now();
    let list = get(&s, "/ice-servers?room=r", &[]).await.json();
    let after = unix_now();
    let turn = &list["iceServers"][0];
    let username = turn["username"].as_str().unwrap();
    let (expiry, user) = username.split_once(':').unwrap();
    assert_eq!(user, "anonymous");
    let expiry: u64 = expiry.parse().unwrap();
    assert!((before + 12 * 3600..=after + 12 * 3600).contains(&expiry), "{list}");
    assert_eq!(turn["credential"], turn_rest_credential(SECRET, username));
    assert_eq!(counter(&s, ISSUED), 1);
}

/// On the socket, the credential of a token's user expires with the token too, and counts.
#[tokio::test]
async fn the_socket_message_expires_with_the_token_and_is_counted() {
    let s = turn_server(&[]).await;
    let exp = unix_now() + 300;
    let t = token_until("room-a", "coach-1", Role::Coach, exp);
    let (mut c, _) = handshake(&s.url("room-a"), &[("Sec-WebSocket-Protocol", &token_protocols(&t))])
        .await
        .expect("a valid token");
    c.send(json!({"type": "join"})).await;
    let message = c.recv().await;
    assert_eq!(message["type"], "ice-servers");
    assert_eq!(message["iceServers"][0], json!({"urls": [STUN]}));
    let (urls, expiry, user) = turn_entry(&message);
    assert_eq!(
        (urls, expiry, user.as_str()),
        (json!([TURN_UDP, TURNS]), exp, "coach-1")
    );
    assert!(message["ttl"].as_u64().unwrap() <= 300);
    assert_eq!(c.recv().await["type"], "peer-discovery");
    assert_eq!(counter(&s, ISSUED), 1);
}
