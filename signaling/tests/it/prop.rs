//! Property tests: arbitrary bytes and JSON through the decoder, and arbitrary operation
//! sequences through the room registry. Neither may panic, and the registry's invariants hold
//! after every step.

use std::collections::HashSet;
use std::sync::Arc;

use orb_signaling::metrics::Metrics;
use orb_signaling::orb_runtime::testing::RecordingRuntime;
use orb_signaling::protocol::{AiStatus, ParticipantType, ServerMessage, UserRole};
use orb_signaling::room::{ConnHandle, ConnReceivers, Identity, Outbound, Registry, Room};
use orb_signaling::wire::{Inbound, parse_frame, relay_frame};
use proptest::prelude::*;
use serde_json::{Map, Value};

const TYPES: [&str; 14] = [
    "join",
    "offer",
    "answer",
    "ice-candidate",
    "leave",
    "ping",
    "ai_status",
    "orb_ready",
    "orb_heartbeat",
    "orb_error",
    "session_summary",
    "pong",
    "error",
    "",
];

fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "type",
            "toId",
            "targetId",
            "fromId",
            "roomId",
            "userId",
            "userRole",
            "userName",
            "participantType",
            "status",
            "sessionId",
            "offer",
            "candidate",
        ])
        .prop_map(str::to_owned),
        "\\PC{0,8}",
    ]
}

fn json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        prop::sample::select(TYPES.to_vec()).prop_map(Value::from),
        prop::sample::select(vec!["coach", "client", "ai", "human", "ready", "speaking", "queued"])
            .prop_map(Value::from),
        "\\PC{0,16}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((key(), inner), 0..8).prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}

/// JSON objects that look like protocol messages: a known (or odd) type plus arbitrary fields.
fn message() -> impl Strategy<Value = Value> {
    (
        prop::sample::select(TYPES.to_vec()),
        prop::collection::vec((key(), json()), 0..6),
    )
        .prop_map(|(t, fields)| {
            let mut map: Map<String, Value> = fields.into_iter().collect();
            map.insert("type".into(), Value::from(t));
            Value::Object(map)
        })
}

fn check_frame(text: &str) {
    if let Ok(Inbound::Relay { body, .. }) = parse_frame(text) {
        let out: Value = serde_json::from_str(&relay_frame(body, "me")).unwrap();
        assert_eq!(out["fromId"], "me");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn decoder_survives_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        check_frame(&String::from_utf8_lossy(&bytes));
    }

    #[test]
    fn decoder_survives_arbitrary_json(v in json()) {
        check_frame(&v.to_string());
    }

    #[test]
    fn decoder_survives_message_shaped_json(v in message()) {
        check_frame(&v.to_string());
        // Truncations are malformed JSON, never a panic.
        let s = v.to_string();
        for cut in [1, s.len() / 2, s.len().saturating_sub(1)] {
            if s.is_char_boundary(cut) {
                check_frame(&s[..cut]);
            }
        }
    }
}

#[derive(Clone, Debug)]
enum Op {
    Join { conn: usize, user: u8, role: u8, room: u8 },
    Leave { conn: usize },
    Relay { conn: usize, target: Option<u8> },
    OrbStatus { conn: usize, status: u8 },
    RuntimeStatus { room: u8, status: u8 },
    Read { conn: usize },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0..6usize, 0..5u8, 0..3u8, 0..2u8).prop_map(|(conn, user, role, room)| Op::Join { conn, user, role, room }),
        (0..6usize).prop_map(|conn| Op::Leave { conn }),
        (0..6usize, prop::option::of(0..6u8)).prop_map(|(conn, target)| Op::Relay { conn, target }),
        (0..6usize, 0..8u8).prop_map(|(conn, status)| Op::OrbStatus { conn, status }),
        (0..2u8, 0..8u8).prop_map(|(room, status)| Op::RuntimeStatus { room, status }),
        (0..6usize).prop_map(|conn| Op::Read { conn }),
    ]
}

struct Conn {
    handle: ConnHandle,
    rx: ConnReceivers,
    room: Option<Arc<Room>>,
}

struct Harness {
    registry: Registry,
    conns: Vec<Conn>,
    next_id: u64,
}

impl Harness {
    fn new() -> Self {
        let registry = Registry::new(3, Arc::new(RecordingRuntime::default()), Metrics::shared());
        let mut h = Harness {
            registry,
            conns: vec![],
            next_id: 0,
        };
        for _ in 0..6 {
            let c = h.fresh();
            h.conns.push(c);
        }
        h
    }

    fn fresh(&mut self) -> Conn {
        self.next_id += 1;
        // A small queue so that slow-consumer closes happen too.
        let (handle, rx) = ConnHandle::new(self.next_id, 6);
        Conn { handle, rx, room: None }
    }

    /// What the connection task does when the server closed a socket: leave, and the client
    /// reconnects with a new socket.
    fn reap(&mut self) {
        for i in 0..self.conns.len() {
            if self.conns[i].handle.close_reason().is_some() {
                if let Some(room) = self.conns[i].room.take() {
                    self.registry.leave(&room, self.conns[i].handle.id);
                }
                self.conns[i] = self.fresh();
            }
        }
    }

    fn apply(&mut self, op: Op) {
        match op {
            Op::Join { conn, user, role, room } => {
                if self.conns[conn].room.is_some() {
                    return;
                }
                let role = [UserRole::Coach, UserRole::Client, UserRole::Ai][role as usize];
                let identity = Identity {
                    user_id: format!("u{user}"),
                    role,
                    participant_type: if role == UserRole::Ai {
                        ParticipantType::Ai
                    } else {
                        ParticipantType::Human
                    },
                    user_name: None,
                    session_id: None,
                    issued_at: None,
                    orb_uid: None,
                    expires_at: None,
                };
                if let Ok(r) = self
                    .registry
                    .join(&format!("room{room}"), &self.conns[conn].handle, identity)
                {
                    self.conns[conn].room = Some(r);
                }
            }
            Op::Leave { conn } => {
                if let Some(room) = self.conns[conn].room.take() {
                    self.registry.leave(&room, self.conns[conn].handle.id);
                }
            }
            Op::Relay { conn, target } => {
                if let Some(room) = &self.conns[conn].room {
                    let target = target.map(|t| format!("u{t}"));
                    let out = Outbound {
                        text: r#"{"type":"offer"}"#.into(),
                        received_at: None,
                    };
                    self.registry
                        .relay(room, self.conns[conn].handle.id, target.as_deref(), out);
                }
            }
            Op::OrbStatus { conn, status } => {
                if let Some(room) = &self.conns[conn].room {
                    self.registry
                        .orb_status(room, self.conns[conn].handle.id, AiStatus::ALL[status as usize], None);
                }
            }
            Op::RuntimeStatus { room, status } => {
                self.registry
                    .runtime_status(&format!("room{room}"), AiStatus::ALL[status as usize]);
            }
            Op::Read { conn } => {
                while let Ok(out) = self.conns[conn].rx.outbound.try_recv() {
                    let v: Value = serde_json::from_str(out.text.as_str()).unwrap();
                    if v["type"] != "offer" {
                        serde_json::from_value::<ServerMessage>(v).expect("the server sends protocol messages");
                    }
                }
            }
        }
        self.reap();
        self.check();
    }

    fn check(&self) {
        let mut expected_rooms = HashSet::new();
        for c in &self.conns {
            if let Some(room) = &c.room {
                expected_rooms.insert(room.id().to_owned());
                let members = room.member_ids();
                assert!(members.len() <= 3, "{members:?}");
                let unique: HashSet<_> = members.iter().collect();
                assert_eq!(unique.len(), members.len(), "duplicate user ids: {members:?}");
                assert!(
                    self.registry.room(room.id()).is_some_and(|r| Arc::ptr_eq(&r, room)),
                    "a joined connection's room is the registered one"
                );
            }
        }
        assert_eq!(
            self.registry.room_count(),
            expected_rooms.len(),
            "empty rooms are removed"
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn room_state_machine_keeps_its_invariants(ops in prop::collection::vec(op(), 1..80)) {
        let mut h = Harness::new();
        for op in ops {
            h.apply(op);
        }
        for i in 0..h.conns.len() {
            h.apply(Op::Leave { conn: i });
        }
        prop_assert_eq!(h.registry.room_count(), 0);
    }
}

// ---- the token transport: query, Authorization and Sec-WebSocket-Protocol in any combination ----

/// Token-shaped values (a JWT's alphabet), the empty string among them.
fn token_value() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec!["", "t1", "t2", "a.b.c"]).prop_map(str::to_owned),
        "[A-Za-z0-9._-]{0,12}",
    ]
}

/// One `Sec-WebSocket-Protocol` entry: ours, a token, or someone else's.
#[derive(Clone, Debug)]
enum Protocol {
    Ours,
    Token(String),
    Other(String),
}

fn protocol() -> impl Strategy<Value = Protocol> {
    prop_oneof![
        Just(Protocol::Ours),
        token_value().prop_map(Protocol::Token),
        "[a-z][a-z0-9-]{0,8}"
            .prop_filter("not ours", |p| p != "orb-signaling")
            .prop_map(Protocol::Other),
    ]
}

/// Where a request carries tokens, and what else it carries around them.
#[derive(Clone, Debug)]
struct Transport {
    query_tokens: Vec<String>,
    /// Other query parameters; their names never decode to `token`.
    query_other: Vec<String>,
    /// `(scheme, credentials)` of each Authorization header.
    authorization: Vec<(String, String)>,
    /// Sec-WebSocket-Protocol header lines, each a list of entries.
    protocols: Vec<Vec<Protocol>>,
}

fn transport() -> impl Strategy<Value = Transport> {
    (
        prop::collection::vec(token_value(), 0..3),
        prop::collection::vec("[a-su-z]{1,5}=[A-Za-z0-9._~!$'()*,;:@/?-]{0,10}", 0..3),
        prop::collection::vec(
            (
                prop::sample::select(vec!["Bearer", "bearer", "BEARER", "Basic", "Token"]).prop_map(str::to_owned),
                token_value(),
            ),
            0..3,
        ),
        prop::collection::vec(prop::collection::vec(protocol(), 1..4), 0..3),
    )
        .prop_map(|(query_tokens, query_other, authorization, protocols)| Transport {
            query_tokens,
            query_other,
            authorization,
            protocols,
        })
}

impl Transport {
    fn query(&self) -> Option<String> {
        let params: Vec<String> = self
            .query_tokens
            .iter()
            .map(|t| format!("token={t}"))
            .chain(self.query_other.iter().cloned())
            .collect();
        (!params.is_empty()).then(|| params.join("&"))
    }

    fn headers(&self) -> axum::http::HeaderMap {
        let mut h = axum::http::HeaderMap::new();
        for (scheme, credentials) in &self.authorization {
            h.append(
                axum::http::header::AUTHORIZATION,
                format!("{scheme} {credentials}").parse().unwrap(),
            );
        }
        for line in &self.protocols {
            let entries: Vec<String> = line
                .iter()
                .map(|p| match p {
                    Protocol::Ours => "orb-signaling".to_owned(),
                    Protocol::Token(t) => format!("bearer.{t}"),
                    Protocol::Other(o) => o.clone(),
                })
                .collect();
            h.append(
                axum::http::header::SEC_WEBSOCKET_PROTOCOL,
                entries.join(", ").parse().unwrap(),
            );
        }
        h
    }

    /// Every non-empty token the request presents.
    fn presented(&self) -> HashSet<String> {
        let bearer = self
            .authorization
            .iter()
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, t)| t.clone());
        let in_protocols = self.protocols.iter().flatten().filter_map(|p| match p {
            Protocol::Token(t) => Some(t.clone()),
            _ => None,
        });
        self.query_tokens
            .iter()
            .cloned()
            .chain(bearer)
            .chain(in_protocols)
            .filter(|t| !t.is_empty())
            .collect()
    }

    /// A bearer header or entry without a token.
    fn empty_bearer(&self) -> bool {
        self.authorization
            .iter()
            .any(|(scheme, t)| scheme.eq_ignore_ascii_case("bearer") && t.is_empty())
            || self
                .protocols
                .iter()
                .flatten()
                .any(|p| matches!(p, Protocol::Token(t) if t.is_empty()))
    }

    /// A token entry among the subprotocols without `orb-signaling` offered.
    fn token_protocol_alone(&self) -> bool {
        let all: Vec<&Protocol> = self.protocols.iter().flatten().collect();
        all.iter().any(|p| matches!(p, Protocol::Token(_))) && !all.iter().any(|p| matches!(p, Protocol::Ours))
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    /// Any combination of query, Authorization and subprotocol values yields exactly the one token
    /// presented (however often), no token when none was, or a refusal that names a real problem:
    /// two different tokens, a bearer without a token, a token subprotocol without ours.
    #[test]
    fn the_token_transport_yields_the_one_token_or_a_clear_refusal(t in transport()) {
        use orb_signaling::auth::{TransportError, request_token};
        let presented = t.presented();
        let result = request_token(t.query().as_deref(), &t.headers());
        match result {
            Ok(Some(token)) => {
                prop_assert_eq!(presented.len(), 1, "{:?}", t);
                prop_assert!(presented.contains(&token));
                prop_assert!(!t.empty_bearer() && !t.token_protocol_alone(), "{:?}", t);
            }
            Ok(None) => {
                prop_assert!(presented.is_empty(), "{:?}", t);
                prop_assert!(!t.empty_bearer() && !t.token_protocol_alone(), "{:?}", t);
            }
            Err(TransportError::Conflict) => prop_assert!(presented.len() > 1, "{:?}", t),
            Err(TransportError::BadHeader(..)) => prop_assert!(t.empty_bearer(), "{:?}", t),
            Err(TransportError::NoSubprotocol) => prop_assert!(t.token_protocol_alone(), "{:?}", t),
        }
    }

    /// Arbitrary header bytes and query text never panic, and a token found is never empty.
    #[test]
    fn the_token_transport_survives_arbitrary_input(
        query in prop::option::of("\\PC{0,40}"),
        authorization in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..40), 0..3),
        protocols in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..40), 0..3),
    ) {
        let mut h = axum::http::HeaderMap::new();
        for bytes in authorization {
            if let Ok(v) = axum::http::HeaderValue::from_bytes(&bytes) {
                h.append(axum::http::header::AUTHORIZATION, v);
            }
        }
        for bytes in protocols {
            if let Ok(v) = axum::http::HeaderValue::from_bytes(&bytes) {
                h.append(axum::http::header::SEC_WEBSOCKET_PROTOCOL, v);
            }
        }
        if let Ok(Some(token)) = orb_signaling::auth::request_token(query.as_deref(), &h) {
            prop_assert!(!token.is_empty());
        }
    }
}
