//! Connection caps, refused before the upgrade: floods from one client address (429), the global
//! cap and the room cap (503), each without disturbing the rooms already live, and every slot
//! given back however a connection ends (a close, a dropped TCP connection, a failed upgrade).

use std::net::SocketAddr;

use orb_api::auth::Role;
use orb_signaling::admission::AdmissionCounts;
use serde_json::json;
use tokio::io::AsyncWriteExt;

use crate::common::*;

/// Connects and joins without auth (user `user`), with extra request headers.
async fn join_with(s: &TestServer, room: &str, user: &str, headers: &[(&str, &str)]) -> Client {
    let (mut c, _) = handshake(&s.url(room), headers).await.expect("upgraded");
    c.send(json!({"type": "join", "userId": user, "userRole": "client", "participantType": "human"}))
        .await;
    assert_eq!(c.recv_type("peer-discovery").await["type"], "peer-discovery");
    c
}

fn counts(s: &TestServer) -> AdmissionCounts {
    s.server.as_ref().unwrap().state().admission.counts()
}

async fn counts_become(s: &TestServer, expected: AdmissionCounts) {
    eventually(&format!("admission counts {expected:?}"), || counts(s) == expected).await;
}

fn refused_total(s: &TestServer, reason: &str) -> u64 {
    let text = s.metrics.render();
    let needle = format!("orb_signaling_connections_refused_total{{reason=\"{reason}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(needle.as_str()))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {needle} in\n{text}"))
}

/// A flood of sockets from one client address (authenticated: a leaked or shared token) gets 429
/// past the per-client cap, while another address, in the flooded room or another, connects, and a
/// call already live keeps relaying. The address is the right-most entry of the trusted header:
/// entries the client wrote to its left change nothing.
#[tokio::test]
async fn a_connection_flood_from_one_address_is_refused_and_other_rooms_go_on() {
    let s = start(&[
        "--auth",
        "jwt",
        "--max-connections-per-client",
        "3",
        "--trusted-proxy-header",
        "X-Forwarded-For",
    ])
    .await;
    let with_token = |room: &str, user: &str, from: &str| {
        vec![
            (
                "sec-websocket-protocol".to_owned(),
                token_protocols(&token(room, user, Role::Coach)),
            ),
            ("x-forwarded-for".to_owned(), from.to_owned()),
        ]
    };
    let connect = |headers: Vec<(String, String)>, room: &'static str| {
        let url = s.url(room);
        async move {
            let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            handshake(&url, &h).await
        }
    };
    // A call in progress: coach and client from their own addresses.
    let (mut coach, _) = connect(with_token("calm", "coach", "192.0.2.10"), "calm")
        .await
        .expect("coach");
    coach.send(json!({"type": "join"})).await;
    coach.recv_type("peer-discovery").await;
    let (mut client, _) = connect(with_token("calm", "client", "192.0.2.11"), "calm")
        .await
        .expect("client");
    client.send(json!({"type": "join"})).await;
    client.recv_type("peer-discovery").await;
    coach.recv_type("user-joined").await;

    // The flood: 3 sockets pass, the rest are refused before the upgrade.
    let mut flood = vec![];
    for i in 0..3 {
        let (c, _) = connect(with_token("flood", &format!("f{i}"), "198.51.100.66"), "flood")
            .await
            .expect("within the cap");
        flood.push(c);
    }
    for i in 3..10 {
        // Spoofed entries to the left of the proxy's are not the client.
        let from = format!("203.0.113.{i}, 198.51.100.66");
        let r = match connect(with_token("flood", &format!("f{i}"), &from), "flood").await {
            Ok(_) => panic!("socket {i} of the flood was upgraded"),
            Err(r) => r,
        };
        assert_eq!(r.status, 429, "{r:?}");
        assert_eq!(r.body["error"], "max_connections_per_client", "{r:?}");
        assert!(r.headers.contains_key("retry-after"), "{r:?}");
    }
    assert_eq!(refused_total(&s, "max_connections_per_client"), 7);

    // Another address still reaches the flooded room, and the live call relays as before.
    let (mut other, _) = connect(with_token("flood", "o", "198.51.100.67"), "flood")
        .await
        .expect("another address");
    other.send(json!({"type": "join"})).await;
    other.recv_type("peer-discovery").await;
    coach
        .send(json!({"type": "offer", "toId": "client", "offer": {"sdp": "v=0"}}))
        .await;
    assert_eq!(client.recv_type("offer").await["fromId"], "coach");
    client.expect_nothing_pending().await;
    assert_eq!(
        counts(&s),
        AdmissionCounts {
            connections: 6,
            clients: 4,
            rooms: 2
        }
    );

    // Closing the flood's sockets gives the address its slots back.
    for c in flood {
        c.close().await;
    }
    counts_become(
        &s,
        AdmissionCounts {
            connections: 3,
            clients: 3,
            rooms: 2,
        },
    )
    .await;
    connect(with_token("flood", "again", "198.51.100.66"), "flood")
        .await
        .expect("the address may connect again");
}

/// The global cap refuses with 503 once it is reached; the sockets already open are unaffected,
/// and a close makes room again.
#[tokio::test]
async fn the_global_cap_refuses_with_503_and_a_close_frees_a_slot() {
    let s = start(&["--max-connections", "3"]).await;
    let mut a = join_with(&s, "r1", "a", &[]).await;
    let b = join_with(&s, "r1", "b", &[]).await;
    let _c = join_with(&s, "r2", "c", &[]).await;
    a.recv_type("user-joined").await;
    for room in ["r1", "r3"] {
        let r = refused_with(&s.url(room), &[]).await;
        assert_eq!(
            (r.status, r.body["error"].as_str()),
            (503, Some("max_connections")),
            "{r:?}"
        );
        assert!(r.headers.contains_key("retry-after"), "{r:?}");
    }
    assert_eq!(refused_total(&s, "max_connections"), 2);
    a.expect_nothing_pending().await;
    b.close().await;
    counts_become(
        &s,
        AdmissionCounts {
            connections: 2,
            clients: 1,
            rooms: 2,
        },
    )
    .await;
    let _d = join_with(&s, "r3", "d", &[]).await;
}

/// With the room cap reached a new room is refused (503), while the live rooms still take joins;
/// a room whose last socket closed frees its place.
#[tokio::test]
async fn the_room_cap_refuses_new_rooms_and_keeps_live_ones_joinable() {
    let s = start(&["--max-rooms", "2"]).await;
    let mut a1 = join_with(&s, "room-a", "a1", &[]).await;
    let b1 = join_with(&s, "room-b", "b1", &[]).await;
    let r = refused_with(&s.url("room-c"), &[]).await;
    assert_eq!((r.status, r.body["error"].as_str()), (503, Some("max_rooms")), "{r:?}");
    assert!(r.headers.contains_key("retry-after"), "{r:?}");
    let _a2 = join_with(&s, "room-a", "a2", &[]).await;
    a1.recv_type("user-joined").await;
    assert_eq!(refused_total(&s, "max_rooms"), 1);
    b1.close().await;
    counts_become(
        &s,
        AdmissionCounts {
            connections: 2,
            clients: 1,
            rooms: 1,
        },
    )
    .await;
    let _c1 = join_with(&s, "room-c", "c1", &[]).await;
}

/// Sends an upgrade request, waits for the server's first answer bytes (it has admitted the
/// connection by then) and drops the TCP connection without a WebSocket frame.
async fn abandoned_upgrade(addr: SocketAddr, room: &str) {
    use tokio::io::AsyncReadExt;
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "GET /ws-simple/{room} HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    );
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut first = [0u8; 12];
    tokio::time::timeout(WAIT, tcp.read_exact(&mut first))
        .await
        .expect("no answer in time")
        .unwrap();
    assert_eq!(&first, b"HTTP/1.1 101");
    drop(tcp);
}

/// Sockets dropped without a close handshake, and upgrades abandoned as soon as they were
/// answered, give back every slot: after a storm of both the counts are zero and the full cap is available again.
#[tokio::test]
async fn abrupt_drops_and_abandoned_upgrades_leak_no_slot() {
    let s = start(&[
        "--max-connections",
        "4",
        "--max-connections-per-client",
        "4",
        "--max-rooms",
        "2",
    ])
    .await;
    for round in 0..3 {
        let mut open = vec![];
        for i in 0..4 {
            open.push(join_with(&s, &format!("drop-{}", i % 2), &format!("u{round}-{i}"), &[]).await);
        }
        assert_eq!(refused_with(&s.url("drop-0"), &[]).await.status, 503);
        for c in open {
            c.abort();
        }
        counts_become(&s, AdmissionCounts::default()).await;
        for i in 0..4 {
            abandoned_upgrade(s.addr, &format!("drop-{}", i % 2)).await;
        }
        counts_become(&s, AdmissionCounts::default()).await;
        eventually("no open connection", || s.metrics.connections.get() == 0).await;
    }
}
