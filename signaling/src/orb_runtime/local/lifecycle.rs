//! The operator's part of the local runtime: admission under the cap and one `decide` step per
//! orb, both by the policy crate's functions, and telling the rooms what their orb is doing.

use super::*;

/// The namespace the local runtime's sessions are keyed in: it has one.
const SESSION_NAMESPACE: &str = "local";

impl State {
    pub(super) fn admit(&mut self, now: Timestamp) {
        self.sessions = policy::prune_sessions(&self.sessions, now, &self.settings.limits);
        let entries: Vec<AdmissionEntry> = self
            .orbs
            .values()
            .map(|o| AdmissionEntry {
                uid: o.uid.clone(),
                key: format!("local/{}", o.uid),
                created: o.created,
                phase: o.phase,
                admitted: o.admitted_at.is_some(),
                deleting: false,
                valid: policy::validate_spec(&o.spec).is_ok(),
                scheduled: false,
            })
            .collect();
        let ledger: BTreeSet<String> = self
            .orbs
            .values()
            .filter(|o| o.admitted_at.is_some() && !o.phase.is_some_and(OrbPhase::is_terminal))
            .map(|o| o.uid.clone())
            .collect();
        let plan = policy::plan_admission(&entries, &ledger, self.settings.limits.max_concurrent_orbs);
        for uid in &plan.admit {
            let Some(orb) = self.orbs.get_mut(uid) else { continue };
            if orb.admitted_at.is_none() {
                orb.admitted_at = Some(now);
                let key = policy::session_key(SESSION_NAMESPACE, &orb.spec);
                orb.session_started_at = Some(policy::session_start(&mut self.sessions, &key, now, None));
                orb.phase = Some(OrbPhase::Starting);
                orb.queue_position = None;
                let room = orb.spec.room_id.clone();
                self.note(&room, "orb admitted");
            }
        }
        for (uid, position) in &plan.queue {
            let Some(orb) = self.orbs.get_mut(uid) else { continue };
            let was = orb.queue_position.replace(*position);
            orb.phase = Some(OrbPhase::Queued);
            if was.is_none() {
                let room = orb.spec.room_id.clone();
                let cap = self.settings.limits.max_concurrent_orbs;
                self.note(
                    &room,
                    &format!("orb queued at position {position}: {cap} orbs are running"),
                );
            }
        }
    }

    /// One `decide` step for the orb; true when it finished (capacity may have freed).
    pub(super) fn step(&mut self, uid: &str, now: Timestamp) -> bool {
        let limits = self.settings.limits.clone();
        let Some(orb) = self.orbs.get(uid) else { return false };
        let presence = self.presence.get(&orb.spec.room_id);
        let view = OrbView {
            phase: orb.phase,
            clock: OrbClock {
                created: orb.created,
                admitted_at: orb.admitted_at,
                session_started_at: orb.session_started_at,
                participants: presence.map(|p| p.humans as i32),
                last_activity: presence.map(|p| timestamp(p.last_activity)),
                start_at: None,
            },
            finished_at: orb.finished_at,
            has_pod: orb.proc.is_some(),
            restarts: orb.restarts,
            termination_reason: orb.reason,
            failed_since: orb.failed_since,
            invalid: policy::validate_spec(&orb.spec).err().map(|e| e.to_string()),
        };
        let pod = orb.pod_state();
        let orb_limits = policy::orb_limits(&orb.spec, &limits);
        let decision = policy::decide(&view, &pod, &orb_limits, &limits, now);
        let room = orb.spec.room_id.clone();
        let mut finished = false;
        match decision.step {
            Step::Wait => {}
            Step::Track => {
                let phase = policy::tracked_phase(&pod);
                let orb = self.orbs.get_mut(uid).expect("present");
                if orb.phase != Some(phase) {
                    orb.phase = Some(phase);
                    if phase == OrbPhase::Ready {
                        self.note(&room, "orb ready: it joined the room");
                    }
                }
            }
            Step::CreatePod { attempt } => {
                if !self.bind_warm(uid, attempt, &view.clock, now, &orb_limits) {
                    self.spawn(uid, attempt, &view.clock, now, &orb_limits);
                }
                self.orbs.get_mut(uid).expect("present").phase = Some(OrbPhase::Starting);
            }
            Step::Terminate { reason } => {
                let orb = self.orbs.get_mut(uid).expect("present");
                if orb.phase != Some(OrbPhase::Terminating) {
                    orb.phase = Some(OrbPhase::Terminating);
                    orb.reason = Some(reason);
                }
                let signalled = orb.proc.as_mut().is_some_and(Proc::request_stop);
                if signalled {
                    self.note(
                        &room,
                        &format!("terminating the orb: {reason} (SIGTERM, SIGKILL after {TERMINATION_GRACE_SECONDS}s)"),
                    );
                }
            }
            Step::Finish { phase, reason, message } => {
                let orb = self.orbs.get_mut(uid).expect("present");
                policy::end_session(&mut self.sessions, SESSION_NAMESPACE, &orb.spec, reason);
                orb.phase = Some(phase);
                orb.reason = Some(reason);
                orb.finished_at = Some(now);
                orb.queue_position = None;
                let detail = message.map(|m| format!(" ({m})")).unwrap_or_default();
                self.note(&room, &format!("orb ended: {phase} {reason}{detail}"));
                self.events.gone(&room, None, format!("{phase} {reason}{detail}"));
                finished = true;
            }
            Step::AwaitReplacement { reason, message } => {
                let orb = self.orbs.get_mut(uid).expect("present");
                if orb.failed_since.is_none() {
                    orb.failed_since = Some(now);
                    let detail = message.unwrap_or_default();
                    self.note(
                        &room,
                        &format!("orb failed ({reason}: {detail}); replacing it after a backoff"),
                    );
                }
            }
            Step::Replace { attempt } => {
                {
                    let orb = self.orbs.get_mut(uid).expect("present");
                    orb.restarts = attempt;
                    orb.failed_since = None;
                    orb.phase = Some(OrbPhase::Starting);
                }
                self.note(&room, &format!("replacement {attempt} of the failed orb"));
                if !self.bind_warm(uid, attempt, &view.clock, now, &orb_limits) {
                    self.spawn(uid, attempt, &view.clock, now, &orb_limits);
                }
            }
            Step::Expire => {
                self.orbs.remove(uid);
                return false;
            }
        }
        if let Some(orb) = self.orbs.get_mut(uid) {
            orb.requeue_at = decision.requeue_at;
        }
        finished
    }

    /// Sends each room the status of its orb when it changed.
    pub(super) fn report(&mut self) {
        for orb in self.orbs.values_mut() {
            let status = ai_status_for(orb.phase);
            if orb.reported != Some(status) {
                orb.reported = Some(status);
                self.events.status(&orb.spec.room_id, status);
            }
        }
    }
}
