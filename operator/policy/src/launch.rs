//! How one attempt of an orb is launched, whatever runs it: the operator's pod and the local
//! runtime's process get the same arguments from here, so the orb's own timers (idle timeout,
//! what is left of the session's lifetime) are the ones the policy enforces.

use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use orb_api::AiOrbSpec;

use super::{OrbClock, OrbLimits, lifetime_left};

/// The orb's command line for one attempt and what is left of its lifetime.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Launch {
    pub args: Vec<String>,
    pub lifetime_left: Duration,
}

/// The launch of an orb at `now`, joining the room through `signaling_url`.
pub fn launch(spec: &AiOrbSpec, limits: &OrbLimits, clock: &OrbClock, now: Timestamp, signaling_url: &str) -> Launch {
    let left = lifetime_left(clock, limits, now);
    let mut args = vec![
        format!("--room={}", spec.room_id),
        format!("--signaling-url={signaling_url}"),
    ];
    for (flag, value) in [
        ("session", &spec.session_id),
        ("coach", &spec.coach_id),
        ("client", &spec.client_id),
    ] {
        if let Some(v) = value {
            args.push(format!("--{flag}={v}"));
        }
    }
    args.push(format!("--max-lifetime={}s", left.as_secs().max(1)));
    // Always the effective value: the orb's idle timer and its activity reports follow it.
    args.push(format!("--idle-timeout={}s", limits.idle_timeout.as_secs().max(1)));
    if spec.test_mode {
        args.push("--test-mode".into());
    }
    Launch {
        args,
        lifetime_left: left,
    }
}
