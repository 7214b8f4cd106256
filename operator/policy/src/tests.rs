use super::*;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::core::v1::{
    ContainerState, ContainerStateTerminated, ContainerStatus, PodCondition, PodSpec, PodStatus,
};
use k8s_openapi::jiff::Timestamp;
use orb_api::{OrbPhase, TerminationReason};
use proptest::prelude::*;
use std::collections::BTreeSet;

fn t(secs: i64) -> Timestamp {
    Timestamp::from_second(1_800_000_000 + secs).unwrap()
}

fn entry(i: usize, created: i64) -> AdmissionEntry {
    AdmissionEntry {
        uid: format!("uid-{i:03}"),
        key: format!("ns/orb-{i:03}"),
        created: t(created),
        phase: None,
        admitted: false,
        deleting: false,
        valid: true,
        scheduled: false,
    }
}

fn admitted(mut e: AdmissionEntry, phase: OrbPhase) -> AdmissionEntry {
    e.admitted = true;
    e.phase = Some(phase);
    e
}

// ---- admission ----

#[test]
fn admits_oldest_first_up_to_the_cap_and_queues_the_rest_in_order() {
    let orbs: Vec<_> = (0..5).map(|i| entry(i, 10 - i as i64)).collect();
    let plan = plan_admission(&orbs, &BTreeSet::new(), 2);
    assert_eq!(plan.admit, vec!["uid-004", "uid-003"]);
    assert_eq!(
        plan.queue,
        vec![("uid-002".into(), 1), ("uid-001".into(), 2), ("uid-000".into(), 3)]
    );
    assert_eq!(
        plan.ledger,
        BTreeSet::from(["uid-003".to_string(), "uid-004".to_string()])
    );
}

#[test]
fn creation_time_ties_break_by_namespace_and_name() {
    let mut a = entry(1, 0);
    a.key = "b/orb".into();
    let mut b = entry(2, 0);
    b.key = "a/orb".into();
    let plan = plan_admission(&[a, b], &BTreeSet::new(), 1);
    assert_eq!(plan.admit, vec!["uid-002"]);
    assert_eq!(plan.queue, vec![("uid-001".into(), 1)]);
}

#[test]
fn a_hundred_orbs_racing_for_eight_slots() {
    let orbs: Vec<_> = (0..100).map(|i| entry(i, (i * 7 % 13) as i64)).collect();
    let plan = plan_admission(&orbs, &BTreeSet::new(), 8);
    assert_eq!(plan.admit.len(), 8);
    assert_eq!(plan.queue.len(), 92);
    let positions: Vec<i32> = plan.queue.iter().map(|(_, p)| *p).collect();
    assert_eq!(positions, (1..=92).collect::<Vec<_>>());
    // Everyone admitted is at least as old as everyone queued.
    let created = |uid: &str| orbs.iter().find(|o| o.uid == uid).unwrap().created;
    let newest_admitted = plan.admit.iter().map(|u| created(u)).max().unwrap();
    assert!(plan.queue.iter().all(|(u, _)| created(u) >= newest_admitted));
}

#[test]
fn capacity_freed_by_a_finished_orb_goes_to_the_head_of_the_queue() {
    let mut orbs: Vec<_> = (0..8).map(|i| admitted(entry(i, i as i64), OrbPhase::Ready)).collect();
    orbs.push(entry(8, 100));
    orbs.push(entry(9, 101));
    let full = plan_admission(&orbs, &BTreeSet::new(), 8);
    assert!(full.admit.is_empty());
    assert_eq!(full.queue, vec![("uid-008".into(), 1), ("uid-009".into(), 2)]);

    orbs[3].phase = Some(OrbPhase::Succeeded);
    let freed = plan_admission(&orbs, &full.ledger, 8);
    assert_eq!(freed.admit, vec!["uid-008"]);
    assert_eq!(freed.queue, vec![("uid-009".into(), 1)]);
    assert!(!freed.ledger.contains("uid-003"));
}

#[test]
fn terminating_and_deleting_orbs_still_hold_their_slot() {
    let mut deleting = admitted(entry(1, 0), OrbPhase::Ready);
    deleting.deleting = true;
    let orbs = vec![admitted(entry(0, 0), OrbPhase::Terminating), deleting, entry(2, 5)];
    let plan = plan_admission(&orbs, &BTreeSet::new(), 2);
    assert!(plan.admit.is_empty());
    assert_eq!(plan.queue, vec![("uid-002".into(), 1)]);
}

#[test]
fn after_a_restart_eight_running_orbs_leave_no_room() {
    // A fresh operator knows nothing but what the API says: the status and the ledger.
    let mut orbs: Vec<_> = (0..8).map(|i| admitted(entry(i, i as i64), OrbPhase::Ready)).collect();
    orbs.extend((8..20).map(|i| entry(i, i as i64)));
    for ledger in [BTreeSet::new(), orbs[..8].iter().map(|o| o.uid.clone()).collect()] {
        let plan = plan_admission(&orbs, &ledger, 8);
        assert!(plan.admit.is_empty());
        assert_eq!(plan.queue.len(), 12);
    }
}

#[test]
fn ledger_entries_without_status_count_and_get_their_status_finished() {
    // The previous leader wrote the ledger but died before the status write.
    let orbs: Vec<_> = (0..4).map(|i| entry(i, i as i64)).collect();
    let ledger = BTreeSet::from(["uid-002".to_string()]);
    let plan = plan_admission(&orbs, &ledger, 2);
    assert_eq!(plan.admit, vec!["uid-002", "uid-000"]);
    assert_eq!(plan.queue, vec![("uid-001".into(), 1), ("uid-003".into(), 2)]);
}

/// A uid written into the ledger by hand (or a ledger from before the cap was lowered) cannot
/// admit past the cap: ledger entries without status are honoured only within it, oldest first.
#[test]
fn the_ledger_cannot_admit_past_the_cap() {
    let mut orbs: Vec<_> = (0..4).map(|i| entry(i, i as i64)).collect();
    orbs[0] = admitted(orbs[0].clone(), OrbPhase::Ready);
    orbs[1] = admitted(orbs[1].clone(), OrbPhase::Ready);
    // The cap (2) is full; someone adds uid-003 to the ledger.
    let ledger = BTreeSet::from(["uid-000".into(), "uid-001".into(), "uid-003".into()]);
    let plan = plan_admission(&orbs, &ledger, 2);
    assert!(plan.admit.is_empty(), "{plan:?}");
    assert_eq!(plan.ledger, BTreeSet::from(["uid-000".into(), "uid-001".into()]));
    assert_eq!(
        plan.queue,
        vec![("uid-002".into(), 1), ("uid-003".into(), 2)],
        "back in FIFO order"
    );
}

#[test]
fn invalid_deleting_and_finished_orbs_are_never_admitted() {
    let mut invalid = entry(0, 0);
    invalid.valid = false;
    let mut deleting = entry(1, 0);
    deleting.deleting = true;
    let mut failed = entry(2, 0);
    failed.phase = Some(OrbPhase::Failed);
    let plan = plan_admission(&[invalid, deleting, failed], &BTreeSet::new(), 8);
    assert!(plan.admit.is_empty() && plan.queue.is_empty() && plan.ledger.is_empty());
}

#[test]
fn only_the_first_places_of_the_queue_are_shown() {
    assert_eq!(
        [1, 10, 11, 9_900].map(|p| shown_position(p, 10)),
        [Some(1), Some(10), None, None]
    );
    assert_eq!(shown_position(1, 0), None);
}

#[test]
fn arrivals_wake_the_admitter_only_while_they_could_be_admitted_or_shown_a_place() {
    assert!(arrival_needs_pass(0, 10), "an empty queue: there may be room");
    assert!(arrival_needs_pass(9, 10), "the newcomer gets place 10");
    assert!(!arrival_needs_pass(10, 10), "behind the places shown: nothing to write");
    assert!(!arrival_needs_pass(9_900, 10));
    assert!(arrival_needs_pass(0, 0) && !arrival_needs_pass(1, 0));
}

/// 10 000 orbs, 100 running, 9 900 queued: one finished orb changes the shown position of at most
/// `shown` queued orbs (each moves up one place, and the first hidden one becomes visible), not of
/// the whole queue.
#[test]
fn a_freed_slot_changes_at_most_the_shown_positions() {
    let shown = 10;
    let mut orbs: Vec<_> = (0..100)
        .map(|i| admitted(entry(i, i as i64), OrbPhase::Ready))
        .collect();
    orbs.extend((100..10_000).map(|i| entry(i, i as i64)));
    let full = plan_admission(&orbs, &BTreeSet::new(), 100);
    assert_eq!((full.admit.len(), full.queue.len()), (0, 9_900));
    orbs[42].phase = Some(OrbPhase::Succeeded);
    let freed = plan_admission(&orbs, &full.ledger, 100);
    assert_eq!(freed.admit, vec!["uid-100"]);
    let before: std::collections::BTreeMap<&str, i32> = full.queue.iter().map(|(u, p)| (u.as_str(), *p)).collect();
    let changed = freed
        .queue
        .iter()
        .filter(|(uid, p)| shown_position(before[uid.as_str()], shown) != shown_position(*p, shown))
        .count();
    assert_eq!(changed, shown);
}

proptest! {
    /// Whatever the mix of states and ledger, a pass never leaves more than `cap` orbs holding
    /// capacity unless they already held it before the pass.
    #[test]
    fn never_over_admits(
        states in prop::collection::vec((0u8..8, any::<bool>(), any::<bool>(), 0i64..50), 0..60),
        ledger_bits in prop::collection::vec(any::<bool>(), 60),
        cap in 0usize..12,
    ) {
        let phases = [None, Some(OrbPhase::Queued), Some(OrbPhase::Starting), Some(OrbPhase::Ready),
            Some(OrbPhase::Terminating), Some(OrbPhase::Succeeded), Some(OrbPhase::Failed), Some(OrbPhase::Starting)];
        let orbs: Vec<AdmissionEntry> = states.iter().enumerate().map(|(i, (p, adm, del, c))| {
            let mut e = entry(i, *c);
            e.phase = phases[*p as usize];
            e.admitted = *adm && e.phase != Some(OrbPhase::Queued) && e.phase.is_some();
            e.deleting = *del;
            e
        }).collect();
        let ledger: BTreeSet<String> =
            orbs.iter().zip(&ledger_bits).filter(|(_, b)| **b).map(|(o, _)| o.uid.clone()).collect();
        // Only orbs admitted by status may exceed the cap (it was lowered); the ledger cannot.
        let admitted = orbs.iter().filter(|o| !o.phase.is_some_and(OrbPhase::is_terminal) && o.admitted).count();
        let plan = plan_admission(&orbs, &ledger, cap);
        prop_assert!(plan.ledger.len() <= cap.max(admitted));
        // Feeding the result back in admits nothing new: the plan is a fixed point.
        let mut after = orbs.clone();
        for o in &mut after { if plan.ledger.contains(&o.uid) { o.admitted = true; } }
        let again = plan_admission(&after, &plan.ledger, cap);
        prop_assert!(again.admit.is_empty());
        prop_assert_eq!(again.ledger, plan.ledger);
    }
}

/// One step of the world an admitter plans in, for [`a_stale_view_never_over_admits`].
#[derive(Clone, Debug)]
enum WorldStep {
    /// A room asks for an orb.
    Create,
    /// The `n`th unfinished orb (modulo their number) ends.
    Finish(usize),
    /// An orb holding nothing is deleted (a holder keeps its finalizer until a pass frees it).
    Delete(usize),
    /// An admission pass. `lags`: how many versions behind the API the view shows each orb
    /// (cycled; as many as it has: not seen at all); `crash`: the admitter dies after its ledger
    /// write, before its status writes.
    Pass { lags: Vec<usize>, crash: bool },
}

fn world_step() -> impl Strategy<Value = WorldStep> {
    prop_oneof![
        3 => Just(WorldStep::Create),
        2 => any::<usize>().prop_map(WorldStep::Finish),
        1 => any::<usize>().prop_map(WorldStep::Delete),
        4 => (prop::collection::vec(0usize..4, 0..6), any::<bool>())
            .prop_map(|(lags, crash)| WorldStep::Pass { lags, crash }),
    ]
}

fn holds(o: &AdmissionEntry) -> bool {
    o.admitted && !o.phase.is_some_and(OrbPhase::is_terminal)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]
    /// An admitter planning from a view that lags behind the API by any number of versions, orb by
    /// orb — a watch-fed cache, or a new leader's, older than what the last leader saw — never
    /// leaves more than `cap` orbs holding capacity once the view is combined with the ledger
    /// (read fresh each pass, the holders the view cannot vouch for read back), and every holder
    /// stays in the ledger. Admission status writes carry the version planned from: written from a
    /// stale view, they fail, as the API server's precondition makes them.
    #[test]
    fn a_stale_view_never_over_admits(steps in prop::collection::vec(world_step(), 1..80), cap in 1usize..5) {
        // Each orb as the API has it: every version it went through, the newest last.
        let mut orbs: Vec<Vec<AdmissionEntry>> = Vec::new();
        let newest = |o: &Vec<AdmissionEntry>| o.last().unwrap().clone();
        let mut ledger: BTreeSet<String> = BTreeSet::new();
        for (n, s) in steps.into_iter().enumerate() {
            match s {
                WorldStep::Create => {
                    let mut e = entry(n, n as i64);
                    e.phase = Some(OrbPhase::Queued);
                    orbs.push(vec![e]);
                }
                WorldStep::Finish(i) => {
                    let unfinished: Vec<usize> =
                        (0..orbs.len()).filter(|i| !newest(&orbs[*i]).phase.is_some_and(OrbPhase::is_terminal)).collect();
                    if let Some(&i) = unfinished.get(i % unfinished.len().max(1)) {
                        let mut done = newest(&orbs[i]);
                        done.phase = Some(OrbPhase::Succeeded);
                        orbs[i].push(done);
                    }
                }
                WorldStep::Delete(i) if !orbs.is_empty() => {
                    let i = i % orbs.len();
                    if !holds(&newest(&orbs[i])) && !ledger.contains(&newest(&orbs[i]).uid) {
                        orbs.remove(i);
                    }
                }
                WorldStep::Pass { lags, crash } => {
                    // The view: (orb, version) pairs.
                    let mut view: Vec<(usize, usize)> = orbs
                        .iter()
                        .enumerate()
                        .filter_map(|(i, o)| {
                            let lag = lags.get(i % lags.len().max(1)).copied().unwrap_or(0);
                            Some((i, (o.len() - 1).checked_sub(lag)?))
                        })
                        .collect();
                    let entries_of = |view: &[(usize, usize)]| -> Vec<AdmissionEntry> {
                        view.iter().map(|(i, v)| orbs[*i][*v].clone()).collect()
                    };
                    for uid in holders_to_read_back(&entries_of(&view), &ledger) {
                        view.retain(|(i, _)| newest(&orbs[*i]).uid != uid);
                        if let Some(i) = orbs.iter().position(|o| newest(o).uid == uid) {
                            view.push((i, orbs[i].len() - 1));
                        }
                    }
                    let plan = plan_admission(&entries_of(&view), &ledger, cap);
                    ledger = plan.ledger.clone();
                    for uid in plan.admit.iter().filter(|_| !crash) {
                        let (i, planned) = *view.iter().find(|(i, _)| &newest(&orbs[*i]).uid == uid).unwrap();
                        // The precondition: only over the version the plan was made from.
                        if orbs[i].len() - 1 == planned {
                            let mut admitted = newest(&orbs[i]);
                            admitted.admitted = true;
                            admitted.phase = Some(OrbPhase::Starting);
                            orbs[i].push(admitted);
                        }
                    }
                }
                _ => {}
            }
            let holders: Vec<String> = orbs.iter().map(newest).filter(holds).map(|o| o.uid).collect();
            prop_assert!(holders.len() <= cap, "{} orbs hold a slot, cap {cap}", holders.len());
            prop_assert!(holders.iter().all(|u| ledger.contains(u)), "a holder missing from the ledger");
        }
    }
}

// ---- limits and deadlines ----

fn limits() -> Limits {
    Limits::default()
}

fn orb_limits_of(spec: &AiOrbSpec) -> OrbLimits {
    orb_limits(spec, &limits())
}

#[test]
fn spec_values_override_defaults_and_test_mode_caps_the_lifetime() {
    let plain = orb_limits_of(&AiOrbSpec::default());
    assert_eq!(plain.lifetime, Duration::from_secs(7200));
    assert_eq!(plain.idle_timeout, Duration::from_secs(300));
    assert_eq!(plain.empty_room_grace, Duration::from_secs(60));

    let spec = AiOrbSpec {
        max_lifetime_seconds: Some(600),
        idle_timeout_seconds: Some(9),
        ..Default::default()
    };
    assert_eq!(orb_limits_of(&spec).lifetime, Duration::from_secs(600));
    assert_eq!(orb_limits_of(&spec).idle_timeout, Duration::from_secs(9));

    let test = AiOrbSpec {
        test_mode: true,
        max_lifetime_seconds: Some(600),
        ..Default::default()
    };
    assert_eq!(orb_limits_of(&test).lifetime, Duration::from_secs(30));
    let short_test = AiOrbSpec {
        test_mode: true,
        max_lifetime_seconds: Some(5),
        ..Default::default()
    };
    assert_eq!(orb_limits_of(&short_test).lifetime, Duration::from_secs(5));
}

fn clock(admitted: i64, participants: Option<i32>, activity: Option<i64>) -> OrbClock {
    OrbClock {
        created: t(0),
        admitted_at: Some(t(admitted)),
        session_started_at: None,
        participants,
        last_activity: activity.map(t),
        start_at: None,
    }
}

#[test]
fn max_lifetime_fires_at_admission_plus_lifetime() {
    let l = OrbLimits {
        lifetime: Duration::from_secs(100),
        idle_timeout: Duration::from_secs(1000),
        empty_room_grace: Duration::from_secs(60),
    };
    let d = deadlines(&clock(10, Some(2), Some(50)), &l);
    assert_eq!(due_deadline(&d, t(109)), None);
    assert_eq!(
        due_deadline(&d, t(110)),
        Some(Deadline {
            reason: TerminationReason::MaxLifetime,
            at: t(110)
        })
    );
    assert_eq!(next_deadline(&d, t(50)), Some(t(110)));
}

#[test]
fn room_cleanup_fires_only_while_the_room_is_empty() {
    let l = orb_limits_of(&AiOrbSpec::default());
    let occupied = deadlines(&clock(0, Some(1), Some(100)), &l);
    assert!(occupied.iter().all(|d| d.reason != TerminationReason::RoomCleanup));
    let empty = deadlines(&clock(0, Some(0), Some(100)), &l);
    assert_eq!(due_deadline(&empty, t(159)), None);
    assert_eq!(
        due_deadline(&empty, t(160)).unwrap().reason,
        TerminationReason::RoomCleanup
    );
    // Not reported yet is not empty.
    let unknown = deadlines(&clock(0, None, None), &l);
    assert!(unknown.iter().all(|d| d.reason != TerminationReason::RoomCleanup));
}

#[test]
fn idle_timeout_counts_from_the_last_activity_or_admission() {
    let l = orb_limits_of(&AiOrbSpec::default());
    let d = deadlines(&clock(0, Some(2), Some(1000)), &l);
    assert_eq!(due_deadline(&d, t(1299)), None);
    assert_eq!(
        due_deadline(&d, t(1300)).unwrap().reason,
        TerminationReason::IdleTimeout
    );
    let silent = deadlines(&clock(50, Some(2), None), &l);
    assert_eq!(
        due_deadline(&silent, t(350)).unwrap().reason,
        TerminationReason::IdleTimeout
    );
    // Activity reported before admission does not shorten the admitted orb's idle window.
    let early = deadlines(&clock(500, Some(2), Some(10)), &l);
    assert_eq!(due_deadline(&early, t(799)), None);
}

#[test]
fn the_earliest_due_deadline_wins_and_ties_go_to_the_hard_limit() {
    let l = OrbLimits {
        lifetime: Duration::from_secs(100),
        idle_timeout: Duration::from_secs(30),
        empty_room_grace: Duration::from_secs(10),
    };
    // Empty since 20: cleanup at 30, idle at 50, lifetime at 100 — all due at 200.
    let d = deadlines(&clock(0, Some(0), Some(20)), &l);
    assert_eq!(
        due_deadline(&d, t(200)).unwrap(),
        Deadline {
            reason: TerminationReason::RoomCleanup,
            at: t(30)
        }
    );
    // All three at the same instant.
    let same = OrbLimits {
        lifetime: Duration::from_secs(60),
        idle_timeout: Duration::from_secs(60),
        empty_room_grace: Duration::from_secs(60),
    };
    let d = deadlines(&clock(0, Some(0), Some(0)), &same);
    assert_eq!(due_deadline(&d, t(60)).unwrap().reason, TerminationReason::MaxLifetime);
    // Idle and cleanup tie without a lifetime involved: cleanup is the better explanation.
    let tie = OrbLimits {
        lifetime: Duration::from_secs(1000),
        idle_timeout: Duration::from_secs(60),
        empty_room_grace: Duration::from_secs(60),
    };
    let d = deadlines(&clock(0, Some(0), Some(0)), &tie);
    assert_eq!(due_deadline(&d, t(60)).unwrap().reason, TerminationReason::RoomCleanup);
}

// ---- pods ----

fn pod(phase: &str) -> Pod {
    Pod {
        spec: Some(PodSpec {
            node_name: Some("gpu-1".into()),
            ..Default::default()
        }),
        status: Some(PodStatus {
            phase: Some(phase.into()),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn with_ready(mut p: Pod, ready: bool) -> Pod {
    let s = p.status.as_mut().unwrap();
    s.conditions = Some(vec![PodCondition {
        type_: "Ready".into(),
        status: if ready { "True" } else { "False" }.into(),
        ..Default::default()
    }]);
    p
}

fn with_termination_message(mut p: Pod, message: &str) -> Pod {
    p.status.as_mut().unwrap().container_statuses = Some(vec![ContainerStatus {
        name: "orb".into(),
        state: Some(ContainerState {
            terminated: Some(ContainerStateTerminated {
                message: Some(message.into()),
                exit_code: 1,
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }]);
    p
}

#[test]
fn every_pod_state_is_observed() {
    assert_eq!(observe_pod(None), PodState::Missing);
    assert_eq!(
        observe_pod(Some(&pod("Pending"))),
        PodState::Pending {
            node: Some("gpu-1".into())
        }
    );
    assert_eq!(
        observe_pod(Some(&with_ready(pod("Running"), false))),
        PodState::Running {
            ready: false,
            node: Some("gpu-1".into())
        }
    );
    assert_eq!(
        observe_pod(Some(&with_ready(pod("Running"), true))),
        PodState::Running {
            ready: true,
            node: Some("gpu-1".into())
        }
    );
    assert_eq!(
        observe_pod(Some(&pod("Succeeded"))),
        PodState::Succeeded { message: None }
    );
    assert_eq!(
        observe_pod(Some(&with_termination_message(pod("Failed"), "Error: brain crashed\n"))),
        PodState::Failed {
            reason: None,
            message: Some("Error: brain crashed".into())
        }
    );
    assert_eq!(
        observe_pod(Some(&pod("Failed"))),
        PodState::Failed {
            reason: None,
            message: None
        }
    );
    let mut deleting = with_ready(pod("Running"), true);
    deleting.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(t(0)));
    assert_eq!(
        observe_pod(Some(&deleting)),
        PodState::Deleting { grace_ends: Some(t(0)) }
    );
    assert_eq!(tracked_phase(&PodState::Pending { node: None }), OrbPhase::Starting);
    assert_eq!(
        tracked_phase(&PodState::Running {
            ready: false,
            node: None
        }),
        OrbPhase::Starting
    );
    assert_eq!(
        tracked_phase(&PodState::Running {
            ready: true,
            node: None
        }),
        OrbPhase::Ready
    );
}

fn view(phase: OrbPhase) -> OrbView {
    OrbView {
        phase: Some(phase),
        clock: clock(0, Some(2), Some(0)),
        has_pod: true,
        ..Default::default()
    }
}

fn step(v: &OrbView, pod: &PodState, now: i64) -> Step {
    decide(v, pod, &orb_limits_of(&AiOrbSpec::default()), &limits(), t(now)).step
}

#[test]
fn the_step_that_follows_every_pod_state() {
    let running = PodState::Running {
        ready: true,
        node: None,
    };
    let v = view(OrbPhase::Starting);
    assert_eq!(
        step(
            &OrbView {
                has_pod: false,
                ..v.clone()
            },
            &PodState::Missing,
            10
        ),
        Step::CreatePod { attempt: 0 }
    );
    assert_eq!(step(&v, &PodState::Pending { node: None }, 10), Step::Track);
    assert_eq!(step(&v, &running, 10), Step::Track);
    assert_eq!(step(&v, &PodState::Deleting { grace_ends: None }, 10), Step::Track);
    assert_eq!(
        step(&v, &PodState::Succeeded { message: None }, 10),
        Step::Finish {
            phase: OrbPhase::Succeeded,
            reason: TerminationReason::SessionComplete,
            message: None
        }
    );
    let idle = PodState::Succeeded {
        message: Some("IdleTimeout: nobody spoke for 5m".into()),
    };
    assert!(matches!(
        step(&v, &idle, 10),
        Step::Finish {
            reason: TerminationReason::IdleTimeout,
            ..
        }
    ));
    // Failed with and without a message: replacement first (room occupied), message carried.
    let failed = PodState::Failed {
        reason: None,
        message: Some("Error: boom".into()),
    };
    assert_eq!(
        step(&v, &failed, 10),
        Step::AwaitReplacement {
            reason: TerminationReason::Error,
            message: Some("Error: boom".into())
        }
    );
    assert_eq!(
        step(
            &v,
            &PodState::Failed {
                reason: None,
                message: None
            },
            10
        ),
        Step::AwaitReplacement {
            reason: TerminationReason::Error,
            message: None
        }
    );
    // Deleted underneath.
    assert!(matches!(
        step(&v, &PodState::Missing, 10),
        Step::AwaitReplacement {
            reason: TerminationReason::PodLost,
            ..
        }
    ));
    // activeDeadlineSeconds backstop.
    let deadline = PodState::Failed {
        reason: Some("DeadlineExceeded".into()),
        message: None,
    };
    assert!(matches!(
        step(&v, &deadline, 10),
        Step::Finish {
            reason: TerminationReason::MaxLifetime,
            phase: OrbPhase::Succeeded,
            ..
        }
    ));
}

#[test]
fn a_due_deadline_terminates_then_finishes_when_the_pod_is_gone() {
    let mut v = view(OrbPhase::Ready);
    v.clock.last_activity = Some(t(7000));
    let running = PodState::Running {
        ready: true,
        node: None,
    };
    assert_eq!(
        step(&v, &running, 7200),
        Step::Terminate {
            reason: TerminationReason::MaxLifetime
        }
    );
    let terminating = OrbView {
        phase: Some(OrbPhase::Terminating),
        termination_reason: Some(TerminationReason::MaxLifetime),
        ..v
    };
    assert_eq!(
        step(
            &terminating,
            &PodState::Deleting {
                grace_ends: Some(t(7211))
            },
            7201
        ),
        Step::Terminate {
            reason: TerminationReason::MaxLifetime
        }
    );
    // A lost node: the pod never goes. Past its grace plus the margin it stops holding the slot.
    let stuck = PodState::Deleting {
        grace_ends: Some(t(7211)),
    };
    assert_eq!(
        step(&terminating, &stuck, 7211 + 119),
        Step::Terminate {
            reason: TerminationReason::MaxLifetime
        }
    );
    assert!(matches!(
        step(&terminating, &stuck, 7211 + 120),
        Step::Finish {
            phase: OrbPhase::Failed,
            reason: TerminationReason::PodLost,
            ..
        }
    ));
    for gone in [
        PodState::Missing,
        PodState::Failed {
            reason: None,
            message: None,
        },
        PodState::Succeeded { message: None },
    ] {
        assert!(matches!(
            step(&terminating, &gone, 7210),
            Step::Finish {
                phase: OrbPhase::Succeeded,
                reason: TerminationReason::MaxLifetime,
                ..
            }
        ));
    }
}

#[test]
fn queued_orbs_wait_but_still_end_when_their_room_empties() {
    let mut v = OrbView {
        phase: Some(OrbPhase::Queued),
        clock: OrbClock {
            created: t(0),
            ..Default::default()
        },
        ..Default::default()
    };
    v.clock.participants = Some(1);
    let d = decide(
        &v,
        &PodState::Missing,
        &orb_limits_of(&AiOrbSpec::default()),
        &limits(),
        t(10),
    );
    assert_eq!(d.step, Step::Wait);
    assert_eq!(d.requeue_at, Some(t(300)), "idle timeout while queued");
    v.clock.participants = Some(0);
    v.clock.last_activity = Some(t(5));
    assert_eq!(
        step(&v, &PodState::Missing, 65),
        Step::Finish {
            phase: OrbPhase::Succeeded,
            reason: TerminationReason::RoomCleanup,
            message: None
        }
    );
}

#[test]
fn replacement_waits_for_the_backoff_and_is_bounded() {
    let failed = PodState::Failed {
        reason: None,
        message: Some("Error: x".into()),
    };
    let mut v = view(OrbPhase::Starting);
    v.failed_since = Some(t(100));
    assert_eq!(step(&v, &failed, 109), Step::Wait);
    assert_eq!(step(&v, &failed, 110), Step::Replace { attempt: 1 });
    v.restarts = 2;
    assert_eq!(restart_backoff(2, &limits()), Duration::from_secs(40));
    assert_eq!(step(&v, &failed, 139), Step::Wait);
    assert_eq!(step(&v, &failed, 140), Step::Replace { attempt: 3 });
    v.restarts = 3;
    assert!(matches!(
        step(&v, &failed, 1000),
        Step::Finish {
            phase: OrbPhase::Failed,
            reason: TerminationReason::Error,
            ..
        }
    ));
    assert_eq!(restart_backoff(30, &limits()), Duration::from_secs(300));
}

#[test]
fn no_replacement_for_an_empty_room_or_a_due_deadline() {
    let failed = PodState::Failed {
        reason: None,
        message: None,
    };
    let mut empty = view(OrbPhase::Ready);
    empty.clock.participants = Some(0);
    assert!(matches!(
        step(&empty, &failed, 10),
        Step::Finish {
            phase: OrbPhase::Failed,
            ..
        }
    ));
    let expired = view(OrbPhase::Ready);
    assert!(matches!(
        step(&expired, &PodState::Missing, 8000),
        Step::Finish {
            reason: TerminationReason::PodLost,
            ..
        }
    ));
}

#[test]
fn invalid_specs_fail_once_and_finished_orbs_expire_after_the_ttl() {
    let v = OrbView {
        invalid: Some("spec.roomId: room id is empty".into()),
        ..Default::default()
    };
    assert!(matches!(
        step(&v, &PodState::Missing, 0),
        Step::Finish {
            phase: OrbPhase::Failed,
            reason: TerminationReason::InvalidSpec,
            ..
        }
    ));
    let done = OrbView {
        phase: Some(OrbPhase::Failed),
        finished_at: Some(t(0)),
        ..Default::default()
    };
    let d = decide(
        &done,
        &PodState::Missing,
        &orb_limits_of(&AiOrbSpec::default()),
        &limits(),
        t(10),
    );
    assert_eq!(
        d,
        Decision {
            step: Step::Wait,
            requeue_at: Some(t(3600))
        }
    );
    assert_eq!(step(&done, &PodState::Missing, 3600), Step::Expire);
}

#[test]
fn spec_validation_explains_itself() {
    assert!(
        validate_spec(&AiOrbSpec {
            room_id: "room-1".into(),
            ..Default::default()
        })
        .is_ok()
    );
    let e = validate_spec(&AiOrbSpec::default()).unwrap_err().to_string();
    assert!(e.contains("spec.roomId"), "{e}");
    let e = validate_spec(&AiOrbSpec {
        room_id: "r".into(),
        max_lifetime_seconds: Some(0),
        ..Default::default()
    })
    .unwrap_err();
    assert_eq!(
        e,
        SpecError::OutOfRange {
            field: "spec.maxLifetimeSeconds",
            value: 0,
            min: 1,
            max: 86_400
        }
    );
    assert_eq!(e.to_string(), "spec.maxLifetimeSeconds: 0 is outside 1..=86400");
    let e = validate_spec(&AiOrbSpec {
        room_id: "r".into(),
        idle_timeout_seconds: Some(86_401),
        ..Default::default()
    })
    .unwrap_err()
    .to_string();
    assert!(e.contains("spec.idleTimeoutSeconds"), "{e}");
}

#[test]
fn a_purpose_is_bounded_in_characters_not_bytes() {
    let with = |purpose: String| AiOrbSpec {
        room_id: "r".into(),
        purpose: Some(purpose),
        ..Default::default()
    };
    // 1000 three-byte characters: within the schema's limit, which counts characters.
    assert!(validate_spec(&with("ü€".repeat(MAX_PURPOSE_CHARS / 2))).is_ok());
    let e = validate_spec(&with("x".repeat(MAX_PURPOSE_CHARS + 1))).unwrap_err();
    assert_eq!(e.to_string(), "spec.purpose: longer than 1000 characters");
}

/// The ids are bounded as the schema bounds them, in characters: an id of 256 non-ASCII
/// characters passes both (in bytes it once passed the schema and was refused here).
#[test]
fn ids_are_bounded_in_characters_not_bytes() {
    let coach = |id: String| AiOrbSpec {
        room_id: "r".into(),
        coach_id: Some(id),
        ..Default::default()
    };
    assert!(validate_spec(&coach("Zoë".repeat(MAX_ID_CHARS / 3) + "ü")).is_ok());
    let e = validate_spec(&coach("x".repeat(MAX_ID_CHARS + 1))).unwrap_err();
    assert_eq!(e.to_string(), "spec.coachId: longer than 256 characters");
}

#[test]
fn the_session_context_reaches_the_orbs_args_and_its_assignment() {
    let spec = AiOrbSpec {
        room_id: "room-1".into(),
        coach_id: Some("coach-1".into()),
        client_id: Some("client-1".into()),
        purpose: Some("Quarterly goals review".into()),
        ..Default::default()
    };
    let limits = orb_limits_of(&spec);
    let launched = launch(&spec, &limits, &clock(0, Some(1), None), t(10), "ws://sig:8080");
    for arg in [
        "--coach=coach-1",
        "--client=client-1",
        "--purpose=Quarterly goals review",
    ] {
        assert!(
            launched.args.iter().any(|a| a == arg),
            "{arg} missing: {:?}",
            launched.args
        );
    }
    assert_eq!(launched.assignment.purpose.as_deref(), Some("Quarterly goals review"));
    let without = launch(
        &AiOrbSpec { purpose: None, ..spec },
        &limits,
        &clock(0, Some(1), None),
        t(10),
        "ws://sig:8080",
    );
    assert!(
        !without.args.iter().any(|a| a.starts_with("--purpose")),
        "{:?}",
        without.args
    );
}

// ---- the lifetime is the session's ----

fn spec_in(room: &str, session: Option<&str>) -> AiOrbSpec {
    AiOrbSpec {
        room_id: room.into(),
        session_id: session.map(String::from),
        ..Default::default()
    }
}

#[test]
fn a_session_is_its_id_else_its_room_within_a_namespace() {
    let k = |ns, room, session| session_key(ns, &spec_in(room, session));
    assert_eq!(
        k("a", "r1", Some("s")),
        k("a", "r2", Some("s")),
        "one session, any room"
    );
    assert_ne!(
        k("a", "r1", Some("s")),
        k("b", "r1", Some("s")),
        "namespaces do not share"
    );
    assert_ne!(
        k("a", "r1", Some("s1")),
        k("a", "r1", Some("s2")),
        "a new session, a new budget"
    );
    assert_eq!(
        k("a", "r1", None),
        k("a", "r1", Some("")),
        "no session id: the room is the session"
    );
    assert_ne!(k("a", "r1", None), k("a", "r2", None));
    assert_ne!(
        k("a", "s", None),
        k("a", "x", Some("s")),
        "a room id never poses as a session id"
    );
    assert_eq!(k("a", "r1", None).len(), 16);
}

/// A re-created AiOrb of the session (a reload after MaxLifetime) starts where the first began:
/// it gets what is left, and nothing once the budget is spent; a new session gets a full one.
#[test]
fn a_recreated_orb_of_the_session_inherits_the_budget() {
    let limits = Limits::default();
    let l = orb_limits(&spec_in("r", Some("s")), &limits);
    let key = session_key("ns", &spec_in("r", Some("s")));
    let mut budgets = SessionBudgets::new();
    assert_eq!(session_start(&mut budgets, &key, t(0), None), t(0));

    // Ended at 2 h by MaxLifetime; the page is reloaded a minute later.
    let again = session_start(&mut budgets, &key, t(7260), None);
    assert_eq!(again, t(0));
    let reloaded = OrbClock {
        created: t(7250),
        admitted_at: Some(t(7260)),
        session_started_at: Some(again),
        participants: Some(2),
        last_activity: Some(t(7260)),
        start_at: None,
    };
    assert_eq!(lifetime_ends(&reloaded, &l), Some(t(7200)));
    assert_eq!(
        due_deadline(&deadlines(&reloaded, &l), t(7260)).map(|d| d.reason),
        Some(TerminationReason::MaxLifetime),
        "no fresh two hours"
    );
    assert_eq!(lifetime_left(&reloaded, &l, t(7260)), Duration::from_secs(1));
    let claims = orb_token_claims(&spec_in("r", Some("s")), "r", "uid-r", &reloaded, &l, t(7260));
    assert_eq!(
        claims.exp,
        (t(7200).as_second() + TERMINATION_GRACE_SECONDS + 60) as u64
    );
    assert_eq!(claims.session.as_deref(), Some("s"));
    assert_eq!(claims.orb.as_deref(), Some("uid-r"), "the token names its AiOrb");

    // Half-way through, a reload gets the other half.
    let halfway = OrbClock {
        admitted_at: Some(t(3600)),
        session_started_at: Some(t(0)),
        ..reloaded
    };
    assert_eq!(lifetime_left(&halfway, &l, t(3600)), Duration::from_secs(3600));

    // Another session starts its own budget.
    let other = session_key("ns", &spec_in("r", Some("s2")));
    assert_eq!(session_start(&mut budgets, &other, t(7260), None), t(7260));
}

/// A room without a session id is one call at a time: the orb that ends the call (the room emptied,
/// the session completed, the AiOrb deleted) takes the room's budget with it, and the next call
/// in the room — a coach's personal room, reused for the next client — starts a fresh one.
#[test]
fn a_room_keyed_call_that_ended_leaves_the_next_orb_in_the_room_a_fresh_budget() {
    let spec = spec_in("coach-room", None);
    for reason in [
        TerminationReason::RoomCleanup,
        TerminationReason::SessionComplete,
        TerminationReason::Deleted,
    ] {
        let mut budgets = SessionBudgets::new();
        let key = session_key("ns", &spec);
        assert_eq!(session_start(&mut budgets, &key, t(0), None), t(0));
        // The first call lasted 30 s of a 40 s lifetime and ended by `reason`.
        assert!(ends_call(&spec, reason), "{reason}");
        assert!(end_session(&mut budgets, "ns", &spec, reason), "{reason}");
        assert_eq!(
            session_start(&mut budgets, &key, t(35), None),
            t(35),
            "{reason}: the next call in the room starts its own budget"
        );
    }
}

/// An orb that ended on a limit or an error may leave people in the room: the orb they ask for
/// next continues the call, with what is left of its budget.
#[test]
fn a_room_keyed_call_whose_orb_ended_on_a_limit_or_error_keeps_its_budget() {
    let spec = spec_in("coach-room", None);
    for reason in [
        TerminationReason::MaxLifetime,
        TerminationReason::IdleTimeout,
        TerminationReason::Error,
        TerminationReason::PodLost,
    ] {
        let mut budgets = SessionBudgets::new();
        let key = session_key("ns", &spec);
        session_start(&mut budgets, &key, t(0), None);
        assert!(!ends_call(&spec, reason), "{reason}");
        assert!(!end_session(&mut budgets, "ns", &spec, reason), "{reason}");
        assert_eq!(session_start(&mut budgets, &key, t(7260), None), t(0), "{reason}");
    }
}

/// A session id names the booking, not one call: its budget outlives any end of its orbs, for
/// the retention, as before.
#[test]
fn a_session_with_an_id_keeps_its_budget_however_its_orbs_end() {
    let spec = spec_in("coach-room", Some("booking-1"));
    let key = session_key("ns", &spec);
    let mut budgets = SessionBudgets::new();
    session_start(&mut budgets, &key, t(0), None);
    for reason in TerminationReason::ALL {
        assert!(!ends_call(&spec, reason), "{reason}");
        assert!(!end_session(&mut budgets, "ns", &spec, reason), "{reason}");
    }
    assert_eq!(session_start(&mut budgets, &key, t(60), None), t(0));
    // The ended room's call forgets only its own budget.
    let room = spec_in("coach-room", None);
    let room_key = session_key("ns", &room);
    session_start(&mut budgets, &room_key, t(0), None);
    assert!(end_session(&mut budgets, "ns", &room, TerminationReason::RoomCleanup));
    assert_eq!(budgets.keys().collect::<Vec<_>>(), [&key]);
}

/// A prewarmed orb is admitted its lead before the booked start; the call, and its budget, start
/// at the booking. One admitted late (a full cap) starts at its admission.
#[test]
fn a_prewarmed_session_s_budget_starts_at_its_booked_start() {
    let spec = spec_in("r", None);
    let key = session_key("ns", &spec);
    let mut budgets = SessionBudgets::new();
    assert_eq!(session_start(&mut budgets, &key, t(0), Some(t(120))), t(120));
    let l = orb_limits(&spec, &Limits::default());
    let prewarmed = OrbClock {
        admitted_at: Some(t(0)),
        session_started_at: Some(t(120)),
        start_at: Some(t(120)),
        ..clock(0, None, None)
    };
    assert_eq!(lifetime_ends(&prewarmed, &l), Some(t(120 + 7200)));
    assert_eq!(
        lifetime_left(&prewarmed, &l, t(0)),
        std::time::Duration::from_secs(120 + 7200),
        "the pod's deadline covers the lead and the whole lifetime"
    );
    assert_eq!(budget_start(t(300), Some(t(120))), t(300), "admitted after its start");
    assert_eq!(budget_start(t(300), None), t(300));
    // A later orb of the session inherits the booked start.
    assert_eq!(session_start(&mut budgets, &key, t(200), None), t(120));
}

#[test]
fn budgets_are_remembered_for_twice_the_lifetime_and_survive_the_ledger() {
    let limits = Limits::default();
    let budgets = SessionBudgets::from([("aaaa".into(), t(0)), ("bbbb".into(), t(10_000))]);
    let kept = prune_sessions(&budgets, t(4 * 3600), &limits);
    assert_eq!(kept.keys().collect::<Vec<_>>(), vec!["bbbb"]);
    assert_eq!(prune_sessions(&budgets, t(4 * 3600 - 1), &limits), budgets);
    assert_eq!(parse_sessions(&render_sessions(&budgets)), budgets);
    assert_eq!(
        parse_sessions("garbage\nbbbb x\ncccc 1800000000\n").len(),
        1,
        "bad lines are skipped"
    );
}

/// Without a session start (an orb admitted before budgets existed) the lifetime counts from
/// admission, as before.
#[test]
fn without_a_session_start_the_lifetime_counts_from_admission() {
    let l = orb_limits(&AiOrbSpec::default(), &Limits::default());
    assert_eq!(lifetime_ends(&clock(10, Some(1), None), &l), Some(t(10 + 7200)));
    assert_eq!(lifetime_ends(&OrbClock::default(), &l), None);
}

// ---- scheduled prewarm (spec.startAt) ----

#[test]
fn a_booked_orb_is_due_its_lead_before_its_start_and_waits_unqueued_until_then() {
    let lead = std::time::Duration::from_secs(120);
    assert_eq!(admission_due(Some(t(1000)), lead), Some(t(880)));
    assert_eq!(admission_due(None, lead), None, "unbooked orbs are due at once");
    let mut booked = entry(0, 0);
    booked.scheduled = true;
    let walk_in = entry(1, 5);
    let plan = plan_admission(&[booked.clone(), walk_in], &BTreeSet::new(), 1);
    assert_eq!(plan.admit, ["uid-001"], "a later walk-in takes the free slot");
    assert!(
        plan.queue.is_empty(),
        "a booked orb not yet due has no place in the queue"
    );
    // Due: created first, it is first in line.
    booked.scheduled = false;
    let plan = plan_admission(&[booked, entry(1, 5)], &BTreeSet::new(), 1);
    assert_eq!(plan.admit, ["uid-000"]);
    assert_eq!(plan.queue, [("uid-001".to_owned(), 1)]);
}

#[test]
fn a_prewarmed_orb_in_an_empty_room_ends_by_the_empty_room_rule_from_its_booked_start() {
    let l = OrbLimits {
        lifetime: std::time::Duration::from_secs(7200),
        idle_timeout: std::time::Duration::from_secs(300),
        empty_room_grace: std::time::Duration::from_secs(60),
    };
    // Admitted at 0 for a start at 120; signaling never reported anyone.
    let mut c = clock(0, None, None);
    c.start_at = Some(t(120));
    let d = deadlines(&c, &l);
    let cleanup = d
        .iter()
        .find(|d| d.reason == TerminationReason::RoomCleanup)
        .expect("empty-room rule");
    assert_eq!(cleanup.at, t(180), "counted from the booked start, not from admission");
    let idle = d.iter().find(|d| d.reason == TerminationReason::IdleTimeout).unwrap();
    assert_eq!(idle.at, t(420));
    assert_eq!(due_deadline(&d, t(179)), None, "in the room before anyone, it waits");
    // Someone came: the usual rules.
    c.participants = Some(2);
    c.last_activity = Some(t(150));
    let d = deadlines(&c, &l);
    assert!(d.iter().all(|d| d.reason != TerminationReason::RoomCleanup));
    // An orb without a booking is not ended for a room signaling has not reported on.
    let walk_in = clock(0, None, None);
    assert!(
        deadlines(&walk_in, &l)
            .iter()
            .all(|d| d.reason != TerminationReason::RoomCleanup)
    );
}
