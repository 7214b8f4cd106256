//! One WebSocket connection: a reader loop (limits, decoding, dispatch) in the connection's task
//! and a writer task that owns the socket's sink, drains the bounded outbound queue, pings quiet
//! clients and writes the close frame. Bad input gets an `error` message on this socket only.

use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use bytes::Bytes;
use futures::stream::{SplitSink, SplitStream};
use futures::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::admission::Admitted;
use crate::limits::{RateLimiter, Verdict};
use crate::protocol::{AiStatus, ClientMessage, ErrorCode, ParticipantType, ServerMessage, UserRole};
use crate::room::{CloseReason, ConnHandle, ConnReceivers, Identity, JoinError, Outbound, Relayed, Room};
use crate::server::AppState;
use crate::summary::{self, PutOutcome, Refusal, StoreError};
use crate::wire::{self, Inbound};

/// Longest user id accepted from a join message (the AiOrb spec allows 256 for coach/client ids).
const MAX_USER_ID_LEN: usize = 256;
/// Frames written per flush when the queue has a backlog.
const WRITE_BATCH: usize = 64;
/// How long a closing connection may take to flush its queue and close frame, and (outside a
/// drain) how long it waits for the client's close reply.
const WRITER_GRACE: Duration = Duration::from_secs(5);

/// Serves one upgraded socket until it closes. The token was checked before the upgrade:
/// `token_identity` is who it says the participant is (`None` with auth off). `admitted` holds
/// the connection's slots under the caps and gives them back when this returns.
pub async fn serve(
    socket: WebSocket,
    state: Arc<AppState>,
    room_id: String,
    token_identity: Option<Identity>,
    admitted: Admitted,
) {
    let id = state.next_conn_id();
    let span = info_span!("conn", room = %room_id, conn = id, user = tracing::field::Empty);
    async move {
        state.metrics.connections.inc();
        let (handle, receivers) = ConnHandle::new(id, state.limits.send_queue);
        let (sink, mut stream) = socket.split();
        let writer = tokio::spawn(
            write_loop(sink, receivers, state.limits.keepalive_interval(), state.clone()).in_current_span(),
        );
        let mut conn = Conn {
            state: &state,
            room_id: &room_id,
            handle: &handle,
            joined: None,
            limiter: RateLimiter::new(
                state.limits.max_messages_per_second,
                state.limits.max_bytes_per_second,
                state.limits.socket_max_bytes(token_identity.as_ref()),
                Instant::now(),
            ),
            token_identity,
            summary_ids: Vec::new(),
        };
        conn.read_loop(&mut stream).await;
        if let Some((room, _)) = conn.joined.take() {
            state.registry.leave(&room, id);
        }
        let reason = handle.close_reason();
        if let Some(reason) = reason {
            // Only a drain is worth waiting the full drain timeout for; otherwise a client that
            // never answers would hold its socket (and its slots) open that long.
            // A flood is not read any further: the flooder would keep the server unmasking its
            // frames until the close reply.
            let wait = match reason {
                CloseReason::Shutdown => Some(state.close_handshake_timeout),
                CloseReason::Flood => None,
                _ => Some(state.close_handshake_timeout.min(WRITER_GRACE)),
            };
            if let Some(wait) = wait {
                await_close_reply(&mut stream, wait).await;
            }
        }
        // Dropping the last sender ends the writer after it flushed what is queued.
        drop(handle);
        let mut writer = writer;
        if tokio::time::timeout(WRITER_GRACE, &mut writer).await.is_err() {
            writer.abort();
        }
        state.metrics.connections.dec();
        state.metrics.disconnect(reason);
        drop(admitted);
        debug!(
            reason = reason.map_or("client closed", CloseReason::text),
            "connection closed"
        );
    }
    .instrument(span)
    .await
}

struct Conn<'a> {
    state: &'a Arc<AppState>,
    room_id: &'a str,
    handle: &'a ConnHandle,
    /// The identity from the token; `None` when auth is off.
    token_identity: Option<Identity>,
    joined: Option<(Arc<Room>, Identity)>,
    limiter: RateLimiter,
    /// The summary ids this socket asked to store: at most [`crate::summary::MAX_PER_ORB`], so a
    /// flood is refused here before a copy waits in memory for the store.
    summary_ids: Vec<String>,
}

impl Conn<'_> {
    async fn read_loop(&mut self, stream: &mut SplitStream<WebSocket>) {
        let idle = self.state.limits.idle_socket_timeout;
        let mut close = self.handle.subscribe_close();
        let closed = wait_closed(&mut close);
        let shutdown = self.state.shutdown.cancelled();
        let mut last_seen = Instant::now();
        let mut unjoined_since = last_seen;
        // Armed once and re-armed only when it fires early: resetting a timer per message would
        // cost a timer-wheel update on the hot path.
        let deadline = tokio::time::sleep_until(unjoined_since + idle);
        tokio::pin!(closed, shutdown, deadline);
        loop {
            tokio::select! {
                biased;
                _ = &mut closed => return,
                _ = &mut shutdown => {
                    self.handle.close(CloseReason::Shutdown);
                    return;
                }
                _ = &mut deadline => {
                    let due = if self.joined.is_some() { last_seen + idle } else { unjoined_since + idle };
                    if due > Instant::now() {
                        deadline.as_mut().reset(due);
                        continue;
                    }
                    let reason = if self.joined.is_some() { CloseReason::IdleTimeout } else { CloseReason::JoinTimeout };
                    self.handle.close(reason);
                    return;
                }
                frame = stream.next() => {
                    let Some(Ok(frame)) = frame else { return };
                    last_seen = Instant::now();
                    // Every frame costs, in frames and in bytes: text, binary, ping, pong,
                    // oversized. A flood of any kind gets refusals, and a socket that keeps
                    // flooding after them is closed (1008) instead of being read to its end.
                    if !matches!(frame, Message::Close(_)) {
                        match self.limiter.check(frame_len(&frame), last_seen) {
                            Verdict::Pass => {}
                            Verdict::Refuse(wait) => {
                                let limits = &self.state.limits;
                                self.reject(
                                    ErrorCode::RateLimited,
                                    format!(
                                        "more than {} messages or {} bytes per second; retry in {} ms",
                                        limits.max_messages_per_second,
                                        limits.max_bytes_per_second,
                                        wait.as_millis().max(1)
                                    ),
                                );
                                continue;
                            }
                            Verdict::Close => {
                                warn!("closing a socket that keeps sending past its rate limits");
                                self.handle.close(CloseReason::Flood);
                                return;
                            }
                        }
                    }
                    match frame {
                        Message::Text(text) => {
                            let was_joined = self.joined.is_some();
                            if self.on_text(text.as_str(), last_seen).await.is_break() {
                                return;
                            }
                            if was_joined && self.joined.is_none() {
                                // Leaving starts a new join deadline.
                                unjoined_since = last_seen;
                                if deadline.deadline() < unjoined_since + idle {
                                    deadline.as_mut().reset(unjoined_since + idle);
                                }
                            }
                        }
                        Message::Binary(_) => {
                            self.reject(ErrorCode::BinaryNotSupported, "binary frames are not supported; send JSON text".into());
                        }
                        Message::Close(_) => return,
                        // Keepalive answers; they count as life above.
                        Message::Ping(_) | Message::Pong(_) => {}
                    }
                }
            }
        }
    }

    fn send(&self, msg: &ServerMessage) {
        self.handle.send_message(msg);
    }

    fn reject(&self, code: ErrorCode, message: String) {
        self.state.metrics.rejected(code);
        debug!(?code, %message, "rejected message");
        self.send(&error(code, message));
    }

    async fn on_text(&mut self, text: &str, received_at: Instant) -> ControlFlow<()> {
        let limits = &self.state.limits;
        let cap = limits.frame_cap(self.joined.as_ref().is_some_and(|(_, me)| me.is_ai()));
        if text.len() > cap {
            self.reject(
                ErrorCode::FrameTooLarge,
                format!("a {} byte frame exceeds the limit of {cap} bytes", text.len()),
            );
            return ControlFlow::Continue(());
        }
        match wire::parse_frame(text) {
            Err(e) => self.reject(e.code(), e.to_string()),
            Ok(Inbound::Relay { kind, target, body }) => {
                let Some((room, me)) = &self.joined else {
                    self.reject(
                        ErrorCode::NotJoined,
                        format!("join the room before sending {}", kind.as_str()),
                    );
                    return ControlFlow::Continue(());
                };
                let out = Outbound {
                    text: wire::relay_frame(body, &me.user_id).into(),
                    received_at: Some(received_at),
                };
                match self.state.registry.relay(room, self.handle.id, target.as_deref(), out) {
                    Relayed::Delivered(_) => self.state.metrics.relayed(kind),
                    Relayed::UnknownPeer => self.reject(
                        ErrorCode::UnknownPeer,
                        format!("no participant {:?} in this room", target.unwrap_or_default()),
                    ),
                    Relayed::NotMember => self.reject(ErrorCode::NotJoined, "no longer in the room".into()),
                }
            }
            Ok(Inbound::Message(msg)) => return self.on_message(msg).await,
        }
        ControlFlow::Continue(())
    }

    async fn on_message(&mut self, msg: ClientMessage) -> ControlFlow<()> {
        match msg {
            ClientMessage::Ping => self.send(&ServerMessage::Pong),
            ClientMessage::Join {
                user_id,
                user_role,
                user_name,
                participant_type,
                ..
            } => {
                if self.joined.is_some() {
                    self.reject(ErrorCode::AlreadyJoined, "this socket already joined the room".into());
                    return ControlFlow::Continue(());
                }
                let identity = match self.token_identity.clone() {
                    Some(mut identity) => {
                        identity.user_name = user_name;
                        identity
                    }
                    None => match claimed_identity(user_id, user_role, user_name, participant_type) {
                        Ok(identity) => identity,
                        Err(message) => {
                            self.reject(ErrorCode::InvalidMessage, message);
                            return ControlFlow::Continue(());
                        }
                    },
                };
                return self.join(identity).await;
            }
            ClientMessage::Leave => match self.joined.take() {
                Some((room, _)) => {
                    self.state.registry.leave(&room, self.handle.id);
                }
                None => self.reject(ErrorCode::NotJoined, "not in the room".into()),
            },
            ClientMessage::AiStatus { status, session_id } => {
                if let Some(room) = self.orb_room("ai_status")
                    && self
                        .state
                        .registry
                        .orb_status(&room, self.handle.id, status, session_id)
                        != Relayed::NotMember
                {
                    self.state.metrics.relayed_other("ai_status");
                }
            }
            ClientMessage::OrbReady(_) => {
                if self.orb_room("orb_ready").is_some() {
                    info!("orb ready");
                    self.state.registry.runtime_status(self.room_id, AiStatus::Ready);
                }
            }
            ClientMessage::OrbHeartbeat(body) => {
                // Liveness of the orb is the operator's business (pod probes); a heartbeat is not
                // activity by itself, but it repeats the orb's last voice activity.
                if let Some(room) = self.orb_room("orb_heartbeat")
                    && let Some(ms) = body.get("lastVoiceActivity").and_then(Value::as_u64)
                {
                    self.orb_activity(&room, ms);
                }
            }
            ClientMessage::OrbActivity { last_voice_activity } => {
                if let Some(room) = self.orb_room("orb_activity") {
                    self.orb_activity(&room, last_voice_activity);
                }
            }
            ClientMessage::OrbError(body) => {
                if let Some(room) = self.orb_room("orb_error") {
                    self.orb_error(&room, body);
                }
            }
            ClientMessage::SessionSummary(body) => {
                if let Some(room) = self.orb_room("session_summary") {
                    self.session_summary(&room, body);
                }
            }
            ClientMessage::SessionCheckpoint(body) => {
                if self.orb_room("session_checkpoint").is_some() {
                    // Stored before the next message is read, so that a final summary after it
                    // always supersedes it.
                    self.session_checkpoint(body).await;
                }
            }
            // The decoder keeps these raw (see `wire`); typed ones never reach here.
            ClientMessage::Offer(_) | ClientMessage::Answer(_) | ClientMessage::IceCandidate(_) => {
                self.reject(ErrorCode::InvalidMessage, "unexpected relay message".into());
            }
        }
        ControlFlow::Continue(())
    }

    async fn join(&mut self, identity: Identity) -> ControlFlow<()> {
        // The joiner's ICE servers come with the acceptance, for clients without an HTTP path.
        let greeting = self
            .state
            .ice
            .is_configured()
            .then(|| ServerMessage::IceServers(self.state.ice_servers_for(&identity.user_id, identity.expires_at)));
        let joined = self
            .state
            .registry
            .join_shared(self.room_id, self.handle, identity.clone(), greeting.as_ref())
            .await;
        match joined {
            Ok(room) => {
                if let Some(ServerMessage::IceServers(list)) = &greeting {
                    self.state.metrics.ice_servers_issued(list);
                }
                tracing::Span::current().record("user", identity.user_id.as_str());
                info!(role = ?identity.role, "joined");
                let ai = identity.is_ai();
                self.joined = Some((room, identity));
                if ai {
                    self.hand_over_checkpoint().await;
                }
                ControlFlow::Continue(())
            }
            Err(e @ JoinError::RoomFull(_)) => {
                self.state.metrics.rejected(ErrorCode::RoomFull);
                self.send(&error(ErrorCode::RoomFull, e.to_string()));
                self.handle.close(CloseReason::RoomFull);
                ControlFlow::Break(())
            }
            Err(e @ JoinError::Unavailable(_)) => {
                // The client reconnects with backoff (close 1013) and finds Redis, or another
                // replica, answering again.
                self.state.metrics.rejected(ErrorCode::Unavailable);
                warn!(error = %e, "join refused");
                self.send(&error(ErrorCode::Unavailable, e.to_string()));
                self.handle.close(CloseReason::Unavailable);
                ControlFlow::Break(())
            }
            Err(e @ JoinError::StaleOrb) => {
                // Final for that orb (its client does not reconnect after "replaced").
                self.state.metrics.rejected(ErrorCode::Unauthorized);
                self.send(&error(ErrorCode::Unauthorized, e.to_string()));
                self.handle.close(CloseReason::Replaced);
                ControlFlow::Break(())
            }
        }
    }

    /// The room, if this socket is the orb in it; otherwise the message is refused, because
    /// humans must not be able to forge the orb's status or summary.
    fn orb_room(&self, kind: &str) -> Option<Arc<Room>> {
        match &self.joined {
            None => {
                self.reject(ErrorCode::NotJoined, format!("join the room before sending {kind}"));
                None
            }
            Some((_, me)) if !me.is_ai() => {
                self.reject(
                    ErrorCode::InvalidMessage,
                    format!("only the AI participant sends {kind}"),
                );
                None
            }
            Some((room, _)) => Some(room.clone()),
        }
    }

    /// An error the orb reports. Addressed (`toId`) it concerns that peer's input and goes to that
    /// peer only, so its page can tell the user; otherwise it is the orb's own and only logged,
    /// as seed 001 did.
    fn orb_error(&self, room: &Room, body: Value) {
        let detail = body.get("error").cloned().unwrap_or_else(|| body.clone());
        let Some(target) = body.get("toId").and_then(Value::as_str).map(str::to_owned) else {
            warn!(error = %detail, "orb reported an error");
            return;
        };
        let mut body = match body {
            Value::Object(map) => map,
            _ => serde_json::Map::new(),
        };
        body.insert("roomId".into(), Value::String(self.room_id.to_owned()));
        if let Some((_, me)) = &self.joined {
            body.insert("fromId".into(), Value::String(me.user_id.clone()));
        }
        let out = Outbound::message(&ServerMessage::OrbError(Value::Object(body)));
        match self.state.registry.relay(room, self.handle.id, Some(&target), out) {
            Relayed::Delivered(_) => {
                self.state.metrics.relayed_other("orb_error");
                info!(peer = %target, error = %detail, "orb refused a peer's input");
            }
            Relayed::UnknownPeer => debug!(peer = %target, "orb_error for a peer that has left"),
            Relayed::NotMember => {}
        }
    }

    /// The orb heard or produced voice at `ms` (Unix milliseconds).
    fn orb_activity(&self, room: &Room, ms: u64) {
        let at = std::time::UNIX_EPOCH + Duration::from_millis(ms);
        if self.state.registry.orb_activity(room, self.handle.id, at) {
            debug!(at_ms = ms, "voice activity");
        }
    }

    /// The orb's session so far: kept as the room's checkpoint (see [`summary::checkpoint`]).
    async fn session_checkpoint(&mut self, body: Value) {
        let mut body = match body {
            Value::Object(map) => map,
            _ => {
                self.reject(ErrorCode::InvalidMessage, "session_checkpoint must be an object".into());
                return;
            }
        };
        body.remove("summaryId");
        body.insert("roomId".into(), Value::String(self.room_id.to_owned()));
        let me = self.joined.as_ref().map(|(_, me)| me);
        if let Some(me) = me {
            body.insert("fromId".into(), Value::String(me.user_id.clone()));
        }
        let orb_uid = me.and_then(|me| me.orb_uid.clone());
        let Ok(text) = serde_json::to_vec(&Value::Object(body)) else {
            return;
        };
        match self
            .state
            .summaries
            .checkpoint(self.room_id, orb_uid.as_deref(), bytes::Bytes::from(text))
            .await
        {
            Ok(()) => debug!("session checkpoint stored"),
            Err(e) => warn!(error = %e, "could not store the session checkpoint"),
        }
    }

    /// An orb joined: the checkpoint an orb before it left in the room, to continue from.
    async fn hand_over_checkpoint(&self) {
        match self.state.summaries.last_checkpoint(self.room_id).await {
            Ok(Some(checkpoint)) => {
                info!("handing the orb the room's last checkpoint");
                self.send(&ServerMessage::SessionCheckpoint(checkpoint));
            }
            Ok(None) => {}
            Err(e) => warn!(error = %e, "could not read the room's checkpoint"),
        }
    }

    /// The orb's summary: to the coaches connected now, and into the durable store, after which
    /// (and only then) the orb gets `session_summary_ack` and may forget it. One too large, or one
    /// more than an orb may store, is refused (`summary_refused`) and reaches no one.
    fn session_summary(&mut self, room: &Room, body: Value) {
        let mut body = match body {
            Value::Object(map) => map,
            other => {
                let mut map = serde_json::Map::new();
                map.insert("summary".into(), other);
                map
            }
        };
        // The room is the one the orb is in, whatever the orb wrote.
        body.insert("roomId".into(), Value::String(self.room_id.to_owned()));
        let me = self.joined.as_ref().map(|(_, me)| me);
        if let Some(me) = me {
            body.insert("fromId".into(), Value::String(me.user_id.clone()));
        }
        let orb_uid = me.and_then(|me| me.orb_uid.clone());
        let id = match body.get("summaryId").and_then(Value::as_str) {
            Some(id) if summary::valid_id(id) => Some(id.to_owned()),
            Some(_) => {
                self.reject(
                    ErrorCode::InvalidMessage,
                    "summaryId must be 1-128 characters of A-Z a-z 0-9 - _ . :".into(),
                );
                return;
            }
            None => None,
        };
        // A seed orb sends no id: the summary is stored under one of ours, but cannot be acked.
        let id = id.unwrap_or_else(|| format!("sig-{}-{:x}", jiff::Timestamp::now().as_millisecond(), self.handle.id));
        body.insert("summaryId".into(), Value::String(id.clone()));
        let msg = ServerMessage::SessionSummary(Value::Object(body));
        let Ok(text) = serde_json::to_vec(&msg) else { return };
        let summaries = &self.state.summaries;
        let checked = summaries.check_size(text.len()).and_then(|()| {
            summary::admit(&id, self.summary_ids.iter().map(String::as_str)).inspect_err(|r| summaries.refused(r))
        });
        match checked {
            Err(refusal) => {
                refuse_summary(self.state, self.handle, &id, &refusal);
                return;
            }
            Ok(PutOutcome::Stored) => self.summary_ids.push(id.clone()),
            Ok(PutOutcome::AlreadyStored) => {}
        }
        let coaches = self.state.registry.to_coaches(room, &msg);
        self.state.metrics.relayed_other("session_summary");
        info!(coaches, summary = %id, "session summary received");
        let (state, handle, room_id) = (Arc::clone(self.state), self.handle.clone(), self.room_id.to_owned());
        tokio::spawn(
            async move {
                match state
                    .summaries
                    .accept(id.clone(), room_id.clone(), orb_uid, bytes::Bytes::from(text))
                    .await
                {
                    Ok(outcome) => {
                        debug!(summary = %id, ?outcome, "summary stored");
                        if let Err(e) = state.summaries.superseded(&room_id).await {
                            warn!(error = %e, "could not remove the room's checkpoint");
                        }
                        handle.send_message(&ServerMessage::SessionSummaryAck { summary_id: id });
                    }
                    Err(StoreError::Refused(refusal)) => refuse_summary(&state, &handle, &id, &refusal),
                    // No ack: the orb sends it again (after a reconnect, or to another replica).
                    Err(e) => warn!(summary = %id, error = %e, "could not store the session summary"),
                }
            }
            .in_current_span(),
        );
    }
}

/// Tells the orb its summary `id` will not be stored (no ack follows); counted as a rejection.
fn refuse_summary(state: &AppState, handle: &ConnHandle, id: &str, refusal: &Refusal) {
    state.metrics.rejected(ErrorCode::SummaryRefused);
    warn!(summary = %id, reason = refusal.label(), "session summary refused: {refusal}");
    handle.send_message(&error(
        ErrorCode::SummaryRefused,
        format!("session summary {id} not stored: {refusal}"),
    ));
}

/// The identity a join message claims, used only with auth off (seed 001 behaviour).
fn claimed_identity(
    user_id: Option<String>,
    user_role: Option<UserRole>,
    user_name: Option<String>,
    participant_type: Option<ParticipantType>,
) -> Result<Identity, String> {
    let user_id = user_id.ok_or("join needs a userId")?;
    if user_id.len() > MAX_USER_ID_LEN {
        return Err(format!("userId is longer than {MAX_USER_ID_LEN} bytes"));
    }
    let role = user_role.ok_or("join needs a userRole: coach, client or ai")?;
    // The seed defaulted participantType to human; an `ai` role without a type is the AI.
    let participant_type = participant_type.unwrap_or(if role == UserRole::Ai {
        ParticipantType::Ai
    } else {
        ParticipantType::Human
    });
    Ok(Identity {
        user_id,
        role,
        participant_type,
        user_name,
        session_id: None,
        issued_at: None,
        orb_uid: None,
        expires_at: None,
    })
}

/// The payload size of an inbound frame, what the byte budget counts.
fn frame_len(frame: &Message) -> usize {
    match frame {
        Message::Text(text) => text.len(),
        Message::Binary(data) | Message::Ping(data) | Message::Pong(data) => data.len(),
        Message::Close(_) => 0,
    }
}

fn error(code: ErrorCode, message: String) -> ServerMessage {
    ServerMessage::Error { code, message }
}

/// After the server sent its close frame: reads (and ignores) until the client's close reply, so
/// the client sees a clean close instead of a reset, bounded by `timeout`.
async fn await_close_reply(stream: &mut SplitStream<WebSocket>, timeout: Duration) {
    let drain = async {
        while let Some(Ok(frame)) = stream.next().await {
            if matches!(frame, Message::Close(_)) {
                return;
            }
        }
    };
    let _ = tokio::time::timeout(timeout, drain).await;
}

async fn wait_closed(rx: &mut watch::Receiver<Option<CloseReason>>) -> CloseReason {
    loop {
        if let Some(reason) = *rx.borrow_and_update() {
            return reason;
        }
        if rx.changed().await.is_err() {
            // No handle is left to close us; the other branches end the connection.
            return std::future::pending().await;
        }
    }
}

async fn write_loop(
    mut sink: SplitSink<WebSocket, Message>,
    mut rx: ConnReceivers,
    keepalive: Duration,
    state: Arc<AppState>,
) {
    let mut ping = tokio::time::interval_at(Instant::now() + keepalive, keepalive);
    let mut batch: Vec<Option<Instant>> = Vec::with_capacity(WRITE_BATCH);
    let closed = wait_closed(&mut rx.close);
    tokio::pin!(closed);
    loop {
        tokio::select! {
            biased;
            reason = &mut closed => {
                if reason.flushes_queue() {
                    while let Ok(out) = rx.outbound.try_recv() {
                        if sink.feed(Message::Text(out.text)).await.is_err() {
                            return;
                        }
                    }
                }
                let frame = CloseFrame { code: reason.code(), reason: reason.text().into() };
                let _ = sink.send(Message::Close(Some(frame))).await;
                return;
            }
            out = rx.outbound.recv() => {
                let Some(first) = out else {
                    let _ = sink.close().await;
                    return;
                };
                batch.clear();
                let mut next = Some(first);
                while let Some(out) = next.take() {
                    batch.push(out.received_at);
                    if sink.feed(Message::Text(out.text)).await.is_err() {
                        return;
                    }
                    if batch.len() < WRITE_BATCH {
                        next = rx.outbound.try_recv().ok();
                    }
                }
                if sink.flush().await.is_err() {
                    return;
                }
                for received_at in batch.iter().flatten() {
                    state.metrics.relay_latency.observe(received_at.elapsed().as_secs_f64());
                }
            }
            _ = ping.tick() => {
                if sink.send(Message::Ping(Bytes::new())).await.is_err() {
                    return;
                }
            }
        }
    }
}
