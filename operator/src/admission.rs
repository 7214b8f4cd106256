//! The single admitting loop. Only the leader runs it, and each pass:
//!
//! 1. reads the admission ledger, a ConfigMap in the operator's namespace listing the uids that
//!    hold capacity;
//! 2. takes every AiOrb from the controller's watch-fed store ([`crate::cache`]), as last written
//!    by the operator where the store lags behind ([`crate::cache::RecentWrites`]), and reads back
//!    from the API the ledger's holders that view cannot vouch for ([`policy::holders_to_read_back`]:
//!    normally none), so a freed slot costs no list of the queue;
//! 3. plans with [`crate::policy::plan_admission`];
//! 4. writes the new ledger with the resourceVersion it read — the compare-and-swap that makes
//!    admission safe across parallel passes, restarts, leader changes and stale stores: of two
//!    writers that read the same ledger, one gets a conflict and starts over from a fresh read;
//! 5. only then marks the admitted orbs in their status (also resourceVersion-guarded: a write
//!    planned from a stale orb fails), and updates the queue positions shown (the first
//!    `shown_positions` places only, so a freed slot costs a bounded number of writes whatever the
//!    queue's length).
//!
//! An admitter that dies between 4 and 5 leaves uids in the ledger without status; the next pass
//! counts them as holding capacity and finishes their status write. The ledger, not the store, is
//! the truth of who holds a slot: a store behind the API may delay an admission, never add one
//! past the cap.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::events::{EventType, Recorder};
use kube::runtime::reflector::Store;
use kube::{Client, ResourceExt};
use orb_api::{AiOrb, OPERATOR_FIELD_MANAGER, OrbPhase, TerminationReason, UNFINISHED_SELECTOR};
use tokio::sync::Notify;
use tracing::{debug, info, warn};

use crate::cache::{ListedPage, RecentWrites};
use crate::controller::publish_event;
use crate::metrics::{Metrics, NamespaceLabels, NodeLabels, PhaseLabels, ResultLabels};
use crate::policy::{self, AdmissionEntry};
use crate::status;

pub const LEDGER_NAME: &str = "orb-operator-admission";
const LEDGER_KEY: &str = "admitted";
/// The ledger's second list: when each recent session's lifetime budget started
/// ([`policy::session_key`] and Unix seconds per line). Written in the same compare-and-swap as
/// the admissions, so two admitters cannot give one session two budgets.
const SESSIONS_KEY: &str = "sessions";
/// A pass runs at least this often, so nothing depends on a wake-up being delivered.
pub const RESYNC: Duration = Duration::from_secs(15);
/// AiOrbs per page of `orb-operator queue`'s list: bounds the response the API server builds at
/// once.
pub const LIST_PAGE: u32 = 500;

#[derive(Debug, thiserror::Error)]
pub enum AdmissionError {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("the admission ledger changed underneath this pass")]
    Conflict,
}

fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409)
}

/// What wakes the admitter between its periodic passes.
#[derive(Debug, Default)]
pub struct Wake {
    /// Capacity may have been freed: an orb finished or was deleted, or a write conflicted.
    pub freed: Notify,
    /// An orb joined the queue: worth a pass only while [`policy::arrival_needs_pass`], so that
    /// arrivals into a long queue do not each cost a pass.
    pub queued: Notify,
    /// The warm pool keeper: a warm pod was bound or capacity changed.
    pub pool: Notify,
    /// The ledger's holders as of the last pass (`None` before the first one).
    held: std::sync::Mutex<Option<BTreeSet<String>>>,
    /// The operator's writes a pass plans from (admissions, positions, ends) until the store
    /// shows them.
    pub written: RecentWrites,
}

impl Wake {
    /// Whether orb `uid` may still hold a slot for all the admitter knows: until a pass frees it,
    /// a deleted orb keeps its finalizer, so that the pass can read how it ended (its room's call
    /// may end with it, [`policy::ends_call`]).
    pub fn holds(&self, uid: &str) -> bool {
        let held = self.held.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        held.as_ref().is_none_or(|h| h.contains(uid))
    }

    /// Records the holders a pass left in the ledger.
    pub fn set_held(&self, ledger: BTreeSet<String>) {
        *self.held.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(ledger);
    }
}

pub struct Admitter {
    pub client: Client,
    pub ledger: Api<ConfigMap>,
    pub cap: usize,
    /// How many places at the head of the queue get `status.queuePosition`.
    pub shown_positions: usize,
    /// For the session budgets' retention.
    pub limits: policy::Limits,
    /// The controller's (trimmed) AiOrb store, which passes plan from.
    pub cache: Store<AiOrb>,
    pub metrics: Arc<Metrics>,
    pub recorder: Recorder,
    pub wake: Arc<Wake>,
    pub now: fn() -> Timestamp,
}

/// What one pass did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct PassOutcome {
    pub admitted: Vec<String>,
    pub queued: usize,
    /// The next time a booked orb becomes due: the next pass runs then at the latest.
    pub next_due: Option<Timestamp>,
}

pub(crate) fn parse_ledger(cm: &ConfigMap) -> BTreeSet<String> {
    ledger_names(cm).into_keys().collect()
}

/// How a holder the pass frees ended: its reason, when its status says it finished.
fn end_of(orb: Option<&AiOrb>) -> Option<(&AiOrb, TerminationReason)> {
    let orb = orb?;
    let reason = orb.status.as_ref()?.termination_reason.filter(|_| orb.is_finished())?;
    Some((orb, reason))
}

/// The ledger's holders by uid, each with the `namespace/name` its line gives (none when the
/// writer did not know it, `?`).
fn ledger_names(cm: &ConfigMap) -> BTreeMap<String, Option<(String, String)>> {
    cm.data
        .as_ref()
        .and_then(|d| d.get(LEDGER_KEY))
        .map(|v| {
            v.lines()
                .filter_map(|l| {
                    let mut words = l.split_whitespace().rev();
                    let uid = words.next()?;
                    let name = words
                        .next()
                        .and_then(|n| n.split_once('/'))
                        .map(|(ns, name)| (ns.to_owned(), name.to_owned()));
                    Some((uid.to_owned(), name))
                })
                .collect()
        })
        .unwrap_or_default()
}

fn parse_ledger_sessions(cm: &ConfigMap) -> policy::SessionBudgets {
    cm.data
        .as_ref()
        .and_then(|d| d.get(SESSIONS_KEY))
        .map(|v| policy::parse_sessions(v))
        .unwrap_or_default()
}

/// One line per holder, `namespace/name uid`, so that `kubectl get cm -o yaml` is readable.
fn render_ledger(ledger: &BTreeSet<String>, by_uid: &BTreeMap<&str, &AiOrb>) -> String {
    ledger
        .iter()
        .map(|uid| {
            let name = by_uid
                .get(uid.as_str())
                .and_then(|o| Some(format!("{}/{}", o.namespace()?, o.name_any())));
            format!("{} {uid}\n", name.as_deref().unwrap_or("?"))
        })
        .collect()
}

/// Every unfinished AiOrb, trimmed: a paged list, served as one snapshot (the continue token pins
/// the first page's resourceVersion). For `orb-operator queue`, which has no store.
pub async fn list_unfinished(orbs: &Api<AiOrb>) -> Result<Vec<Arc<AiOrb>>, kube::Error> {
    let client = orbs.clone().into_client();
    let resource = kube::core::Request::new(orbs.resource_url());
    let mut params = ListParams::default().labels(UNFINISHED_SELECTOR).limit(LIST_PAGE);
    let mut all = Vec::new();
    loop {
        let request = resource.list(&params).map_err(kube::Error::BuildRequest)?;
        let page: ListedPage = client.request(request).await?;
        all.extend(page.items.into_iter().map(|o| Arc::new(AiOrb::from(o))));
        match page.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(token) => params = params.continue_token(&token),
            None => return Ok(all),
        }
    }
}

/// What a pass reads, and the plan made from it.
pub struct Snapshot {
    pub ledger_cm: Option<ConfigMap>,
    pub ledger: BTreeSet<String>,
    /// The orbs planned from: the view given, its ledger holders read back where it could not
    /// vouch for them (one whose status is not terminal holds its slot whatever its labels say).
    pub orbs: Vec<Arc<AiOrb>>,
    pub plan: policy::AdmissionPlan,
}

/// Reads the ledger.
pub async fn read_ledger(ledger: &Api<ConfigMap>) -> Result<Option<ConfigMap>, kube::Error> {
    ledger.get_opt(LEDGER_NAME).await
}

/// Plans from `ledger_cm` and a `view` of the orbs (steps 2 and 3) at `now`, admitting booked
/// orbs `prewarm_lead` before their start.
pub async fn snapshot(
    client: &Client,
    ledger_cm: Option<ConfigMap>,
    mut view: Vec<Arc<AiOrb>>,
    cap: usize,
    prewarm_lead: Duration,
    now: Timestamp,
) -> Result<Snapshot, kube::Error> {
    let held = ledger_cm.as_ref().map(parse_ledger).unwrap_or_default();
    let mut entries: Vec<AdmissionEntry> = view.iter().filter_map(|o| entry(o, prewarm_lead, now)).collect();
    let unvouched: BTreeSet<String> = policy::holders_to_read_back(&entries, &held).into_iter().collect();
    if !unvouched.is_empty() {
        let names = holder_names(ledger_cm.as_ref(), &view, &unvouched);
        view.retain(|o| !o.metadata.uid.as_ref().is_some_and(|u| unvouched.contains(u)));
        for (uid, (ns, name)) in names {
            let found = Api::<AiOrb>::namespaced(client.clone(), &ns).get_opt(&name).await?;
            // The same uid only: a new AiOrb of that name is another orb. Not found: gone.
            if let Some(mut orb) = found.filter(|o| o.metadata.uid.as_deref() == Some(uid.as_str())) {
                crate::cache::trim(&mut orb);
                view.push(Arc::new(orb));
            }
        }
        entries = view.iter().filter_map(|o| entry(o, prewarm_lead, now)).collect();
    }
    let plan = policy::plan_admission(&entries, &held, cap);
    Ok(Snapshot {
        ledger_cm,
        ledger: held,
        orbs: view,
        plan,
    })
}

/// Where to read each of `uids` back: as the view names it, else as its ledger line does. A holder
/// neither names is gone from both (the ledger line of a writer that did not know it).
fn holder_names(
    ledger_cm: Option<&ConfigMap>,
    view: &[Arc<AiOrb>],
    uids: &BTreeSet<String>,
) -> BTreeMap<String, (String, String)> {
    let mut names: BTreeMap<String, (String, String)> = ledger_cm
        .map(ledger_names)
        .unwrap_or_default()
        .into_iter()
        .filter(|(uid, _)| uids.contains(uid))
        .filter_map(|(uid, name)| Some((uid, name?)))
        .collect();
    for orb in view {
        if let (Some(uid), Some(ns)) = (orb.metadata.uid.as_ref().filter(|u| uids.contains(*u)), orb.namespace()) {
            names.insert(uid.clone(), (ns, orb.name_any()));
        }
    }
    names
}

/// The whole queue, one line per place, as `orb-operator queue` prints it: the same plan a pass
/// makes, so the places are the ones the admitter will follow.
pub fn render_queue(snapshot: &Snapshot, cap: usize, now: Timestamp) -> String {
    let by_uid = by_uid(&snapshot.orbs);
    let plan = &snapshot.plan;
    let mut out = format!(
        "{} of {cap} slots held, {} queued\n{:<9} {:<60} {}\n",
        plan.ledger.len(),
        plan.queue.len(),
        "POSITION",
        "AIORB",
        "WAITING"
    );
    for (uid, position) in &plan.queue {
        let Some(orb) = by_uid.get(uid.as_str()) else { continue };
        let waiting = orb
            .metadata
            .creation_timestamp
            .as_ref()
            .map_or(0, |t| t.0.duration_until(now).as_secs().max(0));
        let name = format!("{}/{}", orb.namespace().unwrap_or_default(), orb.name_any());
        out.push_str(&format!("{position:<9} {name:<60} {waiting}s\n"));
    }
    out
}

fn by_uid(orbs: &[Arc<AiOrb>]) -> BTreeMap<&str, &AiOrb> {
    orbs.iter()
        .filter_map(|o| Some((o.metadata.uid.as_deref()?, o.as_ref())))
        .collect()
}

/// When a booked orb not yet admitted becomes due, if later than `now`. Someone already in its
/// room (early for the booking) makes it due at once.
fn due_later(orb: &AiOrb, prewarm_lead: Duration, now: Timestamp) -> Option<Timestamp> {
    let status = orb.status.as_ref();
    if status.is_some_and(|s| s.admitted_at.is_some() || s.participants.is_some_and(|p| p > 0)) {
        return None;
    }
    policy::admission_due(orb.spec.start_at.as_ref().map(|t| t.0), prewarm_lead).filter(|due| *due > now)
}

fn entry(orb: &AiOrb, prewarm_lead: Duration, now: Timestamp) -> Option<AdmissionEntry> {
    let status = orb.status.as_ref();
    Some(AdmissionEntry {
        scheduled: due_later(orb, prewarm_lead, now).is_some(),
        uid: orb.metadata.uid.clone()?,
        key: format!("{}/{}", orb.namespace().unwrap_or_default(), orb.name_any()),
        created: orb
            .metadata
            .creation_timestamp
            .as_ref()
            .map_or(Timestamp::UNIX_EPOCH, |t| t.0),
        phase: status.and_then(|s| s.phase),
        admitted: status.is_some_and(|s| s.admitted_at.is_some()),
        deleting: orb.metadata.deletion_timestamp.is_some(),
        valid: policy::validate_spec(&orb.spec).is_ok(),
    })
}

impl Admitter {
    /// Runs passes on every wake-up and every [`RESYNC`] until `shutdown` resolves.
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        // Passes plan from the store: not before it holds every orb. An empty store would show
        // no one waiting (admitting nobody) and no holder the ledger does not name.
        tokio::select! {
            _ = &mut shutdown => return,
            ready = self.cache.wait_until_ready() => {
                if ready.is_err() {
                    warn!("the AiOrb store closed before it was filled; the admitter stops");
                    return;
                }
            }
        }
        // After API errors: 1 s doubling to 32 s (jittered), until a pass succeeds again.
        let retry = ExponentialBuilder::default()
            .with_min_delay(Duration::from_secs(1))
            .with_max_delay(Duration::from_secs(32))
            .with_jitter()
            .without_max_times();
        let mut failing = retry.build();
        loop {
            // Until a pass succeeds, every arrival is worth one.
            let mut arrivals = true;
            let delay = match self.pass().await {
                Ok(outcome) => {
                    failing = retry.build();
                    arrivals = policy::arrival_needs_pass(outcome.queued, self.shown_positions);
                    self.metrics
                        .admission_passes
                        .get_or_create(&ResultLabels { result: "success" })
                        .inc();
                    debug!(
                        admitted = outcome.admitted.len(),
                        queued = outcome.queued,
                        "admission pass"
                    );
                    // A booked orb falling due is admitted on time, not at the next resync.
                    let until_due = outcome
                        .next_due
                        .map(|due| Duration::try_from((self.now)().duration_until(due)).unwrap_or(Duration::ZERO));
                    until_due.map_or(RESYNC, |d| d.min(RESYNC))
                }
                Err(AdmissionError::Conflict) => {
                    self.metrics
                        .admission_passes
                        .get_or_create(&ResultLabels { result: "conflict" })
                        .inc();
                    Duration::from_millis(200)
                }
                Err(e) => {
                    self.metrics
                        .admission_passes
                        .get_or_create(&ResultLabels { result: "error" })
                        .inc();
                    warn!(error = %e, "admission pass failed");
                    failing.next().unwrap_or(RESYNC)
                }
            };
            tokio::select! {
                _ = &mut shutdown => return,
                _ = self.wake.freed.notified() => {}
                _ = self.wake.queued.notified(), if arrivals => {}
                _ = tokio::time::sleep(delay) => {}
            }
        }
    }

    /// One admission pass (see the module docs for the steps).
    pub async fn pass(&self) -> Result<PassOutcome, AdmissionError> {
        let now = (self.now)();
        let ledger_cm = read_ledger(&self.ledger).await?;
        // Taken after the ledger read: as fresh as the store is.
        let view = self.wake.written.view(self.cache.state());
        let Snapshot {
            ledger_cm,
            ledger,
            orbs,
            plan,
        } = snapshot(&self.client, ledger_cm, view, self.cap, self.limits.prewarm_lead, now).await?;
        let sessions = ledger_cm.as_ref().map(parse_ledger_sessions).unwrap_or_default();
        let by_uid = by_uid(&orbs);
        self.observe(&by_uid, &plan);

        let mut next_sessions = policy::prune_sessions(&sessions, now, &self.limits);
        // The orbs whose slots this pass frees: one that ended its room's call takes the call's
        // budget along, before anyone is admitted into the room again.
        for uid in ledger.difference(&plan.ledger) {
            let Some((orb, reason)) = end_of(by_uid.get(uid.as_str()).copied()) else {
                continue;
            };
            let ns = orb.namespace().unwrap_or_default();
            if policy::end_session(&mut next_sessions, &ns, &orb.spec, reason) {
                info!(orb = %orb.name_any(), %reason, "the room's call ended; its next orb gets a fresh lifetime");
            }
        }
        // Each newly admitted orb joins its session's budget (or starts one).
        let mut session_starts: BTreeMap<&str, Timestamp> = BTreeMap::new();
        for uid in &plan.admit {
            let Some(orb) = by_uid.get(uid.as_str()) else { continue };
            let key = policy::session_key(&orb.namespace().unwrap_or_default(), &orb.spec);
            // A ledger entry whose status write was lost keeps the start it was given then.
            let start = match orb.status.as_ref().and_then(|s| s.session_started_at.as_ref()) {
                Some(t) => *next_sessions.entry(key).or_insert(t.0),
                None => policy::session_start(&mut next_sessions, &key, now, orb.spec.start_at.as_ref().map(|t| t.0)),
            };
            session_starts.insert(uid.as_str(), start);
        }

        if plan.ledger != ledger || next_sessions != sessions {
            self.write_ledger(ledger_cm, &plan.ledger, &next_sessions, &by_uid)
                .await?;
        }
        self.wake.set_held(plan.ledger.clone());
        let mut outcome = PassOutcome {
            queued: plan.queue.len(),
            next_due: orbs
                .iter()
                .filter(|o| !o.is_finished())
                .filter_map(|o| due_later(o, self.limits.prewarm_lead, now))
                .min(),
            ..Default::default()
        };
        for uid in &plan.admit {
            let Some(orb) = by_uid.get(uid.as_str()) else { continue };
            let mut next = status::operator_status(orb);
            next.admitted_at = Some(Time(now));
            next.session_started_at = session_starts.get(uid.as_str()).map(|t| Time(*t));
            next.queue_position = None;
            next.phase = Some(OrbPhase::Starting);
            if self.write_status(orb, next, now).await? {
                if let Some(created) = &orb.metadata.creation_timestamp {
                    self.metrics
                        .admission_wait
                        .observe(created.0.duration_until(now).as_secs_f64().max(0.0));
                }
                info!(orb = %orb.name_any(), "admitted");
                self.event(orb, "Admitted", "admitted within the concurrency cap".into())
                    .await;
                outcome.admitted.push(orb.name_any());
            }
        }
        for (uid, position) in &plan.queue {
            let Some(orb) = by_uid.get(uid.as_str()) else { continue };
            let current = orb.status.clone().unwrap_or_default();
            let shown = policy::shown_position(*position, self.shown_positions);
            // Behind the places shown, only a stale position is worth a write: an orb without a
            // phase yet gets `Queued` from its own reconcile, so a burst of new orbs costs the
            // pass no writes.
            let up_to_date =
                current.queue_position == shown && (current.phase == Some(OrbPhase::Queued) || shown.is_none());
            if up_to_date {
                continue;
            }
            let mut next = status::operator_status(orb);
            next.phase = Some(OrbPhase::Queued);
            next.queue_position = shown;
            if self.write_status(orb, next, now).await? && current.phase != Some(OrbPhase::Queued) {
                self.event(orb, "Queued", format!("at capacity; position {position} in the queue"))
                    .await;
            }
        }
        Ok(outcome)
    }

    async fn write_ledger(
        &self,
        existing: Option<ConfigMap>,
        ledger: &BTreeSet<String>,
        sessions: &policy::SessionBudgets,
        by_uid: &BTreeMap<&str, &AiOrb>,
    ) -> Result<(), AdmissionError> {
        let data = BTreeMap::from([
            (LEDGER_KEY.to_owned(), render_ledger(ledger, by_uid)),
            (SESSIONS_KEY.to_owned(), policy::render_sessions(sessions)),
        ]);
        let result = match existing {
            // Replace carries the resourceVersion we read: the compare-and-swap.
            Some(mut cm) => {
                cm.data = Some(data);
                self.ledger.replace(LEDGER_NAME, &PostParams::default(), &cm).await
            }
            None => {
                let cm = ConfigMap {
                    metadata: ObjectMeta {
                        name: Some(LEDGER_NAME.into()),
                        labels: Some(BTreeMap::from([(
                            "app.kubernetes.io/managed-by".into(),
                            "orb-operator".into(),
                        )])),
                        ..Default::default()
                    },
                    data: Some(data),
                    ..Default::default()
                };
                self.ledger.create(&PostParams::default(), &cm).await
            }
        };
        match result {
            Ok(_) => Ok(()),
            Err(e) if is_conflict(&e) => Err(AdmissionError::Conflict),
            Err(e) => Err(e.into()),
        }
    }

    /// Returns false when the orb changed since the version planned from (it will be seen again
    /// next pass). A written orb is recorded until the store shows it.
    async fn write_status(
        &self,
        orb: &AiOrb,
        mut next: orb_api::AiOrbStatus,
        now: Timestamp,
    ) -> Result<bool, AdmissionError> {
        status::derive_conditions(&mut next, orb.metadata.generation, None, now);
        let api: Api<AiOrb> = Api::namespaced(self.client.clone(), &orb.namespace().unwrap_or_default());
        let params = PatchParams::apply(OPERATOR_FIELD_MANAGER).force();
        match api
            .patch_status(
                &orb.name_any(),
                &params,
                &Patch::Apply(status::status_apply_body(orb, &next)),
            )
            .await
        {
            Ok(written) => {
                self.wake.written.wrote(orb, written);
                Ok(true)
            }
            Err(e) if is_conflict(&e) => {
                self.wake.freed.notify_one();
                Ok(false)
            }
            Err(e) => Err(e.into()),
        }
    }

    async fn event(&self, orb: &AiOrb, reason: &str, note: String) {
        publish_event(&self.recorder, orb, EventType::Normal, reason, note, "Admit").await;
    }

    fn observe(&self, by_uid: &BTreeMap<&str, &AiOrb>, plan: &policy::AdmissionPlan) {
        let m = &self.metrics;
        for phase in OrbPhase::ALL {
            let n = by_uid
                .values()
                .filter(|o| o.phase().unwrap_or(OrbPhase::Queued) == phase)
                .count();
            m.orbs
                .get_or_create(&PhaseLabels { phase: phase.as_str() })
                .set(n as i64);
        }
        m.namespace_queue_length.clear();
        for (uid, _) in &plan.queue {
            if let Some(ns) = by_uid.get(uid.as_str()).and_then(|o| o.namespace()) {
                m.namespace_queue_length
                    .get_or_create(&NamespaceLabels { namespace: ns })
                    .inc();
            }
        }
        m.node_orbs.clear();
        for orb in by_uid.values().filter(|o| !o.is_finished()) {
            if let Some(node) = orb.status.as_ref().and_then(|s| s.node_name.clone()) {
                m.node_orbs.get_or_create(&NodeLabels { node }).inc();
            }
        }
        m.queue_length.set(plan.queue.len() as i64);
        m.capacity_used.set(plan.ledger.len() as i64);
        m.capacity_limit.set(self.cap as i64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use orb_api::AiOrbSpec;

    fn orb(name: &str, created: Timestamp) -> AiOrb {
        let mut o = AiOrb::new(name, AiOrbSpec::default());
        o.metadata.namespace = Some("calls".into());
        o.metadata.uid = Some(format!("uid-{name}"));
        o.metadata.creation_timestamp = Some(Time(created));
        o
    }

    #[test]
    fn the_queue_command_prints_every_place_in_admission_order() {
        let now: Timestamp = "2027-01-15T08:00:00Z".parse().unwrap();
        let ago = |s| now - jiff::SignedDuration::from_secs(s);
        let snapshot = Snapshot {
            ledger_cm: None,
            ledger: BTreeSet::new(),
            orbs: [orb("late", ago(5)), orb("first", ago(90)), orb("second", ago(60))]
                .map(Arc::new)
                .into(),
            plan: policy::AdmissionPlan {
                ledger: BTreeSet::from(["uid-first".to_owned()]),
                admit: vec!["uid-first".into()],
                queue: vec![("uid-second".into(), 1), ("uid-late".into(), 2)],
            },
        };
        let text = render_queue(&snapshot, 1, now);
        let lines: Vec<Vec<&str>> = text.lines().map(|l| l.split_whitespace().collect()).collect();
        assert_eq!(lines[0].join(" "), "1 of 1 slots held, 2 queued");
        assert_eq!(lines[2], ["1", "calls/second", "60s"]);
        assert_eq!(lines[3], ["2", "calls/late", "5s"]);
        assert_eq!(lines.len(), 4);
    }
}
