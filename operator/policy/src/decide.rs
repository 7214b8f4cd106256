//! The next step of an orb, from its view and its pod.

use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use orb_api::{OrbPhase, TerminationReason};

use super::*;

/// Everything [`decide`] reads of an AiOrb.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OrbView {
    pub phase: Option<OrbPhase>,
    pub clock: OrbClock,
    pub finished_at: Option<Timestamp>,
    /// A pod was created for the current attempt.
    pub has_pod: bool,
    pub restarts: i32,
    pub termination_reason: Option<TerminationReason>,
    /// Set while a failed pod waits for its replacement: since when.
    pub failed_since: Option<Timestamp>,
    pub invalid: Option<String>,
}

/// One step of an orb's life. The reconciler performs it, then writes status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Nothing to do now (queued orbs wait for the admitter).
    Wait,
    /// Create the pod for this attempt.
    CreatePod { attempt: i32 },
    /// Mirror the running pod into status.
    Track,
    /// Stop the orb: phase `Terminating`, pod deleted with its grace period.
    Terminate { reason: TerminationReason },
    /// Record the end.
    Finish {
        phase: OrbPhase,
        reason: TerminationReason,
        message: Option<String>,
    },
    /// The pod failed and will be replaced after the backoff: record the failure.
    AwaitReplacement {
        reason: TerminationReason,
        message: Option<String>,
    },
    /// Replace the failed pod with attempt `attempt`.
    Replace { attempt: i32 },
    /// The finished orb's TTL passed: delete the AiOrb.
    Expire,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    pub step: Step,
    /// When to look again even if nothing changes.
    pub requeue_at: Option<Timestamp>,
}

impl Decision {
    fn at(step: Step, requeue_at: Option<Timestamp>) -> Self {
        Self { step, requeue_at }
    }
}

/// Decides the orb's next step from its view and its pod.
pub fn decide(view: &OrbView, pod: &PodState, orb_limits: &OrbLimits, limits: &Limits, now: Timestamp) -> Decision {
    let mut decision = decide_step(view, pod, orb_limits, limits, now);
    // A finished orb comes back when its TTL expires, to be deleted.
    if matches!(decision.step, Step::Finish { .. }) {
        decision.requeue_at = Some(after(now, limits.finished_orb_ttl));
    }
    decision
}

fn decide_step(view: &OrbView, pod: &PodState, orb_limits: &OrbLimits, limits: &Limits, now: Timestamp) -> Decision {
    if view.phase.is_some_and(OrbPhase::is_terminal) {
        let expire_at = after(view.finished_at.unwrap_or(now), limits.finished_orb_ttl);
        return if now >= expire_at {
            Decision::at(Step::Expire, None)
        } else {
            Decision::at(Step::Wait, Some(expire_at))
        };
    }
    if let Some(problem) = &view.invalid {
        let message = Some(problem.clone());
        return Decision::at(
            Step::Finish {
                phase: OrbPhase::Failed,
                reason: TerminationReason::InvalidSpec,
                message,
            },
            None,
        );
    }
    let deadlines = deadlines(&view.clock, orb_limits);
    let next = next_deadline(&deadlines, now);
    let due = due_deadline(&deadlines, now);

    if view.phase == Some(OrbPhase::Terminating) {
        let reason = view.termination_reason.unwrap_or(TerminationReason::Error);
        return match pod {
            PodState::Missing | PodState::Succeeded { .. } | PodState::Failed { .. } => Decision::at(
                Step::Finish {
                    phase: OrbPhase::Succeeded,
                    reason,
                    message: pod_message(pod),
                },
                None,
            ),
            // Stuck past its grace (a lost node): the slot is released, the orb recorded PodLost.
            PodState::Deleting {
                grace_ends: Some(grace_ends),
            } if now >= after(*grace_ends, limits.stuck_pod_margin) => Decision::at(
                Step::Finish {
                    phase: OrbPhase::Failed,
                    reason: TerminationReason::PodLost,
                    message: Some(format!(
                        "the pod is still terminating {}s after its grace period (lost node?); its slot is released",
                        limits.stuck_pod_margin.as_secs()
                    )),
                },
                None,
            ),
            // Ask again: the delete is idempotent, and a watch event on the pod wakes us first.
            _ => {
                let stuck_at = match pod {
                    PodState::Deleting {
                        grace_ends: Some(grace_ends),
                    } => Some(after(*grace_ends, limits.stuck_pod_margin)),
                    _ => None,
                };
                let again = after(now, Duration::from_secs(15));
                Decision::at(
                    Step::Terminate { reason },
                    Some(stuck_at.map_or(again, |s| s.min(again))),
                )
            }
        };
    }

    if view.clock.admitted_at.is_none() {
        return match due {
            Some(d) => Decision::at(
                Step::Finish {
                    phase: OrbPhase::Succeeded,
                    reason: d.reason,
                    message: None,
                },
                None,
            ),
            None => Decision::at(Step::Wait, next),
        };
    }

    match pod {
        PodState::Succeeded { message } => {
            let reason = message
                .as_deref()
                .and_then(TerminationReason::from_termination_message)
                .unwrap_or(TerminationReason::SessionComplete);
            Decision::at(
                Step::Finish {
                    phase: OrbPhase::Succeeded,
                    reason,
                    message: message.clone(),
                },
                None,
            )
        }
        // The kubelet enforced activeDeadlineSeconds, our backstop for the lifetime.
        PodState::Failed {
            reason: Some(r),
            message,
        } if r == "DeadlineExceeded" => Decision::at(
            Step::Finish {
                phase: OrbPhase::Succeeded,
                reason: TerminationReason::MaxLifetime,
                message: message.clone(),
            },
            None,
        ),
        PodState::Failed { .. } | PodState::Missing if view.has_pod => {
            let reason = if matches!(pod, PodState::Missing) {
                TerminationReason::PodLost
            } else {
                TerminationReason::Error
            };
            let message = pod_message(pod);
            let occupied = view.clock.participants.is_none_or(|p| p > 0);
            if due.is_some() || !occupied || view.restarts >= limits.max_restarts {
                return Decision::at(
                    Step::Finish {
                        phase: OrbPhase::Failed,
                        reason,
                        message,
                    },
                    None,
                );
            }
            match view.failed_since {
                None => {
                    let at = after(now, restart_backoff(view.restarts, limits));
                    Decision::at(Step::AwaitReplacement { reason, message }, Some(at))
                }
                Some(since) => {
                    let at = after(since, restart_backoff(view.restarts, limits));
                    if now >= at {
                        Decision::at(
                            Step::Replace {
                                attempt: view.restarts + 1,
                            },
                            next,
                        )
                    } else {
                        Decision::at(Step::Wait, Some(next.map_or(at, |n| n.min(at))))
                    }
                }
            }
        }
        _ => match due {
            Some(d) => Decision::at(
                Step::Terminate { reason: d.reason },
                Some(after(now, Duration::from_secs(15))),
            ),
            None if matches!(pod, PodState::Missing) => Decision::at(Step::CreatePod { attempt: view.restarts }, next),
            None => Decision::at(Step::Track, next),
        },
    }
}

fn pod_message(pod: &PodState) -> Option<String> {
    match pod {
        PodState::Succeeded { message } | PodState::Failed { message, .. } => message.clone(),
        PodState::Missing => Some("the orb's pod disappeared".into()),
        _ => None,
    }
}

/// The phase the orb shows while its pod is in `pod` (for [`Step::Track`] and friends).
pub fn tracked_phase(pod: &PodState) -> OrbPhase {
    match pod {
        PodState::Running { ready: true, .. } => OrbPhase::Ready,
        _ => OrbPhase::Starting,
    }
}
