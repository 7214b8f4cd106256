//! The real `orb-signaling` binary over loopback: what it logs never contains a room token,
//! whichever transport carried it and whether it was accepted or refused, and a flood of sockets
//! from one address is refused before the upgrade while another address connects.

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
    let b = Binary::start(&["--auth", "jwt"]);
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
    for c in open {
        c.close().await;
    }
    let log = b.stop();
    assert!(log.contains("room token refused"), "the refusals are logged:\n{log}");
    assert!(log.contains("room token transport refused"), "{log}");
    for token in [&by_protocol, &by_header, &by_query, &expired, &elsewhere] {
        let signature = token.rsplit('.').next().unwrap();
        assert!(!log.contains(signature), "a token reached the log:\n{log}");
    }
    assert!(!log.contains(garbage), "a token reached the log:\n{log}");
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
