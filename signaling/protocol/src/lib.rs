//! The wire protocol of `/ws-simple/{roomId}` (seed 001, kept wire-compatible): JSON text frames
//! with a `type` tag and camelCase fields. This module is the single definition of the protocol;
//! the orb's signaling client uses these same types.
//!
//! SDP and ICE payloads (`offer`, `answer`, `candidate`) are relayed untouched as raw JSON, so a
//! browser's `RTCSessionDescriptionInit` / `RTCIceCandidateInit` round-trips exactly.

pub mod summary;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// `userRole` of a participant.
#[derive(Deserialize, Serialize, schemars::JsonSchema, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum UserRole {
    Coach,
    Client,
    Ai,
}

/// `participantType`: the AI never creates offers; humans do.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum ParticipantType {
    #[default]
    Human,
    Ai,
}

/// `ai_status.status`. `queued`, `starting` and `unavailable` are sent by signaling on the orb's
/// behalf before the orb itself is in the room.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum AiStatus {
    Queued,
    Starting,
    Ready,
    Listening,
    Processing,
    Speaking,
    Unavailable,
    Ended,
}

impl AiStatus {
    /// Every status, in the order of a session.
    pub const ALL: [AiStatus; 8] = [
        AiStatus::Queued,
        AiStatus::Starting,
        AiStatus::Ready,
        AiStatus::Listening,
        AiStatus::Processing,
        AiStatus::Speaking,
        AiStatus::Unavailable,
        AiStatus::Ended,
    ];
}

/// A peer as listed in `peer-discovery`.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct PeerInfo {
    pub user_id: String,
    pub user_role: UserRole,
    pub participant_type: ParticipantType,
}

/// Messages a client (browser or orb) sends to signaling.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum ClientMessage {
    #[serde(rename_all = "camelCase")]
    Join {
        #[serde(default)]
        room_id: Option<String>,
        #[serde(default)]
        user_id: Option<String>,
        #[serde(default)]
        user_role: Option<UserRole>,
        #[serde(default)]
        user_name: Option<String>,
        #[serde(default)]
        participant_type: Option<ParticipantType>,
    },
    Offer(Relay),
    Answer(Relay),
    IceCandidate(Relay),
    Leave,
    Ping,
    #[serde(rename = "ai_status", rename_all = "camelCase")]
    AiStatus {
        status: AiStatus,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        session_id: Option<String>,
    },
    /// Orb → server control messages of seed 001, carried as-is.
    #[serde(rename = "orb_ready")]
    OrbReady(Value),
    #[serde(rename = "orb_heartbeat")]
    OrbHeartbeat(Value),
    /// The orb heard or produced voice: `lastVoiceActivity` is that instant in Unix milliseconds.
    /// Sent when it changes, at most every few seconds; the room's idle timeout counts from it.
    #[serde(rename = "orb_activity", rename_all = "camelCase")]
    OrbActivity {
        last_voice_activity: u64,
    },
    #[serde(rename = "orb_error")]
    OrbError(Value),
    #[serde(rename = "session_summary")]
    SessionSummary(Value),
    /// The orb's session so far (a `session_summary` body without `summaryId`), sent when its
    /// transcript grew and after every join: signaling keeps the room's latest one, hands it to a
    /// replacement orb, and makes it the session's summary (marked partial) if the orb is gone
    /// without a final one.
    #[serde(rename = "session_checkpoint")]
    SessionCheckpoint(Value),
}

/// The body of `offer`, `answer` and `ice-candidate`. The sender's `fromId` is never trusted: the
/// server overwrites it. `toId` (or the seed's alias `targetId`) targets one peer; without it the
/// message is broadcast to the room.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Relay {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offer: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answer: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub candidate: Option<Value>,
}

impl Relay {
    /// The addressed peer: `toId`, else `targetId`.
    pub fn target(&self) -> Option<&str> {
        self.to_id.as_deref().or(self.target_id.as_deref())
    }
}

/// Messages signaling sends to a client.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum ServerMessage {
    PeerDiscovery {
        peers: Vec<PeerInfo>,
    },
    #[serde(rename_all = "camelCase")]
    UserJoined {
        user_id: String,
        user_role: UserRole,
        participant_type: ParticipantType,
        should_create_offer: bool,
    },
    #[serde(rename_all = "camelCase")]
    UserLeft {
        user_id: String,
        user_role: UserRole,
    },
    Offer(Relay),
    Answer(Relay),
    IceCandidate(Relay),
    Pong,
    #[serde(rename = "ai_status", rename_all = "camelCase")]
    AiStatus {
        status: AiStatus,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        session_id: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        from_id: Option<String>,
    },
    /// The orb's session summary, delivered to the room's coach.
    #[serde(rename = "session_summary")]
    SessionSummary(Value),
    /// To an orb joining a room whose session an orb before it checkpointed (then was killed or
    /// replaced): that checkpoint, whose transcript the orb continues.
    #[serde(rename = "session_checkpoint")]
    SessionCheckpoint(Value),
    /// To the orb: its summary `summaryId` is stored durably; it may forget it.
    #[serde(rename = "session_summary_ack", rename_all = "camelCase")]
    SessionSummaryAck {
        summary_id: String,
    },
    /// The orb refused this peer's input (say, a malformed offer); sent to that peer only.
    #[serde(rename = "orb_error")]
    OrbError(Value),
    /// The STUN/TURN servers this participant's peer connections should use, with TURN
    /// credentials minted for it: sent to the joiner with the join's acceptance (before
    /// `peer-discovery`), only when signaling has ICE servers configured. The same body as
    /// `GET /ice-servers`, for clients without an HTTP path.
    IceServers(IceServerList),
    /// Bad input from this socket; sent to that socket only.
    Error {
        code: ErrorCode,
        message: String,
    },
}

/// The ICE servers of a participant: the body of `GET /ice-servers` and of the `ice-servers`
/// message. `iceServers` is what `RTCPeerConnection`'s `iceServers` takes as it is.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct IceServerList {
    pub ice_servers: Vec<IceServer>,
    /// Seconds the credentials in the list stay valid (0 when the list is empty); ask again
    /// before then for new peer connections.
    pub ttl: u64,
}

/// One `RTCIceServer`: STUN URLs without credentials, or TURN URLs with a time-limited
/// username and credential (the TURN REST convention).
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq)]
pub struct IceServer {
    pub urls: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
}

/// The scheme of an ICE server URL: RFC 7064 (`stun:`) and RFC 7065 (`turn:`, `turns:`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IceScheme {
    Stun,
    Turn,
    Turns,
}

impl IceScheme {
    /// TURN relays need credentials; STUN servers do not.
    pub fn is_turn(self) -> bool {
        matches!(self, IceScheme::Turn | IceScheme::Turns)
    }
}

/// Why a string is not an ICE server URL a browser accepts.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum IceUrlError {
    #[error("{0:?}: the scheme must be stun:, turn: or turns:")]
    Scheme(String),
    #[error("{0:?}: write scheme:host[:port], without // (RFC 7064/7065)")]
    Slashes(String),
    #[error("{0:?}: the host must be a DNS name, an IPv4 address or [an IPv6 address]")]
    Host(String),
    #[error("{0:?}: the port must be a number from 1 to 65535")]
    Port(String),
    #[error("{0:?}: only turn: and turns: URLs take a query, and only ?transport=udp or ?transport=tcp")]
    Query(String),
}

/// Checks `url` against the URI syntax of RFC 7064/7065 (`stun:host[:port]`,
/// `turn[s]:host[:port][?transport=udp|tcp]`) and returns its scheme. A browser throws on any
/// other form when the peer connection is created, so a bad URL must be refused at start-up, not
/// in every call.
pub fn check_ice_url(url: &str) -> Result<IceScheme, IceUrlError> {
    let (scheme, rest) = url.split_once(':').ok_or_else(|| IceUrlError::Scheme(url.to_owned()))?;
    let scheme = match scheme {
        "stun" => IceScheme::Stun,
        "turn" => IceScheme::Turn,
        "turns" => IceScheme::Turns,
        _ => return Err(IceUrlError::Scheme(url.to_owned())),
    };
    if rest.starts_with("//") {
        return Err(IceUrlError::Slashes(url.to_owned()));
    }
    let (host_port, query) = match rest.split_once('?') {
        Some((host_port, query)) => (host_port, Some(query)),
        None => (rest, None),
    };
    if let Some(query) = query
        && (!scheme.is_turn() || !matches!(query, "transport=udp" | "transport=tcp"))
    {
        return Err(IceUrlError::Query(url.to_owned()));
    }
    let (host, port) = match host_port.strip_prefix('[') {
        Some(bracketed) => {
            let (ip, after) = bracketed
                .split_once(']')
                .ok_or_else(|| IceUrlError::Host(url.to_owned()))?;
            if ip.parse::<std::net::Ipv6Addr>().is_err() {
                return Err(IceUrlError::Host(url.to_owned()));
            }
            match after {
                "" => (ip, None),
                _ => (
                    ip,
                    Some(
                        after
                            .strip_prefix(':')
                            .ok_or_else(|| IceUrlError::Host(url.to_owned()))?,
                    ),
                ),
            }
        }
        None => match host_port.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (host_port, None),
        },
    };
    let dns_name = |h: &str| {
        (1..=253).contains(&h.len())
            && h.split('.').all(|label| {
                (1..=63).contains(&label.len())
                    && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                    && !label.starts_with('-')
                    && !label.ends_with('-')
            })
    };
    if !host_port.starts_with('[') && !dns_name(host) {
        return Err(IceUrlError::Host(url.to_owned()));
    }
    if let Some(port) = port
        && !(port.bytes().all(|b| b.is_ascii_digit()) && port.parse::<u16>().is_ok_and(|p| p > 0))
    {
        return Err(IceUrlError::Port(url.to_owned()));
    }
    Ok(scheme)
}

/// Machine-readable reason of an `error` message.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    MalformedJson,
    UnknownType,
    InvalidMessage,
    NotJoined,
    AlreadyJoined,
    FrameTooLarge,
    RateLimited,
    RoomFull,
    Unauthorized,
    UnknownPeer,
    BinaryNotSupported,
    /// The server cannot serve joins right now (its room store is unreachable); retry shortly.
    Unavailable,
    /// A `session_summary` is not stored, for good: too large (`--max-summary-bytes`), one more
    /// than its orb may store, or its AiOrb is gone. The message names the summary and says
    /// which; sending it again gets the same answer. No `session_summary_ack` follows.
    SummaryRefused,
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 13] = [
        ErrorCode::MalformedJson,
        ErrorCode::UnknownType,
        ErrorCode::InvalidMessage,
        ErrorCode::NotJoined,
        ErrorCode::AlreadyJoined,
        ErrorCode::FrameTooLarge,
        ErrorCode::RateLimited,
        ErrorCode::RoomFull,
        ErrorCode::Unauthorized,
        ErrorCode::UnknownPeer,
        ErrorCode::BinaryNotSupported,
        ErrorCode::Unavailable,
        ErrorCode::SummaryRefused,
    ];
}

/// Seed 001's offer rule, evaluated for an `existing` participant when `joining` arrives: should
/// `existing` create the offer? The AI never offers; between humans the smaller userId offers.
pub fn should_create_offer(existing: &PeerInfo, joining: &PeerInfo) -> bool {
    if existing.participant_type == ParticipantType::Ai {
        return false;
    }
    if joining.participant_type == ParticipantType::Ai {
        return true;
    }
    existing.user_id < joining.user_id
}

/// WebSocket close codes signaling uses. 1000/1001 are the standard ones; the 4xxx codes are this
/// protocol's own (the range RFC 6455 leaves to applications), shaped after the HTTP status they
/// resemble so that a client can branch on them without parsing the reason text.
pub mod close_code {
    /// The server is shutting down; reconnect (to another replica).
    pub const GOING_AWAY: u16 = 1001;
    /// The outbound queue overflowed: the client did not read fast enough. Reconnect and rejoin.
    pub const SLOW_CONSUMER: u16 = 4008;
    /// No or bad room token; the reason text says which. Do not retry with the same token.
    /// Current signaling refuses a bad token before the upgrade (HTTP 401/403) and no longer
    /// sends it; clients still treat it as final for older servers.
    pub const UNAUTHORIZED: u16 = 4401;
    /// Nothing was received (not even a pong) for the idle timeout, or no `join` in time.
    pub const IDLE_TIMEOUT: u16 = 4408;
    /// A newer connection joined the room with the same userId.
    pub const REPLACED: u16 = 4409;
    /// The room already has the maximum number of participants.
    pub const ROOM_FULL: u16 = 4429;
    /// The server cannot serve joins right now; reconnect after a short backoff (RFC 6455's
    /// "try again later").
    pub const TRY_AGAIN_LATER: u16 = 1013;
    /// The socket kept sending past its rate limits (frames or bytes per second) after being
    /// refused; the server stopped reading it. Reconnect only after backing off.
    pub const POLICY_VIOLATION: u16 = 1008;
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn seed_join_message_parses() {
        let m: ClientMessage = serde_json::from_value(json!({
            "type": "join", "roomId": "room123", "userId": "user456", "userRole": "coach",
            "userName": "John Doe", "participantType": "human"
        }))
        .unwrap();
        assert!(matches!(
            m,
            ClientMessage::Join {
                user_role: Some(UserRole::Coach),
                ..
            }
        ));
    }

    #[test]
    fn relay_keeps_browser_payloads_verbatim() {
        let raw = json!({"type": "ice-candidate", "toId": "ai-1",
            "candidate": {"candidate": "candidate:1 1 udp 1 10.0.0.1 5000 typ host", "sdpMid": "0", "sdpMLineIndex": 0}});
        let m: ClientMessage = serde_json::from_value(raw.clone()).unwrap();
        let ClientMessage::IceCandidate(relay) = m else {
            panic!()
        };
        let out = serde_json::to_value(ServerMessage::IceCandidate(Relay {
            from_id: Some("coach-1".into()),
            ..relay
        }))
        .unwrap();
        assert_eq!(out["candidate"], raw["candidate"]);
        assert_eq!(out["fromId"], "coach-1");
        assert_eq!(out["type"], "ice-candidate");
    }

    #[test]
    fn server_messages_use_seed_names() {
        let v = serde_json::to_value(ServerMessage::UserJoined {
            user_id: "u".into(),
            user_role: UserRole::Client,
            participant_type: ParticipantType::Human,
            should_create_offer: true,
        })
        .unwrap();
        assert_eq!(
            v,
            json!({"type": "user-joined", "userId": "u", "userRole": "client", "participantType": "human", "shouldCreateOffer": true})
        );
        assert_eq!(
            serde_json::to_value(ServerMessage::Pong).unwrap(),
            json!({"type": "pong"})
        );
        assert_eq!(
            serde_json::to_value(ServerMessage::PeerDiscovery { peers: vec![] }).unwrap(),
            json!({"type": "peer-discovery", "peers": []})
        );
    }

    #[test]
    fn ice_servers_message_is_the_http_body_with_a_type() {
        let list = IceServerList {
            ice_servers: vec![
                IceServer {
                    urls: vec!["stun:stun.example.org".into()],
                    username: None,
                    credential: None,
                },
                IceServer {
                    urls: vec!["turn:turn.example.org:3478?transport=udp".into()],
                    username: Some("1700000000:coach-1".into()),
                    credential: Some("c2VjcmV0".into()),
                },
            ],
            ttl: 600,
        };
        let body = json!({"iceServers": [
            {"urls": ["stun:stun.example.org"]},
            {"urls": ["turn:turn.example.org:3478?transport=udp"], "username": "1700000000:coach-1", "credential": "c2VjcmV0"}
        ], "ttl": 600});
        assert_eq!(serde_json::to_value(&list).unwrap(), body);
        let mut message = body.clone();
        message["type"] = json!("ice-servers");
        assert_eq!(
            serde_json::to_value(ServerMessage::IceServers(list.clone())).unwrap(),
            message
        );
        assert_eq!(
            serde_json::from_value::<ServerMessage>(message).unwrap(),
            ServerMessage::IceServers(list)
        );
    }

    #[test]
    fn ice_urls_follow_rfc_7064_and_7065() {
        for (url, scheme) in [
            ("stun:stun.l.google.com:19302", IceScheme::Stun),
            ("stun:192.0.2.1", IceScheme::Stun),
            ("stun:[2001:db8::1]:3478", IceScheme::Stun),
            ("turn:turn.example.org", IceScheme::Turn),
            ("turn:turn.example.org:3478?transport=tcp", IceScheme::Turn),
            ("turns:turn.example.org:443?transport=tcp", IceScheme::Turns),
            ("turn:[::1]?transport=udp", IceScheme::Turn),
        ] {
            assert_eq!(check_ice_url(url), Ok(scheme), "{url}");
        }
        for (url, why) in [
            ("http://turn.example.org", "scheme"),
            ("stuns:stun.example.org", "scheme"),
            ("turn.example.org:3478", "scheme"),
            ("STUN:stun.example.org", "scheme"),
            ("turn://turn.example.org:3478", "//"),
            ("stun:", "host"),
            ("stun:exa mple.org", "host"),
            ("stun:-bad.example.org", "host"),
            ("turn:user@turn.example.org", "host"),
            ("turn:[2001:db8::1", "host"),
            ("turn:[not-ip]:3478", "host"),
            ("turn:turn.example.org:0", "port"),
            ("turn:turn.example.org:65536", "port"),
            ("turn:turn.example.org:34x8", "port"),
            ("turn:turn.example.org:", "port"),
            ("stun:stun.example.org?transport=udp", "query"),
            ("turn:turn.example.org?transport=sctp", "query"),
        ] {
            let err = check_ice_url(url).unwrap_err().to_string();
            assert!(err.contains(why), "{url}: {err}");
        }
    }

    #[test]
    fn offer_rule() {
        let human = |id: &str| PeerInfo {
            user_id: id.into(),
            user_role: UserRole::Coach,
            participant_type: ParticipantType::Human,
        };
        let ai = PeerInfo {
            user_id: "ai".into(),
            user_role: UserRole::Ai,
            participant_type: ParticipantType::Ai,
        };
        assert!(should_create_offer(&human("b"), &ai), "humans offer to a joining AI");
        assert!(!should_create_offer(&ai, &human("a")), "the AI never offers");
        assert!(should_create_offer(&human("a"), &human("b")), "the smaller id offers");
        assert!(!should_create_offer(&human("b"), &human("a")));
    }
}
