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
    topics: usize,
    participants: usize,
}

impl Extent {
    pub fn of(record: &SessionRecord) -> Self {
        Self {
            lines: record.transcript.len(),
            topics: record.topics.len(),
            participants: record.participants.len(),
        }
    }
}

/// Puts the session of `checkpoint` (a `session_summary`-shaped body) before what `record` holds:
/// its transcript lines first, its participants and (when the record has none) its topics.
/// Returns how many lines it restored; entries it cannot read are skipped.
pub fn restore(record: &mut SessionRecord, checkpoint: &Value) -> usize {
    let summary = &checkpoint["summary"];
    let earlier: Vec<TranscriptLine> = summary["transcript"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|line| {
            Some(TranscriptLine {
                speaker: line["speaker"].as_str()?.to_owned(),
                role: serde_json::from_value::<UserRole>(line["role"].clone()).ok()?,
                text: line["text"].as_str()?.to_owned(),
                offset_ms: line["offsetMs"].as_u64().unwrap_or(0),
            })
        })
        .collect();
    let restored = earlier.len();
    let later = std::mem::take(&mut record.transcript);
    for line in earlier.into_iter().chain(later) {
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
    if record.topics.is_empty() {
        record.topics = summary["keyTopics"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|t| t.as_str().map(str::to_owned))
            .collect();
    }
    restored
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::summary::{SummaryIds, session_summary};

    #[test]
    fn a_replacement_continues_the_checkpointed_transcript() {
        let mut before = SessionRecord::default();
        before.participants.insert("coach-1".into(), UserRole::Coach);
        before.topics = vec!["goals".into()];
        for text in ["Hello", "Hi orb"] {
            before.add_line(TranscriptLine {
                speaker: "coach-1".into(),
                role: UserRole::Coach,
                text: text.into(),
                offset_ms: 10,
            });
        }
        let ids = SummaryIds {
            room: "r",
            session: "s",
            coach: "coach-1",
            client: "client-1",
        };
        let checkpoint = session_summary(&ids, &before, Duration::from_secs(3), "InProgress");

        let mut after = SessionRecord::default();
        after.add_line(TranscriptLine {
            speaker: "ai".into(),
            role: UserRole::Ai,
            text: "I am back".into(),
            offset_ms: 1,
        });
        assert_eq!(restore(&mut after, &checkpoint), 2);
        let texts: Vec<&str> = after.transcript.iter().map(|l| l.text.as_str()).collect();
        assert_eq!(texts, ["Hello", "Hi orb", "I am back"]);
        assert_eq!(after.topics, ["goals"]);
        assert_eq!(after.participants.get("coach-1"), Some(&UserRole::Coach));
        assert_ne!(Extent::of(&after), Extent::of(&SessionRecord::default()));
        // A two-hour transcript (say 400 KB) goes every 48 s, not every 10 s.
        assert_eq!(spacing(400_000, CHECKPOINT_INTERVAL), Duration::from_secs(48));
        assert_eq!(spacing(2_000, CHECKPOINT_INTERVAL), CHECKPOINT_INTERVAL);
        // Nothing readable: nothing restored.
        assert_eq!(
            restore(&mut SessionRecord::default(), &serde_json::json!({"summary": 1})),
            0
        );
    }
}
