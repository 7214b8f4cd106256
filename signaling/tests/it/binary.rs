//! The real `orb-signaling` binary over loopback: what it logs never contains a room token,
//! whichever transport carried it and whether it was accepted or refused; a flood of sockets
//! from one address, or with one token from many, is refused before the upgrade while others
//! connect; a client that sends its request header slowly (or not at all) is cut off; and a
//! socket flooding fat frames is closed (1008) instead of being read to its end.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};

use orb_api::auth::{Role, RoomClaims, unix_now};
use serde_json::{Value, json};

use crate::common::*;

/// The binary, its address and everything it wrote to stderr (its log) so far.
struct Binary {
    child: Child,
    addr: SocketAddr,
    log: Arc<Mutex<String>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Binary {
    /// Starts the binary with JSON logs at the most verbose level for every crate (the HTTP and
    /// WebSocket libraries included) and waits for its `listening` line.
    fn start(args: &[&str]) -> Binary {
        Binary::start_with_env(args, &[])
    }

    /// [`Binary::start`] with extra environment variables (settings have an env variable each;
    /// an older binary ignores one it does not know, so a test of a new setting fails on its
    /// behaviour rather than on an unknown flag).
    fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> Binary {
        let mut child = Command::new(env!("CARGO_BIN_EXE_orb-signaling"))
            .args([
                "--listen",
                "127.0.0.1:0",
                "--orb-runtime",
                "none",
                "--log-format",
                "json",
            ])
            .args(args)
            .env("ORB_SIGNING_KEY", String::from_utf8(KEY.to_vec()).unwrap())
            .env("RUST_LOG", "trace")
            .env_remove("ORB_SIGNING_KEY_FILE")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("orb-signaling starts");
        let log = Arc::new(Mutex::new(String::new()));
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        let sink = log.clone();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { return };
                if let Ok(v) = serde_json::from_str::<Value>(&line)
                    && v["fields"]["message"] == "listening"
                    && let Some(addr) = v["fields"]["addr"].as_str()
                {
                    let _ = addr_tx.send(addr.parse::<SocketAddr>().unwrap());
                }
                let mut log = sink.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        });
        let addr = addr_rx.recv_timeout(WAIT).unwrap_or_else(|_| {
            let _ = child.kill();
            panic!("orb-signaling did not start: {}", log.lock().unwrap())
        });
        Binary {
            child,
            addr,
            log,
            reader: Some(reader),
        }
    }

    fn url(&self, room: &str) -> String {
        format!("ws://{}/ws-simple/{room}", self.addr)
    }

    /// Stops it with SIGTERM (its drain writes the last lines) and returns its whole log.
    fn stop(mut self) -> String {
        // SAFETY: signalling a child process this test started and still owns.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
        self.log.lock().unwrap().clone()
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Every transport (subprotocol, bearer header, query), accepted and refused tokens, a
/// conflict, the auth check: the token strings, and their signatures alone, appear nowhere in the
/// binary's log at trace level, while the log does record the refusals.
#[tokio::test]
async fn no_token_ever_reaches_the_log() {
    let turn_secret = "turn-secret-never-logged";
    let secret_path = secret_file(turn_secret);
    let b = Binary::start(&[
        "--auth",
        "jwt",
        "--ice-servers",
        "turn:turn.example.org",
        "--turn-secret-file",
        secret_path.to_str().unwrap(),
    ]);
    let mint = |room: &str, sub: &str, exp: u64| {
        key().mint(&RoomClaims {
            room: room.into(),
            sub: sub.into(),
            role: Role::Coach,
            exp,
            session: None,
            iat: unix_now(),
            aud: orb_api::auth::ROOM_TOKEN_AUDIENCE.into(),
            orb: None,
        })
    };
    let by_protocol = mint("room-l", "p", unix_now() + 600);
    let by_header = mint("room-l", "h", unix_now() + 600);
    let by_query = mint("room-l", "q", unix_now() + 600);
    let expired = mint("room-l", "e", unix_now() - 3600);
    let elsewhere = mint("room-x", "w", unix_now() + 600);
    let garbage = "not-a.jwt-at.all-but-secret-looking";

    let mut open = vec![];
    let (c, _) = handshake(
        &b.url("room-l"),
        &[("sec-websocket-protocol", &token_protocols(&by_protocol))],
    )
    .await
    .expect("subprotocol token");
    open.push(c);
    let (c, _) = handshake(&b.url("room-l"), &[("authorization", &format!("Bearer {by_header}"))])
        .await
        .expect("bearer token");
    open.push(c);
    let (c, _) = handshake(&format!("{}?token={by_query}", b.url("room-l")), &[])
        .await
        .expect("query token");
    open.push(c);
    for c in &mut open {
        c.send(json!({"type": "join"})).await;
        c.recv_type("peer-discovery").await;
    }
    for (url, headers, status) in [
        (format!("{}?token={expired}", b.url("room-l")), vec![], 401),
        (
            b.url("room-l"),
            vec![("sec-websocket-protocol", token_protocols(&elsewhere))],
            403,
        ),
        (
            b.url("room-l"),
            vec![("authorization", format!("Bearer {garbage}"))],
            401,
        ),
        (
            format!("{}?token={by_query}", b.url("room-l")),
            vec![("sec-websocket-protocol", token_protocols(&by_protocol))],
            400,
        ),
    ] {
        let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        assert_eq!(refused_with(&url, &headers).await.status, status, "{url}");
    }
    let check = format!("GET /auth/check?room=room-l&token={expired} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    assert_eq!(raw_http(b.addr, &check).await.0, 401);
    // A TURN credential over HTTP is not logged, nor is the secret. (Those in the sockets'
    // `ice-servers` messages are, like every frame, in the WebSocket library's trace of frames.)
    let by_ice_request = mint("room-l", "i", unix_now() + 600);
    let bearer = format!("Bearer {by_ice_request}");
    let ice = http_request(b.addr, "GET", "/ice-servers?room=room-l", &[("Authorization", &bearer)]).await;
    let credential = ice.json()["iceServers"][0]["credential"]
        .as_str()
        .expect("a TURN credential")
        .to_owned();
    let refused = http_request(b.addr, "GET", &format!("/ice-servers?room=room-l&token={expired}"), &[]).await;
    assert_eq!(refused.status, 401);
    for c in open {
        c.close().await;
    }
    let log = b.stop();
    assert!(log.contains("room token refused"), "the refusals are logged:\n{log}");
    assert!(log.contains("room token transport refused"), "{log}");
    for token in [
        &by_protocol,
        &by_header,
        &by_query,
        &expired,
        &elsewhere,
        &by_ice_request,
    ] {
        let signature = token.rsplit('.').next().unwrap();
        assert!(!log.contains(signature), "a token reached the log:\n{log}");
    }
    assert!(!log.contains(garbage), "a token reached the log:\n{log}");
    assert!(!log.contains(turn_secret), "the TURN secret reached the log:\n{log}");
    assert!(!log.contains(&credential), "a TURN credential reached the log:\n{log}");
}

/// Bad ICE settings stop the binary at start-up with the usage exit code and a message naming the
/// flag and what is wrong, before it listens.
#[test]
fn bad_ice_settings_stop_the_binary_with_a_clear_error() {
    let empty = secret_file(" \n");
    let empty = empty.to_str().unwrap();
    for (args, expected) in [
        (
            vec!["--ice-servers", "turn:turn.example.org"],
            "lists TURN URLs (turn:turn.example.org) but no --turn-secret-file",
        ),
        (
            vec!["--ice-servers", "stun:s.example.org,https://turn.example.org"],
            "--ice-servers: \"https://turn.example.org\": the scheme must be stun:, turn: or turns:",
        ),
        (
            vec!["--ice-servers", "turns:turn.example.org", "--turn-secret-file", empty],
            "is empty",
        ),
        (
            vec!["--turn-secret-file", "/nonexistent/turn-secret"],
            "cannot read --turn-secret-file /nonexistent/turn-secret",
        ),
        (
            vec!["--cors-allowed-origins", "*"],
            "--cors-allowed-origins: \"*\" is not an origin",
        ),
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_orb-signaling"))
            .args(["--listen", "127.0.0.1:0", "--orb-runtime", "none", "--auth", "jwt"])
            .args(&args)
            .env("ORB_SIGNING_KEY", String::from_utf8(KEY.to_vec()).unwrap())
            .env_remove("ORB_SIGNING_KEY_FILE")
            .output()
            .expect("orb-signaling runs");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(
            stderr.contains("invalid configuration") && stderr.contains(expected),
            "{args:?}: {stderr}"
        );
    }
}

/// The binary's per-client cap: sockets past it are refused with 429 before the upgrade, while a
/// client behind the trusted proxy with another address connects, and the room relays.
#[tokio::test]
async fn the_binary_refuses_a_flood_from_one_address() {
    let b = Binary::start(&[
        "--auth",
        "none",
        "--max-connections-per-client",
        "2",
        "--trusted-proxy-header",
        "X-Forwarded-For",
    ]);
    let join = |user: &'static str, from: &'static str| {
        let url = b.url("room-f");
        async move {
            let (mut c, _) = handshake(&url, &[("x-forwarded-for", from)]).await.expect("upgraded");
            c.send(json!({"type": "join", "userId": user, "userRole": "coach"}))
                .await;
            c.recv_type("peer-discovery").await;
            c
        }
    };
    let mut first = join("a", "198.51.100.1").await;
    let _second = join("b", "198.51.100.1").await;
    first.recv_type("user-joined").await;
    for _ in 0..5 {
        let r = refused_with(&b.url("room-f"), &[("x-forwarded-for", "198.51.100.1")]).await;
        assert_eq!(r.status, 429, "{r:?}");
        assert_eq!(r.body["error"], "max_connections_per_client");
    }
    let mut other = join("c", "198.51.100.2").await;
    first.recv_type("user-joined").await;
    other.send(json!({"type": "offer", "toId": "a", "offer": {}})).await;
    assert_eq!(first.recv_type("offer").await["fromId"], "c");
    let (status, metrics) = http_get(b.addr, "/metrics").await;
    assert_eq!(status, 200);
    assert!(
        metrics.contains("orb_signaling_connections_refused_total{reason=\"max_connections_per_client\"} 5"),
        "{metrics}"
    );
}

/// Reads `metric`'s value (a full series name with labels) from the binary's `/metrics`.
async fn metric(addr: SocketAddr, series: &str) -> Option<u64> {
    let (status, text) = http_get(addr, "/metrics").await;
    assert_eq!(status, 200);
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
}

/// One token from many addresses (a leaked or shared one) holds at most
/// `--max-connections-per-token` sockets of its room: past it, 429 with the reason before the
/// upgrade, counted as a refusal; another user of the room, and the same address with another
/// user's token, still connect.
#[tokio::test]
async fn one_token_from_many_addresses_holds_few_sockets() {
    let b = Binary::start_with_env(
        &["--auth", "jwt", "--trusted-proxy-header", "X-Forwarded-For"],
        &[("SIGNALING_MAX_CONNECTIONS_PER_TOKEN", "2")],
    );
    let shared = token("room-t", "coach-1", Role::Coach);
    let offer = |token: &str, from: &str| {
        vec![
            ("sec-websocket-protocol".to_owned(), token_protocols(token)),
            ("x-forwarded-for".to_owned(), from.to_owned()),
        ]
    };
    let connect = |headers: Vec<(String, String)>| {
        let url = b.url("room-t");
        async move {
            let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            handshake(&url, &h).await
        }
    };
    let mut held = vec![];
    for i in 1..=2 {
        let (c, _) = connect(offer(&shared, &format!("198.51.100.{i}")))
            .await
            .expect("within the token's cap");
        held.push(c);
    }
    for i in 3..=6 {
        let r = match connect(offer(&shared, &format!("198.51.100.{i}"))).await {
            Ok(_) => panic!("socket {i} of one token was upgraded"),
            Err(r) => r,
        };
        assert_eq!(r.status, 429, "{r:?}");
        assert_eq!(r.body["error"], "max_connections_per_token", "{r:?}");
        assert!(r.body["reason"].as_str().is_some_and(|t| t.contains("token")), "{r:?}");
        assert!(r.headers.contains_key("retry-after"), "{r:?}");
    }
    let other = token("room-t", "client-1", Role::Client);
    connect(offer(&other, "198.51.100.3"))
        .await
        .expect("another user of the room");
    assert_eq!(
        metric(
            b.addr,
            "orb_signaling_connections_refused_total{reason=\"max_connections_per_token\"}"
        )
        .await,
        Some(4)
    );
    // A closed socket gives its slot back (its bookkeeping ends a moment after the close reply).
    held.pop().unwrap().close().await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while let Err(r) = connect(offer(&shared, "198.51.100.7")).await {
        assert_eq!(r.status, 429, "{r:?}");
        assert!(
            tokio::time::Instant::now() < deadline,
            "the token's slot was never given back"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

/// A client that sends its request header slowly (slowloris), one that connects and sends
/// nothing, and an idle keep-alive connection after a request are all closed after
/// `--header-read-timeout`, while requests go on being answered.
#[tokio::test]
async fn slow_or_silent_clients_are_cut_off_after_the_header_read_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let b = Binary::start_with_env(&["--auth", "none"], &[("SIGNALING_HEADER_READ_TIMEOUT", "1s")]);
    let mut slow = tokio::net::TcpStream::connect(b.addr).await.unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .await
        .unwrap();
    let silent = tokio::net::TcpStream::connect(b.addr).await.unwrap();
    let mut idle = tokio::net::TcpStream::connect(b.addr).await.unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    for (name, mut tcp) in [("slow", slow), ("silent", silent), ("idle", idle)] {
        let mut answer = Vec::new();
        tokio::time::timeout(WAIT, tcp.read_to_end(&mut answer))
            .await
            .unwrap_or_else(|_| panic!("the {name} connection is still open"))
            .unwrap_or_default();
        let answer = String::from_utf8_lossy(&answer);
        assert_eq!(name == "idle", answer.starts_with("HTTP/1.1 200"), "{name}: {answer}");
    }
    assert_eq!(http_get(b.addr, "/healthz").await.0, 200);
}

/// One joined socket floods 60 KB binary frames as fast as it can: the server refuses a few
/// (`rate_limited`), then closes it with 1008 and stops reading, long before the flood is sent;
/// the close is counted, and a neighbour in the room only sees the flooder leave.
#[tokio::test]
async fn a_flood_of_fat_frames_is_ended_with_1008() {
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    const FRAMES: usize = 20_000;
    let b = Binary::start(&["--auth", "none"]);
    let (mut neighbour, _) = handshake(&b.url("room-b"), &[]).await.expect("upgraded");
    neighbour
        .send(json!({"type": "join", "userId": "n", "userRole": "coach"}))
        .await;
    neighbour.recv_type("peer-discovery").await;

    let (ws, _) = tokio_tungstenite::connect_async(b.url("room-b")).await.unwrap();
    let (mut sink, mut stream) = ws.split();
    let join = json!({"type": "join", "userId": "f", "userRole": "client"});
    sink.send(Message::text(join.to_string())).await.unwrap();
    neighbour.recv_type("user-joined").await;
    // Read concurrently, as a browser would: the close frame, if it arrives before the reset.
    let reader = tokio::spawn(async move {
        let mut close = None;
        while let Some(Ok(m)) = stream.next().await {
            if let Message::Close(frame) = m {
                close = frame.map(|f| u16::from(f.code));
            }
        }
        close
    });
    let frame = bytes::Bytes::from(vec![0u8; 60_000]);
    let flood = async {
        let mut sent = 0;
        while sent < FRAMES && sink.send(Message::Binary(frame.clone())).await.is_ok() {
            sent += 1;
        }
        sent
    };
    let sent = tokio::time::timeout(WAIT, flood)
        .await
        .expect("the server is still reading the flood");
    assert!(sent < FRAMES, "the server read all {FRAMES} frames");
    let close = tokio::time::timeout(WAIT, reader)
        .await
        .expect("the socket ended")
        .unwrap();
    assert!(close.is_none_or(|code| code == 1008), "closed with {close:?}");
    assert_eq!(neighbour.recv_type("user-left").await["userId"], "f");
    neighbour.expect_nothing_pending().await;
    assert_eq!(
        metric(b.addr, "orb_signaling_disconnects_total{reason=\"flood\"}").await,
        Some(1)
    );
}
