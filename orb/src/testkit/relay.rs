//! A minimal in-process signaling relay speaking the `/ws-simple/{room}` protocol with the
//! shared protocol types, for tests and benchmarks that run without the signaling server. It
//! records every control message the orb sends (`orb_ready`, `orb_error`, …).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, State};
use axum::response::IntoResponse;
use axum::routing::get;
use futures::{SinkExt, StreamExt};
use orb_protocol::{ClientMessage, ErrorCode, ParticipantType, PeerInfo, ServerMessage, UserRole, should_create_offer};
use serde_json::Value;
use tokio::sync::{Notify, mpsc};
use tokio::time::Instant;

/// Told to a socket's writer: close the connection.
const KICK: &str = "\u{0}kick";

struct Member {
    info: PeerInfo,
    tx: mpsc::UnboundedSender<String>,
}

#[derive(Default)]
struct Inner {
    rooms: HashMap<String, HashMap<String, Member>>,
    control: Vec<(String, Value, Instant)>,
    next_id: u64,
    /// Summaries are received but not acknowledged (a server that dies before storing them).
    withhold_acks: bool,
    /// Summaries are answered with `summary_refused` (a server that will never store them).
    refuse_summaries: bool,
}

#[derive(Clone, Default)]
struct Shared(Arc<Mutex<Inner>>, Arc<Notify>);

impl Inner {
    fn record(&mut self, kind: &str, body: Value) {
        self.control.push((kind.to_owned(), body, Instant::now()));
    }
}

/// A running relay.
pub struct TestRelay {
    pub addr: SocketAddr,
    shared: Shared,
    task: tokio::task::JoinHandle<()>,
}

impl TestRelay {
    pub async fn start() -> std::io::Result<Self> {
        let shared = Shared::default();
        let app = Router::new()
            .route("/ws-simple/{room}", get(upgrade))
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self { addr, shared, task })
    }

    /// `ws://addr`, the base URL the orb takes as `--signaling-url`.
    pub fn url(&self) -> String {
        format!("ws://{}", self.addr)
    }

    /// Closes the socket of `user_id`, as a restarting server would.
    pub fn kick(&self, user_id: &str) {
        let inner = self.shared.0.lock().expect("relay lock");
        for members in inner.rooms.values() {
            if let Some(m) = members.get(user_id) {
                let _ = m.tx.send(KICK.to_owned());
            }
        }
    }

    /// While set, summaries are recorded but not acknowledged.
    pub fn withhold_summary_acks(&self, withhold: bool) {
        self.shared.0.lock().expect("relay lock").withhold_acks = withhold;
    }

    /// While set, summaries are recorded and answered with `error summary_refused`, no ack.
    pub fn refuse_summaries(&self, refuse: bool) {
        self.shared.0.lock().expect("relay lock").refuse_summaries = refuse;
    }

    /// Control messages received so far, as `(type, body)`.
    pub fn control_messages(&self) -> Vec<(String, Value)> {
        let inner = self.shared.0.lock().expect("relay lock");
        inner.control.iter().map(|(k, v, _)| (k.clone(), v.clone())).collect()
    }

    /// Waits until `count` control messages of `kind` arrived; returns when the last of them did.
    pub async fn wait_control(&self, kind: &str, count: usize, timeout: std::time::Duration) -> Option<Instant> {
        let deadline = Instant::now() + timeout;
        loop {
            let notified = self.shared.1.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let inner = self.shared.0.lock().expect("relay lock");
                if let Some((_, _, at)) = inner.control.iter().filter(|(k, _, _)| k == kind).nth(count - 1) {
                    return Some(*at);
                }
            }
            tokio::time::timeout_at(deadline, notified).await.ok()?;
        }
    }
}

impl Drop for TestRelay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn upgrade(ws: WebSocketUpgrade, Path(room): Path<String>, State(shared): State<Shared>) -> impl IntoResponse {
    ws.on_upgrade(move |socket| serve(socket, room, shared))
}

fn send(tx: &mpsc::UnboundedSender<String>, msg: &ServerMessage) {
    let _ = tx.send(serde_json::to_string(msg).expect("server messages serialise"));
}

async fn serve(socket: WebSocket, room: String, shared: Shared) {
    let (mut sink, mut stream) = socket.split();
    let (tx, mut rx) = mpsc::unbounded_channel::<String>();
    let writer = tokio::spawn(async move {
        while let Some(text) = rx.recv().await {
            if text == KICK {
                break;
            }
            if sink.send(Message::Text(text.into())).await.is_err() {
                break;
            }
        }
        let _ = sink.close().await;
    });
    let mut me: Option<PeerInfo> = None;
    while let Some(Ok(frame)) = stream.next().await {
        let Message::Text(text) = frame else { continue };
        let Ok(msg) = serde_json::from_str::<ClientMessage>(&text) else {
            continue;
        };
        let mut inner = shared.0.lock().expect("relay lock");
        match msg {
            ClientMessage::Join {
                user_id,
                user_role,
                participant_type,
                ..
            } => {
                inner.next_id += 1;
                let info = PeerInfo {
                    user_id: user_id.unwrap_or_else(|| format!("user-{}", inner.next_id)),
                    user_role: user_role.unwrap_or(UserRole::Client),
                    participant_type: participant_type.unwrap_or_default(),
                };
                let members = inner.rooms.entry(room.clone()).or_default();
                let peers = members.values().map(|m| m.info.clone()).collect();
                send(&tx, &ServerMessage::PeerDiscovery { peers });
                for m in members.values() {
                    send(
                        &m.tx,
                        &ServerMessage::UserJoined {
                            user_id: info.user_id.clone(),
                            user_role: info.user_role,
                            participant_type: info.participant_type,
                            should_create_offer: should_create_offer(&m.info, &info),
                        },
                    );
                }
                members.insert(
                    info.user_id.clone(),
                    Member {
                        info: info.clone(),
                        tx: tx.clone(),
                    },
                );
                me = Some(info);
            }
            ClientMessage::Offer(mut r) | ClientMessage::Answer(mut r) | ClientMessage::IceCandidate(mut r)
                if me.is_some() =>
            {
                let from = me.as_ref().expect("joined").user_id.clone();
                r.from_id = Some(from.clone());
                let out: ServerMessage = match serde_json::from_str::<ClientMessage>(&text) {
                    Ok(ClientMessage::Offer(_)) => ServerMessage::Offer(r.clone()),
                    Ok(ClientMessage::Answer(_)) => ServerMessage::Answer(r.clone()),
                    _ => ServerMessage::IceCandidate(r.clone()),
                };
                let members = inner.rooms.entry(room.clone()).or_default();
                match r.target() {
                    Some(to) => {
                        if let Some(m) = members.get(to) {
                            send(&m.tx, &out);
                        }
                    }
                    None => members
                        .values()
                        .filter(|m| m.info.user_id != from)
                        .for_each(|m| send(&m.tx, &out)),
                }
            }
            ClientMessage::Leave => break,
            ClientMessage::Ping => send(&tx, &ServerMessage::Pong),
            ClientMessage::AiStatus { status, session_id } => {
                let from_id = me.as_ref().map(|m| m.user_id.clone());
                let out = ServerMessage::AiStatus {
                    status,
                    session_id,
                    from_id: from_id.clone(),
                };
                inner.record("ai_status", serde_json::to_value(&out).expect("json"));
                let members = inner.rooms.entry(room.clone()).or_default();
                members
                    .values()
                    .filter(|m| Some(&m.info.user_id) != from_id.as_ref())
                    .for_each(|m| send(&m.tx, &out));
            }
            ClientMessage::SessionSummary(body) => {
                inner.record("session_summary", body.clone());
                // This relay is the receiving system in tests: it has the summary.
                let id = body.get("summaryId").and_then(Value::as_str).unwrap_or_default();
                if inner.refuse_summaries {
                    send(
                        &tx,
                        &ServerMessage::Error {
                            code: ErrorCode::SummaryRefused,
                            message: format!("session summary {id} not stored: refused by the test relay"),
                        },
                    );
                } else if !id.is_empty() && !inner.withhold_acks {
                    send(
                        &tx,
                        &ServerMessage::SessionSummaryAck {
                            summary_id: id.to_owned(),
                        },
                    );
                }
                let members = inner.rooms.entry(room.clone()).or_default();
                members
                    .values()
                    .filter(|m| {
                        m.info.user_role == UserRole::Coach && m.info.participant_type == ParticipantType::Human
                    })
                    .for_each(|m| send(&m.tx, &ServerMessage::SessionSummary(body.clone())));
            }
            ClientMessage::OrbReady(body) => inner.record("orb_ready", body),
            ClientMessage::OrbHeartbeat(body) => inner.record("orb_heartbeat", body),
            ClientMessage::OrbActivity { last_voice_activity } => {
                inner.record(
                    "orb_activity",
                    serde_json::json!({ "lastVoiceActivity": last_voice_activity }),
                );
            }
            ClientMessage::OrbError(body) => inner.record("orb_error", body),
            _ => {}
        }
        drop(inner);
        shared.1.notify_waiters();
    }
    if let Some(info) = me {
        let mut inner = shared.0.lock().expect("relay lock");
        if let Some(members) = inner.rooms.get_mut(&room) {
            // Only remove the entry if it is still this socket's (a reconnect may have replaced it).
            if members.get(&info.user_id).is_some_and(|m| m.tx.same_channel(&tx)) {
                members.remove(&info.user_id);
                for m in members.values() {
                    send(
                        &m.tx,
                        &ServerMessage::UserLeft {
                            user_id: info.user_id.clone(),
                            user_role: info.user_role,
                        },
                    );
                }
            }
        }
    }
    drop(tx);
    writer.abort();
}
