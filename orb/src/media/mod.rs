//! The orb's view of WebRTC: one answering peer per human, audio in and out. The stack behind
//! it ([`webrtc_stack`]) can be swapped without touching the session logic.

pub mod webrtc_stack;

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use serde_json::Value;
use thiserror::Error;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// Identifies one peer connection: a human and which of their offers it answers (a new offer
/// from the same human replaces the connection and bumps the generation).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PeerKey {
    pub user: Arc<str>,
    pub generation: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PeerState {
    New,
    Connecting,
    Connected,
    Disconnected,
    Failed,
    Closed,
}

impl PeerState {
    pub const ALL: [PeerState; 6] = [
        PeerState::New,
        PeerState::Connecting,
        PeerState::Connected,
        PeerState::Disconnected,
        PeerState::Failed,
        PeerState::Closed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            PeerState::New => "new",
            PeerState::Connecting => "connecting",
            PeerState::Connected => "connected",
            PeerState::Disconnected => "disconnected",
            PeerState::Failed => "failed",
            PeerState::Closed => "closed",
        }
    }
}

/// How a connected peer's media travels: the "most indirect" end of the selected ICE candidate
/// pair (a relay on either side means the media goes through the relay).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MediaPath {
    Host,
    ServerReflexive,
    PeerReflexive,
    Relay,
}

impl MediaPath {
    pub const ALL: [MediaPath; 4] = [
        MediaPath::Host,
        MediaPath::ServerReflexive,
        MediaPath::PeerReflexive,
        MediaPath::Relay,
    ];

    /// The candidate type names of RFC 8445 (and of browsers' `getStats`).
    pub fn as_str(self) -> &'static str {
        match self {
            MediaPath::Host => "host",
            MediaPath::ServerReflexive => "srflx",
            MediaPath::PeerReflexive => "prflx",
            MediaPath::Relay => "relay",
        }
    }

    /// The path of a pair whose ends are `local` and `remote`.
    pub fn of_pair(local: MediaPath, remote: MediaPath) -> MediaPath {
        local.max(remote)
    }

    fn rank(self) -> u8 {
        match self {
            MediaPath::Host => 0,
            MediaPath::ServerReflexive => 1,
            MediaPath::PeerReflexive => 2,
            MediaPath::Relay => 3,
        }
    }

    fn max(self, other: MediaPath) -> MediaPath {
        if other.rank() > self.rank() { other } else { self }
    }
}

/// Where a peer connection that never carried media gave up: before ICE found a path, or after
/// (the DTLS handshake over a working path failed). A connection lost after it carried media is
/// [`ConnectFailure::Lost`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ConnectFailure {
    Ice,
    Dtls,
    Lost,
}

impl ConnectFailure {
    pub const ALL: [ConnectFailure; 3] = [ConnectFailure::Ice, ConnectFailure::Dtls, ConnectFailure::Lost];

    pub fn as_str(self) -> &'static str {
        match self {
            ConnectFailure::Ice => "ice",
            ConnectFailure::Dtls => "dtls",
            ConnectFailure::Lost => "lost",
        }
    }
}

/// One STUN or TURN server for new peer connections (TURN ones with their credential).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IceServer {
    pub urls: Vec<String>,
    pub username: String,
    pub credential: String,
}

#[derive(Debug)]
pub enum PeerEvent {
    /// A local ICE candidate to trickle to the human (`RTCIceCandidateInit` JSON).
    LocalCandidate {
        key: PeerKey,
        candidate: Value,
    },
    State {
        key: PeerKey,
        state: PeerState,
    },
    /// One decoded frame of the human's audio (48 kHz mono).
    Audio {
        key: PeerKey,
        pcm: Vec<i16>,
        at: Instant,
    },
}

#[derive(Debug, Error)]
pub enum MediaError {
    #[error("invalid offer: {0}")]
    InvalidOffer(String),
    #[error("invalid ICE candidate: {0}")]
    InvalidCandidate(String),
    #[error("WebRTC: {0}")]
    Stack(String),
}

/// One encoded 20 ms frame for a peer's outgoing track. `samples` is how far the RTP clock
/// advances since the previous frame (more than one frame when the pacer skipped ticks).
#[derive(Clone, Debug)]
pub struct OutFrame {
    pub payload: Bytes,
    pub samples: u32,
}

/// Where the pacer writes a peer's audio; a full queue drops the frame rather than delay it.
pub type AudioSink = mpsc::Sender<OutFrame>;

#[async_trait]
pub trait Peer: Send + Sync {
    /// Applies the human's offer (`RTCSessionDescriptionInit` JSON) and returns the answer.
    async fn answer(&self, offer: &Value) -> Result<Value, MediaError>;
    /// Adds a trickled candidate; an empty or null candidate (end of candidates) is accepted.
    async fn add_remote_candidate(&self, candidate: &Value) -> Result<(), MediaError>;
    /// The queue of the outgoing audio track.
    fn audio_sink(&self) -> AudioSink;
    /// Closes the connection and stops its tasks.
    async fn close(&self);
    /// The path of the selected candidate pair, once ICE selected one.
    async fn media_path(&self) -> Option<MediaPath>;
    /// Whether ICE ever found a working path (tells a DTLS failure from an ICE one).
    fn ice_connected(&self) -> bool;
}

#[async_trait]
pub trait MediaStack: Send + Sync {
    async fn create_peer(&self, key: PeerKey, events: mpsc::Sender<PeerEvent>) -> Result<Box<dyn Peer>, MediaError>;
    /// The ICE servers signaling handed out (with this orb's own TURN credential), used with the
    /// configured ones by peer connections created from now on.
    fn set_signaled_ice_servers(&self, servers: Vec<IceServer>);
}

/// `true` for a trickle message that only says "no more candidates".
pub fn is_end_of_candidates(candidate: &Value) -> bool {
    match candidate {
        Value::Null => true,
        Value::String(s) => s.is_empty(),
        Value::Object(o) => o.get("candidate").is_none_or(|c| c.is_null() || c.as_str() == Some("")),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_relay_on_either_end_makes_the_path_relayed() {
        use MediaPath::*;
        assert_eq!(MediaPath::of_pair(Host, Host), Host);
        assert_eq!(MediaPath::of_pair(Host, ServerReflexive), ServerReflexive);
        assert_eq!(MediaPath::of_pair(PeerReflexive, ServerReflexive), PeerReflexive);
        assert_eq!(MediaPath::of_pair(Relay, Host), Relay);
        assert_eq!(MediaPath::of_pair(ServerReflexive, Relay), Relay);
        let names: Vec<_> = MediaPath::ALL.iter().map(|p| p.as_str()).collect();
        assert_eq!(names, ["host", "srflx", "prflx", "relay"]);
    }
}
