//! Building the operator's part of an AiOrb status. Conditions are derived from the phase and the
//! other fields in one place, so every writer (reconciler, admitter) produces the same shape and a
//! status that did not change compares equal and is not written again.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use orb_api::{AiOrb, AiOrbStatus, OrbPhase, condition};
use serde_json::json;

/// Condition type set while a failed pod waits for its replacement; its transition time is when
/// the failure was seen, which the replacement backoff counts from.
pub const REPLACING: &str = "Replacing";

/// The operator's fields of the orb's status, without signaling's (presence and the summary's
/// delivery). The operator's status apply is forced: a field it sends, it co-owns from then on, and
/// a field of signaling's that it co-owns is no longer removed when signaling's own apply leaves it
/// out (a delivered summary would keep its last error and retry deadline).
pub fn operator_status(orb: &AiOrb) -> AiOrbStatus {
    AiOrbStatus {
        participants: None,
        last_activity_time: None,
        summary: None,
        ..orb.status.clone().unwrap_or_default()
    }
}

pub fn condition_status<'a>(status: &'a AiOrbStatus, type_: &str) -> Option<&'a Condition> {
    status.conditions.iter().find(|c| c.type_ == type_)
}

/// Since when a failed pod has been waiting for its replacement.
pub fn failed_since(status: &AiOrbStatus) -> Option<Timestamp> {
    condition_status(status, REPLACING)
        .filter(|c| c.status == "True")
        .map(|c| c.last_transition_time.0)
}

/// Sets a condition, keeping its transition time when its status did not change.
pub fn set_condition(
    conditions: &mut Vec<Condition>,
    type_: &str,
    is_true: bool,
    reason: &str,
    message: impl Into<String>,
    generation: Option<i64>,
    now: Timestamp,
) {
    let status = if is_true { "True" } else { "False" };
    let new = Condition {
        type_: type_.into(),
        status: status.into(),
        reason: reason.into(),
        message: message.into(),
        observed_generation: generation,
        last_transition_time: Time(now),
    };
    match conditions.iter_mut().find(|c| c.type_ == type_) {
        Some(c) if c.status == status => {
            *c = Condition {
                last_transition_time: c.last_transition_time.clone(),
                ..new
            };
        }
        Some(c) => *c = new,
        None => conditions.push(new),
    }
}

/// Derives the conditions from the rest of the status. `replacing` is `Some(reason)` while a
/// failed pod waits for its replacement.
pub fn derive_conditions(status: &mut AiOrbStatus, generation: Option<i64>, replacing: Option<&str>, now: Timestamp) {
    let phase = status.phase.unwrap_or(OrbPhase::Queued);
    let reason = status.termination_reason.map(|r| r.as_str());
    let mut conds = std::mem::take(&mut status.conditions);
    let had_replacing = conds.iter().any(|c| c.type_ == REPLACING);
    let mut set = |t: &str, v: bool, r: &str, m: String| set_condition(&mut conds, t, v, r, m, generation, now);

    match (&status.admitted_at, status.queue_position) {
        (Some(_), _) => set(
            condition::ADMITTED,
            true,
            "Admitted",
            "admitted within the concurrency cap".into(),
        ),
        (None, _) if phase.is_terminal() => set(
            condition::ADMITTED,
            false,
            reason.unwrap_or("Finished"),
            "ended before it was admitted".into(),
        ),
        (None, Some(p)) => set(
            condition::ADMITTED,
            false,
            "Queued",
            format!("waiting for capacity, position {p}"),
        ),
        (None, None) => set(condition::ADMITTED, false, "Queued", "waiting for admission".into()),
    }
    if status.admitted_at.is_some() {
        match &status.node_name {
            Some(node) => set(
                condition::POD_SCHEDULED,
                true,
                "Scheduled",
                format!("running on {node}"),
            ),
            None => set(
                condition::POD_SCHEDULED,
                false,
                "Pending",
                "the orb's pod is not scheduled yet".into(),
            ),
        }
    }
    match phase {
        OrbPhase::Ready => set(condition::READY, true, "PodReady", "the orb has joined its room".into()),
        p => set(
            condition::READY,
            false,
            reason.unwrap_or(p.as_str()),
            status.message.clone().unwrap_or_default(),
        ),
    }
    let in_progress =
        matches!(phase, OrbPhase::Queued | OrbPhase::Starting | OrbPhase::Terminating) || replacing.is_some();
    set(condition::RECONCILING, in_progress, phase.as_str(), String::new());
    let stalled = phase == OrbPhase::Failed;
    set(
        condition::STALLED,
        stalled,
        if stalled {
            reason.unwrap_or("Failed")
        } else {
            "AsExpected"
        },
        String::new(),
    );
    match replacing {
        Some(r) => set(REPLACING, true, r, status.message.clone().unwrap_or_default()),
        None if had_replacing => set(REPLACING, false, "Replaced", String::new()),
        None => {}
    }
    status.conditions = conds;
    status.observed_generation = generation;
}

/// The server-side apply body for the status subresource. `resourceVersion` makes it a
/// precondition: a status computed from a stale read is refused (409) instead of undoing a newer
/// write such as an admission.
pub fn status_apply_body(orb: &AiOrb, status: &AiOrbStatus) -> serde_json::Value {
    json!({
        "apiVersion": "hybridcoach.io/v1alpha1",
        "kind": "AiOrb",
        "metadata": { "name": orb.metadata.name, "resourceVersion": orb.metadata.resource_version },
        "status": status,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use orb_api::{AiOrbSpec, TerminationReason};

    fn t(s: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + s).unwrap()
    }

    #[test]
    fn unchanged_conditions_keep_their_transition_time_so_status_compares_equal() {
        let mut s = AiOrbStatus {
            phase: Some(OrbPhase::Starting),
            admitted_at: Some(Time(t(0))),
            ..Default::default()
        };
        derive_conditions(&mut s, Some(1), None, t(1));
        let first = s.clone();
        derive_conditions(&mut s, Some(1), None, t(50));
        assert_eq!(s, first);
        s.phase = Some(OrbPhase::Ready);
        derive_conditions(&mut s, Some(1), None, t(60));
        let ready = condition_status(&s, condition::READY).unwrap();
        assert_eq!((ready.status.as_str(), ready.last_transition_time.0), ("True", t(60)));
    }

    #[test]
    fn kstatus_conditions_follow_the_phase() {
        let mut s = AiOrbStatus {
            phase: Some(OrbPhase::Queued),
            queue_position: Some(3),
            ..Default::default()
        };
        derive_conditions(&mut s, Some(1), None, t(0));
        assert_eq!(condition_status(&s, condition::RECONCILING).unwrap().status, "True");
        assert!(
            condition_status(&s, condition::ADMITTED)
                .unwrap()
                .message
                .contains("position 3")
        );
        s.phase = Some(OrbPhase::Failed);
        s.termination_reason = Some(TerminationReason::InvalidSpec);
        derive_conditions(&mut s, Some(1), None, t(1));
        assert_eq!(condition_status(&s, condition::STALLED).unwrap().status, "True");
        assert_eq!(condition_status(&s, condition::STALLED).unwrap().reason, "InvalidSpec");
        assert_eq!(condition_status(&s, condition::RECONCILING).unwrap().status, "False");
    }

    #[test]
    fn replacing_marks_the_failure_time_once() {
        let mut s = AiOrbStatus {
            phase: Some(OrbPhase::Starting),
            admitted_at: Some(Time(t(0))),
            ..Default::default()
        };
        derive_conditions(&mut s, None, Some("Error"), t(10));
        derive_conditions(&mut s, None, Some("Error"), t(20));
        assert_eq!(failed_since(&s), Some(t(10)));
        derive_conditions(&mut s, None, None, t(30));
        assert_eq!(failed_since(&s), None);
    }

    #[test]
    fn operator_status_never_carries_signalings_fields() {
        let mut orb = AiOrb::new("r", AiOrbSpec::default());
        orb.status = Some(AiOrbStatus {
            participants: Some(2),
            last_activity_time: Some(Time(t(0))),
            summary: Some(serde_json::from_value(json!({"id": "s1", "state": "Pending", "attempts": 1})).unwrap()),
            ..Default::default()
        });
        let s = operator_status(&orb);
        assert_eq!(
            (s.participants, &s.last_activity_time, &s.summary),
            (None, &None, &None)
        );
        let body = status_apply_body(&orb, &s);
        assert!(body["status"].get("participants").is_none());
        assert!(body["status"].get("summary").is_none());
    }
}
