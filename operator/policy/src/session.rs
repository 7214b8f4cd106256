//! The lifetime is a budget of the session, not of one pod or one AiOrb.
//!
//! A session is `spec.sessionId` (the app backend's booking id, from the room token), or the room
//! when there is none, within the AiOrb's namespace. Its budget starts at the first admission of
//! any of its AiOrbs; every later AiOrb of the session (the room used again after a page reload,
//! an orb re-created after it ended) inherits that start, and a replacement pod keeps its AiOrb's.
//! So `maxLifetimeSeconds` bounds the session's wall-clock time with an orb, however it is split.
//! A new session (another `sessionId`) starts a new budget.
//!
//! Budgets are remembered for [`retention`] after they start (twice the default lifetime), then
//! forgotten: the same session id used again after that starts afresh.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use orb_api::AiOrbSpec;

use super::{Limits, after};

/// Session budget starts by [`session_key`].
pub type SessionBudgets = BTreeMap<String, Timestamp>;

/// A short, stable key of the session an AiOrb belongs to (a 64-bit FNV-1a hash of the namespace
/// and the session id or room), so that remembering thousands of sessions stays small.
pub fn session_key(namespace: &str, spec: &AiOrbSpec) -> String {
    let session = spec
        .session_id
        .as_deref()
        .filter(|s| !s.is_empty())
        .map_or_else(|| format!("room\0{}", spec.room_id), |s| format!("session\0{s}"));
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

/// When the lifetime of an orb of session `key` admitted at `now` starts: the session's earlier
/// start if it is remembered, else now (and then it is remembered).
pub fn session_start(budgets: &mut SessionBudgets, key: &str, now: Timestamp) -> Timestamp {
    *budgets.entry(key.to_owned()).or_insert(now)
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
