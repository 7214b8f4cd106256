//! `--orb-runtime=kubernetes`: orbs are `AiOrb` resources that the operator turns into pods.
//!
//! * Request: create the room's AiOrb if absent; a finished one (Succeeded/Failed) is deleted and
//!   created anew. Creation is idempotent on the deterministic name, so concurrent requests (or
//!   several signaling replicas) never make two orbs for a room.
//! * Presence: server-side apply on the status subresource with field manager `orb-signaling`,
//!   carrying only `participants` and `lastActivityTime`. Writes are debounced per room: the first
//!   change schedules a write `--presence-debounce` later and everything arriving meanwhile is
//!   folded into it, so a room costs at most one write per debounce period.
//! * Status: one watch on the namespace's AiOrbs; phase changes of orbs whose rooms have people
//!   become `ai_status` events, and the end of every AiOrb (`Succeeded`, `Failed`, or deleted
//!   before either) an [`OrbEvents::gone`], once per replica.
//!
//! All API calls run in spawned tasks: a slow or failing API server delays orbs, never calls.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, Preconditions, PropagationPolicy};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Resource, ResourceExt};
use orb_api::naming::orb_name_for_room;
use orb_api::{AiOrb, AiOrbSpec, OrbPhase, SIGNALING_FIELD_MANAGER};
use serde_json::json;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::check_cache::CheckCache;
use super::{OrbCheck, OrbEvents, OrbRequest, OrbRuntime, Presence};
use crate::metrics::{Metrics, OrbRequestResult};
use crate::protocol::AiStatus;

/// How long the answers of orb-token checks are reused (see [`super::check_cache`]): a live orb's
/// briefly (it may end any moment), an ended orb's long (an AiOrb never comes back with the same
/// uid), any other refusal (the room's AiOrb is another or none) in between, and an API error
/// only long enough to coalesce a burst.
pub const LIVE_CHECK_TTL: Duration = Duration::from_secs(1);
pub const ENDED_CHECK_TTL: Duration = Duration::from_secs(600);
pub const STALE_CHECK_TTL: Duration = Duration::from_secs(10);
pub const UNAVAILABLE_CHECK_TTL: Duration = Duration::from_secs(1);
/// (room, uid) answers kept at most.
const CHECK_CACHE_ENTRIES: usize = 4096;

/// How many times a request re-reads the orb while an old one is being deleted.
const ENSURE_ATTEMPTS: u32 = 30;
const ENSURE_RETRY: Duration = Duration::from_secs(1);

#[derive(Clone, Debug)]
pub struct KubernetesSettings {
    pub namespace: String,
    /// Sets `spec.testMode` on created orbs.
    pub test_mode: bool,
    pub presence_debounce: Duration,
}

/// What signaling tells users about an orb in each phase.
pub fn ai_status_for(phase: Option<OrbPhase>) -> AiStatus {
    match phase {
        // Created but not yet seen by the operator: waiting, like a queued orb.
        None | Some(OrbPhase::Queued) => AiStatus::Queued,
        Some(OrbPhase::Starting) => AiStatus::Starting,
        Some(OrbPhase::Ready) => AiStatus::Ready,
        Some(OrbPhase::Terminating | OrbPhase::Succeeded) => AiStatus::Ended,
        Some(OrbPhase::Failed) => AiStatus::Unavailable,
    }
}

enum Command {
    Request(OrbRequest),
    Presence(String, Presence),
    Ensured { room_id: String, uid: Option<String> },
    RequestFailed { room_id: String },
    Written { room_id: String, humans: u32 },
    Shutdown(oneshot::Sender<()>),
}

pub struct KubernetesRuntime {
    tx: mpsc::UnboundedSender<Command>,
    api: Api<AiOrb>,
    checks: Arc<CheckCache>,
}

impl KubernetesRuntime {
    /// Starts the runtime's tasks on the current Tokio runtime.
    pub fn start(client: kube::Client, settings: KubernetesSettings, events: OrbEvents, metrics: Arc<Metrics>) -> Self {
        let api: Api<AiOrb> = Api::namespaced(client, &settings.namespace);
        let watched = Watched::default();
        tokio::spawn(watch_phases(api.clone(), watched.clone(), events.clone()));
        let (tx, rx) = mpsc::unbounded_channel();
        let actor = Actor {
            api: api.clone(),
            settings,
            events,
            metrics,
            watched,
            tx: tx.clone(),
            pending: HashMap::new(),
            in_flight: HashSet::new(),
            latest: HashMap::new(),
            requesting: HashSet::new(),
            settled: HashMap::new(),
        };
        tokio::spawn(actor.run(rx));
        Self {
            tx,
            api,
            checks: CheckCache::new(CHECK_CACHE_ENTRIES),
        }
    }
}

impl OrbRuntime for KubernetesRuntime {
    fn request_orb(&self, request: OrbRequest) {
        let _ = self.tx.send(Command::Request(request));
    }

    fn report_presence(&self, room_id: &str, presence: Presence) {
        let _ = self.tx.send(Command::Presence(room_id.to_owned(), presence));
    }

    /// Reads the room's AiOrb from the API (the one truth every replica shares): the token's uid
    /// must be it, and it must not have ended or be going.
    /// Answers are shared and reused per (room, uid) for the `*_CHECK_TTL`s, so a loop of upgrades
    /// with one token costs the API server a bounded number of reads.
    fn check_orb(&self, room_id: &str, orb_uid: &str) -> BoxFuture<'static, OrbCheck> {
        let (api, checks) = (self.api.clone(), self.checks.clone());
        let (room_id, uid) = (room_id.to_owned(), orb_uid.to_owned());
        Box::pin(async move {
            let lookup = {
                let (name, uid) = (orb_name_for_room(&room_id), uid.clone());
                move || read_orb_check(api, name, uid).boxed()
            };
            checks.check(&room_id, &uid, lookup).await
        })
    }

    fn shutdown(&self) -> BoxFuture<'static, ()> {
        let (done, wait) = oneshot::channel();
        let _ = self.tx.send(Command::Shutdown(done));
        Box::pin(async move {
            let _ = wait.await;
        })
    }
}

/// One read of the room's AiOrb for an orb token's `uid`, and how long the answer holds.
async fn read_orb_check(api: Api<AiOrb>, name: String, uid: String) -> (OrbCheck, Duration) {
    match api.get_opt(&name).await {
        Ok(Some(orb)) if orb.metadata.uid.as_deref() == Some(uid.as_str()) => {
            if orb.is_finished() || orb.metadata.deletion_timestamp.is_some() {
                (OrbCheck::Stale, ENDED_CHECK_TTL)
            } else {
                (OrbCheck::Live, LIVE_CHECK_TTL)
            }
        }
        Ok(_) => (OrbCheck::Stale, STALE_CHECK_TTL),
        Err(e) => {
            warn!(orb = %name, error = %e, "cannot read the room's AiOrb to check an orb token");
            (OrbCheck::Unavailable, UNAVAILABLE_CHECK_TTL)
        }
    }
}

/// Orbs whose rooms have people, by AiOrb name: the watch forwards only their phases.
#[derive(Clone, Default)]
struct Watched(Arc<Mutex<HashMap<String, WatchedOrb>>>);

struct WatchedOrb {
    room_id: String,
    /// The orb this room's request settled on; events of older incarnations are ignored.
    uid: Option<String>,
    /// The newest state the watch saw, kept until the request settles on a uid.
    seen: Option<(String, Option<OrbPhase>)>,
    sent: Option<AiStatus>,
}

impl Watched {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, WatchedOrb>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A (new) request for the room: its people have not been told anything yet.
    fn watch(&self, name: String, room_id: &str) {
        let mut map = self.lock();
        let seen = map.remove(&name).and_then(|w| w.seen);
        map.insert(
            name,
            WatchedOrb {
                room_id: room_id.to_owned(),
                uid: None,
                seen,
                sent: None,
            },
        );
    }

    /// Whether the watch last saw orb `uid` of the room in a live (non-terminal) phase.
    fn is_live(&self, room_id: &str, uid: Option<&str>) -> bool {
        self.lock().get(&orb_name_for_room(room_id)).is_some_and(|w| {
            w.room_id == room_id
                && matches!(&w.seen, Some((seen, phase)) if Some(seen.as_str()) == uid && !phase.is_some_and(OrbPhase::is_terminal))
        })
    }

    fn unwatch_room(&self, room_id: &str) {
        self.lock().retain(|_, w| w.room_id != room_id);
    }

    /// The request created or found `uid`: from now on its phases are the room's.
    fn settle(&self, room_id: &str, uid: Option<String>, events: &OrbEvents) {
        let mut map = self.lock();
        let Some(w) = map
            .get_mut(&orb_name_for_room(room_id))
            .filter(|w| w.room_id == room_id)
        else {
            return;
        };
        w.uid = uid;
        let phase = match (&w.seen, &w.uid) {
            (Some((seen_uid, phase)), Some(uid)) if seen_uid == uid => *phase,
            _ => None,
        };
        w.send(ai_status_for(phase), events);
    }

    fn observe(&self, orb: &AiOrb, deleted: bool, events: &OrbEvents) {
        let mut map = self.lock();
        let Some(w) = map.get_mut(&orb.name_any()).filter(|w| w.room_id == orb.spec.room_id) else {
            return;
        };
        let uid = orb.uid().unwrap_or_default();
        w.seen = Some((uid.clone(), orb.phase()));
        if w.uid.as_deref() != Some(uid.as_str()) {
            return;
        }
        let status = if deleted {
            AiStatus::Ended
        } else {
            ai_status_for(orb.phase())
        };
        w.send(status, events);
    }
}

impl WatchedOrb {
    fn send(&mut self, status: AiStatus, events: &OrbEvents) {
        if self.sent != Some(status) {
            self.sent = Some(status);
            events.status(&self.room_id, status);
        }
    }
}

async fn watch_phases(api: Api<AiOrb>, watched: Watched, events: OrbEvents) {
    let stream = watcher(api);
    futures::pin_mut!(stream);
    let mut ends = Ends::default();
    // The uids of a (re)list in progress: a deletion during a gap in the watch comes as no event.
    let mut listing: HashSet<String> = HashSet::new();
    while let Some(event) = stream.next().await {
        let (orb, deleted) = match event {
            Ok(Event::Apply(orb)) => (orb, false),
            Ok(Event::InitApply(orb)) => {
                listing.extend(orb.uid());
                (orb, false)
            }
            Ok(Event::Delete(orb)) => (orb, true),
            Ok(Event::Init) => {
                listing.clear();
                continue;
            }
            Ok(Event::InitDone) => {
                let listed = std::mem::take(&mut listing);
                ends.reported.retain(|uid| listed.contains(uid));
                events.listed(listed);
                continue;
            }
            Err(e) => {
                warn!(error = %e, "AiOrb watch failed; retrying");
                continue;
            }
        };
        watched.observe(&orb, deleted, &events);
        ends.observe(&orb, deleted, &events);
    }
}

/// The ends of every AiOrb of the namespace, whether or not its room is on this replica: each
/// is reported once as [`OrbEvents::gone`] (a checkpoint it left becomes the session's partial
/// summary). Every replica reports every end; what is done with it is idempotent.
#[derive(Default)]
struct Ends {
    /// Uids of the AiOrbs that ended and still exist (forgotten when deleted).
    reported: HashSet<String>,
}

impl Ends {
    fn observe(&mut self, orb: &AiOrb, deleted: bool, events: &OrbEvents) {
        let Some(uid) = orb.uid() else { return };
        let why = if deleted {
            // Reported already if it had finished first.
            if self.reported.remove(&uid) {
                return;
            }
            "its AiOrb was deleted".to_owned()
        } else if orb.is_finished() {
            if !self.reported.insert(uid.clone()) {
                return;
            }
            let phase = orb.phase().map_or("", OrbPhase::as_str);
            format!("its AiOrb {phase}")
        } else {
            // Still live, or ending (Terminating): its orb may still send its final summary.
            return;
        };
        events.gone(&orb.spec.room_id, Some(uid), why);
    }
}

fn watcher(api: Api<AiOrb>) -> impl futures::Stream<Item = Result<Event<AiOrb>, watcher::Error>> {
    watcher::watcher(api, watcher::Config::default()).default_backoff()
}

struct PendingWrite {
    due: Instant,
}

struct Actor {
    api: Api<AiOrb>,
    settings: KubernetesSettings,
    events: OrbEvents,
    metrics: Arc<Metrics>,
    watched: Watched,
    tx: mpsc::UnboundedSender<Command>,
    /// Rooms with a presence write scheduled.
    pending: HashMap<String, PendingWrite>,
    /// Rooms with a presence write under way (one at a time per room keeps them in order).
    in_flight: HashSet<String>,
    /// The newest presence of every room signaling knows about.
    latest: HashMap<String, Presence>,
    /// Rooms with an orb request under way: at most one per room.
    requesting: HashSet<String>,
    /// The last settled request of each room: when, and the orb it found or made.
    settled: HashMap<String, (Instant, Option<String>)>,
}

/// A request within this long of the room's last one, whose orb is still live, is answered from
/// it without an API call.
const REQUEST_COOLDOWN: Duration = Duration::from_secs(5);

impl Actor {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Command>) {
        loop {
            let next_due = self.pending.values().map(|p| p.due).min();
            tokio::select! {
                cmd = rx.recv() => match cmd {
                    None => return,
                    Some(Command::Shutdown(done)) => {
                        self.flush_all().await;
                        let _ = done.send(());
                        return;
                    }
                    Some(cmd) => self.handle(cmd),
                },
                _ = tokio::time::sleep_until(next_due.unwrap_or_else(Instant::now)), if next_due.is_some() => {
                    self.write_due(Instant::now());
                }
            }
        }
    }

    fn handle(&mut self, cmd: Command) {
        match cmd {
            Command::Request(request) => self.request(request),
            Command::Presence(room_id, presence) => {
                self.latest.insert(room_id.clone(), presence);
                self.schedule(room_id);
            }
            Command::RequestFailed { room_id } => {
                self.requesting.remove(&room_id);
            }
            Command::Ensured { room_id, uid } => {
                self.requesting.remove(&room_id);
                self.settled.insert(room_id.clone(), (Instant::now(), uid.clone()));
                self.watched.settle(&room_id, uid, &self.events);
                // Presence written before the orb existed was lost (404); write it now.
                if self.latest.get(&room_id).is_some_and(|p| p.humans > 0) {
                    self.schedule(room_id);
                }
            }
            Command::Written { room_id, humans } => {
                self.in_flight.remove(&room_id);
                let newer = self.latest.get(&room_id).is_some_and(|p| p.humans != humans);
                if humans == 0 && !newer && !self.pending.contains_key(&room_id) {
                    self.latest.remove(&room_id);
                    self.watched.unwatch_room(&room_id);
                }
            }
            Command::Shutdown(_) => {}
        }
    }

    fn schedule(&mut self, room_id: String) {
        let due = Instant::now() + self.settings.presence_debounce;
        self.pending.entry(room_id).or_insert(PendingWrite { due });
    }

    fn write_due(&mut self, now: Instant) {
        let due: Vec<String> = self
            .pending
            .iter()
            .filter(|(_, p)| p.due <= now)
            .map(|(room, _)| room.clone())
            .collect();
        for room_id in due {
            if self.in_flight.contains(&room_id) {
                // Keep folding changes in until the write before it is done.
                if let Some(p) = self.pending.get_mut(&room_id) {
                    p.due = now + self.settings.presence_debounce;
                }
                continue;
            }
            self.pending.remove(&room_id);
            let Some(presence) = self.latest.get(&room_id).copied() else {
                continue;
            };
            self.in_flight.insert(room_id.clone());
            let (api, metrics, tx) = (self.api.clone(), self.metrics.clone(), self.tx.clone());
            tokio::spawn(async move {
                write_presence(&api, &room_id, presence, &metrics).await;
                let _ = tx.send(Command::Written {
                    room_id,
                    humans: presence.humans,
                });
            });
        }
    }

    /// On shutdown: write every scheduled presence now.
    async fn flush_all(&mut self) {
        let writes = self.pending.drain().filter_map(|(room_id, _)| {
            let presence = self.latest.get(&room_id).copied()?;
            let (api, metrics) = (self.api.clone(), self.metrics.clone());
            Some(async move { write_presence(&api, &room_id, presence, &metrics).await })
        });
        futures::future::join_all(writes).await;
    }

    fn request(&mut self, request: OrbRequest) {
        let name = orb_name_for_room(&request.room_id);
        self.watched.watch(name, &request.room_id);
        // One request per room at a time; a repeat shortly after (people leaving and rejoining)
        // reuses the orb the last one settled on while it is live.
        if self.requesting.contains(&request.room_id) {
            self.events.request_result(OrbRequestResult::Coalesced);
            return;
        }
        self.settled.retain(|_, (at, _)| at.elapsed() < REQUEST_COOLDOWN);
        if let Some((_, uid)) = self.settled.get(&request.room_id)
            && uid.is_some()
            && self.watched.is_live(&request.room_id, uid.as_deref())
        {
            self.events.request_result(OrbRequestResult::Coalesced);
            self.watched.settle(&request.room_id, uid.clone(), &self.events);
            return;
        }
        self.requesting.insert(request.room_id.clone());
        let (api, events, tx, test_mode) = (
            self.api.clone(),
            self.events.clone(),
            self.tx.clone(),
            self.settings.test_mode,
        );
        tokio::spawn(async move {
            let room_id = request.room_id.clone();
            let uid = match ensure_orb(&api, &request, test_mode).await {
                Ok((result, orb)) => {
                    info!(room = %room_id, orb = %orb.name_any(), ?result, "orb requested");
                    events.request_result(result);
                    orb.uid()
                }
                Err(e) => {
                    warn!(room = %room_id, error = %e, "could not get an orb; the call goes on without AI");
                    events.request_result(OrbRequestResult::Failed);
                    events.status(&room_id, AiStatus::Unavailable);
                    let _ = tx.send(Command::RequestFailed { room_id });
                    return;
                }
            };
            let _ = tx.send(Command::Ensured { room_id, uid });
        });
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EnsureError {
    #[error(transparent)]
    Api(#[from] kube::Error),
    #[error("the room's previous AiOrb is still being deleted")]
    StillDeleting,
    #[error("AiOrb {0} belongs to another room")]
    NameTaken(String),
}

/// Whether the API server answered with HTTP status `code`.
pub(crate) fn is_status(e: &kube::Error, code: u16) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == code)
}

/// Every Kubernetes API call this runtime makes, as RBAC rules `(apiGroup, resource, verbs)`: the
/// single list the Helm chart's signaling Role is tested against.
pub const API_CALLS: &[(&str, &str, &[&str])] = &[
    // `ensure_orb`: get, create, and delete of a finished orb; the phase watcher: list and watch.
    (
        "hybridcoach.io",
        "aiorbs",
        &["get", "list", "watch", "create", "delete"],
    ),
    // Presence by server-side apply of the status.
    ("hybridcoach.io", "aiorbs/status", &["patch"]),
];

/// Creates the room's AiOrb unless a live one exists; replaces a finished one.
pub async fn ensure_orb(
    api: &Api<AiOrb>,
    request: &OrbRequest,
    test_mode: bool,
) -> Result<(OrbRequestResult, AiOrb), EnsureError> {
    let name = orb_name_for_room(&request.room_id);
    let mut replaced = false;
    for _ in 0..ENSURE_ATTEMPTS {
        match api.get_opt(&name).await? {
            Some(orb) if orb.spec.room_id != request.room_id => return Err(EnsureError::NameTaken(name)),
            Some(orb) if orb.meta().deletion_timestamp.is_some() || orb.phase() == Some(OrbPhase::Terminating) => {
                debug!(orb = %name, "previous orb still ending; waiting");
                tokio::time::sleep(ENSURE_RETRY).await;
            }
            Some(orb) if orb.is_finished() => {
                info!(orb = %name, phase = ?orb.phase(), "replacing finished orb");
                let params = DeleteParams {
                    preconditions: Some(Preconditions {
                        uid: orb.uid(),
                        resource_version: None,
                    }),
                    propagation_policy: Some(PropagationPolicy::Background),
                    ..DeleteParams::default()
                };
                match api.delete(&name, &params).await {
                    Ok(_) => replaced = true,
                    // Gone already, or replaced by someone else meanwhile: look again.
                    Err(e) if is_status(&e, 404) || is_status(&e, 409) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            Some(orb) => {
                let result = if replaced {
                    OrbRequestResult::Replaced
                } else {
                    OrbRequestResult::Existing
                };
                return Ok((result, orb));
            }
            None => {
                let orb = new_orb(&name, request, test_mode);
                let params = PostParams {
                    field_manager: Some(SIGNALING_FIELD_MANAGER.to_owned()),
                    ..PostParams::default()
                };
                match api.create(&params, &orb).await {
                    Ok(created) => {
                        let result = if replaced {
                            OrbRequestResult::Replaced
                        } else {
                            OrbRequestResult::Created
                        };
                        return Ok((result, created));
                    }
                    // Another request (or replica) won the race, or the old one is not gone yet.
                    Err(e) if is_status(&e, 409) => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
    }
    Err(EnsureError::StillDeleting)
}

fn new_orb(name: &str, request: &OrbRequest, test_mode: bool) -> AiOrb {
    let mut orb = AiOrb::new(
        name,
        AiOrbSpec {
            room_id: request.room_id.clone(),
            coach_id: request.coach_id.clone(),
            client_id: request.client_id.clone(),
            session_id: request.session_id.clone(),
            test_mode,
            ..AiOrbSpec::default()
        },
    );
    orb.labels_mut()
        .insert("app.kubernetes.io/created-by".into(), SIGNALING_FIELD_MANAGER.into());
    orb
}

/// The presence patch: only signaling's two status fields, so the apply never touches (or takes
/// ownership of) the operator's.
pub fn presence_patch(name: &str, presence: Presence) -> serde_json::Value {
    json!({
        "apiVersion": AiOrb::api_version(&()),
        "kind": AiOrb::kind(&()),
        "metadata": { "name": name },
        "status": {
            "participants": presence.humans,
            "lastActivityTime": rfc3339_seconds(presence.last_activity),
        },
    })
}

fn rfc3339_seconds(t: SystemTime) -> String {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    jiff::Timestamp::from_second(secs)
        .unwrap_or(jiff::Timestamp::UNIX_EPOCH)
        .to_string()
}

async fn write_presence(api: &Api<AiOrb>, room_id: &str, presence: Presence, metrics: &Metrics) {
    let name = orb_name_for_room(room_id);
    // Signaling is the only writer of these fields, so taking them over (force) is always right.
    let params = PatchParams::apply(SIGNALING_FIELD_MANAGER).force();
    match api
        .patch_status(&name, &params, &Patch::Apply(presence_patch(&name, presence)))
        .await
    {
        Ok(_) => {
            metrics.presence_write(true);
            debug!(room = %room_id, humans = presence.humans, "presence written");
        }
        // No orb (yet, or any more): nothing to report on; a request re-schedules the write.
        Err(e) if is_status(&e, 404) => debug!(room = %room_id, "no AiOrb for presence"),
        Err(e) => {
            metrics.presence_write(false);
            warn!(room = %room_id, error = %e, "presence write failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_map_to_statuses() {
        assert_eq!(ai_status_for(None), AiStatus::Queued);
        assert_eq!(ai_status_for(Some(OrbPhase::Starting)), AiStatus::Starting);
        assert_eq!(ai_status_for(Some(OrbPhase::Ready)), AiStatus::Ready);
        assert_eq!(ai_status_for(Some(OrbPhase::Succeeded)), AiStatus::Ended);
        assert_eq!(ai_status_for(Some(OrbPhase::Failed)), AiStatus::Unavailable);
    }

    #[test]
    fn presence_patch_carries_only_signalings_fields() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_900);
        let patch = presence_patch(
            "room-a",
            Presence {
                humans: 2,
                last_activity: t,
            },
        );
        assert_eq!(
            patch,
            json!({
                "apiVersion": "hybridcoach.io/v1alpha1", "kind": "AiOrb", "metadata": {"name": "room-a"},
                "status": {"participants": 2, "lastActivityTime": "2023-11-14T22:13:20Z"}
            })
        );
    }
}
