//! Rooms: who is in which room, and who gets which message.
//!
//! The registry's lock is taken only to find, create or remove a room (join, leave, orb status);
//! relaying takes only the room's own lock, so rooms never contend with each other. Lock order is
//! always registry, then room. Nothing here awaits: delivery is a non-blocking push into each
//! connection's bounded queue, which makes this module a synchronous state machine that tests
//! drive directly.
//!
//! Slow consumers: signaling messages cannot be dropped (a lost ICE candidate or answer silently
//! breaks a call), so a connection whose queue is full is disconnected with
//! [`close_code::SLOW_CONSUMER`] instead; the room carries on and the client may rejoin.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use axum::extract::ws::Utf8Bytes;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::metrics::Metrics;
use crate::orb_runtime::{OrbRequest, OrbRuntime, Presence};
use crate::protocol::{AiStatus, ParticipantType, PeerInfo, ServerMessage, UserRole, close_code, should_create_offer};

/// Who a connection is, as decided by the server (from the token, or from `join` without auth).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    pub user_id: String,
    pub role: UserRole,
    pub participant_type: ParticipantType,
    pub user_name: Option<String>,
    /// The coaching session from the room token (`session` claim), when it names one.
    pub session_id: Option<String>,
    /// When the room token was issued (`iat`); `None` without tokens. Of two orbs of a room the
    /// one with the newer token is the live one.
    pub issued_at: Option<u64>,
}

impl Identity {
    pub fn peer_info(&self) -> PeerInfo {
        PeerInfo {
            user_id: self.user_id.clone(),
            user_role: self.role,
            participant_type: self.participant_type,
        }
    }

    pub fn is_ai(&self) -> bool {
        self.participant_type == ParticipantType::Ai
    }
}

/// Why the server closes a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseReason {
    Replaced,
    SlowConsumer,
    IdleTimeout,
    JoinTimeout,
    Shutdown,
    RoomFull,
    Unauthorized,
}

impl CloseReason {
    pub fn code(self) -> u16 {
        match self {
            CloseReason::Replaced => close_code::REPLACED,
            CloseReason::SlowConsumer => close_code::SLOW_CONSUMER,
            CloseReason::IdleTimeout | CloseReason::JoinTimeout => close_code::IDLE_TIMEOUT,
            CloseReason::Shutdown => close_code::GOING_AWAY,
            CloseReason::RoomFull => close_code::ROOM_FULL,
            CloseReason::Unauthorized => close_code::UNAUTHORIZED,
        }
    }

    pub fn text(self) -> &'static str {
        match self {
            CloseReason::Replaced => "replaced by a newer connection of the same user",
            CloseReason::SlowConsumer => "outbound queue full: client too slow",
            CloseReason::IdleTimeout => "idle timeout",
            CloseReason::JoinTimeout => "no join in time",
            CloseReason::Shutdown => "server shutting down",
            CloseReason::RoomFull => "room full",
            CloseReason::Unauthorized => "unauthorized",
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            CloseReason::Replaced => "replaced",
            CloseReason::SlowConsumer => "slow_consumer",
            CloseReason::IdleTimeout => "idle_timeout",
            CloseReason::JoinTimeout => "join_timeout",
            CloseReason::Shutdown => "shutdown",
            CloseReason::RoomFull => "room_full",
            CloseReason::Unauthorized => "unauthorized",
        }
    }

    /// Whether queued messages are still written before the close frame. A slow consumer's queue
    /// is what got it closed, so it is not flushed.
    pub fn flushes_queue(self) -> bool {
        !matches!(self, CloseReason::SlowConsumer)
    }
}

/// A text frame on its way to one connection.
#[derive(Clone, Debug)]
pub struct Outbound {
    pub text: Utf8Bytes,
    /// When the relayed message was read from its sender; `None` for the server's own messages.
    pub received_at: Option<Instant>,
}

impl Outbound {
    pub fn message(msg: &ServerMessage) -> Self {
        Self {
            text: serde_json::to_string(msg)
                .expect("server messages always serialise")
                .into(),
            received_at: None,
        }
    }
}

/// The room's side of a connection: its outbound queue and its close switch.
#[derive(Clone, Debug)]
pub struct ConnHandle {
    pub id: u64,
    tx: mpsc::Sender<Outbound>,
    close: Arc<watch::Sender<Option<CloseReason>>>,
}

/// The connection's side: what to write, and when to stop.
pub struct ConnReceivers {
    pub outbound: mpsc::Receiver<Outbound>,
    pub close: watch::Receiver<Option<CloseReason>>,
}

impl ConnHandle {
    pub fn new(id: u64, queue: usize) -> (Self, ConnReceivers) {
        let (tx, outbound) = mpsc::channel(queue.max(1));
        let (close_tx, close) = watch::channel(None);
        (
            Self {
                id,
                tx,
                close: Arc::new(close_tx),
            },
            ConnReceivers { outbound, close },
        )
    }

    /// Asks the connection to close. The first reason wins.
    pub fn close(&self, reason: CloseReason) {
        self.close.send_if_modified(|current| {
            if current.is_none() {
                *current = Some(reason);
                true
            } else {
                false
            }
        });
    }

    pub fn subscribe_close(&self) -> watch::Receiver<Option<CloseReason>> {
        self.close.subscribe()
    }

    pub fn close_reason(&self) -> Option<CloseReason> {
        *self.close.borrow()
    }

    /// Queues a frame without waiting; a full queue closes the connection (see the module docs).
    pub fn send(&self, out: Outbound) -> bool {
        match self.tx.try_send(out) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.close(CloseReason::SlowConsumer);
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }

    pub fn send_message(&self, msg: &ServerMessage) -> bool {
        self.send(Outbound::message(msg))
    }
}

struct Member {
    identity: Identity,
    conn: ConnHandle,
}

#[derive(Default)]
struct RoomState {
    members: Vec<Member>,
    /// The orb's last known status, sent to humans who join later.
    ai_status: Option<AiStatus>,
    orb_requested: bool,
    coach_id: Option<String>,
    client_id: Option<String>,
    session_id: Option<String>,
    /// The room's last activity (see [`Presence`]).
    last_activity: Option<SystemTime>,
}

impl RoomState {
    fn humans(&self) -> u32 {
        self.members.iter().filter(|m| !m.identity.is_ai()).count() as u32
    }

    fn has_ai(&self) -> bool {
        self.members.iter().any(|m| m.identity.is_ai())
    }

    fn broadcast(&self, except: Option<u64>, out: &Outbound) -> usize {
        let mut n = 0;
        for m in self.members.iter().filter(|m| Some(m.conn.id) != except) {
            n += usize::from(m.conn.send(out.clone()));
        }
        n
    }

    fn broadcast_humans(&self, out: &Outbound) {
        for m in self.members.iter().filter(|m| !m.identity.is_ai()) {
            m.conn.send(out.clone());
        }
    }

    fn member(&self, conn_id: u64) -> Option<&Member> {
        self.members.iter().find(|m| m.conn.id == conn_id)
    }

    /// Moves the last activity to `at` unless it is already later; returns the result.
    fn touch(&mut self, at: SystemTime) -> SystemTime {
        let t = self.last_activity.map_or(at, |last| last.max(at));
        self.last_activity = Some(t);
        t
    }
}

pub struct Room {
    id: String,
    state: Mutex<RoomState>,
}

impl std::fmt::Debug for Room {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Room").field("id", &self.id).finish_non_exhaustive()
    }
}

impl Room {
    pub fn id(&self) -> &str {
        &self.id
    }

    fn lock(&self) -> MutexGuard<'_, RoomState> {
        // A panic while holding the lock cannot leave the member list half-updated in a way that
        // matters more than losing the room, so a poisoned lock is used as it is.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The ids of the current members, for tests and diagnostics.
    pub fn member_ids(&self) -> Vec<String> {
        self.lock().members.iter().map(|m| m.identity.user_id.clone()).collect()
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum JoinError {
    #[error("the room already has {0} participants")]
    RoomFull(usize),
    /// An orb whose token is older than the live orb's: an earlier incarnation (a pod on a lost
    /// node, a leaked token) must not replace the orb now serving the room.
    #[error("a newer orb serves this room; this orb's token is from an earlier one")]
    StaleOrb,
}

/// The outcome of a relay attempt.
#[derive(Debug, PartialEq, Eq)]
pub enum Relayed {
    /// Queued for this many receivers (0 when the sender is alone).
    Delivered(usize),
    /// `toId` names nobody in the room.
    UnknownPeer,
    /// The sender is no longer a member (replaced or left).
    NotMember,
}

pub struct Registry {
    rooms: Mutex<HashMap<String, Arc<Room>>>,
    max_participants: usize,
    runtime: Arc<dyn OrbRuntime>,
    metrics: Arc<Metrics>,
}

impl Registry {
    pub fn new(max_participants: usize, runtime: Arc<dyn OrbRuntime>, metrics: Arc<Metrics>) -> Self {
        Self {
            rooms: Mutex::new(HashMap::new()),
            max_participants: max_participants.max(1),
            runtime,
            metrics,
        }
    }

    fn rooms(&self) -> MutexGuard<'_, HashMap<String, Arc<Room>>> {
        self.rooms.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn room(&self, room_id: &str) -> Option<Arc<Room>> {
        self.rooms().get(room_id).cloned()
    }

    pub fn room_count(&self) -> usize {
        self.rooms().len()
    }

    /// Adds `identity` to the room: the joiner gets `peer-discovery`, the others `user-joined`.
    /// A member with the same userId is replaced: its socket is closed and the others see it
    /// leave before the new one joins, so their clients rebuild the peer connection.
    pub fn join(&self, room_id: &str, conn: &ConnHandle, identity: Identity) -> Result<Arc<Room>, JoinError> {
        let joiner = identity.peer_info();
        let is_ai = identity.is_ai();
        let (room, request, humans, created) = {
            let mut rooms = self.rooms();
            let mut created = false;
            let room = rooms
                .entry(room_id.to_owned())
                .or_insert_with(|| {
                    created = true;
                    Arc::new(Room {
                        id: room_id.to_owned(),
                        state: Mutex::default(),
                    })
                })
                .clone();
            let mut st = room.lock();
            let newer_orb_present = |mine: u64| {
                st.members
                    .iter()
                    .any(|m| m.identity.is_ai() && m.identity.issued_at.is_some_and(|theirs| theirs > mine))
            };
            if is_ai && identity.issued_at.is_some_and(newer_orb_present) {
                return Err(JoinError::StaleOrb);
            }
            let existing = st.members.iter().position(|m| m.identity.user_id == identity.user_id);
            if existing.is_none() && st.members.len() >= self.max_participants {
                return Err(JoinError::RoomFull(self.max_participants));
            }
            if let Some(i) = existing {
                let old = st.members.remove(i);
                old.conn.close(CloseReason::Replaced);
                self.metrics.participants(participant_label(&old.identity)).dec();
                st.broadcast(
                    None,
                    &Outbound::message(&ServerMessage::UserLeft {
                        user_id: old.identity.user_id.clone(),
                        user_role: old.identity.role,
                    }),
                );
            }
            let peers = st.members.iter().map(|m| m.identity.peer_info()).collect();
            conn.send_message(&ServerMessage::PeerDiscovery { peers });
            for m in &st.members {
                m.conn.send_message(&ServerMessage::UserJoined {
                    user_id: joiner.user_id.clone(),
                    user_role: joiner.user_role,
                    participant_type: joiner.participant_type,
                    should_create_offer: should_create_offer(&m.identity.peer_info(), &joiner),
                });
            }
            let has_ai = st.has_ai();
            if !is_ai {
                match identity.role {
                    UserRole::Coach => st.coach_id = Some(identity.user_id.clone()),
                    UserRole::Client => st.client_id = Some(identity.user_id.clone()),
                    UserRole::Ai => {}
                }
                if st.session_id.is_none() {
                    st.session_id.clone_from(&identity.session_id);
                }
                if let Some(status) = st.ai_status.filter(|_| !has_ai) {
                    conn.send_message(&ServerMessage::AiStatus {
                        status,
                        session_id: None,
                        from_id: None,
                    });
                }
            }
            self.metrics.participants(participant_label(&identity)).inc();
            st.members.push(Member {
                identity,
                conn: conn.clone(),
            });
            // Ask for an orb on the first human, and again when a human arrives after the last
            // attempt came to nothing.
            let retry = matches!(st.ai_status, Some(AiStatus::Unavailable | AiStatus::Ended));
            let request = (!is_ai && !has_ai && (!st.orb_requested || retry)).then(|| {
                st.orb_requested = true;
                st.ai_status = None;
                OrbRequest {
                    room_id: room_id.to_owned(),
                    coach_id: st.coach_id.clone(),
                    client_id: st.client_id.clone(),
                    session_id: st.session_id.clone(),
                }
            });
            let humans = st.humans();
            let last_activity = st.touch(SystemTime::now());
            drop(st);
            (room, request, Presence { humans, last_activity }, created)
        };
        if created {
            self.metrics.rooms.inc();
        }
        if let Some(request) = request {
            self.runtime.request_orb(request);
        }
        self.runtime.report_presence(room_id, humans);
        Ok(room)
    }

    /// Removes the connection from the room (if it is still the member there); the others get
    /// `user-left`. An empty room is removed from the registry.
    pub fn leave(&self, room: &Arc<Room>, conn_id: u64) -> bool {
        let humans = {
            let mut rooms = self.rooms();
            let mut st = room.lock();
            let Some(i) = st.members.iter().position(|m| m.conn.id == conn_id) else {
                return false;
            };
            let gone = st.members.remove(i);
            self.metrics.participants(participant_label(&gone.identity)).dec();
            st.broadcast(
                None,
                &Outbound::message(&ServerMessage::UserLeft {
                    user_id: gone.identity.user_id,
                    user_role: gone.identity.role,
                }),
            );
            if st.members.is_empty() && rooms.get(&room.id).is_some_and(|r| Arc::ptr_eq(r, room)) {
                rooms.remove(&room.id);
                self.metrics.rooms.dec();
            }
            Presence {
                humans: st.humans(),
                last_activity: st.touch(SystemTime::now()),
            }
        };
        self.runtime.report_presence(&room.id, humans);
        true
    }

    /// Forwards an SDP/ICE frame to `target`, or to everyone else when there is no target.
    /// Relayed SDP and ICE are not activity: once media flows there are none, and a room whose
    /// people talk must not look idle (see [`Registry::orb_activity`]).
    pub fn relay(&self, room: &Room, from_conn: u64, target: Option<&str>, out: Outbound) -> Relayed {
        let st = room.lock();
        if st.member(from_conn).is_none() {
            return Relayed::NotMember;
        }
        match target {
            Some(target) => match st.members.iter().find(|m| m.identity.user_id == target) {
                Some(m) => Relayed::Delivered(usize::from(m.conn.send(out))),
                None => Relayed::UnknownPeer,
            },
            None => Relayed::Delivered(st.broadcast(Some(from_conn), &out)),
        }
    }

    /// The orb heard or produced voice at `at`: the room's activity moves there (never past now,
    /// never backwards), and the runtime learns it. Only the orb hears the media, so this is how
    /// speech keeps a call from its idle timeout. Returns whether the activity advanced.
    pub fn orb_activity(&self, room: &Room, from_conn: u64, at: SystemTime) -> bool {
        let presence = {
            let mut st = room.lock();
            if !st.member(from_conn).is_some_and(|m| m.identity.is_ai()) {
                return false;
            }
            let before = st.last_activity;
            let now = st.touch(at.min(SystemTime::now()));
            if Some(now) == before {
                return false;
            }
            Presence {
                humans: st.humans(),
                last_activity: now,
            }
        };
        self.runtime.report_presence(&room.id, presence);
        true
    }

    /// The orb's own `ai_status`: relayed to everyone else and remembered for late joiners.
    pub fn orb_status(&self, room: &Room, from_conn: u64, status: AiStatus, session_id: Option<String>) -> Relayed {
        let mut st = room.lock();
        let Some(from) = st.member(from_conn).map(|m| m.identity.user_id.clone()) else {
            return Relayed::NotMember;
        };
        st.ai_status = Some(status);
        let out = Outbound::message(&ServerMessage::AiStatus {
            status,
            session_id,
            from_id: Some(from),
        });
        Relayed::Delivered(st.broadcast(Some(from_conn), &out))
    }

    /// Delivers the orb's session summary to the room's coach(es).
    pub fn to_coaches(&self, room: &Room, msg: &ServerMessage) -> usize {
        let st = room.lock();
        let out = Outbound::message(msg);
        st.members
            .iter()
            .filter(|m| m.identity.role == UserRole::Coach)
            .map(|m| usize::from(m.conn.send(out.clone())))
            .sum()
    }

    /// A status the orb runtime observed (queued, starting, ready, unavailable, ended). Sent to
    /// the humans when it changes. Once the orb is in the room its own messages are fresher than
    /// the runtime's view, so a lagging `queued`/`starting`, or a `ready` while the orb reports
    /// listening, processing or speaking, is not sent then.
    pub fn runtime_status(&self, room_id: &str, status: AiStatus) -> bool {
        let Some(room) = self.room(room_id) else {
            return false;
        };
        let mut st = room.lock();
        // A lagging runtime `ready` must not replace what the orb in the room says it is doing.
        let orb_reports_activity = matches!(
            st.ai_status,
            Some(AiStatus::Listening | AiStatus::Processing | AiStatus::Speaking)
        );
        let stale = st.has_ai()
            && (matches!(status, AiStatus::Queued | AiStatus::Starting)
                || (status == AiStatus::Ready && orb_reports_activity));
        if st.ai_status == Some(status) || stale {
            return false;
        }
        st.ai_status = Some(status);
        st.broadcast_humans(&Outbound::message(&ServerMessage::AiStatus {
            status,
            session_id: None,
            from_id: None,
        }));
        true
    }
}

fn participant_label(identity: &Identity) -> &'static str {
    if identity.is_ai() { "ai" } else { "human" }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::orb_runtime::testing::RecordingRuntime;
    use serde_json::{Value, json};
    use std::time::Duration;

    struct Peer {
        handle: ConnHandle,
        rx: ConnReceivers,
    }

    impl Peer {
        fn new(id: u64) -> Self {
            let (handle, rx) = ConnHandle::new(id, 16);
            Self { handle, rx }
        }

        fn drain(&mut self) -> Vec<Value> {
            let mut out = vec![];
            while let Ok(m) = self.rx.outbound.try_recv() {
                out.push(serde_json::from_str(m.text.as_str()).unwrap());
            }
            out
        }
    }

    fn human(id: &str, role: UserRole) -> Identity {
        Identity {
            user_id: id.into(),
            role,
            participant_type: ParticipantType::Human,
            user_name: None,
            session_id: None,
            issued_at: None,
        }
    }

    fn ai(id: &str) -> Identity {
        Identity {
            user_id: id.into(),
            role: UserRole::Ai,
            participant_type: ParticipantType::Ai,
            user_name: None,
            session_id: None,
            issued_at: None,
        }
    }

    fn registry(max: usize) -> (Registry, Arc<RecordingRuntime>) {
        let runtime = Arc::new(RecordingRuntime::default());
        (Registry::new(max, runtime.clone(), Metrics::shared()), runtime)
    }

    #[test]
    fn join_order_ai_first_then_coach_then_client() {
        let (reg, runtime) = registry(3);
        let (mut orb, mut coach, mut client) = (Peer::new(1), Peer::new(2), Peer::new(3));
        reg.join("r", &orb.handle, ai("ai-1")).unwrap();
        assert_eq!(orb.drain(), vec![json!({"type": "peer-discovery", "peers": []})]);
        assert!(runtime.requests().is_empty(), "the orb itself never asks for an orb");

        reg.join("r", &coach.handle, human("coach-1", UserRole::Coach)).unwrap();
        assert_eq!(coach.drain()[0]["peers"][0]["userId"], "ai-1");
        assert_eq!(orb.drain()[0]["shouldCreateOffer"], false, "the AI never offers");
        assert!(runtime.requests().is_empty(), "an orb is already in the room");

        reg.join("r", &client.handle, human("client-1", UserRole::Client))
            .unwrap();
        let discovery = &client.drain()[0];
        assert_eq!(discovery["peers"].as_array().unwrap().len(), 2);
        let to_coach = coach.drain();
        assert_eq!(to_coach[0]["type"], "user-joined");
        assert_eq!(
            to_coach[0]["shouldCreateOffer"], false,
            "client-1 < coach-1: the joining client offers"
        );
        assert_eq!(orb.drain()[0]["shouldCreateOffer"], false);
    }

    #[test]
    fn first_human_requests_exactly_one_orb() {
        let (reg, runtime) = registry(3);
        let (coach, client) = (Peer::new(1), Peer::new(2));
        reg.join("r", &coach.handle, human("c", UserRole::Coach)).unwrap();
        reg.join("r", &client.handle, human("k", UserRole::Client)).unwrap();
        let requests = runtime.requests();
        assert_eq!(requests.len(), 1);
        assert_eq!(requests[0].coach_id.as_deref(), Some("c"));
        assert_eq!(runtime.last_presence("r").unwrap().humans, 2);
    }

    #[test]
    fn unavailable_orb_is_asked_for_again_by_the_next_human() {
        let (reg, runtime) = registry(3);
        let (mut coach, client) = (Peer::new(1), Peer::new(2));
        reg.join("r", &coach.handle, human("c", UserRole::Coach)).unwrap();
        assert!(reg.runtime_status("r", AiStatus::Unavailable));
        assert!(
            !reg.runtime_status("r", AiStatus::Unavailable),
            "unchanged status is not resent"
        );
        assert_eq!(coach.drain()[1], json!({"type": "ai_status", "status": "unavailable"}));
        reg.join("r", &client.handle, human("k", UserRole::Client)).unwrap();
        assert_eq!(runtime.requests().len(), 2);
    }

    #[test]
    fn targeted_and_broadcast_relay() {
        let (reg, _) = registry(3);
        let (mut a, mut b, mut c) = (Peer::new(1), Peer::new(2), Peer::new(3));
        let room = reg.join("r", &a.handle, human("a", UserRole::Coach)).unwrap();
        reg.join("r", &b.handle, human("b", UserRole::Client)).unwrap();
        reg.join("r", &c.handle, ai("ai")).unwrap();
        for p in [&mut a, &mut b, &mut c] {
            p.drain();
        }
        let frame = |s: &str| Outbound {
            text: s.to_owned().into(),
            received_at: None,
        };
        assert_eq!(reg.relay(&room, 1, Some("ai"), frame("{}")), Relayed::Delivered(1));
        assert_eq!((a.drain().len(), b.drain().len(), c.drain().len()), (0, 0, 1));
        assert_eq!(reg.relay(&room, 1, None, frame("{}")), Relayed::Delivered(2));
        assert_eq!((a.drain().len(), b.drain().len(), c.drain().len()), (0, 1, 1));
        assert_eq!(reg.relay(&room, 1, Some("nobody"), frame("{}")), Relayed::UnknownPeer);
        assert_eq!(reg.relay(&room, 9, None, frame("{}")), Relayed::NotMember);
    }

    /// Activity is joins, leaves and the voice the orb reports; relayed SDP/ICE is not, so a call
    /// whose media flows (no signaling at all) stays alive only through the orb's reports.
    #[test]
    fn activity_is_voice_and_membership_not_signaling() {
        let (reg, runtime) = registry(3);
        let (mut coach, orb) = (Peer::new(1), Peer::new(2));
        let room = reg.join("r", &coach.handle, human("a", UserRole::Coach)).unwrap();
        reg.join("r", &orb.handle, ai("ai")).unwrap();
        coach.drain();
        let joined = runtime.last_presence("r").unwrap().last_activity;

        let frame = Outbound {
            text: "{}".to_owned().into(),
            received_at: None,
        };
        std::thread::sleep(Duration::from_millis(5));
        reg.relay(&room, 1, Some("ai"), frame);
        assert_eq!(
            runtime.last_presence("r").unwrap().last_activity,
            joined,
            "relay is not activity"
        );

        // The orb heard someone a moment ago: activity moves to that instant.
        let spoke = SystemTime::now();
        assert!(reg.orb_activity(&room, 2, spoke));
        assert_eq!(runtime.last_presence("r").unwrap().last_activity, spoke);
        // Older or repeated reports do not move it back; reports from the future stop at now.
        assert!(!reg.orb_activity(&room, 2, joined));
        assert!(!reg.orb_activity(&room, 2, spoke));
        assert!(reg.orb_activity(&room, 2, SystemTime::now() + Duration::from_secs(3600)));
        assert!(runtime.last_presence("r").unwrap().last_activity <= SystemTime::now());
        // A human cannot report voice activity (only the orb hears the media).
        assert!(!reg.orb_activity(&room, 1, SystemTime::now() + Duration::from_secs(1)));
    }

    #[test]
    fn rejoin_replaces_the_old_socket_and_empty_rooms_go_away() {
        let (reg, runtime) = registry(3);
        let (mut a1, mut b, a2) = (Peer::new(1), Peer::new(2), Peer::new(3));
        let room = reg.join("r", &a1.handle, human("a", UserRole::Coach)).unwrap();
        reg.join("r", &b.handle, human("b", UserRole::Client)).unwrap();
        b.drain();
        reg.join("r", &a2.handle, human("a", UserRole::Coach)).unwrap();
        assert_eq!(a1.handle.close_reason(), Some(CloseReason::Replaced));
        let seen: Vec<_> = b.drain().into_iter().map(|m| m["type"].clone()).collect();
        assert_eq!(seen, vec![json!("user-left"), json!("user-joined")]);
        assert!(!reg.leave(&room, 1), "the replaced socket's late leave is a no-op");
        assert_eq!(room.member_ids(), vec!["b", "a"]);
        a1.drain();
        assert!(reg.leave(&room, 2));
        assert!(reg.leave(&room, 3));
        assert_eq!(reg.room_count(), 0);
        assert_eq!(runtime.last_presence("r").unwrap().humans, 0);
    }

    #[test]
    fn full_rooms_refuse_and_slow_consumers_are_closed() {
        let (reg, _) = registry(2);
        let (a, b, c) = (Peer::new(1), Peer::new(2), Peer::new(3));
        let room = reg.join("r", &a.handle, human("a", UserRole::Coach)).unwrap();
        reg.join("r", &b.handle, human("b", UserRole::Client)).unwrap();
        assert_eq!(
            reg.join("r", &c.handle, human("c", UserRole::Client)).unwrap_err(),
            JoinError::RoomFull(2)
        );
        // b never reads: its queue of 16 fills and it is closed, while a is unaffected.
        for _ in 0..20 {
            reg.relay(
                &room,
                1,
                Some("b"),
                Outbound {
                    text: "{}".into(),
                    received_at: None,
                },
            );
        }
        assert_eq!(b.handle.close_reason(), Some(CloseReason::SlowConsumer));
        assert_eq!(a.handle.close_reason(), None);
    }

    #[test]
    fn runtime_status_reaches_late_humans_but_not_past_a_present_orb() {
        let (reg, _) = registry(3);
        let (mut coach, mut client, mut orb) = (Peer::new(1), Peer::new(2), Peer::new(3));
        reg.join("r", &coach.handle, human("c", UserRole::Coach)).unwrap();
        reg.runtime_status("r", AiStatus::Queued);
        reg.join("r", &client.handle, human("k", UserRole::Client)).unwrap();
        assert_eq!(client.drain()[1], json!({"type": "ai_status", "status": "queued"}));
        reg.join("r", &orb.handle, ai("ai")).unwrap();
        assert!(!reg.runtime_status("r", AiStatus::Starting));
        assert!(reg.runtime_status("r", AiStatus::Ready));
        // The orb speaks; the runtime's view catching up with `ready` does not undo that.
        let room = reg.room("r").unwrap();
        reg.orb_status(&room, 3, AiStatus::Speaking, None);
        assert!(!reg.runtime_status("r", AiStatus::Ready));
        assert_eq!(coach.drain().last().unwrap()["status"], "speaking");
        // An orb that ended is news, whatever it last said.
        assert!(reg.runtime_status("r", AiStatus::Ended));
        orb.drain();
        assert!(!reg.runtime_status("nope", AiStatus::Ready));
    }
}
