//! An orb's life on a real API server: field ownership of the status, the session's budget across
//! calls in one room, and deletion through the finalizer and the garbage collector with an
//! operator that was down meanwhile.

use std::collections::BTreeMap;
use std::path::PathBuf;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Pod, Secret};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, Patch, PatchParams, WatchEvent, WatchParams};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use orb_api::{AiOrb, AiOrbSpec, OrbPhase, TerminationReason};
use serde_json::json;

use crate::envtest::{ControlPlane, wait_for, wait_until};
use crate::kubelet::{loopback_ip, run_pod};
use crate::operator::{Operator, chart_identity, create_orb, spec, wait_for_pod};
use crate::pool::report_presence;

const NS: &str = "calls";

/// The operator under the chart's RBAC, watching [`NS`], with `env` on top; its env and identity
/// for a restart.
async fn start(cp: &ControlPlane, name: &str, env: &[(&str, &str)]) -> (Client, Operator, Restart) {
    let admin = cp.admin().await;
    let mut env: BTreeMap<String, String> = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    env.insert("WATCH_NAMESPACE".into(), NS.into());
    let kubeconfig = chart_identity(cp, NS).await;
    let operator = Operator::start(cp, name, &kubeconfig, &env);
    (admin, operator, Restart { kubeconfig, env })
}

struct Restart {
    kubeconfig: PathBuf,
    env: BTreeMap<String, String>,
}

async fn wait_phase(orbs: &Api<AiOrb>, name: &str, phase: OrbPhase) -> AiOrb {
    wait_for(&format!("{name} is {phase:?}"), || async {
        let orb = orbs.get_opt(name).await.unwrap()?;
        (orb.status.as_ref().and_then(|s| s.phase) == Some(phase)).then_some(orb)
    })
    .await
}

/// The AiOrb `name` in `phase`, read from a watch that replays every change after `since` (a
/// version it had): a state the AiOrb passes through and leaves soon (a finished orb deleted after
/// a short TTL) is seen however late this looks.
async fn wait_phase_after(orbs: &Api<AiOrb>, since: &AiOrb, phase: OrbPhase) -> AiOrb {
    if since.status.as_ref().and_then(|s| s.phase) == Some(phase) {
        return since.clone();
    }
    let name = since.name_any();
    let version = since.resource_version().expect("a stored AiOrb has a version");
    let params = WatchParams::default().fields(&format!("metadata.name={name}"));
    let found = tokio::time::timeout(std::time::Duration::from_secs(180), async {
        let mut events = orbs.watch(&params, &version).await.unwrap().boxed();
        while let Some(event) = events.next().await {
            if let WatchEvent::Added(orb) | WatchEvent::Modified(orb) = event.unwrap()
                && orb.status.as_ref().and_then(|s| s.phase) == Some(phase)
            {
                return orb;
            }
        }
        panic!("the watch of {name} ended before it was {phase:?}");
    })
    .await;
    found.unwrap_or_else(|_| panic!("timed out waiting until {name} is {phase:?}"))
}

/// Signaling's apply of the summary's delivery state, as its store writes it.
async fn apply_summary(orbs: &Api<AiOrb>, name: &str, summary: serde_json::Value) {
    let body = json!({"apiVersion": "hybridcoach.io/v1alpha1", "kind": "AiOrb", "metadata": {"name": name},
        "status": {"summary": summary}});
    orbs.patch_status(name, &PatchParams::apply("orb-signaling").force(), &Patch::Apply(body))
        .await
        .unwrap();
}

/// Item 3 of the real-server issue: the operator's forced status apply re-applied
/// `status.summary`, so it co-owned it, and signaling's `Delivered` (without `lastError` and
/// `retryUntil`) left those two behind.
#[tokio::test]
async fn a_delivered_summary_drops_its_last_error_after_the_operator_wrote_the_status() {
    let Some(cp) = ControlPlane::start().await else { return };
    let (admin, operator, _) = start(&cp, "summary", &[]).await;
    let orbs: Api<AiOrb> = Api::namespaced(admin.clone(), NS);
    create_orb(&admin, NS, "room-s", spec("room-s")).await;
    let (_, pod) = wait_for_pod(&admin, NS, "room-s").await;
    let retry_until = Timestamp::now().checked_add(jiff_hours(1)).unwrap().to_string();
    apply_summary(
        &orbs,
        "room-s",
        json!({"id": "sum-1", "state": "Pending", "attempts": 1, "lastError": "HTTP 503", "retryUntil": retry_until}),
    )
    .await;
    // The pod becomes ready: the operator writes the status (Ready) after the summary's write.
    let pods: Api<Pod> = Api::namespaced(admin.clone(), NS);
    run_pod(&pods, &pod.name_any(), loopback_ip(0)).await;
    wait_phase(&orbs, "room-s", OrbPhase::Ready).await;

    apply_summary(
        &orbs,
        "room-s",
        json!({"id": "sum-1", "state": "Delivered", "attempts": 2, "deliveredAt": Timestamp::now().to_string()}),
    )
    .await;
    let summary = orbs.get("room-s").await.unwrap().status.unwrap().summary.unwrap();
    assert_eq!(summary.state, orb_api::aiorb::SummaryState::Delivered);
    assert_eq!(
        (summary.last_error, summary.retry_until),
        (None, None),
        "left behind by a co-owner"
    );
    let managers: Vec<String> = orbs
        .get("room-s")
        .await
        .unwrap()
        .managed_fields()
        .iter()
        .filter(|m| {
            m.fields_v1
                .as_ref()
                .is_some_and(|f| f.0.pointer("/f:status/f:summary").is_some())
        })
        .filter_map(|m| m.manager.clone())
        .collect();
    assert_eq!(managers, vec!["orb-signaling".to_owned()]);
    operator.assert_never_forbidden();
}

fn jiff_hours(h: i64) -> k8s_openapi::jiff::SignedDuration {
    k8s_openapi::jiff::SignedDuration::from_hours(h)
}

/// Signaling's end of a room's AiOrb and its next one: delete the finished orb, create anew.
async fn recreate(orbs: &Api<AiOrb>, admin: &Client, name: &str, spec: AiOrbSpec) -> AiOrb {
    match orbs.delete(name, &DeleteParams::default()).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 404 => {}
        Err(e) => panic!("delete {name}: {e}"),
    }
    wait_until(&format!("{name} is gone"), || async {
        orbs.get_opt(name).await.unwrap().is_none()
    })
    .await;
    create_orb(admin, NS, name, spec).await;
    wait_for(&format!("{name} is admitted again"), || async {
        let orb = orbs.get(name).await.unwrap();
        orb.status.as_ref()?.admitted_at.as_ref()?;
        Some(orb)
    })
    .await
}

fn budget_start(orb: &AiOrb) -> Timestamp {
    orb.status.as_ref().unwrap().session_started_at.as_ref().unwrap().0
}

/// Item 5: without a session id the session was the room for twice the lifetime, so a room's
/// next call inherited the last call's budget and lost its orb at once. A call that ended (the
/// room emptied: RoomCleanup) leaves the next one a fresh budget; a call that ran out of its
/// lifetime does not, so rejoining never extends it.
#[tokio::test]
async fn a_rooms_next_call_starts_a_fresh_budget_and_a_call_past_its_lifetime_does_not() {
    let Some(cp) = ControlPlane::start().await else { return };
    // Finished orbs go a second after they end: the room's next AiOrb may find the last gone.
    let (admin, operator, _) = start(&cp, "budget", &[("FINISHED_ORB_TTL", "1s")]).await;
    let orbs: Api<AiOrb> = Api::namespaced(admin.clone(), NS);

    // A call that ends with everybody gone.
    let call = AiOrbSpec {
        empty_room_grace_seconds: Some(1),
        max_lifetime_seconds: Some(3600),
        ..spec("room-a")
    };
    create_orb(&admin, NS, "room-a", call.clone()).await;
    let first = wait_phase(&orbs, "room-a", OrbPhase::Starting).await;
    report_presence(&admin, NS, "room-a", 2).await;
    report_presence(&admin, NS, "room-a", 0).await;
    let ended = wait_phase_after(&orbs, &first, OrbPhase::Succeeded).await;
    assert_eq!(
        ended.status.unwrap().termination_reason,
        Some(TerminationReason::RoomCleanup)
    );
    let second = recreate(&orbs, &admin, "room-a", call).await;
    assert!(
        budget_start(&second) > budget_start(&first),
        "the next call in the room inherited the last call's budget"
    );
    assert!(second.status.unwrap().termination_reason.is_none());

    // A call whose orb ran out of its lifetime while people stayed: rejoining inherits the budget.
    let short = AiOrbSpec {
        max_lifetime_seconds: Some(2),
        ..spec("room-b")
    };
    create_orb(&admin, NS, "room-b", short.clone()).await;
    let starting = wait_phase(&orbs, "room-b", OrbPhase::Starting).await;
    report_presence(&admin, NS, "room-b", 2).await;
    let expired = wait_phase_after(&orbs, &starting, OrbPhase::Succeeded).await;
    assert_eq!(
        expired.status.as_ref().unwrap().termination_reason,
        Some(TerminationReason::MaxLifetime)
    );
    let again = recreate(&orbs, &admin, "room-b", short).await;
    assert_eq!(budget_start(&again), budget_start(&expired));
    let ended = wait_phase_after(&orbs, &again, OrbPhase::Succeeded).await;
    assert_eq!(
        ended.status.unwrap().termination_reason,
        Some(TerminationReason::MaxLifetime)
    );
    wait_until("the finished orb is deleted after its TTL", || async {
        orbs.get_opt("room-b").await.unwrap().is_none()
    })
    .await;
    operator.assert_never_forbidden();
}

/// Deleting an AiOrb while the operator is down: the AiOrb waits on its finalizer; the restarted
/// operator stops the pod and records the end before the AiOrb goes; the garbage collector then
/// removes what the orb owned (its token Secret).
#[tokio::test]
async fn a_deleted_orb_is_finished_by_a_restarted_operator_and_its_objects_collected() {
    let Some(mut cp) = ControlPlane::start().await else {
        return;
    };
    cp.start_controller_manager();
    let (admin, mut operator, restart) = start(&cp, "gc", &[]).await;
    let orbs: Api<AiOrb> = Api::namespaced(admin.clone(), NS);
    create_orb(&admin, NS, "room-g", spec("room-g")).await;
    let (_, pod) = wait_for_pod(&admin, NS, "room-g").await;
    let secrets: Api<Secret> = Api::namespaced(admin.clone(), NS);
    let token_secret = pod
        .spec
        .as_ref()
        .unwrap()
        .volumes
        .iter()
        .flatten()
        .find_map(|v| v.secret.as_ref()?.secret_name.clone())
        .or_else(|| {
            pod.spec.as_ref().unwrap().containers[0]
                .env
                .iter()
                .flatten()
                .find_map(|e| e.value_from.as_ref()?.secret_key_ref.as_ref().map(|r| r.name.clone()))
        })
        .expect("the pod reads its token from a Secret");
    assert!(secrets.get_opt(&token_secret).await.unwrap().is_some());

    // Everything the AiOrb goes through until it is gone, as a watch sees it.
    let seen = tokio::spawn({
        let orbs = orbs.clone();
        async move {
            let mut states = Vec::new();
            let mut stream = watcher(orbs, watcher::Config::default().fields("metadata.name=room-g")).boxed();
            while let Some(Ok(event)) = stream.next().await {
                match event {
                    watcher::Event::Apply(o) | watcher::Event::InitApply(o) => states.push(o),
                    watcher::Event::Delete(_) => return states,
                    _ => {}
                }
            }
            states
        }
    });

    operator.kill();
    orbs.delete("room-g", &DeleteParams::default()).await.unwrap();
    let waiting = orbs.get("room-g").await.unwrap();
    assert!(waiting.metadata.deletion_timestamp.is_some() && !waiting.finalizers().is_empty());
    let restarted = Operator::start(&cp, "gc-restarted", &restart.kubeconfig, &restart.env);
    let states = seen.await.unwrap();
    let last = states.last().expect("the orb was seen");
    let status = last.status.clone().unwrap_or_default();
    assert_eq!(
        status.termination_reason,
        Some(TerminationReason::Deleted),
        "the end is recorded first"
    );
    assert!(status.phase.is_some_and(OrbPhase::is_terminal));

    let pods: Api<Pod> = Api::namespaced(admin.clone(), NS);
    assert!(pods.get_opt(&pod.name_any()).await.unwrap().is_none());
    wait_until("the garbage collector removes the orb's token Secret", || async {
        secrets.get_opt(&token_secret).await.unwrap().is_none()
    })
    .await;
    operator.assert_never_forbidden();
    restarted.assert_never_forbidden();
}
