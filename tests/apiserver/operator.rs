//! Running the operator binary against the tier's API server, and reading what it did.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, PostParams};
use kube::{Client, ResourceExt};
use orb_api::{AiOrb, AiOrbSpec, OrbPhase};
use serde_json::Value;

use crate::envtest::{ControlPlane, apply_all, ensure_namespace, wait_for};
use crate::support::{Process, free_port, render, workspace_bin};

/// The operator's own namespace (its Lease and admission ledger): the chart's release namespace.
pub const OPERATOR_NS: &str = "orbs";

/// A signing key for the tests' orb tokens (at least 32 bytes).
pub const SIGNING_KEY: &str = "envtest-signing-key-0123456789abcdef0123456789";

/// A running `orb-operator` process, its log kept in the control plane's directory.
pub struct Operator {
    pub process: Process,
    pub log: PathBuf,
}

impl Operator {
    /// Starts the operator with `env` (on top of a minimal environment) and the identity of
    /// `kubeconfig`.
    pub fn start(cp: &ControlPlane, name: &str, kubeconfig: &Path, env: &BTreeMap<String, String>) -> Operator {
        Operator::start_binary(cp, &workspace_bin("orb-operator"), name, kubeconfig, env)
    }

    /// [`Operator::start`] with the operator binary at `binary`.
    pub fn start_binary(
        cp: &ControlPlane,
        binary: &Path,
        name: &str,
        kubeconfig: &Path,
        env: &BTreeMap<String, String>,
    ) -> Operator {
        let log = cp.dir().join(format!("operator-{name}.log"));
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let mut cmd = Command::new(binary);
        cmd.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("KUBECONFIG", kubeconfig)
            .env("RUST_LOG", "info,kube=warn")
            .env("ORB_IMAGE", "orb:test")
            .env("POD_NAME", name)
            .env("POD_NAMESPACE", OPERATOR_NS);
        cmd.envs(env);
        // The chart's signing key file names a path in the pod: the tests pass the key itself.
        if !env.contains_key(orb_api::auth::SIGNING_KEY_FILE_ENV) {
            cmd.env(orb_api::auth::SIGNING_KEY_ENV, SIGNING_KEY);
        }
        cmd.env("OPERATOR_HTTP_ADDR", format!("127.0.0.1:{}", free_port()))
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file);
        let child = cmd.spawn().expect("start orb-operator");
        Operator {
            process: Process(child),
            log,
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The operator never made a call its identity is not granted (the server answers 403, which
    /// the operator logs): run under the chart's RBAC, every call the code makes is one the chart
    /// grants.
    pub fn assert_never_forbidden(&self) {
        let log = self.log_text();
        let lower = log.to_lowercase();
        assert!(
            !lower.contains("forbidden") && !lower.contains(" 403"),
            "the operator made a call its RBAC does not grant:\n{log}"
        );
    }

    /// Kills the process at once, as a lost node or an OOM kill would.
    pub fn kill(&mut self) {
        let _ = self.process.0.kill();
        let _ = self.process.0.wait();
    }
}

/// Creates an AiOrb for `room` in `ns` with `client` (which must be allowed to create AiOrbs).
pub async fn create_orb(client: &Client, ns: &str, name: &str, spec: AiOrbSpec) -> AiOrb {
    let orbs: Api<AiOrb> = Api::namespaced(client.clone(), ns);
    orbs.create(&PostParams::default(), &AiOrb::new(name, spec))
        .await
        .unwrap_or_else(|e| panic!("create AiOrb {ns}/{name}: {e}"))
}

pub fn spec(room: &str) -> AiOrbSpec {
    AiOrbSpec {
        room_id: room.into(),
        ..AiOrbSpec::default()
    }
}

/// The pods whose controller is `orb`.
pub async fn pods_of(client: &Client, orb: &AiOrb) -> Vec<Pod> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), &orb.namespace().unwrap());
    pods.list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|p| {
            p.owner_references()
                .iter()
                .any(|r| r.controller == Some(true) && Some(&r.uid) == orb.metadata.uid.as_ref())
        })
        .collect()
}

/// Waits until the orb is Starting in its one pod, the status naming it (the admitter sets
/// Starting before the reconciler creates the pod).
pub async fn wait_for_pod(client: &Client, ns: &str, name: &str) -> (AiOrb, Pod) {
    let orbs: Api<AiOrb> = Api::namespaced(client.clone(), ns);
    wait_for(&format!("AiOrb {ns}/{name} has a pod and is Starting"), || async {
        let orb = orbs.get(name).await.unwrap();
        let status = orb.status.clone().unwrap_or_default();
        // The pod is created before the status names it.
        let starting = status.phase == Some(OrbPhase::Starting) && status.pod_name.is_some();
        let mut pods = pods_of(client, &orb).await;
        (starting && pods.len() == 1).then(|| (orb, pods.remove(0)))
    })
    .await
}

/// The identity the chart gives the operator when it watches `watched`: its ServiceAccount, Roles
/// and bindings as rendered, applied to the server, and a kubeconfig with the ServiceAccount's token.
/// An operator started with it may make only the calls the chart grants.
pub async fn chart_identity(cp: &ControlPlane, watched: &str) -> PathBuf {
    let admin = cp.admin().await;
    ensure_namespace(&admin, OPERATOR_NS).await;
    ensure_namespace(&admin, watched).await;
    let rbac: Vec<Value> = render(None, &["--set", &format!("operator.watchNamespace={watched}")])
        .into_iter()
        .filter(|o| {
            let kind = o["kind"].as_str().unwrap_or_default();
            let operators = o["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .starts_with("orb-operator");
            operators
                && [
                    "ServiceAccount",
                    "Role",
                    "RoleBinding",
                    "ClusterRole",
                    "ClusterRoleBinding",
                ]
                .contains(&kind)
        })
        .collect();
    assert!(rbac.iter().any(|o| o["kind"] == "Role"));
    let applied = apply_all(&admin, OPERATOR_NS, &rbac).await;
    assert!(applied.values().all(Result::is_ok), "{applied:?}");
    cp.service_account(OPERATOR_NS, "orb-operator").await.1
}

/// The env of the operator container as a rendered chart gives it, with the pod's own fields
/// resolved as the kubelet would (`POD_NAME`, `POD_NAMESPACE`); `OPERATOR_HTTP_ADDR` and the signing
/// key file are the test's.
pub fn chart_env(objects: &[Value], pod_name: &str, namespace: &str) -> BTreeMap<String, String> {
    let deployment = objects
        .iter()
        .find(|o| o["kind"] == "Deployment" && o["metadata"]["name"] == "orb-operator")
        .expect("the chart renders the operator's Deployment");
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    let mut env = BTreeMap::new();
    for var in container["env"].as_array().unwrap() {
        let name = var["name"].as_str().unwrap().to_owned();
        let value = match (&var["value"], var["valueFrom"]["fieldRef"]["fieldPath"].as_str()) {
            (Value::String(v), _) => v.clone(),
            (_, Some("metadata.name")) => pod_name.to_owned(),
            (_, Some("metadata.namespace")) => namespace.to_owned(),
            _ => panic!("the test cannot resolve env {var}"),
        };
        env.insert(name, value);
    }
    env.remove("OPERATOR_HTTP_ADDR");
    env.remove(orb_api::auth::SIGNING_KEY_FILE_ENV);
    env
}
