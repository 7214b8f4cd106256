//! The Kubernetes orb runtime against a mocked API server.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::Method;
use kube::Api;
use orb_crds::AiOrb;
use orb_signaling::metrics::{Metrics, OrbRequestResult};
use orb_signaling::orb_runtime::kubernetes::{KubernetesRuntime, KubernetesSettings, ensure_orb};
use orb_signaling::orb_runtime::testing::RecordingRuntime;
use orb_signaling::orb_runtime::{OrbEvents, OrbRequest, OrbRuntime, Presence};
use serde_json::json;

use crate::common::*;
use crate::fake_kube::{FakeKube, NS};

fn settings(debounce: Duration) -> KubernetesSettings {
    KubernetesSettings {
        namespace: NS.into(),
        test_mode: true,
        presence_debounce: debounce,
    }
}

/// A server whose orbs come from the Kubernetes runtime on the fake API.
async fn server_on_fake_api() -> (TestServer, FakeKube) {
    let (client, fake) = FakeKube::start();
    let metrics = Metrics::shared();
    let (events, rx) = OrbEvents::new(metrics.clone());
    let runtime = Arc::new(KubernetesRuntime::start(
        client,
        settings(Duration::from_secs(2)),
        events.clone(),
        metrics.clone(),
    ));
    let s = start_full(&[], runtime, Arc::new(RecordingRuntime::default()), metrics, events, rx).await;
    let watching = fake.clone();
    eventually("the AiOrb watch", move || watching.watching()).await;
    (s, fake)
}

#[tokio::test]
async fn three_participants_joining_at_once_create_exactly_one_aiorb() {
    let (s, fake) = server_on_fake_api().await;
    let ((mut a, _), (mut b, _), (mut c, _)) = tokio::join!(
        s.join("room-x", "coach", "coach"),
        s.join("room-x", "client", "client"),
        s.join("room-x", "friend", "client"),
    );
    for human in [&mut a, &mut b, &mut c] {
        assert_eq!(human.recv_type("ai_status").await["status"], "queued");
    }
    assert_eq!(fake.count(Method::POST), 1);
    let orb = fake.state().orbs["room-x"].clone();
    assert_eq!(orb["spec"]["roomId"], "room-x");
    assert_eq!(orb["spec"]["testMode"], true);
    assert!(
        s.metrics
            .render()
            .contains("orb_signaling_orb_requests_total{result=\"created\"} 1")
    );
}

#[tokio::test]
async fn concurrent_requests_for_one_room_create_one_orb() {
    let (client, fake) = FakeKube::start();
    let api: Api<AiOrb> = Api::namespaced(client, NS);
    let request = OrbRequest {
        room_id: "Room-Y".into(),
        coach_id: Some("c".into()),
        client_id: None,
        session_id: None,
    };
    let (r1, r2) = tokio::join!(ensure_orb(&api, &request, false), ensure_orb(&api, &request, false));
    let mut results = vec![r1.unwrap().0, r2.unwrap().0];
    results.sort_by_key(|r| format!("{r:?}"));
    assert_eq!(results, vec![OrbRequestResult::Created, OrbRequestResult::Existing]);
    assert_eq!(
        fake.count(Method::POST),
        fake.state().orbs.len() + 1,
        "the loser got a 409"
    );
    let name = orb_crds::naming::orb_name_for_room("Room-Y");
    assert_eq!(fake.state().orbs[&name]["spec"]["coachId"], "c");
}

#[tokio::test]
async fn a_finished_aiorb_is_replaced_when_people_come_back() {
    let (s, fake) = server_on_fake_api().await;
    fake.insert_orb("room-z", "room-z", "Succeeded");
    let (mut coach, _) = s.join("room-z", "coach", "coach").await;
    assert_eq!(
        coach.recv().await,
        json!({"type": "ai_status", "status": "queued"}),
        "the old orb's deletion is not reported as the new one ending"
    );
    let st = fake.state();
    let methods: Vec<Method> = st
        .requests
        .iter()
        .filter(|(m, path, _)| *m != Method::GET && (path.ends_with("/aiorbs/room-z") || path.ends_with("/aiorbs")))
        .map(|(m, _, _)| m.clone())
        .collect();
    assert_eq!(methods, vec![Method::DELETE, Method::POST]);
    assert!(
        st.orbs["room-z"]["metadata"]["uid"]
            .as_str()
            .unwrap()
            .starts_with("uid-")
    );
    drop(st);
    assert!(
        s.metrics
            .render()
            .contains("orb_signaling_orb_requests_total{result=\"replaced\"} 1")
    );
}

#[tokio::test]
async fn orb_phases_reach_the_room() {
    let (s, fake) = server_on_fake_api().await;
    let (mut coach, _) = s.join("room-p", "coach", "coach").await;
    assert_eq!(coach.recv().await["status"], "queued");
    fake.set_phase("room-p", "Starting");
    assert_eq!(coach.recv().await["status"], "starting");
    fake.set_phase("room-p", "Ready");
    assert_eq!(coach.recv().await["status"], "ready");
    fake.set_phase("room-p", "Succeeded");
    assert_eq!(coach.recv().await["status"], "ended");
}

#[tokio::test]
async fn an_api_error_leaves_the_call_working() {
    let (s, fake) = server_on_fake_api().await;
    fake.state().fail = true;
    let (mut coach, _) = s.join("room-e", "coach", "coach").await;
    assert_eq!(
        coach.recv().await,
        json!({"type": "ai_status", "status": "unavailable"})
    );
    let (mut client, _) = s.join("room-e", "client", "client").await;
    // The client's arrival asks again; that fails too, and the call goes on.
    assert_eq!(client.recv_type("ai_status").await["status"], "unavailable");
    coach
        .send(json!({"type": "offer", "toId": "client", "offer": {"sdp": "v=0"}}))
        .await;
    assert_eq!(client.recv_type("offer").await["fromId"], "coach");
    eventually("two failed requests", || {
        s.metrics
            .render()
            .contains("orb_signaling_orb_requests_total{result=\"failed\"} 2")
    })
    .await;
}

fn presence(humans: u32) -> Presence {
    Presence {
        humans,
        last_activity: SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000 + u64::from(humans)),
    }
}

#[tokio::test(start_paused = true)]
async fn presence_writes_are_debounced() {
    let (client, fake) = FakeKube::start();
    fake.insert_orb("room-d", "room-d", "Ready");
    let metrics = Metrics::shared();
    let (events, _rx) = OrbEvents::new(metrics.clone());
    let runtime = KubernetesRuntime::start(client, settings(Duration::from_secs(2)), events, metrics);
    for humans in [1, 2, 3, 2] {
        runtime.report_presence("room-d", presence(humans));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        fake.state().status_patches.is_empty(),
        "nothing is written inside the debounce period"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let patches = fake.state().status_patches.clone();
    assert_eq!(patches.len(), 1, "four changes, one write");
    assert_eq!(
        patches[0],
        json!({"apiVersion": "hybridcoach.io/v1alpha1", "kind": "AiOrb", "metadata": {"name": "room-d"},
               "status": {"participants": 2, "lastActivityTime": "2023-11-14T22:13:22Z"}})
    );
    let (_, _, query) = fake
        .state()
        .requests
        .iter()
        .find(|(m, _, _)| *m == Method::PATCH)
        .cloned()
        .unwrap();
    assert!(
        query.contains("fieldManager=orb-signaling") && query.contains("force=true"),
        "{query}"
    );

    runtime.report_presence("room-d", presence(0));
    tokio::time::sleep(Duration::from_secs(3)).await;
    let patches = fake.state().status_patches.clone();
    assert_eq!(patches.len(), 2);
    assert_eq!(patches[1]["status"]["participants"], 0);
    assert_eq!(
        fake.state().orbs["room-d"]["status"]["phase"],
        "Ready",
        "the operator's fields are untouched"
    );
}

#[tokio::test(start_paused = true)]
async fn shutdown_flushes_pending_presence() {
    let (client, fake) = FakeKube::start();
    fake.insert_orb("room-f", "room-f", "Ready");
    let metrics = Metrics::shared();
    let (events, _rx) = OrbEvents::new(metrics.clone());
    let runtime = KubernetesRuntime::start(client, settings(Duration::from_secs(60)), events, metrics);
    runtime.report_presence("room-f", presence(0));
    runtime.shutdown().await;
    assert_eq!(fake.state().status_patches.len(), 1);
}
