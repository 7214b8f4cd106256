//! Session summaries: stored durably before the orb is told so, then delivered to the webhook
//! at least once.
//!
//! The orb sends `session_summary` with a `summaryId` and keeps it until signaling answers
//! `session_summary_ack`; signaling answers only once the summary is in a [`SummaryStore`]: a
//! ConfigMap with the Kubernetes runtime (it survives a restart of signaling, the operator and the
//! orb), a file under `--summary-dir` with the local runtime. The [`delivery`] loop of every
//! replica posts due summaries to `--summary-webhook-url`, signed (see [`signature`]), with the
//! summary id as the idempotency key, retrying with backoff until the webhook answers 2xx or
//! `--summary-retry-window` passes. The schedule lives in the stored record, so a restart resumes
//! it. The rules of that schedule are the pure functions below.

pub mod checkpoint;
pub mod delivery;
pub mod kube_store;
pub mod local_store;
pub mod signature;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use jiff::Timestamp;
use orb_api::aiorb::SummaryState;
use orb_api::duration::after;
use serde::{Deserialize, Serialize};

/// How a summary is stored and delivered.
#[derive(Clone, Debug)]
pub struct SummarySettings {
    pub webhook_url: Option<http::Uri>,
    /// HMAC-SHA256 key of `X-Orb-Signature`; unsigned without it.
    pub webhook_secret: Option<Vec<u8>>,
    pub retry_window: Duration,
    /// Local and none runtimes: where summaries are kept (memory only when unset).
    pub dir: Option<PathBuf>,
    /// Largest summary stored, in bytes of its JSON (`--max-summary-bytes`).
    pub max_bytes: usize,
}

impl Default for SummarySettings {
    fn default() -> Self {
        Self {
            webhook_url: None,
            webhook_secret: None,
            retry_window: Duration::ZERO,
            dir: None,
            max_bytes: DEFAULT_MAX_BYTES,
        }
    }
}

/// Default of `--max-summary-bytes`: a two-hour session's transcript is a few hundred KiB of JSON.
pub const DEFAULT_MAX_BYTES: usize = 1 << 20;
/// Distinct summaries one orb attempt may store: its final one and a few re-sends under new ids.
/// A re-send of an id already stored does not count and is acknowledged again.
pub const MAX_PER_ORB: usize = 4;

/// First retry delay; doubles per attempt up to [`MAX_BACKOFF`].
pub const FIRST_BACKOFF: Duration = Duration::from_secs(2);
pub const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// Longest one attempt may take, from its claim: reading the stored body and the webhook's answer.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a replica's claim on a summary lasts, from the moment it is written: if the replica
/// dies mid-attempt, another one retries after this. It outlasts the attempt it covers, with room
/// for the store writes around it, so no other replica posts the summary while it is in flight.
pub const CLAIM: Duration = Duration::from_secs(30);
const _: () = assert!(CLAIM.as_secs() >= 2 * ATTEMPT_TIMEOUT.as_secs());
/// When a summary whose step failed on a store error (or a pass whose list failed) is tried again.
pub const ERROR_RETRY: Duration = Duration::from_secs(5);
/// Longest accepted summary id (it is the idempotency key and names the stored record).
pub const MAX_ID_LEN: usize = 128;

/// The delivery record of one summary: everything but the body.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SummaryMeta {
    pub id: String,
    pub room_id: String,
    /// The AiOrb the summary belongs to, when the store knows it (Kubernetes runtime).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub orb_uid: Option<String>,
    pub state: SummaryState,
    pub stored_at: Timestamp,
    pub attempts: u32,
    /// When the next attempt is due (or when a replica's claim on it runs out).
    pub next_attempt: Timestamp,
    pub retry_until: Timestamp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivered_at: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

/// A stored summary: its record, its body (the JSON the webhook receives, byte for byte) and the
/// store's version of it (a compare-and-swap token).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredSummary {
    pub meta: SummaryMeta,
    pub body: Bytes,
    pub version: Option<String>,
}

/// A stored summary without its body: what a delivery pass lists, claims and records.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SummaryRecord {
    pub meta: SummaryMeta,
    /// The store's version of the summary (a compare-and-swap token).
    pub version: Option<String>,
}

impl StoredSummary {
    pub fn record(&self) -> SummaryRecord {
        SummaryRecord {
            meta: self.meta.clone(),
            version: self.version.clone(),
        }
    }
}

/// Why a summary is not stored, for good: sending it again gets the same answer.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("the summary is {bytes} bytes of JSON, more than the {limit} a stored summary may have")]
    TooLarge { bytes: usize, limit: usize },
    #[error("the summary is {0} bytes compressed, more than a stored record can hold")]
    TooLargeCompressed(usize),
    #[error("this orb has stored {MAX_PER_ORB} session summaries, as many as it may")]
    TooMany,
    #[error("the room's AiOrb is gone: a summary stored now would have no owner")]
    NoOwner,
}

impl Refusal {
    /// Its value of `summaries_stored_total{result}`.
    pub fn label(&self) -> &'static str {
        match self {
            Refusal::TooLarge { .. } | Refusal::TooLargeCompressed(_) => "too_large",
            Refusal::TooMany => "too_many",
            Refusal::NoOwner => "no_owner",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("another replica updated the summary first")]
    Conflict,
    #[error("{0}")]
    Refused(#[from] Refusal),
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("summary store I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("a stored summary is unreadable: {0}")]
    Corrupt(String),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PutOutcome {
    Stored,
    /// A summary with this id was stored before (the orb re-sent it): nothing changed.
    AlreadyStored,
}

/// Where summaries wait for the webhook.
pub trait SummaryStore: Send + Sync + 'static {
    /// Stores a new summary durably; idempotent on its id. Refuses a new one when its orb attempt
    /// ([`orb_key`]) has stored [`MAX_PER_ORB`] already ([`admit`]), and one that would outlive
    /// everything that could remove it.
    fn put(&self, summary: StoredSummary) -> BoxFuture<'_, Result<PutOutcome, StoreError>>;
    /// The record of every summary still `Pending`, without the bodies: every replica lists them
    /// on every pass, and a body (up to a two-hour transcript) is read only by the replica that
    /// claimed it ([`SummaryStore::body`]).
    fn pending(&self) -> BoxFuture<'_, Result<Vec<SummaryRecord>, StoreError>>;
    /// The body of a stored summary.
    fn body(&self, id: &str) -> BoxFuture<'_, Result<Bytes, StoreError>>;
    /// Writes a changed record (the body stays as stored) if the stored version is still
    /// `record.version`; returns the record with its new version, or [`StoreError::Conflict`]
    /// (also when the summary is gone: another replica finished it).
    fn update(&self, record: SummaryRecord) -> BoxFuture<'_, Result<SummaryRecord, StoreError>>;
    /// Whether orb attempt `orb_key` ([`orb_key`]) has stored a summary. Stores shared by replicas
    /// answer it, so a checkpoint whose removal after the final summary failed does not become a
    /// second summary; a process-local store answers no (its removal is in the same process).
    fn stored_any(&self, _orb_key: &str) -> BoxFuture<'_, Result<bool, StoreError>> {
        Box::pin(async { Ok(false) })
    }
}

/// The orb attempt a summary counts against: the AiOrb's uid (from the orb's token, or the
/// room's AiOrb when the store knows it), else the room. A label value and a file-name part.
pub fn orb_key(meta: &SummaryMeta) -> String {
    match &meta.orb_uid {
        Some(uid) => uid.clone(),
        None => format!("room-{}", local_store::id_hash(&meta.room_id)),
    }
}

/// What a store does with a new summary `candidate`, given what the same orb attempt has stored
/// (`stored`; compared as the store names them).
pub fn admit<'a>(candidate: &str, stored: impl IntoIterator<Item = &'a str>) -> Result<PutOutcome, Refusal> {
    let mut count = 0;
    for name in stored {
        if name == candidate {
            return Ok(PutOutcome::AlreadyStored);
        }
        count += 1;
    }
    if count >= MAX_PER_ORB {
        Err(Refusal::TooMany)
    } else {
        Ok(PutOutcome::Stored)
    }
}

/// Whether a summary of `bytes` of JSON may be stored under `settings`.
pub fn check_size(bytes: usize, settings: &SummarySettings) -> Result<(), Refusal> {
    if bytes > settings.max_bytes {
        Err(Refusal::TooLarge {
            bytes,
            limit: settings.max_bytes,
        })
    } else {
        Ok(())
    }
}

/// Whether `id` may name a summary: it becomes a header value and part of a record's name.
pub fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}

/// The record of a summary stored at `now`: due at once with a webhook, `Stored` (final) without.
pub fn new_meta(id: String, room_id: String, now: Timestamp, settings: &SummarySettings) -> SummaryMeta {
    SummaryMeta {
        id,
        room_id,
        orb_uid: None,
        state: if settings.webhook_url.is_some() {
            SummaryState::Pending
        } else {
            SummaryState::Stored
        },
        stored_at: now,
        attempts: 0,
        next_attempt: now,
        retry_until: after(now, settings.retry_window),
        delivered_at: None,
        last_error: None,
    }
}

/// Delay after attempt number `attempts` failed.
pub fn backoff(attempts: u32) -> Duration {
    let factor = 1u32 << attempts.saturating_sub(1).min(16);
    FIRST_BACKOFF.saturating_mul(factor).min(MAX_BACKOFF)
}

/// Whether a summary is waiting for an attempt now.
pub fn is_due(meta: &SummaryMeta, now: Timestamp) -> bool {
    meta.state == SummaryState::Pending && meta.next_attempt <= now
}

/// The record a replica writes before it posts: one more attempt, and a claim that keeps the
/// other replicas off it for [`CLAIM`] from `now`, which must be the time of this write (not the
/// start of a pass that may have spent minutes on other summaries).
pub fn claim(meta: &SummaryMeta, now: Timestamp) -> SummaryMeta {
    SummaryMeta {
        attempts: meta.attempts.saturating_add(1),
        next_attempt: after(now, CLAIM),
        ..meta.clone()
    }
}

/// What a webhook attempt came to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Attempt {
    Delivered,
    /// Worth another try (connection error, timeout, 408, 429, 5xx).
    Retry(String),
    /// The webhook refused it for good (another 4xx).
    Refused(String),
}

/// The record after an attempt at `now`: delivered, rescheduled with backoff, or given up when
/// refused or past its retry window.
pub fn after_attempt(meta: &SummaryMeta, attempt: &Attempt, now: Timestamp) -> SummaryMeta {
    let mut next = meta.clone();
    match attempt {
        Attempt::Delivered => {
            next.state = SummaryState::Delivered;
            next.delivered_at = Some(now);
            next.last_error = None;
        }
        Attempt::Refused(e) => {
            next.state = SummaryState::Failed;
            next.last_error = Some(e.clone());
        }
        Attempt::Retry(e) => {
            next.last_error = Some(e.clone());
            let at = after(now, backoff(meta.attempts));
            if at > meta.retry_until {
                next.state = SummaryState::Failed;
            } else {
                next.next_attempt = at;
            }
        }
    }
    next
}

/// A pending summary whose retry window passed without an attempt (signaling was down): given up.
pub fn expire(meta: &SummaryMeta, now: Timestamp) -> Option<SummaryMeta> {
    (meta.state == SummaryState::Pending && now > meta.retry_until).then(|| SummaryMeta {
        state: SummaryState::Failed,
        last_error: Some(
            meta.last_error
                .clone()
                .unwrap_or_else(|| "retry window passed without an attempt".into()),
        ),
        ..meta.clone()
    })
}

/// What a pass learns for the next one: when the nearest pending summary is due, and how old the
/// oldest one still pending is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Schedule {
    pub next_due: Option<Timestamp>,
    pub oldest: Option<Timestamp>,
}

impl Schedule {
    /// `meta` is still pending after this pass, due as its record says.
    pub fn pending(&mut self, meta: &SummaryMeta) {
        self.add(meta.stored_at, meta.next_attempt);
    }

    /// The store failed on `meta` at `now`: whatever its record says (it may be due already),
    /// it is tried again after [`ERROR_RETRY`], not in a tight loop.
    pub fn store_failed(&mut self, meta: &SummaryMeta, now: Timestamp) {
        self.add(meta.stored_at, after(now, ERROR_RETRY));
    }

    fn add(&mut self, stored_at: Timestamp, due: Timestamp) {
        self.next_due = Some(self.next_due.map_or(due, |n| n.min(due)));
        self.oldest = Some(self.oldest.map_or(stored_at, |o| o.min(stored_at)));
    }
}

/// The summaries of this server: the store, and the delivery loop it feeds.
pub struct Summaries {
    store: Arc<dyn SummaryStore>,
    /// The rooms' checkpoints (dropped without a store).
    checkpoints: Option<Arc<dyn checkpoint::CheckpointStore>>,
    settings: SummarySettings,
    deliverer: Arc<delivery::Deliverer>,
    metrics: Arc<crate::metrics::Metrics>,
    /// One store at a time per room on this replica, so that two copies in flight cannot both
    /// pass the count of [`admit`] before either is stored.
    room_locks: std::sync::Mutex<HashMap<String, Weak<tokio::sync::Mutex<()>>>>,
}

impl Summaries {
    pub fn new(
        store: Arc<dyn SummaryStore>,
        settings: SummarySettings,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> std::io::Result<Self> {
        let deliverer = Arc::new(delivery::Deliverer::new(store.clone(), &settings, metrics.clone())?);
        Ok(Self {
            store,
            checkpoints: None,
            settings,
            deliverer,
            metrics,
            room_locks: std::sync::Mutex::default(),
        })
    }

    /// The store the settings name for a runtime without Kubernetes: the directory, else memory.
    pub fn local_store(settings: &SummarySettings) -> Result<Arc<dyn SummaryStore>, StoreError> {
        Ok(match &settings.dir {
            Some(dir) => Arc::new(local_store::LocalStore::open(dir)?),
            None => Arc::new(local_store::LocalStore::in_memory()),
        })
    }

    /// Keeps checkpoints in `store`.
    pub fn with_checkpoints(mut self, store: Arc<dyn checkpoint::CheckpointStore>) -> Self {
        self.checkpoints = Some(store);
        self
    }

    /// The checkpoint store the settings name for a runtime without Kubernetes.
    pub fn local_checkpoints(settings: &SummarySettings) -> Result<Arc<dyn checkpoint::CheckpointStore>, StoreError> {
        Ok(match &settings.dir {
            Some(dir) => Arc::new(checkpoint::LocalCheckpoints::open(dir)?),
            None => Arc::new(checkpoint::LocalCheckpoints::in_memory()),
        })
    }

    /// Keeps `body` (a checkpoint's JSON) as the room's latest checkpoint. Refused above the
    /// summaries' size cap, since it becomes one. `orb_uid`: the sending orb's AiOrb, if known.
    pub async fn checkpoint(&self, room_id: &str, orb_uid: Option<&str>, body: Bytes) -> Result<(), StoreError> {
        let Some(store) = &self.checkpoints else { return Ok(()) };
        check_size(body.len(), &self.settings)?;
        store.put(room_id, orb_uid, body).await
    }

    /// The room's latest checkpoint, for the orb joining it.
    pub async fn last_checkpoint(&self, room_id: &str) -> Result<Option<serde_json::Value>, StoreError> {
        let Some(store) = &self.checkpoints else {
            return Ok(None);
        };
        let Some(checkpoint) = store.get(room_id).await? else {
            return Ok(None);
        };
        serde_json::from_slice(&checkpoint.body)
            .map(Some)
            .map_err(|e| StoreError::Corrupt(format!("checkpoint of room {room_id}: {e}")))
    }

    /// The room's final summary is stored: it supersedes the checkpoints.
    pub async fn superseded(&self, room_id: &str) -> Result<(), StoreError> {
        match &self.checkpoints {
            Some(store) => store.remove(room_id, None).await,
            None => Ok(()),
        }
    }

    /// The room's orb is gone for good (`why`; `orb_uid`: its AiOrb, when the runtime has them).
    /// A checkpoint left means no final summary was stored: it is stored as the session's summary,
    /// marked partial with the reason, under an id named by its content (so a second call, on any
    /// replica, stores nothing new), then removed. A checkpoint of another AiOrb of the room (a
    /// newer one) is not this orb's to finish.
    pub async fn orb_gone(
        &self,
        room_id: &str,
        orb_uid: Option<&str>,
        why: &str,
    ) -> Result<Option<String>, StoreError> {
        let Some(store) = &self.checkpoints else {
            return Ok(None);
        };
        let Some(checkpoint) = store.get(room_id).await? else {
            return Ok(None);
        };
        if let (Some(gone), Some(owner)) = (orb_uid, checkpoint.orb_uid.as_deref())
            && gone != owner
        {
            return Ok(None);
        }
        let body = checkpoint.body;
        if let Some(uid) = &checkpoint.orb_uid
            && self.store.stored_any(uid).await?
        {
            // Its final summary (or this partial one, by another replica) is stored already.
            store.remove(room_id, Some(&body)).await?;
            return Ok(None);
        }
        let mut summary = match serde_json::from_slice(&body) {
            Ok(serde_json::Value::Object(map)) => map,
            _ => {
                store.remove(room_id, Some(&body)).await?;
                return Err(StoreError::Corrupt(format!("checkpoint of room {room_id}")));
            }
        };
        let id = format!(
            "partial-{}",
            local_store::id_hash(&format!("{room_id}\n{}", String::from_utf8_lossy(&body)))
        );
        summary.insert("summaryId".into(), id.clone().into());
        summary.insert("roomId".into(), room_id.into());
        if let Some(serde_json::Value::Object(inner)) = summary.get_mut("summary") {
            inner.insert("partial".into(), true.into());
            inner.insert(
                "reason".into(),
                format!("the orb was gone without a final summary: {why}").into(),
            );
        }
        let msg = crate::protocol::ServerMessage::SessionSummary(serde_json::Value::Object(summary));
        let text = serde_json::to_vec(&msg).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let orb_uid = checkpoint.orb_uid.or_else(|| orb_uid.map(str::to_owned));
        self.accept(id.clone(), room_id.to_owned(), orb_uid, Bytes::from(text))
            .await?;
        store.remove(room_id, Some(&body)).await?;
        Ok(Some(id))
    }

    /// Starts the delivery loop (a no-op without a webhook).
    pub fn start(&self, shutdown: tokio_util::sync::CancellationToken) {
        tokio::spawn(self.deliverer.clone().run(shutdown));
    }

    /// Checkpoints left by a run of this process that ended before their orbs did (the local
    /// runtime's orbs end with it): their sessions get their partial summaries now, and no orb of
    /// a later call is handed one.
    pub async fn finish_leftover_checkpoints(&self) -> Result<usize, StoreError> {
        let Some(store) = &self.checkpoints else { return Ok(0) };
        let rooms = store.orphaned_rooms().await?.into_iter().map(|room| (room, None));
        self.finish_checkpoints(rooms, "signaling stopped while the orb was running")
            .await
    }

    /// After the runtime listed every orb there is (`orb_uids`): the checkpoint of each orb not
    /// among them (its AiOrb was deleted while no replica watched) becomes its session's partial
    /// summary. Returns how many were stored.
    pub async fn finish_checkpoints_of_unlisted_orbs(&self, orb_uids: HashSet<String>) -> Result<usize, StoreError> {
        let Some(store) = &self.checkpoints else { return Ok(0) };
        let rooms = store.rooms_of_unlisted_orbs(orb_uids).await?.into_iter();
        self.finish_checkpoints(
            rooms.map(|(room, owner)| (room, Some(owner))),
            "its AiOrb was gone before signaling saw it end",
        )
        .await
    }

    /// [`Summaries::orb_gone`] for each `(room, owner)`; returns how many partial summaries were
    /// stored.
    async fn finish_checkpoints(
        &self,
        rooms: impl Iterator<Item = (String, Option<String>)>,
        why: &str,
    ) -> Result<usize, StoreError> {
        let mut stored = 0;
        for (room, owner) in rooms {
            if self.orb_gone(&room, owner.as_deref(), why).await?.is_some() {
                stored += 1;
            }
        }
        Ok(stored)
    }

    /// Whether a summary of `bytes` of JSON may be stored; a refusal is counted.
    pub fn check_size(&self, bytes: usize) -> Result<(), Refusal> {
        check_size(bytes, &self.settings).inspect_err(|r| self.refused(r))
    }

    /// Counts a summary refused before it reached [`Summaries::accept`].
    pub fn refused(&self, refusal: &Refusal) {
        self.metrics.summary_stored(refusal.label());
    }

    /// Stores a summary the orb sent; `Ok` means it is durable and the orb may forget it.
    /// `orb_uid` is the orb's AiOrb as its token names it, if it does.
    pub async fn accept(
        &self,
        id: String,
        room_id: String,
        orb_uid: Option<String>,
        body: Bytes,
    ) -> Result<PutOutcome, StoreError> {
        let result = match check_size(body.len(), &self.settings) {
            Err(refusal) => Err(refusal.into()),
            Ok(()) => {
                let lock = self.room_lock(&room_id);
                let _one_at_a_time = lock.lock().await;
                let meta = SummaryMeta {
                    orb_uid,
                    ..new_meta(id, room_id, Timestamp::now(), &self.settings)
                };
                self.store
                    .put(StoredSummary {
                        meta,
                        body,
                        version: None,
                    })
                    .await
            }
        };
        self.metrics.summary_stored(match &result {
            Ok(PutOutcome::Stored) => "stored",
            Ok(PutOutcome::AlreadyStored) => "duplicate",
            Err(StoreError::Refused(refusal)) => refusal.label(),
            Err(_) => "error",
        });
        if matches!(result, Ok(PutOutcome::Stored)) {
            self.deliverer.wake.notify_one();
        }
        result
    }

    fn room_lock(&self, room_id: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.room_locks.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(lock) = locks.get(room_id).and_then(Weak::upgrade) {
            return lock;
        }
        // Forget the rooms nobody is storing for, so the map holds only stores in flight.
        locks.retain(|_, lock| lock.strong_count() > 0);
        let lock = Arc::new(tokio::sync::Mutex::new(()));
        locks.insert(room_id.to_owned(), Arc::downgrade(&lock));
        lock
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + s).unwrap()
    }

    fn settings(webhook: bool) -> SummarySettings {
        SummarySettings {
            webhook_url: webhook.then(|| "http://hook.example/s".parse().unwrap()),
            retry_window: Duration::from_secs(600),
            ..Default::default()
        }
    }

    #[test]
    fn ids_are_header_and_name_safe() {
        assert!(valid_id("sum-18c-4d2-00ff"));
        assert!(!valid_id(""));
        assert!(!valid_id("a b"));
        assert!(!valid_id("a\r\nX-Evil: 1"));
        assert!(!valid_id(&"a".repeat(MAX_ID_LEN + 1)));
    }

    #[test]
    fn without_a_webhook_a_summary_is_stored_and_final() {
        let m = new_meta("s".into(), "r".into(), t(0), &settings(false));
        assert_eq!(m.state, SummaryState::Stored);
        assert!(!is_due(&m, t(0)));
        let m = new_meta("s".into(), "r".into(), t(0), &settings(true));
        assert_eq!((m.state, m.retry_until), (SummaryState::Pending, t(600)));
        assert!(is_due(&m, t(0)));
    }

    #[test]
    fn backoff_doubles_and_caps() {
        let got: Vec<u64> = (1..=10).map(|a| backoff(a).as_secs()).collect();
        assert_eq!(got, vec![2, 4, 8, 16, 32, 64, 128, 256, 300, 300]);
        assert_eq!(backoff(u32::MAX), MAX_BACKOFF);
    }

    #[test]
    fn a_claim_counts_the_attempt_and_holds_others_off() {
        let m = new_meta("s".into(), "r".into(), t(0), &settings(true));
        let c = claim(&m, t(1));
        assert_eq!(c.attempts, 1);
        assert!(!is_due(&c, t(1)), "claimed: not due for the other replicas");
        assert!(
            is_due(&c, t(1) + jiff::SignedDuration::from_secs(30)),
            "a dead claimant's claim runs out"
        );
    }

    #[test]
    fn a_claim_runs_from_its_write_and_outlasts_the_attempt_it_covers() {
        let m = new_meta("s".into(), "r".into(), t(0), &settings(true));
        // Written 40 s into a pass that started at t(0): it counts from the write.
        let c = claim(&m, t(40));
        assert!(!is_due(&c, t(40)), "not due for the others when written");
        assert!(
            !is_due(&c, after(t(40), ATTEMPT_TIMEOUT)),
            "still held when the longest attempt ends"
        );
        assert!(is_due(&c, after(t(40), CLAIM)));
    }

    #[test]
    fn a_pass_wakes_at_the_nearest_due_summary_and_reports_the_oldest() {
        let meta = |stored: i64, due: i64| SummaryMeta {
            stored_at: t(stored),
            next_attempt: t(due),
            ..new_meta("s".into(), "r".into(), t(stored), &settings(true))
        };
        let mut schedule = Schedule::default();
        assert_eq!((schedule.next_due, schedule.oldest), (None, None));
        schedule.pending(&meta(10, 100));
        schedule.pending(&meta(20, 50));
        assert_eq!((schedule.next_due, schedule.oldest), (Some(t(50)), Some(t(10))));
        // Due since t(5) by its record, but the store failed on it at t(30): not before t(35).
        schedule.store_failed(&meta(5, 5), t(30));
        assert_eq!((schedule.next_due, schedule.oldest), (Some(t(35)), Some(t(5))));
    }

    #[test]
    fn attempts_deliver_retry_or_give_up() {
        let m = claim(&new_meta("s".into(), "r".into(), t(0), &settings(true)), t(0));
        let d = after_attempt(&m, &Attempt::Delivered, t(1));
        assert_eq!((d.state, d.delivered_at), (SummaryState::Delivered, Some(t(1))));
        let r = after_attempt(&m, &Attempt::Retry("503".into()), t(1));
        assert_eq!((r.state, r.next_attempt), (SummaryState::Pending, t(3)));
        assert_eq!(r.last_error.as_deref(), Some("503"));
        let f = after_attempt(&m, &Attempt::Refused("400".into()), t(1));
        assert_eq!(f.state, SummaryState::Failed);
        // A retry that would fall past the window gives up instead.
        let late = after_attempt(&m, &Attempt::Retry("503".into()), t(599));
        assert_eq!(late.state, SummaryState::Failed);
        assert_eq!(expire(&m, t(601)).unwrap().state, SummaryState::Failed);
        assert_eq!(expire(&m, t(600)), None);
    }

    #[test]
    fn an_orb_stores_a_few_distinct_summaries_and_a_resend_stays_idempotent() {
        let mut stored: Vec<String> = Vec::new();
        for i in 0..MAX_PER_ORB {
            let id = format!("s{i}");
            assert_eq!(admit(&id, stored.iter().map(String::as_str)), Ok(PutOutcome::Stored));
            stored.push(id);
        }
        assert_eq!(
            admit("one-more", stored.iter().map(String::as_str)),
            Err(Refusal::TooMany)
        );
        assert_eq!(
            admit("s1", stored.iter().map(String::as_str)),
            Ok(PutOutcome::AlreadyStored),
            "a re-send is acknowledged again however many are stored"
        );
    }

    #[test]
    fn summaries_count_against_their_aiorb_else_their_room() {
        let meta = |room: &str, uid: Option<&str>| SummaryMeta {
            orb_uid: uid.map(str::to_owned),
            ..new_meta("s".into(), room.into(), t(0), &settings(false))
        };
        assert_eq!(orb_key(&meta("r", Some("uid-1"))), "uid-1");
        assert_ne!(orb_key(&meta("r", Some("uid-2"))), orb_key(&meta("r", Some("uid-1"))));
        assert_eq!(orb_key(&meta("r", None)), orb_key(&meta("r", None)));
        assert_ne!(orb_key(&meta("r", None)), orb_key(&meta("r2", None)));
        // A label value: at most 63 characters of [A-Za-z0-9-_.].
        let key = orb_key(&meta(&"r".repeat(128), None));
        assert!(key.len() <= 63 && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'));
    }

    #[test]
    fn a_summary_above_the_size_cap_is_refused() {
        let settings = SummarySettings::default();
        assert_eq!(settings.max_bytes, DEFAULT_MAX_BYTES);
        assert_eq!(check_size(DEFAULT_MAX_BYTES, &settings), Ok(()));
        assert_eq!(
            check_size(DEFAULT_MAX_BYTES + 1, &settings),
            Err(Refusal::TooLarge {
                bytes: DEFAULT_MAX_BYTES + 1,
                limit: DEFAULT_MAX_BYTES
            })
        );
    }
}
