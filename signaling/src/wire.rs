//! Decoding of inbound text frames.
//!
//! Relay messages (`offer`, `answer`, `ice-candidate`) stay raw JSON objects: seed 001 forwards
//! `{...data, fromId}`, so every field a sender wrote reaches the receiver, and a browser client
//! written for the seed sees exactly what it sent. Everything else decodes into
//! [`ClientMessage`], the protocol's single definition. The decoder is lenient where the seed was
//! (numeric ids, unknown extra fields) and strict where the seed crashed or silently dropped input.

use serde_json::{Map, Value};
use thiserror::Error;

use crate::protocol::{ClientMessage, ErrorCode, ParticipantType, UserRole};

/// The three relayed message types.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RelayKind {
    Offer,
    Answer,
    IceCandidate,
}

impl RelayKind {
    pub const ALL: [RelayKind; 3] = [RelayKind::Offer, RelayKind::Answer, RelayKind::IceCandidate];

    pub fn as_str(self) -> &'static str {
        match self {
            RelayKind::Offer => "offer",
            RelayKind::Answer => "answer",
            RelayKind::IceCandidate => "ice-candidate",
        }
    }
}

/// A decoded frame.
#[derive(Debug, PartialEq)]
pub enum Inbound {
    /// An SDP/ICE message to forward: `body` is the sender's object without any `fromId` it claimed.
    Relay {
        kind: RelayKind,
        target: Option<String>,
        body: Map<String, Value>,
    },
    Message(ClientMessage),
}

/// Why a frame was refused. Each maps to the [`ErrorCode`] sent back to that socket only.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("malformed JSON: {0}")]
    MalformedJson(String),
    #[error("a message must be a JSON object with a string \"type\" field")]
    MissingType,
    #[error("unknown message type {0:?}")]
    UnknownType(String),
    #[error("invalid {kind} message: {detail}")]
    Invalid { kind: &'static str, detail: String },
}

impl FrameError {
    pub fn code(&self) -> ErrorCode {
        match self {
            FrameError::MalformedJson(_) => ErrorCode::MalformedJson,
            FrameError::MissingType | FrameError::Invalid { .. } => ErrorCode::InvalidMessage,
            FrameError::UnknownType(_) => ErrorCode::UnknownType,
        }
    }
}

/// Longest `type` echoed back in an error, so a hostile client cannot make the server amplify it.
const MAX_ECHOED_TYPE: usize = 64;

pub fn parse_frame(text: &str) -> Result<Inbound, FrameError> {
    let value: Value = serde_json::from_str(text).map_err(|e| FrameError::MalformedJson(e.to_string()))?;
    let Value::Object(mut map) = value else {
        return Err(FrameError::MissingType);
    };
    let kind = match map.get("type") {
        Some(Value::String(s)) => s.clone(),
        _ => return Err(FrameError::MissingType),
    };
    match kind.as_str() {
        "offer" => relay(RelayKind::Offer, map),
        "answer" => relay(RelayKind::Answer, map),
        "ice-candidate" => relay(RelayKind::IceCandidate, map),
        // The seed's clients may add fields (timestamps) to these; they carry no data.
        "ping" => Ok(Inbound::Message(ClientMessage::Ping)),
        "leave" => Ok(Inbound::Message(ClientMessage::Leave)),
        "join" => Ok(Inbound::Message(join(&map))),
        "ai_status" => typed("ai_status", map),
        "orb_activity" => typed("orb_activity", map),
        "orb_ready" | "orb_heartbeat" | "orb_error" | "session_summary" | "session_checkpoint" => {
            map.remove("type");
            let body = Value::Object(map);
            Ok(Inbound::Message(match kind.as_str() {
                "orb_ready" => ClientMessage::OrbReady(body),
                "orb_heartbeat" => ClientMessage::OrbHeartbeat(body),
                "orb_error" => ClientMessage::OrbError(body),
                "session_checkpoint" => ClientMessage::SessionCheckpoint(body),
                _ => ClientMessage::SessionSummary(body),
            }))
        }
        _ => {
            let mut shown = kind;
            if shown.len() > MAX_ECHOED_TYPE {
                let mut end = MAX_ECHOED_TYPE;
                while !shown.is_char_boundary(end) {
                    end -= 1;
                }
                shown.truncate(end);
            }
            Err(FrameError::UnknownType(shown))
        }
    }
}

fn relay(kind: RelayKind, mut body: Map<String, Value>) -> Result<Inbound, FrameError> {
    let target = match id_field(&body, "toId")? {
        Some(id) => Some(id),
        None => id_field(&body, "targetId")?,
    };
    // Never trust the sender's claim; the server sets fromId.
    body.remove("fromId");
    Ok(Inbound::Relay { kind, target, body })
}

/// Reads an id that the seed's clients may send as a string or a number; `null` means absent.
fn id_field(map: &Map<String, Value>, field: &'static str) -> Result<Option<String>, FrameError> {
    match map.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(Value::Number(n)) => Ok(Some(n.to_string())),
        Some(_) => Err(FrameError::Invalid {
            kind: "relay",
            detail: format!("{field} must be a string"),
        }),
    }
}

/// `join` is decoded field by field and leniently: with token auth the server ignores the claimed
/// identity, so a value of the wrong shape must not make a seed client's join fail. Whether the
/// fields that matter are present is decided by the caller, which knows the auth mode.
fn join(map: &Map<String, Value>) -> ClientMessage {
    let string = |field: &str| match map.get(field) {
        Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
        Some(Value::Number(n)) => Some(n.to_string()),
        _ => None,
    };
    let parse = |field: &str| map.get(field).cloned();
    ClientMessage::Join {
        room_id: string("roomId"),
        user_id: string("userId"),
        user_role: parse("userRole").and_then(|v| serde_json::from_value::<UserRole>(v).ok()),
        user_name: string("userName"),
        participant_type: parse("participantType").and_then(|v| serde_json::from_value::<ParticipantType>(v).ok()),
    }
}

fn typed(kind: &'static str, map: Map<String, Value>) -> Result<Inbound, FrameError> {
    serde_json::from_value::<ClientMessage>(Value::Object(map))
        .map(Inbound::Message)
        .map_err(|e| FrameError::Invalid {
            kind,
            detail: e.to_string(),
        })
}

/// The frame a relay message's receivers get: the sender's object plus the server's `fromId`.
pub fn relay_frame(mut body: Map<String, Value>, from_id: &str) -> String {
    body.insert("fromId".into(), Value::String(from_id.to_owned()));
    Value::Object(body).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::AiStatus;
    use serde_json::json;

    fn parse(v: Value) -> Result<Inbound, FrameError> {
        parse_frame(&v.to_string())
    }

    #[test]
    fn relay_keeps_every_field_and_drops_a_claimed_from_id() {
        let Inbound::Relay { kind, target, body } =
            parse(json!({"type": "offer", "toId": "b", "fromId": "evil", "offer": {"sdp": "v=0"}, "extra": 1}))
                .unwrap()
        else {
            panic!()
        };
        assert_eq!(kind, RelayKind::Offer);
        assert_eq!(target.as_deref(), Some("b"));
        let out: Value = serde_json::from_str(&relay_frame(body, "a")).unwrap();
        assert_eq!(
            out,
            json!({"type": "offer", "toId": "b", "fromId": "a", "offer": {"sdp": "v=0"}, "extra": 1})
        );
    }

    #[test]
    fn target_id_alias_numeric_ids_and_broadcast() {
        let target = |v| match parse(v).unwrap() {
            Inbound::Relay { target, .. } => target,
            other => panic!("{other:?}"),
        };
        assert_eq!(target(json!({"type": "answer", "targetId": "x"})).as_deref(), Some("x"));
        assert_eq!(target(json!({"type": "answer", "toId": 42})).as_deref(), Some("42"));
        assert_eq!(target(json!({"type": "ice-candidate", "toId": null})), None);
        assert!(matches!(
            parse(json!({"type": "offer", "toId": {}})),
            Err(FrameError::Invalid { .. })
        ));
    }

    #[test]
    fn seed_messages_decode() {
        assert_eq!(
            parse(json!({"type": "ping", "timestamp": 1})).unwrap(),
            Inbound::Message(ClientMessage::Ping)
        );
        assert_eq!(
            parse(json!({"type": "leave"})).unwrap(),
            Inbound::Message(ClientMessage::Leave)
        );
        let Inbound::Message(ClientMessage::Join { user_id, user_role, .. }) =
            parse(json!({"type": "join", "userId": 7, "userRole": "boss"})).unwrap()
        else {
            panic!()
        };
        assert_eq!((user_id.as_deref(), user_role), (Some("7"), None));
        assert_eq!(
            parse(json!({"type": "ai_status", "status": "speaking", "sessionId": "s"})).unwrap(),
            Inbound::Message(ClientMessage::AiStatus {
                status: AiStatus::Speaking,
                session_id: Some("s".into())
            })
        );
        assert_eq!(
            parse(json!({"type": "orb_ready", "roomId": "r"})).unwrap(),
            Inbound::Message(ClientMessage::OrbReady(json!({"roomId": "r"})))
        );
    }

    #[test]
    fn bad_input_has_a_reason() {
        assert_eq!(parse_frame("{").unwrap_err().code(), ErrorCode::MalformedJson);
        assert_eq!(parse(json!([1])).unwrap_err(), FrameError::MissingType);
        assert_eq!(parse(json!({"type": 1})).unwrap_err(), FrameError::MissingType);
        assert_eq!(
            parse(json!({"type": "dance"})).unwrap_err(),
            FrameError::UnknownType("dance".into())
        );
        assert_eq!(
            parse(json!({"type": "ai_status", "status": "sleepy"}))
                .unwrap_err()
                .code(),
            ErrorCode::InvalidMessage
        );
        let FrameError::UnknownType(shown) = parse(json!({"type": "é".repeat(100)})).unwrap_err() else {
            panic!()
        };
        assert!(shown.len() <= MAX_ECHOED_TYPE);
    }
}
