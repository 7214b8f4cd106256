//! How an [`Event`] travels through a replica's inbox channel.
//!
//! A relayed frame (`Deliver`, nearly all the traffic) goes in a compact envelope: its fields
//! length-prefixed and the frame's text appended as it is, so a relay costs neither escaping the
//! frame into a JSON string nor unescaping it out again. Membership events (`Joined`, `Left`,
//! written by the Lua scripts) and `Activity` stay JSON, and every event is also readable as
//! JSON: a replica sends the compact envelope only to replicas registered as its readers, JSON to
//! the others (replicas of a version before it, during a rolling upgrade).
//!
//! ```text
//! D <room len>:<room> <target> <status> <frame text>      (without the spaces)
//! target: *  every member | h  humans | c  coaches | u<len>:<user id> | b<len>:<user id> (all but)
//! status: -  none | s<len>:<ai status>
//! ```

use std::str::FromStr;

use thiserror::Error;

use super::{Event, Target};
use crate::protocol::AiStatus;

const DELIVER: char = 'D';

#[derive(Debug, Error, PartialEq, Eq)]
pub enum EnvelopeError {
    #[error("unreadable JSON event: {0}")]
    Json(String),
    #[error("cut short reading the {0}")]
    Truncated(&'static str),
    #[error("unknown {what} tag {tag:?}")]
    UnknownTag { what: &'static str, tag: char },
    #[error("unknown AI status {0:?}")]
    UnknownStatus(String),
}

/// The inbox payload of `event`.
pub fn encode(event: &Event) -> String {
    let Event::Deliver {
        room,
        to,
        text,
        ai_status,
    } = event
    else {
        return encode_json(event);
    };
    let mut out = String::with_capacity(text.len() + room.len() + 32);
    out.push(DELIVER);
    field(&mut out, room);
    match to {
        Target::All => out.push('*'),
        Target::Humans => out.push('h'),
        Target::Coaches => out.push('c'),
        Target::User(id) => {
            out.push('u');
            field(&mut out, id);
        }
        Target::AllBut(id) => {
            out.push('b');
            field(&mut out, id);
        }
    }
    match ai_status {
        None => out.push('-'),
        Some(status) => {
            out.push('s');
            field(&mut out, &status_name(*status));
        }
    }
    out.push_str(text);
    out
}

/// The inbox payload of `event` for a replica that reads only JSON.
pub fn encode_json(event: &Event) -> String {
    serde_json::to_string(event).expect("events always serialise")
}

/// The event in an inbox payload.
pub fn decode(payload: &str) -> Result<Event, EnvelopeError> {
    let Some(mut rest) = payload.strip_prefix(DELIVER) else {
        return serde_json::from_str(payload).map_err(|e| EnvelopeError::Json(e.to_string()));
    };
    let room = take_field(&mut rest, "room")?;
    let to = match take_tag(&mut rest, "target")? {
        '*' => Target::All,
        'h' => Target::Humans,
        'c' => Target::Coaches,
        'u' => Target::User(take_field(&mut rest, "user id")?.to_owned()),
        'b' => Target::AllBut(take_field(&mut rest, "user id")?.to_owned()),
        tag => return Err(EnvelopeError::UnknownTag { what: "target", tag }),
    };
    let ai_status = match take_tag(&mut rest, "status")? {
        '-' => None,
        's' => {
            let name = take_field(&mut rest, "status")?;
            Some(parse_status(name)?)
        }
        tag => return Err(EnvelopeError::UnknownTag { what: "status", tag }),
    };
    Ok(Event::Deliver {
        room: room.to_owned(),
        to,
        text: rest.to_owned(),
        ai_status,
    })
}

fn field(out: &mut String, value: &str) {
    use std::fmt::Write;
    let _ = write!(out, "{}:", value.len());
    out.push_str(value);
}

fn take_tag(rest: &mut &str, what: &'static str) -> Result<char, EnvelopeError> {
    let mut chars = rest.chars();
    let tag = chars.next().ok_or(EnvelopeError::Truncated(what))?;
    *rest = chars.as_str();
    Ok(tag)
}

fn take_field<'a>(rest: &mut &'a str, what: &'static str) -> Result<&'a str, EnvelopeError> {
    let (len, after) = rest.split_once(':').ok_or(EnvelopeError::Truncated(what))?;
    let len = usize::from_str(len).map_err(|_| EnvelopeError::Truncated(what))?;
    let value = after.get(..len).ok_or(EnvelopeError::Truncated(what))?;
    *rest = &after[len..];
    Ok(value)
}

/// The status's wire name (the protocol's serde is the one source).
pub(super) fn status_name(status: AiStatus) -> String {
    match serde_json::to_value(status) {
        Ok(serde_json::Value::String(s)) => s,
        _ => String::new(),
    }
}

fn parse_status(name: &str) -> Result<AiStatus, EnvelopeError> {
    serde_json::from_value(serde_json::Value::String(name.to_owned()))
        .map_err(|_| EnvelopeError::UnknownStatus(name.to_owned()))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::json;

    use super::*;

    fn target() -> impl Strategy<Value = Target> {
        prop_oneof![
            Just(Target::All),
            Just(Target::Humans),
            Just(Target::Coaches),
            any::<String>().prop_map(Target::User),
            any::<String>().prop_map(Target::AllBut),
        ]
    }

    proptest! {
        /// Any room, user id and frame (quotes, colons, digits, newlines, any Unicode) comes back
        /// as it went.
        #[test]
        fn a_delivery_comes_back_as_sent(
            room in any::<String>(),
            to in target(),
            text in any::<String>(),
            status in proptest::option::of(0..AiStatus::ALL.len()),
        ) {
            let event = Event::Deliver { room, to, text, ai_status: status.map(|i| AiStatus::ALL[i]) };
            let payload = encode(&event);
            prop_assert_eq!(decode(&payload), Ok(event));
        }

        /// A cut or garbled payload is an error, never a panic.
        #[test]
        fn a_damaged_payload_is_an_error_not_a_panic(payload in "D[0-9:*hcub\\-s]{0,12}.{0,8}") {
            let _ = decode(&payload);
        }
    }

    #[test]
    fn a_delivery_is_the_frame_as_it_is_after_a_short_header() {
        let text = r#"{"type":"offer","fromId":"c","sdp":"v=0\r\n"}"#;
        let event = Event::Deliver {
            room: "room-1".into(),
            to: Target::User("client-7".into()),
            text: text.into(),
            ai_status: None,
        };
        assert_eq!(encode(&event), format!("D6:room-1u8:client-7-{text}"));
    }

    /// Membership events stay what the Lua scripts write; a JSON delivery from a replica of the
    /// previous version is still read.
    #[test]
    fn json_events_are_read() {
        let left = json!({"k": "left", "room": "r", "seq": 3, "member": {"userId": "c", "role": "coach",
            "participantType": "human", "replica": "a", "conn": 3}});
        assert!(matches!(decode(&left.to_string()), Ok(Event::Left { seq: 3, .. })));
        let activity = Event::Activity {
            room: "r".into(),
            at_ms: 5,
        };
        assert_eq!(decode(&encode(&activity)), Ok(activity));
        let old = json!({"k": "deliver", "room": "r", "to": {"user": "x"}, "text": "{}", "ai_status": "ready"});
        assert_eq!(
            decode(&old.to_string()),
            Ok(Event::Deliver {
                room: "r".into(),
                to: Target::User("x".into()),
                text: "{}".into(),
                ai_status: Some(AiStatus::Ready),
            })
        );
    }

    #[test]
    fn damage_is_named() {
        assert_eq!(decode("D9:room"), Err(EnvelopeError::Truncated("room")));
        assert_eq!(
            decode("D1:rx-{}"),
            Err(EnvelopeError::UnknownTag {
                what: "target",
                tag: 'x'
            })
        );
        assert_eq!(
            decode("D1:r*s5:bored{}"),
            Err(EnvelopeError::UnknownStatus("bored".into()))
        );
        assert!(matches!(decode("{not json"), Err(EnvelopeError::Json(_))));
    }
}
