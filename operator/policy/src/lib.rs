//! The rules of an orb's life as pure functions: who is admitted, which deadline fires, what a pod's
//! state means, whether a failed pod is replaced. No I/O and no clock: callers pass `now`. The
//! operator's reconciler and admitter use these, and so does the local dev runtime, so every
//! runtime enforces one implementation of the rules.

mod launch;
mod session;

pub use launch::{Launch, launch};
pub use session::{
    SessionBudgets, parse_sessions, prune_sessions, render_sessions, retention, session_key, session_start,
};

use std::collections::BTreeSet;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use orb_api::{AiOrbSpec, MAX_DURATION_SECONDS, OrbPhase, TerminationReason, naming};

/// The seed's force-kill after 10 s: the orb gets this long to say goodbye on SIGTERM.
pub const TERMINATION_GRACE_SECONDS: i64 = 10;

/// The limits every orb runs under. Defaults are the seed's values.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Admitted, non-terminal orbs at most (seed `MAX_CONCURRENT_ORBS`).
    pub max_concurrent_orbs: usize,
    /// Default lifetime from admission (seed `MAX_ORB_LIFETIME`, 2 h).
    pub max_orb_lifetime: Duration,
    /// Default idle timeout (seed `IDLE_TIMEOUT`, 5 min).
    pub idle_timeout: Duration,
    /// Default grace before an empty room's orb ends (seed: 1 min).
    pub empty_room_grace: Duration,
    /// Lifetime cap in test mode (seed `testModeTimeout`, 30 s).
    pub test_mode_timeout: Duration,
    /// How long a finished AiOrb is kept before it is deleted.
    pub finished_orb_ttl: Duration,
    /// How many times a failed pod is replaced while its room is occupied.
    pub max_restarts: i32,
    /// First replacement delay; doubles with each restart, capped by `max_restart_backoff`.
    pub restart_backoff: Duration,
    pub max_restart_backoff: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_concurrent_orbs: 8,
            max_orb_lifetime: Duration::from_secs(2 * 3600),
            idle_timeout: Duration::from_secs(5 * 60),
            empty_room_grace: Duration::from_secs(60),
            test_mode_timeout: Duration::from_secs(30),
            finished_orb_ttl: Duration::from_secs(3600),
            max_restarts: 3,
            restart_backoff: Duration::from_secs(10),
            max_restart_backoff: Duration::from_secs(300),
        }
    }
}

/// The limits that apply to one orb: its spec's values, else the defaults; test mode caps the
/// lifetime.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OrbLimits {
    pub lifetime: Duration,
    pub idle_timeout: Duration,
    pub empty_room_grace: Duration,
}

pub fn orb_limits(spec: &AiOrbSpec, limits: &Limits) -> OrbLimits {
    let secs = |v: Option<i64>, default: Duration| v.map_or(default, |s| Duration::from_secs(s.max(0) as u64));
    let mut lifetime = secs(spec.max_lifetime_seconds, limits.max_orb_lifetime);
    if spec.test_mode {
        lifetime = lifetime.min(limits.test_mode_timeout);
    }
    OrbLimits {
        lifetime,
        idle_timeout: secs(spec.idle_timeout_seconds, limits.idle_timeout),
        empty_room_grace: secs(spec.empty_room_grace_seconds, limits.empty_room_grace),
    }
}

/// Why a spec is invalid; the message names the field, for `status.message` and the event.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    #[error("spec.roomId: {0}")]
    RoomId(String),
    #[error("{field}: {value} is outside {min}..={max}")]
    OutOfRange {
        field: &'static str,
        value: i64,
        min: i64,
        max: i64,
    },
    #[error("{field}: longer than {max} characters")]
    TooLong { field: &'static str, max: usize },
}

/// The longest session, coach and client id accepted (the CRD schema's limit).
pub const MAX_ID_LEN: usize = 256;

/// What the schema enforces, checked again: an AiOrb can reach the operator without the schema
/// (an older CRD, a bypassing client), and a bad spec must end as `Failed/InvalidSpec`, not a crash.
pub fn validate_spec(spec: &AiOrbSpec) -> Result<(), SpecError> {
    naming::validate_room_id(&spec.room_id).map_err(|e| SpecError::RoomId(e.to_string()))?;
    let checks = [
        ("spec.maxLifetimeSeconds", spec.max_lifetime_seconds, 1),
        ("spec.idleTimeoutSeconds", spec.idle_timeout_seconds, 1),
        ("spec.emptyRoomGraceSeconds", spec.empty_room_grace_seconds, 0),
    ];
    for (field, value, min) in checks {
        if let Some(v) = value
            && !(min..=MAX_DURATION_SECONDS).contains(&v)
        {
            return Err(SpecError::OutOfRange {
                field,
                value: v,
                min,
                max: MAX_DURATION_SECONDS,
            });
        }
    }
    for (field, value) in [
        ("spec.sessionId", &spec.session_id),
        ("spec.coachId", &spec.coach_id),
        ("spec.clientId", &spec.client_id),
    ] {
        if value.as_ref().is_some_and(|v| v.len() > MAX_ID_LEN) {
            return Err(SpecError::TooLong { field, max: MAX_ID_LEN });
        }
    }
    Ok(())
}

fn after(t: Timestamp, d: Duration) -> Timestamp {
    t.checked_add(SignedDuration::try_from(d).unwrap_or(SignedDuration::MAX))
        .unwrap_or(Timestamp::MAX)
}

// ------------------------------------------------------------------------------------------------
// Admission
// ------------------------------------------------------------------------------------------------

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

/// Admits the oldest waiting orbs into free capacity. Capacity is held by every non-terminal orb
/// that is admitted by status or by the ledger, including one that is terminating or being deleted
/// (its pod still holds a GPU). Anything counted twice errs towards admitting fewer, never more.
pub fn plan_admission(orbs: &[AdmissionEntry], ledger: &BTreeSet<String>, cap: usize) -> AdmissionPlan {
    let live = |o: &&AdmissionEntry| !o.phase.is_some_and(OrbPhase::is_terminal);
    let holding: Vec<&AdmissionEntry> = orbs
        .iter()
        .filter(live)
        .filter(|o| o.admitted || ledger.contains(&o.uid))
        .collect();
    let mut plan = AdmissionPlan {
        ledger: holding.iter().map(|o| o.uid.clone()).collect(),
        ..Default::default()
    };
    let mut unfinished: Vec<&AdmissionEntry> = holding.iter().copied().filter(|o| !o.admitted).collect();
    unfinished.sort_by(|a, b| (a.created, &a.key).cmp(&(b.created, &b.key)));
    plan.admit.extend(unfinished.iter().map(|o| o.uid.clone()));

    let mut waiting: Vec<&AdmissionEntry> = orbs
        .iter()
        .filter(live)
        .filter(|o| !o.admitted && !ledger.contains(&o.uid) && !o.deleting && o.valid)
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

// ------------------------------------------------------------------------------------------------
// Deadlines
// ------------------------------------------------------------------------------------------------

/// The times an orb's deadlines count from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OrbClock {
    pub created: Timestamp,
    pub admitted_at: Option<Timestamp>,
    /// When the session's lifetime budget started (see [`session`]); `admitted_at` when unset.
    pub session_started_at: Option<Timestamp>,
    /// Humans in the room as signaling reported; `None` before its first report.
    pub participants: Option<i32>,
    pub last_activity: Option<Timestamp>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Deadline {
    pub reason: TerminationReason,
    pub at: Timestamp,
}

/// When the orb's lifetime ends: the session's budget start (else its admission) plus the
/// lifetime. `None` before admission.
pub fn lifetime_ends(clock: &OrbClock, limits: &OrbLimits) -> Option<Timestamp> {
    let start = clock.session_started_at.or(clock.admitted_at)?;
    Some(after(start, limits.lifetime))
}

/// What is left of the lifetime at `now`, at least a second (a pod's arguments and its
/// `activeDeadlineSeconds` need a positive value; an exhausted budget ends the orb anyway).
pub fn lifetime_left(clock: &OrbClock, limits: &OrbLimits, now: Timestamp) -> Duration {
    let ends = lifetime_ends(clock, limits).unwrap_or_else(|| after(now, limits.lifetime));
    Duration::try_from(now.duration_until(ends))
        .unwrap_or(Duration::ZERO)
        .max(Duration::from_secs(1))
}

/// The room token of an orb: its room only, role `ai`, valid for what is left of its lifetime plus
/// the grace period to say goodbye.
pub fn orb_token_claims(
    spec: &AiOrbSpec,
    orb_name: &str,
    clock: &OrbClock,
    limits: &OrbLimits,
    now: Timestamp,
) -> orb_api::auth::RoomClaims {
    let ends = lifetime_ends(clock, limits).unwrap_or_else(|| after(now, limits.lifetime));
    orb_api::auth::RoomClaims {
        room: spec.room_id.clone(),
        sub: format!("ai-orb-{orb_name}"),
        role: orb_api::auth::Role::Ai,
        exp: (ends.as_second() + TERMINATION_GRACE_SECONDS + 60).max(0) as u64,
        session: spec.session_id.clone(),
    }
}

/// Every deadline that applies to the orb now. The lifetime counts from the session's budget
/// start ([`lifetime_ends`]); the empty-room grace from the last activity (a leave is activity)
/// while the room is empty; the idle timeout from the last activity — voice the orb heard or
/// produced, a join or a leave — or from admission (creation while queued) if there was none.
pub fn deadlines(clock: &OrbClock, limits: &OrbLimits) -> Vec<Deadline> {
    let mut out = Vec::with_capacity(3);
    if let Some(at) = lifetime_ends(clock, limits) {
        out.push(Deadline {
            reason: TerminationReason::MaxLifetime,
            at,
        });
    }
    let since = clock.admitted_at.unwrap_or(clock.created);
    let activity = clock.last_activity.map_or(since, |a| a.max(since));
    if clock.participants == Some(0) {
        out.push(Deadline {
            reason: TerminationReason::RoomCleanup,
            at: after(activity, limits.empty_room_grace),
        });
    }
    out.push(Deadline {
        reason: TerminationReason::IdleTimeout,
        at: after(activity, limits.idle_timeout),
    });
    out
}

/// Ranks reasons when deadlines fall at the same instant: the hard limit first.
fn precedence(reason: TerminationReason) -> u8 {
    match reason {
        TerminationReason::MaxLifetime => 0,
        TerminationReason::RoomCleanup => 1,
        _ => 2,
    }
}

/// The deadline that fired first, if any is due at `now`.
pub fn due_deadline(deadlines: &[Deadline], now: Timestamp) -> Option<Deadline> {
    deadlines
        .iter()
        .filter(|d| d.at <= now)
        .min_by_key(|d| (d.at, precedence(d.reason)))
        .copied()
}

/// The nearest deadline still in the future: when the reconciler must look again.
pub fn next_deadline(deadlines: &[Deadline], now: Timestamp) -> Option<Timestamp> {
    deadlines.iter().map(|d| d.at).filter(|at| *at > now).min()
}

// ------------------------------------------------------------------------------------------------
// Pods
// ------------------------------------------------------------------------------------------------

/// What the orb's pod is doing, reduced to what the lifecycle cares about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PodState {
    /// No such pod (never created, or deleted underneath).
    Missing,
    Pending {
        node: Option<String>,
    },
    Running {
        ready: bool,
        node: Option<String>,
    },
    /// Being deleted; `finished` once its container has stopped.
    Deleting,
    Succeeded {
        message: Option<String>,
    },
    Failed {
        reason: Option<String>,
        message: Option<String>,
    },
}

pub fn observe_pod(pod: Option<&Pod>) -> PodState {
    let Some(pod) = pod else { return PodState::Missing };
    let status = pod.status.as_ref();
    let phase = status.and_then(|s| s.phase.as_deref()).unwrap_or("Pending");
    let node = pod.spec.as_ref().and_then(|s| s.node_name.clone());
    let message = status.and_then(termination_message);
    match phase {
        "Succeeded" => PodState::Succeeded { message },
        "Failed" => PodState::Failed {
            reason: status.and_then(|s| s.reason.clone()),
            message: message.or_else(|| status.and_then(|s| s.message.clone())),
        },
        _ if pod.metadata.deletion_timestamp.is_some() => PodState::Deleting,
        "Running" => {
            let ready = status
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
            PodState::Running { ready, node }
        }
        _ => PodState::Pending { node },
    }
}

/// The orb container's termination message (the orb writes its end reason there).
fn termination_message(status: &k8s_openapi::api::core::v1::PodStatus) -> Option<String> {
    status
        .container_statuses
        .iter()
        .flatten()
        .filter_map(|c| c.state.as_ref()?.terminated.as_ref()?.message.clone())
        .map(|m| m.trim().to_owned())
        .find(|m| !m.is_empty())
}

/// Delay before replacement number `restarts + 1`.
pub fn restart_backoff(restarts: i32, limits: &Limits) -> Duration {
    let factor = 1u32.checked_shl(restarts.clamp(0, 16) as u32).unwrap_or(u32::MAX);
    limits
        .restart_backoff
        .saturating_mul(factor)
        .min(limits.max_restart_backoff)
}

// ------------------------------------------------------------------------------------------------
// The next step
// ------------------------------------------------------------------------------------------------

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
            // Ask again: the delete is idempotent, and a watch event on the pod wakes us first.
            _ => Decision::at(Step::Terminate { reason }, Some(after(now, Duration::from_secs(15)))),
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

#[cfg(test)]
mod tests;
