//! The transcript and the `session_summary` the coach receives when the orb ends (seed 001's
//! shape: `roomId`, `sessionId`, `clientId`, `summary {duration, keyTopics, transcript, …}`).

use std::collections::BTreeMap;
use std::time::Duration;

use orb_protocol::UserRole;
use serde::Serialize;
use serde_json::{Value, json};

#[derive(Clone, Debug, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TranscriptLine {
    /// `ai`, or the human's user id (`human` when the brain could not tell who spoke).
    pub speaker: String,
    pub role: UserRole,
    pub text: String,
    /// Milliseconds since the orb started.
    pub offset_ms: u64,
}

/// What the orb remembers of the session.
#[derive(Clone, Debug, Default)]
pub struct SessionRecord {
    pub transcript: Vec<TranscriptLine>,
    pub topics: Vec<String>,
    /// Every human seen in the room, with their role.
    pub participants: BTreeMap<String, UserRole>,
}

/// Longest transcript kept; a two-hour session of short turns stays well below it.
const MAX_TRANSCRIPT_LINES: usize = 5_000;

impl SessionRecord {
    pub fn add_line(&mut self, line: TranscriptLine) {
        if self.transcript.len() < MAX_TRANSCRIPT_LINES {
            self.transcript.push(line);
        }
    }
}

/// Identity of the session for the summary.
pub struct SummaryIds<'a> {
    pub room: &'a str,
    pub session: &'a str,
    pub coach: &'a str,
    pub client: &'a str,
}

pub fn session_summary(ids: &SummaryIds<'_>, record: &SessionRecord, duration: Duration, reason: &str) -> Value {
    let participants: Vec<Value> = record
        .participants
        .iter()
        .map(|(id, role)| json!({ "userId": id, "userRole": role }))
        .collect();
    json!({
        "roomId": ids.room,
        "sessionId": ids.session,
        "coachId": ids.coach,
        "clientId": ids.client,
        "summary": {
            "duration": duration.as_millis() as u64,
            "participants": participants,
            "keyTopics": record.topics,
            "transcript": record.transcript,
            "reason": reason,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_has_the_seed_shape() {
        let mut r = SessionRecord::default();
        r.participants.insert("coach-1".into(), UserRole::Coach);
        r.topics = vec!["breathing".into()];
        r.add_line(TranscriptLine {
            speaker: "ai".into(),
            role: UserRole::Ai,
            text: "Hello".into(),
            offset_ms: 5,
        });
        let ids = SummaryIds {
            room: "room123",
            session: "s1",
            coach: "coach-1",
            client: "client-1",
        };
        let v = session_summary(&ids, &r, Duration::from_secs(1500), "SessionComplete");
        assert_eq!(v["roomId"], "room123");
        assert_eq!(v["clientId"], "client-1");
        assert_eq!(v["summary"]["duration"], 1_500_000);
        assert_eq!(v["summary"]["keyTopics"][0], "breathing");
        assert_eq!(v["summary"]["participants"][0]["userRole"], "coach");
        assert_eq!(v["summary"]["transcript"][0]["offsetMs"], 5);
        assert_eq!(v["summary"]["transcript"][0]["role"], "ai");
    }
}
