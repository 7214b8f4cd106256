//! The chart as rendered, applied to a real API server: every object accepted, the operator running
//! under exactly the RBAC the chart grants, the admission policy evaluated by the server.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use orb_api::AiOrb;
use serde_json::{Value, json};

use crate::envtest::{ControlPlane, apply_all, ensure_namespace, wait_for, wait_until};
use crate::operator::{Operator, chart_env, create_orb, spec, wait_for_pod};
use crate::support::render;

const NS: &str = "orbs";

/// What v1.28 (the tier's server) lacks of the chart's target versions: the admission policy is
/// `v1beta1` there, and `preStop.sleep` does not exist.
fn for_this_server(mut objects: Vec<Value>) -> Vec<Value> {
    for o in &mut objects {
        if let Some(v) = o["apiVersion"].as_str()
            && v == "admissionregistration.k8s.io/v1"
        {
            o["apiVersion"] = json!("admissionregistration.k8s.io/v1beta1");
        }
        strip_sleep_hooks(o);
    }
    objects
}

fn strip_sleep_hooks(v: &mut Value) {
    match v {
        Value::Object(map) => {
            if let Some(lifecycle) = map.get_mut("lifecycle").and_then(Value::as_object_mut) {
                lifecycle.retain(|_, hook| hook.get("sleep").is_none());
            }
            map.values_mut().for_each(strip_sleep_hooks);
        }
        Value::Array(items) => items.iter_mut().for_each(strip_sleep_hooks),
        _ => {}
    }
}

/// Applies the rendered chart and returns the objects.
async fn install(cp: &ControlPlane, extra: &[&str]) -> Vec<Value> {
    let admin = cp.admin().await;
    ensure_namespace(&admin, NS).await;
    let objects = for_this_server(render(None, extra));
    let results = apply_all(&admin, NS, &objects).await;
    let refused: BTreeMap<_, _> = results.iter().filter(|(_, r)| r.is_err()).collect();
    assert!(
        refused.is_empty(),
        "the server refused objects of the chart: {refused:#?}"
    );
    objects
}

/// Starts the operator as the chart's Deployment runs it: its env and its ServiceAccount's token.
async fn start_chart_operator(cp: &ControlPlane, objects: &[Value]) -> Operator {
    let (_, kubeconfig) = cp.service_account(NS, "orb-operator").await;
    let env = chart_env(objects, "orb-operator-0", NS);
    Operator::start(cp, "chart", &kubeconfig, &env)
}

#[tokio::test]
async fn the_default_chart_is_accepted_and_its_operator_reconciles_an_orb_under_the_charts_rbac() {
    let Some(cp) = ControlPlane::start().await else { return };
    let objects = install(&cp, &[]).await;
    let operator = start_chart_operator(&cp, &objects).await;

    // Signaling creates the room's AiOrb with its own ServiceAccount, as in a cluster.
    let (signaling, _) = cp.service_account(NS, "orb-signaling").await;
    create_orb(&signaling, NS, "room-a", spec("room-a")).await;
    let admin = cp.admin().await;
    let (orb, pod) = wait_for_pod(&admin, NS, "room-a").await;
    assert_eq!(orb.status.unwrap().pod_name.as_deref(), Some(pod.name_any().as_str()));
    assert_eq!(pod.spec.as_ref().unwrap().automount_service_account_token, Some(false));

    // Deleting the AiOrb goes through the finalizer: the pod is removed and the end recorded.
    let orbs: Api<AiOrb> = Api::namespaced(signaling.clone(), NS);
    orbs.delete("room-a", &DeleteParams::default()).await.unwrap();
    wait_until("the deleted AiOrb is gone", || async {
        orbs.get_opt("room-a").await.unwrap().is_none()
    })
    .await;
    let pods: Api<Pod> = Api::namespaced(admin.clone(), NS);
    assert!(pods.get_opt(&pod.name_any()).await.unwrap().is_none());
    operator.assert_never_forbidden();
}

#[tokio::test]
async fn a_cluster_wide_operator_reconciles_orbs_of_any_namespace_under_its_cluster_role() {
    let Some(cp) = ControlPlane::start().await else { return };
    let objects = install(
        &cp,
        &[
            "--set",
            "operator.clusterWide=true",
            // The admin of the test creates AiOrbs in another namespace, as an app backend would.
            "--set",
            "admissionPolicy.allowedGroups={system:masters}",
        ],
    )
    .await;
    assert!(objects.iter().any(|o| o["kind"] == "ClusterRole"));
    let operator = start_chart_operator(&cp, &objects).await;
    let admin = cp.admin().await;
    ensure_namespace(&admin, "team-b").await;
    create_orb(&admin, "team-b", "room-b", spec("room-b")).await;
    wait_for_pod(&admin, "team-b", "room-b").await;
    operator.assert_never_forbidden();
}

#[tokio::test]
async fn the_charts_admission_policy_admits_signaling_and_refuses_another_creator() {
    let Some(cp) = ControlPlane::start().await else { return };
    install(&cp, &[]).await;
    let admin = cp.admin().await;
    // An intruder with every RBAC right on AiOrbs, but not an allowed creator.
    let rbac = [
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
               "metadata": {"name": "aiorb-editor", "namespace": NS},
               "rules": [{"apiGroups": ["hybridcoach.io"], "resources": ["aiorbs", "aiorbs/status"], "verbs": ["*"]}]}),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
               "metadata": {"name": "aiorb-editor", "namespace": NS},
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "aiorb-editor"},
               "subjects": [{"kind": "ServiceAccount", "name": "intruder", "namespace": NS}]}),
    ];
    assert!(apply_all(&admin, NS, &rbac).await.values().all(Result::is_ok));
    let (intruder, _) = cp.service_account(NS, "intruder").await;
    let (signaling, _) = cp.service_account(NS, "orb-signaling").await;

    // The server loads a new policy asynchronously: until it refuses, it has not loaded it.
    let orbs: Api<AiOrb> = Api::namespaced(intruder.clone(), NS);
    let refusal = wait_for("the admission policy refuses the intruder", || async {
        match orbs
            .create(&Default::default(), &AiOrb::new("planted", spec("planted")))
            .await
        {
            Ok(_) => {
                orbs.delete("planted", &DeleteParams::default()).await.unwrap();
                None
            }
            Err(e) => Some(e.to_string()),
        }
    })
    .await;
    assert!(
        refusal.contains("AiOrbs are created by signaling") && refusal.contains("system:serviceaccount:orbs:intruder"),
        "{refusal}"
    );
    create_orb(&signaling, NS, "room-c", spec("room-c")).await;
    // Changing the spec is refused too; a label (no spec change) is not the policy's to refuse.
    let patch = json!({"spec": {"coachId": "someone-else"}});
    let err = orbs
        .patch("room-c", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("the spec of an AiOrb is changed by signaling"),
        "{err}"
    );
    let listed = Api::<AiOrb>::namespaced(admin, NS)
        .list(&ListParams::default())
        .await
        .unwrap();
    assert_eq!(listed.items.len(), 1);

    // What admission relies on is the operator's: the finished label (it takes an orb out of the
    // admission passes) and its status fields (`admittedAt` would start a pod past the cap).
    let label = json!({"metadata": {"labels": {"hybridcoach.io/finished": "true"}}});
    let err = orbs
        .patch("room-c", &PatchParams::default(), &Patch::Merge(&label))
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("hybridcoach.io/finished of an AiOrb is set by the operator"),
        "{err}"
    );
    let signalings: Api<AiOrb> = Api::namespaced(signaling.clone(), NS);
    for who in [&orbs, &signalings] {
        let forged = json!({"status": {"admittedAt": "2026-01-01T00:00:00Z", "phase": "Starting"}});
        let err = who
            .patch_status("room-c", &PatchParams::default(), &Patch::Merge(&forged))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("is written by the operator"), "{err}");
    }
    // Signaling's own fields pass, and another label too.
    crate::pool::report_presence(&signaling, NS, "room-c", 2).await;
    let team = json!({"metadata": {"labels": {"team": "blue"}}});
    orbs.patch("room-c", &PatchParams::default(), &Patch::Merge(&team))
        .await
        .unwrap();
}
