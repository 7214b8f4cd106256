//! The orb's signaling client: one WebSocket to `/ws-simple/{room}`, joined as the AI
//! participant, reconnected with backoff and jitter whenever it drops. The session (peers,
//! brain, transcript) lives outside this module and survives reconnects; after each re-join the
//! server's `peer-discovery` tells the orb who is still there.

use std::collections::VecDeque;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use futures::{SinkExt, StreamExt};
use orb_protocol::{ClientMessage, ParticipantType, ServerMessage, UserRole, close_code};
use thiserror::Error;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::{self, Message, client::IntoClientRequest, http::HeaderValue};
use tracing::{debug, info, warn};

/// Messages queued while disconnected; older ones are dropped first.
const MAX_QUEUED: usize = 256;
/// Largest frame accepted from signaling.
const MAX_FRAME: usize = 1 << 20;

#[derive(Clone)]
pub struct SignalingConfig {
    pub endpoint: String,
    pub token: Option<String>,
    pub room: String,
    pub user_id: String,
    pub ping_interval: Duration,
    /// No frame at all from the server for this long means the socket is dead.
    pub read_timeout: Duration,
    pub backoff: Backoff,
}

impl std::fmt::Debug for SignalingConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SignalingConfig")
            .field("endpoint", &self.endpoint)
            .field("token", &self.token.as_ref().map(|_| ".."))
            .field("user_id", &self.user_id)
            .finish_non_exhaustive()
    }
}

impl SignalingConfig {
    pub fn new(endpoint: String, token: Option<String>, room: String, user_id: String) -> Self {
        Self {
            endpoint,
            token,
            room,
            user_id,
            ping_interval: Duration::from_secs(20),
            read_timeout: Duration::from_secs(65),
            backoff: Backoff::default(),
        }
    }
}

#[derive(Debug, Error)]
pub enum SignalingError {
    #[error("signaling refused the orb's token: {0}")]
    Unauthorized(String),
    #[error("a newer connection joined the room as this orb")]
    Replaced,
    #[error("invalid signaling endpoint: {0}")]
    Endpoint(String),
}

/// What the client reports to the orb.
#[derive(Debug)]
pub enum SignalingEvent {
    /// The socket is open and `join` was sent.
    Connected,
    Message(ServerMessage),
    /// The socket dropped; the client is reconnecting.
    Disconnected(String),
    /// Reconnecting cannot help.
    Fatal(SignalingError),
}

/// Reconnect delays: exponential with jitter (backon), so a restarted server is not hit by every
/// orb at the same instant. Each delay is the capped exponential plus up to as much again.
#[derive(Debug)]
pub struct Backoff {
    builder: ExponentialBuilder,
    delays: ExponentialBackoff,
}

/// A copy starts its own sequence from the initial delay.
impl Clone for Backoff {
    fn clone(&self) -> Self {
        Self {
            builder: self.builder,
            delays: self.builder.build(),
        }
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new(Duration::from_millis(100), Duration::from_secs(5))
    }
}

impl Backoff {
    /// Delays from `initial` doubling up to `max` (each plus a jitter below itself), without end.
    pub fn new(initial: Duration, max: Duration) -> Self {
        let builder = ExponentialBuilder::default()
            .with_min_delay(initial)
            .with_max_delay(max)
            .with_jitter()
            .without_max_times();
        Self {
            delays: builder.build(),
            builder,
        }
    }

    pub fn next_delay(&mut self) -> Duration {
        // `without_max_times` never ends; the fallback only keeps this total.
        self.delays.next().unwrap_or(Duration::from_secs(1))
    }

    /// After a success: the next failure starts from the initial delay again.
    pub fn reset(&mut self) {
        self.delays = self.builder.build();
    }
}

enum Outgoing {
    Send(ClientMessage, Option<oneshot::Sender<()>>),
    Leave(oneshot::Sender<()>),
}

/// Sends to signaling; cheap to clone.
#[derive(Clone)]
pub struct SignalingHandle {
    tx: mpsc::UnboundedSender<Outgoing>,
}

impl SignalingHandle {
    /// Queues a message; it is sent now or after the next reconnect.
    pub fn send(&self, msg: ClientMessage) {
        let _ = self.tx.send(Outgoing::Send(msg, None));
    }

    /// Sends a message and waits until it is written to the socket (or `timeout` passes).
    pub async fn send_flushed(&self, msg: ClientMessage, timeout: Duration) -> bool {
        let (ack, done) = oneshot::channel();
        if self.tx.send(Outgoing::Send(msg, Some(ack))).is_err() {
            return false;
        }
        matches!(tokio::time::timeout(timeout, done).await, Ok(Ok(())))
    }

    /// Sends `leave`, closes the socket and stops reconnecting.
    pub async fn leave(&self, timeout: Duration) {
        let (ack, done) = oneshot::channel();
        if self.tx.send(Outgoing::Leave(ack)).is_ok() {
            let _ = tokio::time::timeout(timeout, done).await;
        }
    }
}

/// Starts the client task.
pub fn spawn(
    config: SignalingConfig,
    events: mpsc::UnboundedSender<SignalingEvent>,
) -> (SignalingHandle, tokio::task::JoinHandle<()>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let task = tokio::spawn(run(config, rx, events));
    (SignalingHandle { tx }, task)
}

fn join_message(config: &SignalingConfig) -> ClientMessage {
    ClientMessage::Join {
        room_id: Some(config.room.clone()),
        user_id: Some(config.user_id.clone()),
        user_role: Some(UserRole::Ai),
        user_name: Some("AI Orb".to_owned()),
        participant_type: Some(ParticipantType::Ai),
    }
}

fn request(config: &SignalingConfig) -> Result<tungstenite::handshake::client::Request, SignalingError> {
    let mut req = config
        .endpoint
        .as_str()
        .into_client_request()
        .map_err(|e| SignalingError::Endpoint(e.to_string()))?;
    // The token rides in the subprotocol list (`orb-signaling, bearer.<token>`): signaling answers
    // with `orb-signaling` only, and the token stays out of URLs and access logs.
    if let Some(token) = &config.token {
        let value = HeaderValue::from_str(&format!("{SUBPROTOCOL}, {TOKEN_SUBPROTOCOL_PREFIX}{token}"))
            .map_err(|_| SignalingError::Endpoint("the token is not a valid header value".into()))?;
        req.headers_mut().insert("sec-websocket-protocol", value);
    }
    Ok(req)
}

/// Signaling's WebSocket subprotocol, and the prefix of the entry carrying the token.
const SUBPROTOCOL: &str = "orb-signaling";
const TOKEN_SUBPROTOCOL_PREFIX: &str = "bearer.";

/// An HTTP answer to the upgrade after which reconnecting cannot help: the token is refused
/// (401: no valid token; 403: a valid token that does not open this room). Others (429 and 503
/// from signaling's connection caps, a proxy's 502) are retried.
fn fatal_status(status: tungstenite::http::StatusCode) -> Option<SignalingError> {
    use tungstenite::http::StatusCode;
    matches!(status, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN)
        .then(|| SignalingError::Unauthorized(format!("HTTP {}", status.as_u16())))
}

async fn run(
    mut config: SignalingConfig,
    mut outgoing: mpsc::UnboundedReceiver<Outgoing>,
    events: mpsc::UnboundedSender<SignalingEvent>,
) {
    let mut queue: VecDeque<(ClientMessage, Option<oneshot::Sender<()>>)> = VecDeque::new();
    let ws_config = tungstenite::protocol::WebSocketConfig::default()
        .max_message_size(Some(MAX_FRAME))
        .max_frame_size(Some(MAX_FRAME));
    loop {
        let req = match request(&config) {
            Ok(r) => r,
            Err(e) => {
                let _ = events.send(SignalingEvent::Fatal(e));
                return;
            }
        };
        let connect = tokio_tungstenite::connect_async_with_config(req, Some(ws_config), true);
        let ws = tokio::select! {
            r = connect => r,
            // A leave while we are not connected ends the client at once.
            Some(Outgoing::Leave(ack)) = next_leave(&mut outgoing, &mut queue) => {
                let _ = ack.send(());
                return;
            }
        };
        let mut ws = match ws {
            Ok((ws, _)) => ws,
            Err(tungstenite::Error::Http(resp)) if fatal_status(resp.status()).is_some() => {
                if let Some(fatal) = fatal_status(resp.status()) {
                    let _ = events.send(SignalingEvent::Fatal(fatal));
                }
                return;
            }
            Err(e) => {
                let delay = config.backoff.next_delay();
                debug!(error = %e, ?delay, "signaling connect failed");
                let _ = events.send(SignalingEvent::Disconnected(e.to_string()));
                if sleep_or_leave(delay, &mut outgoing, &mut queue).await {
                    return;
                }
                continue;
            }
        };
        let join = serde_json::to_string(&join_message(&config)).expect("join serialises");
        if let Err(e) = ws.send(Message::text(join)).await {
            let _ = events.send(SignalingEvent::Disconnected(e.to_string()));
            if sleep_or_leave(config.backoff.next_delay(), &mut outgoing, &mut queue).await {
                return;
            }
            continue;
        }
        info!(endpoint = %config.endpoint, "joined signaling");
        let _ = events.send(SignalingEvent::Connected);
        let mut failed = None;
        while let Some((msg, ack)) = queue.pop_front() {
            if let Err(e) = ws.send(Message::text(to_json(&msg))).await {
                queue.push_front((msg, ack));
                failed = Some(e.to_string());
                break;
            }
            if let Some(ack) = ack {
                let _ = ack.send(());
            }
        }
        let mut ping = tokio::time::interval_at(Instant::now() + config.ping_interval, config.ping_interval);
        let mut last_read = Instant::now();
        let reason = if let Some(reason) = failed {
            reason
        } else {
            loop {
                tokio::select! {
                    frame = ws.next() => match frame {
                        Some(Ok(Message::Text(text))) => {
                            last_read = Instant::now();
                            // A successful exchange means the server is healthy again.
                            config.backoff.reset();
                            match serde_json::from_str::<ServerMessage>(&text) {
                                Ok(m) => { let _ = events.send(SignalingEvent::Message(m)); }
                                Err(e) => warn!(error = %e, "unreadable signaling message"),
                            }
                        }
                        Some(Ok(Message::Close(frame))) => {
                            let code = frame.as_ref().map(|f| u16::from(f.code));
                            let reason = frame.map(|f| f.reason.to_string()).unwrap_or_default();
                            if let Some(fatal) = fatal_close(code, &reason) {
                                let _ = events.send(SignalingEvent::Fatal(fatal));
                                return;
                            }
                            break format!("closed by the server ({} {reason})", code.unwrap_or(0));
                        }
                        None => break "closed by the server".to_owned(),
                        Some(Ok(_)) => last_read = Instant::now(),
                        Some(Err(e)) => break e.to_string(),
                    },
                    out = outgoing.recv() => match out {
                        Some(Outgoing::Send(msg, ack)) => {
                            if let Err(e) = ws.send(Message::text(to_json(&msg))).await {
                                push_bounded(&mut queue, msg, ack);
                                break e.to_string();
                            }
                            if let Some(ack) = ack { let _ = ack.send(()); }
                        }
                        Some(Outgoing::Leave(ack)) => {
                            let _ = ws.send(Message::text(to_json(&ClientMessage::Leave))).await;
                            let _ = ws.close(None).await;
                            let _ = ack.send(());
                            return;
                        }
                        None => { let _ = ws.close(None).await; return; }
                    },
                    _ = ping.tick() => {
                        if last_read.elapsed() > config.read_timeout {
                            break "no message from signaling within the read timeout".to_owned();
                        }
                        if let Err(e) = ws.send(Message::text(to_json(&ClientMessage::Ping))).await {
                            break e.to_string();
                        }
                    }
                }
            }
        };
        warn!(%reason, "signaling connection lost; reconnecting");
        let _ = events.send(SignalingEvent::Disconnected(reason));
        if sleep_or_leave(config.backoff.next_delay(), &mut outgoing, &mut queue).await {
            return;
        }
    }
}

/// Close codes after which reconnecting cannot help: the token is refused, or a newer
/// connection took over this orb's identity (a replacement orb; fighting it would flap both).
fn fatal_close(code: Option<u16>, reason: &str) -> Option<SignalingError> {
    match code? {
        close_code::UNAUTHORIZED => Some(SignalingError::Unauthorized(reason.to_owned())),
        close_code::REPLACED => Some(SignalingError::Replaced),
        _ => None,
    }
}

fn to_json(msg: &ClientMessage) -> String {
    serde_json::to_string(msg).expect("client messages serialise")
}

fn push_bounded(
    queue: &mut VecDeque<(ClientMessage, Option<oneshot::Sender<()>>)>,
    msg: ClientMessage,
    ack: Option<oneshot::Sender<()>>,
) {
    if queue.len() >= MAX_QUEUED {
        queue.pop_front();
    }
    queue.push_back((msg, ack));
}

/// Waits for the next `leave`, queueing every other message meanwhile.
async fn next_leave(
    outgoing: &mut mpsc::UnboundedReceiver<Outgoing>,
    queue: &mut VecDeque<(ClientMessage, Option<oneshot::Sender<()>>)>,
) -> Option<Outgoing> {
    loop {
        match outgoing.recv().await? {
            Outgoing::Send(msg, ack) => push_bounded(queue, msg, ack),
            leave @ Outgoing::Leave(_) => return Some(leave),
        }
    }
}

/// Sleeps before a reconnect; true when the orb asked to leave meanwhile.
async fn sleep_or_leave(
    delay: Duration,
    outgoing: &mut mpsc::UnboundedReceiver<Outgoing>,
    queue: &mut VecDeque<(ClientMessage, Option<oneshot::Sender<()>>)>,
) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(delay) => false,
        leave = next_leave(outgoing, queue) => {
            if let Some(Outgoing::Leave(ack)) = leave { let _ = ack.send(()); }
            true
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_caps_jitters_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        let first = b.next_delay();
        assert!(
            first >= Duration::from_millis(100) && first < Duration::from_millis(200),
            "{first:?}"
        );
        let later: Vec<Duration> = (0..40).map(|_| b.next_delay()).collect();
        assert!(later.iter().all(|d| *d < Duration::from_secs(10)), "capped: {later:?}");
        assert!(later[30] >= Duration::from_secs(5), "grows to the cap: {later:?}");
        b.reset();
        assert!(
            b.next_delay() < Duration::from_millis(200),
            "starts over after a success"
        );
    }

    #[test]
    fn refused_tokens_and_replacement_are_final_other_closes_are_retried() {
        assert!(matches!(
            fatal_close(Some(close_code::UNAUTHORIZED), "bad"),
            Some(SignalingError::Unauthorized(_))
        ));
        assert!(matches!(
            fatal_close(Some(close_code::REPLACED), ""),
            Some(SignalingError::Replaced)
        ));
        for code in [
            close_code::GOING_AWAY,
            close_code::SLOW_CONSUMER,
            close_code::IDLE_TIMEOUT,
            close_code::ROOM_FULL,
        ] {
            assert!(fatal_close(Some(code), "").is_none());
        }
        assert!(fatal_close(None, "").is_none());
    }

    #[test]
    fn join_is_the_ai_participant() {
        let c = SignalingConfig::new(
            "ws://x/ws-simple/r".into(),
            Some("t".into()),
            "r".into(),
            "ai-orb-r".into(),
        );
        let v = serde_json::to_value(join_message(&c)).unwrap();
        assert_eq!(v["type"], "join");
        assert_eq!(v["userRole"], "ai");
        assert_eq!(v["participantType"], "ai");
        assert_eq!(v["roomId"], "r");
        let req = request(&c).unwrap();
        assert_eq!(req.headers()["sec-websocket-protocol"], "orb-signaling, bearer.t");
        assert!(req.headers().get("authorization").is_none());
        assert_eq!(req.uri().query(), None, "no token in the URL");
        let anonymous = SignalingConfig::new("ws://x/ws-simple/r".into(), None, "r".into(), "ai-orb-r".into());
        assert!(
            request(&anonymous)
                .unwrap()
                .headers()
                .get("sec-websocket-protocol")
                .is_none()
        );
    }

    #[test]
    fn a_refused_handshake_is_final_a_busy_server_is_retried() {
        use tungstenite::http::StatusCode;
        for status in [StatusCode::UNAUTHORIZED, StatusCode::FORBIDDEN] {
            assert!(matches!(fatal_status(status), Some(SignalingError::Unauthorized(_))));
        }
        for status in [
            StatusCode::BAD_REQUEST,
            StatusCode::TOO_MANY_REQUESTS,
            StatusCode::SERVICE_UNAVAILABLE,
            StatusCode::BAD_GATEWAY,
        ] {
            assert!(fatal_status(status).is_none(), "{status}");
        }
    }
}
