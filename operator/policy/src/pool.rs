//! The warm pool: orbs started ahead of demand, idle until an admitted orb is bound to one. The
//! operator and the local runtime keep their pools with these functions.

use std::time::Duration;

use k8s_openapi::jiff::Timestamp;

use super::after;

/// A warm orb still unbound has not become ready this long after it started: it is replaced.
pub const WARM_STARTUP_LIMIT: Duration = Duration::from_secs(600);

/// How many warm orbs to keep: the configured size, but never more than the slots still free under
/// the cap. A warm orb is only useful to an orb that can be admitted, so the pool shrinks as the
/// cap fills and is empty when it is full.
pub fn warm_target(pool_size: usize, cap: usize, serving: usize) -> usize {
    pool_size.min(cap.saturating_sub(serving))
}

/// What the pool needs to know of one unbound warm orb.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WarmOrb {
    pub name: String,
    pub started: Timestamp,
    pub ready: bool,
    /// Exited or failed: it will never be ready, and holds no GPU any more.
    pub failed: bool,
    /// Already being stopped: it still holds its GPU until it is gone.
    pub stopping: bool,
}

/// What to do to the pool now.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PoolPlan {
    /// Warm orbs to start.
    pub start: usize,
    /// Warm orbs to stop: failed, stuck before ready, or beyond the target.
    pub stop: Vec<String>,
}

/// Plans the pool towards `target`. Orbs being stopped still count against the target, so the
/// pool never holds more than `target` GPUs at once; failed orbs and orbs not ready within
/// [`WARM_STARTUP_LIMIT`] are replaced; beyond the target, orbs not yet ready go first, then the
/// youngest (the oldest ready ones are the first handed out).
pub fn plan_pool(orbs: &[WarmOrb], target: usize, now: Timestamp) -> PoolPlan {
    let mut plan = PoolPlan::default();
    // GPUs held by orbs on their way out: being stopped, or stopped now while still running.
    let mut leaving = orbs.iter().filter(|o| o.stopping && !o.failed).count();
    let mut keep: Vec<&WarmOrb> = Vec::new();
    for o in orbs.iter().filter(|o| !o.stopping) {
        if o.failed {
            // Exited: holds nothing, only its record goes.
            plan.stop.push(o.name.clone());
        } else if !o.ready && now >= after(o.started, WARM_STARTUP_LIMIT) {
            plan.stop.push(o.name.clone());
            leaving += 1;
        } else {
            keep.push(o);
        }
    }
    keep.sort_by(|a, b| (!a.ready, a.started, &a.name).cmp(&(!b.ready, b.started, &b.name)));
    let allowed = target.saturating_sub(leaving);
    for o in keep.iter().skip(allowed) {
        plan.stop.push(o.name.clone());
        leaving += 1;
    }
    // A replacement starts once the GPU of the orb it replaces is free.
    plan.start = target.saturating_sub(leaving + keep.len().min(allowed));
    plan
}

/// The warm orb to bind next: the oldest ready one.
pub fn pick_warm(orbs: &[WarmOrb]) -> Option<&WarmOrb> {
    orbs.iter()
        .filter(|o| o.ready && !o.failed && !o.stopping)
        .min_by(|a, b| (a.started, &a.name).cmp(&(b.started, &b.name)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + s).unwrap()
    }

    fn warm(name: &str, started: i64, ready: bool) -> WarmOrb {
        WarmOrb {
            name: name.into(),
            started: at(started),
            ready,
            failed: false,
            stopping: false,
        }
    }

    #[test]
    fn the_target_shrinks_as_the_cap_fills() {
        assert_eq!(warm_target(2, 8, 0), 2);
        assert_eq!(warm_target(2, 8, 7), 1);
        assert_eq!(warm_target(2, 8, 8), 0);
        assert_eq!(warm_target(2, 8, 9), 0, "a lowered cap never makes a negative pool");
        assert_eq!(warm_target(0, 8, 0), 0);
    }

    #[test]
    fn an_empty_pool_is_filled_and_a_full_one_left_alone() {
        assert_eq!(plan_pool(&[], 3, at(0)), PoolPlan { start: 3, stop: vec![] });
        let full = [warm("a", 0, true), warm("b", 1, false)];
        assert_eq!(plan_pool(&full, 2, at(5)), PoolPlan::default());
    }

    #[test]
    fn failed_and_stuck_orbs_are_replaced_once_gone() {
        let mut failed = warm("a", 0, false);
        failed.failed = true;
        let orbs = [failed, warm("b", 0, false), warm("c", 0, true)];
        let now = after(at(0), WARM_STARTUP_LIMIT);
        let plan = plan_pool(&orbs, 3, now);
        assert_eq!(plan.stop, ["a", "b"]);
        assert_eq!(plan.start, 1, "the exited one holds nothing; the stuck one still runs");
        let mut leaving = orbs.clone();
        leaving[1].stopping = true;
        assert_eq!(plan_pool(&leaving[1..], 3, now).start, 1);
        assert_eq!(plan_pool(&leaving[2..], 3, now).start, 2, "replaced once gone");
    }

    #[test]
    fn beyond_the_target_unready_then_youngest_go_first() {
        let orbs = [warm("old", 0, true), warm("young", 5, true), warm("cold", 1, false)];
        assert_eq!(plan_pool(&orbs, 2, at(6)).stop, ["cold"]);
        assert_eq!(plan_pool(&orbs, 1, at(6)).stop, ["young", "cold"]);
        assert_eq!(plan_pool(&orbs, 0, at(6)).stop.len(), 3);
        let mut stopping = orbs.clone();
        stopping[2].stopping = true;
        assert_eq!(
            plan_pool(&stopping, 2, at(6)).stop,
            ["young"],
            "an orb being stopped counts against the target"
        );
    }

    #[test]
    fn the_oldest_ready_orb_is_bound_first() {
        let mut stopping = warm("s", -10, true);
        stopping.stopping = true;
        let orbs = [warm("b", 3, true), warm("a", 1, false), warm("c", 2, true), stopping];
        assert_eq!(pick_warm(&orbs).map(|o| o.name.as_str()), Some("c"));
        assert_eq!(pick_warm(&orbs[1..2]), None);
    }
}
