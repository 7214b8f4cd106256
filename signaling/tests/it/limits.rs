//! Limits: frame size, message rate, room size, idle sockets.

use std::time::Duration;

use orb_signaling::limits::RATE_STRIKES;
use serde_json::json;

use crate::common::*;

#[tokio::test]
async fn oversized_frames_get_an_error_and_the_socket_stays_usable() {
    let s = start(&["--max-frame-bytes", "1024"]).await;
    let (mut a, _) = s.join("r", "a", "coach").await;
    let (mut b, _) = s.join("r", "b", "client").await;
    a.recv().await;
    let big = json!({"type": "offer", "toId": "b", "offer": {"sdp": "x".repeat(2000)}});
    a.send(big).await;
    let e = a.recv().await;
    assert_eq!(e["code"], "frame_too_large");
    b.expect_nothing_pending().await;
    a.expect_nothing_pending().await;
}

#[tokio::test]
async fn floods_are_rate_limited() {
    let s = start(&["--max-messages-per-second", "1"]).await;
    let mut c = s.connect("r").await;
    // A burst of 2 passes; 10 back-to-back messages cannot all pass unless sending them took
    // 8 seconds. Fewer refusals than RATE_STRIKES: the socket stays open.
    for _ in 0..10 {
        c.send(json!({"type": "ping"})).await;
    }
    let mut limited = 0;
    for _ in 0..10 {
        let m = c.recv().await;
        if m["code"] == "rate_limited" {
            limited += 1;
        } else {
            assert_eq!(m, json!({"type": "pong"}));
        }
    }
    assert!(limited >= 1);
}

/// A socket that goes on flooding after its refusals is closed with 1008 once it collected
/// RATE_STRIKES of them (one forgiven per second), having been told why first; the closes are
/// counted.
#[tokio::test]
async fn a_socket_that_keeps_flooding_is_closed_with_1008() {
    let s = start(&["--max-messages-per-second", "1"]).await;
    let (mut neighbour, _) = s.join("r", "n", "coach").await;
    let (mut c, _) = s.join("r", "f", "client").await;
    neighbour.recv_type("user-joined").await;
    // One ping at a time, each answered (pong or refusal) before the next, until the close: the
    // server has read everything when it closes.
    let mut limited = 0;
    let (code, reason) = loop {
        c.send(json!({"type": "ping"})).await;
        match c.recv_or_close().await {
            Ok(m) if m["code"] == "rate_limited" => limited += 1,
            Ok(m) => assert_eq!(m, json!({"type": "pong"})),
            Err(close) => break close,
        }
    };
    assert_eq!(code, 1008, "{reason}");
    assert!(limited >= RATE_STRIKES as usize, "closed after {limited} refusals");
    assert_eq!(neighbour.recv_type("user-left").await["userId"], "f");
    let flood = "orb_signaling_disconnects_total{reason=\"flood\"} 1";
    eventually("the close counted", || s.metrics.render().contains(flood)).await;
}

/// Binary frames, pings and oversized frames count against the same limit as messages: a flood
/// of any kind is refused, and a neighbour in the room is not disturbed.
#[tokio::test]
async fn floods_of_any_frame_kind_are_rate_limited() {
    use tokio_tungstenite::tungstenite::Message;
    let s = start(&["--max-messages-per-second", "1", "--max-frame-bytes", "1024"]).await;
    let (mut neighbour, _) = s.join("r", "n", "coach").await;
    type Frame = fn() -> Message;
    let floods: [(&str, Frame); 3] = [
        ("binary", || Message::binary(vec![0u8; 60_000])),
        ("ping", || Message::Ping(vec![1u8; 16].into())),
        ("oversized", || Message::text("x".repeat(2000))),
    ];
    for (kind, frame) in floods {
        let mut c = s.connect("r").await;
        for _ in 0..10 {
            c.send_raw(frame()).await;
        }
        // Other refusals (binary, too large) may come first; a rate refusal must come (recv fails
        // the test on a timeout).
        loop {
            let m = c.recv().await;
            if m["code"] == "rate_limited" {
                break;
            }
            assert!(m["code"].is_string(), "{kind}: {m}");
        }
    }
    neighbour.expect_nothing_pending().await;
}

#[tokio::test]
async fn silent_sockets_are_closed_after_the_idle_timeout() {
    let s = start(&["--idle-socket-timeout", "1s"]).await;
    let (mut quiet, _) = s.join("r", "quiet", "coach").await;
    // Not reading means not answering the server's pings either. The server takes the socket out
    // of the room when it closes it; only then does the client read (and see the close frame).
    let state = s.server.as_ref().unwrap().state().clone();
    eventually("the idle socket to leave the room", || {
        state.registry.room("r").is_none()
    })
    .await;
    let (code, reason, _) = quiet.closed().await;
    assert_eq!(code, 4408, "{reason}");

    // A socket that never joins is closed too, even while it answers pings.
    let mut lurker = s.connect("r").await;
    let (code, reason, _) = lurker.closed().await;
    assert_eq!((code, reason.as_str()), (4408, "no join in time"));
}

#[tokio::test]
async fn live_sockets_survive_the_idle_timeout_by_answering_pings() {
    let s = start(&["--idle-socket-timeout", "2s"]).await;
    let (mut a, _) = s.join("r", "a", "coach").await;
    // Reading (and so answering the pings sent every 2/3 s) for two timeouts keeps it open.
    let _ = tokio::time::timeout(Duration::from_secs(4), a.recv()).await;
    a.expect_nothing_pending().await;
}
