//! orb-signaling: the WebSocket signaling server of the tri-party orb call (seed 001's
//! `websocket-simple-enhanced.js`, protocol-compatible) and the room side of orb spawning.
//!
//! Modules by concern: [`protocol`] (the wire types, the `orb-protocol` crate shared with the orb)
//! and [`wire`] (decoding), [`room`] (the registry state machine), [`conn`] (one socket),
//! [`auth`], [`admission`] (connection caps), [`limits`], [`orb_runtime`] (where orbs come from), [`metrics`], [`summary`] (durable
//! summaries and their webhook), [`ice`] (the STUN/TURN servers and TURN credentials participants
//! get) and [`cors`], [`server`] (HTTP, drain) and [`config`].

pub use orb_protocol as protocol;

pub mod admission;
pub mod auth;
pub mod cluster;
pub mod config;
pub mod conn;
pub mod cors;
pub mod ice;
pub mod limits;
pub mod metrics;
pub mod orb_runtime;
pub mod room;
pub mod server;
pub mod summary;
pub mod web;
pub mod wire;
