//! How the pure policy scales: one admission pass over many AiOrbs, and `decide` per orb.
//! Run: `cargo bench -p orb-operator --bench policy` (prints a report; asserts nothing).

use std::collections::BTreeSet;
use std::hint::black_box;
use std::time::{Duration, Instant};

use k8s_openapi::jiff::Timestamp;
use orb_api::{AiOrbSpec, OrbPhase};
use orb_operator::policy::{self, AdmissionEntry, Limits, OrbClock, OrbView, PodState};

fn entries(n: usize) -> Vec<AdmissionEntry> {
    (0..n)
        .map(|i| AdmissionEntry {
            uid: format!("uid-{i:06}"),
            key: format!("ns/orb-{i:06}"),
            created: Timestamp::from_second(1_800_000_000 + (i as i64 * 7919) % 100_000).unwrap(),
            phase: Some(if i % 3 == 0 { OrbPhase::Ready } else { OrbPhase::Queued }),
            admitted: i % 3 == 0 && i < 24,
            deleting: false,
            valid: true,
            scheduled: false,
        })
        .collect()
}

fn time<T>(iterations: u32, mut f: impl FnMut() -> T) -> Duration {
    let start = Instant::now();
    for _ in 0..iterations {
        black_box(f());
    }
    start.elapsed() / iterations
}

fn main() {
    println!("{:<40} {:>14}", "case", "time per call");
    for n in [100, 1_000, 10_000] {
        let orbs = entries(n);
        let ledger = BTreeSet::new();
        let per = time(if n > 1_000 { 20 } else { 200 }, || {
            policy::plan_admission(&orbs, &ledger, 8)
        });
        println!("{:<40} {:>14?}", format!("plan_admission, {n} orbs, cap 8"), per);
    }
    let limits = Limits::default();
    let orb_limits = policy::orb_limits(&AiOrbSpec::default(), &limits);
    let now = Timestamp::from_second(1_800_000_100).unwrap();
    let view = OrbView {
        phase: Some(OrbPhase::Ready),
        clock: OrbClock {
            created: Timestamp::from_second(1_800_000_000).unwrap(),
            admitted_at: Some(Timestamp::from_second(1_800_000_001).unwrap()),
            session_started_at: None,
            participants: Some(2),
            last_activity: Some(Timestamp::from_second(1_800_000_090).unwrap()),
            start_at: None,
        },
        has_pod: true,
        ..Default::default()
    };
    let pod = PodState::Running {
        ready: true,
        node: Some("gpu-1".into()),
    };
    let per = time(100_000, || policy::decide(&view, &pod, &orb_limits, &limits, now));
    println!("{:<40} {:>14?}", "decide, one running orb", per);
}
