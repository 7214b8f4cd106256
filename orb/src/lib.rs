//! The orb: the AI participant of a tri-party coaching call. It joins the room through
//! signaling, answers each human's WebRTC offer, plays what its brain says and feeds the brain
//! what it hears.
//!
//! Modules by concern: [`config`], [`signaling`] (the client), [`media`] (the WebRTC trait and
//! its webrtc-rs implementation), [`candidates`] (the remote ICE candidate deny list), [`audio`] (Opus, tones), [`playout`] (the paced outgoing
//! stream), [`brain`] (the trait and its brains), [`session`] (the loop that ties them),
//! [`lifecycle`] (deadlines, termination message, exit codes), [`summary`], [`checkpoint`] (the session so far, for a replacement or a killed orb), [`metrics`],
//! [`health`], [`http`], [`proxy`] (the AI service's connection, direct or through an HTTP proxy), [`warm`] (a warm orb's assignment), [`procstat`], and, with the `testkit` feature, `testkit` for the tests
//! and the benchmark (never in the production binary).

pub mod audio;
pub mod brain;
pub mod candidates;
pub mod checkpoint;
pub mod config;
pub mod health;
pub mod http;
pub mod lifecycle;
pub mod media;
pub mod metrics;
pub mod playout;
pub mod procstat;
pub mod proxy;
pub mod session;
pub mod signaling;
pub mod summary;
#[cfg(feature = "testkit")]
pub mod testkit;
pub mod warm;

/// A random number from the std hasher's per-instance random keys: enough for SSRCs, initial
/// RTP counters and reconnect jitter, without a dependency.
pub(crate) fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(0);
    h.finish()
}
