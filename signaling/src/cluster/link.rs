//! The Redis side of [`crate::cluster`]: one ordered command queue, the inbox subscription, the
//! heartbeat and sweep, and the restore after an outage.
//!
//! Every write goes through one task and one connection in the order the registry queued it, so
//! a member's leave is never overtaken by its later rejoin and relays of one sender keep their
//! order; consecutive publishes are pipelined.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{AsyncCommands, Script};
use serde::Deserialize;
use tokio::sync::{Notify, mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::{Event, HEARTBEAT_INTERVAL, LIVENESS_TTL, MemberRecord, envelope};
use crate::metrics::Metrics;
use crate::protocol::AiStatus;
use crate::server::AppState;

const PREFIX: &str = "orb:";
/// Commands queued for Redis before relays to other replicas are dropped (counted): a replica
/// cut off from Redis must not grow without bound.
const QUEUE: usize = 16_384;
/// The same bound in bytes: 16,384 relays of a 64 KiB frame would be a gigabyte.
const QUEUE_BYTES: usize = 64 << 20;
/// What a command without a payload counts against [`QUEUE_BYTES`] (its member record, the
/// channel's slot).
const OP_BYTES: usize = 256;
/// Publishes sent in one pipeline.
const PIPELINE: usize = 256;
/// A command that takes longer fails: joins get `unavailable` rather than waiting on a dead link.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(3);
const SUBSCRIBE_RETRY: Duration = Duration::from_millis(500);

fn room_key(room: &str) -> String {
    format!("{PREFIX}room:{room}")
}
fn inbox_prefix() -> String {
    format!("{PREFIX}inbox:")
}
fn liveness_key(replica: &str) -> String {
    format!("{PREFIX}replica:{replica}")
}
fn replica_rooms_key(replica: &str) -> String {
    format!("{PREFIX}replica:{replica}:rooms")
}
const EPOCH_KEY: &str = "orb:epoch";
const REPLICAS_KEY: &str = "orb:replicas";
/// The replicas that read the compact envelope ([`envelope`]): each adds itself on every
/// heartbeat and a swept one is removed (both in the scripts); the others get JSON, so replicas of an older version keep reading their inbox
/// through a rolling upgrade.
const COMPACT_READERS_KEY: &str = "orb:compact-readers";

#[derive(Clone, Debug)]
pub struct RedisSettings {
    /// `redis://` or `rediss://` (TLS), with a password or an ACL user in the URL if needed.
    pub url: String,
    pub replica_id: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("invalid --redis-url: {0}")]
    Url(String),
    #[error("Redis is unavailable: {0}")]
    Unavailable(String),
    #[error("the room already has {0} participants")]
    RoomFull(usize),
    #[error("a newer orb serves this room; this orb's token is from an earlier one")]
    StaleOrb,
    /// A restore found the user joined again elsewhere meanwhile.
    #[error("the user joined again on another connection")]
    Taken,
}

/// What the join script decided.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JoinOutcome {
    pub seq: u64,
    /// The connection was already the member (a restore of an entry Redis kept).
    #[serde(default)]
    pub unchanged: bool,
    /// This join asks for the room's orb.
    #[serde(default)]
    pub request: bool,
    /// The other members, before this join.
    #[serde(default)]
    pub members: Vec<MemberRecord>,
    pub replaced: Option<MemberRecord>,
    pub ai_status: Option<AiStatus>,
    pub coach_id: Option<String>,
    pub client_id: Option<String>,
    pub session_id: Option<String>,
}

/// A room as Redis has it.
#[derive(Debug)]
pub struct Snapshot {
    pub seq: u64,
    pub members: Vec<MemberRecord>,
    pub ai_status: Option<AiStatus>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JoinMode {
    Join,
    Restore,
}

enum Op {
    Join {
        room: String,
        member: MemberRecord,
        max: usize,
        mode: JoinMode,
        reply: oneshot::Sender<Result<JoinOutcome, ClusterError>>,
    },
    Leave {
        room: String,
        member: MemberRecord,
    },
    Publish {
        replica: String,
        payload: String,
    },
    SetStatus {
        room: String,
        status: AiStatus,
        event: String,
    },
    Snapshot {
        room: String,
        reply: oneshot::Sender<redis::RedisResult<Snapshot>>,
    },
}

impl Op {
    /// Its share of [`QUEUE_BYTES`] while queued.
    fn bytes(&self) -> usize {
        OP_BYTES
            + match self {
                Op::Publish { replica, payload } => replica.len() + payload.len(),
                Op::SetStatus { room, event, .. } => room.len() + event.len(),
                Op::Join { room, .. } | Op::Leave { room, .. } | Op::Snapshot { room, .. } => room.len(),
            }
    }
}

struct Scripts {
    join: Script,
    leave: Script,
    reap: Script,
    heartbeat: Script,
    status: Script,
}

impl Scripts {
    fn new() -> Self {
        // Every script starts with the shared helpers (Redis scripts cannot import).
        let script = |body: &str| Script::new(&format!("{}{body}", include_str!("scripts/prelude.lua")));
        Self {
            join: script(include_str!("scripts/join.lua")),
            leave: script(include_str!("scripts/leave.lua")),
            reap: script(include_str!("scripts/reap.lua")),
            heartbeat: Script::new(include_str!("scripts/heartbeat.lua")),
            status: script(include_str!("scripts/status.lua")),
        }
    }
}

/// A replica's handle on the shared room state. Cheap calls that never block: they queue work
/// for the Redis task; only [`Cluster::join`] waits for its answer.
pub struct Cluster {
    replica: String,
    client: redis::Client,
    ops: mpsc::Sender<Op>,
    ops_rx: Mutex<Option<mpsc::Receiver<Op>>>,
    /// Bytes of the commands in `ops` ([`Op::bytes`]), at most [`QUEUE_BYTES`].
    queued_bytes: AtomicUsize,
    /// The Redis data lifetime this replica registered under (`None` before the first contact).
    epoch: Mutex<Option<String>>,
    /// The last command and the inbox subscription both worked.
    commands_ok: AtomicBool,
    subscribed: AtomicBool,
    /// Leaves that could not be written; retried by the next restore.
    pending_leaves: Mutex<Vec<(String, MemberRecord)>>,
    restore: Notify,
    /// Set when Redis came back without its data: the next restore only adds members.
    data_lost: AtomicBool,
    resyncs: mpsc::UnboundedSender<String>,
    resyncs_rx: Mutex<Option<mpsc::UnboundedReceiver<String>>>,
    scripts: Scripts,
    metrics: Arc<Metrics>,
    /// The replicas known to read the compact envelope, as of the last sweep.
    compact_readers: Mutex<HashSet<String>>,
}

impl Cluster {
    pub fn new(settings: &RedisSettings, metrics: Arc<Metrics>) -> Result<Self, ClusterError> {
        let client = redis::Client::open(settings.url.as_str()).map_err(|e| ClusterError::Url(e.to_string()))?;
        let (ops, ops_rx) = mpsc::channel(QUEUE);
        let (resyncs, resyncs_rx) = mpsc::unbounded_channel();
        Ok(Self {
            replica: settings.replica_id.clone(),
            client,
            ops,
            ops_rx: Mutex::new(Some(ops_rx)),
            queued_bytes: AtomicUsize::new(0),
            epoch: Mutex::new(None),
            commands_ok: AtomicBool::new(false),
            subscribed: AtomicBool::new(false),
            pending_leaves: Mutex::default(),
            restore: Notify::new(),
            data_lost: AtomicBool::new(false),
            resyncs,
            resyncs_rx: Mutex::new(Some(resyncs_rx)),
            scripts: Scripts::new(),
            metrics,
            compact_readers: Mutex::default(),
        })
    }

    pub fn replica(&self) -> &str {
        &self.replica
    }

    /// Whether joins can be served: Redis answers and this replica hears its inbox.
    pub fn is_available(&self) -> bool {
        self.commands_ok.load(Ordering::Relaxed) && self.subscribed.load(Ordering::Relaxed)
    }

    /// Starts the Redis tasks; they end with `shutdown`.
    pub fn start(self: &Arc<Self>, state: Arc<AppState>, shutdown: CancellationToken) {
        let ops_rx = self.ops_rx.lock().unwrap_or_else(|e| e.into_inner()).take();
        let resyncs_rx = self.resyncs_rx.lock().unwrap_or_else(|e| e.into_inner()).take();
        let (Some(ops_rx), Some(resyncs_rx)) = (ops_rx, resyncs_rx) else {
            return;
        };
        let config = ConnectionManagerConfig::new()
            .set_response_timeout(Some(RESPONSE_TIMEOUT))
            .set_connection_timeout(Some(RESPONSE_TIMEOUT))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_secs(1));
        let con = match ConnectionManager::new_lazy_with_config(self.client.clone(), config) {
            Ok(con) => con,
            Err(e) => {
                warn!(error = %e, "cannot set up the Redis connection");
                return;
            }
        };
        // The command queue outlives the others: the leaves of closing sockets still go out.
        tokio::spawn(self.clone().run_commands(con.clone(), ops_rx));
        let tasks = [
            tokio::spawn(self.clone().run_inbox(state.clone())),
            tokio::spawn(self.clone().run_heartbeat(con, state.clone())),
            tokio::spawn(self.clone().run_restore(state.clone())),
            tokio::spawn(self.clone().run_resyncs(state, resyncs_rx)),
        ];
        tokio::spawn(async move {
            shutdown.cancelled().await;
            // Connections are closing now and their leaves are queued; let them reach Redis.
            tokio::time::sleep(Duration::from_millis(200)).await;
            for task in tasks {
                task.abort();
            }
        });
    }

    fn queue(&self, op: Op) -> bool {
        let bytes = op.bytes();
        let queued = self.queued_bytes.fetch_add(bytes, Ordering::Relaxed) + bytes <= QUEUE_BYTES;
        if queued && self.ops.try_send(op).is_ok() {
            return true;
        }
        self.queued_bytes.fetch_sub(bytes, Ordering::Relaxed);
        self.metrics.cluster_dropped.inc();
        false
    }

    /// `op` left the queue: its bytes are free again.
    fn dequeued(&self, op: Op) -> Op {
        self.queued_bytes.fetch_sub(op.bytes(), Ordering::Relaxed);
        op
    }

    /// Runs the join script for `member`: the room's checks, the orb request decision, and the
    /// event to the other replicas.
    pub async fn join(
        &self,
        room: &str,
        member: MemberRecord,
        max: usize,
        mode: JoinMode,
    ) -> Result<JoinOutcome, ClusterError> {
        if !self.is_available() {
            return Err(ClusterError::Unavailable("no connection to Redis".into()));
        }
        let (reply, answer) = oneshot::channel();
        if !self.queue(Op::Join {
            room: room.to_owned(),
            member,
            max,
            mode,
            reply,
        }) {
            return Err(ClusterError::Unavailable("the Redis queue is full".into()));
        }
        answer
            .await
            .unwrap_or_else(|_| Err(ClusterError::Unavailable("shutting down".into())))
    }

    /// Removes the member (if still that connection) and tells the other replicas.
    pub fn leave(&self, room: &str, member: MemberRecord) {
        if !self.queue(Op::Leave {
            room: room.to_owned(),
            member: member.clone(),
        }) {
            self.lock_pending().push((room.to_owned(), member));
        }
    }

    /// Sends `event` to another replica's inbox.
    pub fn publish(&self, replica: &str, event: &Event) {
        let compact = self
            .compact_readers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(replica);
        let payload = if compact {
            envelope::encode(event)
        } else {
            envelope::encode_json(event)
        };
        self.queue(Op::Publish {
            replica: replica.to_owned(),
            payload,
        });
    }

    /// Remembers the orb's status for members who join later on any replica and delivers
    /// `event` (its message) to every replica with members in the room now, this one included.
    pub fn set_status(&self, room: &str, status: AiStatus, event: &Event) {
        self.queue(Op::SetStatus {
            room: room.to_owned(),
            status,
            // The script tells every replica in the room at once: JSON, which all of them read.
            event: envelope::encode_json(event),
        });
    }

    /// Asks for a room to be re-read (after a gap in its event numbers).
    pub fn request_resync(&self, room: String) {
        let _ = self.resyncs.send(room);
    }

    async fn run_resyncs(self: Arc<Self>, state: Arc<AppState>, mut rooms: mpsc::UnboundedReceiver<String>) {
        while let Some(room) = rooms.recv().await {
            if let Ok(snapshot) = self.snapshot(&room).await {
                state.registry.sync_room(&room, snapshot, true);
            }
        }
    }

    async fn snapshot(&self, room: &str) -> redis::RedisResult<Snapshot> {
        let (reply, answer) = oneshot::channel();
        if !self.queue(Op::Snapshot {
            room: room.to_owned(),
            reply,
        }) {
            return Err(redis::RedisError::from((redis::ErrorKind::Client, "queue full")));
        }
        answer
            .await
            .unwrap_or_else(|_| Err(redis::RedisError::from((redis::ErrorKind::Client, "shutting down"))))
    }

    fn lock_pending(&self) -> std::sync::MutexGuard<'_, Vec<(String, MemberRecord)>> {
        self.pending_leaves.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn epoch(&self) -> Option<String> {
        self.epoch.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn show_health(&self) {
        self.metrics.redis_up.set(i64::from(self.is_available()));
    }

    fn mark(&self, ok: bool) {
        let was = self.commands_ok.swap(ok, Ordering::Relaxed);
        self.show_health();
        if was != ok {
            if ok {
                info!("Redis reachable");
            } else {
                warn!("Redis unreachable: joins are refused until it answers again");
            }
        }
    }

    async fn run_commands(self: Arc<Self>, mut con: ConnectionManager, mut rx: mpsc::Receiver<Op>) {
        let mut carry = None;
        loop {
            let op = match carry.take() {
                Some(op) => op,
                None => match rx.recv().await {
                    Some(op) => self.dequeued(op),
                    None => return,
                },
            };
            match op {
                Op::Publish { .. } => {
                    let mut pipe = redis::pipe();
                    let mut n = 0;
                    let mut next = Some(op);
                    while let Some(op) = next.take() {
                        match op {
                            Op::Publish { replica, payload } => {
                                pipe.publish(format!("{}{replica}", inbox_prefix()), payload).ignore();
                            }
                            other => {
                                carry = Some(other);
                                break;
                            }
                        }
                        n += 1;
                        if n < PIPELINE {
                            next = rx.try_recv().ok().map(|op| self.dequeued(op));
                        }
                    }
                    let result: redis::RedisResult<()> = pipe.query_async(&mut con).await;
                    if let Err(e) = result {
                        self.metrics.cluster_dropped.inc_by(n as u64);
                        debug!(error = %e, dropped = n, "publish to Redis failed");
                        self.mark(false);
                    }
                }
                Op::Join {
                    room,
                    member,
                    max,
                    mode,
                    reply,
                } => {
                    let result = self.run_join(&mut con, &room, &member, max, mode).await;
                    let _ = reply.send(result);
                }
                Op::Leave { room, member } => {
                    let result: redis::RedisResult<u64> = self
                        .scripts
                        .leave
                        .key(room_key(&room))
                        .key(replica_rooms_key(&self.replica))
                        .arg(inbox_prefix())
                        .arg(&room)
                        .arg(&member.user_id)
                        .arg(&member.replica)
                        .arg(member.conn.to_string())
                        .invoke_async(&mut con)
                        .await;
                    if let Err(e) = result {
                        debug!(error = %e, "leave not written; kept for the next restore");
                        self.lock_pending().push((room, member));
                        self.mark(false);
                    }
                }
                Op::SetStatus { room, status, event } => {
                    let result: redis::RedisResult<i64> = self
                        .scripts
                        .status
                        .key(room_key(&room))
                        .arg(inbox_prefix())
                        .arg(envelope::status_name(status))
                        .arg(event)
                        .invoke_async(&mut con)
                        .await;
                    if let Err(e) = result {
                        self.metrics.cluster_dropped.inc();
                        debug!(error = %e, "status not written to Redis");
                        self.mark(false);
                    }
                }
                Op::Snapshot { room, reply } => {
                    let result = read_snapshot(&mut con, &room).await;
                    let _ = reply.send(result);
                }
            }
        }
    }

    async fn run_join(
        &self,
        con: &mut ConnectionManager,
        room: &str,
        member: &MemberRecord,
        max: usize,
        mode: JoinMode,
    ) -> Result<JoinOutcome, ClusterError> {
        let epoch = self
            .epoch()
            .ok_or_else(|| ClusterError::Unavailable("not registered with Redis yet".into()))?;
        let result: redis::RedisResult<String> = self
            .scripts
            .join
            .key(room_key(room))
            .key(EPOCH_KEY)
            .key(replica_rooms_key(&self.replica))
            .arg(epoch)
            .arg(inbox_prefix())
            .arg(room)
            .arg(&member.user_id)
            .arg(serde_json::to_string(member).expect("members always serialise"))
            .arg(max)
            .arg(match mode {
                JoinMode::Join => "join",
                JoinMode::Restore => "restore",
            })
            .invoke_async(con)
            .await;
        match result {
            Ok(json) => {
                self.mark(true);
                serde_json::from_str(&json)
                    .map_err(|e| ClusterError::Unavailable(format!("unexpected join reply: {e}")))
            }
            Err(e) => match e.code() {
                Some("FULL") => Err(ClusterError::RoomFull(max)),
                Some("STALE") => Err(ClusterError::StaleOrb),
                Some("TAKEN") => Err(ClusterError::Taken),
                Some("EPOCH") => {
                    // Redis lost its data since this replica registered: restore first.
                    self.restore.notify_one();
                    Err(ClusterError::Unavailable("Redis restarted; restoring rooms".into()))
                }
                _ => {
                    self.mark(false);
                    Err(ClusterError::Unavailable(e.to_string()))
                }
            },
        }
    }

    /// Listens on this replica's inbox, reconnecting after any loss; every (re)subscription is
    /// followed by a restore, since events may have been missed while it was down.
    async fn run_inbox(self: Arc<Self>, state: Arc<AppState>) {
        use futures::StreamExt;
        let channel = format!("{}{}", inbox_prefix(), self.replica);
        loop {
            let pubsub = tokio::time::timeout(RESPONSE_TIMEOUT, async {
                let mut pubsub = self.client.get_async_pubsub().await?;
                pubsub.subscribe(&channel).await?;
                redis::RedisResult::Ok(pubsub)
            })
            .await;
            let mut pubsub = match pubsub {
                Ok(Ok(pubsub)) => pubsub,
                Ok(Err(e)) => {
                    debug!(error = %e, "cannot subscribe to the inbox");
                    tokio::time::sleep(SUBSCRIBE_RETRY).await;
                    continue;
                }
                Err(_) => continue,
            };
            self.subscribed.store(true, Ordering::Relaxed);
            self.show_health();
            self.restore.notify_one();
            let mut messages = pubsub.on_message();
            while let Some(msg) = messages.next().await {
                let Ok(payload) = msg.get_payload::<String>() else {
                    continue;
                };
                match envelope::decode(&payload) {
                    Ok(event) => state.registry.apply_event(event),
                    Err(e) => warn!(error = %e, "unreadable inbox event"),
                }
            }
            self.subscribed.store(false, Ordering::Relaxed);
            self.show_health();
            warn!("lost the Redis inbox subscription; reconnecting");
            tokio::time::sleep(SUBSCRIBE_RETRY).await;
        }
    }

    /// Refreshes liveness every [`HEARTBEAT_INTERVAL`], notices a Redis that lost its data or
    /// swept this replica, and sweeps replicas that stopped refreshing.
    async fn run_heartbeat(self: Arc<Self>, mut con: ConnectionManager, state: Arc<AppState>) {
        let mut tick = tokio::time::interval(HEARTBEAT_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let fresh_epoch = super::default_replica_id();
        // When each remote replica was first seen without liveness (for the copies' audit).
        let mut missing_since: HashMap<String, Instant> = HashMap::new();
        loop {
            tick.tick().await;
            let beat: redis::RedisResult<(String, Option<String>)> = self
                .scripts
                .heartbeat
                .key(EPOCH_KEY)
                .key(liveness_key(&self.replica))
                .key(REPLICAS_KEY)
                .key(COMPACT_READERS_KEY)
                .arg(&fresh_epoch)
                .arg(&self.replica)
                .arg(LIVENESS_TTL.as_millis() as u64)
                .invoke_async(&mut con)
                .await;
            let (epoch, previous) = match beat {
                Ok(beat) => beat,
                Err(e) => {
                    debug!(error = %e, "heartbeat failed");
                    self.mark(false);
                    continue;
                }
            };
            self.mark(true);
            let known = self.epoch();
            if known.as_deref() != Some(epoch.as_str()) {
                let first = known.is_none();
                *self.epoch.lock().unwrap_or_else(|e| e.into_inner()) = Some(epoch.clone());
                if !first {
                    warn!("Redis lost its room state (restarted); restoring this replica's members");
                    state.registry.forget_sequences();
                    self.data_lost.store(true, Ordering::Relaxed);
                }
                self.restore.notify_one();
            } else if previous.as_deref() != Some(epoch.as_str()) {
                warn!("this replica was swept as dead (liveness expired); restoring its members");
                self.restore.notify_one();
            }
            if let Err(e) = self.sweep(&mut con, &state, &mut missing_since).await {
                debug!(error = %e, "sweep failed");
            }
        }
    }

    async fn sweep(
        &self,
        con: &mut ConnectionManager,
        state: &AppState,
        missing_since: &mut HashMap<String, Instant>,
    ) -> redis::RedisResult<()> {
        let readers: HashSet<String> = con.smembers(COMPACT_READERS_KEY).await?;
        *self.compact_readers.lock().unwrap_or_else(|e| e.into_inner()) = readers;
        let mut replicas: HashSet<String> = con.smembers(REPLICAS_KEY).await?;
        replicas.extend(state.registry.remote_replicas());
        replicas.remove(&self.replica);
        let mut missing = HashSet::new();
        for replica in replicas {
            let alive: bool = con.exists(liveness_key(&replica)).await?;
            if alive {
                continue;
            }
            let reaped: i64 = self
                .scripts
                .reap
                .key(liveness_key(&replica))
                .key(replica_rooms_key(&replica))
                .key(REPLICAS_KEY)
                .key(COMPACT_READERS_KEY)
                .arg(inbox_prefix())
                .arg(room_key(""))
                .arg(&replica)
                .invoke_async(con)
                .await?;
            if reaped > 0 {
                info!(%replica, members = reaped, "swept a replica that stopped refreshing its liveness");
            }
            missing.insert(replica);
        }
        // A replica counts as gone from when it was first seen missing, until it is back or
        // nothing names it any more.
        missing_since.retain(|r, _| missing.contains(r));
        for replica in missing {
            missing_since.entry(replica).or_insert_with(Instant::now);
        }
        // Members whose replica has been gone a whole TTL leave this replica's copies even when
        // nobody published it (Redis restarted and forgot them).
        let gone: HashSet<String> = missing_since
            .iter()
            .filter(|(_, since)| since.elapsed() >= LIVENESS_TTL)
            .map(|(r, _)| r.clone())
            .collect();
        if !gone.is_empty() {
            state.registry.drop_replicas(&gone);
        }
        Ok(())
    }

    /// Writes this replica's live sockets back into Redis and re-reads its rooms: after a lost
    /// subscription, a sweep of this replica, or a Redis that restarted empty.
    async fn run_restore(self: Arc<Self>, state: Arc<AppState>) {
        loop {
            self.restore.notified().await;
            if self.epoch().is_none() || !self.subscribed.load(Ordering::Relaxed) {
                // The heartbeat or the subscription will notify again once both are up.
                continue;
            }
            let members = state.registry.local_members();
            let mut restored = 0;
            for (room, member, max) in members {
                match self.join(&room, member.clone(), max, JoinMode::Restore).await {
                    Ok(outcome) => restored += usize::from(!outcome.unchanged),
                    Err(ClusterError::Taken | ClusterError::RoomFull(_) | ClusterError::StaleOrb) => {
                        // Someone else holds the place now: this socket is the stale one.
                        state.registry.evict_local(&room, member.conn);
                    }
                    Err(e) => {
                        debug!(error = %e, "restore interrupted; will retry");
                        break;
                    }
                }
            }
            let leaves = std::mem::take(&mut *self.lock_pending());
            for (room, member) in leaves {
                self.leave(&room, member);
            }
            // After a data loss the others are restoring too: take what they have written so
            // far and let the liveness audit remove the members nobody restores.
            let remove = !self.data_lost.swap(false, Ordering::Relaxed);
            for room in state.registry.room_ids() {
                if let Ok(snapshot) = self.snapshot(&room).await {
                    state.registry.sync_room(&room, snapshot, remove);
                }
            }
            if restored > 0 {
                info!(restored, "restored this replica's members in Redis");
            }
        }
    }
}

async fn read_snapshot(con: &mut ConnectionManager, room: &str) -> redis::RedisResult<Snapshot> {
    let fields: HashMap<String, String> = con.hgetall(room_key(room)).await?;
    let mut snapshot = Snapshot {
        seq: 0,
        members: vec![],
        ai_status: None,
    };
    for (k, v) in fields {
        if k.starts_with("m:") {
            if let Ok(m) = serde_json::from_str(&v) {
                snapshot.members.push(m);
            }
        } else if k == "seq" {
            snapshot.seq = v.parse().unwrap_or(0);
        } else if k == "ai" {
            snapshot.ai_status = serde_json::from_value(serde_json::Value::String(v)).ok();
        }
    }
    Ok(snapshot)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// With nothing taking commands off the queue (Redis away), relays of fat frames are dropped
    /// once their bytes reach QUEUE_BYTES, long before the count bound, and counted.
    #[tokio::test]
    async fn the_command_queue_is_bounded_in_bytes() {
        let metrics = Metrics::shared();
        let settings = RedisSettings {
            url: "redis://127.0.0.1:1".into(),
            replica_id: "r".into(),
        };
        let cluster = Cluster::new(&settings, metrics.clone()).unwrap();
        let payload = "x".repeat(64 << 10);
        let publish = || Op::Publish {
            replica: "other".into(),
            payload: payload.clone(),
        };
        let fits = QUEUE_BYTES / publish().bytes();
        assert!(fits < QUEUE / 2);
        assert!((0..fits).all(|_| cluster.queue(publish())));
        assert!(!cluster.queue(publish()), "over the byte bound");
        assert_eq!(metrics.cluster_dropped.get(), 1);
        assert!(cluster.queued_bytes.load(Ordering::Relaxed) <= QUEUE_BYTES);
        // Small commands still fit in what is left; taking one off frees its bytes.
        assert!(cluster.queue(Op::Snapshot {
            room: "room".into(),
            reply: oneshot::channel().0,
        }));
        let mut rx = cluster.ops_rx.lock().unwrap().take().unwrap();
        cluster.dequeued(rx.try_recv().unwrap());
        assert!(cluster.queue(publish()));
    }

    /// A replica that registered as a compact-envelope reader gets the compact envelope; any
    /// other (one of an older version, or one not seen by a sweep yet) gets JSON, which every
    /// version reads. The orb's status, told to a whole room by a script, is JSON.
    #[tokio::test]
    async fn the_compact_envelope_goes_only_to_replicas_that_read_it() {
        let settings = RedisSettings {
            url: "redis://127.0.0.1:1".into(),
            replica_id: "r".into(),
        };
        let cluster = Cluster::new(&settings, Metrics::shared()).unwrap();
        cluster.compact_readers.lock().unwrap().insert("new".into());
        let event = Event::Deliver {
            room: "room".into(),
            to: super::super::Target::All,
            text: r#"{"type":"offer"}"#.into(),
            ai_status: None,
        };
        cluster.publish("new", &event);
        cluster.publish("old", &event);
        cluster.set_status("room", AiStatus::Ready, &event);
        let mut rx = cluster.ops_rx.lock().unwrap().take().unwrap();
        let mut payloads = vec![];
        while let Ok(op) = rx.try_recv() {
            match op {
                Op::Publish { replica, payload } => payloads.push((replica, payload)),
                Op::SetStatus { event, .. } => payloads.push(("room".into(), event)),
                _ => unreachable!(),
            }
        }
        assert_eq!(payloads[0].0, "new");
        assert!(payloads[0].1.starts_with('D'), "{}", payloads[0].1);
        for (to, payload) in &payloads[1..] {
            let json: serde_json::Value = serde_json::from_str(payload).unwrap_or_else(|e| panic!("{to}: {e}"));
            assert_eq!(json["k"], "deliver");
        }
        for (_, payload) in payloads {
            assert_eq!(envelope::decode(&payload), Ok(event.clone()));
        }
    }
}
