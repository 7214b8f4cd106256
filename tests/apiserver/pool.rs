//! The warm pool on a real API server: a bind racing signaling's presence write and the keeper's
//! passes binds one pod, and no bound pod is deleted.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use orb_api::{AiOrb, OrbPhase, PodStart};
use orb_operator::metrics::Metrics;
use orb_operator::pool::{PoolKeeper, WARM_SELECTOR};
use serde_json::json;

use crate::envtest::{ControlPlane, ensure_namespace, wait_for, wait_until};
use crate::kubelet::{FakeWarmOrb, OnAssign, loopback_ip, run_pod};
use crate::operator::{OPERATOR_NS, Operator, chart_identity, create_orb, pods_of, spec};

const NS: &str = "calls";

/// Signaling's presence write on an orb, as its runtime makes it (server-side apply of the status
/// subresource with its own field manager).
pub async fn report_presence(client: &Client, ns: &str, name: &str, participants: i32) {
    let orbs: Api<AiOrb> = Api::namespaced(client.clone(), ns);
    let body = json!({
        "apiVersion": "hybridcoach.io/v1alpha1", "kind": "AiOrb",
        "metadata": {"name": name},
        "status": {"participants": participants, "lastActivityTime": k8s_openapi::jiff::Timestamp::now().to_string()},
    });
    orbs.patch_status(name, &PatchParams::apply("orb-signaling").force(), &Patch::Apply(body))
        .await
        .unwrap_or_else(|e| panic!("presence of {name}: {e}"));
}

async fn warm_pods(pods: &Api<Pod>) -> Vec<Pod> {
    pods.list(&ListParams::default().labels(WARM_SELECTOR))
        .await
        .unwrap()
        .items
}

/// Item 1 of the real-server issue: the status written after a bind carried the resourceVersion read
/// before it, so signaling's presence write in between made it a conflict, and the next reconcile
/// bound a second warm pod while the first kept its GPU and token.
#[tokio::test]
async fn a_bind_racing_a_presence_write_binds_one_warm_pod_and_the_keeper_deletes_no_bound_pod() {
    let Some(cp) = ControlPlane::start().await else { return };
    let admin = cp.admin().await;
    let env = BTreeMap::from([
        ("WATCH_NAMESPACE".to_owned(), NS.to_owned()),
        ("ORB_WARM_POOL_SIZE".to_owned(), "2".to_owned()),
        ("MAX_CONCURRENT_ORBS".to_owned(), "4".to_owned()),
    ]);
    let operator = Operator::start(&cp, "pool", &chart_identity(&cp, NS).await, &env);
    let pods: Api<Pod> = Api::namespaced(admin.clone(), NS);

    // Each warm orb reports the room's presence before it answers: the bind's status write then
    // meets a newer resourceVersion.
    let presence: OnAssign = {
        let admin = admin.clone();
        Arc::new(move |_body| {
            let admin = admin.clone();
            Box::pin(async move { report_presence(&admin, NS, "room-w", 2).await })
        })
    };
    let warm = wait_for("the keeper starts two warm pods", || async {
        let w = warm_pods(&pods).await;
        (w.len() == 2).then_some(w)
    })
    .await;
    let mut fakes = BTreeMap::new();
    for (i, pod) in warm.iter().enumerate() {
        let ip = loopback_ip(i as u8);
        fakes.insert(pod.name_any(), FakeWarmOrb::serve(ip, presence.clone()).await);
        run_pod(&pods, &pod.name_any(), ip).await;
    }

    create_orb(&admin, NS, "room-w", spec("room-w")).await;
    let orbs: Api<AiOrb> = Api::namespaced(admin.clone(), NS);
    let orb = wait_for("the orb is Ready in a warm pod", || async {
        let orb = orbs.get("room-w").await.unwrap();
        let status = orb.status.clone().unwrap_or_default();
        (status.phase == Some(OrbPhase::Ready)).then_some(orb)
    })
    .await;
    let status = orb.status.clone().unwrap();
    let bound = status.pod_name.clone().unwrap();
    assert_eq!(status.pod_start, Some(PodStart::Warm));
    assert!(fakes.contains_key(&bound), "bound to {bound}, not a warm pod");
    let owned: Vec<String> = pods_of(&admin, &orb).await.iter().map(|p| p.name_any()).collect();
    assert_eq!(owned, vec![bound.clone()], "the orb holds exactly one pod");
    for (name, fake) in &fakes {
        if *name != bound {
            assert_eq!(fake.count(), 0, "the other warm pod {name} was sent an assignment");
        }
    }

    // The keeper refills the pool around the bound pod and never deletes it.
    wait_until("the keeper refills the pool", || async {
        warm_pods(&pods).await.iter().filter(|p| p.name_any() != bound).count() == 2
    })
    .await;
    let still = pods.get(&bound).await.unwrap();
    assert!(
        still.metadata.deletion_timestamp.is_none(),
        "the bound pod is being deleted"
    );
    operator.assert_never_forbidden();
}

/// Item 2: the keeper deleted warm pods by name, so a pass that listed the pool before a claim
/// landed deleted the pod just bound. It deletes a pod only as it listed it.
#[tokio::test]
async fn the_keeper_never_deletes_a_warm_pod_claimed_after_its_list() {
    let Some(cp) = ControlPlane::start().await else { return };
    let admin = cp.admin().await;
    ensure_namespace(&admin, NS).await;
    ensure_namespace(&admin, OPERATOR_NS).await;
    let pods: Api<Pod> = Api::namespaced(admin.clone(), NS);
    let keeper = PoolKeeper {
        pods: pods.clone(),
        secrets: Api::<Secret>::namespaced(admin.clone(), NS),
        ledger: Api::<ConfigMap>::namespaced(admin.clone(), OPERATOR_NS),
        settings: orb_operator::config::PoolSettings {
            size: 1,
            namespace: NS.into(),
        },
        cap: 4,
        pod: orb_operator::config::PodSettings {
            image: "orb:test".into(),
            ..Default::default()
        },
        signing_key: orb_api::auth::SigningKey::new(crate::operator::SIGNING_KEY.as_bytes()).unwrap(),
        metrics: Arc::new(Metrics::default()),
        wake: Arc::default(),
        now: k8s_openapi::jiff::Timestamp::now,
        name: || "orb-warm-a".into(),
    };
    keeper.pass().await.unwrap();
    let listed = warm_pods(&pods).await;
    assert_eq!(listed.len(), 1);

    // An orb claims the pod (as the binder does) after the keeper's list.
    let claim = json!({"metadata": {"labels": {"hybridcoach.io/pool": "bound"}}});
    pods.patch("orb-warm-a", &PatchParams::default(), &Patch::Merge(&claim))
        .await
        .unwrap();
    keeper.stop(&listed, &["orb-warm-a".to_owned()]).await.unwrap();
    let pod = pods.get("orb-warm-a").await.unwrap();
    assert!(pod.metadata.deletion_timestamp.is_none(), "the claimed pod was deleted");

    // A pod unchanged since the list is stopped.
    let fresh = warm_pods(&pods).await;
    assert!(fresh.is_empty(), "a claimed pod is no longer the pool's");
    let mut unclaimed: Pod = serde_json::from_value(json!({
        "metadata": {"name": "orb-warm-b", "labels": {"hybridcoach.io/pool": "warm"}},
        "spec": {"containers": [{"name": "orb", "image": "orb:test"}]},
    }))
    .unwrap();
    unclaimed = pods.create(&PostParams::default(), &unclaimed).await.unwrap();
    keeper.stop(&[unclaimed], &["orb-warm-b".to_owned()]).await.unwrap();
    assert!(pods.get_opt("orb-warm-b").await.unwrap().is_none());
}

/// Hostile users, round two, item 1: a pod someone else labels warm (with an `/assign` endpoint
/// of its own) was bound first when it was the oldest ready one, and received the room's token.
/// The pool's pods carry the operator's seal of their uid: a planted one is neither counted,
/// stopped nor sent anything.
#[tokio::test]
async fn a_pod_planted_with_the_warm_label_is_never_counted_stopped_or_sent_a_token() {
    let Some(cp) = ControlPlane::start().await else { return };
    let admin = cp.admin().await;
    let kubeconfig = chart_identity(&cp, NS).await;
    let pods: Api<Pod> = Api::namespaced(admin.clone(), NS);
    let nothing: OnAssign = Arc::new(|_| Box::pin(async {}));

    // Planted before the operator starts: the oldest ready pod labelled warm.
    let planted: Pod = serde_json::from_value(json!({
        "metadata": {"name": "planted", "labels": {"hybridcoach.io/pool": "warm"},
            "annotations": {"hybridcoach.io/warm-seal": "forged"}},
        "spec": {"containers": [{"name": "orb", "image": "evil:latest"}]},
    }))
    .unwrap();
    pods.create(&PostParams::default(), &planted).await.unwrap();
    let evil = FakeWarmOrb::serve(loopback_ip(9), nothing.clone()).await;
    run_pod(&pods, "planted", loopback_ip(9)).await;

    let env = BTreeMap::from([
        ("WATCH_NAMESPACE".to_owned(), NS.to_owned()),
        ("ORB_WARM_POOL_SIZE".to_owned(), "1".to_owned()),
        ("MAX_CONCURRENT_ORBS".to_owned(), "4".to_owned()),
    ]);
    let operator = Operator::start(&cp, "planted", &kubeconfig, &env);
    let real = wait_for("the keeper starts a warm pod of its own", || async {
        warm_pods(&pods)
            .await
            .into_iter()
            .find(|p| p.name_any() != "planted")
            .map(|p| p.name_any())
    })
    .await;
    let honest = FakeWarmOrb::serve(loopback_ip(0), nothing).await;
    run_pod(&pods, &real, loopback_ip(0)).await;

    create_orb(&admin, NS, "room-h", spec("room-h")).await;
    let orbs: Api<AiOrb> = Api::namespaced(admin.clone(), NS);
    let bound = wait_for("the orb is Ready in a warm pod", || async {
        let status = orbs.get("room-h").await.unwrap().status.unwrap_or_default();
        (status.phase == Some(OrbPhase::Ready)).then_some(status.pod_name)
    })
    .await;
    assert_eq!(bound.as_deref(), Some(real.as_str()));
    assert_eq!(evil.count(), 0, "the planted pod was sent an assignment");
    // Once, or again by a reconcile that ran before the binding's status reached its cache: an
    // assignment is idempotent (the same one is answered again), so a repeat is not a fault.
    assert!(honest.count() >= 1, "the operator's own warm pod got the assignment");
    // Not the pool's: not stopped either (it is not the operator's to delete).
    let still = pods.get("planted").await.unwrap();
    assert!(still.metadata.deletion_timestamp.is_none());
    operator.assert_never_forbidden();
}
