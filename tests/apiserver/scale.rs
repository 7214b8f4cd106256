//! Admission at scale on a real API server, a benchmark run on demand: `ORB_BENCH_ORBS` AiOrbs
//! (default 1 000) against a cap of 100, the operator's release binary, then `ORB_BENCH_FREES`
//! slots (default 20) freed one at a time — an admitted AiOrb deleted; the operator stops its pod
//! (unscheduled in this tier, so it is gone at once) — measuring, from watches, the time from the
//! pod being gone to the next orb's `status.admittedAt`. Prints the latencies, the operator's RSS
//! and the API writes per freed slot (from the API server's own request counts). Asserts only that
//! the cap held and every freed slot was filled.
//!
//! ```text
//! KUBEBUILDER_ASSETS=$PWD/target/kube-assets ORB_BENCH_ORBS=10000 \
//!   cargo test -p orb-system-tests --test apiserver -- --ignored --nocapture scale::
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use orb_api::{AiOrb, OrbPhase};
use tokio::sync::mpsc;

use crate::envtest::{ControlPlane, wait_until};
use crate::operator::{Operator, chart_identity, create_orb, spec};
use crate::support::workspace_release_bin;

const NS: &str = "calls";
const CAP: usize = 100;

fn env_count(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .map(|v| v.parse().unwrap_or_else(|_| panic!("{name}={v}: not a count")))
        .unwrap_or(default)
}

/// What the benchmark's watches saw, as they saw it.
#[derive(Default)]
struct Orbs {
    /// Admitted, unfinished orbs: when admitted, and their pod once the status names it.
    holders: BTreeMap<String, (jiff::Timestamp, Option<String>)>,
    /// Orbs showing phase `Queued`.
    queued: BTreeSet<String>,
    ever_admitted: BTreeSet<String>,
    most_holders: usize,
}

enum Seen {
    Admitted(String, Instant),
    PodGone(String, Instant),
}

fn follow_orbs(orbs: Api<AiOrb>, state: Arc<Mutex<Orbs>>, tx: mpsc::UnboundedSender<Seen>) {
    tokio::spawn(async move {
        let mut stream = watcher(orbs, watcher::Config::default()).boxed();
        while let Some(event) = stream.next().await {
            let at = Instant::now();
            let Ok(event) = event else { continue };
            let mut s = state.lock().unwrap();
            match event {
                watcher::Event::Apply(o) | watcher::Event::InitApply(o) => {
                    let name = o.name_any();
                    let status = o.status.clone().unwrap_or_default();
                    let finished = status.phase.is_some_and(OrbPhase::is_terminal);
                    match status.admitted_at.clone().filter(|_| !finished) {
                        Some(admitted) => {
                            s.holders.insert(name.clone(), (admitted.0, status.pod_name.clone()));
                        }
                        None => {
                            s.holders.remove(&name);
                        }
                    }
                    if status.phase == Some(OrbPhase::Queued) {
                        s.queued.insert(name.clone());
                    } else {
                        s.queued.remove(&name);
                    }
                    if status.admitted_at.is_some() && s.ever_admitted.insert(name.clone()) {
                        let _ = tx.send(Seen::Admitted(name, at));
                    }
                }
                watcher::Event::Delete(o) => {
                    s.holders.remove(&o.name_any());
                    s.queued.remove(&o.name_any());
                }
                _ => {}
            }
            s.most_holders = s.most_holders.max(s.holders.len());
        }
    });
}

fn follow_pods(pods: Api<Pod>, tx: mpsc::UnboundedSender<Seen>) {
    tokio::spawn(async move {
        let mut stream = watcher(pods, watcher::Config::default()).boxed();
        while let Some(event) = stream.next().await {
            if let Ok(watcher::Event::Delete(p)) = event {
                let _ = tx.send(Seen::PodGone(p.name_any(), Instant::now()));
            }
        }
    });
}

/// The API server's count of writes (every verb but reads), by `resource[/subresource]`.
async fn api_writes(admin: &Client) -> BTreeMap<String, f64> {
    let req = http::Request::get("/metrics").body(Vec::new()).unwrap();
    let text = admin.request_text(req).await.expect("the API server's metrics");
    let label = |line: &str, name: &str| {
        let key = format!("{name}=\"");
        let from = line.find(&key)? + key.len();
        Some(line[from..].split('"').next()?.to_owned())
    };
    let mut writes = BTreeMap::new();
    for line in text.lines().filter(|l| l.starts_with("apiserver_request_total{")) {
        let verb = label(line, "verb").unwrap_or_default();
        if ["GET", "LIST", "WATCH", "CONNECT"].contains(&verb.as_str()) {
            continue;
        }
        let mut resource = label(line, "resource").unwrap_or_default();
        if let Some(sub) = label(line, "subresource").filter(|s| !s.is_empty()) {
            resource = format!("{resource}/{sub}");
        }
        let count: f64 = line.rsplit(' ').next().and_then(|v| v.parse().ok()).unwrap_or(0.0);
        *writes.entry(resource).or_insert(0.0) += count;
    }
    writes
}

/// `VmRSS` and `VmHWM` (peak) of a process, in MiB.
fn rss_mib(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<f64>().ok())
            .map_or(0.0, |kb| kb / 1024.0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn percentile(sorted: &[Duration], q: f64) -> Duration {
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1000.0)
}

#[tokio::test]
#[ignore = "a benchmark: run on demand (see the module docs)"]
async fn freed_slots_are_refilled_from_the_operators_store() {
    let Some(cp) = ControlPlane::start().await else { return };
    let (total, frees) = (env_count("ORB_BENCH_ORBS", 1_000), env_count("ORB_BENCH_FREES", 20));
    assert!(
        total > CAP + frees,
        "ORB_BENCH_ORBS must leave a queue behind {CAP} admitted"
    );
    let admin = cp.admin().await;
    let kubeconfig = chart_identity(&cp, NS).await;
    let binary = workspace_release_bin("orb-operator");

    let started = Instant::now();
    futures::stream::iter(0..total)
        .map(|i| {
            let admin = admin.clone();
            async move {
                let room = format!("room-{i:06}");
                create_orb(&admin, NS, &room, spec(&room)).await;
            }
        })
        .buffer_unordered(16)
        .collect::<()>()
        .await;
    let created_in = started.elapsed();

    let orbs: Api<AiOrb> = Api::namespaced(admin.clone(), NS);
    let state = Arc::new(Mutex::new(Orbs::default()));
    let (tx, mut seen) = mpsc::unbounded_channel();
    follow_orbs(orbs.clone(), state.clone(), tx.clone());
    follow_pods(Api::namespaced(admin.clone(), NS), tx);

    // No one joins the rooms here: without long limits the orbs would end by the empty-room
    // grace while thousands of them are being queued.
    let env = BTreeMap::from([
        ("MAX_CONCURRENT_ORBS".to_owned(), CAP.to_string()),
        ("WATCH_NAMESPACE".to_owned(), NS.to_owned()),
        ("ORB_CLEANUP_GRACE_PERIOD".to_owned(), "10h".to_owned()),
        ("IDLE_TIMEOUT".to_owned(), "10h".to_owned()),
        ("MAX_ORB_LIFETIME".to_owned(), "10h".to_owned()),
    ]);
    let started = Instant::now();
    let operator = Operator::start_binary(&cp, &binary, "bench", &kubeconfig, &env);
    let settled = |s: &Orbs| {
        s.holders.len() == CAP && s.holders.values().all(|(_, pod)| pod.is_some()) && s.queued.len() == total - CAP
    };
    // A hang guard growing with the orbs (each takes reconciles and writes to queue), not a
    // timing expectation.
    let deadline = Instant::now() + Duration::from_secs(120) + Duration::from_millis(100) * total as u32;
    while !settled(&state.lock().unwrap()) {
        assert!(Instant::now() < deadline, "the cap was not filled and the rest queued");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let settled_in = started.elapsed();
    // Let the last reconciles and passes of the start end before counting.
    tokio::time::sleep(Duration::from_secs(3)).await;
    while seen.try_recv().is_ok() {}

    let writes_before = api_writes(&admin).await;
    let mut from_pod = Vec::new();
    let mut from_delete = Vec::new();
    for _ in 0..frees {
        let (victim, pod) = {
            let s = state.lock().unwrap();
            let (name, (_, pod)) = s.holders.iter().min_by_key(|(_, (at, _))| *at).expect("a holder");
            (name.clone(), pod.clone().expect("settled: the status names the pod"))
        };
        let deleted_at = Instant::now();
        orbs.delete(&victim, &DeleteParams::default()).await.unwrap();
        let (mut gone, mut admitted) = (None, None);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
        while gone.is_none() || admitted.is_none() {
            match tokio::time::timeout_at(deadline, seen.recv()).await {
                Ok(Some(Seen::PodGone(name, at))) if name == pod => gone = Some(at),
                Ok(Some(Seen::Admitted(name, at))) => admitted = Some((name, at)),
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => panic!("{victim}'s slot was not refilled within 2 minutes"),
            }
        }
        let (next, admitted_at) = admitted.unwrap();
        from_pod.push(admitted_at.saturating_duration_since(gone.unwrap()));
        from_delete.push(admitted_at - deleted_at);
        // Until the freed orb is gone and the admitted one has its pod: the next free starts from
        // a quiet operator.
        wait_until("the slot changed hands", || {
            let s = state.lock().unwrap();
            let done = !s.holders.contains_key(&victim) && s.holders.get(&next).is_some_and(|(_, p)| p.is_some());
            async move { done }
        })
        .await;
        wait_until("the freed orb is gone", || {
            let orbs = orbs.clone();
            let victim = victim.clone();
            async move { orbs.get_opt(&victim).await.unwrap().is_none() }
        })
        .await;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let writes_after = api_writes(&admin).await;
    let (rss, peak) = rss_mib(operator.process.0.id());
    operator.assert_never_forbidden();
    let most = state.lock().unwrap().most_holders;
    assert_eq!(most, CAP, "admitted, unfinished orbs at once: at most the cap");

    // The operator's writes: all of them but the benchmark's deletes and the leader's Lease.
    let mut per_slot: BTreeMap<String, f64> = BTreeMap::new();
    for (resource, after) in &writes_after {
        let mut n = after - writes_before.get(resource).copied().unwrap_or(0.0);
        if resource == "aiorbs" {
            n -= frees as f64;
        }
        if n > 0.0 && resource != "leases" {
            per_slot.insert(resource.clone(), n / frees as f64);
        }
    }
    let writes: f64 = per_slot.values().sum();
    from_pod.sort();
    from_delete.sort();
    println!("\nadmission at scale: {total} AiOrbs, cap {CAP}, {frees} slots freed one at a time");
    println!(
        "  created in {:.0?}; the operator filled the cap and queued the rest in {:.0?}",
        created_in, settled_in
    );
    println!(
        "  pod gone -> next orb admitted: p50 {} p95 {} p99 {} max {}",
        ms(percentile(&from_pod, 0.5)),
        ms(percentile(&from_pod, 0.95)),
        ms(percentile(&from_pod, 0.99)),
        ms(*from_pod.last().unwrap())
    );
    println!(
        "  AiOrb deleted -> next orb admitted: p50 {} max {}",
        ms(percentile(&from_delete, 0.5)),
        ms(*from_delete.last().unwrap())
    );
    println!("  operator RSS {rss:.1} MiB (peak {peak:.1} MiB)");
    let breakdown: Vec<String> = per_slot.iter().map(|(r, n)| format!("{r} {n:.1}")).collect();
    println!("  API writes per freed slot: {writes:.1} ({})", breakdown.join(", "));
}
