//! Rooms: who is in which room, and who gets which message.
//!
//! The registry's lock is taken only to find, create or remove a room (join, leave, orb status);
//! relaying takes only the room's own lock, so rooms never contend with each other. Lock order is
//! always registry, then room. Nothing here awaits: delivery is a non-blocking push into each
//! connection's bounded queue, which makes this module a synchronous state machine that tests
//! drive directly.
//!
//! With Redis (`--redis-url`, see [`crate::cluster`]) a room's members may sit on several
//! replicas: each replica keeps a copy of the rooms it has sockets in, with the members elsewhere
//! as remote entries. Joins are decided by Redis ([`Registry::join_shared`]); frames for remote
//! members are published to their replica, which delivers them to its own sockets; and each
//! replica tells only its own sockets about joins and leaves, from the numbered events.
//!
//! Slow consumers: signaling messages cannot be dropped (a lost ICE candidate or answer silently
//! breaks a call), so a connection whose queue is full is disconnected with
//! [`close_code::SLOW_CONSUMER`] instead; the room carries on and the client may rejoin.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use axum::extract::ws::Utf8Bytes;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::cluster::{Cluster, ClusterError, Event, JoinMode, MemberRecord, Snapshot, Target};
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
    /// An orb's token: the AiOrb uid it was minted for (checked before the upgrade only).
    pub orb_uid: Option<String>,
    /// When the room token expires (`exp`, Unix seconds); `None` without tokens. No TURN
    /// credential minted for this participant outlives it.
    pub expires_at: Option<u64>,
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
    Unavailable,
    /// Kept sending past its rate limits (`limits::RATE_STRIKES` refusals).
    Flood,
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
            CloseReason::Unavailable => close_code::TRY_AGAIN_LATER,
            CloseReason::Flood => close_code::POLICY_VIOLATION,
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
            CloseReason::Unavailable => "rooms unavailable; try again later",
            CloseReason::Flood => "kept sending past the rate limits",
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
            CloseReason::Unavailable => "unavailable",
            CloseReason::Flood => "flood",
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

/// Where a member's socket is: here, or on another replica (with `--redis-url`).
#[derive(Clone, Debug)]
enum Location {
    Local(ConnHandle),
    Remote { replica: String, conn: u64 },
}

struct Member {
    identity: Identity,
    at: Location,
}

impl Member {
    fn local(&self) -> Option<&ConnHandle> {
        match &self.at {
            Location::Local(conn) => Some(conn),
            Location::Remote { .. } => None,
        }
    }

    fn is_conn(&self, conn_id: u64) -> bool {
        self.local().is_some_and(|c| c.id == conn_id)
    }

    fn remote_replica(&self) -> Option<&str> {
        match &self.at {
            Location::Remote { replica, .. } => Some(replica),
            Location::Local(_) => None,
        }
    }

    fn is_record(&self, record: &MemberRecord) -> bool {
        self.identity.user_id == record.user_id
            && matches!(&self.at, Location::Remote { replica, conn } if *replica == record.replica && *conn == record.conn)
    }
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
    /// With Redis: the number of the last membership change applied to this copy.
    seq: u64,
    /// With Redis: joins of this replica waiting for their script; events meanwhile wait here.
    pending_joins: u32,
    buffered: Vec<Event>,
}

impl RoomState {
    fn humans(&self) -> u32 {
        self.members.iter().filter(|m| !m.identity.is_ai()).count() as u32
    }

    fn has_ai(&self) -> bool {
        self.members.iter().any(|m| m.identity.is_ai())
    }

    fn has_local(&self) -> bool {
        self.members.iter().any(|m| m.local().is_some())
    }

    /// Sends to the members on this replica that `to` selects, except connection `except`.
    fn deliver_local(&self, to: &Target, except: Option<u64>, out: &Outbound) -> usize {
        let mut n = 0;
        for m in self.members.iter().filter(|m| selects(to, &m.identity)) {
            if let Some(conn) = m.local().filter(|c| Some(c.id) != except) {
                n += usize::from(conn.send(out.clone()));
            }
        }
        n
    }

    /// The other replicas with members that `to` selects.
    fn remote_replicas(&self, to: &Target) -> BTreeSet<String> {
        self.members
            .iter()
            .filter(|m| selects(to, &m.identity))
            .filter_map(|m| m.remote_replica().map(str::to_owned))
            .collect()
    }

    /// Members on other replicas that `to` selects (their replicas deliver to them).
    fn remote_members(&self, to: &Target) -> usize {
        self.members
            .iter()
            .filter(|m| m.local().is_none() && selects(to, &m.identity))
            .count()
    }

    fn member(&self, conn_id: u64) -> Option<&Member> {
        self.members.iter().find(|m| m.is_conn(conn_id))
    }

    /// Moves the last activity to `at` unless it is already later; returns the result.
    fn touch(&mut self, at: SystemTime) -> SystemTime {
        let t = self.last_activity.map_or(at, |last| last.max(at));
        self.last_activity = Some(t);
        t
    }

    /// Voice activity at `at` (never past now): the new presence if the activity advanced.
    fn advance_activity(&mut self, at: SystemTime) -> Option<Presence> {
        let before = self.last_activity;
        let now = self.touch(at.min(SystemTime::now()));
        (Some(now) != before).then(|| Presence {
            humans: self.humans(),
            last_activity: now,
        })
    }

    fn presence(&mut self) -> Presence {
        Presence {
            humans: self.humans(),
            last_activity: self.touch(SystemTime::now()),
        }
    }

    /// Removes the member at `i`; the members on this replica see it leave.
    fn remove(&mut self, i: usize, metrics: &Metrics) -> Member {
        let gone = self.members.remove(i);
        if gone.local().is_some() {
            metrics.participants(participant_label(&gone.identity)).dec();
        }
        self.deliver_local(
            &Target::All,
            None,
            &Outbound::message(&ServerMessage::UserLeft {
                user_id: gone.identity.user_id.clone(),
                user_role: gone.identity.role,
            }),
        );
        gone
    }

    /// Adds a member; the members on this replica see it join (each with its own offer rule).
    fn add(&mut self, identity: Identity, at: Location, metrics: &Metrics) {
        let joiner = identity.peer_info();
        for m in &self.members {
            if let Some(conn) = m.local() {
                conn.send_message(&ServerMessage::UserJoined {
                    user_id: joiner.user_id.clone(),
                    user_role: joiner.user_role,
                    participant_type: joiner.participant_type,
                    should_create_offer: should_create_offer(&m.identity.peer_info(), &joiner),
                });
            }
        }
        if matches!(at, Location::Local(_)) {
            metrics.participants(participant_label(&identity)).inc();
        }
        self.members.push(Member { identity, at });
    }

    /// A join asked for an orb again: how the last attempt went is no news for anyone (the
    /// joiner is not told it, and the next attempt's same status is news again).
    fn forget_orb_attempt(&mut self) {
        self.orb_requested = true;
        self.ai_status = None;
    }

    /// A member whose socket is elsewhere now (a rejoin, a restore): removed, and closed if it
    /// was a socket here.
    fn remove_user(&mut self, user_id: &str, metrics: &Metrics) {
        if let Some(i) = self.members.iter().position(|m| m.identity.user_id == user_id) {
            let old = self.remove(i, metrics);
            if let Some(conn) = old.local() {
                conn.close(CloseReason::Replaced);
            }
        }
    }

    /// The joiner's side of a join: the `greeting` (its ICE servers), `peer-discovery` and the
    /// orb's last status. The greeting comes first so that a client creating its peer connections
    /// on `peer-discovery` has its ICE servers by then.
    fn welcome(&self, conn: &ConnHandle, identity: &Identity, greeting: Option<&ServerMessage>) {
        if let Some(greeting) = greeting {
            conn.send_message(greeting);
        }
        let peers = self.members.iter().map(|m| m.identity.peer_info()).collect();
        conn.send_message(&ServerMessage::PeerDiscovery { peers });
        if !identity.is_ai()
            && let Some(status) = self.ai_status.filter(|_| !self.has_ai())
        {
            conn.send_message(&ServerMessage::AiStatus {
                status,
                session_id: None,
                from_id: None,
            });
        }
    }
}

fn selects(to: &Target, identity: &Identity) -> bool {
    match to {
        Target::All => true,
        Target::User(id) => identity.user_id == *id,
        Target::AllBut(id) => identity.user_id != *id,
        Target::Humans => !identity.is_ai(),
        Target::Coaches => identity.role == UserRole::Coach,
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
    fn new(id: &str) -> Arc<Self> {
        Arc::new(Room {
            id: id.to_owned(),
            state: Mutex::default(),
        })
    }

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
    /// Rooms live in Redis and Redis does not answer: the client should retry shortly.
    #[error("rooms are unavailable right now ({0}); retry shortly")]
    Unavailable(String),
}

/// What the rules let a join do (see [`admit`]).
#[derive(Debug, PartialEq, Eq)]
pub struct Admitted {
    /// The joiner's user id is a member already: that entry (an earlier socket) gives way.
    pub replaces: bool,
    /// The joiner asks for the room's orb.
    pub requests_orb: bool,
}

/// The rules of a join, decided from the room as it is before it: `members` (the joiner's own
/// earlier entry included), whether an orb was asked for and the orb's last status.
///
/// These rules are stated once, here. A single process applies them under the room's lock
/// ([`Registry::join`]); with Redis the join script (`cluster/scripts/join.lua`) must apply the
/// same rules in one atomic step, and the conformance tests hold both modes to them.
pub fn admit<'a>(
    members: impl IntoIterator<Item = &'a Identity>,
    joiner: &Identity,
    max_participants: usize,
    orb_requested: bool,
    ai_status: Option<AiStatus>,
) -> Result<Admitted, JoinError> {
    let (mut count, mut replaces, mut other_ai) = (0, false, false);
    for m in members {
        // The orb with the newer token is the live one, whoever it is: an earlier attempt of the
        // same AiOrb (the same user id) as much as an earlier AiOrb of the room.
        if joiner.is_ai()
            && m.is_ai()
            && let (Some(mine), Some(theirs)) = (joiner.issued_at, m.issued_at)
            && theirs > mine
        {
            return Err(JoinError::StaleOrb);
        }
        count += 1;
        if m.user_id == joiner.user_id {
            replaces = true;
        } else if m.is_ai() {
            other_ai = true;
        }
    }
    if !replaces && count >= max_participants {
        return Err(JoinError::RoomFull(max_participants));
    }
    // The first human asks for an orb, and a human arriving after the last attempt came to
    // nothing asks again.
    let retry = matches!(ai_status, Some(AiStatus::Unavailable | AiStatus::Ended));
    let requests_orb = !joiner.is_ai() && !other_ai && (!orb_requested || retry);
    Ok(Admitted { replaces, requests_orb })
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
    /// Rooms shared with other replicas through Redis; `None`: this process is the only one.
    cluster: Option<Arc<Cluster>>,
}

impl Registry {
    /// Where the rooms' orbs come from.
    pub fn runtime(&self) -> &Arc<dyn OrbRuntime> {
        &self.runtime
    }

    pub fn new(max_participants: usize, runtime: Arc<dyn OrbRuntime>, metrics: Arc<Metrics>) -> Self {
        Self::with_cluster(max_participants, runtime, metrics, None)
    }

    pub fn with_cluster(
        max_participants: usize,
        runtime: Arc<dyn OrbRuntime>,
        metrics: Arc<Metrics>,
        cluster: Option<Arc<Cluster>>,
    ) -> Self {
        Self {
            rooms: Mutex::new(HashMap::new()),
            max_participants: max_participants.max(1),
            runtime,
            metrics,
            cluster,
        }
    }

    pub fn cluster(&self) -> Option<&Arc<Cluster>> {
        self.cluster.as_ref()
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

    fn room_or_new(&self, rooms: &mut HashMap<String, Arc<Room>>, room_id: &str) -> Arc<Room> {
        rooms
            .entry(room_id.to_owned())
            .or_insert_with(|| {
                self.metrics.rooms.inc();
                Room::new(room_id)
            })
            .clone()
    }

    /// Forgets a room that has nobody on this replica (its copy of remote members goes with it).
    fn forget_if_unused(&self, rooms: &mut HashMap<String, Arc<Room>>, room: &Arc<Room>, st: &RoomState) {
        if !st.has_local() && st.pending_joins == 0 && rooms.get(&room.id).is_some_and(|r| Arc::ptr_eq(r, room)) {
            rooms.remove(&room.id);
            self.metrics.rooms.dec();
        }
    }

    /// Whether this replica writes the room's presence: with Redis, the replica of smallest id
    /// among those with members, so one replica at a time writes the whole room's count.
    fn writes_presence(&self, st: &RoomState) -> bool {
        let Some(cluster) = &self.cluster else { return true };
        let mine = cluster.replica();
        let writer = st.members.iter().map(|m| m.remote_replica().unwrap_or(mine)).min();
        writer.is_none_or(|w| w == mine)
    }

    fn report(&self, room_id: &str, presence: Option<Presence>) {
        if let Some(presence) = presence {
            self.runtime.report_presence(room_id, presence);
        }
    }

    /// Sends `event` to every other replica with members that `to` selects.
    fn publish(&self, st: &RoomState, to: &Target, event: impl FnOnce() -> Event) {
        let Some(cluster) = &self.cluster else { return };
        let replicas = st.remote_replicas(to);
        if replicas.is_empty() {
            return;
        }
        let event = event();
        for replica in replicas {
            cluster.publish(&replica, &event);
        }
    }

    /// Adds `identity` to the room, as [`admit`] allows: the joiner gets `peer-discovery`, the
    /// others `user-joined`. A member with the same userId is replaced: its socket is closed and
    /// the others see it leave before the new one joins, so their clients rebuild the peer
    /// connection.
    pub fn join(&self, room_id: &str, conn: &ConnHandle, identity: Identity) -> Result<Arc<Room>, JoinError> {
        self.join_greeted(room_id, conn, identity, None)
    }

    /// [`Registry::join`] with a `greeting` the joiner gets first, only if the room takes it.
    pub fn join_greeted(
        &self,
        room_id: &str,
        conn: &ConnHandle,
        identity: Identity,
        greeting: Option<&ServerMessage>,
    ) -> Result<Arc<Room>, JoinError> {
        let (room, request, presence) = {
            let mut rooms = self.rooms();
            let room = self.room_or_new(&mut rooms, room_id);
            let mut st = room.lock();
            let members = st.members.iter().map(|m| &m.identity);
            let admitted = match admit(
                members,
                &identity,
                self.max_participants,
                st.orb_requested,
                st.ai_status,
            ) {
                Ok(admitted) => admitted,
                Err(e) => {
                    self.forget_if_unused(&mut rooms, &room, &st);
                    return Err(e);
                }
            };
            if admitted.replaces {
                st.remove_user(&identity.user_id, &self.metrics);
            }
            if admitted.requests_orb {
                st.forget_orb_attempt();
            }
            st.welcome(conn, &identity, greeting);
            if !identity.is_ai() {
                match identity.role {
                    UserRole::Coach => st.coach_id = Some(identity.user_id.clone()),
                    UserRole::Client => st.client_id = Some(identity.user_id.clone()),
                    UserRole::Ai => {}
                }
                if st.session_id.is_none() {
                    st.session_id.clone_from(&identity.session_id);
                }
            }
            st.add(identity, Location::Local(conn.clone()), &self.metrics);
            let request = admitted.requests_orb.then(|| OrbRequest {
                room_id: room_id.to_owned(),
                coach_id: st.coach_id.clone(),
                client_id: st.client_id.clone(),
                session_id: st.session_id.clone(),
            });
            let presence = st.presence();
            drop(st);
            (room, request, presence)
        };
        if let Some(request) = request {
            self.runtime.request_orb(request);
        }
        self.runtime.report_presence(room_id, presence);
        Ok(room)
    }

    /// [`Registry::join`] across replicas: the join script decides by the rules of [`admit`]
    /// (room full, stale orb, replacement, orb request) for the whole room, then this replica's copy is brought up to
    /// that point and the joiner is added. Without Redis, [`Registry::join_greeted`] itself.
    /// The joiner gets `greeting` first, only if the room takes it.
    pub async fn join_shared(
        &self,
        room_id: &str,
        conn: &ConnHandle,
        identity: Identity,
        greeting: Option<&ServerMessage>,
    ) -> Result<Arc<Room>, JoinError> {
        let Some(cluster) = &self.cluster else {
            return self.join_greeted(room_id, conn, identity, greeting);
        };
        let room = {
            let mut rooms = self.rooms();
            let room = self.room_or_new(&mut rooms, room_id);
            room.lock().pending_joins += 1;
            room
        };
        let record = MemberRecord::new(&identity, cluster.replica(), conn.id);
        let result = cluster
            .join(room_id, record, self.max_participants, JoinMode::Join)
            .await;
        let (outcome, presence, gap) = {
            let mut rooms = self.rooms();
            let mut st = room.lock();
            st.pending_joins -= 1;
            let outcome = match result {
                Ok(outcome) => outcome,
                Err(e) => {
                    let gap = self.replay(&room.id, &mut st);
                    self.forget_if_unused(&mut rooms, &room, &st);
                    drop(st);
                    drop(rooms);
                    self.resync_gap(gap);
                    return Err(match e {
                        ClusterError::RoomFull(n) => JoinError::RoomFull(n),
                        ClusterError::StaleOrb => JoinError::StaleOrb,
                        other => JoinError::Unavailable(other.to_string()),
                    });
                }
            };
            if st.seq + 1 < outcome.seq {
                // Changes this copy has not heard of yet: the script's list is the room as it was.
                self.sync_members(&room.id, &mut st, &outcome.members, true);
            }
            st.remove_user(&identity.user_id, &self.metrics);
            if outcome.request {
                st.forget_orb_attempt();
            } else if st.ai_status.is_none() {
                st.ai_status = outcome.ai_status;
            }
            st.welcome(conn, &identity, greeting);
            st.add(identity, Location::Local(conn.clone()), &self.metrics);
            st.seq = outcome.seq;
            let gap = self.replay(&room.id, &mut st);
            let presence = self.writes_presence(&st).then(|| st.presence());
            (outcome, presence, gap)
        };
        self.resync_gap(gap);
        if outcome.request {
            self.runtime.request_orb(OrbRequest {
                room_id: room_id.to_owned(),
                coach_id: outcome.coach_id,
                client_id: outcome.client_id,
                session_id: outcome.session_id,
            });
        }
        self.report(room_id, presence);
        Ok(room)
    }

    /// Removes the connection from the room (if it is still the member there); the others get
    /// `user-left`. An empty room is removed from the registry.
    pub fn leave(&self, room: &Arc<Room>, conn_id: u64) -> bool {
        let presence = {
            let mut rooms = self.rooms();
            let mut st = room.lock();
            let Some(i) = st.members.iter().position(|m| m.is_conn(conn_id)) else {
                return false;
            };
            let gone = st.remove(i, &self.metrics);
            if let Some(cluster) = &self.cluster {
                cluster.leave(&room.id, MemberRecord::new(&gone.identity, cluster.replica(), conn_id));
            }
            self.forget_if_unused(&mut rooms, room, &st);
            self.writes_presence(&st).then(|| st.presence())
        };
        self.report(&room.id, presence);
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
                Some(m) => match (&m.at, &self.cluster) {
                    (Location::Local(conn), _) => Relayed::Delivered(usize::from(conn.send(out))),
                    (Location::Remote { replica, .. }, Some(cluster)) => {
                        cluster.publish(replica, &deliver(&room.id, Target::User(target.to_owned()), &out, None));
                        Relayed::Delivered(1)
                    }
                    // Remote members exist only with a cluster.
                    (Location::Remote { .. }, None) => Relayed::UnknownPeer,
                },
                None => Relayed::UnknownPeer,
            },
            None => {
                let local = st.deliver_local(&Target::All, Some(from_conn), &out);
                self.publish(&st, &Target::All, || deliver(&room.id, Target::All, &out, None));
                Relayed::Delivered(local + st.remote_members(&Target::All))
            }
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
            let Some(presence) = st.advance_activity(at) else {
                return false;
            };
            self.publish(&st, &Target::All, || Event::Activity {
                room: room.id.clone(),
                at_ms: unix_ms(presence.last_activity),
            });
            self.writes_presence(&st).then_some(presence)
        };
        self.report(&room.id, presence);
        true
    }

    /// The orb's own `ai_status`: relayed to everyone else and remembered for late joiners.
    pub fn orb_status(&self, room: &Room, from_conn: u64, status: AiStatus, session_id: Option<String>) -> Relayed {
        let mut st = room.lock();
        let Some(from) = st.member(from_conn).map(|m| m.identity.user_id.clone()) else {
            return Relayed::NotMember;
        };
        let out = Outbound::message(&ServerMessage::AiStatus {
            status,
            session_id,
            from_id: Some(from.clone()),
        });
        Relayed::Delivered(self.set_status(&room.id, &mut st, status, &Target::AllBut(from), &out))
    }

    /// Records the orb's status and tells the members `to` selects, on every replica.
    fn set_status(&self, room_id: &str, st: &mut RoomState, status: AiStatus, to: &Target, out: &Outbound) -> usize {
        st.ai_status = Some(status);
        let receivers = st.members.iter().filter(|m| selects(to, &m.identity)).count();
        match &self.cluster {
            // Through Redis's member list, to this replica too, rather than from this copy: a
            // member joining anywhere right now gets it either so or from its join script, and
            // whoever got it knows Redis has it.
            Some(cluster) if cluster.is_available() => {
                cluster.set_status(room_id, status, &deliver(room_id, to.clone(), out, Some(status)));
            }
            _ => {
                st.deliver_local(to, None, out);
            }
        }
        receivers
    }

    /// Delivers the orb's session summary to the room's coach(es).
    pub fn to_coaches(&self, room: &Room, msg: &ServerMessage) -> usize {
        let st = room.lock();
        let out = Outbound::message(msg);
        self.publish(&st, &Target::Coaches, || deliver(&room.id, Target::Coaches, &out, None));
        st.deliver_local(&Target::Coaches, None, &out) + st.remote_members(&Target::Coaches)
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
        let out = Outbound::message(&ServerMessage::AiStatus {
            status,
            session_id: None,
            from_id: None,
        });
        self.set_status(room_id, &mut st, status, &Target::Humans, &out);
        true
    }

    /// An event from another replica's script or relay. A gap in the membership numbers (a lost
    /// event) makes the room be re-read.
    pub fn apply_event(&self, event: Event) {
        let Some(room) = self.room(event.room()) else { return };
        let (presence, gap) = {
            let mut st = room.lock();
            // Everything waits for joins of this replica in progress, so that a joiner gets what
            // Redis sent after its join.
            if st.pending_joins > 0 {
                st.buffered.push(event);
                return;
            }
            let (changed, gap) = self.apply_locked(&mut st, event);
            let presence = (changed && self.writes_presence(&st)).then(|| st.presence());
            (presence, gap.then(|| room.id.clone()))
        };
        self.report(&room.id, presence);
        self.resync_gap(gap);
    }

    /// Applies an event to this replica's copy; returns whether presence changed and whether
    /// the event showed a gap in the membership numbers.
    fn apply_locked(&self, st: &mut RoomState, event: Event) -> (bool, bool) {
        match event {
            Event::Deliver {
                to, text, ai_status, ..
            } => {
                if ai_status.is_some() {
                    st.ai_status = ai_status;
                }
                let out = Outbound {
                    text: text.into(),
                    received_at: None,
                };
                st.deliver_local(&to, None, &out);
                (false, false)
            }
            Event::Activity { at_ms, .. } => {
                let at = SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(at_ms);
                (st.advance_activity(at).is_some(), false)
            }
            membership => (true, self.apply_membership(st, membership)),
        }
    }

    /// Applies a numbered join or leave to this replica's copy; returns whether numbers were
    /// skipped (a lost event: the room must be re-read).
    fn apply_membership(&self, st: &mut RoomState, event: Event) -> bool {
        let (Event::Joined { seq, .. } | Event::Left { seq, .. }) = &event else {
            return false;
        };
        let seq = *seq;
        if seq <= st.seq {
            return false;
        }
        let gap = seq > st.seq + 1;
        st.seq = seq;
        let mine = self.cluster.as_ref().map(|c| c.replica().to_owned());
        match event {
            Event::Joined { member, request, .. } => {
                if request {
                    st.forget_orb_attempt();
                }
                let own = mine.as_deref() == Some(member.replica.as_str());
                if own || st.members.iter().any(|m| m.is_record(&member)) {
                    // Our own join (applied when its script answered) or one this copy has.
                    return gap;
                }
                st.remove_user(&member.user_id, &self.metrics);
                let at = Location::Remote {
                    replica: member.replica.clone(),
                    conn: member.conn,
                };
                st.add(member.identity(), at, &self.metrics);
            }
            Event::Left { member, .. } => {
                if let Some(i) = st.members.iter().position(|m| m.is_record(&member)) {
                    st.remove(i, &self.metrics);
                }
            }
            _ => {}
        }
        gap
    }

    /// Applies the events that waited for this replica's joins, up to the next join still
    /// waiting for its script. Returns the room if they showed a gap.
    fn replay(&self, room_id: &str, st: &mut RoomState) -> Option<String> {
        let mine = self.cluster.as_ref().map(|c| c.replica().to_owned());
        let mut gap = false;
        while !st.buffered.is_empty() {
            let waiting_own = matches!(&st.buffered[0], Event::Joined { member, seq, .. }
                if mine.as_deref() == Some(member.replica.as_str()) && *seq > st.seq && st.member(member.conn).is_none());
            if waiting_own && st.pending_joins > 0 {
                break;
            }
            let event = st.buffered.remove(0);
            gap |= self.apply_locked(st, event).1;
        }
        gap.then(|| room_id.to_owned())
    }

    fn resync_gap(&self, gap: Option<String>) {
        if let (Some(room), Some(cluster)) = (gap, &self.cluster) {
            cluster.request_resync(room);
        }
    }

    /// Brings the copy's remote members in line with `members` (from Redis). `remove` also drops
    /// remote members Redis does not list; without it (Redis just lost its data and the other
    /// replicas are still restoring theirs) only additions are taken.
    fn sync_members(&self, room_id: &str, st: &mut RoomState, members: &[MemberRecord], remove: bool) {
        let mut members = members.to_vec();
        members.sort_by_key(|m| m.join_seq);
        let mine = self.cluster.as_ref().map(|c| c.replica().to_owned());
        if remove {
            while let Some(i) = st
                .members
                .iter()
                .position(|m| m.local().is_none() && !members.iter().any(|r| m.is_record(r)))
            {
                st.remove(i, &self.metrics);
            }
        }
        for record in &members {
            if mine.as_deref() == Some(record.replica.as_str()) {
                if st.member(record.conn).is_none()
                    && st.pending_joins == 0
                    && let Some(cluster) = &self.cluster
                {
                    // An entry of a socket of ours that is gone (its leave was lost): remove it.
                    cluster.leave(room_id, record.clone());
                }
                continue;
            }
            if st.members.iter().any(|m| m.is_record(record)) {
                continue;
            }
            st.remove_user(&record.user_id, &self.metrics);
            let at = Location::Remote {
                replica: record.replica.clone(),
                conn: record.conn,
            };
            st.add(record.identity(), at, &self.metrics);
        }
    }

    /// Re-reads a room from Redis (see [`Registry::sync_members`]).
    pub fn sync_room(&self, room_id: &str, snapshot: Snapshot, remove: bool) {
        let Some(room) = self.room(room_id) else { return };
        let presence = {
            let mut st = room.lock();
            if st.pending_joins > 0 || (remove && snapshot.seq < st.seq) {
                return;
            }
            self.sync_members(room_id, &mut st, &snapshot.members, remove);
            st.seq = st.seq.max(snapshot.seq);
            if st.ai_status.is_none() {
                st.ai_status = snapshot.ai_status;
            }
            self.writes_presence(&st).then(|| st.presence())
        };
        self.report(room_id, presence);
    }
}

/// The shared-state side of the registry, used by [`crate::cluster`].
impl Registry {
    /// Every member whose socket is on this replica, as Redis should list it.
    pub fn local_members(&self) -> Vec<(String, MemberRecord, usize)> {
        let Some(cluster) = &self.cluster else { return vec![] };
        let rooms: Vec<Arc<Room>> = self.rooms().values().cloned().collect();
        let mut out = vec![];
        for room in rooms {
            let st = room.lock();
            for m in &st.members {
                if let Some(conn) = m.local() {
                    let record = MemberRecord::new(&m.identity, cluster.replica(), conn.id);
                    out.push((room.id.clone(), record, self.max_participants));
                }
            }
        }
        out
    }

    /// Closes a socket of this replica whose place in the room someone else holds now.
    pub fn evict_local(&self, room_id: &str, conn_id: u64) {
        let Some(room) = self.room(room_id) else { return };
        let st = room.lock();
        if let Some(conn) = st.member(conn_id).and_then(Member::local) {
            conn.close(CloseReason::Replaced);
        }
    }

    pub fn room_ids(&self) -> Vec<String> {
        self.rooms().keys().cloned().collect()
    }

    /// Redis lost its data: its new event numbers start again from 1.
    pub fn forget_sequences(&self) {
        for room in self.rooms().values() {
            room.lock().seq = 0;
        }
    }

    /// The other replicas this replica's copies name.
    pub fn remote_replicas(&self) -> BTreeSet<String> {
        let rooms: Vec<Arc<Room>> = self.rooms().values().cloned().collect();
        rooms
            .iter()
            .flat_map(|room| room.lock().remote_replicas(&Target::All))
            .collect()
    }

    /// Members of replicas that are gone leave every copy here.
    pub fn drop_replicas(&self, gone: &std::collections::HashSet<String>) {
        let rooms: Vec<Arc<Room>> = self.rooms().values().cloned().collect();
        for room in rooms {
            let presence = {
                let mut st = room.lock();
                let mut changed = false;
                while let Some(i) = st
                    .members
                    .iter()
                    .position(|m| m.remote_replica().is_some_and(|r| gone.contains(r)))
                {
                    st.remove(i, &self.metrics);
                    changed = true;
                }
                (changed && self.writes_presence(&st)).then(|| st.presence())
            };
            self.report(&room.id, presence);
        }
    }
}

fn deliver(room_id: &str, to: Target, out: &Outbound, ai_status: Option<AiStatus>) -> Event {
    Event::Deliver {
        room: room_id.to_owned(),
        to,
        text: out.text.as_str().to_owned(),
        ai_status,
    }
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
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
            orb_uid: None,
            expires_at: None,
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
            orb_uid: None,
            expires_at: None,
        }
    }

    fn registry(max: usize) -> (Registry, Arc<RecordingRuntime>) {
        let runtime = Arc::new(RecordingRuntime::default());
        (Registry::new(max, runtime.clone(), Metrics::shared()), runtime)
    }

    /// The rules both join implementations follow (see [`admit`]).
    #[test]
    fn admit_stale_orbs_full_rooms_replacement_and_orb_requests() {
        let orb = |id: &str, iat| Identity {
            issued_at: Some(iat),
            ..ai(id)
        };
        let admitted = |replaces, requests_orb| Ok(Admitted { replaces, requests_orb });
        // An older token than an orb present is stale, whoever that orb is: itself included.
        let live = [human("c", UserRole::Coach), orb("ai-orb-x", 200)];
        assert_eq!(
            admit(&live, &orb("ai-orb-x", 100), 2, true, None),
            Err(JoinError::StaleOrb)
        );
        assert_eq!(
            admit(&live, &orb("ai-orb-w", 100), 3, true, None),
            Err(JoinError::StaleOrb)
        );
        assert_eq!(
            admit(&live, &orb("ai-orb-x", 200), 2, true, None),
            admitted(true, false)
        );
        assert_eq!(
            admit(&live, &orb("ai-orb-x", 300), 2, true, None),
            admitted(true, false)
        );
        // Full: a newcomer is refused, a member rejoining is not.
        assert_eq!(
            admit(&live, &human("k", UserRole::Client), 2, true, None),
            Err(JoinError::RoomFull(2))
        );
        assert_eq!(
            admit(&live, &human("c", UserRole::Coach), 2, true, None),
            admitted(true, false)
        );
        // The orb request: the first human; again after the attempt came to nothing; never while
        // an orb is there, and never by the orb.
        let humans = [human("c", UserRole::Coach)];
        let client = human("k", UserRole::Client);
        assert_eq!(admit(&[], &client, 2, false, None), admitted(false, true));
        assert_eq!(
            admit(&humans, &client, 2, true, Some(AiStatus::Queued)),
            admitted(false, false)
        );
        assert_eq!(
            admit(&humans, &client, 2, true, Some(AiStatus::Ended)),
            admitted(false, true)
        );
        assert_eq!(
            admit(&live, &client, 3, true, Some(AiStatus::Unavailable)),
            admitted(false, false)
        );
        assert_eq!(admit(&[], &ai("a"), 2, false, None), admitted(false, false));
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
