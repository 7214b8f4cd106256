//! How one attempt of an orb is launched, whatever runs it: the operator's pod and the local
//! runtime's process get the same arguments from here, so the orb's own timers (idle timeout,
//! what is left of the session's lifetime) are the ones the policy enforces.

use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use orb_api::AiOrbSpec;
use orb_api::assignment::Assignment;

use super::{OrbClock, OrbLimits, lifetime_left};

/// The orb's command line for one attempt, the same facts as a warm orb's assignment, and what
/// is left of its lifetime.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Launch {
    pub args: Vec<String>,
    /// What a warm orb is told instead of `args` (without its token, minted by the caller).
    pub assignment: Assignment,
    pub lifetime_left: Duration,
}

/// The launch of an orb at `now`, joining the room through `signaling_url`.
pub fn launch(spec: &AiOrbSpec, limits: &OrbLimits, clock: &OrbClock, now: Timestamp, signaling_url: &str) -> Launch {
    let left = lifetime_left(clock, limits, now);
    let assignment = Assignment {
        room: spec.room_id.clone(),
        session: spec.session_id.clone(),
        coach: spec.coach_id.clone(),
        client: spec.client_id.clone(),
        purpose: spec.purpose.clone(),
        max_lifetime_seconds: left.as_secs().max(1),
        // Always the effective value: the orb's idle timer and its activity reports follow it.
        idle_timeout_seconds: limits.idle_timeout.as_secs().max(1),
        signaling_url: signaling_url.to_owned(),
        token: None,
    };
    let mut args = assignment.args();
    if spec.test_mode {
        args.push("--test-mode".into());
    }
    Launch {
        args,
        assignment,
        lifetime_left: left,
    }
}
