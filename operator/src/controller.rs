//! The AiOrb reconciler: read → validate → decide (pure, [`crate::policy`]) → apply → status.
//!
//! The reconciler never admits: admission belongs to the single admitting loop in
//! [`crate::admission`], which the reconciler wakes when an orb waits or frees capacity. Every
//! status write is a server-side apply with a resourceVersion precondition, so a reconcile working
//! from a stale cache gets a conflict and retries instead of undoing newer state.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Pod, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event as KubeEvent, EventType, Recorder};
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::runtime::reflector::{self, store::Writer};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};
use orb_api::naming::pod_name;
use orb_api::{AiOrb, FINISHED_LABEL, OPERATOR_FIELD_MANAGER, OrbPhase, PodStart, TerminationReason};
use thiserror::Error;
use tracing::{Instrument, field, info, info_span, warn};

use crate::config::{Config, PodSettings, PoolSettings};
use crate::metrics::{Metrics, StartLabels};
use crate::pod::{MANAGED_SELECTOR, TERMINATION_GRACE_SECONDS, build_pod, build_token_secret};
use crate::policy::{self, Decision, Limits, OrbClock, OrbView, PodState, Step};
use crate::pool::{Assigner, Bound, HttpAssigner};
use crate::status::{self, REPLACING};

pub const FINALIZER: &str = "hybridcoach.io/orb-cleanup";

#[derive(Debug, Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
    #[error("AiOrb has no namespace")]
    NoNamespace,
    /// Not a failure: a deleted orb keeps its finalizer until its pod is gone.
    #[error("waiting for pod {0} to terminate")]
    WaitingForPod(String),
    /// Not a failure: an earlier AiOrb of the same name left an object the garbage collector has
    /// not removed yet.
    #[error("waiting for the garbage collector to remove {0} of an earlier AiOrb of this name")]
    WaitingForLeftover(String),
    /// Not a failure: a deleted orb keeps its finalizer until an admission pass has freed its slot
    /// (and read how it ended).
    #[error("waiting for an admission pass to free the slot of the deleted orb")]
    WaitingForAdmission,
}

impl Error {
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube(kube::Error::Api(s)) if s.code == 409 => "conflict",
            Error::Kube(_) => "kube",
            Error::Finalizer(inner) => match inner.as_ref() {
                kube::runtime::finalizer::Error::ApplyFailed(e) | kube::runtime::finalizer::Error::CleanupFailed(e) => {
                    e.metric_label()
                }
                _ => "finalizer",
            },
            Error::NoNamespace => "invalid_object",
            Error::WaitingForPod(_) | Error::WaitingForLeftover(_) | Error::WaitingForAdmission => "waiting_for_pod",
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Shared state of all reconciles.
pub struct Context {
    pub client: Client,
    pub limits: Limits,
    pub pod: PodSettings,
    pub signing_key: orb_api::auth::SigningKey,
    pub metrics: Arc<Metrics>,
    pub recorder: Recorder,
    /// Wakes the admitter.
    pub admission: Arc<crate::admission::Wake>,
    /// The warm pool, if any: admitted orbs in its namespace are bound to its pods.
    pub pool: Option<PoolSettings>,
    /// Sends warm pods their assignments.
    pub assigner: Arc<dyn Assigner>,
    /// The clock: injected so that scenario tests are exact.
    pub now: fn() -> Timestamp,
}

impl Context {
    pub fn new(client: Client, config: &Config, metrics: Arc<Metrics>, admission: Arc<crate::admission::Wake>) -> Self {
        let reporter = kube::runtime::events::Reporter {
            controller: "orb-operator".into(),
            instance: Some(config.identity.clone()),
        };
        Context {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            limits: config.limits.clone(),
            pod: config.pod.clone(),
            signing_key: config.signing_key.clone(),
            metrics,
            admission,
            pool: config.pool.clone(),
            assigner: Arc::new(HttpAssigner),
            now: Timestamp::now,
        }
    }

    async fn event(&self, orb: &AiOrb, type_: EventType, reason: &str, note: String) {
        publish_event(&self.recorder, orb, type_, reason, note, "Reconcile").await;
    }
}

/// Publishes a Kubernetes Event about an orb. Events are best effort: losing one must never fail
/// or repeat a transition.
pub async fn publish_event(
    recorder: &Recorder,
    orb: &AiOrb,
    type_: EventType,
    reason: &str,
    note: String,
    action: &str,
) {
    let ev = KubeEvent {
        type_,
        reason: reason.into(),
        note: Some(note),
        action: action.into(),
        secondary: None,
    };
    if let Err(e) = recorder.publish(&ev, &orb.object_ref(&())).await {
        warn!(error = %e, "could not publish event {reason}");
    }
}

/// Reconciles one AiOrb. Deletion goes through the finalizer so the pod is removed and the end
/// recorded before the AiOrb disappears.
pub async fn reconcile(orb: Arc<AiOrb>, ctx: Arc<Context>) -> Result<Action> {
    let span = info_span!("reconcile", orb = %orb.name_any(), namespace = field::Empty);
    let started = Instant::now();
    let result = async {
        let ns = orb.namespace().ok_or(Error::NoNamespace)?;
        tracing::Span::current().record("namespace", ns.as_str());
        let api: Api<AiOrb> = Api::namespaced(ctx.client.clone(), &ns);
        finalizer(&api, FINALIZER, orb, |event| async {
            match event {
                Finalizer::Apply(orb) => apply(&orb, &ctx).await,
                Finalizer::Cleanup(orb) => cleanup(&orb, &ctx).await,
            }
        })
        .await
        .map_err(|e| Error::Finalizer(Box::new(e)))
    }
    .instrument(span)
    .await;
    let label = result
        .as_ref()
        .err()
        .map(Error::metric_label)
        .filter(|l| *l != "waiting_for_pod");
    ctx.metrics.reconciled(started.elapsed(), label);
    result
}

/// Requeue policy on error: conflicts and pod waits retry soon, API trouble backs off. Never a hot
/// loop: the shortest delay is a second.
pub fn error_policy(orb: Arc<AiOrb>, error: &Error, _ctx: Arc<Context>) -> Action {
    match error.metric_label() {
        "conflict" => Action::requeue(Duration::from_secs(1)),
        "waiting_for_pod" => Action::requeue(Duration::from_secs(3)),
        _ => {
            warn!(orb = %orb.name_any(), %error, "reconcile failed");
            Action::requeue(Duration::from_secs(15))
        }
    }
}

/// The orb's current pod: the one its status names (a bound warm pod has its own name), else the
/// current attempt's.
fn current_pod(orb: &AiOrb) -> String {
    let status = orb.status.as_ref();
    status
        .and_then(|s| s.pod_name.clone())
        .unwrap_or_else(|| pod_name(&orb.name_any(), status.and_then(|s| s.restarts).unwrap_or(0)))
}

fn view_of(orb: &AiOrb, pod_found: bool) -> OrbView {
    let status = orb.status.clone().unwrap_or_default();
    let created = orb
        .metadata
        .creation_timestamp
        .as_ref()
        .map_or(Timestamp::UNIX_EPOCH, |t| t.0);
    let attempt = status.restarts.unwrap_or(0);
    OrbView {
        phase: status.phase,
        clock: OrbClock {
            created,
            admitted_at: status.admitted_at.as_ref().map(|t| t.0),
            session_started_at: status.session_started_at.as_ref().map(|t| t.0),
            participants: status.participants,
            last_activity: status.last_activity_time.as_ref().map(|t| t.0),
            start_at: orb.spec.start_at.as_ref().map(|t| t.0),
        },
        finished_at: status.finished_at.as_ref().map(|t| t.0),
        // The status names the current attempt's pod once one was created or bound.
        has_pod: pod_found || status.pod_name.is_some(),
        restarts: attempt,
        termination_reason: status.termination_reason,
        failed_since: status::failed_since(&status),
        invalid: policy::validate_spec(&orb.spec).err().map(|e| e.to_string()),
    }
}

/// Time from `now` until `at`; zero once `at` has passed.
fn remaining(now: Timestamp, at: Timestamp) -> Duration {
    Duration::try_from(now.duration_until(at)).unwrap_or(Duration::ZERO)
}

fn requeue(decision: &Decision, now: Timestamp) -> Action {
    match decision.requeue_at {
        Some(at) => {
            let wait = remaining(now, at);
            // A second of slack: waking a hair early would only reschedule.
            Action::requeue(wait.max(Duration::from_millis(100)) + Duration::from_secs(1))
        }
        None => Action::await_change(),
    }
}

async fn apply(orb: &AiOrb, ctx: &Context) -> Result<Action> {
    let ns = orb.namespace().ok_or(Error::NoNamespace)?;
    let name = orb.name_any();
    let now = (ctx.now)();
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let current = orb.status.clone().unwrap_or_default();
    let current_pod = current_pod(orb);

    // Read: only an admitted orb can have a pod. Read it from the API, not a cache, so a pod
    // deleted underneath is seen as gone.
    let pod = if current.admitted_at.is_some() {
        pods.get_opt(&current_pod).await?
    } else {
        None
    };
    let pod_state = policy::observe_pod(pod.as_ref());
    let view = view_of(orb, pod.is_some());
    let orb_limits = policy::orb_limits(&orb.spec, &ctx.limits);
    let decision = policy::decide(&view, &pod_state, &orb_limits, &ctx.limits, now);

    let mut next = status::operator_status(orb);
    let mut wake = None;
    // The Replacing condition stays set while a failed pod waits out its backoff.
    let was_replacing = status::condition_status(&current, REPLACING)
        .filter(|c| c.status == "True")
        .map(|c| c.reason.clone());
    let replacing = match &decision.step {
        Step::AwaitReplacement { reason, .. } => Some(reason.as_str().to_owned()),
        Step::Wait => was_replacing.clone(),
        _ => None,
    };
    match &decision.step {
        Step::Wait => {
            // Only an orb new to the queue wakes the admitter: a queued orb reconciled again (its
            // position written, say) changes nothing a pass would see, and waking on each would
            // turn every position write into another pass.
            if current.admitted_at.is_none() && current.phase != Some(OrbPhase::Queued) {
                next.phase.get_or_insert(OrbPhase::Queued);
                wake = Some(&ctx.admission.queued);
            }
        }
        Step::Track => track(&mut next, &pod_state, orb, ctx, now).await,
        Step::CreatePod { attempt } => {
            let (pod, start) = match start_pod(orb, ctx, *attempt, &view.clock, &orb_limits, now).await? {
                Started::Pod(pod, start) => (pod, start),
                Started::Conflict(conflict) => return name_conflict(orb, ctx, next, &conflict, now).await,
            };
            next.pod_name = Some(pod.clone());
            next.pod_start = Some(start);
            next.phase = Some(OrbPhase::Starting);
            let (reason, note) = match start {
                PodStart::Cold => ("PodCreated", format!("created pod {pod}")),
                PodStart::Warm => ("WarmPodBound", format!("bound to warm pod {pod}")),
            };
            ctx.event(orb, EventType::Normal, reason, note).await;
        }
        Step::Terminate { reason } => {
            delete_pod(&pods, &current_pod).await?;
            if current.phase != Some(OrbPhase::Terminating) {
                next.phase = Some(OrbPhase::Terminating);
                next.termination_reason = Some(*reason);
                ctx.event(
                    orb,
                    EventType::Normal,
                    "Terminating",
                    format!("stopping the orb: {reason}"),
                )
                .await;
            }
        }
        Step::Finish { phase, reason, message } => {
            next.phase = Some(*phase);
            next.termination_reason = Some(*reason);
            next.message = message.clone().or(next.message);
            next.finished_at = Some(Time(now));
            next.queue_position = None;
            let type_ = if *phase == OrbPhase::Failed {
                EventType::Warning
            } else {
                EventType::Normal
            };
            let note = format!(
                "{phase}: {reason}{}",
                message.as_deref().map(|m| format!(" ({m})")).unwrap_or_default()
            );
            ctx.event(orb, type_, phase.as_str(), note).await;
            ctx.metrics.terminated(*reason);
            wake = Some(&ctx.admission.freed);
        }
        Step::AwaitReplacement { reason, message } => {
            next.message = message.clone();
            if was_replacing.is_none() {
                let note = format!("pod failed ({reason}); replacing it after a backoff");
                ctx.event(orb, EventType::Warning, "PodFailed", note).await;
            }
        }
        Step::Replace { attempt: new_attempt } => {
            delete_pod(&pods, &current_pod).await?;
            let (pod, start) = match start_pod(orb, ctx, *new_attempt, &view.clock, &orb_limits, now).await? {
                Started::Pod(pod, start) => (pod, start),
                Started::Conflict(conflict) => return name_conflict(orb, ctx, next, &conflict, now).await,
            };
            next.restarts = Some(*new_attempt);
            next.pod_name = Some(pod);
            next.pod_start = Some(start);
            next.node_name = None;
            next.phase = Some(OrbPhase::Starting);
            ctx.metrics.restarts.inc();
            ctx.event(
                orb,
                EventType::Normal,
                "PodReplaced",
                format!("replacement {new_attempt} of the failed pod"),
            )
            .await;
        }
        Step::Expire => {
            let api: Api<AiOrb> = Api::namespaced(ctx.client.clone(), &ns);
            info!("finished orb's TTL passed; deleting it");
            match api.delete(&name, &DeleteParams::default()).await {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => return Err(e.into()),
            }
            return Ok(Action::await_change());
        }
    }
    let finished = next.phase.is_some_and(OrbPhase::is_terminal);
    write_status(orb, ctx, next, replacing, now).await?;
    // Only once the status is written (and recorded for the pass): a pass woken earlier would
    // plan from the orb as it was, admit nobody into the slot it frees, and leave the slot empty
    // until the next resync.
    if let Some(wake) = wake {
        wake.notify_one();
    }
    if finished && orb.labels().get(FINISHED_LABEL).map(String::as_str) != Some("true") {
        label_finished(orb, ctx).await?;
    }
    Ok(requeue(&decision, now))
}

/// Labels a finished orb, so that lists of the unfinished ones (`orb-operator queue`'s) skip it.
/// Only once its terminal status is written (terminal phases are final); a label is no proof
/// that an orb finished, so admission reads back a ledger holder whatever its labels. The uid makes it a precondition: a new AiOrb of the same name (a
/// room used again) is never labelled by mistake.
async fn label_finished(orb: &AiOrb, ctx: &Context) -> Result<()> {
    let api: Api<AiOrb> = Api::namespaced(ctx.client.clone(), &orb.namespace().ok_or(Error::NoNamespace)?);
    let body = serde_json::json!({
        "apiVersion": AiOrb::api_version(&()),
        "kind": AiOrb::kind(&()),
        "metadata": {
            "name": orb.metadata.name,
            "uid": orb.metadata.uid,
            "labels": { FINISHED_LABEL: "true" },
        },
    });
    let params = PatchParams::apply(OPERATOR_FIELD_MANAGER).force();
    api.patch(&orb.name_any(), &params, &Patch::Apply(body)).await?;
    Ok(())
}

/// Mirrors the running pod into the status.
async fn track(next: &mut orb_api::AiOrbStatus, pod: &PodState, orb: &AiOrb, ctx: &Context, now: Timestamp) {
    let phase = policy::tracked_phase(pod);
    if let PodState::Pending { node: Some(n) } | PodState::Running { node: Some(n), .. } = pod {
        next.node_name = Some(n.clone());
    }
    if phase == OrbPhase::Ready && next.phase != Some(OrbPhase::Ready) {
        if next.ready_at.is_none() {
            next.ready_at = Some(Time(now));
            if let Some(created) = &orb.metadata.creation_timestamp {
                let start = if orb.spec.start_at.is_some() {
                    "prewarmed"
                } else if next.pod_start == Some(PodStart::Warm) {
                    "warm"
                } else {
                    "cold"
                };
                ctx.metrics
                    .time_to_ready
                    .get_or_create(&StartLabels { start })
                    .observe(created.0.duration_until(now).as_secs_f64().max(0.0));
            }
        }
        let node = next.node_name.clone().unwrap_or_default();
        ctx.event(
            orb,
            EventType::Normal,
            "Ready",
            format!("the orb joined its room from node {node}"),
        )
        .await;
    }
    next.phase = Some(phase);
}

/// Writes the status if it changed, with a resourceVersion precondition.
async fn write_status(
    orb: &AiOrb,
    ctx: &Context,
    mut next: orb_api::AiOrbStatus,
    replacing: Option<String>,
    now: Timestamp,
) -> Result<()> {
    status::derive_conditions(&mut next, orb.metadata.generation, replacing.as_deref(), now);
    if next == status::operator_status(orb) {
        return Ok(());
    }
    let api: Api<AiOrb> = Api::namespaced(ctx.client.clone(), &orb.namespace().ok_or(Error::NoNamespace)?);
    let params = PatchParams::apply(OPERATOR_FIELD_MANAGER).force();
    let mut base = orb.clone();
    // A conflict caused by signaling's fields alone (presence, the summary; written any time, and
    // during a warm pod's bind, which takes seconds) does not touch what this status was decided
    // from: applied again at the newer version. Any change of the operator's own fields (an
    // admission, another reconcile) is a real conflict, left to the next reconcile.
    for _ in 0..STATUS_WRITE_TRIES {
        match api
            .patch_status(
                &orb.name_any(),
                &params,
                &Patch::Apply(status::status_apply_body(&base, &next)),
            )
            .await
        {
            Ok(written) => {
                // An end frees a slot: the pass this wakes plans from it, even before the store
                // has it.
                if next.phase.is_some_and(OrbPhase::is_terminal) {
                    ctx.admission.written.wrote(&base, written);
                }
                return Ok(());
            }
            Err(kube::Error::Api(s)) if s.code == 409 => {
                let Some(fresh) = api.get_opt(&orb.name_any()).await? else {
                    return Err(kube::Error::Api(s).into());
                };
                if fresh.uid() != orb.uid() || status::operator_status(&fresh) != status::operator_status(orb) {
                    return Err(kube::Error::Api(s).into());
                }
                base = fresh;
            }
            Err(e) => return Err(e.into()),
        }
    }
    Err(Error::Kube(kube::Error::Api(Box::new(
        kube::core::Status::failure(
            "signaling's status writes kept conflicting with the operator's",
            "Conflict",
        )
        .with_code(409),
    ))))
}

/// Status writes tried while only signaling's fields change in between.
const STATUS_WRITE_TRIES: usize = 5;

/// The orb's room token: its room, role `ai`, naming this AiOrb, for what is left of its lifetime.
fn orb_token(orb: &AiOrb, ctx: &Context, clock: &OrbClock, limits: &policy::OrbLimits, now: Timestamp) -> String {
    let uid = orb.uid().unwrap_or_default();
    let claims = policy::orb_token_claims(&orb.spec, &orb.name_any(), &uid, clock, limits, now);
    ctx.signing_key.mint(&claims)
}

/// How starting an attempt went.
enum Started {
    /// The attempt runs in this pod, started this way.
    Pod(String, PodStart),
    /// A new pod could not be created under the orb's names.
    Conflict(NameConflict),
}

/// Starts attempt `attempt`: bound to a warm pod when the pool serves the orb's namespace and has
/// one ready, else a new pod.
async fn start_pod(
    orb: &AiOrb,
    ctx: &Context,
    attempt: i32,
    clock: &OrbClock,
    limits: &policy::OrbLimits,
    now: Timestamp,
) -> Result<Started> {
    let pooled = ctx
        .pool
        .as_ref()
        .is_some_and(|p| orb.namespace().as_deref() == Some(p.namespace.as_str()));
    let launch = policy::launch(&orb.spec, limits, clock, now, &ctx.pod.signaling_url);
    let token = orb_token(orb, ctx, clock, limits, now);
    // Warm pods run the configured brain: test-mode orbs (the test brain) start cold.
    if pooled && !orb.spec.test_mode {
        let assignment = orb_api::assignment::Assignment {
            token: Some(token.clone()),
            ..launch.assignment.clone()
        };
        if let Bound::Pod(name) = crate::pool::bind(orb, attempt, &assignment, ctx, now).await? {
            return Ok(Started::Pod(name, PodStart::Warm));
        }
    }
    Ok(match create_pod(orb, ctx, attempt, &launch, &token).await? {
        Some(conflict) => Started::Conflict(conflict),
        None => Started::Pod(pod_name(&orb.name_any(), attempt), PodStart::Cold),
    })
}

/// An object with the name of one of the orb's that the orb does not control: it is never
/// overwritten or adopted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameConflict {
    /// `Pod` or `Secret`.
    pub kind: &'static str,
    pub name: String,
    /// Who controls it instead, if anyone.
    pub controller: Option<String>,
}

/// The controller owner reference of an object: only an object whose controller is the orb (by
/// uid) is the orb's, whatever its name and labels say.
fn controller_of(meta: &ObjectMeta) -> Option<&OwnerReference> {
    meta.owner_references
        .iter()
        .flatten()
        .find(|r| r.controller == Some(true))
}

/// How an existing object of one of the orb's names stands to the orb.
enum Ownership {
    Ours,
    /// Controlled by an earlier AiOrb of the same name: the garbage collector removes it soon.
    Leftover,
    Foreign(NameConflict),
}

fn ownership(orb: &AiOrb, kind: &'static str, meta: &ObjectMeta) -> Ownership {
    let controller = controller_of(meta);
    match controller {
        Some(r) if Some(&r.uid) == orb.metadata.uid.as_ref() => Ownership::Ours,
        Some(r)
            if r.kind == AiOrb::kind(&())
                && r.api_version.starts_with("hybridcoach.io/")
                && r.name == orb.name_any() =>
        {
            Ownership::Leftover
        }
        _ => Ownership::Foreign(NameConflict {
            kind,
            name: meta.name.clone().unwrap_or_default(),
            controller: controller.map(|r| format!("{} {}", r.kind, r.name)),
        }),
    }
}

/// Creates the orb's token Secret and pod, unless an object of either name exists that the orb
/// does not control: that one is left alone and returned. The orb's own objects (a previous
/// reconcile's, whose status write was lost) are taken as created.
async fn create_pod(
    orb: &AiOrb,
    ctx: &Context,
    attempt: i32,
    launch: &policy::Launch,
    token: &str,
) -> Result<Option<NameConflict>> {
    let ns = orb.namespace().ok_or(Error::NoNamespace)?;
    let secret = build_token_secret(orb, token);
    if let Some(conflict) = write_token_secret(orb, ctx, &ns, &secret).await? {
        return Ok(Some(conflict));
    }
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let pod = build_pod(orb, &ctx.pod, attempt, launch);
    let params = PostParams {
        field_manager: Some(OPERATOR_FIELD_MANAGER.into()),
        ..Default::default()
    };
    match pods.create(&params, &pod).await {
        Ok(_) => Ok(None),
        Err(kube::Error::Api(s)) if s.code == 409 => {
            let name = pod.metadata.name.as_deref().unwrap_or_default();
            let Some(existing) = pods.get_opt(name).await? else {
                // Gone again in between: the next reconcile creates it.
                return Err(Error::WaitingForLeftover(format!("pod {name}")));
            };
            match ownership(orb, "Pod", &existing.metadata) {
                Ownership::Ours => Ok(None),
                Ownership::Leftover => Err(Error::WaitingForLeftover(format!("pod {name}"))),
                Ownership::Foreign(conflict) => Ok(Some(conflict)),
            }
        }
        Err(e) => Err(e.into()),
    }
}

/// Writes the token Secret: created when absent, applied over the orb's own, never over anyone
/// else's. A Secret created between the read and the create is a 409, judged on the next
/// reconcile.
async fn write_token_secret(orb: &AiOrb, ctx: &Context, ns: &str, secret: &Secret) -> Result<Option<NameConflict>> {
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
    let name = secret.metadata.name.as_deref().unwrap_or_default();
    match secrets.get_metadata_opt(name).await? {
        None => {
            let params = PostParams {
                field_manager: Some(OPERATOR_FIELD_MANAGER.into()),
                ..Default::default()
            };
            secrets.create(&params, secret).await?;
        }
        Some(existing) => match ownership(orb, "Secret", &existing.metadata) {
            Ownership::Ours => {
                let params = PatchParams::apply(OPERATOR_FIELD_MANAGER).force();
                secrets.patch(name, &params, &Patch::Apply(secret)).await?;
            }
            Ownership::Leftover => return Err(Error::WaitingForLeftover(format!("Secret {name}"))),
            Ownership::Foreign(conflict) => return Ok(Some(conflict)),
        },
    }
    Ok(None)
}

/// The orb cannot run under its names: it fails at once with reason `NameConflict`, a Warning
/// event and the object in its message, and frees its slot. Nothing is retried: the names are
/// fixed by the room, so only a person removing the object (and the room asking again) helps.
async fn name_conflict(
    orb: &AiOrb,
    ctx: &Context,
    mut next: orb_api::AiOrbStatus,
    conflict: &NameConflict,
    now: Timestamp,
) -> Result<Action> {
    let owner = conflict
        .controller
        .as_deref()
        .map_or_else(|| "no controller".to_owned(), |c| format!("controlled by {c}"));
    let message = format!(
        "{} {} already exists and is not this AiOrb's ({owner}); it was left untouched",
        conflict.kind, conflict.name
    );
    warn!(kind = conflict.kind, name = %conflict.name, "name taken by an object the orb does not control");
    next.phase = Some(OrbPhase::Failed);
    next.termination_reason = Some(TerminationReason::NameConflict);
    next.message = Some(message.clone());
    next.finished_at = Some(Time(now));
    next.queue_position = None;
    ctx.event(
        orb,
        EventType::Warning,
        TerminationReason::NameConflict.as_str(),
        message,
    )
    .await;
    ctx.metrics.terminated(TerminationReason::NameConflict);
    write_status(orb, ctx, next, None, now).await?;
    ctx.admission.freed.notify_one();
    label_finished(orb, ctx).await?;
    // Back when the finished orb's TTL is up, to be deleted.
    Ok(Action::requeue(ctx.limits.finished_orb_ttl))
}

/// Deletes a pod with the orb's grace period; a pod already gone is fine.
pub(crate) async fn delete_pod(pods: &Api<Pod>, name: &str) -> Result<()> {
    let params = DeleteParams {
        grace_period_seconds: Some(TERMINATION_GRACE_SECONDS as u32),
        ..Default::default()
    };
    match pods.delete(name, &params).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// The AiOrb is being deleted: stop its pod, wait for it to be gone (it still holds a GPU), record
/// the end, and wait for the admission pass that frees its slot. Returning `Ok` lets the
/// finalizer helper remove the finalizer.
async fn cleanup(orb: &AiOrb, ctx: &Context) -> Result<Action> {
    let ns = orb.namespace().ok_or(Error::NoNamespace)?;
    let now = (ctx.now)();
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let current = orb.status.clone().unwrap_or_default();
    let name = current_pod(orb);
    let finished = current.phase.is_some_and(OrbPhase::is_terminal);
    let mut next = status::operator_status(orb);
    if current.admitted_at.is_some()
        && !finished
        && let Some(pod) = pods.get_opt(&name).await?
    {
        if pod.metadata.deletion_timestamp.is_none() {
            delete_pod(&pods, &name).await?;
        }
        if current.phase != Some(OrbPhase::Terminating) {
            next.phase = Some(OrbPhase::Terminating);
            next.termination_reason = Some(TerminationReason::Deleted);
            write_status(orb, ctx, next, None, now).await?;
            ctx.event(
                orb,
                EventType::Normal,
                "Terminating",
                "the AiOrb was deleted; stopping its pod".into(),
            )
            .await;
        }
        return Err(Error::WaitingForPod(name));
    }
    if !finished {
        next.phase = Some(OrbPhase::Succeeded);
        next.termination_reason = Some(TerminationReason::Deleted);
        next.finished_at = Some(Time(now));
        next.queue_position = None;
        write_status(orb, ctx, next, None, now).await?;
        ctx.event(orb, EventType::Normal, "Deleted", "the AiOrb was deleted".into())
            .await;
        ctx.metrics.terminated(TerminationReason::Deleted);
    }
    ctx.admission.freed.notify_one();
    // Gone, it could not tell the pass that frees its slot how it ended.
    if current.admitted_at.is_some() && ctx.admission.holds(&orb.uid().unwrap_or_default()) {
        return Err(Error::WaitingForAdmission);
    }
    Ok(Action::await_change())
}

/// Reconciles running at once. Unbounded, an operator starting over thousands of AiOrbs sends
/// thousands of requests at once: the API server refuses what exceeds its in-flight limit (429),
/// connections fail, and each refused reconcile backs off for seconds.
pub const RECONCILE_CONCURRENCY: u16 = 32;

/// Runs the controller until `shutdown` resolves. Its AiOrb store is `cache`, filled with trimmed
/// orbs ([`crate::cache::trim`]); the owned pods are watched as metadata only.
pub async fn run(
    ctx: Arc<Context>,
    watch_namespace: Option<&str>,
    cache: Writer<AiOrb>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let (orbs, pods): (Api<AiOrb>, Api<Pod>) = match watch_namespace {
        Some(ns) => (
            Api::namespaced(ctx.client.clone(), ns),
            Api::namespaced(ctx.client.clone(), ns),
        ),
        None => (Api::all(ctx.client.clone()), Api::all(ctx.client.clone())),
    };
    let reader = cache.as_reader();
    let orbs = reflector::reflector(
        cache,
        watcher(orbs, watcher::Config::default().any_semantic())
            .default_backoff()
            .modify(crate::cache::trim),
    )
    .applied_objects();
    Controller::for_stream(orbs, reader)
        .with_config(kube::runtime::controller::Config::default().concurrency(RECONCILE_CONCURRENCY))
        .owns(pods, watcher::Config::default().labels(MANAGED_SELECTOR).any_semantic())
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|_| futures::future::ready(()))
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_deadline_already_passed_is_due_now_not_as_far_in_the_future() {
        let now: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let past = now.checked_sub(jiff::SignedDuration::from_secs(3600)).unwrap();
        let future = now.checked_add(jiff::SignedDuration::from_secs(90)).unwrap();
        assert_eq!(remaining(now, past), Duration::ZERO);
        assert_eq!(remaining(now, future), Duration::from_secs(90));
    }
}
