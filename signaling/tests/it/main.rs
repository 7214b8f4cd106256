//! Integration tests: the real server over real WebSocket connections on loopback.

mod auth;
mod binary;
mod caps;
mod cluster;
mod common;
mod conformance;
mod fake_kube;
mod ice;
mod kubernetes;
mod limits;
mod prop;
mod shutdown;
mod summaries;
