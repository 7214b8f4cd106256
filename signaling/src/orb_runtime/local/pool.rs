//! The local warm pool (`--warm-orbs`): orb processes started with `--warm`, brain ready, in no
//! room. An admitted orb is bound to the oldest ready one by `POST /assign` (the same assignment a
//! cold orb gets as flags, from `orb_policy::launch`) instead of starting a process; the pool is
//! kept by the operator's functions (`warm_target`, `plan_pool`, `pick_warm`). An assignment that
//! fails stops that process and the orb starts cold.

use std::time::Duration;

use orb_api::assignment::{ASSIGN_PATH, ASSIGN_TOKEN_ENV};
use orb_policy::WarmOrb;

use super::*;

/// Process keys of warm orbs start with this; a room orb's key is its uid.
pub(super) const WARM_KEY_PREFIX: &str = "warm:";
/// Longest an assignment may take to answer (the orb waits up to 10 s for its join).
const ASSIGN_TIMEOUT: Duration = Duration::from_secs(15);

/// One unbound warm orb.
pub(super) struct WarmProc {
    pub(super) proc: Proc,
    credential: String,
    started: Timestamp,
}

/// A fresh random credential: two std hasher draws (per-instance random keys).
fn random_credential() -> String {
    use std::hash::{BuildHasher, Hasher};
    let draw = || {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(0);
        h.finish()
    };
    format!("{:016x}{:016x}", draw(), draw())
}

impl State {
    /// Moves the pool towards its target: warm orbs are extra processes, never more than the cap
    /// still has room for.
    pub(super) fn keep_pool(&mut self, now: Timestamp) {
        if self.settings.warm_orbs == 0 && self.pool.is_empty() {
            return;
        }
        let serving = self
            .orbs
            .values()
            .filter(|o| o.admitted_at.is_some() && !o.phase.is_some_and(OrbPhase::is_terminal))
            .count();
        let target = policy::warm_target(
            self.settings.warm_orbs,
            self.settings.limits.max_concurrent_orbs,
            serving,
        );
        let views = self.warm_views();
        let plan = policy::plan_pool(&views, target, now);
        for name in plan.stop {
            let Some(w) = self.pool.get_mut(&name) else { continue };
            if w.proc.exit.is_some() {
                self.pool.remove(&name);
            } else if w.proc.request_stop() {
                self.note(&name, "stopping the warm orb (pool above its target or never ready)");
            }
        }
        for _ in 0..plan.start {
            self.start_warm(now);
        }
        let ready = self.pool.values().filter(|w| w.proc.ready).count();
        self.stats.warm_ready.store(ready, Ordering::Relaxed);
    }

    /// The pool as the pool functions see it.
    fn warm_views(&self) -> Vec<WarmOrb> {
        self.pool
            .iter()
            .map(|(name, w)| WarmOrb {
                name: name.clone(),
                started: w.started,
                ready: w.proc.ready,
                failed: w.proc.exit.is_some(),
                stopping: w.proc.stopping,
            })
            .collect()
    }

    fn start_warm(&mut self, now: Timestamp) {
        self.warm_started += 1;
        let name = format!("warm-{}", self.warm_started);
        let credential = random_credential();
        let mut args = vec!["--warm".to_owned()];
        if self.settings.test_mode {
            args.push("--test-mode".into());
        }
        let key = format!("{WARM_KEY_PREFIX}{name}");
        let proc = self.start_process(&name, &key, 0, args, vec![(ASSIGN_TOKEN_ENV, credential.clone())]);
        self.pool.insert(
            name,
            WarmProc {
                proc,
                credential,
                started: now,
            },
        );
    }

    /// Binds attempt `attempt` of the orb to a ready warm orb, if the pool has one; false means
    /// start it cold.
    pub(super) fn bind_warm(
        &mut self,
        uid: &str,
        attempt: i32,
        clock: &OrbClock,
        now: Timestamp,
        limits: &policy::OrbLimits,
    ) -> bool {
        let Some(signaling) = self.signaling.clone() else {
            return false;
        };
        let orb = self.orbs.get(uid).expect("present");
        if orb.cold_only || orb.spec.test_mode != self.settings.test_mode {
            return false;
        }
        let views = self.warm_views();
        let Some(name) = policy::pick_warm(&views).map(|w| w.name.clone()) else {
            return false;
        };
        let mut warm = self.pool.remove(&name).expect("picked from the pool");
        let mut assignment = policy::launch(&orb.spec, limits, clock, now, &signaling).assignment;
        assignment.token = self.orb_token(orb, clock, limits, now);
        let room = orb.spec.room_id.clone();
        warm.proc.attempt = attempt;
        // Its warm readiness is not the join: ready again once the assignment says it joined.
        warm.proc.ready = false;
        let port = warm.proc.port;
        let key = format!("{WARM_KEY_PREFIX}{name}");
        self.bound.insert(key.clone(), (uid.to_owned(), attempt));
        let orb = self.orbs.get_mut(uid).expect("present");
        orb.proc = Some(warm.proc);
        orb.binding = Some(name.clone());
        self.stats.warm_bound.fetch_add(1, Ordering::Relaxed);
        self.note(
            &room,
            &format!("bound to warm orb {name} (its output: orb-{name}.log); no process started"),
        );
        let tx = self.tx.clone();
        let body = serde_json::to_string(&assignment).expect("an assignment serialises");
        let credential = warm.credential;
        tokio::spawn(async move {
            let result =
                orb_telemetry::probe::post_json(("127.0.0.1", port), ASSIGN_PATH, &credential, &body, ASSIGN_TIMEOUT)
                    .await
                    .map_err(|e| e.to_string());
            let _ = tx.send(Command::Assigned { key, result });
        });
        true
    }

    /// The answer to an assignment: joined (ready now), accepted (readiness will tell), or
    /// failed (that process is stopped and the orb starts cold).
    pub(super) fn assigned(&mut self, key: &str, result: Result<(u16, String), String>) {
        let Some((uid, attempt)) = self.bound.get(key).cloned() else {
            return;
        };
        let Some(orb) = self.orbs.get_mut(&uid) else { return };
        let name = orb.binding.take().unwrap_or_default();
        let room = orb.spec.room_id.clone();
        let failure = match result {
            Ok((200, _)) => {
                if let Some(p) = orb.proc.as_mut().filter(|p| p.attempt == attempt) {
                    p.ready = p.exit.is_none() && !p.stopping;
                }
                None
            }
            Ok((202, _)) => None,
            Ok((status, body)) => Some(format!("HTTP {status}: {}", body.trim())),
            Err(e) => Some(e),
        };
        if let Some(failure) = failure {
            self.bound.remove(key);
            // Only the bound process: `take` first would drop another attempt's.
            if orb.proc.as_ref().is_some_and(|p| p.attempt == attempt)
                && let Some(mut p) = orb.proc.take()
            {
                p.request_stop();
            }
            orb.cold_only = true;
            self.note(
                &room,
                &format!("the assignment to warm orb {name} failed ({failure}); starting the orb cold"),
            );
        }
    }
}
