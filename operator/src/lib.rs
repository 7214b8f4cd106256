//! orb-operator: runs AiOrbs as GPU pods and enforces their limits through reconciliation.

pub mod admission;
pub mod config;
pub mod controller;
pub mod http;
pub mod leader;
pub mod metrics;
pub mod pod;
pub mod policy;
pub mod rbac;
pub mod status;
