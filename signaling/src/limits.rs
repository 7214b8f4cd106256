//! Per-connection rate limiting: token buckets over frames and over bytes, so that the burst of
//! ICE candidates at call start passes while a sustained flood does not, and a strike count that
//! ends a socket which keeps sending past its limits instead of reading (and unmasking) all of it.

use std::time::Duration;

use tokio::time::Instant;

/// Rate refusals a socket may collect before it is closed (1008); one is forgiven per second, so a
/// client that overshoots once and backs off stays, while a flood is ended after this many.
pub const RATE_STRIKES: u32 = 10;

/// A token bucket: `per_second` sustained, bursts up to `capacity`.
#[derive(Debug)]
pub struct TokenBucket {
    per_second: f64,
    capacity: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(per_second: f64, capacity: f64, now: Instant) -> Self {
        Self {
            per_second,
            capacity,
            tokens: capacity,
            last: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last);
        self.last = now;
        self.tokens = (self.tokens + elapsed.as_secs_f64() * self.per_second).min(self.capacity);
    }

    /// Whether `cost` tokens are there now (refilled up to `now`).
    fn has(&mut self, cost: f64, now: Instant) -> bool {
        self.refill(now);
        self.tokens >= cost
    }

    /// Takes `cost` tokens if they are there.
    pub fn try_take(&mut self, cost: f64, now: Instant) -> bool {
        let ok = self.has(cost, now);
        if ok {
            self.tokens -= cost;
        }
        ok
    }

    /// How long until `cost` tokens are there.
    pub fn wait_for(&self, cost: f64) -> Duration {
        Duration::from_secs_f64(((cost - self.tokens).max(0.0)) / self.per_second)
    }
}

/// What a socket's limits say about one inbound frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Within the limits: handle it.
    Pass,
    /// Over a limit: refuse it (`rate_limited`), retry after the duration.
    Refuse(Duration),
    /// Over a limit once too often ([`RATE_STRIKES`]): close the socket.
    Close,
}

/// A socket's frame, byte and strike buckets.
#[derive(Debug)]
pub struct RateLimiter {
    frames: TokenBucket,
    bytes: TokenBucket,
    strikes: TokenBucket,
}

impl RateLimiter {
    /// `frames_per_second` frames and `bytes_per_second` bytes sustained; bursts of twice each,
    /// and at least one frame of `largest_frame` bytes (the socket's transport cap), which must
    /// be able to pass on a quiet socket.
    pub fn new(frames_per_second: u32, bytes_per_second: u64, largest_frame: usize, now: Instant) -> Self {
        let frames = f64::from(frames_per_second.max(1));
        let bytes = bytes_per_second.max(1) as f64;
        let strikes = f64::from(RATE_STRIKES);
        Self {
            frames: TokenBucket::new(frames, frames * 2.0, now),
            bytes: TokenBucket::new(bytes, (bytes * 2.0).max(largest_frame as f64), now),
            strikes: TokenBucket::new(1.0, strikes, now),
        }
    }

    /// Accounts for one frame of `len` bytes read at `now`.
    pub fn check(&mut self, len: usize, now: Instant) -> Verdict {
        let len = len as f64;
        if self.frames.has(1.0, now) && self.bytes.has(len, now) {
            self.frames.try_take(1.0, now);
            self.bytes.try_take(len, now);
            return Verdict::Pass;
        }
        if !self.strikes.try_take(1.0, now) {
            return Verdict::Close;
        }
        Verdict::Refuse(self.frames.wait_for(1.0).max(self.bytes.wait_for(len)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_sustained_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(10.0, 20.0, t0);
        assert_eq!(
            (0..30).filter(|_| b.try_take(1.0, t0)).count(),
            20,
            "burst of twice the rate"
        );
        assert!(b.wait_for(1.0) > Duration::ZERO);
        assert!(b.try_take(1.0, t0 + Duration::from_millis(100)), "one token per 100ms");
        assert!(!b.try_take(1.0, t0 + Duration::from_millis(100)));
        let later = t0 + Duration::from_secs(60);
        assert_eq!(
            (0..30).filter(|_| b.try_take(1.0, later)).count(),
            20,
            "refill is capped"
        );
    }

    #[test]
    fn bytes_are_limited_as_well_as_frames() {
        let t0 = Instant::now();
        // Plenty of frames, 100 KB/s: a burst of 200 KB passes, the next 60 KB frame does not.
        let mut rl = RateLimiter::new(1000, 100_000, 1024, t0);
        assert_eq!(
            (0..3).map(|_| rl.check(60_000, t0)).collect::<Vec<_>>(),
            [Verdict::Pass; 3]
        );
        let Verdict::Refuse(wait) = rl.check(60_000, t0) else {
            panic!("a fourth 60 KB frame at once is over 200 KB")
        };
        assert_eq!(wait, Duration::from_millis(400), "40 KB missing at 100 KB/s");
        assert_eq!(rl.check(20_000, t0), Verdict::Pass, "what is left still passes");
        assert_eq!(rl.check(40_000, t0 + wait), Verdict::Pass);
    }

    #[test]
    fn the_largest_frame_always_fits_a_quiet_socket() {
        let t0 = Instant::now();
        let mut rl = RateLimiter::new(50, 1000, 8 << 20, t0);
        assert_eq!(rl.check(8 << 20, t0), Verdict::Pass);
        assert!(matches!(rl.check(1, t0), Verdict::Refuse(_)));
    }

    #[test]
    fn a_socket_that_keeps_exceeding_is_closed_and_a_pause_forgives() {
        let t0 = Instant::now();
        let mut rl = RateLimiter::new(1, 1_000_000, 1024, t0);
        assert_eq!([rl.check(1, t0), rl.check(1, t0)], [Verdict::Pass; 2]);
        for _ in 0..RATE_STRIKES {
            assert!(matches!(rl.check(1, t0), Verdict::Refuse(_)));
        }
        assert_eq!(rl.check(1, t0), Verdict::Close);

        // Refused now and then, with pauses: never closed.
        let mut rl = RateLimiter::new(1, 1_000_000, 1024, t0);
        assert_eq!([rl.check(1, t0), rl.check(1, t0)], [Verdict::Pass; 2]);
        let mut now = t0;
        for _ in 0..100 {
            now += Duration::from_secs(1);
            assert_eq!(rl.check(1, now), Verdict::Pass);
            assert!(matches!(rl.check(1, now), Verdict::Refuse(_)));
        }
    }
}
