//! orb-signaling: the WebSocket signaling server of the tri-party orb call (seed 001's
//! `websocket-simple-enhanced.js`, protocol-compatible) and the room side of orb spawning.
//!
//! Modules by concern: [`protocol`] (wire types shared with the orb) and [`wire`] (decoding),
//! [`room`] (the registry state machine), [`conn`] (one socket), [`auth`], [`limits`],
//! [`orb_runtime`] (where orbs come from), [`metrics`], [`webhook`], [`server`] (HTTP, drain) and
//! [`config`].

pub mod auth;
pub mod config;
pub mod conn;
pub mod limits;
pub mod metrics;
pub mod orb_runtime;
pub mod protocol;
pub mod room;
pub mod server;
pub mod web;
pub mod webhook;
pub mod wire;
