//! The session loop with a fake WebRTC stack: which connections exist when, and what goes back
//! to signaling. Real media is covered by the end-to-end tests.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use clap::Parser;
use futures::{SinkExt, StreamExt};
use orb::brain::test::TestBrain;
use orb::config::{Cli, Config, Secrets};
use orb::health::Health;
use orb::media::{AudioSink, MediaError, MediaStack, Peer, PeerEvent, PeerKey, PeerState};
use orb::metrics::Metrics;
use orb::session::{self, SessionOptions};
use orb::testkit::relay::TestRelay;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

const WAIT: Duration = Duration::from_secs(30);

#[derive(Default)]
struct Log {
    created: Vec<PeerKey>,
    closed: Vec<PeerKey>,
    candidates: Vec<(PeerKey, Value)>,
    /// The SDP of every offer the stack was given.
    offers: Vec<String>,
    /// Every ICE server list signaling handed to the stack.
    ice_servers: Vec<Vec<orb::media::IceServer>>,
}

#[derive(Clone, Default)]
struct FakeStack(Arc<Mutex<Log>>);

struct FakePeer {
    key: PeerKey,
    log: Arc<Mutex<Log>>,
    events: mpsc::Sender<PeerEvent>,
    sink: AudioSink,
}

#[async_trait]
impl MediaStack for FakeStack {
    async fn create_peer(&self, key: PeerKey, events: mpsc::Sender<PeerEvent>) -> Result<Box<dyn Peer>, MediaError> {
        self.0.lock().unwrap().created.push(key.clone());
        let (sink, _) = mpsc::channel(1);
        Ok(Box::new(FakePeer {
            key,
            log: self.0.clone(),
            events,
            sink,
        }))
    }

    fn set_signaled_ice_servers(&self, servers: Vec<orb::media::IceServer>) {
        self.0.lock().unwrap().ice_servers.push(servers);
    }
}

#[async_trait]
impl Peer for FakePeer {
    async fn answer(&self, offer: &Value) -> Result<Value, MediaError> {
        let sdp = offer["sdp"].as_str().unwrap_or_default();
        self.log.lock().unwrap().offers.push(sdp.to_owned());
        if !sdp.starts_with("v=0") {
            return Err(MediaError::InvalidOffer("not SDP".into()));
        }
        // A real stack gathers a candidate and connects; the fake says so at once.
        let candidate = json!({"candidate": format!("candidate:{} 1 udp 1 127.0.0.1 9 typ host", self.key.generation), "sdpMid": "0", "sdpMLineIndex": 0});
        let _ = self
            .events
            .send(PeerEvent::LocalCandidate {
                key: self.key.clone(),
                candidate,
            })
            .await;
        let _ = self
            .events
            .send(PeerEvent::State {
                key: self.key.clone(),
                state: PeerState::Connected,
            })
            .await;
        // A human who says something as soon as the call connects: real speech, frame by frame
        // (the idle timeout counts voice, which a tone is not).
        if sdp.contains("voice") {
            let speech = orb::testkit::speech::espeak("Hello there.", "en-us").expect("espeak-ng speaks");
            for pcm in speech.chunks(orb::audio::FRAME_SAMPLES) {
                let at = tokio::time::Instant::now();
                let _ = self
                    .events
                    .send(PeerEvent::Audio {
                        key: self.key.clone(),
                        pcm: pcm.to_vec(),
                        at,
                    })
                    .await;
            }
        }
        Ok(json!({"type": "answer", "sdp": format!("v=0 answer {}", self.key.generation)}))
    }

    async fn media_path(&self) -> Option<orb::media::MediaPath> {
        Some(orb::media::MediaPath::Host)
    }

    fn ice_connected(&self) -> bool {
        false
    }

    async fn add_remote_candidate(&self, candidate: &Value) -> Result<(), MediaError> {
        if orb::media::is_end_of_candidates(candidate) {
            return Ok(());
        }
        if candidate["candidate"]
            .as_str()
            .is_none_or(|c| !c.starts_with("candidate:"))
        {
            return Err(MediaError::InvalidCandidate("garbage".into()));
        }
        self.log
            .lock()
            .unwrap()
            .candidates
            .push((self.key.clone(), candidate.clone()));
        Ok(())
    }

    fn audio_sink(&self) -> AudioSink {
        self.sink.clone()
    }

    async fn close(&self) {
        self.log.lock().unwrap().closed.push(self.key.clone());
    }
}

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn human(url: &str, user: &str, role: &str) -> Ws {
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("{url}/ws-simple/room-s"))
        .await
        .unwrap();
    let join =
        json!({"type": "join", "roomId": "room-s", "userId": user, "userRole": role, "participantType": "human"});
    ws.send(Message::text(join.to_string())).await.unwrap();
    ws
}

async fn send(ws: &mut Ws, v: Value) {
    ws.send(Message::text(v.to_string())).await.unwrap();
}

/// Next message of `kind` on a human's socket.
async fn next_of(ws: &mut Ws, kind: &str) -> Value {
    tokio::time::timeout(WAIT, async {
        loop {
            let Some(Ok(Message::Text(t))) = ws.next().await else {
                panic!("socket ended")
            };
            let v: Value = serde_json::from_str(&t).unwrap();
            if v["type"] == kind {
                return v;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no {kind}"))
}

async fn eventually(mut check: impl FnMut() -> bool) {
    tokio::time::timeout(WAIT, async {
        while !check() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("condition never held");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offers_are_answered_replaced_and_closed_per_human() {
    let relay = TestRelay::start().await.unwrap();
    let log_path = std::env::temp_dir().join(format!("orb-session-test-{}", std::process::id()));
    let cli = Cli::try_parse_from([
        "orb",
        "--room=room-s",
        "--test-mode",
        &format!("--signaling-url={}", relay.url()),
        &format!("--termination-log={}", log_path.display()),
    ])
    .unwrap();
    let config = Config::from_cli(cli, Secrets::default()).unwrap();
    let stack = FakeStack::default();
    let log = stack.0.clone();
    let health = Health::new();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let orb = tokio::spawn(session::run(
        config,
        Arc::new(stack),
        Box::new(TestBrain::new(Duration::from_millis(10))),
        Metrics::new(),
        health.clone(),
        SessionOptions {
            heartbeat_interval: Duration::from_millis(100),
            ..SessionOptions::default()
        },
        async move {
            let _ = stop_rx.await;
            "SIGTERM"
        },
    ));
    relay.wait_control("orb_ready", 1, WAIT).await.unwrap();
    eventually(|| health.is_ready()).await;
    relay.wait_control("orb_heartbeat", 1, WAIT).await.unwrap();
    let control = relay.control_messages();
    let (_, beat) = control.iter().find(|(k, _)| k == "orb_heartbeat").unwrap();
    assert_eq!(beat["roomId"], "room-s");
    assert!(
        beat["metrics"]["memory"].as_u64().is_some() && beat["metrics"]["cpu"].is_number(),
        "{beat}"
    );

    let mut coach = human(&relay.url(), "coach-1", "coach").await;
    let mut client = human(&relay.url(), "client-1", "client").await;
    let ai = "ai-orb-room-s";
    // The orb is already in the room: each human offers, the orb answers each on its own peer.
    send(
        &mut coach,
        json!({"type": "offer", "toId": ai, "offer": {"type": "offer", "sdp": "v=0 coach"}}),
    )
    .await;
    let answer = next_of(&mut coach, "answer").await;
    assert_eq!(answer["fromId"], ai);
    assert_eq!(answer["answer"]["sdp"], "v=0 answer 1");
    // Trickle: the orb's candidate reaches the coach after the answer, and the coach's reaches the peer.
    let cand = next_of(&mut coach, "ice-candidate").await;
    assert!(
        cand["candidate"]["candidate"]
            .as_str()
            .unwrap()
            .starts_with("candidate:1 ")
    );
    send(&mut coach, json!({"type": "ice-candidate", "toId": ai, "candidate": {"candidate": "candidate:x 1 udp 1 10.0.0.1 5 typ host", "sdpMid": "0", "sdpMLineIndex": 0}})).await;
    send(
        &mut coach,
        json!({"type": "ice-candidate", "toId": ai, "candidate": null}),
    )
    .await;
    send(
        &mut client,
        json!({"type": "offer", "toId": ai, "offer": {"type": "offer", "sdp": "v=0 client"}}),
    )
    .await;
    assert_eq!(next_of(&mut client, "answer").await["answer"]["sdp"], "v=0 answer 2");
    eventually(|| log.lock().unwrap().candidates.len() == 1).await;

    // The same human offers again (a reload): the old connection is replaced.
    send(
        &mut coach,
        json!({"type": "offer", "toId": ai, "offer": {"type": "offer", "sdp": "v=0 coach again"}}),
    )
    .await;
    assert_eq!(next_of(&mut coach, "answer").await["answer"]["sdp"], "v=0 answer 3");
    {
        let log = log.lock().unwrap();
        assert_eq!(log.closed.len(), 1);
        assert_eq!((&*log.closed[0].user, log.closed[0].generation), ("coach-1", 1));
    }

    // Garbage from the client costs the client only.
    send(
        &mut client,
        json!({"type": "ice-candidate", "toId": ai, "candidate": {"candidate": "nonsense"}}),
    )
    .await;
    relay.wait_control("orb_error", 1, WAIT).await.unwrap();
    let errors = relay.control_messages();
    let (_, err) = errors.iter().find(|(k, _)| k == "orb_error").unwrap();
    assert_eq!(
        (err["toId"].as_str(), err["code"].as_str()),
        (Some("client-1"), Some("invalid_candidate"))
    );

    // user-left closes that human's peer only.
    send(&mut client, json!({"type": "leave"})).await;
    eventually(|| log.lock().unwrap().closed.iter().any(|k| &*k.user == "client-1")).await;
    assert!(
        !log.lock()
            .unwrap()
            .closed
            .iter()
            .any(|k| &*k.user == "coach-1" && k.generation == 3)
    );

    stop_tx.send(()).unwrap();
    let ending = tokio::time::timeout(WAIT, orb).await.unwrap().unwrap();
    assert_eq!(ending.reason(), orb_api::TerminationReason::SessionComplete);
    let summary = next_of(&mut coach, "session_summary").await;
    assert_eq!(summary["summary"]["reason"], "SessionComplete");
    assert!(
        std::fs::read_to_string(&log_path)
            .unwrap()
            .starts_with("SessionComplete ")
    );
    let _ = std::fs::remove_file(&log_path);
    let log = log.lock().unwrap();
    assert_eq!(log.created.len(), 3);
    assert!(
        log.closed.iter().any(|k| &*k.user == "coach-1" && k.generation == 3),
        "closed on shutdown"
    );
}

/// The idle timeout counts from voice, not from signaling: the orb reports the voice it heard to
/// signaling (`orb_activity`), and a room whose only traffic after that is ICE candidates ends
/// with `IdleTimeout` (if signaling traffic counted, this test would never end).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn voice_is_reported_as_activity_and_signaling_traffic_is_not() {
    let relay = TestRelay::start().await.unwrap();
    let log_path = std::env::temp_dir().join(format!("orb-activity-test-{}", std::process::id()));
    let cli = Cli::try_parse_from([
        "orb",
        "--room=room-s",
        "--test-mode",
        "--idle-timeout=2s",
        &format!("--signaling-url={}", relay.url()),
        &format!("--termination-log={}", log_path.display()),
    ])
    .unwrap();
    let config = Config::from_cli(cli, Secrets::default()).unwrap();
    let orb = tokio::spawn(session::run(
        config,
        Arc::new(FakeStack::default()),
        Box::new(TestBrain::new(Duration::from_millis(10))),
        Metrics::new(),
        Health::new(),
        SessionOptions::default(),
        std::future::pending(),
    ));
    relay.wait_control("orb_ready", 1, WAIT).await.unwrap();
    let mut coach = human(&relay.url(), "coach-1", "coach").await;
    let ai = "ai-orb-room-s";
    let before = std::time::SystemTime::now();
    send(
        &mut coach,
        json!({"type": "offer", "toId": ai, "offer": {"type": "offer", "sdp": "v=0 voice"}}),
    )
    .await;
    next_of(&mut coach, "answer").await;
    relay.wait_control("orb_activity", 1, WAIT).await.unwrap();
    let control = relay.control_messages();
    let (_, activity) = control.iter().find(|(k, _)| k == "orb_activity").unwrap();
    let at = std::time::UNIX_EPOCH + Duration::from_millis(activity["lastVoiceActivity"].as_u64().unwrap());
    assert!(
        at + Duration::from_secs(1) >= before && at <= std::time::SystemTime::now(),
        "{activity}"
    );

    // Only signaling from now on: candidates keep coming, nobody speaks.
    let ending = loop {
        if orb.is_finished() {
            break orb.await.unwrap();
        }
        send(&mut coach, json!({"type": "ice-candidate", "toId": ai, "candidate": {"candidate": "candidate:x 1 udp 1 10.0.0.1 5 typ host", "sdpMid": "0", "sdpMLineIndex": 0}})).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(ending.reason(), orb_api::TerminationReason::IdleTimeout);
    let _ = std::fs::remove_file(&log_path);
}

/// Hostile candidates — the cloud metadata address, a cluster service address (with the cluster's
/// ranges configured), loopback, an IPv4-mapped link-local address, an mDNS name, garbage — never
/// reach the media stack, trickled or inside the offer; a public candidate does. Each refusal is
/// counted by reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_candidates_never_reach_the_media_stack() {
    let relay = TestRelay::start().await.unwrap();
    let log_path = std::env::temp_dir().join(format!("orb-hostile-test-{}", std::process::id()));
    let cli = Cli::try_parse_from([
        "orb",
        "--room=room-s",
        "--test-mode",
        &format!("--signaling-url={}", relay.url()),
        &format!("--termination-log={}", log_path.display()),
        &format!(
            "--denied-candidate-cidrs={},10.96.0.0/12",
            orb_api::cidr::DEFAULT_DENIED_CANDIDATE_CIDRS
        ),
    ])
    .unwrap();
    let config = Config::from_cli(cli, Secrets::default()).unwrap();
    let stack = FakeStack::default();
    let log = stack.0.clone();
    let metrics = Metrics::new();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let orb = tokio::spawn(session::run(
        config,
        Arc::new(stack),
        Box::new(TestBrain::new(Duration::from_millis(10))),
        metrics.clone(),
        Health::new(),
        SessionOptions::default(),
        async move {
            let _ = stop_rx.await;
            "SIGTERM"
        },
    ));
    relay.wait_control("orb_ready", 1, WAIT).await.unwrap();
    let mut coach = human(&relay.url(), "coach-1", "coach").await;
    let ai = "ai-orb-room-s";
    let line = |addr: &str| format!("candidate:1 1 udp 2122260223 {addr} 5000 typ host");
    // A non-trickle offer with its candidates inline: only the public one is left in it.
    let sdp = format!(
        "v=0 hostile\r\na={}\r\na={}\r\na={}\r\n",
        line("169.254.169.254"),
        line("203.0.113.10"),
        line("10.96.0.1")
    );
    send(
        &mut coach,
        json!({"type": "offer", "toId": ai, "offer": {"type": "offer", "sdp": sdp}}),
    )
    .await;
    next_of(&mut coach, "answer").await;
    for addr in [
        "169.254.169.254",
        "10.96.0.1",
        "127.0.0.1",
        "::1",
        "::ffff:169.254.169.254",
        "0a3e2c1d-6f7b-4c5d-8e9f-0a1b2c3d4e5f.local",
        "203.0.113.7",
    ] {
        send(&mut coach, json!({"type": "ice-candidate", "toId": ai, "candidate": {"candidate": line(addr), "sdpMid": "0", "sdpMLineIndex": 0}})).await;
    }
    send(
        &mut coach,
        json!({"type": "ice-candidate", "toId": ai, "candidate": {"candidate": "candidate:garbage"}}),
    )
    .await;
    // Signaling relays in order, so once the malformed one is refused every candidate was judged.
    relay.wait_control("orb_error", 1, WAIT).await.unwrap();
    {
        let log = log.lock().unwrap();
        let reached: Vec<&str> = log
            .candidates
            .iter()
            .map(|(_, c)| c["candidate"].as_str().unwrap())
            .collect();
        assert_eq!(
            reached,
            [line("203.0.113.7")],
            "only the public candidate reaches the stack"
        );
        let offered = &log.offers[0];
        assert!(offered.contains(&line("203.0.113.10")), "{offered}");
        assert!(
            !offered.contains("169.254.169.254") && !offered.contains("10.96.0.1"),
            "{offered}"
        );
    }
    let text = metrics.encode();
    for expected in [
        "orb_ice_candidates_dropped_total{reason=\"denied_address\"} 7",
        "orb_ice_candidates_dropped_total{reason=\"hostname\"} 1",
        "orb_ice_candidates_dropped_total{reason=\"malformed\"} 1",
    ] {
        assert!(text.contains(expected), "{expected} missing from\n{text}");
    }
    stop_tx.send(()).unwrap();
    tokio::time::timeout(WAIT, orb).await.unwrap().unwrap();
    let _ = std::fs::remove_file(&log_path);
}

/// A summary signaling refuses (`summary_refused`: too large, one too many, no AiOrb) will never
/// be stored, so the orb gives it up at once and goes on with its shutdown: with an ack timeout
/// of an hour the session still ends within the test's wait. Counted as refused, not as
/// unacknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_summary_ends_the_wait_for_its_ack_at_once() {
    let relay = TestRelay::start().await.unwrap();
    relay.refuse_summaries(true);
    let log_path = std::env::temp_dir().join(format!("orb-refused-summary-test-{}", std::process::id()));
    let cli = Cli::try_parse_from([
        "orb",
        "--room=room-s",
        "--test-mode",
        &format!("--signaling-url={}", relay.url()),
        &format!("--termination-log={}", log_path.display()),
    ])
    .unwrap();
    let config = Config::from_cli(cli, Secrets::default()).unwrap();
    let metrics = Metrics::new();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let orb = tokio::spawn(session::run(
        config,
        Arc::new(FakeStack::default()),
        Box::new(TestBrain::new(Duration::from_millis(10))),
        metrics.clone(),
        Health::new(),
        SessionOptions {
            summary_ack_timeout: Duration::from_secs(3600),
            ..SessionOptions::default()
        },
        async move {
            let _ = stop_rx.await;
            "SIGTERM"
        },
    ));
    relay.wait_control("orb_ready", 1, WAIT).await.unwrap();
    stop_tx.send(()).unwrap();
    let ending = tokio::time::timeout(WAIT, orb)
        .await
        .expect("the orb stops waiting for an ack once its summary is refused")
        .unwrap();
    assert_eq!(ending.reason(), orb_api::TerminationReason::SessionComplete);
    assert_eq!(
        relay
            .control_messages()
            .iter()
            .filter(|(k, _)| k == "session_summary")
            .count(),
        1,
        "sent once, not re-sent after the refusal"
    );
    let text = metrics.encode();
    for expected in ["orb_summaries_refused_total 1", "orb_summaries_unacknowledged_total 0"] {
        assert!(text.contains(expected), "{expected} missing from\n{text}");
    }
    // The rest of the shutdown ran: the termination message is written.
    assert!(
        std::fs::read_to_string(&log_path)
            .unwrap()
            .starts_with("SessionComplete ")
    );
    let _ = std::fs::remove_file(&log_path);
}
