//! The answers of orb-token checks, per (room, orb uid): concurrent checks of one pair share one
//! lookup, and an answer is reused for as long as the lookup says it stays true. Bounded in size;
//! when full of unexpired answers, the one expiring first makes room, and when full of lookups in
//! flight a check runs uncached (the connection caps bound how many can be in flight).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::FutureExt;
use futures::future::{BoxFuture, Shared};
use tokio::time::Instant;

use super::OrbCheck;

type Key = (String, String);
type Lookup = BoxFuture<'static, (OrbCheck, Duration)>;

enum Slot {
    /// A lookup in flight; every check of the pair awaits it.
    Pending(Shared<BoxFuture<'static, OrbCheck>>),
    /// An answer, valid until then.
    Done(OrbCheck, Instant),
}

pub struct CheckCache {
    slots: Mutex<HashMap<Key, Slot>>,
    capacity: usize,
}

impl CheckCache {
    pub fn new(capacity: usize) -> Arc<Self> {
        Arc::new(Self {
            slots: Mutex::new(HashMap::new()),
            capacity: capacity.max(1),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Slot>> {
        self.slots.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The answer for `uid` in `room`: a cached one, the one of a lookup in flight, or that of
    /// `lookup()` (run in its own task, so a caller that goes away does not cancel it for the
    /// others), which also says how long it stays true.
    pub async fn check(self: &Arc<Self>, room: &str, uid: &str, lookup: impl FnOnce() -> Lookup) -> OrbCheck {
        let key = (room.to_owned(), uid.to_owned());
        let now = Instant::now();
        let answer: BoxFuture<'static, OrbCheck> = {
            let mut slots = self.lock();
            let in_flight = match slots.get(&key) {
                Some(Slot::Done(answer, until)) if *until > now => return *answer,
                Some(Slot::Pending(pending)) => Some(pending.clone()),
                _ => None,
            };
            match in_flight {
                Some(pending) => pending.boxed(),
                None if slots.contains_key(&key) || make_room(&mut slots, self.capacity, now) => {
                    let task = tokio::spawn(lookup());
                    let cache = Arc::clone(self);
                    let settle_key = key.clone();
                    let pending = async move {
                        let (answer, ttl) = task.await.unwrap_or((OrbCheck::Unavailable, Duration::ZERO));
                        cache.settle(settle_key, answer, ttl);
                        answer
                    }
                    .boxed()
                    .shared();
                    slots.insert(key, Slot::Pending(pending.clone()));
                    pending.boxed()
                }
                // Full of lookups in flight: this one runs uncached.
                None => lookup().map(|(answer, _)| answer).boxed(),
            }
        };
        answer.await
    }

    fn settle(&self, key: Key, answer: OrbCheck, ttl: Duration) {
        let mut slots = self.lock();
        if ttl.is_zero() {
            slots.remove(&key);
        } else {
            slots.insert(key, Slot::Done(answer, Instant::now() + ttl));
        }
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Frees a slot if the map is full: expired answers first, else the answer expiring first.
/// `false` when every slot is a lookup in flight.
fn make_room(slots: &mut HashMap<Key, Slot>, capacity: usize, now: Instant) -> bool {
    if slots.len() < capacity {
        return true;
    }
    slots.retain(|_, slot| !matches!(slot, Slot::Done(_, until) if *until <= now));
    if slots.len() < capacity {
        return true;
    }
    let first = slots
        .iter()
        .filter_map(|(key, slot)| match slot {
            Slot::Done(_, until) => Some((*until, key)),
            Slot::Pending(_) => None,
        })
        .min_by_key(|(until, _)| *until)
        .map(|(_, key)| key.clone());
    match first {
        Some(key) => {
            slots.remove(&key);
            true
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    fn counting(calls: &Arc<AtomicUsize>, answer: OrbCheck, ttl: Duration) -> impl FnOnce() -> Lookup + use<> {
        let calls = calls.clone();
        move || {
            async move {
                calls.fetch_add(1, Ordering::SeqCst);
                // Yield, so that concurrent checks find the lookup in flight.
                tokio::task::yield_now().await;
                (answer, ttl)
            }
            .boxed()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_checks_share_one_lookup_and_the_answer_lives_its_ttl() {
        let cache = CheckCache::new(16);
        let calls = Arc::new(AtomicUsize::new(0));
        let checks = (0..50).map(|_| cache.check("r", "u", counting(&calls, OrbCheck::Stale, Duration::from_secs(10))));
        let answers = futures::future::join_all(checks).await;
        assert!(answers.iter().all(|a| *a == OrbCheck::Stale));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        for _ in 0..50 {
            cache
                .check("r", "u", counting(&calls, OrbCheck::Stale, Duration::from_secs(10)))
                .await;
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1, "answered from the cache");
        assert_eq!(
            cache
                .check("r", "other", counting(&calls, OrbCheck::Live, Duration::from_secs(1)))
                .await,
            OrbCheck::Live,
            "another uid is another question"
        );
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        tokio::time::advance(Duration::from_secs(10)).await;
        cache
            .check("r", "u", counting(&calls, OrbCheck::Stale, Duration::ZERO))
            .await;
        assert_eq!(calls.load(Ordering::SeqCst), 3, "expired: looked up again");
        assert_eq!(cache.len(), 1, "a zero ttl is not kept, the expired live answer is");
    }

    #[tokio::test(start_paused = true)]
    async fn the_cache_is_bounded() {
        let cache = CheckCache::new(3);
        let calls = Arc::new(AtomicUsize::new(0));
        for (i, ttl) in [30, 10, 20, 40, 50].into_iter().enumerate() {
            cache
                .check(
                    "r",
                    &i.to_string(),
                    counting(&calls, OrbCheck::Stale, Duration::from_secs(ttl)),
                )
                .await;
            assert!(cache.len() <= 3);
        }
        // The ones expiring first (10 s, then 20 s) made room.
        for (uid, cached) in [("0", true), ("1", false), ("2", false), ("3", true), ("4", true)] {
            let before = calls.load(Ordering::SeqCst);
            cache
                .check("r", uid, counting(&calls, OrbCheck::Stale, Duration::ZERO))
                .await;
            assert_eq!(calls.load(Ordering::SeqCst) == before, cached, "uid {uid}");
        }
    }
}
