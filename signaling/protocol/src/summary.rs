//! The session summary: what the orb sends as `session_summary` when it ends, what the coach
//! receives live and what the summary webhook receives (seed 001's field names: `keyTopics`,
//! `progress`, `recommendations`, `transcript`). These types are its only definition; the JSON
//! schema in `docs/session-summary.schema.json` is generated from them ([`delivered_schema`]) and
//! a test keeps the two equal.

use schemars::{JsonSchema, Schema};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::UserRole;

/// Most key topics a summary lists.
pub const MAX_KEY_TOPICS: usize = 8;
/// Most recommendations a summary lists.
pub const MAX_RECOMMENDATIONS: usize = 8;
/// Longest key topic, in characters.
pub const MAX_TOPIC_CHARS: usize = 80;
/// Longest recommendation, in characters.
pub const MAX_RECOMMENDATION_CHARS: usize = 500;
/// Longest `progress`, in characters.
pub const MAX_PROGRESS_CHARS: usize = 2_000;

/// The body of `session_summary` as the orb sends it. Signaling sets `roomId` (the orb's room)
/// and `fromId` (the orb's user id), and a `summaryId` when the orb sent none, before it stores
/// and relays it.
#[derive(Deserialize, Serialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SessionSummaryMessage {
    /// Unique per orb run; the webhook's `Idempotency-Key`.
    pub summary_id: String,
    pub room_id: String,
    /// The app's booking id (the room token's `session` claim); empty without one.
    pub session_id: String,
    pub coach_id: String,
    pub client_id: String,
    /// The orb's user id, as signaling knows it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_id: Option<String>,
    pub summary: SessionSummary,
}

/// What the coach's socket and the webhook receive: the message with its `type`.
#[derive(Deserialize, Serialize, JsonSchema, Clone, Debug, PartialEq)]
#[schemars(title = "Session summary")]
pub struct DeliveredSummary {
    #[serde(rename = "type")]
    pub kind: SummaryMessageType,
    #[serde(flatten)]
    pub message: SessionSummaryMessage,
}

/// The `type` of a delivered summary.
#[derive(Deserialize, Serialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq)]
pub enum SummaryMessageType {
    #[serde(rename = "session_summary")]
    SessionSummary,
}

/// The session: who was there, what was said, and what a coach takes from it.
#[derive(Deserialize, Serialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SessionSummary {
    /// Milliseconds the orb was in the session.
    pub duration: u64,
    /// Every human seen in the room.
    pub participants: Vec<SummaryParticipant>,
    #[serde(flatten)]
    pub content: SummaryContent,
    /// Every line said, in the order it was said.
    pub transcript: Vec<TranscriptLine>,
    /// Why the orb ended (`SessionComplete`, `IdleTimeout`, `MaxLifetime`, …).
    pub reason: String,
    /// Why `keyTopics`, `progress` and `recommendations` are empty or cover only part of the
    /// transcript (the language model could not be reached, or answered twice with something
    /// that is not a valid summary). Absent when they cover all of it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary_error: Option<String>,
}

#[derive(Deserialize, Serialize, JsonSchema, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct SummaryParticipant {
    pub user_id: String,
    pub user_role: UserRole,
}

/// What the language model writes from the transcript. Also the JSON schema its answer must
/// follow ([`content_schema`]).
#[derive(Deserialize, Serialize, JsonSchema, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct SummaryContent {
    /// The main subjects of the session, a few words each, most important first (at most 8,
    /// each at most 80 characters).
    #[schemars(length(max = MAX_KEY_TOPICS))]
    pub key_topics: Vec<String>,
    /// The client's progress in this session, for the coach: what moved, what is stuck (at most
    /// 2,000 characters).
    pub progress: String,
    /// Concrete next steps for the coach and the client (at most 8, each at most 500
    /// characters).
    #[schemars(length(max = MAX_RECOMMENDATIONS))]
    pub recommendations: Vec<String>,
}

/// One utterance.
#[derive(Deserialize, Serialize, JsonSchema, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct TranscriptLine {
    /// `ai`, or the user id of the human who spoke (`human` when no one's voice was heard at
    /// the time).
    pub speaker: String,
    pub role: UserRole,
    pub text: String,
    /// When the utterance started, in milliseconds since the orb started.
    pub offset_ms: u64,
    /// Someone else spoke too during this utterance; `speaker` is the voice heard longest.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub overlap: bool,
}

/// Why a [`SummaryContent`] is not a summary.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ContentError {
    #[error("{field} has {count} entries, more than {max}")]
    TooMany {
        field: &'static str,
        count: usize,
        max: usize,
    },
    #[error("{field} has an entry of {chars} characters, more than {max}")]
    TooLong {
        field: &'static str,
        chars: usize,
        max: usize,
    },
    #[error("{0} has an empty entry")]
    Empty(&'static str),
    #[error("progress is empty")]
    NoProgress,
}

impl SummaryContent {
    /// Checks the bounds the schema states in words (a model may ignore them).
    pub fn check(&self) -> Result<(), ContentError> {
        check_list("keyTopics", &self.key_topics, MAX_KEY_TOPICS, MAX_TOPIC_CHARS)?;
        check_list(
            "recommendations",
            &self.recommendations,
            MAX_RECOMMENDATIONS,
            MAX_RECOMMENDATION_CHARS,
        )?;
        let chars = self.progress.chars().count();
        if self.progress.trim().is_empty() {
            return Err(ContentError::NoProgress);
        }
        if chars > MAX_PROGRESS_CHARS {
            return Err(ContentError::TooLong {
                field: "progress",
                chars,
                max: MAX_PROGRESS_CHARS,
            });
        }
        Ok(())
    }
}

fn check_list(field: &'static str, list: &[String], max: usize, max_chars: usize) -> Result<(), ContentError> {
    if list.len() > max {
        return Err(ContentError::TooMany {
            field,
            count: list.len(),
            max,
        });
    }
    for entry in list {
        if entry.trim().is_empty() {
            return Err(ContentError::Empty(field));
        }
        let chars = entry.chars().count();
        if chars > max_chars {
            return Err(ContentError::TooLong {
                field,
                chars,
                max: max_chars,
            });
        }
    }
    Ok(())
}

/// The JSON schema of what the coach's socket and the webhook receive
/// (`docs/session-summary.schema.json`).
pub fn delivered_schema() -> Value {
    schemars::schema_for!(DeliveredSummary).to_value()
}

/// The JSON schema a language model's answer must follow: [`SummaryContent`] in the subset
/// structured outputs accept (a closed object, every property required, no `$schema`).
pub fn content_schema() -> Value {
    let mut schema: Schema = schemars::schema_for!(SummaryContent);
    schema.remove("$schema");
    schema.remove("title");
    schema.insert("additionalProperties".into(), Value::Bool(false));
    schema.to_value()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The committed schema, next to the docs that describe it.
    const SCHEMA_FILE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/session-summary.schema.json");
    const DOC: &str = include_str!("../../../docs/summaries.md");

    fn example() -> DeliveredSummary {
        DeliveredSummary {
            kind: SummaryMessageType::SessionSummary,
            message: SessionSummaryMessage {
                summary_id: "sum-1".into(),
                room_id: "room123".into(),
                session_id: "s1".into(),
                coach_id: "coach-1".into(),
                client_id: "client-1".into(),
                from_id: Some("ai-room123".into()),
                summary: SessionSummary {
                    duration: 1_500_000,
                    participants: vec![SummaryParticipant {
                        user_id: "coach-1".into(),
                        user_role: UserRole::Coach,
                    }],
                    content: SummaryContent {
                        key_topics: vec!["breathing".into()],
                        progress: "Calmer than last week.".into(),
                        recommendations: vec!["Practise daily.".into()],
                    },
                    transcript: vec![TranscriptLine {
                        speaker: "coach-1".into(),
                        role: UserRole::Coach,
                        text: "Hello".into(),
                        offset_ms: 5,
                        overlap: false,
                    }],
                    reason: "SessionComplete".into(),
                    summary_error: None,
                },
            },
        }
    }

    #[test]
    fn the_delivered_summary_has_the_seed_names() {
        let v = serde_json::to_value(example()).unwrap();
        assert_eq!(v["type"], "session_summary");
        assert_eq!(v["roomId"], "room123");
        assert_eq!(v["summary"]["keyTopics"], json!(["breathing"]));
        assert_eq!(v["summary"]["progress"], "Calmer than last week.");
        assert_eq!(v["summary"]["recommendations"], json!(["Practise daily."]));
        assert_eq!(v["summary"]["transcript"][0]["offsetMs"], 5);
        assert!(v["summary"]["transcript"][0].get("overlap").is_none(), "only when true");
        assert!(v["summary"].get("summaryError").is_none());
        assert_eq!(serde_json::from_value::<DeliveredSummary>(v).unwrap(), example());
    }

    /// Regenerate with `BLESS=1 cargo test -p orb-protocol`.
    #[test]
    fn the_committed_schema_matches_the_types() {
        let generated = serde_json::to_string_pretty(&delivered_schema()).unwrap() + "\n";
        if std::env::var_os("BLESS").is_some() {
            std::fs::write(SCHEMA_FILE, &generated).unwrap();
        }
        let committed = std::fs::read_to_string(SCHEMA_FILE).unwrap_or_default();
        assert!(
            committed == generated,
            "docs/session-summary.schema.json is stale: run `BLESS=1 cargo test -p orb-protocol`"
        );
    }

    /// Every field of the schema is named in docs/summaries.md.
    #[test]
    fn the_docs_name_every_field() {
        fn names(schema: &Value, out: &mut Vec<String>) {
            match schema {
                Value::Object(map) => {
                    if let Some(Value::Object(props)) = map.get("properties") {
                        out.extend(props.keys().cloned());
                    }
                    map.values().for_each(|v| names(v, out));
                }
                Value::Array(list) => list.iter().for_each(|v| names(v, out)),
                _ => {}
            }
        }
        let mut fields = Vec::new();
        names(&delivered_schema(), &mut fields);
        assert!(fields.len() > 15, "{fields:?}");
        for field in fields {
            assert!(
                DOC.contains(&format!("`{field}`")),
                "docs/summaries.md does not name `{field}`"
            );
        }
    }

    #[test]
    fn the_model_schema_is_closed_and_requires_everything() {
        let schema = content_schema();
        assert_eq!(schema["type"], "object");
        assert_eq!(schema["additionalProperties"], false);
        assert!(schema.get("$schema").is_none());
        let mut required: Vec<&str> = schema["required"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(Value::as_str)
            .collect();
        required.sort_unstable();
        assert_eq!(required, ["keyTopics", "progress", "recommendations"]);
        assert_eq!(schema["properties"]["keyTopics"]["maxItems"], MAX_KEY_TOPICS);
    }

    #[test]
    fn content_bounds_are_checked() {
        let ok = example().message.summary.content;
        assert_eq!(ok.check(), Ok(()));
        let with = |f: fn(&mut SummaryContent)| {
            let mut c = ok.clone();
            f(&mut c);
            c.check().unwrap_err().to_string()
        };
        assert!(with(|c| c.key_topics = vec!["x".into(); 9]).contains("keyTopics has 9 entries"));
        assert!(with(|c| c.key_topics = vec![" ".into()]).contains("keyTopics has an empty entry"));
        assert!(with(|c| c.recommendations = vec!["r".repeat(501)]).contains("501 characters"));
        assert!(with(|c| c.progress = String::new()).contains("progress is empty"));
        assert!(with(|c| c.progress = "p".repeat(2001)).contains("more than 2000"));
    }
}
