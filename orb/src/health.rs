//! Liveness and readiness as the kubelet sees them: live while the session loop keeps beating,
//! ready while joined to signaling with a ready brain.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

/// The session loop beats every second; this much silence means it is stuck.
pub const STALL: Duration = Duration::from_secs(10);

#[derive(Clone)]
pub struct Health {
    start: Instant,
    last_beat_ms: Arc<AtomicU64>,
    ready: Arc<AtomicBool>,
}

impl Default for Health {
    fn default() -> Self {
        Self::new()
    }
}

impl Health {
    pub fn new() -> Self {
        Self {
            start: Instant::now(),
            last_beat_ms: Arc::new(AtomicU64::new(0)),
            ready: Arc::new(AtomicBool::new(false)),
        }
    }

    pub fn beat(&self) {
        self.last_beat_ms
            .store(self.start.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }

    pub fn is_live(&self) -> bool {
        let since = self.start.elapsed().as_millis() as u64 - self.last_beat_ms.load(Ordering::Relaxed);
        since < STALL.as_millis() as u64
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed) && self.is_live()
    }

    pub fn uptime(&self) -> Duration {
        self.start.elapsed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_stalled_loop_is_not_live() {
        let h = Health::new();
        h.beat();
        h.set_ready(true);
        assert!(h.is_live() && h.is_ready());
        tokio::time::advance(STALL).await;
        assert!(!h.is_live() && !h.is_ready());
        h.beat();
        assert!(h.is_ready());
    }
}
