//! The warm pool: `--warm-orbs` orb pods started with `--warm` in the pool's namespace, running
//! with their brain ready in no room, so that an admitted orb is bound to one instead of waiting
//! for a pod to be scheduled, its image pulled and its brain started.
//!
//! The keeper (leader only, like the admitter) moves the pool towards
//! [`crate::policy::warm_target`]: the configured size, less what the cap can no longer admit, so
//! warm pods are never GPUs the cap could not use. Failed warm pods and pods not ready in time are
//! replaced ([`crate::policy::plan_pool`]). Binding ([`bind`]) is the reconciler's: it claims a
//! ready warm pod with a resourceVersion-guarded patch (labels, the AiOrb as controller owner, the
//! orb's `activeDeadlineSeconds`), then posts the assignment (room, limits, token) to the pod with
//! the pod's credential, an HMAC of its name under the signing key, which only the operator can
//! derive and the pod reads from its Secret. A claim conflict or a failed assignment falls back to
//! a cold start; the claimed pod is deleted. From then on the bound pod is the orb's pod like any
//! other: deadlines, replacement and termination do not tell them apart.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::events::EventType;
use kube::{Client, Resource, ResourceExt};
use orb_api::assignment::{ASSIGN_PATH, WARM_SEAL_ANNOTATION, assign_credential, credential_matches, warm_seal};
use orb_api::auth::SigningKey;
use orb_api::{AiOrb, OPERATOR_FIELD_MANAGER};
use tracing::{debug, info, warn};

use crate::admission::{LEDGER_NAME, Wake, parse_ledger};
use crate::config::{PodSettings, PoolSettings};
use crate::controller::{Result, delete_pod};
use crate::metrics::{Metrics, ResultLabels};
use crate::pod::{
    LABEL_ATTEMPT, LABEL_ORB, LABEL_POOL, ORB_HTTP_PORT, POOL_BOUND, active_deadline, build_assign_secret,
    build_warm_pod,
};
use crate::policy::{self, WarmOrb};

/// A keeper pass runs at least this often: warm pods that failed or became ready are seen.
pub const RESYNC: Duration = Duration::from_secs(10);
/// Selects the unbound warm pods.
pub const WARM_SELECTOR: &str = "hybridcoach.io/pool=warm";
/// Longest an assignment may take to answer (the orb waits up to 10 s for its join).
const ASSIGN_TIMEOUT: Duration = Duration::from_secs(15);

/// Sends an assignment to a warm orb: `(status, body)` of its answer. A trait so that the mocked-API
/// scenarios can answer for the pod.
pub trait Assigner: Send + Sync {
    fn assign(
        &self,
        addr: SocketAddr,
        credential: String,
        body: String,
    ) -> BoxFuture<'static, std::io::Result<(u16, String)>>;
}

/// `POST /assign` over HTTP to the pod's IP.
pub struct HttpAssigner;

impl Assigner for HttpAssigner {
    fn assign(
        &self,
        addr: SocketAddr,
        credential: String,
        body: String,
    ) -> BoxFuture<'static, std::io::Result<(u16, String)>> {
        Box::pin(
            async move { orb_telemetry::probe::post_json(addr, ASSIGN_PATH, &credential, &body, ASSIGN_TIMEOUT).await },
        )
    }
}

/// What the pool knows of one of its pods.
pub fn warm_view(pod: &Pod) -> WarmOrb {
    let status = pod.status.as_ref();
    let phase = status.and_then(|s| s.phase.as_deref()).unwrap_or("Pending");
    let ready = status
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
    WarmOrb {
        name: pod.name_any(),
        started: pod
            .metadata
            .creation_timestamp
            .as_ref()
            .map_or(Timestamp::UNIX_EPOCH, |t| t.0),
        ready: ready && phase == "Running",
        failed: matches!(phase, "Failed" | "Succeeded"),
        stopping: pod.metadata.deletion_timestamp.is_some(),
    }
}

/// Whether the operator created `pod` for the pool: its seal is the HMAC of its uid.
pub fn sealed(pod: &Pod, key: &SigningKey) -> bool {
    let (Some(uid), Some(seal)) = (pod.metadata.uid.as_deref(), pod.annotations().get(WARM_SEAL_ANNOTATION)) else {
        return false;
    };
    credential_matches(seal, &warm_seal(key, uid))
}

/// The pool's pods: labelled warm and sealed. A pod someone else labelled warm is not the pool's:
/// not counted, not stopped, never sent an assignment (and the room's token with it).
async fn sealed_warm_pods(pods: &Api<Pod>, key: &SigningKey) -> Result<Vec<Pod>> {
    let list = pods.list(&ListParams::default().labels(WARM_SELECTOR)).await?;
    let (sealed, planted): (Vec<Pod>, Vec<Pod>) = list.items.into_iter().partition(|p| sealed(p, key));
    for pod in &planted {
        debug!(pod = %pod.name_any(), "a pod labelled warm without the pool's seal is ignored");
    }
    Ok(sealed)
}

/// Deletes a pod only if it is still the version `pod` was read at (uid and resourceVersion as
/// preconditions), with the orb's grace period. `false` when it changed or is gone.
async fn delete_as_listed(pods: &Api<Pod>, pod: &Pod) -> Result<bool> {
    let params = DeleteParams {
        grace_period_seconds: Some(crate::pod::TERMINATION_GRACE_SECONDS as u32),
        preconditions: Some(Preconditions {
            uid: pod.metadata.uid.clone(),
            resource_version: pod.metadata.resource_version.clone(),
        }),
        ..Default::default()
    };
    match pods.delete(&pod.name_any(), &params).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(s)) if s.code == 409 || s.code == 404 => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// A fresh pod name suffix: random, so names never repeat across operator restarts.
fn random_suffix() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(0);
    format!("{:010x}", h.finish() & 0xff_ffff_ffff)
}

/// Keeps the warm pool.
pub struct PoolKeeper {
    pub pods: Api<Pod>,
    pub secrets: Api<Secret>,
    pub ledger: Api<ConfigMap>,
    pub settings: PoolSettings,
    pub cap: usize,
    pub pod: PodSettings,
    pub signing_key: orb_api::auth::SigningKey,
    pub metrics: Arc<Metrics>,
    pub wake: Arc<Wake>,
    pub now: fn() -> Timestamp,
    /// Names of new warm pods; random unless a test fixes them.
    pub name: fn() -> String,
}

impl PoolKeeper {
    pub fn new(
        client: Client,
        config: &crate::config::Config,
        settings: PoolSettings,
        metrics: Arc<Metrics>,
        wake: Arc<Wake>,
    ) -> Self {
        Self {
            pods: Api::namespaced(client.clone(), &settings.namespace),
            secrets: Api::namespaced(client.clone(), &settings.namespace),
            ledger: Api::namespaced(client, &config.operator_namespace),
            cap: config.limits.max_concurrent_orbs,
            pod: config.pod.clone(),
            signing_key: config.signing_key.clone(),
            settings,
            metrics,
            wake,
            now: Timestamp::now,
            name: || format!("orb-warm-{}", random_suffix()),
        }
    }

    /// Runs passes on every wake-up and every [`RESYNC`] until `shutdown` resolves.
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        loop {
            if let Err(e) = self.pass().await {
                warn!(error = %e, "warm pool pass failed");
            }
            tokio::select! {
                _ = &mut shutdown => return,
                _ = self.wake.pool.notified() => {}
                _ = tokio::time::sleep(RESYNC) => {}
            }
        }
    }

    /// One pass: read how many orbs the cap holds and the unbound warm pods, stop the ones the
    /// plan drops, start the ones it lacks.
    pub async fn pass(&self) -> Result<policy::PoolPlan> {
        let now = (self.now)();
        let serving = self
            .ledger
            .get_opt(LEDGER_NAME)
            .await?
            .map_or(0, |cm| parse_ledger(&cm).len());
        let target = policy::warm_target(self.settings.size, self.cap, serving);
        let pods = sealed_warm_pods(&self.pods, &self.signing_key).await?;
        let views: Vec<WarmOrb> = pods.iter().map(warm_view).collect();
        let plan = policy::plan_pool(&views, target, now);
        self.stop(&pods, &plan.stop).await?;
        for _ in 0..plan.start {
            self.start_warm().await?;
        }
        let ready = views
            .iter()
            .filter(|w| w.ready && !w.stopping && !plan.stop.contains(&w.name))
            .count();
        self.metrics.warm_available.set(ready as i64);
        self.metrics.warm_pods.set((views.len() + plan.start) as i64);
        self.metrics.warm_target.set(target as i64);
        debug!(
            target,
            ready,
            start = plan.start,
            stop = plan.stop.len(),
            "warm pool pass"
        );
        Ok(plan)
    }

    /// Stops the pods named in `stop` as `listed` shows them, and only so: a pod bound to an orb
    /// since the list (its labels and owner changed) is left to its orb.
    pub async fn stop(&self, listed: &[Pod], stop: &[String]) -> Result<()> {
        for pod in listed.iter().filter(|p| stop.contains(&p.name_any())) {
            if delete_as_listed(&self.pods, pod).await? {
                info!(pod = %pod.name_any(), "stopped a warm orb (failed, not ready in time, or above the pool's target)");
            } else {
                info!(pod = %pod.name_any(), "left a warm orb that changed since the pass listed it (bound, most likely)");
            }
        }
        Ok(())
    }

    /// Creates one warm pod, then its credential Secret, owned by the pod (the kubelet starts the
    /// container once the Secret exists).
    async fn start_warm(&self) -> Result<()> {
        let name = (self.name)();
        let pod = build_warm_pod(&name, &self.settings.namespace, &self.pod);
        let params = PostParams {
            field_manager: Some(OPERATOR_FIELD_MANAGER.into()),
            ..Default::default()
        };
        let created = self.pods.create(&params, &pod).await?;
        // The seal needs the uid the server gave the pod; the uid in the patch makes it a
        // precondition (a pod of that name made by someone else in between is not sealed).
        let seal = serde_json::json!({"metadata": {
            "uid": created.metadata.uid,
            "annotations": { WARM_SEAL_ANNOTATION: warm_seal(&self.signing_key, created.metadata.uid.as_deref().unwrap_or_default()) },
        }});
        let patch = PatchParams {
            field_manager: Some(OPERATOR_FIELD_MANAGER.into()),
            ..Default::default()
        };
        if let Err(e) = self.pods.patch(&name, &patch, &Patch::Merge(&seal)).await {
            // An unsealed pod is never the pool's: not stopped by it later either.
            let _ = delete_pod(&self.pods, &name).await;
            return Err(e.into());
        }
        let secret = build_assign_secret(&created, &assign_credential(&self.signing_key, &name));
        self.secrets.create(&params, &secret).await?;
        info!(pod = %name, "started a warm orb");
        Ok(())
    }
}

/// What binding an orb to the pool came to.
#[derive(Debug, PartialEq, Eq)]
pub enum Bound {
    /// The orb runs in this warm pod now.
    Pod(String),
    /// No ready warm pod, or it could not be claimed or assigned: start cold.
    Cold,
}

/// Binds attempt `attempt` of `orb` to a warm pod with `assignment` (its token included): the pod
/// an earlier reconcile of this attempt already claimed, if any (its status write may have been
/// refused by a newer write, or the operator stopped in between), else a ready one of the pool.
/// Metrics and events tell the outcome; only API errors (other than a lost claim) are errors.
pub async fn bind(
    orb: &AiOrb,
    attempt: i32,
    assignment: &orb_api::assignment::Assignment,
    ctx: &crate::controller::Context,
    now: Timestamp,
) -> Result<Bound> {
    let ns = orb.namespace().unwrap_or_default();
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    if let Some(pod) = claimed_earlier(&pods, orb, attempt, &ctx.signing_key).await? {
        info!(pod = %pod.name_any(), "found the warm pod this attempt claimed before");
        return assign(&pods, &pod, orb, assignment, ctx, Resend::AlreadySentIsBound).await;
    }
    let result = |r: &'static str| ctx.metrics.assignments.get_or_create(&ResultLabels { result: r }).inc();
    let list = sealed_warm_pods(&pods, &ctx.signing_key).await?;
    let views: Vec<WarmOrb> = list.iter().map(warm_view).collect();
    let Some(pick) = policy::pick_warm(&views) else {
        result("empty");
        return Ok(Bound::Cold);
    };
    let pod = list
        .iter()
        .find(|p| p.name_any() == pick.name)
        .expect("picked from the list");
    let name = pod.name_any();
    if pod_addr(pod).is_none() {
        result("empty");
        return Ok(Bound::Cold);
    }
    // The deadline counts from the pod's start: add the time it already ran while warm.
    let ran = pod
        .status
        .as_ref()
        .and_then(|s| s.start_time.as_ref())
        .map_or(0, |t| t.0.duration_until(now).as_secs().max(0) as u64);
    let claim = serde_json::json!({
        "metadata": {
            "resourceVersion": pod.resource_version(),
            "labels": { LABEL_POOL: POOL_BOUND, LABEL_ORB: orb.name_any(), LABEL_ATTEMPT: attempt.to_string() },
            "ownerReferences": [orb.controller_owner_ref(&())],
        },
        "spec": { "activeDeadlineSeconds": active_deadline(ran + assignment.max_lifetime_seconds) },
    });
    let params = PatchParams {
        field_manager: Some(OPERATOR_FIELD_MANAGER.into()),
        ..Default::default()
    };
    match pods.patch(&name, &params, &Patch::Merge(&claim)).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 409 || s.code == 404 => {
            // Another orb claimed it first, or it is gone: this orb starts cold now.
            result("failed");
            return Ok(Bound::Cold);
        }
        Err(e) => return Err(e.into()),
    }
    assign(&pods, pod, orb, assignment, ctx, Resend::First).await
}

/// The pod the orb controls that was claimed for `attempt` and is not on its way out: one of the
/// pool's (sealed), since anyone may label a pod and point its owner at the AiOrb.
async fn claimed_earlier(pods: &Api<Pod>, orb: &AiOrb, attempt: i32, key: &SigningKey) -> Result<Option<Pod>> {
    let selector = format!(
        "{LABEL_POOL}={POOL_BOUND},{LABEL_ORB}={},{LABEL_ATTEMPT}={attempt}",
        orb.name_any()
    );
    let list = pods.list(&ListParams::default().labels(&selector)).await?;
    Ok(list.items.into_iter().find(|p| {
        sealed(p, key)
            && p.metadata.deletion_timestamp.is_none()
            && p.owner_references()
                .iter()
                .any(|r| r.controller == Some(true) && Some(&r.uid) == orb.metadata.uid.as_ref())
    }))
}

fn pod_addr(pod: &Pod) -> Option<SocketAddr> {
    let ip = pod.status.as_ref()?.pod_ip.as_deref()?.parse::<IpAddr>().ok()?;
    Some(SocketAddr::new(ip, ORB_HTTP_PORT as u16))
}

/// Whether the claimed pod may have been sent an assignment already.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Resend {
    First,
    /// Claimed by an earlier reconcile of the same attempt: a `409` (the pod holds an assignment
    /// that differs from this one in its token's times) is that reconcile's assignment, and only
    /// the operator can assign (the pod's credential), so the pod is bound.
    AlreadySentIsBound,
}

/// Sends the claimed pod its assignment; a refusal deletes the pod and starts the orb cold.
async fn assign(
    pods: &Api<Pod>,
    pod: &Pod,
    orb: &AiOrb,
    assignment: &orb_api::assignment::Assignment,
    ctx: &crate::controller::Context,
    resend: Resend,
) -> Result<Bound> {
    let result = |r: &'static str| ctx.metrics.assignments.get_or_create(&ResultLabels { result: r }).inc();
    let name = pod.name_any();
    let body = serde_json::to_string(assignment).expect("an assignment serialises");
    let credential = assign_credential(&ctx.signing_key, &name);
    let answer = match pod_addr(pod) {
        Some(addr) => ctx.assigner.assign(addr, credential, body).await,
        None => Err(std::io::Error::other("the pod has no IP")),
    };
    ctx.admission.pool.notify_one();
    match answer {
        Ok((200 | 202, _)) => {}
        Ok((409, _)) if resend == Resend::AlreadySentIsBound => {}
        outcome => {
            let why = match outcome {
                Ok((status, body)) => format!("HTTP {status}: {}", body.trim()),
                Err(e) => e.to_string(),
            };
            result("failed");
            warn!(pod = %name, %why, "the warm pod refused its assignment; starting the orb cold");
            let note = format!("warm pod {name} refused its assignment ({why}); starting a new pod");
            crate::controller::publish_event(&ctx.recorder, orb, EventType::Warning, "AssignmentFailed", note, "Bind")
                .await;
            delete_pod(pods, &name).await?;
            return Ok(Bound::Cold);
        }
    }
    result("bound");
    info!(pod = %name, "bound the orb to a warm pod");
    Ok(Bound::Pod(name))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pod::POOL_WARM;

    #[test]
    fn the_selector_selects_the_label_warm_pods_carry() {
        assert_eq!(WARM_SELECTOR, format!("{LABEL_POOL}={POOL_WARM}"));
    }

    #[test]
    fn a_pod_is_available_only_running_and_ready() {
        let pod = |phase: &str, ready: &str, deleting: bool| -> Pod {
            let mut p: Pod = serde_json::from_value(serde_json::json!({
                "metadata": {"name": "w", "creationTimestamp": "2027-01-15T08:00:00Z"},
                "status": {"phase": phase, "conditions": [{"type": "Ready", "status": ready}]},
            }))
            .unwrap();
            if deleting {
                p.metadata.deletion_timestamp = p.metadata.creation_timestamp.clone();
            }
            p
        };
        let v = warm_view(&pod("Running", "True", false));
        assert!(v.ready && !v.failed && !v.stopping);
        assert!(!warm_view(&pod("Running", "False", false)).ready);
        assert!(!warm_view(&pod("Pending", "True", false)).ready);
        assert!(warm_view(&pod("Failed", "False", false)).failed);
        assert!(warm_view(&pod("Succeeded", "False", false)).failed);
        assert!(warm_view(&pod("Running", "True", true)).stopping);
    }
}
