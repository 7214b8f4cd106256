//! The lifetime is a budget of the session, not of one pod or one AiOrb.
//!
//! A session is `spec.sessionId` (the app backend's booking id, from the room token), or the room
//! when there is none, within the AiOrb's namespace. Its budget starts when the first of its
//! AiOrbs is admitted, or at the booked start (`spec.startAt`) of a prewarmed one admitted ahead
//! of it ([`budget_start`]). Every later AiOrb of the session (a page reload, an orb re-created
//! after it ended with `MaxLifetime`, `IdleTimeout` or an error while people were still there)
//! inherits that start, and a replacement pod keeps its AiOrb's. So `maxLifetimeSeconds` bounds
//! the session's wall-clock time with an orb, however it is split.
//!
//! A session keyed by its room is one call: it ends with the call ([`ends_call`]), when an orb of
//! it finished `RoomCleanup` (everyone left for the empty-room grace), `SessionComplete` or
//! `Deleted`. Its budget is then forgotten ([`end_session`]), so the next call in the room (a
//! coach's personal room, reused for the next client) starts a fresh one. A session with an id
//! keeps its budget however its orbs end: the id names the booking, not one call.
//!
//! Budgets are remembered for [`retention`] after they start (twice the default lifetime), then
//! forgotten: the same session id used again after that starts afresh.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use orb_api::{AiOrbSpec, TerminationReason};

use super::{Limits, after};

/// Session budget starts by [`session_key`].
pub type SessionBudgets = BTreeMap<String, Timestamp>;

/// The session id of a spec, if it has one (an empty id is none).
fn session_id(spec: &AiOrbSpec) -> Option<&str> {
    spec.session_id.as_deref().filter(|s| !s.is_empty())
}

/// A short, stable key of the session an AiOrb belongs to (a 64-bit FNV-1a hash of the namespace
/// and the session id or room), so that remembering thousands of sessions stays small.
pub fn session_key(namespace: &str, spec: &AiOrbSpec) -> String {
    let session = session_id(spec).map_or_else(|| format!("room\0{}", spec.room_id), |s| format!("session\0{s}"));
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in namespace.bytes().chain([0]).chain(session.bytes()) {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{hash:016x}")
}

/// How long a session's budget is remembered after it started.
pub fn retention(limits: &Limits) -> Duration {
    limits.max_orb_lifetime.saturating_mul(2)
}

/// When a budget started by an orb admitted at `now` starts: at its booked start (`spec.startAt`)
/// if that is later — a prewarmed orb is admitted ahead of its call, and the lead is not the
/// call's time.
pub fn budget_start(now: Timestamp, start_at: Option<Timestamp>) -> Timestamp {
    start_at.map_or(now, |at| at.max(now))
}

/// When the lifetime of an orb of session `key` admitted at `now` starts: the session's earlier
/// start if it is remembered, else [`budget_start`] (and then it is remembered).
pub fn session_start(
    budgets: &mut SessionBudgets,
    key: &str,
    now: Timestamp,
    start_at: Option<Timestamp>,
) -> Timestamp {
    *budgets
        .entry(key.to_owned())
        .or_insert_with(|| budget_start(now, start_at))
}

/// Whether an orb that finished with `reason` ended its session's call: only a session keyed by
/// its room ends with a call, and only when the call is over — the room emptied
/// (`RoomCleanup`), the orb completed the session, or the AiOrb was deleted. An orb that ended
/// on a limit or an error (`MaxLifetime`, `IdleTimeout`, `Error`, `PodLost`, ...) may have people
/// still in the room, who would get a fresh lifetime by asking for another orb.
pub fn ends_call(spec: &AiOrbSpec, reason: TerminationReason) -> bool {
    session_id(spec).is_none()
        && matches!(
            reason,
            TerminationReason::RoomCleanup | TerminationReason::SessionComplete | TerminationReason::Deleted
        )
}

/// An orb of `namespace` finished with `reason`: if that ended its call ([`ends_call`]), its
/// session's budget is forgotten, so the room's next orb starts a fresh one. True when it was.
pub fn end_session(budgets: &mut SessionBudgets, namespace: &str, spec: &AiOrbSpec, reason: TerminationReason) -> bool {
    ends_call(spec, reason) && budgets.remove(&session_key(namespace, spec)).is_some()
}

/// The budgets still worth remembering at `now`.
pub fn prune_sessions(budgets: &SessionBudgets, now: Timestamp, limits: &Limits) -> SessionBudgets {
    let keep = retention(limits);
    budgets
        .iter()
        .filter(|(_, started)| after(**started, keep) > now)
        .map(|(k, v)| (k.clone(), *v))
        .collect()
}

/// The budgets as text, one `key unix-seconds` line each (the admission ledger's `sessions`).
pub fn render_sessions(budgets: &SessionBudgets) -> String {
    budgets
        .iter()
        .map(|(k, t)| format!("{k} {}\n", t.as_second()))
        .collect()
}

/// Reads [`render_sessions`]' text; malformed lines are skipped (they only cost a budget).
pub fn parse_sessions(text: &str) -> SessionBudgets {
    text.lines()
        .filter_map(|line| {
            let (key, secs) = line.split_once(' ')?;
            Some((key.to_owned(), Timestamp::from_second(secs.trim().parse().ok()?).ok()?))
        })
        .collect()
}
