//! Why and when the orb ends. The operator enforces lifetime and idle deadlines first; these
//! timers are the second line of defence for an orb whose operator is gone. The reason is
//! written as the first word of the termination message, where the operator reads it back with
//! `TerminationReason::from_termination_message`.

use std::path::Path;
use std::time::Duration;

use orb_api::TerminationReason;
use tokio::time::Instant;

/// Process exit codes (documented in the README).
pub mod exit_code {
    /// The session ended: SIGTERM/SIGINT, lifetime or idle timeout. Summary sent, peers closed.
    pub const OK: i32 = 0;
    /// A runtime failure: signaling refused the orb, the brain failed for good, or I/O broke.
    pub const ERROR: i32 = 1;
    /// Bad flags or environment (clap uses the same code).
    pub const USAGE: i32 = 2;
}

/// What ended the session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ending {
    /// SIGTERM or SIGINT: the operator (or a person) ended the session.
    Signal(&'static str),
    MaxLifetime,
    IdleTimeout,
    /// A failure the orb cannot recover from.
    Error(String),
}

impl Ending {
    pub fn reason(&self) -> TerminationReason {
        match self {
            Ending::Signal(_) => TerminationReason::SessionComplete,
            Ending::MaxLifetime => TerminationReason::MaxLifetime,
            Ending::IdleTimeout => TerminationReason::IdleTimeout,
            Ending::Error(_) => TerminationReason::Error,
        }
    }

    pub fn exit_code(&self) -> i32 {
        match self {
            Ending::Error(_) => exit_code::ERROR,
            _ => exit_code::OK,
        }
    }

    /// `Reason detail`, the format the operator parses.
    pub fn termination_message(&self, uptime: Duration) -> String {
        let detail = match self {
            Ending::Signal(name) => format!("received {name}"),
            Ending::MaxLifetime => "reached its maximum lifetime".to_owned(),
            Ending::IdleTimeout => "no activity in the room for the idle timeout".to_owned(),
            Ending::Error(e) => e.clone(),
        };
        format!("{} {detail} after {}s", self.reason(), uptime.as_secs())
    }
}

/// Writes the termination message; kubelet keeps at most 4 KiB of it.
pub fn write_termination_message(path: &Path, message: &str) -> std::io::Result<()> {
    let mut end = message.len().min(4096);
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    std::fs::write(path, &message[..end])
}

/// The orb's own lifetime and idle deadlines.
#[derive(Clone, Debug)]
pub struct Deadlines {
    started: Instant,
    last_activity: Instant,
    max_lifetime: Duration,
    idle_timeout: Duration,
}

impl Deadlines {
    pub fn new(now: Instant, max_lifetime: Duration, idle_timeout: Duration) -> Self {
        Self {
            started: now,
            last_activity: now,
            max_lifetime,
            idle_timeout,
        }
    }

    pub fn activity(&mut self, now: Instant) {
        self.last_activity = self.last_activity.max(now);
    }

    /// The nearest deadline and what it means; the earlier one wins, lifetime on a tie.
    pub fn next(&self) -> (Instant, Ending) {
        let lifetime = self.started + self.max_lifetime;
        let idle = self.last_activity + self.idle_timeout;
        if idle < lifetime {
            (idle, Ending::IdleTimeout)
        } else {
            (lifetime, Ending::MaxLifetime)
        }
    }

    /// The deadline that has passed at `now`, if any.
    pub fn expired(&self, now: Instant) -> Option<Ending> {
        let (at, ending) = self.next();
        (now >= at).then_some(ending)
    }

    pub fn uptime(&self, now: Instant) -> Duration {
        now - self.started
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_start_with_a_reason_the_operator_reads() {
        for (ending, reason) in [
            (Ending::Signal("SIGTERM"), TerminationReason::SessionComplete),
            (Ending::MaxLifetime, TerminationReason::MaxLifetime),
            (Ending::IdleTimeout, TerminationReason::IdleTimeout),
            (
                Ending::Error("signaling refused the token".into()),
                TerminationReason::Error,
            ),
        ] {
            let msg = ending.termination_message(Duration::from_secs(42));
            assert_eq!(TerminationReason::from_termination_message(&msg), Some(reason), "{msg}");
            assert!(msg.ends_with("after 42s"));
        }
        assert_eq!(Ending::Error("x".into()).exit_code(), exit_code::ERROR);
        assert_eq!(Ending::IdleTimeout.exit_code(), exit_code::OK);
    }

    #[test]
    fn termination_message_is_bounded_on_a_char_boundary() {
        let path = std::env::temp_dir().join(format!("orb-term-{}", std::process::id()));
        let long = format!("Error {}", "é".repeat(3000));
        write_termination_message(&path, &long).unwrap();
        let written = std::fs::read_to_string(&path).unwrap();
        assert!(written.len() <= 4096 && written.starts_with("Error "));
        std::fs::remove_file(path).unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn activity_pushes_the_idle_deadline_but_not_the_lifetime() {
        let t0 = Instant::now();
        let mut d = Deadlines::new(t0, Duration::from_secs(100), Duration::from_secs(30));
        assert_eq!(d.next(), (t0 + Duration::from_secs(30), Ending::IdleTimeout));
        tokio::time::advance(Duration::from_secs(20)).await;
        d.activity(Instant::now());
        assert_eq!(d.expired(t0 + Duration::from_secs(49)), None);
        assert_eq!(d.expired(t0 + Duration::from_secs(50)), Some(Ending::IdleTimeout));
        d.activity(t0 + Duration::from_secs(90));
        assert_eq!(d.next(), (t0 + Duration::from_secs(100), Ending::MaxLifetime));
        // An older activity never moves the deadline back.
        d.activity(t0);
        assert_eq!(d.expired(t0 + Duration::from_secs(100)), Some(Ending::MaxLifetime));
    }
}
