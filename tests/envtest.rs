//! A real Kubernetes control plane for the tests, envtest style: `etcd` and `kube-apiserver` from
//! `$KUBEBUILDER_ASSETS` (controller-runtime's convention; `etcd` there or on `PATH`), on loopback
//! ports of their own, with token authentication and the RBAC authorizer; the AiOrb CRD installed;
//! `kube-controller-manager` (the garbage collector) on request. There is no kubelet: a test plays
//! it for the pods it cares about.
//!
//! Without `KUBEBUILDER_ASSETS` a test of this tier is skipped with a message saying so, except
//! under `CI`, where the tier must run: there a missing asset fails the test.
// Each test binary that includes this module uses a part of it.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::core::GroupVersionKind;
use kube::discovery::{ApiCapabilities, ApiResource, Scope};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};

use crate::support::{Process, free_port, root, target_dir};

/// The token of the tier's administrator (group `system:masters`).
const ADMIN_TOKEN: &str = "envtest-admin-token";
/// Longest wait for a component to come up; a hang guard, not a timing expectation.
const START_TIMEOUT: Duration = Duration::from_secs(180);

/// Where the control-plane binaries are, or `None` (with the reason printed) when this machine has
/// none and the tier is skipped. Under `CI` the tier is required.
pub fn assets() -> Option<PathBuf> {
    let dir = std::env::var_os("KUBEBUILDER_ASSETS").map(PathBuf::from);
    let found = dir.filter(|d| d.join("kube-apiserver").is_file());
    if found.is_none() {
        let why = "KUBEBUILDER_ASSETS does not name a directory with kube-apiserver \
                   (./scripts/test.sh sets it when the assets are unpacked under target/kube-assets)";
        crate::support::skip_unless_ci("the real-API-server tier", why);
    }
    found
}

fn etcd_binary(assets: &Path) -> PathBuf {
    let bundled = assets.join("etcd");
    if bundled.is_file() {
        bundled
    } else {
        PathBuf::from("etcd")
    }
}

/// The control plane's directory under the target directory (logs, keys, kubeconfigs; kept when
/// a test fails) and etcd's data (always removed).
struct Scratch {
    dir: PathBuf,
    etcd_data: PathBuf,
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.etcd_data);
        if std::thread::panicking() {
            eprintln!("control plane logs kept in {}", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// One running control plane. Dropping it stops every process it started.
pub struct ControlPlane {
    pub url: String,
    assets: PathBuf,
    // Declared before `scratch`: the processes stop before their directory is removed.
    controller_manager: Option<Process>,
    apiserver: Process,
    etcd: Process,
    scratch: Scratch,
}

impl ControlPlane {
    /// Starts etcd and kube-apiserver, installs the AiOrb CRD and the `default` namespace's
    /// ServiceAccount; `None` when the tier is skipped (see [`assets`]).
    pub async fn start() -> Option<ControlPlane> {
        let assets = assets()?;
        let unique = format!(
            "{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        );
        let dir = target_dir().join("envtest").join(&unique);
        std::fs::create_dir_all(dir.join("certs")).unwrap();
        // etcd's fsyncs dominate on a slow disk; memory is enough for a test's data.
        let shm = Path::new("/dev/shm");
        let etcd_data = if shm.is_dir() {
            shm.join(format!("orb-envtest-{unique}"))
        } else {
            dir.join("etcd")
        };
        let scratch = Scratch {
            dir: dir.clone(),
            etcd_data: etcd_data.clone(),
        };

        let (etcd_port, peer_port, api_port) = (free_port(), free_port(), free_port());
        let etcd_url = format!("http://127.0.0.1:{etcd_port}");
        let peer_url = format!("http://127.0.0.1:{peer_port}");
        let etcd = spawn_logged(
            Command::new(etcd_binary(&assets)).args([
                "--data-dir",
                etcd_data.to_str().unwrap(),
                "--listen-client-urls",
                &etcd_url,
                "--advertise-client-urls",
                &etcd_url,
                "--listen-peer-urls",
                &peer_url,
                "--initial-advertise-peer-urls",
                &peer_url,
                "--initial-cluster",
                &format!("default={peer_url}"),
            ]),
            &dir.join("etcd.log"),
        );

        run_ok(
            Command::new("openssl")
                .args(["genrsa", "-out"])
                .arg(dir.join("sa.key"))
                .arg("2048"),
        );
        run_ok(
            Command::new("openssl")
                .args(["rsa", "-pubout", "-in"])
                .arg(dir.join("sa.key"))
                .arg("-out")
                .arg(dir.join("sa.pub")),
        );
        std::fs::write(
            dir.join("tokens.csv"),
            format!("{ADMIN_TOKEN},envtest-admin,envtest-admin,\"system:masters\"\n"),
        )
        .unwrap();
        let path = |f: &str| dir.join(f).to_str().unwrap().to_owned();
        let apiserver = spawn_logged(
            Command::new(assets.join("kube-apiserver")).args([
                &format!("--etcd-servers={etcd_url}"),
                "--bind-address=127.0.0.1",
                &format!("--secure-port={api_port}"),
                &format!("--cert-dir={}", path("certs")),
                &format!("--token-auth-file={}", path("tokens.csv")),
                "--authorization-mode=RBAC",
                &format!("--service-account-key-file={}", path("sa.pub")),
                &format!("--service-account-signing-key-file={}", path("sa.key")),
                "--service-account-issuer=https://kubernetes.default.svc",
                "--service-cluster-ip-range=10.96.0.0/16",
                "--allow-privileged=true",
                "--enable-priority-and-fairness=false",
                "--feature-gates=ValidatingAdmissionPolicy=true",
                "--runtime-config=admissionregistration.k8s.io/v1beta1=true",
            ]),
            &dir.join("kube-apiserver.log"),
        );
        let cp = ControlPlane {
            url: format!("https://127.0.0.1:{api_port}"),
            assets,
            controller_manager: None,
            apiserver,
            etcd,
            scratch,
        };
        cp.wait_ready().await;
        let client = cp.admin().await;
        cp.install_crd(&client).await;
        ensure_service_account(&client, "default", "default").await;
        Some(cp)
    }

    pub fn dir(&self) -> &Path {
        &self.scratch.dir
    }

    async fn wait_ready(&self) {
        let client = self.admin().await;
        let deadline = tokio::time::Instant::now() + START_TIMEOUT;
        loop {
            let req = http::Request::get("/readyz").body(Vec::new()).unwrap();
            match client.request_text(req).await {
                Ok(body) if body.trim() == "ok" => return,
                _ if tokio::time::Instant::now() > deadline => {
                    panic!("kube-apiserver was not ready; see {}", self.dir().display())
                }
                _ => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    }

    /// A kubeconfig file authenticating with `token` (the server's certificate is self-signed).
    pub fn kubeconfig(&self, name: &str, token: &str) -> PathBuf {
        let config = json!({
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "envtest", "cluster": {"server": self.url, "insecure-skip-tls-verify": true}}],
            "users": [{"name": name, "user": {"token": token}}],
            "contexts": [{"name": "envtest", "context": {"cluster": "envtest", "user": name, "namespace": "default"}}],
            "current-context": "envtest",
        });
        let file = self.dir().join(format!("kubeconfig-{name}"));
        std::fs::write(&file, serde_json::to_vec(&config).unwrap()).unwrap();
        file
    }

    pub fn admin_kubeconfig(&self) -> PathBuf {
        self.kubeconfig("admin", ADMIN_TOKEN)
    }

    /// A client with the administrator's rights.
    pub async fn admin(&self) -> Client {
        client_for(&self.admin_kubeconfig()).await
    }

    /// A client acting as ServiceAccount `ns/name` (created when absent), with a token from the
    /// TokenRequest API, and the kubeconfig file of that identity (for a binary under test).
    pub async fn service_account(&self, ns: &str, name: &str) -> (Client, PathBuf) {
        let admin = self.admin().await;
        ensure_namespace(&admin, ns).await;
        ensure_service_account(&admin, ns, name).await;
        let sas: Api<ServiceAccount> = Api::namespaced(admin, ns);
        let request: TokenRequest = serde_json::from_value(json!({
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {"expirationSeconds": 86400},
        }))
        .unwrap();
        let token = sas
            .create_token_request(name, &PostParams::default(), &request)
            .await
            .expect("token request")
            .status
            .expect("token")
            .token;
        let file = self.kubeconfig(&format!("{ns}-{name}"), &token);
        (client_for(&file).await, file)
    }

    /// Starts kube-controller-manager (garbage collector and the other controllers that need no
    /// cloud or nodes).
    pub fn start_controller_manager(&mut self) {
        let kubeconfig = self.admin_kubeconfig();
        let dir = self.dir().to_owned();
        self.controller_manager = Some(spawn_logged(
            Command::new(self.assets.join("kube-controller-manager")).args([
                &format!("--kubeconfig={}", kubeconfig.display()),
                &format!("--service-account-private-key-file={}", dir.join("sa.key").display()),
                "--use-service-account-credentials=false",
                "--leader-elect=false",
                "--secure-port=0",
                "--controllers=*,-nodeipam,-nodelifecycle,-route,-service,-cloud-node-lifecycle",
            ]),
            &dir.join("kube-controller-manager.log"),
        ));
    }

    async fn install_crd(&self, client: &Client) {
        let text = std::fs::read_to_string(root().join("crds/generated/aiorbs.hybridcoach.io.yaml")).unwrap();
        let crd: CustomResourceDefinition = serde_norway::from_str(&text).unwrap();
        let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
        crds.patch(
            &crd.name_any(),
            &PatchParams::apply("envtest").force(),
            &Patch::Apply(&crd),
        )
        .await
        .expect("install the AiOrb CRD");
        wait_until("the AiOrb CRD is established", || async {
            crds.get(&crd.name_any()).await.ok().is_some_and(|c| {
                c.status
                    .and_then(|s| s.conditions)
                    .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Established" && c.status == "True"))
            })
        })
        .await;
        // Discovery lags the Established condition by a moment.
        wait_until("the AiOrb API is served", || async {
            let orbs: Api<orb_api::AiOrb> = Api::all(client.clone());
            orbs.list(&Default::default()).await.is_ok()
        })
        .await;
    }
}

/// A client from a kubeconfig file.
pub async fn client_for(kubeconfig: &Path) -> Client {
    let config = kube::Config::from_custom_kubeconfig(
        Kubeconfig::read_from(kubeconfig).unwrap(),
        &KubeConfigOptions::default(),
    )
    .await
    .unwrap();
    Client::try_from(config).unwrap()
}

pub async fn ensure_namespace(client: &Client, ns: &str) {
    let api: Api<Namespace> = Api::all(client.clone());
    let body: Namespace = serde_json::from_value(json!({"metadata": {"name": ns}})).unwrap();
    match api.create(&PostParams::default(), &body).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 409 => {}
        Err(e) => panic!("create namespace {ns}: {e}"),
    }
    // No controller-manager by default: the ServiceAccount admission of pods needs `default`.
    ensure_service_account(client, ns, "default").await;
}

async fn ensure_service_account(client: &Client, ns: &str, name: &str) {
    let api: Api<ServiceAccount> = Api::namespaced(client.clone(), ns);
    let body: ServiceAccount = serde_json::from_value(json!({"metadata": {"name": name}})).unwrap();
    match api.create(&PostParams::default(), &body).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 409 => {}
        Err(e) => panic!("create service account {ns}/{name}: {e}"),
    }
}

/// Applies objects (as `helm template` renders them) with server-side apply, in `namespace`
/// where they name none. Returns, per object, `kind/name` and the server's refusal if any.
pub async fn apply_all(client: &Client, namespace: &str, objects: &[Value]) -> BTreeMap<String, Result<(), String>> {
    let mut out = BTreeMap::new();
    let mut discovered: BTreeMap<String, (ApiResource, ApiCapabilities)> = BTreeMap::new();
    for object in objects {
        let gvk = gvk_of(object);
        let key = format!(
            "{}/{}",
            object["kind"].as_str().unwrap_or(""),
            object["metadata"]["name"].as_str().unwrap_or("")
        );
        let gvk_key = format!("{}/{}/{}", gvk.group, gvk.version, gvk.kind);
        if !discovered.contains_key(&gvk_key) {
            match kube::discovery::pinned_kind(client, &gvk).await {
                Ok(found) => {
                    discovered.insert(gvk_key.clone(), found);
                }
                Err(e) => {
                    out.insert(key, Err(format!("not served: {e}")));
                    continue;
                }
            }
        }
        let (resource, caps) = &discovered[&gvk_key];
        let api: Api<DynamicObject> = match caps.scope {
            Scope::Cluster => Api::all_with(client.clone(), resource),
            Scope::Namespaced => Api::namespaced_with(
                client.clone(),
                object["metadata"]["namespace"].as_str().unwrap_or(namespace),
                resource,
            ),
        };
        let name = object["metadata"]["name"].as_str().unwrap_or_default();
        let result = api
            .patch(name, &PatchParams::apply("envtest").force(), &Patch::Apply(object))
            .await
            .map(|_| ())
            .map_err(|e| e.to_string());
        out.insert(key, result);
    }
    out
}

fn gvk_of(object: &Value) -> GroupVersionKind {
    let api_version = object["apiVersion"].as_str().unwrap_or_default();
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
    GroupVersionKind::gvk(group, version, object["kind"].as_str().unwrap_or_default())
}

/// Polls `check` until it gives a value; panics (naming `what`) after the start timeout, a hang
/// guard for waiting on the system under test, never a timing expectation.
pub async fn wait_for<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + START_TIMEOUT;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// [`wait_for`] a condition.
pub async fn wait_until<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    wait_for(what, || {
        let holds = check();
        async move { holds.await.then_some(()) }
    })
    .await
}

fn spawn_logged(cmd: &mut Command, log: &Path) -> Process {
    let file = std::fs::File::create(log).unwrap();
    let child = cmd
        .stdin(Stdio::null())
        .stdout(file.try_clone().unwrap())
        .stderr(file)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
    Process(child)
}

fn run_ok(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
