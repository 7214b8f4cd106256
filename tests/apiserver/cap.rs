//! The concurrency cap on a real API server, under what breaks caches: a thousand AiOrbs created at
//! once, two operator processes competing for the lease, the leader killed in the middle and a new
//! one started, admitted orbs deleted to free their slots. A watch follows every AiOrb and counts
//! the admitted, unfinished ones after each change: never more than the cap.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{Api, DeleteParams, ListParams};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use orb_api::AiOrb;

use crate::envtest::{ControlPlane, wait_for, wait_until};
use crate::operator::{OPERATOR_NS, Operator, chart_identity, create_orb, spec};

const NS: &str = "calls";
const CAP: usize = 5;
const ORBS: usize = 1000;

fn holds_a_slot(orb: &AiOrb) -> bool {
    let status = orb.status.clone().unwrap_or_default();
    status.admitted_at.is_some() && !status.phase.is_some_and(orb_api::OrbPhase::is_terminal)
}

/// The admitted, unfinished orbs after every change the watch delivers, and the most seen at once.
#[derive(Default)]
struct SlotWatch {
    holding: BTreeSet<String>,
    most: usize,
}

fn follow(orbs: Api<AiOrb>, state: Arc<Mutex<SlotWatch>>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut stream = watcher(orbs, watcher::Config::default()).boxed();
        while let Some(event) = stream.next().await {
            let Ok(event) = event else { continue };
            let mut s = state.lock().unwrap();
            match event {
                watcher::Event::Apply(o) | watcher::Event::InitApply(o) => {
                    if holds_a_slot(&o) {
                        s.holding.insert(o.uid().unwrap());
                    } else {
                        s.holding.remove(&o.uid().unwrap());
                    }
                }
                watcher::Event::Delete(o) => {
                    s.holding.remove(&o.uid().unwrap());
                }
                _ => {}
            }
            s.most = s.most.max(s.holding.len());
        }
    })
}

async fn leader(client: &Client) -> Option<String> {
    let leases: Api<Lease> = Api::namespaced(client.clone(), OPERATOR_NS);
    leases.get_opt("orb-operator-leader").await.ok()??.spec?.holder_identity
}

async fn holding(orbs: &Api<AiOrb>) -> Vec<AiOrb> {
    orbs.list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(holds_a_slot)
        .collect()
}

#[tokio::test]
async fn the_cap_holds_for_a_thousand_orbs_created_at_once_across_a_killed_leader_and_a_standby() {
    let Some(cp) = ControlPlane::start().await else { return };
    let admin = cp.admin().await;
    let env = BTreeMap::from([
        ("MAX_CONCURRENT_ORBS".to_owned(), CAP.to_string()),
        ("WATCH_NAMESPACE".to_owned(), NS.to_owned()),
    ]);
    let kubeconfig = chart_identity(&cp, NS).await;
    let mut operators = BTreeMap::from([
        ("op-a".to_owned(), Operator::start(&cp, "op-a", &kubeconfig, &env)),
        ("op-b".to_owned(), Operator::start(&cp, "op-b", &kubeconfig, &env)),
    ]);
    let orbs: Api<AiOrb> = Api::namespaced(admin.clone(), NS);
    let slots = Arc::new(Mutex::new(SlotWatch::default()));
    let watch = follow(orbs.clone(), slots.clone());

    // A thousand rooms ask for an orb at once; the leader dies a third of the way in.
    let creating = futures::stream::iter(0..ORBS)
        .map(|i| {
            let admin = admin.clone();
            async move {
                let room = format!("room-{i:04}");
                create_orb(&admin, NS, &room, spec(&room)).await;
            }
        })
        .buffer_unordered(32);
    tokio::pin!(creating);
    let mut created = 0;
    while creating.next().await.is_some() {
        created += 1;
        if created == ORBS / 3 {
            let first = wait_for("an operator leads", || leader(&admin)).await;
            operators.get_mut(&first).expect("a known operator leads").kill();
            operators.insert(
                format!("{first}-restarted"),
                Operator::start(&cp, &format!("{first}-restarted"), &kubeconfig, &env),
            );
        }
    }
    wait_until("the cap is filled", || async { holding(&orbs).await.len() == CAP }).await;

    // Calls end: their AiOrbs are deleted, and queued ones take the slots.
    for _ in 0..3 {
        let ending = holding(&orbs).await;
        for orb in &ending {
            orbs.delete(&orb.name_any(), &DeleteParams::default()).await.unwrap();
        }
        let ended: BTreeSet<String> = ending.iter().filter_map(|o| o.uid()).collect();
        wait_until("the ended orbs are gone and queued ones hold their slots", || async {
            let all = orbs.list(&ListParams::default()).await.unwrap().items;
            let now: Vec<&AiOrb> = all.iter().filter(|o| holds_a_slot(o)).collect();
            now.len() == CAP && all.iter().all(|o| !ended.contains(&o.uid().unwrap()))
        })
        .await;
    }
    watch.abort();
    for operator in operators.values() {
        operator.assert_never_forbidden();
    }
    let most = slots.lock().unwrap().most;
    assert_eq!(
        most, CAP,
        "admitted, unfinished orbs at once: at most the cap, and the cap was used"
    );
    let total = orbs.list(&ListParams::default()).await.unwrap().items.len();
    assert_eq!(total, ORBS - 3 * CAP);
}

/// The finished label takes an orb out of the admission passes' list; it is no proof that the orb
/// finished. Set on a running orb by someone else (where the chart's admission policy is not
/// installed to refuse it), the orb keeps its slot: the queue does not move past the cap.
#[tokio::test]
async fn a_running_orb_labelled_finished_by_someone_else_keeps_its_slot() {
    let Some(cp) = ControlPlane::start().await else { return };
    let admin = cp.admin().await;
    let env = BTreeMap::from([
        ("MAX_CONCURRENT_ORBS".to_owned(), "1".to_owned()),
        ("WATCH_NAMESPACE".to_owned(), NS.to_owned()),
    ]);
    let operator = Operator::start(&cp, "label", &chart_identity(&cp, NS).await, &env);
    let orbs: Api<AiOrb> = Api::namespaced(admin.clone(), NS);
    let position = |name: &'static str| {
        let orbs = orbs.clone();
        async move { orbs.get(name).await.unwrap().status.and_then(|s| s.queue_position) }
    };
    create_orb(&admin, NS, "room-1", spec("room-1")).await;
    wait_until("room-1 holds the slot", || async { holding(&orbs).await.len() == 1 }).await;
    create_orb(&admin, NS, "room-2", spec("room-2")).await;
    wait_until("room-2 is first in the queue", || async {
        position("room-2").await == Some(1)
    })
    .await;

    let label = serde_json::json!({"metadata": {"labels": {"hybridcoach.io/finished": "true"}}});
    orbs.patch(
        "room-1",
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(&label),
    )
    .await
    .unwrap();
    // A pass after the label: the one that places a new arrival in the queue.
    create_orb(&admin, NS, "room-3", spec("room-3")).await;
    let third = wait_for("room-3 has a place", || position("room-3")).await;
    assert_eq!(third, 2, "room-2 was admitted past the cap");
    let holders: Vec<String> = holding(&orbs).await.iter().map(|o| o.name_any()).collect();
    assert_eq!(holders, vec!["room-1".to_owned()]);
    operator.assert_never_forbidden();
}
