//! orb-operator: runs AiOrbs as GPU pods and enforces their limits through reconciliation. The
//! rules it enforces are the `orb-policy` crate, re-exported as [`policy`].

pub mod admission;
pub mod cache;
pub mod config;
pub mod controller;
pub mod http;
pub mod leader;
pub mod metrics;
pub mod pod;
pub mod pool;
pub use orb_policy as policy;
pub mod status;
