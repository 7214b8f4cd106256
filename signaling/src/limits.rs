//! Per-connection rate limiting: a token bucket, so that the burst of ICE candidates at call
//! start passes while a sustained flood does not.

use std::time::Duration;

use tokio::time::Instant;

#[derive(Debug)]
pub struct RateLimiter {
    per_second: f64,
    capacity: f64,
    tokens: f64,
    last: Instant,
}

impl RateLimiter {
    /// Allows `per_second` messages sustained and bursts of twice that.
    pub fn new(per_second: u32, now: Instant) -> Self {
        let per_second = f64::from(per_second.max(1));
        let capacity = per_second * 2.0;
        Self {
            per_second,
            capacity,
            tokens: capacity,
            last: now,
        }
    }

    pub fn try_acquire(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last);
        self.last = now;
        self.tokens = (self.tokens + elapsed.as_secs_f64() * self.per_second).min(self.capacity);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// How long until the next message would pass.
    pub fn retry_after(&self) -> Duration {
        Duration::from_secs_f64(((1.0 - self.tokens).max(0.0)) / self.per_second)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_sustained_rate() {
        let t0 = Instant::now();
        let mut rl = RateLimiter::new(10, t0);
        assert_eq!(
            (0..30).filter(|_| rl.try_acquire(t0)).count(),
            20,
            "burst of twice the rate"
        );
        assert!(rl.retry_after() > Duration::ZERO);
        assert!(rl.try_acquire(t0 + Duration::from_millis(100)), "one token per 100ms");
        assert!(!rl.try_acquire(t0 + Duration::from_millis(100)));
        let later = t0 + Duration::from_secs(60);
        assert_eq!(
            (0..30).filter(|_| rl.try_acquire(later)).count(),
            20,
            "refill is capped"
        );
    }
}
