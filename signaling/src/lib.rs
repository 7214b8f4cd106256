//! orb-signaling: the WebSocket signaling server of the tri-party orb call.

pub mod protocol;
