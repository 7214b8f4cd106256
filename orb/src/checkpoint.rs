//! Checkpoints of the session: the orb sends its session so far (`session_checkpoint`, the
//! summary's shape) whenever it grew, at most every [`CHECKPOINT_INTERVAL`], so that signaling
//! can make it the session's summary if the orb is killed, and hand it to the orb that replaces
//! this one. An orb handed a checkpoint on its first join continues that transcript.

use std::time::Duration;

use orb_protocol::UserRole;
use serde_json::Value;

use crate::summary::{SessionRecord, TranscriptLine};

/// How often the orb checks whether its session grew since the last checkpoint.
pub const CHECKPOINT_INTERVAL: Duration = Duration::from_secs(10);
/// Checkpoints resend the whole transcript, so they are spaced to average at most this many
/// bytes per second: well inside signaling's per-socket byte rate (64 KiB/s by default), which
/// the final summary needs too.
pub const CHECKPOINT_BYTES_PER_SECOND: u64 = 8 * 1024;

/// How long after sending a checkpoint of `bytes` the next may go: at least `interval`, longer
/// for a large one.
pub fn spacing(bytes: usize, interval: Duration) -> Duration {
    interval.max(Duration::from_secs(bytes as u64 / CHECKPOINT_BYTES_PER_SECOND))
}

/// What a checkpoint covers, to tell whether the session grew since.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Extent {
    lines: usize,
    participants: usize,
}

impl Extent {
    pub fn of(record: &SessionRecord) -> Self {
        Self {
            lines: record.transcript.len(),
            participants: record.participants.len(),
        }
    }
}

/// Puts the session of `checkpoint` (a `session_summary`-shaped body) before what `record` holds:
/// its transcript lines first, and its participants. Returns the lines it restored (read as the
/// protocol's [`TranscriptLine`], every field kept); entries it cannot read are skipped.
pub fn restore(record: &mut SessionRecord, checkpoint: &Value) -> Vec<TranscriptLine> {
    let summary = &checkpoint["summary"];
    let earlier: Vec<TranscriptLine> = summary["transcript"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|line| serde_json::from_value(line.clone()).ok())
        .collect();
    let later = std::mem::take(&mut record.transcript);
    for line in earlier.iter().cloned().chain(later) {
        record.add_line(line);
    }
    for p in summary["participants"].as_array().into_iter().flatten() {
        if let (Some(id), Ok(role)) = (
            p["userId"].as_str(),
            serde_json::from_value::<UserRole>(p["userRole"].clone()),
        ) {
            record.participants.entry(id.to_owned()).or_insert(role);
        }
    }
    earlier
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::summary::{SummaryIds, Written, session_summary};

    fn line(speaker: &str, role: UserRole, text: &str, offset_ms: u64, overlap: bool) -> TranscriptLine {
        TranscriptLine {
            speaker: speaker.into(),
            role,
            text: text.into(),
            offset_ms,
            overlap,
        }
    }

    #[test]
    fn a_replacement_continues_the_checkpointed_transcript() {
        let mut before = SessionRecord::default();
        before.participants.insert("coach-1".into(), UserRole::Coach);
        before.add_line(line("coach-1", UserRole::Coach, "Hello", 10, false));
        before.add_line(line("coach-1", UserRole::Coach, "Hi orb", 20, true));
        let ids = SummaryIds {
            summary: "sum-1",
            room: "r",
            session: "s",
            coach: "coach-1",
            client: "client-1",
        };
        let checkpoint = session_summary(&ids, &before, Duration::from_secs(3), "InProgress", Written::default());
        let checkpoint = serde_json::to_value(checkpoint).unwrap();

        let mut after = SessionRecord::default();
        after.add_line(line("ai", UserRole::Ai, "I am back", 1, false));
        let restored = restore(&mut after, &checkpoint);
        assert_eq!(restored, before.transcript, "every field of a line is kept");
        let texts: Vec<&str> = after.transcript.iter().map(|l| l.text.as_str()).collect();
        assert_eq!(texts, ["Hello", "Hi orb", "I am back"]);
        assert_eq!(after.participants.get("coach-1"), Some(&UserRole::Coach));
        assert_ne!(Extent::of(&after), Extent::of(&SessionRecord::default()));
        // A two-hour transcript (say 400 KB) goes every 48 s, not every 10 s.
        assert_eq!(spacing(400_000, CHECKPOINT_INTERVAL), Duration::from_secs(48));
        assert_eq!(spacing(2_000, CHECKPOINT_INTERVAL), CHECKPOINT_INTERVAL);
        // Nothing readable: nothing restored.
        assert!(restore(&mut SessionRecord::default(), &serde_json::json!({"summary": 1})).is_empty());
    }
}
