//! Deadlines: the lifetime (the session's), the empty-room grace and the idle timeout, and which
//! fires first.

use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use orb_api::{AiOrbSpec, TerminationReason};

use super::{OrbLimits, TERMINATION_GRACE_SECONDS, after};

/// The times an orb's deadlines count from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OrbClock {
    pub created: Timestamp,
    pub admitted_at: Option<Timestamp>,
    /// When the session's lifetime budget started (see [`session`]: a prewarmed orb's booked start at
    /// the earliest); `admitted_at` when unset.
    pub session_started_at: Option<Timestamp>,
    /// Humans in the room as signaling reported; `None` before its first report.
    pub participants: Option<i32>,
    pub last_activity: Option<Timestamp>,
    /// The booked start (`spec.startAt`) of a prewarmed orb.
    pub start_at: Option<Timestamp>,
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

/// The room token of an orb: its room only, role `ai`, naming its AiOrb (`orb_uid`), valid for
/// what is left of its lifetime plus the grace period to say goodbye.
pub fn orb_token_claims(
    spec: &AiOrbSpec,
    orb_name: &str,
    orb_uid: &str,
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
        iat: now.as_second().max(0) as u64,
        aud: orb_api::auth::ROOM_TOKEN_AUDIENCE.into(),
        orb: Some(orb_uid.to_owned()),
    }
}

/// Every deadline that applies to the orb now. The lifetime counts from the session's budget
/// start ([`lifetime_ends`]); the empty-room grace from the last activity (a leave is activity)
/// while the room is empty; the idle timeout from the last activity — voice the orb heard or
/// produced, a join or a leave — or from admission (creation while queued) if there was none.
/// A prewarmed orb is in its room before anyone: both count from its booked start at the
/// earliest, and its room counts as empty until signaling reports someone.
pub fn deadlines(clock: &OrbClock, limits: &OrbLimits) -> Vec<Deadline> {
    let mut out = Vec::with_capacity(3);
    if let Some(at) = lifetime_ends(clock, limits) {
        out.push(Deadline {
            reason: TerminationReason::MaxLifetime,
            at,
        });
    }
    let since = clock.admitted_at.unwrap_or(clock.created);
    let since = clock.start_at.map_or(since, |start| start.max(since));
    let activity = clock.last_activity.map_or(since, |a| a.max(since));
    let empty = match clock.participants {
        Some(n) => n == 0,
        None => clock.start_at.is_some(),
    };
    if empty {
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
