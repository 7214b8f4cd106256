//! Session summaries on a real API server: two signaling replicas share the pending summaries of a
//! namespace and a slow webhook receives each of them exactly once, the replicas running under the
//! chart's own RBAC for signaling.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::Path as UrlPath;
use axum::http::{HeaderMap, StatusCode};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::ResourceExt;
use kube::api::{Api, ListParams, Patch, PatchParams};
use orb_api::AiOrb;
use orb_api::naming::orb_name_for_room;
use orb_signaling::summary::checkpoint::CheckpointStore;
use orb_signaling::summary::kube_store::{KubeCheckpoints, KubeStore, ORB_LABEL, checkpoint_config_map_name};
use orb_signaling::summary::signature::IDEMPOTENCY_HEADER;
use orb_signaling::summary::{CLAIM, PutOutcome, StoredSummary, Summaries, SummarySettings, SummaryStore, new_meta};
use serde_json::json;

use crate::envtest::{ControlPlane, apply_all, wait_until};
use crate::operator::SIGNING_KEY;
use crate::support::{Process, free_port, render, workspace_bin};

const NS: &str = "orbs";
/// The chart's ServiceAccount, Role and RoleBinding of signaling.
const SIGNALING: &str = "orb-signaling";
/// How long the webhook takes to answer each POST (well within the attempt timeout).
const SLOW: Duration = Duration::from_secs(3);

/// A webhook on loopback that answers 204 after [`SLOW`] and counts the POSTs per idempotency key
/// and per replica (each replica posts to its own path).
#[derive(Clone, Default)]
struct SlowWebhook {
    per_key: Arc<Mutex<BTreeMap<String, usize>>>,
    per_replica: Arc<Mutex<BTreeMap<String, usize>>>,
    received: Arc<AtomicUsize>,
    in_flight: Arc<AtomicUsize>,
    /// POSTs of one summary per key in flight now, and the keys ever posted twice at once.
    open: Arc<Mutex<BTreeMap<String, usize>>>,
    overlapping: Arc<Mutex<BTreeSet<String>>>,
}

/// One POST in flight: counted out however the handler ends (a client that gave up drops it).
struct InFlight {
    hook: SlowWebhook,
    key: String,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.hook.in_flight.fetch_sub(1, Ordering::SeqCst);
        *self.hook.open.lock().unwrap().entry(self.key.clone()).or_default() -= 1;
    }
}

impl SlowWebhook {
    /// Serves on loopback; returns the base URL (a replica posts to `<base>/<replica>`).
    async fn start(&self) -> String {
        let hook = self.clone();
        let app = axum::Router::new().route(
            "/hook/{replica}",
            axum::routing::post(move |UrlPath(replica): UrlPath<String>, headers: HeaderMap| {
                let hook = hook.clone();
                async move {
                    hook.in_flight.fetch_add(1, Ordering::SeqCst);
                    let key = headers
                        .get(IDEMPOTENCY_HEADER)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_owned();
                    let _guard = InFlight {
                        hook: hook.clone(),
                        key: key.clone(),
                    };
                    let open = {
                        let mut open = hook.open.lock().unwrap();
                        let n = open.entry(key.clone()).or_default();
                        *n += 1;
                        *n
                    };
                    if open > 1 {
                        hook.overlapping.lock().unwrap().insert(key.clone());
                    }
                    *hook.per_key.lock().unwrap().entry(key).or_default() += 1;
                    *hook.per_replica.lock().unwrap().entry(replica).or_default() += 1;
                    hook.received.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(SLOW).await;
                    StatusCode::NO_CONTENT
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}/hook", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        base
    }
}

/// The chart's ServiceAccount, Role and RoleBinding of signaling in [`NS`]: a kubeconfig of it.
async fn signaling_identity(cp: &ControlPlane, admin: &kube::Client) -> std::path::PathBuf {
    let rbac: Vec<_> = render(None, &[])
        .into_iter()
        .filter(|o| {
            o["metadata"]["name"] == SIGNALING
                && ["ServiceAccount", "Role", "RoleBinding"].contains(&o["kind"].as_str().unwrap_or_default())
        })
        .collect();
    assert_eq!(
        rbac.len(),
        3,
        "the chart's ServiceAccount, Role and RoleBinding of signaling"
    );
    crate::envtest::ensure_namespace(admin, NS).await;
    let applied = apply_all(admin, NS, &rbac).await;
    assert!(applied.values().all(Result::is_ok), "{applied:?}");
    cp.service_account(NS, SIGNALING).await.1
}

/// One `orb-signaling` replica with the Kubernetes runtime, delivering to `webhook`.
fn start_signaling(cp: &ControlPlane, name: &str, kubeconfig: &Path, webhook: &str) -> Process {
    let log = std::fs::File::create(cp.dir().join(format!("signaling-{name}.log"))).unwrap();
    let child = Command::new(workspace_bin("orb-signaling"))
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("KUBECONFIG", kubeconfig)
        .env("RUST_LOG", "info,kube=warn")
        .env(orb_api::auth::SIGNING_KEY_ENV, SIGNING_KEY)
        .args(["--listen", &format!("127.0.0.1:{}", free_port())])
        .args(["--orb-runtime", "kubernetes", "--orb-namespace", NS])
        .args(["--summary-webhook-url", webhook])
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("start orb-signaling");
    Process(child)
}

/// Replica `name`'s log (plain `key=value` fields: a log that is not a terminal is not coloured).
fn log_of(cp: &ControlPlane, name: &str) -> String {
    std::fs::read_to_string(cp.dir().join(format!("signaling-{name}.log"))).unwrap_or_default()
}

/// Item 4 of issue 22: a pass took its clock once, so behind a slow webhook its later claims were
/// written already run out, and another replica posted the same summary while the first one was
/// still posting it. Replica `a` starts alone on the pending summaries; `b` starts once `a` has
/// been at it for longer than a claim lasts (a count of slow answers, not a wall-clock guess), so
/// `b` lists while `a` is mid-way; every summary must reach the webhook exactly once.
#[tokio::test]
async fn two_replicas_behind_a_slow_webhook_deliver_each_summary_once() {
    let Some(cp) = ControlPlane::start().await else { return };
    let admin = cp.admin().await;
    let kubeconfig = signaling_identity(&cp, &admin).await;

    let hook = SlowWebhook::default();
    let base = hook.start().await;
    // `a` must still be posting when `b` lists: it has received this many answers by then.
    let before_b = (CLAIM.as_secs() / SLOW.as_secs()) as usize + 2;
    let total = before_b + 8;
    let settings = SummarySettings {
        webhook_url: Some(base.parse().unwrap()),
        retry_window: Duration::from_secs(3600),
        ..Default::default()
    };
    // Stored as signaling stores what an orb sends (no AiOrb: once final, each is deleted).
    let store = KubeStore::new(admin.clone(), NS);
    let ids: Vec<String> = (0..total).map(|i| format!("sum-{i:02}")).collect();
    for (i, id) in ids.iter().enumerate() {
        let room = format!("room-{i:02}");
        let body = json!({"type": "session_summary", "summaryId": id, "roomId": room,
                          "summary": {"transcript": vec!["a line of the session"; 200]}});
        let summary = StoredSummary {
            meta: new_meta(id.clone(), room, jiff::Timestamp::now(), &settings),
            body: serde_json::to_vec(&body).unwrap().into(),
            version: None,
        };
        assert_eq!(store.put(summary).await.unwrap(), PutOutcome::Stored);
    }

    let _a = start_signaling(&cp, "a", &kubeconfig, &format!("{base}/a"));
    // Each answer took SLOW, so `a`'s claim on the POST it is making now was written more than
    // CLAIM after its pass began.
    wait_until("replica a has been posting for longer than a claim lasts", || async {
        hook.received.load(Ordering::SeqCst) >= before_b
    })
    .await;
    let mut b = start_signaling(&cp, "b", &kubeconfig, &format!("{base}/b"));

    wait_until("no summary is pending and no POST is in flight", || async {
        store.pending().await.unwrap().is_empty() && hook.in_flight.load(Ordering::SeqCst) == 0
    })
    .await;
    // Never two replicas at once on one summary: that was the bug. A summary is posted again only
    // after an attempt of it failed (delivery is at least once: on a busy machine an attempt can
    // run out of time while the webhook still answers), and then one after the other.
    let per_key = hook.per_key.lock().unwrap().clone();
    let overlapping = hook.overlapping.lock().unwrap().clone();
    assert!(
        overlapping.is_empty(),
        "summaries posted by two replicas at once: {overlapping:?} (per replica: {:?})",
        hook.per_replica.lock().unwrap()
    );
    let posted: BTreeSet<&String> = per_key.keys().collect();
    assert_eq!(
        posted,
        ids.iter().collect::<BTreeSet<_>>(),
        "every summary reached the webhook"
    );
    let logs = format!("{}{}", log_of(&cp, "a"), log_of(&cp, "b"));
    for (id, n) in per_key.iter().filter(|(_, n)| **n > 1) {
        let failed = logs
            .lines()
            .filter(|l| l.contains("not delivered") && l.contains(&format!("summary={id} ")))
            .count();
        assert!(failed + 1 >= *n, "{id} posted {n} times after {failed} failed attempts");
    }
    assert!(b.0.try_wait().unwrap().is_none(), "replica b is still running");
    for name in ["a", "b"] {
        let log = log_of(&cp, name);
        assert!(
            !log.contains("store error") && !log.contains("Forbidden") && !log.contains("cannot list"),
            "replica {name} met store errors:\n{log}"
        );
    }
    eprintln!("posts per replica: {:?}", hook.per_replica.lock().unwrap());
}

/// A webhook on loopback that answers 204 at once and keeps every POST: (idempotency key, body).
#[derive(Clone, Default)]
struct RecordingWebhook(Arc<Mutex<Vec<(String, serde_json::Value)>>>);

impl RecordingWebhook {
    async fn start(&self) -> String {
        let posts = self.0.clone();
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(move |headers: HeaderMap, body: axum::body::Bytes| {
                let posts = posts.clone();
                async move {
                    let key = headers
                        .get(IDEMPOTENCY_HEADER)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_owned();
                    let body = serde_json::from_slice(&body).unwrap_or_default();
                    posts.lock().unwrap().push((key, body));
                    StatusCode::NO_CONTENT
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        url
    }

    fn posts(&self) -> Vec<(String, serde_json::Value)> {
        self.0.lock().unwrap().clone()
    }
}

/// A checkpoint as signaling keeps it: the session so far of the room's orb.
fn checkpoint_body(room: &str, lines: &[&str]) -> axum::body::Bytes {
    let body = json!({"type": "session_checkpoint", "roomId": room, "summary": {"transcript": lines}});
    serde_json::to_vec(&body).unwrap().into()
}

/// A SIGKILLed orb leaves its last checkpoint; its AiOrb then fails (and another room's AiOrb is
/// deleted, and a third one was deleted before any replica ran: no replica sees that end, only
/// its absence from their first list). Both replicas see each end: each checkpoint becomes
/// exactly one partial summary, which reaches the webhook once, and the checkpoint ConfigMaps
/// are removed. Written under the chart's RBAC for signaling.
#[tokio::test]
async fn a_failed_orb_s_checkpoint_becomes_one_partial_summary_across_replicas() {
    let Some(cp) = ControlPlane::start().await else { return };
    let admin = cp.admin().await;
    let kubeconfig = signaling_identity(&cp, &admin).await;
    let signaling = crate::envtest::client_for(&kubeconfig).await;
    let room = "room-killed";
    let orb = crate::operator::create_orb(&admin, NS, &orb_name_for_room(room), crate::operator::spec(room)).await;
    let uid = orb.uid().unwrap();
    // Another room's AiOrb is deleted before it finishes (no garbage collector runs here, so its
    // checkpoint is still there when the replicas see the deletion).
    let deleted_room = "room-deleted";
    let deleted = crate::operator::create_orb(
        &admin,
        NS,
        &orb_name_for_room(deleted_room),
        crate::operator::spec(deleted_room),
    )
    .await;

    let unseen_room = "room-deleted-unseen";
    let unseen = crate::operator::create_orb(
        &admin,
        NS,
        &orb_name_for_room(unseen_room),
        crate::operator::spec(unseen_room),
    )
    .await;

    let checkpoints = KubeCheckpoints::new(signaling.clone(), NS);
    let body = checkpoint_body(room, &["coach: hello", "client: hi"]);
    checkpoints.put(room, Some(&uid), body.clone()).await.unwrap();
    checkpoints
        .put(deleted_room, None, checkpoint_body(deleted_room, &["coach: bye"]))
        .await
        .unwrap();
    checkpoints
        .put(unseen_room, None, checkpoint_body(unseen_room, &["client: see you"]))
        .await
        .unwrap();
    let orbs: Api<AiOrb> = Api::namespaced(admin.clone(), NS);
    orbs.delete(&unseen.name_any(), &Default::default()).await.unwrap();
    let config_maps: Api<ConfigMap> = Api::namespaced(admin.clone(), NS);
    let cm = config_maps.get(&checkpoint_config_map_name(room)).await.unwrap();
    assert_eq!(
        cm.owner_references().iter().map(|o| o.uid.as_str()).collect::<Vec<_>>(),
        [uid.as_str()],
        "owned by the room's AiOrb, so it goes with it"
    );

    let hook = RecordingWebhook::default();
    let url = hook.start().await;
    let _a = start_signaling(&cp, "partial-a", &kubeconfig, &url);
    let _b = start_signaling(&cp, "partial-b", &kubeconfig, &url);
    orbs.patch_status(
        &orb.name_any(),
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"phase": "Failed"}})),
    )
    .await
    .unwrap();
    orbs.delete(&deleted.name_any(), &Default::default()).await.unwrap();

    wait_until(
        "the partial summaries reached the webhook and the checkpoints are gone",
        || async {
            hook.posts().len() >= 3
                && checkpoints.get(room).await.unwrap().is_none()
                && checkpoints.get(deleted_room).await.unwrap().is_none()
                && checkpoints.get(unseen_room).await.unwrap().is_none()
        },
    )
    .await;
    let store = KubeStore::new(admin.clone(), NS);
    wait_until("no summary is pending", || async {
        store.pending().await.unwrap().is_empty()
    })
    .await;
    let posts = hook.posts();
    assert_eq!(posts.len(), 3, "one summary for each session: {posts:?}");
    let of_room = |room: &str| {
        let posted: Vec<_> = posts.iter().filter(|(_, p)| p["roomId"] == room).collect();
        assert_eq!(posted.len(), 1, "one summary for the session of {room}: {posts:?}");
        posted[0].clone()
    };
    let (_, posted_deleted) = of_room(deleted_room);
    assert_eq!(posted_deleted["summary"]["transcript"], json!(["coach: bye"]));
    assert_eq!(posted_deleted["summary"]["partial"], true);
    let (_, posted_unseen) = of_room(unseen_room);
    assert_eq!(posted_unseen["summary"]["transcript"], json!(["client: see you"]));
    assert_eq!(posted_unseen["summary"]["partial"], true);
    let (key, posted) = &of_room(room);
    assert!(key.starts_with("partial-"), "{key}");
    assert_eq!(posted["summaryId"], key.as_str());
    assert_eq!(posted["summary"]["partial"], true);
    assert_eq!(posted["summary"]["transcript"], json!(["coach: hello", "client: hi"]));
    let stored = config_maps
        .list_metadata(&ListParams::default().labels(&format!("{ORB_LABEL}={uid}")))
        .await
        .unwrap();
    assert_eq!(stored.items.len(), 1, "one summary record for the orb");
    for name in ["partial-a", "partial-b"] {
        let log = log_of(&cp, name);
        assert!(
            !log.contains("Forbidden") && !log.contains("could not store the last checkpoint"),
            "replica {name}:\n{log}"
        );
    }
}

/// The final summary supersedes the checkpoints (removed under the chart's RBAC), also when the
/// orb ends before the removal; a checkpoint overwritten since it was read stays; a newer
/// AiOrb's checkpoint is not an older orb's to finish.
#[tokio::test]
async fn checkpoints_are_overwritten_superseded_and_finished_only_by_their_own_orb() {
    let Some(cp) = ControlPlane::start().await else { return };
    let admin = cp.admin().await;
    let kubeconfig = signaling_identity(&cp, &admin).await;
    let signaling = crate::envtest::client_for(&kubeconfig).await;
    let room = "room-final";
    let orb = crate::operator::create_orb(&admin, NS, &orb_name_for_room(room), crate::operator::spec(room)).await;
    let uid = orb.uid().unwrap();
    let checkpoints = Arc::new(KubeCheckpoints::new(signaling.clone(), NS));
    let summaries = Summaries::new(
        Arc::new(KubeStore::new(signaling.clone(), NS)),
        SummarySettings::default(),
        Arc::new(orb_signaling::metrics::Metrics::default()),
    )
    .unwrap()
    .with_checkpoints(checkpoints.clone());

    let first = checkpoint_body(room, &["one"]);
    let second = checkpoint_body(room, &["one", "two"]);
    // Without a uid (no orb token), the room's AiOrb owns it.
    summaries.checkpoint(room, None, first.clone()).await.unwrap();
    summaries.checkpoint(room, Some(&uid), second.clone()).await.unwrap();
    let kept = checkpoints.get(room).await.unwrap().unwrap();
    assert_eq!(
        (kept.body, kept.orb_uid.as_deref()),
        (second.clone(), Some(uid.as_str()))
    );
    assert_eq!(
        summaries.last_checkpoint(room).await.unwrap().unwrap()["summary"]["transcript"],
        json!(["one", "two"])
    );
    checkpoints.remove(room, Some(&first)).await.unwrap();
    assert!(
        checkpoints.get(room).await.unwrap().is_some(),
        "a stale removal keeps the newer one"
    );
    assert_eq!(
        summaries.orb_gone(room, Some("an-older-aiorb"), "test").await.unwrap(),
        None,
        "another AiOrb's checkpoint"
    );
    assert!(checkpoints.get(room).await.unwrap().is_some());

    let final_summary = json!({"type": "session_summary", "summaryId": "final-1", "roomId": room, "summary": {}});
    let outcome = summaries
        .accept(
            "final-1".into(),
            room.into(),
            Some(uid.clone()),
            serde_json::to_vec(&final_summary).unwrap().into(),
        )
        .await
        .unwrap();
    assert_eq!(outcome, PutOutcome::Stored);
    // The checkpoint was not removed after the final summary (say, an API error): the orb's end
    // finds its summary stored and only removes the checkpoint.
    assert_eq!(summaries.orb_gone(room, Some(&uid), "test").await.unwrap(), None);
    assert!(checkpoints.get(room).await.unwrap().is_none());
    summaries.checkpoint(room, Some(&uid), second.clone()).await.unwrap();
    summaries.superseded(room).await.unwrap();
    let config_maps: Api<ConfigMap> = Api::namespaced(admin.clone(), NS);
    assert!(
        config_maps
            .get_opt(&checkpoint_config_map_name(room))
            .await
            .unwrap()
            .is_none(),
        "the final summary removed the checkpoint ConfigMap"
    );
}
