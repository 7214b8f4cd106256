//! The Kubernetes orb runtime against a mocked API server.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::Method;
use kube::Api;
use orb_api::AiOrb;
use orb_signaling::metrics::{Metrics, OrbRequestResult};
use orb_signaling::orb_runtime::kubernetes::{
    KubernetesRuntime, KubernetesSettings, LIVE_CHECK_TTL, STALE_CHECK_TTL, ensure_orb,
};
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
    server_on_fake_api_with(&[]).await
}

async fn server_on_fake_api_with(args: &[&str]) -> (TestServer, FakeKube) {
    let (client, fake) = FakeKube::start();
    let metrics = Metrics::shared();
    let (events, rx) = OrbEvents::new(metrics.clone());
    let runtime = Arc::new(KubernetesRuntime::start(
        client,
        settings(Duration::from_secs(2)),
        events.clone(),
        metrics.clone(),
    ));
    let s = start_full(
        args,
        runtime,
        Arc::new(RecordingRuntime::default()),
        metrics,
        events,
        rx,
    )
    .await;
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
    let name = orb_api::naming::orb_name_for_room("Room-Y");
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

/// The whole path of activity: the orb reports the voice it heard over its socket, and the next
/// presence write carries that instant as `lastActivityTime`; relayed SDP/ICE moves nothing.
#[tokio::test]
async fn presence_carries_the_voice_activity_the_orb_reports() {
    let (s, fake) = server_on_fake_api().await;
    let (mut coach, _) = s.join("room-v", "coach", "coach").await;
    coach.recv_type("ai_status").await;
    let (mut orb, _) = s.join("room-v", "ai", "ai").await;
    coach.recv_type("user-joined").await;
    let joined_patch = {
        eventually("a presence write", || !fake.state().status_patches.is_empty()).await;
        fake.state().status_patches.last().cloned().unwrap()
    };

    // Signaling traffic only: the next write (if any) keeps the join's time.
    orb.send(json!({"type": "ice-candidate", "toId": "coach", "candidate": {"candidate": "candidate:1 1 udp 1 127.0.0.1 9 typ host"}}))
        .await;
    coach.recv_type("ice-candidate").await;

    // Voice, a second in the future of the join's write, as the orb reports it.
    let joined: jiff::Timestamp = joined_patch["status"]["lastActivityTime"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let spoke = jiff::Timestamp::now().max(joined + jiff::SignedDuration::from_secs(1));
    orb.send(json!({"type": "orb_activity", "lastVoiceActivity": spoke.as_millisecond()}))
        .await;
    orb.expect_nothing_pending().await;
    let expected = jiff::Timestamp::from_second(spoke.as_second()).unwrap().to_string();
    eventually_for("the voice in a presence write", Duration::from_secs(10), || {
        fake.state()
            .status_patches
            .iter()
            .any(|p| p["status"]["lastActivityTime"] == expected.as_str())
    })
    .await;
    let patches = fake.state().status_patches.clone();
    assert!(
        patches
            .iter()
            .take_while(|p| p["status"]["lastActivityTime"] != expected.as_str())
            .all(|p| p["status"]["lastActivityTime"] == joined_patch["status"]["lastActivityTime"]),
        "nothing but voice moved the activity: {patches:?}"
    );
    assert_eq!(patches.last().unwrap()["status"]["participants"], 1);
}

/// With the Kubernetes runtime a summary is a ConfigMap: pending without an owner (it must
/// outlive a replaced AiOrb), then delivered, owned by its AiOrb (garbage-collected with it) and
/// mirrored on `status.summary`. A second store — a restarted signaling — finds the pending one.
#[tokio::test]
async fn summaries_are_configmaps_owned_by_their_aiorb_once_delivered() {
    use orb_signaling::summary::delivery::Deliverer;
    use orb_signaling::summary::kube_store::{KubeStore, STATE_LABEL, config_map_name};
    use orb_signaling::summary::{PutOutcome, StoredSummary, SummarySettings, SummaryStore, new_meta};

    let (client, fake) = FakeKube::start();
    fake.insert_orb("room-s", "room-s", "Succeeded");
    let settings = SummarySettings {
        webhook_url: Some("http://127.0.0.1:9/unreachable".parse().unwrap()),
        retry_window: Duration::from_secs(3600),
        ..Default::default()
    };
    let store = KubeStore::new(client.clone(), NS);
    let body = bytes::Bytes::from(
        json!({"roomId": "room-s", "summary": {"transcript": vec!["the same words again"; 2000]}}).to_string(),
    );
    let summary = StoredSummary {
        meta: new_meta("sum-k".into(), "room-s".into(), jiff::Timestamp::now(), &settings),
        body: body.clone(),
        version: None,
    };
    assert_eq!(store.put(summary.clone()).await.unwrap(), PutOutcome::Stored);
    assert_eq!(store.put(summary).await.unwrap(), PutOutcome::AlreadyStored);
    let name = config_map_name("sum-k");
    let cm = fake.state().config_maps[&name].clone();
    assert_eq!(cm["metadata"]["labels"][STATE_LABEL], "pending");
    assert!(
        cm["metadata"]["ownerReferences"].is_null(),
        "a pending summary has no owner: {cm}"
    );
    assert!(
        cm["binaryData"]["summary.json.gz"].as_str().unwrap().len() < body.len() / 4,
        "compressed"
    );
    assert_eq!(fake.state().orbs["room-s"]["status"]["summary"]["state"], "Pending");

    // A restarted signaling (a new store over the same API) finds it and delivers it.
    let store = Arc::new(KubeStore::new(client, NS));
    let pending = store.pending().await.unwrap();
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].meta.id, "sum-k");
    assert_eq!(
        store.body("sum-k").await.unwrap(),
        body,
        "the body round-trips byte for byte"
    );
    let hook = axum::Router::new().route("/hook", axum::routing::post(|| async { "ok" }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, hook).await });
    let settings = SummarySettings {
        webhook_url: Some(url.parse().unwrap()),
        ..settings
    };
    let deliverer = Deliverer::new(store.clone(), &settings, Metrics::shared()).unwrap();
    let body_reads = || {
        let path = format!("/api/v1/namespaces/{NS}/configmaps/{name}");
        fake.state()
            .requests
            .iter()
            .filter(|(m, p, _)| *m == Method::GET && *p == path)
            .count()
    };
    let reads_before = body_reads();
    assert_eq!(deliverer.pass().await.unwrap(), None, "nothing left to do");
    assert_eq!(body_reads(), reads_before + 1, "the body is read once, after the claim");
    let cm = fake.state().config_maps[&name].clone();
    assert_eq!(cm["metadata"]["labels"][STATE_LABEL], "delivered");
    let owner = &cm["metadata"]["ownerReferences"][0];
    assert_eq!(
        (owner["kind"].as_str(), owner["name"].as_str()),
        (Some("AiOrb"), Some("room-s"))
    );
    let status = fake.state().orbs["room-s"]["status"]["summary"].clone();
    assert_eq!(
        (status["state"].as_str(), status["attempts"].as_i64()),
        (Some("Delivered"), Some(1))
    );
    assert!(store.pending().await.unwrap().is_empty());
    let patches = fake.state().requests.clone();
    assert!(
        patches
            .iter()
            .filter(|(m, p, _)| *m == Method::PATCH && p.ends_with("/status"))
            .all(|(_, _, q)| q.contains("fieldManager=orb-signaling-summary")),
        "the summary has its own field manager, so presence keeps its fields"
    );
}

/// A delivered summary whose AiOrb is gone (replaced by a new one of the room) has nothing to be
/// collected with: it is deleted rather than left behind or attached to the wrong AiOrb.
#[tokio::test]
async fn a_summary_of_a_replaced_aiorb_is_deleted_once_final() {
    use orb_signaling::summary::kube_store::{KubeStore, config_map_name};
    use orb_signaling::summary::{
        Attempt, StoredSummary, SummaryRecord, SummarySettings, SummaryStore, after_attempt, new_meta,
    };

    let (client, fake) = FakeKube::start();
    fake.insert_orb("room-r", "room-r", "Succeeded");
    let settings = SummarySettings {
        webhook_url: Some("http://127.0.0.1:9/".parse().unwrap()),
        retry_window: Duration::from_secs(3600),
        ..Default::default()
    };
    let store = KubeStore::new(client, NS);
    let meta = new_meta("sum-r".into(), "room-r".into(), jiff::Timestamp::now(), &settings);
    store
        .put(StoredSummary {
            meta,
            body: bytes::Bytes::from_static(b"{}"),
            version: None,
        })
        .await
        .unwrap();
    // The room is used again: signaling replaces the finished AiOrb (new uid).
    fake.state().orbs.remove("room-r");
    fake.insert_orb("room-r", "room-r", "Ready");
    let pending = store.pending().await.unwrap().remove(0);
    let delivered = after_attempt(&pending.meta, &Attempt::Delivered, jiff::Timestamp::now());
    store
        .update(SummaryRecord {
            meta: delivered,
            ..pending
        })
        .await
        .unwrap();
    assert!(!fake.state().config_maps.contains_key(&config_map_name("sum-r")));
    assert!(
        fake.state().orbs["room-r"]["status"]["summary"].is_null(),
        "the new AiOrb does not get the old orb's summary"
    );
}

/// Each AiOrb stores at most `MAX_PER_ORB` summaries, counted from the ConfigMaps labelled with
/// its uid (so across replicas and restarts: a second store over the same API refuses too); a
/// re-send is still `AlreadyStored`; the room's next AiOrb counts apart. A summary that would be
/// final at once (no webhook) is not stored once its AiOrb is gone: it would have no owner.
#[tokio::test]
async fn an_aiorb_stores_a_few_summaries_and_none_without_an_owner() {
    use orb_signaling::summary::kube_store::{KubeStore, ORB_LABEL};
    use orb_signaling::summary::{
        MAX_PER_ORB, PutOutcome, Refusal, StoreError, StoredSummary, SummaryMeta, SummarySettings, SummaryStore,
        new_meta,
    };

    let (client, fake) = FakeKube::start();
    fake.insert_orb("room-c", "room-c", "Ready");
    let uid = fake.state().orbs["room-c"]["metadata"]["uid"]
        .as_str()
        .unwrap()
        .to_owned();
    // Without a webhook: stored final, owned by the AiOrb.
    let settings = SummarySettings::default();
    let summary = |id: &str, orb_uid: Option<&str>| StoredSummary {
        meta: SummaryMeta {
            orb_uid: orb_uid.map(str::to_owned),
            ..new_meta(id.into(), "room-c".into(), jiff::Timestamp::now(), &settings)
        },
        body: bytes::Bytes::from_static(br#"{"summary":{}}"#),
        version: None,
    };
    let store = KubeStore::new(client.clone(), NS);
    for i in 0..MAX_PER_ORB {
        // As the orb's token names it, or found from the room's AiOrb: the same count.
        let claimed = (i % 2 == 0).then_some(uid.as_str());
        let outcome = store.put(summary(&format!("c{i}"), claimed)).await.unwrap();
        assert_eq!(outcome, PutOutcome::Stored);
    }
    let refused = store.put(summary("c-more", None)).await;
    assert!(
        matches!(refused, Err(StoreError::Refused(Refusal::TooMany))),
        "{refused:?}"
    );
    assert_eq!(store.put(summary("c1", None)).await.unwrap(), PutOutcome::AlreadyStored);
    let another_replica = KubeStore::new(fake.client(), NS);
    let refused = another_replica.put(summary("c-elsewhere", Some(&uid))).await;
    assert!(
        matches!(refused, Err(StoreError::Refused(Refusal::TooMany))),
        "{refused:?}"
    );
    {
        let st = fake.state();
        assert_eq!(st.config_maps.len(), MAX_PER_ORB);
        for cm in st.config_maps.values() {
            assert_eq!(cm["metadata"]["labels"][ORB_LABEL], uid.as_str());
            assert_eq!(cm["metadata"]["ownerReferences"][0]["uid"], uid.as_str());
        }
        let counted_as_metadata = st.requests.iter().any(|(m, p, q)| {
            *m == Method::GET && p.ends_with("/configmaps") && q.contains("labelSelector=hybridcoach.io%2Fsummary-orb")
        });
        assert!(counted_as_metadata, "{:?}", st.requests);
    }

    // The room's next AiOrb has its own count.
    fake.state().orbs.remove("room-c");
    fake.insert_orb("room-c", "room-c", "Ready");
    assert_eq!(store.put(summary("d0", None)).await.unwrap(), PutOutcome::Stored);

    // Its AiOrb gone, a final summary would have no owner: refused, nothing stored.
    fake.state().orbs.remove("room-c");
    let refused = store.put(summary("d1", None)).await;
    assert!(
        matches!(refused, Err(StoreError::Refused(Refusal::NoOwner))),
        "{refused:?}"
    );
    let refused = store.put(summary("d2", Some(&uid))).await;
    assert!(
        matches!(refused, Err(StoreError::Refused(Refusal::NoOwner))),
        "{refused:?}"
    );
    assert_eq!(fake.state().config_maps.len(), MAX_PER_ORB + 1);
}

/// A join/leave storm on one room (a reload loop, a hostile client) costs the API server almost
/// nothing: one request per room at a time, and a repeat within the cooldown reuses the live orb.
#[tokio::test]
async fn a_join_leave_storm_makes_one_aiorb_and_few_api_calls() {
    let (s, fake) = server_on_fake_api().await;
    for i in 0..30 {
        let (mut human, _) = s.join("room-storm", &format!("u{i}"), "coach").await;
        human.recv_type("ai_status").await;
        human.close().await;
    }
    let named_gets = fake
        .state()
        .requests
        .iter()
        .filter(|(m, p, _)| *m == Method::GET && p.ends_with("/aiorbs/room-storm"))
        .count();
    assert_eq!(fake.count(Method::POST), 1, "one AiOrb");
    assert!(named_gets <= 10, "{named_gets} reads of the orb for 30 joins");
    let metrics = s.metrics.render();
    let coalesced: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("orb_signaling_orb_requests_total{result=\"coalesced\"} "))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    assert!(coalesced >= 20, "{metrics}");
}

/// An orb's room token for `room` naming the AiOrb `orb_uid`, as the operator mints it.
fn orb_token(room: &str, orb_uid: &str) -> String {
    let mut claims = orb_api::auth::RoomClaims::new(room, &format!("ai-orb-{room}"), orb_api::auth::Role::Ai, 600);
    claims.orb = Some(orb_uid.to_owned());
    key().mint(&claims)
}

#[tokio::test]
async fn only_the_live_aiorbs_token_lets_an_orb_in() {
    let (s, fake) = server_on_fake_api_with(&["--auth", "jwt"]).await;
    fake.insert_orb("room-x", "room-x", "Ready");
    let live = fake.state().orbs["room-x"]["metadata"]["uid"]
        .as_str()
        .unwrap()
        .to_owned();
    let offer = |token: &str| token_protocols(token);
    // A token of an earlier AiOrb of the room (say a leaked one): refused before the upgrade.
    let refused = refused_with(
        &s.url("room-x"),
        &[("Sec-WebSocket-Protocol", &offer(&orb_token("room-x", "earlier")))],
    )
    .await;
    assert_eq!(refused.status, 403, "{:?}", refused.body);
    assert!(
        refused.body["reason"].as_str().unwrap().contains("live orb"),
        "{:?}",
        refused.body
    );
    // The live AiOrb's token: in.
    let (mut orb, _) = handshake(
        &s.url("room-x"),
        &[("Sec-WebSocket-Protocol", &offer(&orb_token("room-x", &live)))],
    )
    .await
    .expect("the live orb's token opens the room");
    orb.send(json!({"type": "join", "roomId": "room-x"})).await;
    let discovery = orb.recv().await;
    assert_eq!(discovery["type"], "peer-discovery", "{discovery}");
    // Once the AiOrb ended, its own token no longer gets in (once the live answer, reused for
    // LIVE_CHECK_TTL, is gone).
    fake.set_phase("room-x", "Succeeded");
    tokio::time::sleep(LIVE_CHECK_TTL).await;
    let refused = refused_with(
        &s.url("room-x"),
        &[("Sec-WebSocket-Protocol", &offer(&orb_token("room-x", &live)))],
    )
    .await;
    assert_eq!(refused.status, 403);
    // The API away: refused for now (503, which the orb retries), never let in unchecked.
    fake.state().fail = true;
    let refused = refused_with(
        &s.url("room-x"),
        &[("Sec-WebSocket-Protocol", &offer(&orb_token("room-x", "not-asked-yet")))],
    )
    .await;
    assert_eq!(refused.status, 503);
    fake.state().fail = false;
    // Humans' tokens are not looked up.
    let (_coach, _) = handshake(
        &s.url("room-x"),
        &[(
            "Sec-WebSocket-Protocol",
            &offer(&token("room-x", "coach-1", orb_api::auth::Role::Coach)),
        )],
    )
    .await
    .expect("a coach gets in");
    let text = s.http_get("/metrics").await.1;
    assert!(
        text.contains("orb_signaling_auth_failures_total{reason=\"stale_orb\"} 3"),
        "{text}"
    );
}

/// `/ice-servers` checks an orb's token as the socket does: the live AiOrb's token gets its
/// credentials, an earlier orb's is refused with the socket's 403 and reason, and a loop of such
/// requests costs the API server one read (the runtime's shared, cached answer).
#[tokio::test]
async fn ice_servers_check_an_orb_token_as_the_socket_does() {
    let secret = secret_file("north");
    let (s, fake) = server_on_fake_api_with(&[
        "--auth",
        "jwt",
        "--ice-servers",
        "turn:turn.example.org",
        "--turn-secret-file",
        secret.to_str().unwrap(),
    ])
    .await;
    fake.insert_orb("room-i", "room-i", "Ready");
    let live = fake.state().orbs["room-i"]["metadata"]["uid"]
        .as_str()
        .unwrap()
        .to_owned();
    let ask = |token: String| {
        let addr = s.addr;
        async move {
            let bearer = format!("Bearer {token}");
            http_request(addr, "GET", "/ice-servers?room=room-i", &[("Authorization", &bearer)]).await
        }
    };
    let answer = ask(orb_token("room-i", &live)).await;
    assert_eq!(answer.status, 200, "{answer:?}");
    let username = answer.json()["iceServers"][0]["username"].as_str().unwrap().to_owned();
    assert!(username.ends_with(":ai-orb-room-i"), "{username}");

    let earlier = orb_token("room-i", "earlier");
    let reads = orb_reads(&fake, "room-i");
    let started = tokio::time::Instant::now();
    let socket = refused_with(
        &s.url("room-i"),
        &[("Sec-WebSocket-Protocol", &token_protocols(&earlier))],
    )
    .await;
    assert_eq!(socket.status, 403);
    for _ in 0..20 {
        let answer = ask(earlier.clone()).await;
        assert_eq!((answer.status, answer.json()), (socket.status, socket.body.clone()));
    }
    let periods = (started.elapsed().as_secs() / STALE_CHECK_TTL.as_secs()) as usize;
    let reads = orb_reads(&fake, "room-i") - reads;
    assert!((1..=1 + periods).contains(&reads), "{reads} reads for 21 checks");
    let text = s.http_get("/metrics").await.1;
    assert!(
        text.contains("orb_signaling_auth_failures_total{reason=\"stale_orb\"} 21"),
        "{text}"
    );
}

/// Reads of the room's AiOrb so far (the orb-token check's GET).
fn orb_reads(fake: &FakeKube, name: &str) -> usize {
    let path = format!("/aiorbs/{name}");
    fake.state()
        .requests
        .iter()
        .filter(|(method, p, _)| *method == Method::GET && p.ends_with(&path))
        .count()
}

/// A stale orb token in a loop of upgrade requests, one after the other and many at once, costs
/// the API server one read per token (the answer is shared and cached), and none at all once the
/// client's connection cap refuses it first.
#[tokio::test]
async fn a_loop_of_upgrades_with_a_stale_orb_token_costs_the_api_few_reads() {
    let (s, fake) = server_on_fake_api_with(&["--auth", "jwt", "--max-connections-per-client", "20"]).await;
    fake.insert_orb("room-s", "room-s", "Succeeded");
    let ended = fake.state().orbs["room-s"]["metadata"]["uid"]
        .as_str()
        .unwrap()
        .to_owned();
    let attempt = |token: String| {
        let url = s.url("room-s");
        async move {
            let protocols = token_protocols(&token);
            refused_with(&url, &[("Sec-WebSocket-Protocol", &protocols)])
                .await
                .status
        }
    };
    let hammer = |token: String| async move {
        for _ in 0..30 {
            assert_eq!(attempt(token.clone()).await, 403);
        }
        // Beyond the token's connection cap (4 by default) they are refused before the check.
        let at_once = futures::future::join_all((0..20).map(|_| attempt(token.clone()))).await;
        assert!(at_once.iter().all(|status| [403, 429].contains(status)), "{at_once:?}");
    };

    // The ended AiOrb's own token: its answer holds for minutes.
    hammer(orb_token("room-s", &ended)).await;
    assert_eq!(orb_reads(&fake, "room-s"), 1, "one read for 50 upgrades");

    // An earlier orb's token (another uid): its answer holds for STALE_CHECK_TTL.
    let started = tokio::time::Instant::now();
    hammer(orb_token("room-s", "earlier")).await;
    let periods = started.elapsed().as_secs() / STALE_CHECK_TTL.as_secs();
    let reads = orb_reads(&fake, "room-s") - 1;
    assert!(
        (1..=1 + periods as usize).contains(&reads),
        "{reads} reads for 50 upgrades"
    );

    // With the client's cap taken, the check is not even reached.
    let mut held = vec![];
    for i in 0..20 {
        let protocols = token_protocols(&token("room-s", &format!("c{i}"), orb_api::auth::Role::Coach));
        let (c, _) = handshake(&s.url("room-s"), &[("Sec-WebSocket-Protocol", &protocols)])
            .await
            .expect("within the cap");
        held.push(c);
    }
    let before = orb_reads(&fake, "room-s");
    for _ in 0..10 {
        assert_eq!(attempt(orb_token("room-s", "never-read")).await, 429);
    }
    assert_eq!(orb_reads(&fake, "room-s"), before);
}
