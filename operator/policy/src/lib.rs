//! The rules of an orb's life as pure functions: who is admitted, which deadline fires, what a pod's
//! state means, whether a failed pod is replaced. No I/O and no clock: callers pass `now`. The
//! operator's reconciler and admitter use these, and so does the local dev runtime, so every
//! runtime enforces one implementation of the rules.

mod admission;
mod deadlines;
mod decide;
mod launch;
mod pod;
mod pool;
mod session;

pub use admission::{
    AdmissionEntry, AdmissionPlan, admission_due, arrival_needs_pass, holders_to_read_back, plan_admission,
    shown_position,
};
pub use deadlines::*;
pub use decide::*;
pub use launch::{Launch, launch};
pub use pod::{PodState, observe_pod, restart_backoff};
pub use pool::{PoolPlan, WARM_STARTUP_LIMIT, WarmOrb, pick_warm, plan_pool, warm_target};
pub use session::{
    SessionBudgets, budget_start, end_session, ends_call, parse_sessions, prune_sessions, render_sessions, retention,
    session_key, session_start,
};

use std::time::Duration;

use orb_api::duration::after;
use orb_api::{AiOrbSpec, MAX_DURATION_SECONDS, MAX_ID_CHARS, MAX_PURPOSE_CHARS, naming};

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
    /// A pod still there this long after its grace period ended (its node is lost, its kubelet
    /// gone) no longer holds its orb's slot: the orb ends `Failed`/`PodLost`.
    pub stuck_pod_margin: Duration,
    /// An orb with `spec.startAt` is admitted this long before it.
    pub prewarm_lead: Duration,
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
            stuck_pod_margin: Duration::from_secs(120),
            prewarm_lead: Duration::from_secs(120),
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
        // Characters, as the schema counts them: ids and free text are often not ASCII.
        if value.as_ref().is_some_and(|v| v.chars().count() > MAX_ID_CHARS) {
            return Err(SpecError::TooLong {
                field,
                max: MAX_ID_CHARS,
            });
        }
    }
    if spec
        .purpose
        .as_ref()
        .is_some_and(|p| p.chars().count() > MAX_PURPOSE_CHARS)
    {
        return Err(SpecError::TooLong {
            field: "spec.purpose",
            max: MAX_PURPOSE_CHARS,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests;
