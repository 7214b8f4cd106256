//! orb-signaling: the WebSocket signaling server of the tri-party orb call (seed 001's
//! `websocket-simple-enhanced.js`, protocol-compatible) and the room side of orb spawning.
//!
//! Modules by concern: [`protocol`] (wire types shared with the orb) and [`wire`] (decoding),
//! [`room`] (the registry state machine), [`conn`] (one socket), [`auth`], [`limits`],
//! [`orb_runtime`] (where orbs come from), [`metrics`], [`summary`] (durable summaries and their webhook), [`server`] (HTTP, drain) and
//! [`config`]. Without the `server` feature (on by default) only [`protocol`] is built.

#[cfg(feature = "server")]
pub mod auth;
#[cfg(feature = "server")]
pub mod config;
#[cfg(feature = "server")]
pub mod conn;
#[cfg(feature = "server")]
pub mod limits;
#[cfg(feature = "server")]
pub mod metrics;
#[cfg(feature = "server")]
pub mod orb_runtime;
pub mod protocol;
#[cfg(feature = "server")]
pub mod room;
#[cfg(feature = "server")]
pub mod server;
#[cfg(feature = "server")]
pub mod summary;
#[cfg(feature = "server")]
pub mod web;
#[cfg(feature = "server")]
pub mod wire;
