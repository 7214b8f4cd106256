//! Admission: who holds capacity under the cap, and the FIFO queue.

use std::collections::BTreeSet;

use std::time::Duration;

use k8s_openapi::jiff::{SignedDuration, Timestamp};
use orb_api::OrbPhase;

/// What admission needs to know of one AiOrb.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AdmissionEntry {
    pub uid: String,
    /// `namespace/name`: the FIFO tie-breaker after creation time.
    pub key: String,
    pub created: Timestamp,
    pub phase: Option<OrbPhase>,
    /// `status.admittedAt` is set.
    pub admitted: bool,
    pub deleting: bool,
    pub valid: bool,
    /// Booked for later (`spec.startAt`) and not yet due ([`admission_due`]): neither admitted
    /// nor queued until then.
    pub scheduled: bool,
}

/// When an orb booked for `start_at` may be admitted: `lead` before it. `None`: at once.
pub fn admission_due(start_at: Option<Timestamp>, lead: Duration) -> Option<Timestamp> {
    start_at.map(|at| {
        let lead = SignedDuration::try_from(lead).unwrap_or(SignedDuration::MAX);
        at.checked_sub(lead).unwrap_or(Timestamp::MIN)
    })
}

/// The outcome of one admission pass.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AdmissionPlan {
    /// The uids that hold capacity after this pass: the new admission ledger.
    pub ledger: BTreeSet<String>,
    /// Orbs to mark admitted, oldest first: new admissions, plus ledger entries whose status write
    /// did not land before (an admitter that crashed between the two writes).
    pub admit: Vec<String>,
    /// Orbs still waiting, with their 1-based queue positions.
    pub queue: Vec<(String, i32)>,
}

/// The `status.queuePosition` an orb at `position` shows when the first `shown` places are
/// written: its place there, none further back. Positions behind the first `shown` are not
/// written, so a freed slot rewrites at most `shown` statuses, whatever the queue's length.
pub fn shown_position(position: i32, shown: usize) -> Option<i32> {
    usize::try_from(position)
        .is_ok_and(|p| (1..=shown).contains(&p))
        .then_some(position)
}

/// Whether an orb joining the queue is worth an admission pass, given the queue's length after the
/// last one. A non-empty queue means the cap is full, and a new orb goes to its back (FIFO by
/// creation): a pass could neither admit it nor show it a place once `shown` places are taken.
/// Freed capacity wakes the admitter by another path, and the periodic pass catches the rest.
pub fn arrival_needs_pass(queue_len: usize, shown: usize) -> bool {
    queue_len < shown.max(1)
}

/// The ledger's holders that a view of the orbs cannot vouch for, to be read back from the API
/// before planning: those missing from the view, and those it shows neither admitted nor finished.
///
/// A watch-fed view may lag behind the API. An orb's admission and its end are both final, so a
/// view showing either is right about it (a holder shown admitted that has since finished only
/// keeps its slot a pass longer). A holder shown still waiting may have been admitted since, and
/// planning from that view could drop it from the ledger and hand its slot to another orb. Read
/// back, every holder is as the API has it, and the ledger, read fresh and written with a
/// compare-and-swap, keeps every slot accounted for: a stale view may delay an admission, never
/// add one past the cap.
pub fn holders_to_read_back(view: &[AdmissionEntry], ledger: &BTreeSet<String>) -> Vec<String> {
    let vouched: BTreeSet<&str> = view
        .iter()
        .filter(|o| o.admitted || o.phase.is_some_and(OrbPhase::is_terminal))
        .map(|o| o.uid.as_str())
        .collect();
    ledger
        .iter()
        .filter(|uid| !vouched.contains(uid.as_str()))
        .cloned()
        .collect()
}

/// Admits the oldest waiting orbs into free capacity. Capacity is held by every non-terminal orb
/// that is admitted by status or by the ledger, including one that is terminating or being deleted
/// (its pod still holds a GPU). Anything counted twice errs towards admitting fewer, never more.
pub fn plan_admission(orbs: &[AdmissionEntry], ledger: &BTreeSet<String>, cap: usize) -> AdmissionPlan {
    let live = |o: &&AdmissionEntry| !o.phase.is_some_and(OrbPhase::is_terminal);
    let admitted: Vec<&AdmissionEntry> = orbs.iter().filter(live).filter(|o| o.admitted).collect();
    let mut plan = AdmissionPlan {
        ledger: admitted.iter().map(|o| o.uid.clone()).collect(),
        ..Default::default()
    };
    // Ledger entries without an admitted status (an admitter died between its two writes) are
    // finished, oldest first — but only within the cap: a uid written into the ledger by hand, or
    // a ledger grown past a lowered cap, cannot admit past it; the rest wait in the queue.
    let mut unfinished: Vec<&AdmissionEntry> = orbs
        .iter()
        .filter(live)
        .filter(|o| !o.admitted && ledger.contains(&o.uid) && o.valid)
        .collect();
    unfinished.sort_by(|a, b| (a.created, &a.key).cmp(&(b.created, &b.key)));
    let room = cap.saturating_sub(plan.ledger.len());
    unfinished.truncate(room);
    for o in &unfinished {
        plan.ledger.insert(o.uid.clone());
        plan.admit.push(o.uid.clone());
    }

    let mut waiting: Vec<&AdmissionEntry> = orbs
        .iter()
        .filter(live)
        .filter(|o| !o.admitted && !plan.ledger.contains(&o.uid) && !o.deleting && o.valid && !o.scheduled)
        .collect();
    waiting.sort_by(|a, b| (a.created, &a.key).cmp(&(b.created, &b.key)));
    let free = cap.saturating_sub(plan.ledger.len());
    for (i, o) in waiting.iter().enumerate() {
        if i < free {
            plan.ledger.insert(o.uid.clone());
            plan.admit.push(o.uid.clone());
        } else {
            plan.queue.push((o.uid.clone(), (i - free + 1) as i32));
        }
    }
    plan
}
