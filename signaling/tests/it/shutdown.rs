//! Probes, metrics and the drain on shutdown.

use crate::common::*;

#[tokio::test]
async fn probes_and_metrics() {
    let s = start(&[]).await;
    assert_eq!(s.http_get("/healthz").await.0, 200);
    assert_eq!(s.http_get("/readyz").await.0, 200);
    let (mut a, _) = s.join("r", "a", "coach").await;
    let (mut b, _) = s.join("r", "b", "ai").await;
    a.recv().await;
    a.send(serde_json::json!({"type": "offer", "toId": "b", "offer": {}}))
        .await;
    b.recv().await;
    b.expect_nothing_pending().await;
    let (status, body) = s.http_get("/metrics").await;
    assert_eq!(status, 200);
    for needle in [
        "orb_signaling_connections 2",
        "orb_signaling_rooms 1",
        "orb_signaling_participants{participant_type=\"human\"} 1",
        "orb_signaling_participants{participant_type=\"ai\"} 1",
        "orb_signaling_messages_relayed_total{type=\"offer\"} 1",
        "orb_signaling_relay_latency_seconds_count 1",
    ] {
        assert!(body.contains(needle), "{needle} in\n{body}");
    }
}

#[tokio::test]
async fn shutdown_closes_clients_with_1001_and_refuses_new_ones() {
    let mut s = start(&["--drain-timeout", "30s"]).await;
    let (mut a, _) = s.join("r", "a", "coach").await;
    let (mut b, _) = s.join("r", "b", "client").await;
    let server = s.server.take().unwrap();
    server.shutdown_token().cancel();
    for c in [&mut a, &mut b] {
        let (code, reason, _) = c.closed().await;
        assert_eq!(code, 1001, "{reason}");
    }
    server.wait().await;
    assert!(
        tokio::net::TcpStream::connect(s.addr).await.is_err(),
        "no longer listening"
    );
}

#[tokio::test]
async fn readyz_fails_while_draining() {
    let mut s = start(&["--drain-timeout", "30s"]).await;
    // A client that never reads keeps the drain going while the probe is checked.
    let (slow, _) = s.join("r", "a", "coach").await;
    let server = s.server.take().unwrap();
    let state = server.state().clone();
    server.shutdown_token().cancel();
    eventually("draining", || state.is_draining()).await;
    let (status, body) = http_get(s.addr, "/readyz").await;
    assert_eq!((status, body.as_str()), (503, "draining"));
    let (status, _) = http_get(s.addr, "/ws-simple/r").await;
    assert_eq!(status, 503);
    slow.close().await;
    server.wait().await;
}
